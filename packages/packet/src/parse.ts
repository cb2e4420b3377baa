import {
  ARP_ETH_IPV4_LEN, ETH_HEADER_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, ICMP_HEADER_LEN,
  IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_ESP, IPPROTO_FRAGMENT, IPPROTO_HIP, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6,
  IPPROTO_MOBILITY, IPPROTO_NONE, IPPROTO_ROUTING, IPPROTO_SHIM6, IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_HEADER_LEN,
  IPV6_HEADER_LEN, MAX_IPV4_OPTIONS, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, TCP_MIN_HEADER_LEN, UDP_HEADER_LEN,
  VXLAN_HEADER_LEN, VXLAN_PORT,
} from './constants.js';

/** Bits of {@link PacketInfo.layers}: the headers that were found complete and consistent. */
export const Layer = {
  ETHERNET: 1 << 0,
  VLAN: 1 << 1,
  ARP: 1 << 2,
  IPV4: 1 << 3,
  IPV6: 1 << 4,
  ICMP: 1 << 5,
  ICMPV6: 1 << 6,
  UDP: 1 << 7,
  TCP: 1 << 8,
  VXLAN: 1 << 9,
} as const;

/**
 * Bits of {@link PacketInfo.anomalies}: what was wrong. Parsing stops at the first
 * anomaly that makes the following bytes meaningless and keeps everything before it.
 */
export const Anomaly = {
  /** The frame ends inside a header, or before the length an IP/UDP header claims. */
  TRUNCATED: 1 << 0,
  /** More than {@link MAX_VLAN_TAGS} VLAN tags; the rest is not parsed. */
  TOO_MANY_VLAN_TAGS: 1 << 1,
  /** The IP version nibble disagrees with the EtherType (RFC 791 §3.1, RFC 8200 §3). */
  BAD_IP_VERSION: 1 << 2,
  /** IPv4 IHL below 5 (RFC 791 §3.1: the minimum value for a correct header is 5). */
  BAD_IPV4_IHL: 1 << 3,
  /** IPv4 total length below the header length (RFC 791 §3.1). */
  BAD_IP_LENGTH: 1 << 4,
  /** An IPv4 option whose length runs past the header or is below 2 (RFC 791 §3.1). */
  BAD_IPV4_OPTIONS: 1 << 5,
  /** An IPv6 extension header chain too long, running past the payload, or Hop-by-Hop not first (RFC 8200 §4.1). */
  BAD_IPV6_EXTENSION: 1 << 6,
  /** UDP length below 8 or past the IP payload (RFC 768); TCP data offset below 5 or past the segment (RFC 9293 §3.1). */
  BAD_L4_LENGTH: 1 << 7,
  /** ARP that is not Ethernet/IPv4 (htype 1, ptype 0x0800, hlen 6, plen 4; RFC 826). */
  BAD_ARP: 1 << 8,
  /** A VXLAN header without the I flag (RFC 7348 §5), or an inner frame shorter than an Ethernet header. */
  BAD_VXLAN: 1 << 9,
} as const;

/** The fragment bits as Open vSwitch names them (nw_frag): any fragment, and a non-first one. */
export const FRAG_ANY = 1;
export const FRAG_LATER = 2;

/**
 * Where each header of a frame is, filled in place by {@link parsePacket}. One
 * instance is reused for every frame: parsing allocates nothing. Offsets are into
 * the bytes given to `parsePacket`; -1 means absent.
 */
