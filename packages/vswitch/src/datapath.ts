import { Layer } from '@ioplane/packet';
import type { NetBackend } from '@ioplane/net-backends';
import type { CAction } from './actions.js';
import type { FlowRule } from './classifier.js';
import type { Meter } from './meter.js';

/** Bytes kept free in front of a working copy so push_vlan and encapsulation need not move the payload. */
export const HEADROOM = 64;
/** The largest frame a working copy holds (an IPv4 total length is 16 bits). */
export const SCRATCH_BYTES = 65536 + 2 * HEADROOM;

/**
 * A reusable buffer with cached views: `NetBackend.send` takes exact-length
 * `Uint8Array`s, so each (start, length) view is made once and reused, and the
 * hot path allocates nothing once the lengths in use have been seen.
 */
export class Scratch {
  readonly buf: Uint8Array;
  private readonly views = new Map<number, Uint8Array>();
  constructor(bytes = SCRATCH_BYTES) {
    this.buf = new Uint8Array(bytes);
  }

  view(start: number, len: number): Uint8Array {
    const k = start * 131072 + len;
    let v = this.views.get(k);
    if (v === undefined) {
      if (this.views.size >= 8192) this.views.clear();
      v = this.buf.subarray(start, start + len);
      this.views.set(k, v);
    }
    return v;
  }
}

/** Operation codes of a compiled datapath program. */
export const Op = {
  OUTPUT: 1,
  OUTPUT_IN_PORT: 2,
  FLOOD: 3,
  ALL: 4,
  CONTROLLER: 5,
  NORMAL: 6,
  SET_ETH_DST: 10,
  SET_ETH_SRC: 11,
  SET_VLAN_VID: 12,
  SET_VLAN_PCP: 13,
  SET_IP_DSCP: 14,
  SET_IP_ECN: 15,
  SET_IPV4_SRC: 16,
  SET_IPV4_DST: 17,
  SET_TP_SRC: 18,
  SET_TP_DST: 19,
  SET_KEY: 20,
  /** One 32-bit word of an IPv6 address: a = key word (10–13 source, 14–17 destination), b = value. */
  SET_IPV6_WORD: 21,
  SET_IPV6_FLABEL: 22,
  SET_ARP_OP: 23,
  SET_ARP_SPA: 24,
  SET_ARP_TPA: 25,
  SET_ARP_SHA: 26,
  SET_ARP_THA: 27,
  SET_ICMP_TYPE: 28,
  SET_ICMP_CODE: 29,
  PUSH_VLAN: 30,
  POP_VLAN: 31,
  METER: 40,
  GROUP: 41,
  GROUP_SELECT: 42,
} as const;

export type VlanMode = { mode: 'access'; tag: number } | { mode: 'trunk'; trunks?: number[]; native?: number };

export interface PortStats {
  rxPackets: number;
  rxBytes: number;
  /** Frames refused at ingress: VLAN not allowed, inactive bond member, mirror output port, malformed tunnel packet. */
  rxDropped: number;
  txPackets: number;
  txBytes: number;
  /** Frames not sent: port down, back-pressure, no tunnel destination. */
  txDropped: number;
}

