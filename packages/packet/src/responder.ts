import { readIpv4 } from './addr.js';
import { buildArpReply, buildIcmpEcho, writeEthernet, writeIpHeader } from './build.js';
import { internetChecksum, onesComplementSum, pseudoHeaderSum, pseudoHeaderSumV6 } from './checksum.js';
import { ARP_OP_REQUEST, ETH_P_IPV6, ICMP_ECHO_REQUEST, ICMPV6_ECHO_REQUEST, IPPROTO_ICMPV6 } from './constants.js';
import { Layer, PacketInfo, parsePacket } from './parse.js';

export interface ResponderStats {
  arpReplies: number;
  /** ICMPv6 Neighbor Advertisements sent (RFC 4861 §7.2.4). */
  neighborAdvertisements: number;
  echoReplies: number;
  /** Frames for us that were malformed (bad ICMP checksum, truncated). */
  errors: number;
  /** Frames not for us, or of a kind we do not answer. */
  ignored: number;
}

/**
 * A minimal host: answers ARP requests for its IPv4 address (RFC 826), ICMP echo
 * requests to it (RFC 792; RFC 1122 §3.2.2.6: the reply carries the same
 * identifier, sequence and data), and, given an IPv6 address, Neighbor
 * Solicitations (RFC 4861 §7.2.4) and ICMPv6 echo (RFC 4443 §4.2). Used by tests as the far end of a back-end,
 * and by examples. Allocates nothing per frame.
 */
export class ArpIcmpResponder {
  readonly stats: ResponderStats = { arpReplies: 0, neighborAdvertisements: 0, echoReplies: 0, errors: 0, ignored: 0 };
  private readonly info = new PacketInfo();

  constructor(
    readonly mac: Uint8Array,
    readonly ip: number,
    /** An IPv6 address to answer Neighbor Solicitations and ICMPv6 echo for (optional). */
    readonly ipv6?: Uint8Array,
  ) {}

  /**
   * Builds the answer to `frame` into `out` and returns its length, or 0 when the
   * frame needs no answer.
   */
  respond(frame: Uint8Array, out: Uint8Array): number {
    const info = parsePacket(frame, this.info, frame.length, 0);
    const l3 = info.l3Offset;
    const tci = info.vlanCount === 1 ? info.vlanTci0 : undefined;
    if (info.layers & Layer.ARP) {
      const op = (frame[l3 + 6]! << 8) | frame[l3 + 7]!;
      if (op !== ARP_OP_REQUEST || readIpv4(frame, l3 + 24) !== this.ip) {
        this.stats.ignored++;
        return 0;
      }
      this.stats.arpReplies++;
      return buildArpReply(out, { srcMac: this.mac, srcIp: this.ip, dstMac: frame.subarray(l3 + 8, l3 + 14), dstIp: readIpv4(frame, l3 + 14), vlanTci: tci });
    }
    if (info.layers & Layer.ICMP && readIpv4(frame, l3 + 16) === this.ip) {
      const l4 = info.l4Offset;
      if (frame[l4] !== ICMP_ECHO_REQUEST) {
        this.stats.ignored++;
        return 0;
      }
      if (info.anomalies !== 0 || info.fragment !== 0 || onesComplementSum(frame, l4, info.ipEnd) !== 0xffff) {
        this.stats.errors++;
        return 0;
      }
      if (out.length < info.ipEnd) {
        this.stats.errors++;
        return 0;
      }
      this.stats.echoReplies++;
      return buildIcmpEcho(out, {
        reply: true,
        srcMac: this.mac,
        dstMac: frame.subarray(6, 12),
        srcIp: this.ip,
        dstIp: readIpv4(frame, l3 + 12),
        id: (frame[l4 + 4]! << 8) | frame[l4 + 5]!,
        sequence: (frame[l4 + 6]! << 8) | frame[l4 + 7]!,
        payload: frame.subarray(l4 + 8, info.ipEnd),
        vlanTci: tci,
      });
    }
    if (info.layers & Layer.ICMPV6 && this.ipv6) return this.respondV6(frame, out, info, tci);
    this.stats.ignored++;
    return 0;
  }