export class PacketInfo {
  /** Bytes considered (the frame length). */
  length = 0;
  layers = 0;
  anomalies = 0;
  /** VLAN tags found (0..2); TPID and TCI of the outer (0) and inner (1) tag. */
  vlanCount = 0;
  vlanTpid0 = 0;
  vlanTci0 = 0;
  vlanTpid1 = 0;
  vlanTci1 = 0;
  /** The EtherType after any VLAN tags. */
  etherType = 0;
  l3Offset = -1;
  /** 4 or 6 when an IP header was found. */
  ipVersion = 0;
  /** IPv4 header with options, or IPv6 fixed header plus the extension headers walked. */
  ipHeaderLength = 0;
  /** The upper-layer protocol (after IPv6 extension headers), or -1. */
  ipProtocol = -1;
  /** One past the IP packet's last byte (the total length; Ethernet padding excluded). */
  ipEnd = -1;
  ipv4OptionsLength = 0;
  ipv6ExtensionCount = 0;
  /**
   * Where the IPv6 final destination is (RFC 8200 §8.1, for the pseudo-header): the
   * Destination Address, or with a Routing header that has segments left, its last
   * address (type 0), its home address (type 2) or Segment List[0] (type 4, RFC 8754).
   */
  ipv6FinalDstOffset = -1;
  /** FRAG_ANY | FRAG_LATER (Open vSwitch's nw_frag). */
  fragment = 0;
  fragmentOffset = 0;
  moreFragments = false;
  fragmentId = 0;
  l4Offset = -1;
  /** Bytes from l4Offset to ipEnd. */
  l4Length = 0;
  /** First byte after the L4 header, or -1. */
  payloadOffset = -1;
  vxlanOffset = -1;
  vni = -1;
  innerOffset = -1;

  reset(length: number): void {
    this.length = length;
    this.layers = 0;
    this.anomalies = 0;
    this.vlanCount = 0;
    this.vlanTpid0 = this.vlanTci0 = this.vlanTpid1 = this.vlanTci1 = 0;
    this.etherType = 0;
    this.l3Offset = -1;
    this.ipVersion = 0;
    this.ipHeaderLength = 0;
    this.ipProtocol = -1;
    this.ipEnd = -1;
    this.ipv4OptionsLength = 0;
    this.ipv6ExtensionCount = 0;
    this.ipv6FinalDstOffset = -1;
    this.fragment = 0;
    this.fragmentOffset = 0;
    this.moreFragments = false;
    this.fragmentId = 0;
    this.l4Offset = -1;
    this.l4Length = 0;
    this.payloadOffset = -1;
    this.vxlanOffset = -1;
    this.vni = -1;
    this.innerOffset = -1;
  }

  /** True when nothing was wrong. */
  get ok(): boolean {
    return this.anomalies === 0;
  }
}

function u16(b: Uint8Array, o: number): number {
  return (b[o]! << 8) | b[o + 1]!;
}

/**
 * Parses one Ethernet frame (without FCS) in `bytes[0, length)` into `info`.
 * Never throws and allocates nothing: a truncated or inconsistent frame is parsed
 * as far as it is valid and marked in `info.anomalies`.
 */
export function parsePacket(bytes: Uint8Array, info: PacketInfo, length = bytes.length, vxlanPort = VXLAN_PORT): PacketInfo {
  const len = length < bytes.length ? length : bytes.length;
  info.reset(len);
  if (len < ETH_HEADER_LEN) {
    info.anomalies |= Anomaly.TRUNCATED;
    return info;
  }
  info.layers |= Layer.ETHERNET;
  let off = 12;
  let type = u16(bytes, off);
  // IEEE 802.1Q §9.5 tags: TPID 0x8100 (C-TAG) or 0x88a8 (S-TAG, 802.1ad), then TCI.
  while (type === ETH_P_8021Q || type === ETH_P_8021AD) {
    if (info.vlanCount === MAX_VLAN_TAGS) {
      info.anomalies |= Anomaly.TOO_MANY_VLAN_TAGS;
      info.etherType = type;
      return info;
    }
    if (off + 6 > len) {
      info.anomalies |= Anomaly.TRUNCATED;
      return info;
    }
    const tci = u16(bytes, off + 2);
    if (info.vlanCount === 0) {
      info.vlanTpid0 = type;
      info.vlanTci0 = tci;
    } else {
      info.vlanTpid1 = type;
      info.vlanTci1 = tci;
    }
    info.vlanCount++;
    info.layers |= Layer.VLAN;
    off += 4;
    type = u16(bytes, off);
  }
  info.etherType = type;
  const l3 = off + 2;
  info.l3Offset = l3;
  if (type === ETH_P_ARP) {
    parseArp(bytes, info, l3, len);
  } else if (type === ETH_P_IPV4) {
    parseIpv4(bytes, info, l3, len, vxlanPort);
  } else if (type === ETH_P_IPV6) {
    parseIpv6(bytes, info, l3, len, vxlanPort);
  }
  return info;
}

