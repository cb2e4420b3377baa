import { writeIpv4 } from './addr.js';
import { fillIpv4HeaderChecksum, internetChecksum, onesComplementSum, pseudoHeaderSumV4, pseudoHeaderSumV6 } from './checksum.js';
import {
  ARP_ETH_IPV4_LEN, ARP_OP_REPLY, ARP_OP_REQUEST, ETH_HEADER_LEN, ETH_MIN_FRAME, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4,
  ETH_P_IPV6, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_HEADER_LEN, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, IPPROTO_ICMP,
  IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_HEADER_LEN, TCP_MIN_HEADER_LEN, IPV6_HEADER_LEN, UDP_HEADER_LEN, VXLAN_HEADER_LEN, VXLAN_PORT,
} from './constants.js';
import { PacketError } from './errors.js';

/** An IPv4 address as a u32, or an IPv6 address as 16 bytes. */
export type IpAddress = number | Uint8Array;

export const BROADCAST_MAC: Uint8Array = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
const ZERO_MAC = new Uint8Array(6);
const EMPTY = new Uint8Array(0);

function need(out: Uint8Array, offset: number, len: number, what: string): void {
  if (!Number.isInteger(offset) || offset < 0 || offset + len > out.length) {
    throw new PacketError('buffer-too-small', `${what} needs ${len} bytes at offset ${offset}; the buffer has ${out.length}`, 'out', out.length);
  }
}

function checkRange(field: string, v: number, max: number): void {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new PacketError('invalid-field', `${field} ${v} is outside 0..${max}`, field, v);
}

function checkMac(field: string, mac: Uint8Array): void {
  if (mac.length < 6) throw new PacketError('invalid-address', `${field} has ${mac.length} bytes, a MAC needs 6`, field, mac.length);
}

function checkIp(field: string, ip: IpAddress): void {
  if (typeof ip === 'number') checkRange(field, ip, 0xffffffff);
  else if (ip.length !== 16) throw new PacketError('invalid-address', `${field} has ${ip.length} bytes, an IPv6 address needs 16`, field, ip.length);
}

/**
 * Writes an Ethernet II header (with one 802.1Q tag when `vlanTci` is given) and
 * returns its length (14 or 18).
 */
export function writeEthernet(out: Uint8Array, offset: number, dst: Uint8Array, src: Uint8Array, etherType: number, vlanTci?: number): number {
  checkMac('dst', dst);
  checkMac('src', src);
  const hlen = vlanTci === undefined ? ETH_HEADER_LEN : ETH_HEADER_LEN + 4;
  need(out, offset, hlen, 'an Ethernet header');
  out.set(dst.subarray(0, 6), offset);
  out.set(src.subarray(0, 6), offset + 6);
  let at = offset + 12;
  if (vlanTci !== undefined) {
    checkRange('vlanTci', vlanTci, 0xffff);
    out[at] = ETH_P_8021Q >>> 8;
    out[at + 1] = ETH_P_8021Q & 0xff;
    out[at + 2] = vlanTci >>> 8;
    out[at + 3] = vlanTci & 0xff;
    at += 4;
  }
  out[at] = etherType >>> 8;
  out[at + 1] = etherType & 0xff;
  return hlen;
}

export interface IpHeaderFields {
  src: IpAddress;
  dst: IpAddress;
  protocol: number;
  /** Bytes after the IP header. */
  payloadLength: number;
  ttl?: number;
  /** IPv4 identification (RFC 791) — 0 by default. */
  id?: number;
  /** IPv4 TOS / IPv6 traffic class. */
  tos?: number;
  dontFragment?: boolean;
}