  private isOurs(b: Uint8Array, at: number): boolean {
    const me = this.ipv6!;
    for (let i = 0; i < 16; i++) if (b[at + i] !== me[i]) return false;
    return true;
  }

  private respondV6(frame: Uint8Array, out: Uint8Array, info: PacketInfo, tci: number | undefined): number {
    const l3 = info.l3Offset;
    const l4 = info.l4Offset;
    const type = frame[l4]!;
    if (info.anomalies !== 0 || info.fragment !== 0 || onesComplementSum(frame, l4, info.ipEnd, pseudoHeaderSum(frame, info)) !== 0xffff) {
      if (type === ICMPV6_ECHO_REQUEST || type === ND_NEIGHBOR_SOLICIT) this.stats.errors++;
      else this.stats.ignored++;
      return 0;
    }
    if (type === ND_NEIGHBOR_SOLICIT) {
      // RFC 4861 §7.1.1: hop limit 255, code 0, at least 24 bytes, target ours.
      if (frame[l3 + 7] !== 255 || frame[l4 + 1] !== 0 || info.ipEnd - l4 < 24 || !this.isOurs(frame, l4 + 8)) {
        this.stats.ignored++;
        return 0;
      }
      const unspecified = frame.subarray(l3 + 8, l3 + 24).every((x) => x === 0);
      // §7.2.4: to the solicitation's source, or all-nodes with S clear when it was unspecified.
      const dstIp = unspecified ? ALL_NODES : frame.subarray(l3 + 8, l3 + 24);
      const dstMac = unspecified ? ALL_NODES_MAC : frame.subarray(6, 12);
      const h = writeEthernet(out, 0, dstMac, this.mac, ETH_P_IPV6, tci);
      const ih = writeIpHeader(out, h, { src: this.ipv6!, dst: dstIp, protocol: IPPROTO_ICMPV6, payloadLength: 32, ttl: 255 });
      const a = h + ih;
      out.fill(0, a, a + 32);
      out[a] = ND_NEIGHBOR_ADVERT;
      out[a + 4] = unspecified ? 0x20 : 0x60; // S (solicited) unless to all-nodes, O (override)
      out.set(this.ipv6!, a + 8);
      out[a + 24] = 2; // Target Link-Layer Address option, length 1 (8 bytes)
      out[a + 25] = 1;
      out.set(this.mac.subarray(0, 6), a + 26);
      const c = internetChecksum(out, a, a + 32, pseudoHeaderSumV6(out, h + 8, h + 24, IPPROTO_ICMPV6, 32));
      out[a + 2] = c >>> 8;
      out[a + 3] = c & 0xff;
      this.stats.neighborAdvertisements++;
      return a + 32;
    }
    if (type === ICMPV6_ECHO_REQUEST && this.isOurs(frame, l3 + 24)) {
      if (out.length < info.ipEnd) {
        this.stats.errors++;
        return 0;
      }
      this.stats.echoReplies++;
      return buildIcmpEcho(out, {
        reply: true, srcMac: this.mac, dstMac: frame.subarray(6, 12), srcIp: this.ipv6!, dstIp: frame.subarray(l3 + 8, l3 + 24),
        id: (frame[l4 + 4]! << 8) | frame[l4 + 5]!, sequence: (frame[l4 + 6]! << 8) | frame[l4 + 7]!, payload: frame.subarray(l4 + 8, info.ipEnd), vlanTci: tci,
      });
    }
    this.stats.ignored++;
    return 0;
  }
}

const ND_NEIGHBOR_SOLICIT = 135;
const ND_NEIGHBOR_ADVERT = 136;
/** ff02::1 and its multicast MAC 33:33:00:00:00:01 (RFC 2464 §7). */
const ALL_NODES = new Uint8Array([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
const ALL_NODES_MAC = new Uint8Array([0x33, 0x33, 0, 0, 0, 1]);
