/**
 * The reference model: OpenFlow 1.3 pipeline semantics written the plain way, for
 * the property test to compare the bridge against. No caches, no compiled key: a
 * linear scan over the flow entries the test itself keeps (it applies each flow-mod
 * to its own list, never reading the bridge's tables), the highest priority winning
 * and the oldest entry among equals, the match evaluated field by field from the
 * packet bytes (parsed again after every change), actions applied to a byte copy
 * with checksums recomputed from scratch, group buckets chosen from the test's own
 * port and group state.
 */
import {
  FlowKey, FlowKeyExtractor, PacketInfo, fillIpv4HeaderChecksum, fillL4Checksum, parseIpv4, parseIpv6, parseMac, parsePacket,
} from '@ioplane/packet';
import type { Action, GroupBucket, GroupConfig, Instruction, Match } from '../src/index.js';
import { Group, Port, tupleHash } from '../src/index.js';

export interface RefOutput {
  port: number;
  hex: string;
}

export interface RefPacketIn {
  reason: 'no_match' | 'action';
  tableId: number;
}

interface RefPkt {
  bytes: Uint8Array;
  inPort: number;
  metadata: bigint;
  regs: number[];
  tunnelId: bigint;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

function be(b: Uint8Array, at: number, n: number): bigint {
  let v = 0n;
  for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(b[at + i] ?? 0);
  return v;
}

/** The packet's fields, read from its bytes (absent layers read as zero). */
function fieldsOf(p: RefPkt): Map<keyof Match, bigint> {
  const b = p.bytes;
  const f = new Map<keyof Match, bigint>();
  f.set('in_port', BigInt(p.inPort));
  f.set('metadata', p.metadata);
  f.set('tunnel_id', p.tunnelId);
  p.regs.forEach((r, i) => f.set(`reg${i}` as keyof Match, BigInt(r)));
  f.set('eth_dst', be(b, 0, 6));
  f.set('eth_src', be(b, 6, 6));
  let at = 12;
  let vid = 0n;
  let pcp = 0n;
  let tags = 0;
  while (tags < 8 && (be(b, at, 2) === 0x8100n || be(b, at, 2) === 0x88a8n)) {
    if (tags === 0) {
      const tci = Number(be(b, at + 2, 2));
      vid = BigInt(0x1000 | (tci & 0xfff));
      pcp = BigInt(tci >> 13);
    }
    tags++;
    at += 4;
  }
  f.set('vlan_vid', vid);
  f.set('vlan_pcp', pcp);
  const type = Number(be(b, at, 2));
  f.set('eth_type', BigInt(type));
  const l3 = at + 2;
  let proto = -1;
  let l4 = -1;
  if (type === 0x0800) {
    proto = b[l3 + 9]!;
    f.set('ip_dscp', BigInt(b[l3 + 1]! >> 2));
    f.set('ip_ecn', BigInt(b[l3 + 1]! & 3));
    f.set('ipv4_src', be(b, l3 + 12, 4));
    f.set('ipv4_dst', be(b, l3 + 16, 4));
    l4 = l3 + (b[l3]! & 15) * 4;
  } else if (type === 0x86dd) {
    proto = b[l3 + 6]!;
    const tc = ((b[l3]! & 15) << 4) | (b[l3 + 1]! >> 4);
    f.set('ip_dscp', BigInt(tc >> 2));
    f.set('ip_ecn', BigInt(tc & 3));
    f.set('ipv6_src', be(b, l3 + 8, 16));
    f.set('ipv6_dst', be(b, l3 + 24, 16));
    f.set('ipv6_flabel', be(b, l3, 4) & 0xfffffn);
    l4 = l3 + 40;
  } else if (type === 0x0806) {
    f.set('arp_op', be(b, l3 + 6, 2));
    f.set('arp_sha', be(b, l3 + 8, 6));
    f.set('arp_spa', be(b, l3 + 14, 4));
    f.set('arp_tha', be(b, l3 + 18, 6));
    f.set('arp_tpa', be(b, l3 + 24, 4));
  }
  if (proto >= 0) {
    f.set('ip_proto', BigInt(proto));
    if (proto === 6) {
      f.set('tcp_src', be(b, l4, 2));
      f.set('tcp_dst', be(b, l4 + 2, 2));
    } else if (proto === 17) {
      f.set('udp_src', be(b, l4, 2));
      f.set('udp_dst', be(b, l4 + 2, 2));
    } else if (proto === 1) {
      f.set('icmpv4_type', BigInt(b[l4]!));
      f.set('icmpv4_code', BigInt(b[l4 + 1]!));
    } else if (proto === 58) {
      f.set('icmpv6_type', BigInt(b[l4]!));
      f.set('icmpv6_code', BigInt(b[l4 + 1]!));
    }
  }
  return f;
}

function bytesToBig(u: Uint8Array): bigint {
  return be(u, 0, u.length);
}

/** A match value as (value, mask) bigints, parsed independently of the bridge's compiler. */
export function valueMask(field: string, v: unknown): [bigint, bigint] {
  const all = (bits: number): bigint => (1n << BigInt(bits)) - 1n;
  if (field === 'metadata' || field === 'tunnel_id') {
    if (typeof v === 'bigint' || typeof v === 'number') return [BigInt(v), all(64)];
    const o = v as { value: bigint | number; mask: bigint | number };
    return [BigInt(o.value), BigInt(o.mask)];
  }
  if (field.startsWith('eth_') && field !== 'eth_type' || field === 'arp_sha' || field === 'arp_tha') {
    if (typeof v === 'string') {
      const [a, m] = v.split('/');
      return [bytesToBig(parseMac(a!)), m ? bytesToBig(parseMac(m)) : all(48)];
    }
    const o = v as { value: string; mask: string };
    return [bytesToBig(parseMac(o.value)), bytesToBig(parseMac(o.mask))];
  }
  if (field === 'ipv6_src' || field === 'ipv6_dst') {
    const [a, m] = (v as string).split('/');
    const len = m === undefined ? 128 : Number(m);
    return [bytesToBig(parseIpv6(a!)), len === 0 ? 0n : all(128) ^ all(128 - len)];
  }
  if (field === 'ipv4_src' || field === 'ipv4_dst' || field === 'arp_spa' || field === 'arp_tpa') {
    if (typeof v === 'string') {
      const [a, m] = v.split('/');
      const len = m === undefined ? 32 : Number(m);
      return [BigInt(parseIpv4(a!)), len === 0 ? 0n : all(32) ^ all(32 - len)];
    }
  }
  if (typeof v === 'number') {
    const widths: Record<string, number> = { vlan_vid: 13 };
    return [BigInt(v), all(widths[field] ?? 64)];
  }
  const o = v as { value: number; mask: number };
  return [BigInt(o.value), BigInt(o.mask)];
}

export function refMatches(m: Match, p: RefPkt): boolean {
  const f = fieldsOf(p);
  for (const [k, v] of Object.entries(m)) {
    if (v === undefined) continue;
    const [val, mask] = valueMask(k, v);
    const got = f.get(k as keyof Match) ?? 0n;
    if ((got & mask) !== (val & mask)) return false;
  }
  return true;
}

/** A flow entry as the test's model keeps it; `seq` orders entries by age (a replacing add is new). */
export interface RefFlow {
  tableId: number;
  priority: number;
  match: Match;
  instructions: Instruction[];
  seq: number;
}

export interface RefWorld {
  flows: readonly RefFlow[];
  groups: ReadonlyMap<number, GroupConfig>;
  miss: ReadonlyMap<number, 'drop' | 'controller'>;
  ports: readonly { no: number; live: boolean; noFlood: boolean }[];
}

/** What the reference met, summed over every instance: the properties assert these are not rare. */
export const refCoverage = { lookups: 0, matched: 0, multiMatch: 0, priorityTies: 0, selectChoices: 0, ffFailovers: 0 };

function fixChecksums(b: Uint8Array): void {
  // On an untagged copy (the parser stops after two tags), then copied back.
  const { l3 } = l3Of(b);
  const t = new Uint8Array(b.length - l3 + 14);
  t.set(b.subarray(l3 - 2), 12);
  const info = new PacketInfo();
  parsePacket(t, info);
  if (info.ipVersion === 4) fillIpv4HeaderChecksum(t, info.l3Offset);
  if (info.l4Offset >= 0 && (info.ipProtocol === 1 || info.ipProtocol === 58)) fillL4Checksum(t, info);
  if (info.l4Offset >= 0 && (info.ipProtocol === 6 || info.ipProtocol === 17)) {
    const ck = info.l4Offset + (info.ipProtocol === 6 ? 16 : 6);
    // An IPv4 UDP checksum of zero means "none" and stays so (RFC 768).
    if (!(info.ipProtocol === 17 && info.ipVersion === 4 && t[ck] === 0 && t[ck + 1] === 0)) fillL4Checksum(t, info);
  }
  b.set(t.subarray(14), l3);
}

function l3Of(b: Uint8Array): { tags: number; l3: number; type: number } {
  let at = 12;
  let tags = 0;
  while (tags < 8 && (((b[at]! << 8) | b[at + 1]!) === 0x8100 || ((b[at]! << 8) | b[at + 1]!) === 0x88a8)) {
    tags++;
    at += 4;
  }
  return { tags, l3: at + 2, type: (b[at]! << 8) | b[at + 1]! };
}

function setField(p: RefPkt, field: string, value: number | string | bigint): void {
  const b = p.bytes;
  const { tags, l3, type } = l3Of(b);
  const put = (at: number, v: number, n: number): void => {
    for (let i = n - 1; i >= 0; i--) {
      b[at + i] = v & 0xff;
      v = Math.floor(v / 256);
    }
  };
  const l4 = type === 0x0800 ? l3 + (b[l3]! & 15) * 4 : l3 + 40;
  const proto = type === 0x0800 ? b[l3 + 9] : type === 0x86dd ? b[l3 + 6] : -1;
  switch (field) {
    case 'eth_dst': b.set(parseMac(String(value)), 0); break;
    case 'eth_src': b.set(parseMac(String(value)), 6); break;
    case 'vlan_vid': if (tags) put(14, (((b[14]! << 8) | b[15]!) & 0xf000) | Number(value), 2); break;
    case 'vlan_pcp': if (tags) put(14, (((b[14]! << 8) | b[15]!) & 0x1fff) | (Number(value) << 13), 2); break;
    case 'ip_dscp':
      if (type === 0x0800) b[l3 + 1] = (Number(value) << 2) | (b[l3 + 1]! & 3);
      else if (type === 0x86dd) {
        const tc = (Number(value) << 2) | ((((b[l3]! & 15) << 4) | (b[l3 + 1]! >> 4)) & 3);
        b[l3] = (b[l3]! & 0xf0) | (tc >> 4);
        b[l3 + 1] = (b[l3 + 1]! & 0x0f) | ((tc & 15) << 4);
      }
      break;
    case 'ipv4_src': if (type === 0x0800) put(l3 + 12, typeof value === 'string' ? parseIpv4(value) : Number(value), 4); break;
    case 'ipv4_dst': if (type === 0x0800) put(l3 + 16, typeof value === 'string' ? parseIpv4(value) : Number(value), 4); break;
    case 'tcp_src': if (proto === 6) put(l4, Number(value), 2); break;
    case 'tcp_dst': if (proto === 6) put(l4 + 2, Number(value), 2); break;
    case 'udp_src': if (proto === 17) put(l4, Number(value), 2); break;
    case 'udp_dst': if (proto === 17) put(l4 + 2, Number(value), 2); break;
    case 'ipv6_src': if (type === 0x86dd) b.set(parseIpv6(String(value)), l3 + 8); break;
    case 'ipv6_dst': if (type === 0x86dd) b.set(parseIpv6(String(value)), l3 + 24); break;
    case 'ipv6_flabel':
      if (type === 0x86dd) {
        const v = Number(value);
        b[l3 + 1] = (b[l3 + 1]! & 0xf0) | (v >> 16);
        put(l3 + 2, v & 0xffff, 2);
      }
      break;
    case 'arp_op': if (type === 0x0806) put(l3 + 6, Number(value), 2); break;
    case 'arp_sha': if (type === 0x0806) b.set(parseMac(String(value)), l3 + 8); break;
    case 'arp_spa': if (type === 0x0806) put(l3 + 14, typeof value === 'string' ? parseIpv4(value) : Number(value), 4); break;
    case 'arp_tha': if (type === 0x0806) b.set(parseMac(String(value)), l3 + 18); break;
    case 'arp_tpa': if (type === 0x0806) put(l3 + 24, typeof value === 'string' ? parseIpv4(value) : Number(value), 4); break;
    case 'icmpv4_type': if (type === 0x0800 && proto === 1) b[l4] = Number(value); break;
    case 'icmpv4_code': if (type === 0x0800 && proto === 1) b[l4 + 1] = Number(value); break;
    case 'icmpv6_type': if (type === 0x86dd && proto === 58) b[l4] = Number(value); break;
    case 'icmpv6_code': if (type === 0x86dd && proto === 58) b[l4 + 1] = Number(value); break;
    case 'tunnel_id': p.tunnelId = BigInt(value); return;
    default:
      if (field.startsWith('reg')) {
        p.regs[Number(field.slice(3))] = Number(value);
        return;
      }
      throw new Error(`reference: set_field ${field} not modelled`);
  }
  fixChecksums(b);
}

function pushVlan(p: RefPkt, tpid: number): void {
  const b = p.bytes;
  // The bridge's documented limit: a frame carries at most two tags through the pipeline, and
  // a push onto two is not applied.
  if (l3Of(b).tags >= 2) return;
  const tagged = ((b[12]! << 8) | b[13]!) === 0x8100 || ((b[12]! << 8) | b[13]!) === 0x88a8;
  const tci = tagged ? (b[14]! << 8) | b[15]! : 0;
  const n = new Uint8Array(b.length + 4);
  n.set(b.subarray(0, 12));
  n[12] = tpid >> 8;
  n[13] = tpid & 0xff;
  n[14] = tci >> 8;
  n[15] = tci & 0xff;
  n.set(b.subarray(12), 16);
  p.bytes = n;
}

function popVlan(p: RefPkt): void {
  const b = p.bytes;
  const t = (b[12]! << 8) | b[13]!;
  if (t !== 0x8100 && t !== 0x88a8) return;
  const n = new Uint8Array(b.length - 4);
  n.set(b.subarray(0, 12));
  n.set(b.subarray(16), 12);
  p.bytes = n;
}

const clone = (p: RefPkt): RefPkt => ({ bytes: p.bytes.slice(), inPort: p.inPort, metadata: p.metadata, regs: [...p.regs], tunnelId: p.tunnelId });

export class Reference {
  readonly outputs: RefOutput[] = [];
  readonly packetIns: RefPacketIn[] = [];
  /** Every entry a lookup met, once per lookup (what the entry's packet counter and idle timer see). */
  readonly hits: RefFlow[] = [];
  private readonly ex = new FlowKeyExtractor();
  constructor(private readonly w: RefWorld) {}

