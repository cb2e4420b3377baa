import { IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, VXLAN_PORT } from './constants.js';
import { Layer, PacketInfo, parsePacket } from './parse.js';

/**
 * The flow key: the fields a switch matches on, packed into a fixed layout of
 * 32-bit words (a `Uint32Array`), as Open vSwitch's `struct flow` is a fixed
 * layout of 64-bit words. A megaflow mask is a key of the same layout; masking is
 * a word-wise AND and hashing a word loop, with no per-packet allocation.
 *
 * | word | contents |
 * |---|---|
 * | 0 | in_port (set by the caller) |
 * | 1 | tunnel id (VNI; set by the caller after decapsulation) |
 * | 2, 3 | tunnel IPv4 source, destination (set by the caller) |
 * | 4 | eth_dst bytes 0–3 |
 * | 5 | eth_dst bytes 4–5 (high half), eth_src bytes 0–1 (low half) |
 * | 6 | eth_src bytes 2–5 |
 * | 7 | eth_type (high half), outer VLAN TCI with 0x1000 set when a tag is present (low half) |
 * | 8 | inner VLAN TCI with 0x1000 set when present (high half), outer TPID (low half) |
 * | 9 | ip_proto / ARP opcode (bits 24–31), ip_tos (16–23), ip_ttl (8–15), nw_frag (0–7) |
 * | 10–13 | nw_src: IPv4 in word 10 (or ARP spa); IPv6 in 10–13 |
 * | 14–17 | nw_dst: IPv4 in word 14 (or ARP tpa); IPv6 in 14–17 |
 * | 18 | tp_src (high half), tp_dst (low half); ICMP type and code |
 * | 19 | tcp_flags (bits 20–31), IPv6 flow label (bits 0–19) |
 * | 20 | ARP sha bytes 0–3 |
 * | 21 | ARP sha bytes 4–5 (high half), ARP tha bytes 0–1 (low half) |
 * | 22 | ARP tha bytes 2–5 |
 * | 23 | layers present ({@link Layer} bits, low 16) and anomalies (high 16) |
 */
export const FLOW_KEY_WORDS = 24;

/** Word indices of the flow key. */
export const FlowWord = {
  IN_PORT: 0,
  TUN_ID: 1,
  TUN_SRC: 2,
  TUN_DST: 3,
  ETH_DST_HI: 4,
  ETH_DST_LO_SRC_HI: 5,
  ETH_SRC_LO: 6,
  ETH_TYPE_VLAN: 7,
  VLAN2_TPID: 8,
  NW_PROTO_TOS_TTL_FRAG: 9,
  NW_SRC: 10,
  NW_DST: 14,
  TP_PORTS: 18,
  TCP_FLAGS_LABEL: 19,
  ARP_SHA_HI: 20,
  ARP_SHA_LO_THA_HI: 21,
  ARP_THA_LO: 22,
  LAYERS: 23,
} as const;

/** A field of the flow key: word index, bit shift and width (≤ 32). */
export interface FlowField {
  readonly word: number;
  readonly shift: number;
  readonly bits: number;
}

/** Named fields, so a switch can build masks and read values by name (OVS field names). */
export const FLOW_FIELDS = {
  in_port: { word: 0, shift: 0, bits: 32 },
  tun_id: { word: 1, shift: 0, bits: 32 },
  tun_src: { word: 2, shift: 0, bits: 32 },
  tun_dst: { word: 3, shift: 0, bits: 32 },
  eth_type: { word: 7, shift: 16, bits: 16 },
  vlan_tci: { word: 7, shift: 0, bits: 16 },
  vlan_vid: { word: 7, shift: 0, bits: 12 },
  vlan_pcp: { word: 7, shift: 13, bits: 3 },
  vlan2_tci: { word: 8, shift: 16, bits: 16 },
  vlan_tpid: { word: 8, shift: 0, bits: 16 },
  nw_proto: { word: 9, shift: 24, bits: 8 },
  nw_tos: { word: 9, shift: 16, bits: 8 },
  nw_ttl: { word: 9, shift: 8, bits: 8 },
  nw_frag: { word: 9, shift: 0, bits: 8 },
  nw_src: { word: 10, shift: 0, bits: 32 },
  nw_dst: { word: 14, shift: 0, bits: 32 },
  tp_src: { word: 18, shift: 16, bits: 16 },
  tp_dst: { word: 18, shift: 0, bits: 16 },
  tcp_flags: { word: 19, shift: 20, bits: 12 },
  ipv6_label: { word: 19, shift: 0, bits: 20 },
  layers: { word: 23, shift: 0, bits: 16 },
} as const satisfies Record<string, FlowField>;

export type FlowFieldName = keyof typeof FLOW_FIELDS;