/** Writes an IPv4 (when `src` is a number) or IPv6 header; returns its length. The IPv4 header checksum is filled. */
export function writeIpHeader(out: Uint8Array, offset: number, f: IpHeaderFields): number {
  checkIp('src', f.src);
  checkIp('dst', f.dst);
  if (typeof f.src !== typeof f.dst) throw new PacketError('invalid-address', 'src and dst are not the same IP version', 'dst');
  const ttl = f.ttl ?? 64;
  checkRange('ttl', ttl, 255);
  const tos = f.tos ?? 0;
  checkRange('tos', tos, 255);
  if (typeof f.src === 'number') {
    checkRange('payloadLength', f.payloadLength, 0xffff - IPV4_MIN_HEADER_LEN);
    need(out, offset, IPV4_MIN_HEADER_LEN, 'an IPv4 header');
    const total = IPV4_MIN_HEADER_LEN + f.payloadLength;
    const id = f.id ?? 0;
    checkRange('id', id, 0xffff);
    out[offset] = 0x45;
    out[offset + 1] = tos;
    out[offset + 2] = total >>> 8;
    out[offset + 3] = total & 0xff;
    out[offset + 4] = id >>> 8;
    out[offset + 5] = id & 0xff;
    out[offset + 6] = f.dontFragment ? 0x40 : 0;
    out[offset + 7] = 0;
    out[offset + 8] = ttl;
    out[offset + 9] = f.protocol;
    out[offset + 10] = 0;
    out[offset + 11] = 0;
    writeIpv4(out, offset + 12, f.src);
    writeIpv4(out, offset + 16, f.dst as number);
    fillIpv4HeaderChecksum(out, offset, IPV4_MIN_HEADER_LEN);
    return IPV4_MIN_HEADER_LEN;
  }
  checkRange('payloadLength', f.payloadLength, 0xffff);
  need(out, offset, IPV6_HEADER_LEN, 'an IPv6 header');
  out[offset] = 0x60 | (tos >>> 4);
  out[offset + 1] = (tos & 15) << 4;
  out[offset + 2] = 0;
  out[offset + 3] = 0;
  out[offset + 4] = f.payloadLength >>> 8;
  out[offset + 5] = f.payloadLength & 0xff;
  out[offset + 6] = f.protocol;
  out[offset + 7] = ttl;
  out.set(f.src, offset + 8);
  out.set(f.dst as Uint8Array, offset + 24);
  return IPV6_HEADER_LEN;
}

function etherTypeOf(ip: IpAddress): number {
  return typeof ip === 'number' ? ETH_P_IPV4 : ETH_P_IPV6;
}

function pseudo(out: Uint8Array, l3: number, f: { src: IpAddress; dst: IpAddress }, protocol: number, l4Length: number): number {
  return typeof f.src === 'number' ? pseudoHeaderSumV4(f.src, f.dst as number, protocol, l4Length) : pseudoHeaderSumV6(out, l3 + 8, l3 + 24, protocol, l4Length);
}

function pad(out: Uint8Array, offset: number, len: number, padToMinimum: boolean | undefined): number {
  if (!padToMinimum || len >= ETH_MIN_FRAME) return len;
  need(out, offset, ETH_MIN_FRAME, 'a padded frame');
  out.fill(0, offset + len, offset + ETH_MIN_FRAME);
  return ETH_MIN_FRAME;
}

export interface ArpFields {
  /** 1 request, 2 reply (RFC 826). */
  operation: number;
  srcMac: Uint8Array;
  srcIp: number;
  targetMac: Uint8Array;
  targetIp: number;
  /** Ethernet destination; broadcast for a request, the target for a reply, by default. */
  ethDst?: Uint8Array;
  vlanTci?: number;
  /** Pad to the 60-byte Ethernet minimum. */
  padToMinimum?: boolean;
}

/** Builds an Ethernet/IPv4 ARP frame (RFC 826); returns its length (42, 46 with a tag, or 60 padded). */
export function buildArp(out: Uint8Array, f: ArpFields, offset = 0): number {
  checkRange('operation', f.operation, 0xffff);
  checkRange('srcIp', f.srcIp, 0xffffffff);
  checkRange('targetIp', f.targetIp, 0xffffffff);
  checkMac('targetMac', f.targetMac);
  const dst = f.ethDst ?? (f.operation === ARP_OP_REQUEST ? BROADCAST_MAC : f.targetMac);
  const h = writeEthernet(out, offset, dst, f.srcMac, ETH_P_ARP, f.vlanTci);
  const a = offset + h;
  need(out, a, ARP_ETH_IPV4_LEN, 'an ARP packet');
  out[a] = 0;
  out[a + 1] = 1;
  out[a + 2] = ETH_P_IPV4 >>> 8;
  out[a + 3] = ETH_P_IPV4 & 0xff;
  out[a + 4] = 6;
  out[a + 5] = 4;
  out[a + 6] = f.operation >>> 8;
  out[a + 7] = f.operation & 0xff;
  out.set(f.srcMac.subarray(0, 6), a + 8);
  writeIpv4(out, a + 14, f.srcIp);
  out.set(f.targetMac.subarray(0, 6), a + 18);
  writeIpv4(out, a + 24, f.targetIp);
  return pad(out, offset, h + ARP_ETH_IPV4_LEN, f.padToMinimum);
}