  process(inPort: number, frame: Uint8Array): void {
    const port = this.w.ports.find((p) => p.no === inPort);
    if (!port?.live) return;
    this.tables({ bytes: frame.slice(), inPort, metadata: 0n, regs: new Array<number>(8).fill(0), tunnelId: 0n }, 0);
  }

  private tables(p: RefPkt, start: number): void {
    const set: { pop?: Action; push?: Action; sets: Map<string, Action>; group?: Action; output?: Action } = { sets: new Map() };
    let t = start;
    for (;;) {
      const entry = this.lookup(t, p);
      if (!entry) {
        if (this.w.miss.get(t) === 'controller') this.packetIns.push({ reason: 'no_match', tableId: t });
        return;
      }
      const byType = new Map(entry.instructions.map((i) => [i.type, i] as [Instruction['type'], Instruction]));
      const apply = byType.get('apply_actions');
      if (apply?.type === 'apply_actions') this.actions(apply.actions, p, t);
      if (byType.has('clear_actions')) {
        set.sets.clear();
        delete set.pop; delete set.push; delete set.group; delete set.output;
      }
      const write = byType.get('write_actions');
      if (write?.type === 'write_actions') {
        for (const a of write.actions) {
          if (a.type === 'set_field') set.sets.set(a.field, a);
          else if (a.type === 'pop_vlan') set.pop = a;
          else if (a.type === 'push_vlan') set.push = a;
          else if (a.type === 'group') set.group = a;
          else if (a.type === 'output') set.output = a;
        }
      }
      const meta = byType.get('write_metadata');
      if (meta?.type === 'write_metadata') {
        const mask = meta.mask ?? (1n << 64n) - 1n;
        p.metadata = (p.metadata & ~mask) | (meta.value & mask);
      }
      const goto = byType.get('goto_table');
      if (goto?.type === 'goto_table') {
        t = goto.tableId;
        continue;
      }
      const list: Action[] = [];
      if (set.pop) list.push(set.pop);
      if (set.push) list.push(set.push);
      list.push(...set.sets.values());
      if (set.group) list.push(set.group);
      else if (set.output) list.push(set.output);
      this.actions(list, p, t);
      return;
    }
  }