/** The VLAN TCI bit Open vSwitch uses to say "a tag is present" (VLAN_CFI). */
export const VLAN_PRESENT = 0x1000;

/** A reusable flow key (or mask): 24 words, see {@link FLOW_KEY_WORDS}. */
export class FlowKey {
  readonly words: Uint32Array;
  constructor(words?: Uint32Array) {
    this.words = words ?? new Uint32Array(FLOW_KEY_WORDS);
  }

  clear(): void {
    this.words.fill(0);
  }

  /** Reads a named field (or any {@link FlowField}). */
  get(field: FlowFieldName | FlowField): number {
    const f: FlowField = typeof field === 'string' ? FLOW_FIELDS[field] : field;
    const w = this.words[f.word]! >>> f.shift;
    return f.bits === 32 ? w >>> 0 : w & ((1 << f.bits) - 1);
  }

  /** Writes a named field, leaving the rest of its word alone. */
  set(field: FlowFieldName | FlowField, value: number): this {
    const f: FlowField = typeof field === 'string' ? FLOW_FIELDS[field] : field;
    if (f.bits === 32) {
      this.words[f.word] = value;
      return this;
    }
    const m = ((1 << f.bits) - 1) << f.shift;
    this.words[f.word] = (this.words[f.word]! & ~m) | ((value << f.shift) & m);
    return this;
  }

  /** For masks: sets every bit of a field (exact match on it). */
  exact(field: FlowFieldName | FlowField): this {
    const f: FlowField = typeof field === 'string' ? FLOW_FIELDS[field] : field;
    return this.set(f, f.bits === 32 ? 0xffffffff : (1 << f.bits) - 1);
  }

  /** For masks: an exact match on the 6 bytes of eth_src or eth_dst. */
  exactMac(which: 'eth_src' | 'eth_dst'): this {
    const w = this.words;
    if (which === 'eth_dst') {
      w[4] = 0xffffffff;
      w[5] = w[5]! | 0xffff0000;
    } else {
      w[5] = w[5]! | 0xffff;
      w[6] = 0xffffffff;
    }
    return this;
  }

  /** For masks: an exact match on a full IPv6 nw_src or nw_dst (four words). */
  exactIpv6(which: 'nw_src' | 'nw_dst'): this {
    this.words.fill(0xffffffff, which === 'nw_src' ? 10 : 14, which === 'nw_src' ? 14 : 18);
    return this;
  }

  copyFrom(other: FlowKey): this {
    this.words.set(other.words);
    return this;
  }

  /** `this = src & mask`, word by word. */
  maskFrom(src: FlowKey, mask: FlowKey): this {
    const d = this.words;
    const s = src.words;
    const m = mask.words;
    for (let i = 0; i < FLOW_KEY_WORDS; i++) d[i] = s[i]! & m[i]!;
    return this;
  }