function parseArp(b: Uint8Array, info: PacketInfo, l3: number, len: number): void {
  if (l3 + 8 > len) {
    info.anomalies |= Anomaly.TRUNCATED;
    return;
  }
  // RFC 826: ar$hrd=1 (Ethernet), ar$pro=0x0800, ar$hln=6, ar$pln=4.
  if (u16(b, l3) !== 1 || u16(b, l3 + 2) !== ETH_P_IPV4 || b[l3 + 4] !== 6 || b[l3 + 5] !== 4) {
    info.anomalies |= Anomaly.BAD_ARP;
    return;
  }
  if (l3 + ARP_ETH_IPV4_LEN > len) {
    info.anomalies |= Anomaly.TRUNCATED;
    return;
  }
  info.layers |= Layer.ARP;
}

function parseIpv4(b: Uint8Array, info: PacketInfo, l3: number, len: number, vxlanPort: number): void {
  if (l3 + IPV4_MIN_HEADER_LEN > len) {
    info.anomalies |= Anomaly.TRUNCATED;
    return;
  }
  const vihl = b[l3]!;
  if (vihl >> 4 !== 4) {
    info.anomalies |= Anomaly.BAD_IP_VERSION;
    return;
  }
  const ihl = (vihl & 15) * 4;
  if (ihl < IPV4_MIN_HEADER_LEN) {
    info.anomalies |= Anomaly.BAD_IPV4_IHL;
    return;
  }
  if (l3 + ihl > len) {
    info.anomalies |= Anomaly.TRUNCATED;
    return;
  }
  const total = u16(b, l3 + 2);
  if (total < ihl) {
    info.anomalies |= Anomaly.BAD_IP_LENGTH;
    return;
  }
  info.ipVersion = 4;
  info.ipHeaderLength = ihl;
  info.ipv4OptionsLength = ihl - IPV4_MIN_HEADER_LEN;
  info.ipProtocol = b[l3 + 9]!;
  let end = l3 + total;
  if (end > len) {
    // The frame ends before the IP total length: keep what there is, marked.
    info.anomalies |= Anomaly.TRUNCATED;
    end = len;
  }
  info.ipEnd = end;
  info.layers |= Layer.IPV4;
  if (ihl > IPV4_MIN_HEADER_LEN) walkIpv4Options(b, info, l3 + IPV4_MIN_HEADER_LEN, l3 + ihl);
  // RFC 791 §3.1 flags/fragment offset: MF is bit 13, the offset counts 8-octet units.
  const ff = u16(b, l3 + 6);
  info.fragmentId = u16(b, l3 + 4);
  info.moreFragments = (ff & 0x2000) !== 0;
  info.fragmentOffset = (ff & 0x1fff) * 8;
  if (info.moreFragments || info.fragmentOffset !== 0) {
    info.fragment = FRAG_ANY | (info.fragmentOffset !== 0 ? FRAG_LATER : 0);
    // Only the first fragment carries the L4 header.
    if (info.fragmentOffset !== 0) return;
  }
  parseL4(b, info, l3 + ihl, end, info.ipProtocol, vxlanPort);
}

function walkIpv4Options(b: Uint8Array, info: PacketInfo, at: number, end: number): void {
  // RFC 791 §3.1: option-type 0 ends the list, 1 is a one-byte NOP, every other
  // option is type, length (counting both), data.
  for (let n = 0; at < end && n < MAX_IPV4_OPTIONS; n++) {
    const t = b[at]!;
    if (t === 0) return;
    if (t === 1) {
      at++;
      continue;
    }
    if (at + 1 >= end) {
      info.anomalies |= Anomaly.BAD_IPV4_OPTIONS;
      return;
    }
    const olen = b[at + 1]!;
    if (olen < 2 || at + olen > end) {
      info.anomalies |= Anomaly.BAD_IPV4_OPTIONS;
      return;
    }
    at += olen;
  }
}