/** A bridge port: one back-end, a bond of several, or a VXLAN tunnel over an underlay. */
export class PortState {
  backend: NetBackend | null = null;
  readonly members: NetBackend[] = [];
  readonly memberUp: boolean[] = [];
  /** Active-backup: index of the active member, -1 when none is up. */
  active = -1;
  /** Balance modes: indices of the live members. */
  liveMembers: number[] = [];
  bondMode: 'active-backup' | 'balance-tcp' | 'balance-slb' = 'active-backup';
  // Tunnel (VXLAN, RFC 7348)
  underlay: NetBackend | null = null;
  localIp = 0;
  /** 0: from the flow's tun_dst. */
  remoteIp = 0;
  /** -1: from the flow's tunnel_id (key=flow). */
  vni = -1;
  dstPort = 4789;
  localMac: Uint8Array<ArrayBufferLike> = new Uint8Array(6);
  remoteMac: Uint8Array<ArrayBufferLike> = new Uint8Array(6);
  tx: Scratch | null = null;
  // VLANs (NORMAL)
  access = false;
  tag = 0;
  /** Trunk: allowed VLANs (null = all). */
  trunks: Uint8Array | null = null;
  native = 0;
  // OpenFlow port config (§7.2.1 ofp_port_config)
  down = false;
  noFlood = false;
  noFwd = false;
  noRecv = false;
  noPacketIn = false;
  live = false;
  mirrorSrcBits = 0;
  mirrorDstBits = 0;
  mirrorOut = false;
  readonly stats: PortStats = { rxPackets: 0, rxBytes: 0, rxDropped: 0, txPackets: 0, txBytes: 0, txDropped: 0 };
  readonly unsubscribe: (() => void)[] = [];
  /** Frames queued for one `send` at the end of a receive batch (unmodified received frames only). */
  readonly txq: Uint8Array[] = [];
  txn = 0;
  /** Copies of frames queued for a deferred send (deferredTx), one buffer per queue slot. */
  readonly stage: Scratch[] = [];

  constructor(
    readonly no: number,
    readonly name: string,
    readonly kind: 'netdev' | 'bond' | 'tunnel',
  ) {}

  /** Whether NORMAL may send frames of `vlan` here. */
  carries(vlan: number): boolean {
    if (this.access) return vlan === this.tag;
    return this.trunks === null || this.trunks[vlan] === 1 || vlan === this.native;
  }
}

export class GroupBucketState {
  packetCount = 0;
  byteCount = 0;
  constructor(
    readonly weight: number,
    readonly watchPort: number,
    readonly watchGroup: number,
    readonly actions: CAction[],
  ) {}
}

export class GroupState {
  packetCount = 0;
  byteCount = 0;
  readonly installedAt: number;
  /** SELECT: hash slot → bucket index (-1 none), rebuilt when liveness changes. */
  table = new Int16Array(256).fill(-1);
  constructor(
    readonly id: number,
    readonly type: 'all' | 'select' | 'indirect' | 'ff',
    readonly buckets: GroupBucketState[],
    readonly raw: unknown,
    now: number,
  ) {
    this.installedAt = now;
  }
}

/** One step of a datapath program; operands decoded at translation. */
export class DpOp {
  a = 0;
  b = 0;
  c = 0;
  port: PortState | null = null;
  subs: Program[] | null = null;
  group: GroupState | null = null;
  buckets: GroupBucketState[] | null = null;
  meter: Meter | null = null;
  cookie = 0n;
  meta = 0n;
  /** CONTROLLER: the high 32 bits of tunnel_id at translation. */
  tunHi = 0;
  constructor(readonly code: number) {}
}

/** A precomputed action program: what the megaflow cache stores. */
export class Program {
  constructor(
    readonly ops: DpOp[],
    /** Whether some op reads the working key (NORMAL, SELECT, bonds, tunnels, packet-in). */
    readonly needsKey: boolean,
  ) {}
}

/** What a translation yields: the program, the rules it passed (their counters), the tables it looked in. */
export class Translation {
  constructor(
    readonly prog: Program,
    readonly rules: FlowRule[],
    readonly lookedUp: Uint8Array,
    readonly matched: Uint8Array,
  ) {}
}

/** One packet being executed: the bytes (the received frame, or a working copy) and its header offsets. */
export class Pkt {
  buf: Uint8Array = new Uint8Array(0);
  start = 0;
  len = 0;
  /** The bytes are in `scratch` (ours to modify). */
  own = false;
  /** The scratch `buf` belongs to (null: the received frame itself). */
  src: Scratch | null = null;
  l3 = -1;
  l4 = -1;
  layers = 0;
  proto = -1;
  vlans = 0;
  readonly key = new Uint32Array(64);
  private scratchBuf: Scratch | null = null;