/** "Who has targetIp? Tell srcIp": broadcast, target MAC zero (RFC 826). */
export function buildArpRequest(out: Uint8Array, f: { srcMac: Uint8Array; srcIp: number; targetIp: number; vlanTci?: number; padToMinimum?: boolean }, offset = 0): number {
  return buildArp(out, { operation: ARP_OP_REQUEST, targetMac: ZERO_MAC, ...f }, offset);
}

/** "srcIp is at srcMac", sent to dstMac/dstIp (RFC 826). */
export function buildArpReply(out: Uint8Array, f: { srcMac: Uint8Array; srcIp: number; dstMac: Uint8Array; dstIp: number; vlanTci?: number; padToMinimum?: boolean }, offset = 0): number {
  return buildArp(out, { operation: ARP_OP_REPLY, srcMac: f.srcMac, srcIp: f.srcIp, targetMac: f.dstMac, targetIp: f.dstIp, vlanTci: f.vlanTci, padToMinimum: f.padToMinimum }, offset);
}

export interface EchoFields {
  /** An echo reply rather than a request. */
  reply?: boolean;
  srcMac: Uint8Array;
  dstMac: Uint8Array;
  /** IPv4 (number) builds ICMP; IPv6 (16 bytes) builds ICMPv6. */
  srcIp: IpAddress;
  dstIp: IpAddress;
  id: number;
  sequence: number;
  payload?: Uint8Array;
  ttl?: number;
  ipId?: number;
  vlanTci?: number;
}

/** Builds an ICMP echo (RFC 792) or ICMPv6 echo (RFC 4443 §4) request or reply, checksums filled; returns its length. */
export function buildIcmpEcho(out: Uint8Array, f: EchoFields, offset = 0): number {
  checkRange('id', f.id, 0xffff);
  checkRange('sequence', f.sequence, 0xffff);
  const payload = f.payload ?? EMPTY;
  const v4 = typeof f.srcIp === 'number';
  const protocol = v4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;
  const l4Length = ICMP_HEADER_LEN + payload.length;
  const h = writeEthernet(out, offset, f.dstMac, f.srcMac, etherTypeOf(f.srcIp), f.vlanTci);
  const l3 = offset + h;
  const ih = writeIpHeader(out, l3, { src: f.srcIp, dst: f.dstIp, protocol, payloadLength: l4Length, ttl: f.ttl, id: f.ipId });
  const l4 = l3 + ih;
  need(out, l4, l4Length, 'an ICMP echo');
  out[l4] = v4 ? (f.reply ? ICMP_ECHO_REPLY : ICMP_ECHO_REQUEST) : f.reply ? ICMPV6_ECHO_REPLY : ICMPV6_ECHO_REQUEST;
  out[l4 + 1] = 0;
  out[l4 + 2] = 0;
  out[l4 + 3] = 0;
  out[l4 + 4] = f.id >>> 8;
  out[l4 + 5] = f.id & 0xff;
  out[l4 + 6] = f.sequence >>> 8;
  out[l4 + 7] = f.sequence & 0xff;
  out.set(payload, l4 + ICMP_HEADER_LEN);
  // ICMPv4 sums the message only; ICMPv6 adds the pseudo-header (RFC 4443 §2.3).
  const c = internetChecksum(out, l4, l4 + l4Length, v4 ? 0 : pseudo(out, l3, { src: f.srcIp, dst: f.dstIp }, protocol, l4Length));
  out[l4 + 2] = c >>> 8;
  out[l4 + 3] = c & 0xff;
  return h + ih + l4Length;
}

export interface UdpFields {
  srcMac: Uint8Array;
  dstMac: Uint8Array;
  srcIp: IpAddress;
  dstIp: IpAddress;
  srcPort: number;
  dstPort: number;
  payload?: Uint8Array;
  ttl?: number;
  ipId?: number;
  vlanTci?: number;
  /** Compute the UDP checksum (default true; IPv6 always does, RFC 8200 §8.1). */
  checksum?: boolean;
}