function parseIpv6(b: Uint8Array, info: PacketInfo, l3: number, len: number, vxlanPort: number): void {
  if (l3 + IPV6_HEADER_LEN > len) {
    info.anomalies |= Anomaly.TRUNCATED;
    return;
  }
  if (b[l3]! >> 4 !== 6) {
    info.anomalies |= Anomaly.BAD_IP_VERSION;
    return;
  }
  const payload = u16(b, l3 + 4);
  info.ipVersion = 6;
  info.layers |= Layer.IPV6;
  // A jumbogram (RFC 2675: payload length 0 with a Hop-by-Hop Jumbo option) cannot ride
  // an Ethernet frame; its Hop-by-Hop header then runs past the (empty) payload and is marked.
  let end = l3 + IPV6_HEADER_LEN + payload;
  if (end > len) {
    info.anomalies |= Anomaly.TRUNCATED;
    end = len;
  }
  info.ipEnd = end;
  info.ipv6FinalDstOffset = l3 + 24;
  let next = b[l3 + 6]!;
  let at = l3 + IPV6_HEADER_LEN;
  const cut = l3 + IPV6_HEADER_LEN + payload > len;
  let stopped = false;
  // RFC 8200 §4: walk the extension headers, each bounded by the payload.
  while (isExtension(next)) {
    if (info.ipv6ExtensionCount === MAX_IPV6_EXT_HEADERS) {
      info.anomalies |= Anomaly.BAD_IPV6_EXTENSION;
      stopped = true;
      break;
    }
    // RFC 8200 §4.3: the Hop-by-Hop Options header must immediately follow the IPv6 header.
    if (next === IPPROTO_HOPOPTS && info.ipv6ExtensionCount !== 0) {
      info.anomalies |= Anomaly.BAD_IPV6_EXTENSION;
      stopped = true;
      break;
    }
    if (at + 8 > end) {
      info.anomalies |= cut ? Anomaly.TRUNCATED : Anomaly.BAD_IPV6_EXTENSION;
      stopped = true;
      break;
    }
    let hlen: number;
    if (next === IPPROTO_FRAGMENT) {
      // RFC 8200 §4.5: fixed 8 bytes; offset in 8-octet units in the top 13 bits, M in bit 0.
      hlen = 8;
      const ff = u16(b, at + 2);
      info.fragmentOffset = (ff >> 3) * 8;
      info.moreFragments = (ff & 1) !== 0;
      info.fragmentId = ((b[at + 4]! << 24) | (b[at + 5]! << 16) | (b[at + 6]! << 8) | b[at + 7]!) >>> 0;
      // An atomic fragment (offset 0, M 0; RFC 6946) is a whole packet.
      if (info.moreFragments || info.fragmentOffset !== 0) info.fragment = FRAG_ANY | (info.fragmentOffset !== 0 ? FRAG_LATER : 0);
    } else if (next === IPPROTO_AH) {
      // RFC 4302 §2.2: Payload Len is the AH length in 4-octet units minus 2.
      hlen = (b[at + 1]! + 2) * 4;
    } else {
      // RFC 8200 §4.3/§4.4/§4.6: Hdr Ext Len in 8-octet units, not counting the first 8.
      hlen = (b[at + 1]! + 1) * 8;
    }
    if (at + hlen > end) {
      info.anomalies |= cut ? Anomaly.TRUNCATED : Anomaly.BAD_IPV6_EXTENSION;
      stopped = true;
      break;
    }
    if (next === IPPROTO_ROUTING && b[at + 3]! > 0) {
      // RFC 8200 §4.4: Routing Type at +2, Segments Left at +3; addresses from +8.
      const type = b[at + 2]!;
      const addrs = (hlen - 8) >> 4;
      if (type === 0 && addrs > 0) info.ipv6FinalDstOffset = at + 8 + 16 * (addrs - 1);
      else if ((type === 2 || type === 4) && addrs > 0) info.ipv6FinalDstOffset = at + 8;
    }
    info.ipv6ExtensionCount++;
    next = b[at]!;
    at += hlen;
  }
  info.ipHeaderLength = at - l3;
  if (stopped) return;
  info.ipProtocol = next;
  // Only the first fragment carries the L4 header.
  if (info.fragmentOffset !== 0) return;
  if (next === IPPROTO_NONE || next === IPPROTO_ESP) {
    info.l4Offset = at;
    info.l4Length = end - at;
    return;
  }
  parseL4(b, info, at, end, next, vxlanPort);
}