  get scratch(): Scratch {
    return (this.scratchBuf ??= new Scratch());
  }

  /** Takes the state of `o` without copying bytes (copy-on-write). */
  cloneFrom(o: Pkt, withKey: boolean): void {
    this.buf = o.buf;
    this.start = o.start;
    this.len = o.len;
    this.own = false;
    this.src = o.src;
    this.l3 = o.l3;
    this.l4 = o.l4;
    this.layers = o.layers;
    this.proto = o.proto;
    this.vlans = o.vlans;
    if (withKey) this.key.set(o.key);
  }

  /** Makes the bytes ours before the first write. */
  own_(): void {
    if (this.own) return;
    const s = this.scratch;
    // frame() is the received frame itself or a cached view: no allocation.
    s.buf.set(this.frame(), HEADROOM);
    this.buf = s.buf;
    this.start = HEADROOM;
    this.src = s;
    this.own = true;
  }

  /** The packet as an exact-length view. */
  frame(): Uint8Array {
    if (this.src === null) return this.buf;
    return this.src.view(this.start, this.len);
  }
}

function csumReplace16(b: Uint8Array, at: number, old: number, nw: number, udp: boolean): void {
  const hc = (b[at]! << 8) | b[at + 1]!;
  if (udp && hc === 0) return; // RFC 768: zero means no checksum over IPv4.
  // RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m').
  let s = (~hc & 0xffff) + (~old & 0xffff) + (nw & 0xffff);
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  let r = ~s & 0xffff;
  if (udp && r === 0) r = 0xffff;
  b[at] = r >>> 8;
  b[at + 1] = r & 0xff;
}

/** Where the L4 checksum is and whether zero means "none", or -1 when the packet has none we can update. */
function l4CsumAt(p: Pkt): number {
  if (p.l4 < 0) return -1;
  if (p.layers & Layer.TCP) return p.start + p.l4 + 16;
  if (p.layers & Layer.UDP) return p.start + p.l4 + 6;
  return -1;
}

function write32(b: Uint8Array, at: number, v: number): number {
  const old = ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
  b[at] = v >>> 24;
  b[at + 1] = (v >>> 16) & 0xff;
  b[at + 2] = (v >>> 8) & 0xff;
  b[at + 3] = v & 0xff;
  return old;
}