  equals(other: FlowKey): boolean {
    const a = this.words;
    const b = other.words;
    for (let i = 0; i < FLOW_KEY_WORDS; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  /** True when `(this & mask) == (other & mask)`; no copy. */
  equalsMasked(other: FlowKey, mask: FlowKey): boolean {
    const a = this.words;
    const b = other.words;
    const m = mask.words;
    for (let i = 0; i < FLOW_KEY_WORDS; i++) if (((a[i]! ^ b[i]!) & m[i]!) !== 0) return false;
    return true;
  }

  /** A 32-bit hash of the key (of `key & mask` when a mask is given), murmur3-style mixing. */
  hash(mask?: FlowKey, seed = 0): number {
    return flowHashWords(this.words, mask?.words, seed);
  }

  /** A hash of the L2 addresses, EtherType, IP protocol, addresses and ports only: for load spreading (ECMP, VXLAN outer source ports). */
  hash5Tuple(seed = 0): number {
    return flowHashWords(this.words, TUPLE_MASK.words, seed);
  }
}

function mix(h: number, k: number): number {
  k = Math.imul(k, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, 0x1b873593);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

/** Murmur3-32 over the (masked) words of a flow key. */
export function flowHashWords(words: Uint32Array, mask: Uint32Array | undefined, seed = 0): number {
  let h = seed | 0;
  if (mask) for (let i = 0; i < FLOW_KEY_WORDS; i++) h = mix(h, words[i]! & mask[i]!);
  else for (let i = 0; i < FLOW_KEY_WORDS; i++) h = mix(h, words[i]!);
  h ^= FLOW_KEY_WORDS * 4;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The mask of the L2 addresses, EtherType, IP protocol and addresses, and L4 ports. */
export const TUPLE_MASK: FlowKey = new FlowKey()
  .exactMac('eth_src').exactMac('eth_dst').exact('eth_type').exact('nw_proto').exactIpv6('nw_src').exactIpv6('nw_dst').exact('tp_src').exact('tp_dst');

function be32(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}

function be16(b: Uint8Array, o: number): number {
  return (b[o]! << 8) | b[o + 1]!;
}

/**
 * Fills `key` from a frame already parsed into `info` (words 0–3, the port and
 * tunnel metadata, are left for the caller). Fields of layers that are absent
 * are zero. Allocates nothing.
 */
export function extractFlowKey(bytes: Uint8Array, info: PacketInfo, key: FlowKey): FlowKey {
  const w = key.words;
  w.fill(0, 4);
  if (!(info.layers & Layer.ETHERNET)) {
    w[FlowWord.LAYERS] = (info.anomalies & 0xffff) << 16;
    return key;
  }
  w[4] = be32(bytes, 0);
  w[5] = ((be16(bytes, 4) << 16) | be16(bytes, 6)) >>> 0;
  w[6] = be32(bytes, 8);
  const tci0 = info.vlanCount > 0 ? (info.vlanTci0 | VLAN_PRESENT) & 0xffff : 0;
  w[7] = ((info.etherType << 16) | tci0) >>> 0;
  if (info.vlanCount > 1) w[8] = ((((info.vlanTci1 | VLAN_PRESENT) & 0xffff) << 16) | info.vlanTpid0) >>> 0;
  else if (info.vlanCount === 1) w[8] = info.vlanTpid0;
  const l3 = info.l3Offset;
  if (info.layers & Layer.ARP) {
    // As Open vSwitch: the opcode in nw_proto, spa/tpa in nw_src/nw_dst, sha/tha in arp_sha/arp_tha.
    w[9] = (bytes[l3 + 7]! << 24) >>> 0;
    w[10] = be32(bytes, l3 + 14);
    w[14] = be32(bytes, l3 + 24);
    w[20] = be32(bytes, l3 + 8);
    w[21] = ((be16(bytes, l3 + 12) << 16) | be16(bytes, l3 + 18)) >>> 0;
    w[22] = be32(bytes, l3 + 20);
  } else if (info.layers & Layer.IPV4) {
    w[9] = ((info.ipProtocol << 24) | (bytes[l3 + 1]! << 16) | (bytes[l3 + 8]! << 8) | info.fragment) >>> 0;
    w[10] = be32(bytes, l3 + 12);
    w[14] = be32(bytes, l3 + 16);
  } else if (info.layers & Layer.IPV6) {
    const tc = (be16(bytes, l3) >> 4) & 0xff;
    const proto = info.ipProtocol < 0 ? 0 : info.ipProtocol;
    w[9] = ((proto << 24) | (tc << 16) | (bytes[l3 + 7]! << 8) | info.fragment) >>> 0;
    for (let i = 0; i < 4; i++) {
      w[10 + i] = be32(bytes, l3 + 8 + 4 * i);
      w[14 + i] = be32(bytes, l3 + 24 + 4 * i);
    }
    w[19] = be32(bytes, l3) & 0xfffff;
  }
  const l4 = info.l4Offset;
  if (info.layers & (Layer.UDP | Layer.TCP)) {
    w[18] = be32(bytes, l4);
    if (info.layers & Layer.TCP) w[19] = (w[19]! | ((be16(bytes, l4 + 12) & 0xfff) << 20)) >>> 0;
  } else if (info.layers & (Layer.ICMP | Layer.ICMPV6)) {
    w[18] = ((bytes[l4]! << 16) | bytes[l4 + 1]!) >>> 0;
  }
  w[23] = (((info.anomalies & 0xffff) << 16) | (info.layers & 0xffff)) >>> 0;
  return key;
}

/**
 * Parses and extracts in one call, reusing one {@link PacketInfo}: the hot-path
 * entry for a switch port. `inPort` goes into word 0; words 1–3 are zeroed.
 */
export class FlowKeyExtractor {
  readonly info = new PacketInfo();
  constructor(readonly vxlanPort = VXLAN_PORT) {}

  extract(bytes: Uint8Array, key: FlowKey, inPort = 0, length = bytes.length): FlowKey {
    parsePacket(bytes, this.info, length, this.vxlanPort);
    extractFlowKey(bytes, this.info, key);
    const w = key.words;
    w[0] = inPort;
    w[1] = 0;
    w[2] = 0;
    w[3] = 0;
    return key;
  }
}

/** True for the L4 protocols whose ports the key holds. */
export function hasPorts(ipProtocol: number): boolean {
  return ipProtocol === IPPROTO_TCP || ipProtocol === IPPROTO_UDP || ipProtocol === IPPROTO_ICMP || ipProtocol === IPPROTO_ICMPV6;
}