function isExtension(p: number): boolean {
  return p === IPPROTO_HOPOPTS || p === IPPROTO_ROUTING || p === IPPROTO_DSTOPTS || p === IPPROTO_MOBILITY ||
    p === IPPROTO_HIP || p === IPPROTO_SHIM6 || p === IPPROTO_FRAGMENT || p === IPPROTO_AH;
}

function parseL4(b: Uint8Array, info: PacketInfo, l4: number, end: number, proto: number, vxlanPort: number): void {
  info.l4Offset = l4;
  info.l4Length = end - l4;
  const avail = end - l4;
  // For a first fragment the header may be whole even though the datagram is not.
  if (proto === IPPROTO_UDP) {
    if (avail < UDP_HEADER_LEN) {
      info.anomalies |= Anomaly.TRUNCATED;
      return;
    }
    const ulen = u16(b, l4 + 4);
    // RFC 768: length counts header and data, so at least 8.
    if (info.fragment === 0 && (ulen < UDP_HEADER_LEN || ulen > avail)) {
      info.anomalies |= ulen > avail && info.anomalies & Anomaly.TRUNCATED ? Anomaly.TRUNCATED : Anomaly.BAD_L4_LENGTH;
      if (ulen < UDP_HEADER_LEN) return;
    }
    info.layers |= Layer.UDP;
    info.payloadOffset = l4 + UDP_HEADER_LEN;
    if (vxlanPort !== 0 && info.fragment === 0 && u16(b, l4 + 2) === vxlanPort) parseVxlan(b, info, l4 + UDP_HEADER_LEN, end);
  } else if (proto === IPPROTO_TCP) {
    if (avail < TCP_MIN_HEADER_LEN) {
      info.anomalies |= Anomaly.TRUNCATED;
      return;
    }
    // RFC 9293 §3.1: Data Offset counts 32-bit words, at least 5.
    const doff = (b[l4 + 12]! >> 4) * 4;
    if (doff < TCP_MIN_HEADER_LEN) {
      info.anomalies |= Anomaly.BAD_L4_LENGTH;
      return;
    }
    if (doff > avail) {
      info.anomalies |= info.anomalies & Anomaly.TRUNCATED ? Anomaly.TRUNCATED : Anomaly.BAD_L4_LENGTH;
      return;
    }
    info.layers |= Layer.TCP;
    info.payloadOffset = l4 + doff;
  } else if (proto === IPPROTO_ICMP || proto === IPPROTO_ICMPV6) {
    // RFC 792 / RFC 4443 §2.1: type, code, checksum, then a 4-byte rest of header.
    if (avail < (proto === IPPROTO_ICMP ? ICMP_HEADER_LEN : 4)) {
      info.anomalies |= Anomaly.TRUNCATED;
      return;
    }
    info.layers |= proto === IPPROTO_ICMP ? Layer.ICMP : Layer.ICMPV6;
    info.payloadOffset = l4 + (avail >= ICMP_HEADER_LEN ? ICMP_HEADER_LEN : 4);
  }
}

function parseVxlan(b: Uint8Array, info: PacketInfo, at: number, end: number): void {
  if (at + VXLAN_HEADER_LEN > end) {
    info.anomalies |= Anomaly.TRUNCATED;
    return;
  }
  // RFC 7348 §5: flags byte with I (0x08) set; other bits reserved, ignored on receipt.
  if ((b[at]! & 0x08) === 0) {
    info.anomalies |= Anomaly.BAD_VXLAN;
    return;
  }
  info.vxlanOffset = at;
  info.vni = (b[at + 4]! << 16) | (b[at + 5]! << 8) | b[at + 6]!;
  if (at + VXLAN_HEADER_LEN + ETH_HEADER_LEN > end) {
    info.anomalies |= Anomaly.BAD_VXLAN;
    return;
  }
  info.innerOffset = at + VXLAN_HEADER_LEN;
  info.layers |= Layer.VXLAN;
}