/** Applies a set-field, push or pop to the packet bytes (RFC 1624 incremental checksums). */
export function applyToBytes(p: Pkt, code: number, a: number, b: number): void {
  switch (code) {
    case Op.SET_ETH_DST:
    case Op.SET_ETH_SRC: {
      p.own_();
      const at = p.start + (code === Op.SET_ETH_DST ? 0 : 6);
      write32(p.buf, at, a);
      p.buf[at + 4] = b >>> 8;
      p.buf[at + 5] = b & 0xff;
      return;
    }
    case Op.SET_VLAN_VID:
    case Op.SET_VLAN_PCP: {
      if (p.vlans === 0) return;
      p.own_();
      const at = p.start + 14;
      const tci = (p.buf[at]! << 8) | p.buf[at + 1]!;
      const n = code === Op.SET_VLAN_VID ? (tci & 0xf000) | a : (tci & 0x1fff) | (a << 13);
      p.buf[at] = n >>> 8;
      p.buf[at + 1] = n & 0xff;
      return;
    }
    case Op.SET_IP_DSCP:
    case Op.SET_IP_ECN: {
      if (p.layers & Layer.IPV4) {
        p.own_();
        const at = p.start + p.l3;
        const old = (p.buf[at]! << 8) | p.buf[at + 1]!;
        const tos = p.buf[at + 1]!;
        p.buf[at + 1] = code === Op.SET_IP_DSCP ? (a << 2) | (tos & 3) : (tos & 0xfc) | a;
        csumReplace16(p.buf, at + 10, old, (p.buf[at]! << 8) | p.buf[at + 1]!, false);
      } else if (p.layers & Layer.IPV6) {
        p.own_();
        const at = p.start + p.l3;
        const tc = ((p.buf[at]! & 0x0f) << 4) | (p.buf[at + 1]! >>> 4);
        const n = code === Op.SET_IP_DSCP ? (a << 2) | (tc & 3) : (tc & 0xfc) | a;
        p.buf[at] = (p.buf[at]! & 0xf0) | (n >>> 4);
        p.buf[at + 1] = (p.buf[at + 1]! & 0x0f) | ((n & 0x0f) << 4);
      }
      return;
    }
    case Op.SET_IPV4_SRC:
    case Op.SET_IPV4_DST: {
      if (!(p.layers & Layer.IPV4)) return;
      p.own_();
      const at = p.start + p.l3 + (code === Op.SET_IPV4_SRC ? 12 : 16);
      const old = write32(p.buf, at, a);
      const ipc = p.start + p.l3 + 10;
      csumReplace16(p.buf, ipc, old >>> 16, a >>> 16, false);
      csumReplace16(p.buf, ipc, old & 0xffff, a & 0xffff, false);
      const l4c = l4CsumAt(p);
      if (l4c >= 0) {
        // The TCP/UDP pseudo-header covers the addresses (RFC 9293 §3.1, RFC 768).
        const udp = (p.layers & Layer.UDP) !== 0;
        csumReplace16(p.buf, l4c, old >>> 16, a >>> 16, udp);
        csumReplace16(p.buf, l4c, old & 0xffff, a & 0xffff, udp);
      }
      return;
    }
    case Op.SET_TP_SRC:
    case Op.SET_TP_DST: {
      if (!(p.layers & (Layer.TCP | Layer.UDP))) return;
      p.own_();
      const at = p.start + p.l4 + (code === Op.SET_TP_SRC ? 0 : 2);
      const old = (p.buf[at]! << 8) | p.buf[at + 1]!;
      p.buf[at] = a >>> 8;
      p.buf[at + 1] = a & 0xff;
      csumReplace16(p.buf, l4CsumAt(p), old, a, (p.layers & Layer.UDP) !== 0);
      return;
    }
    case Op.SET_IPV6_WORD: {
      if (!(p.layers & Layer.IPV6)) return;
      p.own_();
      const at = p.start + p.l3 + 8 + (a - 10) * 4;
      const old = write32(p.buf, at, b);
      // The TCP, UDP and ICMPv6 checksums cover the addresses through the pseudo-header
      // (RFC 8200 §8.1, RFC 4443 §2.3): RFC 1624 incremental update, 16 bits at a time.
      const l4c = p.l4 < 0 ? -1 : p.layers & Layer.ICMPV6 ? p.start + p.l4 + 2 : l4CsumAt(p);
      if (l4c >= 0) {
        // Over IPv6 a UDP checksum is mandatory (RFC 8200 §8.1): a zero result is sent as 0xffff.
        const udp = (p.layers & Layer.UDP) !== 0;
        csumReplace16(p.buf, l4c, old >>> 16, b >>> 16, udp);
        csumReplace16(p.buf, l4c, old & 0xffff, b & 0xffff, udp);
      }
      return;
    }
    case Op.SET_IPV6_FLABEL: {
      if (!(p.layers & Layer.IPV6)) return;
      p.own_();
      // RFC 8200 §3: version (4), traffic class (8), flow label (20); no header checksum.
      const at = p.start + p.l3;
      p.buf[at + 1] = (p.buf[at + 1]! & 0xf0) | (a >>> 16);
      p.buf[at + 2] = (a >>> 8) & 0xff;
      p.buf[at + 3] = a & 0xff;
      return;
    }
    case Op.SET_ARP_OP:
    case Op.SET_ARP_SPA:
    case Op.SET_ARP_TPA:
    case Op.SET_ARP_SHA:
    case Op.SET_ARP_THA: {
      if (!(p.layers & Layer.ARP)) return;
      p.own_();
      // RFC 826 over Ethernet/IPv4: htype, ptype, hlen, plen, op (6), sha (8), spa (14), tha (18), tpa (24).
      const at = p.start + p.l3;
      switch (code) {
        case Op.SET_ARP_OP: p.buf[at + 6] = a >>> 8; p.buf[at + 7] = a & 0xff; return;
        case Op.SET_ARP_SPA: write32(p.buf, at + 14, a); return;
        case Op.SET_ARP_TPA: write32(p.buf, at + 24, a); return;
      }
      const m = at + (code === Op.SET_ARP_SHA ? 8 : 18);
      write32(p.buf, m, a);
      p.buf[m + 4] = b >>> 8;
      p.buf[m + 5] = b & 0xff;
      return;
    }
    case Op.SET_ICMP_TYPE:
    case Op.SET_ICMP_CODE: {
      if (!(p.layers & (Layer.ICMP | Layer.ICMPV6)) || p.l4 < 0) return;
      p.own_();
      // Type and code are the first 16-bit word of the message, which both checksums cover
      // (RFC 792, RFC 4443 §2.3): RFC 1624 incremental update.
      const at = p.start + p.l4;
      const old = (p.buf[at]! << 8) | p.buf[at + 1]!;
      p.buf[code === Op.SET_ICMP_TYPE ? at : at + 1] = a;
      csumReplace16(p.buf, at + 2, old, (p.buf[at]! << 8) | p.buf[at + 1]!, false);
      return;
    }
    case Op.PUSH_VLAN: {
      p.own_();
      if (p.start < 4) return;
      const s = p.start;
      const bb = p.buf;
      // §5.12.1 (Table 6 "push VLAN"): the new tag's VID and PCP are copied from the outer tag if any, else zero.
      const tci = p.vlans > 0 ? (bb[s + 14]! << 8) | bb[s + 15]! : 0;
      bb.copyWithin(s - 4, s, s + 12);
      p.start = s - 4;
      p.len += 4;
      bb[s + 8] = a >>> 8;
      bb[s + 9] = a & 0xff;
      bb[s + 10] = tci >>> 8;
      bb[s + 11] = tci & 0xff;
      p.vlans++;
      if (p.l3 >= 0) p.l3 += 4;
      if (p.l4 >= 0) p.l4 += 4;
      return;
    }
    case Op.POP_VLAN: {
      if (p.vlans === 0) return;
      p.own_();
      const s = p.start;
      p.buf.copyWithin(s + 4, s, s + 12);
      p.start = s + 4;
      p.len -= 4;
      p.vlans--;
      if (p.l3 >= 0) p.l3 -= 4;
      if (p.l4 >= 0) p.l4 -= 4;
      return;
    }
  }
}