/** Builds an Ethernet/IP/UDP frame; returns its length. */
export function buildUdp(out: Uint8Array, f: UdpFields, offset = 0): number {
  const payload = f.payload ?? EMPTY;
  const h = writeEthernet(out, offset, f.dstMac, f.srcMac, etherTypeOf(f.srcIp), f.vlanTci);
  const l3 = offset + h;
  const l4Length = UDP_HEADER_LEN + payload.length;
  const ih = writeIpHeader(out, l3, { src: f.srcIp, dst: f.dstIp, protocol: IPPROTO_UDP, payloadLength: l4Length, ttl: f.ttl, id: f.ipId });
  const l4 = l3 + ih;
  need(out, l4, l4Length, 'a UDP datagram');
  writeUdpHeader(out, l4, f.srcPort, f.dstPort, l4Length);
  out.set(payload, l4 + UDP_HEADER_LEN);
  if (f.checksum !== false || typeof f.srcIp !== 'number') fillUdpChecksum(out, l3, l4, l4Length, f);
  return h + ih + l4Length;
}

function writeUdpHeader(out: Uint8Array, l4: number, srcPort: number, dstPort: number, l4Length: number): void {
  checkRange('srcPort', srcPort, 0xffff);
  checkRange('dstPort', dstPort, 0xffff);
  out[l4] = srcPort >>> 8;
  out[l4 + 1] = srcPort & 0xff;
  out[l4 + 2] = dstPort >>> 8;
  out[l4 + 3] = dstPort & 0xff;
  out[l4 + 4] = l4Length >>> 8;
  out[l4 + 5] = l4Length & 0xff;
  out[l4 + 6] = 0;
  out[l4 + 7] = 0;
}

function fillUdpChecksum(out: Uint8Array, l3: number, l4: number, l4Length: number, f: { src: IpAddress; dst: IpAddress } | { srcIp: IpAddress; dstIp: IpAddress }): void {
  const a = 'src' in f ? f : { src: f.srcIp, dst: f.dstIp };
  const sum = onesComplementSum(out, l4, l4 + l4Length, pseudo(out, l3, a, IPPROTO_UDP, l4Length));
  const c = ~sum & 0xffff || 0xffff;
  out[l4 + 6] = c >>> 8;
  out[l4 + 7] = c & 0xff;
}

export interface VxlanOuter {
  /** Outer Ethernet addresses (the next hop's MAC as dst). */
  srcMac: Uint8Array;
  dstMac: Uint8Array;
  /** Outer IP addresses: the two VTEPs (IPv4 numbers or IPv6 bytes). */
  srcIp: IpAddress;
  dstIp: IpAddress;
  /** Outer UDP source port: from a hash of the inner flow (RFC 7348 §5); see {@link vxlanSourcePort}. */
  srcPort: number;
  /** Default 4789 (RFC 7348 §5). */
  dstPort?: number;
  /** 24-bit VXLAN Network Identifier. */
  vni: number;
  ttl?: number;
  /** Compute the outer UDP checksum over IPv4 (RFC 7348 §5: SHOULD be sent as zero). IPv6 always computes it. */
  udpChecksum?: boolean;
}

/**
 * Encapsulates `inner` (an Ethernet frame without FCS) in Ethernet/IP/UDP/VXLAN
 * (RFC 7348 §5) into `out` at `offset`; returns the outer frame's length. `inner`
 * may already sit in `out` at `offset + overhead` (copy is then skipped).
 */
export function encapsulateVxlan(out: Uint8Array, inner: Uint8Array, f: VxlanOuter, offset = 0): number {
  checkRange('vni', f.vni, 0xffffff);
  const dstPort = f.dstPort ?? VXLAN_PORT;
  const h = writeEthernet(out, offset, f.dstMac, f.srcMac, etherTypeOf(f.srcIp));
  const l3 = offset + h;
  const ipLen = typeof f.srcIp === 'number' ? IPV4_MIN_HEADER_LEN : IPV6_HEADER_LEN;
  const l4Length = UDP_HEADER_LEN + VXLAN_HEADER_LEN + inner.length;
  need(out, l3, ipLen + l4Length, 'a VXLAN packet');
  writeIpHeader(out, l3, { src: f.srcIp, dst: f.dstIp, protocol: IPPROTO_UDP, payloadLength: l4Length, ttl: f.ttl });
  const l4 = l3 + ipLen;
  writeUdpHeader(out, l4, f.srcPort, dstPort, l4Length);
  const vx = l4 + UDP_HEADER_LEN;
  writeVxlanHeader(out, vx, f.vni);
  const innerAt = vx + VXLAN_HEADER_LEN;
  if (!(inner.buffer === out.buffer && inner.byteOffset === out.byteOffset + innerAt)) out.set(inner, innerAt);
  if (f.udpChecksum || typeof f.srcIp !== 'number') fillUdpChecksum(out, l3, l4, l4Length, f);
  return h + ipLen + l4Length;
}