  /** The highest-priority matching entry; among equal priorities the oldest (the README's tie-break). */
  private lookup(t: number, p: RefPkt): RefFlow | undefined {
    const hits = this.w.flows.filter((f) => f.tableId === t && refMatches(f.match, p));
    refCoverage.lookups++;
    if (hits.length === 0) return undefined;
    refCoverage.matched++;
    if (hits.length > 1) refCoverage.multiMatch++;
    let best = hits[0]!;
    for (const f of hits) if (f.priority > best.priority || (f.priority === best.priority && f.seq < best.seq)) best = f;
    if (hits.some((f) => f !== best && f.priority === best.priority)) refCoverage.priorityTies++;
    this.hits.push(best);
    return best;
  }

  /** §5.6.1: a bucket is live when its watch port is live and its watch group has a live bucket. */
  private bucketLive(b: GroupBucket, depth: number): boolean {
    if (b.watchPort !== undefined && b.watchPort !== Port.ANY && !this.w.ports.some((q) => q.no === b.watchPort && q.live)) return false;
    if (b.watchGroup !== undefined && b.watchGroup !== Group.ANY) {
      const g = this.w.groups.get(b.watchGroup);
      if (!g || depth > 8 || !g.buckets.some((x) => this.bucketLive(x, depth + 1))) return false;
    }
    return true;
  }