/**
 * Applies the same operation to a flow key, as later tables (and live ops) must
 * see it. Returns false when the operation does not apply to this key (a VLAN
 * field on an untagged frame, an IPv4 field on a non-IPv4 frame).
 */
export function applyToKey(key: Uint32Array, code: number, a: number, b: number): boolean {
  const ethType = key[7]! >>> 16;
  const isIp = ethType === 0x0800 || ethType === 0x86dd;
  switch (code) {
    case Op.SET_ETH_DST:
      key[4] = a;
      key[5] = ((b << 16) | (key[5]! & 0xffff)) >>> 0;
      return true;
    case Op.SET_ETH_SRC:
      key[5] = ((key[5]! & 0xffff0000) | (a >>> 16)) >>> 0;
      key[6] = (((a & 0xffff) << 16) | b) >>> 0;
      return true;
    case Op.SET_VLAN_VID:
      if (!(key[7]! & 0x1000)) return false;
      key[7] = ((key[7]! & ~0xfff) | a) >>> 0;
      return true;
    case Op.SET_VLAN_PCP:
      if (!(key[7]! & 0x1000)) return false;
      key[7] = ((key[7]! & ~0xe000) | (a << 13)) >>> 0;
      return true;
    case Op.SET_IP_DSCP:
      if (!isIp) return false;
      key[9] = ((key[9]! & ~0x00fc0000) | (a << 18)) >>> 0;
      return true;
    case Op.SET_IP_ECN:
      if (!isIp) return false;
      key[9] = ((key[9]! & ~0x00030000) | (a << 16)) >>> 0;
      return true;
    case Op.SET_IPV4_SRC:
    case Op.SET_IPV4_DST:
      if (ethType !== 0x0800) return false;
      key[code === Op.SET_IPV4_SRC ? 10 : 14] = a;
      return true;
    case Op.SET_TP_SRC:
    case Op.SET_TP_DST: {
      const proto = key[9]! >>> 24;
      if (!isIp || (proto !== 6 && proto !== 17)) return false;
      key[18] = code === Op.SET_TP_SRC ? ((a << 16) | (key[18]! & 0xffff)) >>> 0 : ((key[18]! & 0xffff0000) | a) >>> 0;
      return true;
    }
    case Op.SET_KEY:
      key[a] = b;
      return true;
    case Op.SET_IPV6_WORD:
      if (ethType !== 0x86dd || !(key[23]! & Layer.IPV6)) return false;
      key[a] = b;
      return true;
    case Op.SET_IPV6_FLABEL:
      if (ethType !== 0x86dd || !(key[23]! & Layer.IPV6)) return false;
      key[19] = ((key[19]! & 0xfff00000) | a) >>> 0;
      return true;
    case Op.SET_ARP_OP:
    case Op.SET_ARP_SPA:
    case Op.SET_ARP_TPA:
    case Op.SET_ARP_SHA:
    case Op.SET_ARP_THA:
      if (ethType !== 0x0806 || !(key[23]! & Layer.ARP)) return false;
      switch (code) {
        case Op.SET_ARP_OP: key[9] = ((key[9]! & 0x00ffffff) | (a << 24)) >>> 0; break;
        case Op.SET_ARP_SPA: key[10] = a; break;
        case Op.SET_ARP_TPA: key[14] = a; break;
        case Op.SET_ARP_SHA:
          key[20] = a;
          key[21] = ((b << 16) | (key[21]! & 0xffff)) >>> 0;
          break;
        case Op.SET_ARP_THA:
          key[21] = ((key[21]! & 0xffff0000) | (a >>> 16)) >>> 0;
          key[22] = (((a & 0xffff) << 16) | b) >>> 0;
          break;
      }
      return true;
    case Op.SET_ICMP_TYPE:
    case Op.SET_ICMP_CODE:
      if (!(key[23]! & (Layer.ICMP | Layer.ICMPV6))) return false;
      key[18] = code === Op.SET_ICMP_TYPE ? ((key[18]! & 0xff00ffff) | (a << 16)) >>> 0 : ((key[18]! & 0xffffff00) | a) >>> 0;
      return true;
    case Op.PUSH_VLAN: {
      const old = key[7]! & 0xffff;
      const present = (old & 0x1000) !== 0;
      // The key holds two tags, as the parser reads two (and Open vSwitch's flow key,
      // FLOW_MAX_VLAN_HEADERS): a third would leave the frame's bytes and its key apart, so
      // that a later pop, set_field or match would act on a tag the key does not show.
      if (present && (key[8]! & 0x10000000) !== 0) return false;
      key[8] = present ? ((old << 16) | a) >>> 0 : a;
      key[7] = ((key[7]! & 0xffff0000) | (present ? old : 0x1000)) >>> 0;
      return true;
    }
    case Op.POP_VLAN: {
      if (!(key[7]! & 0x1000)) return false;
      const inner = key[8]! >>> 16;
      key[7] = ((key[7]! & 0xffff0000) | inner) >>> 0;
      key[8] = inner ? 0x8100 : 0;
      return true;
    }
  }
  return false;
}