/** Writes the 8-byte VXLAN header: I flag, reserved zero, VNI (RFC 7348 §5). */
export function writeVxlanHeader(out: Uint8Array, offset: number, vni: number): void {
  checkRange('vni', vni, 0xffffff);
  need(out, offset, VXLAN_HEADER_LEN, 'a VXLAN header');
  out[offset] = 0x08;
  out[offset + 1] = 0;
  out[offset + 2] = 0;
  out[offset + 3] = 0;
  out[offset + 4] = vni >>> 16;
  out[offset + 5] = (vni >>> 8) & 0xff;
  out[offset + 6] = vni & 0xff;
  out[offset + 7] = 0;
}

/**
 * Maps a flow hash into the dynamic/private port range, as RFC 7348 §5 recommends
 * for the outer UDP source port (49152–65535 by default).
 */
export function vxlanSourcePort(flowHash: number, min = 49152, max = 65535): number {
  return min + ((flowHash >>> 0) % (max - min + 1));
}

export interface TcpFields {
  srcMac: Uint8Array;
  dstMac: Uint8Array;
  srcIp: IpAddress;
  dstIp: IpAddress;
  srcPort: number;
  dstPort: number;
  seq: number;
  ack?: number;
  /** The 8 low flag bits (CWR ECE URG ACK PSH RST SYN FIN); default ACK. */
  flags?: number;
  window?: number;
  /** TCP options, padded with zeros (EOL) to a multiple of 4, at most 40 bytes. */
  options?: Uint8Array;
  payload?: Uint8Array;
  ttl?: number;
  ipId?: number;
  dontFragment?: boolean;
  vlanTci?: number;
}

/** Builds an Ethernet/IP/TCP segment (RFC 9293 §3.1), checksums filled; returns its length. */
export function buildTcp(out: Uint8Array, f: TcpFields, offset = 0): number {
  const payload = f.payload ?? EMPTY;
  const opts = f.options ?? EMPTY;
  if (opts.length > 40) throw new PacketError('invalid-field', `${opts.length} bytes of TCP options is above 40`, 'options', opts.length);
  checkRange('seq', f.seq, 0xffffffff);
  checkRange('ack', f.ack ?? 0, 0xffffffff);
  checkRange('flags', f.flags ?? 0x10, 0xff);
  checkRange('window', f.window ?? 65535, 0xffff);
  const thl = TCP_MIN_HEADER_LEN + ((opts.length + 3) & ~3);
  const h = writeEthernet(out, offset, f.dstMac, f.srcMac, etherTypeOf(f.srcIp), f.vlanTci);
  const l3 = offset + h;
  const l4Length = thl + payload.length;
  const ih = writeIpHeader(out, l3, { src: f.srcIp, dst: f.dstIp, protocol: IPPROTO_TCP, payloadLength: l4Length, ttl: f.ttl, id: f.ipId, dontFragment: f.dontFragment });
  const l4 = l3 + ih;
  need(out, l4, l4Length, 'a TCP segment');
  checkRange('srcPort', f.srcPort, 0xffff);
  checkRange('dstPort', f.dstPort, 0xffff);
  const seq = f.seq;
  const ack = f.ack ?? 0;
  const win = f.window ?? 65535;
  out[l4] = f.srcPort >>> 8;
  out[l4 + 1] = f.srcPort & 0xff;
  out[l4 + 2] = f.dstPort >>> 8;
  out[l4 + 3] = f.dstPort & 0xff;
  writeIpv4(out, l4 + 4, seq);
  writeIpv4(out, l4 + 8, ack);
  out[l4 + 12] = (thl / 4) << 4;
  out[l4 + 13] = f.flags ?? 0x10;
  out[l4 + 14] = win >>> 8;
  out[l4 + 15] = win & 0xff;
  out.fill(0, l4 + 16, l4 + thl);
  out.set(opts, l4 + TCP_MIN_HEADER_LEN);
  out.set(payload, l4 + thl);
  const sum = onesComplementSum(out, l4, l4 + l4Length, pseudo(out, l3, { src: f.srcIp, dst: f.dstIp }, IPPROTO_TCP, l4Length));
  const c = ~sum & 0xffff;
  out[l4 + 16] = c >>> 8;
  out[l4 + 17] = c & 0xff;
  return h + ih + l4Length;
}