  /**
   * SELECT: 256 hash slots (slot = the 5-tuple flow hash mod 256) dealt to the live buckets
   * of nonzero weight in bucket order, each a contiguous run in proportion to its weight.
   */
  private selectBucket(g: GroupConfig, hash: number): number {
    const live = g.buckets.flatMap((b, i) => {
      const w = b.weight ?? 1;
      return w > 0 && this.bucketLive(b, 0) ? [{ i, w }] : [];
    });
    const total = live.reduce((s, x) => s + x.w, 0);
    if (total === 0) return -1;
    if (live.length > 1) refCoverage.selectChoices++;
    const pos = (((hash & 255) + 0.5) * total) / 256;
    let acc = 0;
    for (const x of live) {
      acc += x.w;
      if (pos < acc) return x.i;
    }
    return live[live.length - 1]!.i;
  }

  private emit(port: number, p: RefPkt): void {
    const q = this.w.ports.find((x) => x.no === port);
    if (!q || !q.live) return;
    this.outputs.push({ port, hex: hex(p.bytes) });
  }

  private actions(list: readonly Action[], p: RefPkt, tableId: number): void {
    for (const a of list) {
      switch (a.type) {
        case 'drop': break;
        case 'output':
          if (a.port === Port.IN_PORT) this.emit(p.inPort, p);
          else if (a.port === Port.FLOOD || a.port === Port.ALL) {
            for (const q of this.w.ports) if (q.no !== p.inPort && (a.port === Port.ALL || !q.noFlood)) this.emit(q.no, p);
          } else if (a.port === Port.CONTROLLER) this.packetIns.push({ reason: 'action', tableId });
          else if (a.port !== p.inPort) this.emit(a.port, p);
          break;
        case 'set_field': setField(p, a.field, a.value); break;
        case 'push_vlan': pushVlan(p, a.ethertype ?? 0x8100); break;
        case 'pop_vlan': popVlan(p); break;
        case 'group': {
          const g = this.w.groups.get(a.groupId);
          if (!g) break;
          const run = (i: number): void => this.actions(g.buckets[i]!.actions, clone(p), tableId);
          if (g.type === 'all') g.buckets.forEach((_, i) => run(i));
          else if (g.type === 'indirect') run(0);
          else if (g.type === 'ff') {
            const i = g.buckets.findIndex((b) => this.bucketLive(b, 0));
            if (i > 0) refCoverage.ffFailovers++;
            if (i >= 0) run(i);
          } else {
            // The flow hash covers no VLAN field: hash the untagged packet, which the parser reads
            // whatever the number of tags (it stops after two).
            const { l3 } = l3Of(p.bytes);
            const untagged = new Uint8Array(p.bytes.length - l3 + 14);
            untagged.set(p.bytes.subarray(0, 12));
            untagged.set(p.bytes.subarray(l3 - 2), 12);
            const key = this.ex.extract(untagged, new FlowKey(), p.inPort);
            const i = this.selectBucket(g, tupleHash(key.words));
            if (i >= 0) run(i);
          }
          break;
        }
      }
    }
  }
}
