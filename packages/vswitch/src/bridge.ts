import {
  FlowKey, FlowKeyExtractor, Layer, PacketInfo, encapsulateVxlan, parseIpv4, parseMac, parsePacket,
  vxlanSourcePort, type VxlanOuter,
} from '@ioplane/packet';
import type { NetBackend } from '@ioplane/net-backends';
import {
  A, compileActions, compileInstructions, outputsTo, regWord, usesGroup, type Action, type CAction, type Instruction,
} from './actions.js';
import { MegaflowCache, MicroflowCache, keyHash, type CacheStats, type MegaflowEntry } from './cache.js';
import { FlowTable, hashWords, maskWords, tupleHash, type FlowFlags, type FlowRule } from './classifier.js';
import {
  DEFAULT_MISS_SEND_LEN, Group, INGRESS_WORDS, KEY_WORDS, META_HI, META_LO, METER_MAX, NO_BUFFER, Port, TABLE_ALL, TABLE_MAX, TUN_HI,
} from './constants.js';
import {
  DpOp, GroupBucketState, GroupState, HEADROOM, Op, Pkt, PortState, Program, Scratch, Translation, applyToBytes, applyToKey,
  type PortStats, type VlanMode,
} from './datapath.js';
import { VswitchError } from './errors.js';
import { MacTable } from './mac-table.js';
import { compileMatch, isSubsumedBy, overlaps, sameMatch, type Match } from './match.js';
import { Meter, remarkDscp, type MeterConfig, type MeterStats } from './meter.js';

export interface BridgeOptions {
  /** Milliseconds clock for timeouts, meters and MAC aging (default `performance.now`-based). */
  clock?: () => number;
  /**
   * Microflow (signature) cache slots, a power of two, or 0 (the default): off. Its hit costs a
   * hash of the whole 24-word ingress key, more than a megaflow lookup over one or two masks
   * (see the README's benchmark); turn it on (e.g. 8192) when traffic spreads over many masks.
   */
  microflowSize?: number;
  /** Insert one microflow per this many microflow misses (default 4; Open vSwitch's emc-insert-inv-prob). */
  microflowInsertInterval?: number;
  /** Megaflow cache entries (default 65536; 0 disables it, every packet is translated). */
  megaflowLimit?: number;
  /** MAC learning: entry lifetime (default 300 000 ms, as Open vSwitch) and table bound (default 8192). */
  macAgingMs?: number;
  macLimit?: number;
  /** Flow entries per table (default 1 000 000). */
  flowLimit?: number;
  /** Bytes of a table-miss packet-in (default 128, OFP_DEFAULT_MISS_SEND_LEN). */
  missSendLen?: number;
  /**
   * Frames a back-end delivers one at a time (its drain loop) are copied to per-port queues
   * and sent in one call per port from a microtask, after the loop (default false: each
   * output is sent at once, which tests that inject synchronously expect). `receiveBatch`
   * batches its outputs either way.
   */
  deferredTx?: boolean;
  /** Pending packet-ins held while the controller is slow (default 1024; beyond, dropped and counted). */
  packetInQueue?: number;
}

export interface PortOptions {
  /** OpenFlow port number (1..0xffffff00, or Port.LOCAL); default the lowest free. */
  portNo?: number;
  name?: string;
  /** NORMAL's VLAN behaviour: access (one VLAN, untagged) or trunk (tagged; untagged frames are the native VLAN, default 0). */
  vlan?: VlanMode;
  noFlood?: boolean;
}

export interface BondOptions extends PortOptions {
  members: NetBackend[];
  /** active-backup (one member carries everything), balance-tcp (5-tuple hash), balance-slb (source MAC and VLAN hash). */
  mode?: 'active-backup' | 'balance-tcp' | 'balance-slb';
}

export interface TunnelOptions extends PortOptions {
  /** Carries the outer Ethernet/IPv4/UDP/VXLAN frames. */
  underlay: NetBackend;
  localIp: string;
  /** The remote VTEP; omitted = from the flow (set_field tun_dst), as Open vSwitch's remote_ip=flow. */
  remoteIp?: string;
  localMac: string;
  /** The next hop's MAC on the underlay. */
  remoteMac: string;
  /** A fixed VNI; omitted = the flow's tunnel_id (key=flow). */
  vni?: number;
  /** Outer UDP destination port (default 4789, RFC 7348 §5). */
  dstPort?: number;
}

export interface PortConfig {
  /** OFPPC_PORT_DOWN: administratively down. */
  down?: boolean;
  /** OFPPC_NO_RECV: drop everything received. */
  noRecv?: boolean;
  /** OFPPC_NO_FWD: drop everything sent here. */
  noFwd?: boolean;
  /** OFPPC_NO_PACKET_IN: no packet-ins for frames from this port. */
  noPacketIn?: boolean;
  /** Excluded from FLOOD and NORMAL flooding (OVS no-flood). */
  noFlood?: boolean;
}

export interface PortInfo {
  portNo: number;
  name: string;
  kind: 'netdev' | 'bond' | 'tunnel';
  live: boolean;
  config: Required<PortConfig>;
  stats: PortStats;
  /** Bonds: which members are up, and the active one (active-backup). */
  members?: { up: boolean; active: boolean }[];
}

export interface FlowMod {
  command?: 'add' | 'modify' | 'modify_strict' | 'delete' | 'delete_strict';
  /** 0..254; TABLE_ALL (255) for deletes. Default 0. */
  tableId?: number;
  /** Default 0x8000 (OFP_DEFAULT_PRIORITY). */
  priority?: number;
  cookie?: bigint;
  /** Modify/delete: only entries whose cookie agrees under this mask. */
  cookieMask?: bigint;
  match?: Match;
  instructions?: Instruction[];
  /** Seconds (0 = none). */
  idleTimeout?: number;
  hardTimeout?: number;
  flags?: FlowFlags;
  /** Delete: only entries that output to this port (Port.ANY = no filter). */
  outPort?: number;
  /** Delete: only entries that use this group (Group.ANY = no filter). */
  outGroup?: number;
}

export interface FlowStats {
  tableId: number;
  priority: number;
  cookie: bigint;
  match: Match;
  instructions: Instruction[];
  idleTimeout: number;
  hardTimeout: number;
  flags: FlowFlags;
  packetCount: number;
  byteCount: number;
  durationMs: number;
}

export type FlowRemovedReason = 'idle_timeout' | 'hard_timeout' | 'delete' | 'group_delete' | 'meter_delete';

export interface FlowRemoved extends FlowStats {
  reason: FlowRemovedReason;
}

export interface GroupBucket {
  /** SELECT only: relative share (0 = never chosen). */
  weight?: number;
  /** FAST_FAILOVER: the bucket is live while this port is (Port.ANY = not watched). */
  watchPort?: number;
  watchGroup?: number;
  actions: Action[];
}

export interface GroupConfig {
  groupId: number;
  type: 'all' | 'select' | 'indirect' | 'ff';
  buckets: GroupBucket[];
}

export interface GroupStats {
  groupId: number;
  type: GroupConfig['type'];
  refCount: number;
  packetCount: number;
  byteCount: number;
  buckets: { packetCount: number; byteCount: number; live: boolean }[];
}

export interface MirrorConfig {
  name: string;
  /** Frames received on these ports. */
  selectSrcPorts?: number[];
  /** Frames sent out these ports. */
  selectDstPorts?: number[];
  /** Frames in these VLANs (as NORMAL assigns them at ingress). */
  selectVlans?: number[];
  /** Every frame. */
  selectAll?: boolean;
  /** Where copies go; this port is then used for nothing else (as Open vSwitch). */
  outputPort: number;
}

export interface PacketIn {
  reason: 'no_match' | 'action';
  tableId: number;
  /** The entry's cookie; all ones for a table-miss without an entry (§7.4.1). */
  cookie: bigint;
  inPort: number;
  /** OpenFlow's 64-bit tunnel_id (§7.2.3.7). */
  tunnelId: bigint;
  metadata: bigint;
  /** The frame as it was when sent to the controller, cut to max_len. */
  data: Uint8Array;
  totalLen: number;
}

export interface PacketOut {
  /** Port.CONTROLLER (default) or the port the packet is deemed to have come in on. */
  inPort?: number;
  actions: Action[];
  data: Uint8Array;
}

export interface BridgeStats {
  generation: number;
  microflow: CacheStats;
  megaflow: CacheStats;
  /** Packets translated by the full pipeline (megaflow misses). */
  upcalls: number;
  packetIns: number;
  packetInDrops: number;
  /** Frames that arrived while the bridge was busy (re-entrancy) and were queued. */
  deferred: number;
  macMoves: number;
  macEntries: number;
}

const ALL_ONES_64 = (1n << 64n) - 1n;
const MAX_GROUP_DEPTH = 8;
const SLB_MASK = new Uint32Array(INGRESS_WORDS);
SLB_MASK[5] = 0xffff;
SLB_MASK[6] = 0xffffffff;
SLB_MASK[7] = 0xfff;
const SLB_WORDS = maskWords(SLB_MASK);

function checkU16(field: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new VswitchError('bad-flow-mod', `${field} ${v} is not in 0..65535`, field, v);
  return v;
}

/** §5.10: the action set, one action per type, run in the specification's order. */
class ActionSet {
  pop: CAction | null = null;
  push: CAction | null = null;
  readonly sets = new Map<string, CAction>();
  group: CAction | null = null;
  output: CAction | null = null;

  clear(): void {
    this.pop = this.push = this.group = this.output = null;
    this.sets.clear();
  }

  write(list: readonly CAction[]): void {
    for (const a of list) {
      switch (a.kind) {
        case A.POP_VLAN: this.pop = a; break;
        case A.PUSH_VLAN: this.push = a; break;
        case A.SET_FIELD: this.sets.set(a.field!, a); break;
        case A.GROUP: this.group = a; break;
        case A.OUTPUT: this.output = a; break;
      }
    }
  }

  ordered(): CAction[] {
    const out: CAction[] = [];
    if (this.pop) out.push(this.pop);
    if (this.push) out.push(this.push);
    out.push(...this.sets.values());
    // §5.10: "If both an output action and a group action are specified in an action set, the output action is ignored".
    if (this.group) out.push(this.group);
    else if (this.output) out.push(this.output);
    return out;
  }
}

interface XlateCtx {
  wc: Uint32Array;
  rules: FlowRule[];
  lookedUp: number[];
  matched: number[];
  needsKey: boolean;
  steps: number;
}

/**
 * An Open vSwitch-style bridge: numbered ports over NetBackends, OpenFlow 1.3
 * flow tables 0–254, groups, meters, NORMAL (MAC learning per VLAN), mirrors,
 * bonds and VXLAN ports. Packets go through a microflow cache, then a megaflow
 * cache, then (on a miss) the full pipeline, whose result is cached. Any change
 * to flows, groups, meters, ports or mirrors empties the caches (a generation
 * bump), so no packet follows a stale entry.
 */
export class Bridge {
  readonly tables: FlowTable[] = [];
  private readonly ports = new Map<number, PortState>();
  private portList: PortState[] = [];
  private readonly groups = new Map<number, GroupState>();
  private readonly meters = new Map<number, Meter>();
  private readonly mirrors: (MirrorConfig & { bit: number; out: PortState | null })[] = [];
  private vlanMirrorBits: Uint32Array | null = null;
  private readonly macs: MacTable;
  private readonly micro: MicroflowCache<Translation>;
  private readonly mega: MegaflowCache<Translation>;
  /** Interned simple programs (see internProgram), emptied with the caches. */
  private readonly programs = new Map<string, Program>();
  private readonly clock: () => number;
  /**
   * With the default clock, frames delivered one by one in the same task (a back-end's
   * drain loop) share one clock reading, refreshed in a microtask; an injected clock is
   * read for every frame, so tests can move time between frames.
   */
  private readonly coarseClock: boolean;
  private nowValid = false;
  private readonly expireNow = (): void => {
    this.nowValid = false;
  };
  private readonly flowLimit: number;
  private readonly missSendLen: number;
  private readonly packetInLimit: number;
  private seq = 0;
  private generation = 0;
  private upcalls = 0;
  private packetIns = 0;
  private packetInDrops = 0;
  private deferredCount = 0;
  private readonly timed = new Set<FlowRule>();
  private nextExpiry = Infinity;
  private packetInHandlers: ((p: PacketIn) => void)[] = [];
  private flowRemovedHandlers: ((f: FlowRemoved) => void)[] = [];
  private readonly pendingPacketIns: PacketIn[] = [];
  private readonly deferred: { port: PortState; frame: Uint8Array; member: number }[] = [];
  private busy = false;
  private closed = false;

  // Per-packet state, preallocated.
  private now = 0;
  /** Shared with meters: the time of the current batch. */
  private readonly time = { now: 0 };
  private readonly extractor = new FlowKeyExtractor();
  private readonly tunnelInfo = new PacketInfo();
  private readonly ingress = new FlowKey(new Uint32Array(INGRESS_WORDS));
  private readonly levels: Pkt[] = [];
  private inPort: PortState | null = null;
  private inPortNo = 0;
  private mirrorBits = 0;
  private readonly one: Uint8Array[] = [new Uint8Array(0)];
  /** Inside receiveBatch: the frame being processed, which stays valid until the batch ends. */
  private batchFrame: Uint8Array | null = null;
  /** Ports with queued frames: a fixed array and a count (resetting an array's length frees its store). */
  private readonly txDirty: PortState[] = [];
  private txDirtyN = 0;
  private readonly deferredTx: boolean;
  private flushScheduled = false;
  private readonly flushDeferred = (): void => {
    this.flushScheduled = false;
    if (!this.busy) this.flushTx();
    else this.scheduleFlush();
  };
  private readonly untagged = new Scratch();
  private readonly decap = new Scratch();
  /** The frame as received (after decapsulation), for mirrors. */
  private rxFrame: Uint8Array = new Uint8Array(0);
  private readonly tagged = new Scratch();
  private readonly outer: VxlanOuter = { srcMac: new Uint8Array(6), dstMac: new Uint8Array(6), srcIp: 0, dstIp: 0, srcPort: 0, vni: 0 };

  constructor(options: BridgeOptions = {}) {
    const micro = options.microflowSize ?? 0;
    if (!Number.isInteger(micro) || micro < 0 || micro > 1 << 22 || (micro & (micro - 1)) !== 0) {
      throw new VswitchError('bad-config', `microflowSize ${micro} must be 0 or a power of two up to 2^22`, 'microflowSize', micro);
    }
    const mega = options.megaflowLimit ?? 65536;
    if (!Number.isInteger(mega) || mega < 0 || mega > 1 << 22) throw new VswitchError('bad-config', `megaflowLimit ${mega} must be in 0..2^22`, 'megaflowLimit', mega);
    const aging = options.macAgingMs ?? 300_000;
    const macLimit = options.macLimit ?? 8192;
    if (!(aging > 0) || !Number.isInteger(macLimit) || macLimit < 1) throw new VswitchError('bad-config', 'macAgingMs must be positive and macLimit a positive integer', 'macAgingMs', aging);
    this.flowLimit = options.flowLimit ?? 1_000_000;
    this.missSendLen = options.missSendLen ?? DEFAULT_MISS_SEND_LEN;
    this.packetInLimit = options.packetInQueue ?? 1024;
    const start = performance.now();
    this.clock = options.clock ?? ((): number => performance.now() - start);
    this.coarseClock = options.clock === undefined;
    this.deferredTx = options.deferredTx ?? false;
    const interval = options.microflowInsertInterval ?? 4;
    if (!Number.isInteger(interval) || interval < 1) throw new VswitchError('bad-config', `microflowInsertInterval ${interval} must be a positive integer`, 'microflowInsertInterval', interval);
    this.micro = new MicroflowCache(micro, interval);
    this.mega = new MegaflowCache(mega, (e) => this.pushStats(e));
    this.macs = new MacTable(aging, macLimit);
    for (let t = 0; t <= TABLE_MAX; t++) this.tables.push(new FlowTable(t));
    for (let i = 0; i <= MAX_GROUP_DEPTH + 1; i++) this.levels.push(new Pkt());
  }

  // ───────────────────────────── ports ─────────────────────────────

  private allocPortNo(requested: number | undefined): number {
    if (requested !== undefined) {
      if (!Number.isInteger(requested) || ((requested < 1 || requested > Port.MAX) && requested !== Port.LOCAL)) {
        throw new VswitchError('bad-port', `port number ${requested} is not in 1..0xffffff00 or LOCAL`, 'portNo', requested);
      }
      if (this.ports.has(requested)) throw new VswitchError('bad-port', `port ${requested} is already in use`, 'portNo', requested);
      return requested;
    }
    let n = 1;
    while (this.ports.has(n)) n++;
    return n;
  }

  private configureVlan(p: PortState, vlan: VlanMode | undefined): void {
    if (!vlan) return;
    const check = (v: number, what: string): number => {
      if (!Number.isInteger(v) || v < 0 || v > 4095) throw new VswitchError('bad-port', `${what} ${v} is not a VLAN (0..4095)`, what, v);
      return v;
    };
    if (vlan.mode === 'access') {
      p.access = true;
      p.tag = check(vlan.tag, 'tag');
    } else if (vlan.mode === 'trunk') {
      p.access = false;
      p.native = check(vlan.native ?? 0, 'native');
      if (vlan.trunks) {
        p.trunks = new Uint8Array(4096);
        for (const v of vlan.trunks) p.trunks[check(v, 'trunks')] = 1;
      }
    } else throw new VswitchError('bad-port', `vlan mode ${String((vlan as { mode: unknown }).mode)} is not access or trunk`, 'vlan', vlan);
  }

  private register(p: PortState, opts: PortOptions): number {
    p.noFlood = opts.noFlood ?? false;
    this.ports.set(p.no, p);
    this.portList = [...this.ports.values()].sort((a, b) => a.no - b.no);
    this.refreshPort(p, true);
    return p.no;
  }

  /** Attaches a back-end as a port; returns its number. */
  addPort(backend: NetBackend, opts: PortOptions = {}): number {
    this.checkOpen();
    const no = this.allocPortNo(opts.portNo);
    const p = new PortState(no, opts.name ?? `p${no}`, 'netdev');
    this.configureVlan(p, opts.vlan);
    p.backend = backend;
    backend.onReceive((f) => this.receiveOn(p, f, -1));
    p.unsubscribe.push(() => backend.onReceive(null), backend.onLinkChange(() => this.refreshPort(p, false)));
    return this.register(p, opts);
  }

  /** A bond: several back-ends as one port, with liveness per member. */
  addBond(opts: BondOptions): number {
    this.checkOpen();
    if (!Array.isArray(opts.members) || opts.members.length < 1 || opts.members.length > 32) throw new VswitchError('bad-port', 'a bond needs 1..32 members', 'members', opts.members);
    const mode = opts.mode ?? 'active-backup';
    if (mode !== 'active-backup' && mode !== 'balance-tcp' && mode !== 'balance-slb') throw new VswitchError('bad-port', `bond mode ${String(mode)} is unknown`, 'mode', mode);
    const p = new PortState(this.allocPortNo(opts.portNo), opts.name ?? 'bond', 'bond');
    this.configureVlan(p, opts.vlan);
    p.bondMode = mode;
    opts.members.forEach((m, i) => {
      p.members.push(m);
      p.memberUp.push(false);
      m.onReceive((f) => this.receiveOn(p, f, i));
      p.unsubscribe.push(() => m.onReceive(null), m.onLinkChange(() => this.refreshPort(p, false)));
    });
    return this.register(p, opts);
  }

  /** A VXLAN port (RFC 7348): frames out are encapsulated onto the underlay with the VNI as tunnel_id; frames in are decapsulated. */
  addTunnelPort(opts: TunnelOptions): number {
    this.checkOpen();
    const p = new PortState(this.allocPortNo(opts.portNo), opts.name ?? 'vxlan', 'tunnel');
    this.configureVlan(p, opts.vlan);
    try {
      p.localIp = parseIpv4(opts.localIp);
      p.remoteIp = opts.remoteIp === undefined ? 0 : parseIpv4(opts.remoteIp);
      p.localMac = parseMac(opts.localMac);
      p.remoteMac = parseMac(opts.remoteMac);
    } catch (e) {
      throw new VswitchError('bad-port', `tunnel addresses: ${(e as Error).message}`, 'tunnel', opts);
    }
    if (opts.vni !== undefined && (!Number.isInteger(opts.vni) || opts.vni < 0 || opts.vni > 0xffffff)) throw new VswitchError('bad-port', `vni ${opts.vni} is not 24 bits`, 'vni', opts.vni);
    p.vni = opts.vni ?? -1;
    p.dstPort = opts.dstPort ?? 4789;
    p.underlay = opts.underlay;
    p.tx = new Scratch();
    opts.underlay.onReceive((f) => this.receiveOn(p, f, -1));
    p.unsubscribe.push(() => opts.underlay.onReceive(null), opts.underlay.onLinkChange(() => this.refreshPort(p, false)));
    return this.register(p, opts);
  }

  removePort(portNo: number): void {
    const p = this.port(portNo);
    for (const u of p.unsubscribe) u();
    this.ports.delete(portNo);
    this.portList = this.portList.filter((x) => x !== p);
    this.macs.flushPort(portNo);
    for (const m of this.mirrors) if (m.out === p) m.out = null;
    this.rebuildMirrors();
    this.invalidate();
  }

  setPortConfig(portNo: number, cfg: PortConfig): void {
    const p = this.port(portNo);
    if (cfg.down !== undefined) p.down = cfg.down;
    if (cfg.noRecv !== undefined) p.noRecv = cfg.noRecv;
    if (cfg.noFwd !== undefined) p.noFwd = cfg.noFwd;
    if (cfg.noPacketIn !== undefined) p.noPacketIn = cfg.noPacketIn;
    if (cfg.noFlood !== undefined) p.noFlood = cfg.noFlood;
    this.refreshPort(p, true);
  }

  portInfo(portNo: number): PortInfo {
    const p = this.port(portNo);
    return {
      portNo: p.no,
      name: p.name,
      kind: p.kind,
      live: p.live,
      config: { down: p.down, noRecv: p.noRecv, noFwd: p.noFwd, noPacketIn: p.noPacketIn, noFlood: p.noFlood },
      stats: { ...p.stats },
      members: p.kind === 'bond' ? p.memberUp.map((up, i) => ({ up, active: i === p.active })) : undefined,
    };
  }

  portNumbers(): number[] {
    return this.portList.map((p) => p.no);
  }

  private port(no: number): PortState {
    const p = this.ports.get(no);
    if (!p) throw new VswitchError('bad-port', `port ${no} does not exist`, 'portNo', no);
    return p;
  }

  /** Recomputes liveness (and a bond's active member); a change revalidates the caches. */
  private refreshPort(p: PortState, force: boolean): void {
    let changed = force;
    if (p.kind === 'bond') {
      for (let i = 0; i < p.members.length; i++) {
        const up = p.members[i]!.linkUp && !p.members[i]!.closed;
        if (up !== p.memberUp[i]) {
          p.memberUp[i] = up;
          changed = true;
        }
      }
      // Active-backup keeps the active member while it is up (no flapping back).
      if (p.active < 0 || !p.memberUp[p.active]) {
        const next = p.memberUp.indexOf(true);
        if (next !== p.active) {
          p.active = next;
          changed = true;
        }
      }
      p.liveMembers = p.memberUp.flatMap((up, i) => (up ? [i] : []));
    }
    const link = p.kind === 'netdev' ? p.backend!.linkUp : p.kind === 'tunnel' ? p.underlay!.linkUp : p.liveMembers.length > 0;
    const live = link && !p.down;
    if (live !== p.live) {
      p.live = live;
      changed = true;
      if (!live) this.macs.flushPort(p.no);
    }
    if (changed) this.invalidate();
  }

  // ───────────────────────────── caches ─────────────────────────────

  /** Empties both caches; the next packet of every flow is translated again. */
  invalidate(): void {
    this.generation++;
    this.programs.clear();
    this.mega.flush();
    this.micro.flush();
    for (const g of this.groups.values()) if (g.type === 'select') this.buildSelectTable(g);
  }

  get stats(): BridgeStats {
    return {
      generation: this.generation,
      microflow: { ...this.micro.stats },
      megaflow: { ...this.mega.stats },
      upcalls: this.upcalls,
      packetIns: this.packetIns,
      packetInDrops: this.packetInDrops,
      deferred: this.deferredCount,
      macMoves: this.macs.moves,
      macEntries: this.macs.size,
    };
  }

  /** Current megaflows (for dumps): ingress-key masks and values, hits. */
  megaflows(): { mask: Uint32Array; key: Uint32Array; hits: number }[] {
    return [...this.mega.entries()].map((e) => ({ mask: e.sub.mask, key: e.key, hits: e.hits }));
  }

  macTable(): { vlan: number; mac: string; port: number; lastSeen: number }[] {
    return this.macs.entries();
  }

  // ───────────────────────────── flows ─────────────────────────────

  private groupExists = (id: number): boolean => this.groups.has(id);
  private meterExists = (id: number): boolean => this.meters.has(id);

  /** An OpenFlow flow-mod (§6.4, §7.3.4.1). */
  flowMod(mod: FlowMod): void {
    this.checkOpen();
    const command = mod.command ?? 'add';
    const tableId = mod.tableId ?? 0;
    const isDelete = command === 'delete' || command === 'delete_strict';
    if (!Number.isInteger(tableId) || tableId < 0 || tableId > (isDelete ? TABLE_ALL : TABLE_MAX)) {
      throw new VswitchError('bad-table', `table ${tableId} is not in 0..${isDelete ? 255 : 254}`, 'tableId', tableId);
    }
    const priority = checkU16('priority', mod.priority ?? 0x8000);
    const match = mod.match ?? {};
    const compiled = compileMatch(match);
    switch (command) {
      case 'add':
        return this.installFlow(tableId, priority, match, compiled, mod);
      case 'modify':
      case 'modify_strict': {
        const ins = compileInstructions(mod.instructions ?? [], tableId, { match, groupExists: this.groupExists, meterExists: this.meterExists, allowTable: false });
        for (const r of this.select(tableId, compiled, priority, command === 'modify_strict', mod)) {
          this.unrefRule(r);
          r.instructions = structuredClone(mod.instructions ?? []);
          r.ins = ins;
          this.refRule(r);
          if (mod.flags?.resetCounts) r.packetCount = r.byteCount = 0;
        }
        this.invalidate();
        return;
      }
      case 'delete':
      case 'delete_strict':
        for (const r of this.select(tableId, compiled, priority, command === 'delete_strict', mod)) this.removeRule(r, 'delete');
        this.invalidate();
        return;
      default:
        throw new VswitchError('bad-flow-mod', `flow-mod command ${String(command)} is unknown`, 'command', command);
    }
  }

  /** `flowMod` with command add. */
  addFlow(spec: Omit<FlowMod, 'command'>): void {
    this.flowMod({ ...spec, command: 'add' });
  }

  private installFlow(tableId: number, priority: number, match: Match, compiled: ReturnType<typeof compileMatch>, mod: FlowMod): void {
    const idle = checkU16('idleTimeout', mod.idleTimeout ?? 0);
    const hard = checkU16('hardTimeout', mod.hardTimeout ?? 0);
    const cookie = mod.cookie ?? 0n;
    if (typeof cookie !== 'bigint' || cookie < 0n || cookie > ALL_ONES_64 || cookie === ALL_ONES_64) {
      // §7.3.4.1: a cookie of all ones is reserved (OFPFMFC_BAD_COOKIE... reported as bad-flow-mod).
      throw new VswitchError('bad-flow-mod', 'cookie must be a 64-bit bigint other than all ones', 'cookie', cookie);
    }
    const ins = compileInstructions(mod.instructions ?? [], tableId, { match, groupExists: this.groupExists, meterExists: this.meterExists, allowTable: false });
    const table = this.tables[tableId]!;
    const existing = table.findStrict(compiled, priority);
    if (mod.flags?.checkOverlap) {
      for (const r of table.rules()) {
        if (r !== existing && r.priority === priority && overlaps(r.compiled, compiled)) {
          throw new VswitchError('overlap', `the entry overlaps one of priority ${priority} in table ${tableId} (CHECK_OVERLAP)`, 'match', match);
        }
      }
    }
    if (!existing && table.count >= this.flowLimit) throw new VswitchError('table-full', `table ${tableId} holds ${this.flowLimit} entries`, 'tableId', tableId);
    const now = this.clock();
    const rule: FlowRule = {
      tableId, priority, match: structuredClone(match), compiled, cookie, instructions: structuredClone(mod.instructions ?? []), ins,
      idleTimeout: idle, hardTimeout: hard, flags: { ...mod.flags }, seq: this.seq++, installedAt: now, lastUsed: now,
      packetCount: 0, byteCount: 0, removed: false,
    };
    // §6.4: an add with identical match and priority replaces the entry (its counters start again).
    if (existing) this.removeRule(existing, null);
    table.insert(rule);
    this.refRule(rule);
    if (idle || hard) {
      this.timed.add(rule);
      this.nextExpiry = Math.min(this.nextExpiry, now + 1000 * Math.min(idle || Infinity, hard || Infinity));
    }
    this.invalidate();
  }

  private refRule(r: FlowRule): void {
    if (r.ins.meterId) this.meters.get(r.ins.meterId)!.flowCount++;
  }

  private unrefRule(r: FlowRule): void {
    if (r.ins.meterId) {
      const m = this.meters.get(r.ins.meterId);
      if (m) m.flowCount--;
    }
  }

  /** Entries a modify/delete/stats request names (§6.4 strict and non-strict, cookie and out_port/out_group filters). */
  private select(tableId: number, compiled: ReturnType<typeof compileMatch>, priority: number, strict: boolean, mod: FlowMod): FlowRule[] {
    const out: FlowRule[] = [];
    const cm = mod.cookieMask ?? 0n;
    const ck = mod.cookie ?? 0n;
    const outPort = mod.outPort ?? Port.ANY;
    const outGroup = mod.outGroup ?? Group.ANY;
    const tables = tableId === TABLE_ALL ? this.tables : [this.tables[tableId]!];
    for (const t of tables) {
      for (const r of t.rules()) {
        if (strict ? r.priority !== priority || !sameMatch(r.compiled, compiled) : !isSubsumedBy(r.compiled, compiled)) continue;
        if ((r.cookie & cm) !== (ck & cm)) continue;
        if (outPort !== Port.ANY && !outputsTo(r.ins.apply, outPort) && !outputsTo(r.ins.write, outPort)) continue;
        if (outGroup !== Group.ANY && !usesGroup(r.ins.apply, outGroup) && !usesGroup(r.ins.write, outGroup)) continue;
        out.push(r);
      }
    }
    return out;
  }

  private removeRule(r: FlowRule, reason: FlowRemovedReason | null): void {
    if (r.removed) return;
    if (reason !== null && r.flags.sendFlowRem) this.pushAllStats();
    this.tables[r.tableId]!.remove(r);
    r.removed = true;
    this.timed.delete(r);
    this.unrefRule(r);
    if (reason !== null && r.flags.sendFlowRem) {
      const ev: FlowRemoved = { ...this.flowStats(r), reason };
      for (const h of this.flowRemovedHandlers) h(ev);
    }
  }

  private flowStats(r: FlowRule): FlowStats {
    return {
      tableId: r.tableId, priority: r.priority, cookie: r.cookie, match: structuredClone(r.match), instructions: structuredClone(r.instructions),
      idleTimeout: r.idleTimeout, hardTimeout: r.hardTimeout, flags: { ...r.flags }, packetCount: r.packetCount, byteCount: r.byteCount,
      durationMs: this.clock() - r.installedAt,
    };
  }

  /** Flow statistics (§7.3.5.2): every entry, or those a non-strict filter names. */
  flows(filter: Omit<FlowMod, 'command' | 'instructions'> = {}): FlowStats[] {
    this.pushAllStats();
    const tableId = filter.tableId ?? TABLE_ALL;
    return this.select(tableId, compileMatch(filter.match ?? {}), 0, false, filter)
      .sort((a, b) => a.tableId - b.tableId || b.priority - a.priority || a.seq - b.seq)
      .map((r) => this.flowStats(r));
  }

  tableStats(): { tableId: number; activeCount: number; lookupCount: number; matchedCount: number; miss: 'drop' | 'controller' }[] {
    this.pushAllStats();
    return this.tables.filter((t) => t.count > 0 || t.lookupCount > 0 || t.miss !== 'drop').map((t) => ({ tableId: t.id, activeCount: t.count, lookupCount: t.lookupCount, matchedCount: t.matchedCount, miss: t.miss }));
  }

  /** What a table does with packets no entry matches when it has no table-miss entry (§5.4). */
  setTableMiss(tableId: number, miss: 'drop' | 'controller'): void {
    if (!Number.isInteger(tableId) || tableId < 0 || tableId > TABLE_MAX) throw new VswitchError('bad-table', `table ${tableId} is not in 0..254`, 'tableId', tableId);
    if (miss !== 'drop' && miss !== 'controller') throw new VswitchError('bad-config', `table-miss ${String(miss)} is not drop or controller`, 'miss', miss);
    this.tables[tableId]!.miss = miss;
    this.invalidate();
  }

  /** Removes entries whose idle or hard timeout has passed (§5.5); runs on its own before each packet once due. */
  expireFlows(): number {
    const now = this.clock();
    this.pushAllStats();
    let n = 0;
    let next = Infinity;
    for (const r of [...this.timed]) {
      const hard = r.hardTimeout ? r.installedAt + 1000 * r.hardTimeout : Infinity;
      const idle = r.idleTimeout ? r.lastUsed + 1000 * r.idleTimeout : Infinity;
      if (now >= hard) {
        this.removeRule(r, 'hard_timeout');
        n++;
      } else if (now >= idle) {
        this.removeRule(r, 'idle_timeout');
        n++;
      } else next = Math.min(next, hard, idle);
    }
    this.nextExpiry = next;
    if (n > 0) this.invalidate();
    return n;
  }

  /** Periodic work: flow timeouts and MAC aging. */
  tick(): void {
    this.expireFlows();
    this.macs.age(this.clock());
  }

  private setNow(now: number): void {
    this.now = now;
    this.time.now = now;
    this.macs.now = now;
  }

  onFlowRemoved(handler: (f: FlowRemoved) => void): () => void {
    this.flowRemovedHandlers.push(handler);
    return () => (this.flowRemovedHandlers = this.flowRemovedHandlers.filter((h) => h !== handler));
  }

  // ───────────────────────────── groups ─────────────────────────────

  /** An OpenFlow group-mod (§5.6, §7.3.4.2). */
  groupMod(command: 'add' | 'modify' | 'delete', cfg: GroupConfig | { groupId: number }): void {
    this.checkOpen();
    const id = cfg.groupId;
    if (command === 'delete') {
      const ids = id === Group.ALL ? [...this.groups.keys()] : this.groups.has(id) ? [id] : [];
      for (const g of ids) {
        if (id !== Group.ALL) for (const other of this.groups.values()) {
          if (other.id !== g && other.buckets.some((b) => usesGroup(b.actions, g))) {
            throw new VswitchError('bad-group', `group ${g} is used by group ${other.id} (OFPGMFC_CHAINED_GROUP)`, 'groupId', g);
          }
        }
      }
      for (const g of ids) {
        // §5.6: removing a group removes the flow entries that forward to it.
        for (const r of this.select(TABLE_ALL, compileMatch({}), 0, false, { outGroup: g })) this.removeRule(r, 'group_delete');
        this.groups.delete(g);
      }
      this.invalidate();
      return;
    }
    if (!Number.isInteger(id) || id < 0 || id > Group.MAX) throw new VswitchError('bad-group', `group ${id} is not in 0..0xffffff00 (OFPGMFC_INVALID_GROUP)`, 'groupId', id);
    const c = cfg as GroupConfig;
    if (command === 'add' && this.groups.has(id)) throw new VswitchError('bad-group', `group ${id} exists (OFPGMFC_GROUP_EXISTS)`, 'groupId', id);
    if (command === 'modify' && !this.groups.has(id)) throw new VswitchError('bad-group', `group ${id} does not exist (OFPGMFC_UNKNOWN_GROUP)`, 'groupId', id);
    if (command !== 'add' && command !== 'modify') throw new VswitchError('bad-group', `group-mod command ${String(command)} is unknown`, 'command', command);
    if (!['all', 'select', 'indirect', 'ff'].includes(c.type)) throw new VswitchError('bad-group', `group type ${String(c.type)} is unknown (OFPGMFC_BAD_TYPE)`, 'type', c.type);
    if (!Array.isArray(c.buckets) || c.buckets.length > 256) throw new VswitchError('bad-group', 'buckets must be an array of at most 256', 'buckets', c.buckets);
    // §5.6.1: an indirect group has exactly one bucket.
    if (c.type === 'indirect' && c.buckets.length !== 1) throw new VswitchError('bad-group', `an indirect group has exactly one bucket, not ${c.buckets.length}`, 'buckets', c.buckets.length);
    const buckets = c.buckets.map((b, i) => {
      const weight = b.weight ?? (c.type === 'select' ? 1 : 0);
      if (!Number.isInteger(weight) || weight < 0 || weight > 0xffff || (c.type !== 'select' && weight !== 0)) {
        throw new VswitchError('bad-group', `bucket ${i}: weight ${weight} (only select groups weigh buckets, 0..65535)`, `buckets[${i}].weight`, weight);
      }
      const watchPort = b.watchPort ?? Port.ANY;
      const watchGroup = b.watchGroup ?? Group.ANY;
      if (c.type === 'ff' && watchPort === Port.ANY && watchGroup === Group.ANY) {
        throw new VswitchError('bad-group', `bucket ${i} of a fast-failover group watches nothing (OFPGMFC_BAD_WATCH)`, `buckets[${i}]`, b);
      }
      if (watchGroup !== Group.ANY && !this.groups.has(watchGroup) && watchGroup !== id) throw new VswitchError('bad-group', `bucket ${i} watches unknown group ${watchGroup}`, `buckets[${i}].watchGroup`, watchGroup);
      const acts = compileActions(b.actions, { match: null, groupExists: (g) => g === id || this.groups.has(g), allowTable: false });
      return new GroupBucketState(weight, watchPort, watchGroup, acts);
    });
    const g = new GroupState(id, c.type, buckets, structuredClone(c), this.clock());
    const old = this.groups.get(id);
    this.groups.set(id, g);
    if (this.chainDepth(id, new Set()) > MAX_GROUP_DEPTH) {
      if (old) this.groups.set(id, old);
      else this.groups.delete(id);
      throw new VswitchError('bad-group', `group ${id} would form a loop or a chain deeper than ${MAX_GROUP_DEPTH} (OFPGMFC_LOOP)`, 'groupId', id);
    }
    if (old) {
      g.packetCount = old.packetCount;
      g.byteCount = old.byteCount;
    }
    this.invalidate();
  }

  /** The depth of the group chain from `id`; Infinity on a loop. */
  private chainDepth(id: number, path: Set<number>): number {
    if (path.has(id)) return Infinity;
    const g = this.groups.get(id);
    if (!g) return 0;
    path.add(id);
    let d = 1;
    for (const b of g.buckets) {
      for (const a of b.actions) if (a.kind === A.GROUP) d = Math.max(d, 1 + this.chainDepth(a.a, path));
      if (b.watchGroup !== Group.ANY) d = Math.max(d, 1 + this.chainDepth(b.watchGroup, path));
    }
    path.delete(id);
    return d;
  }

  private bucketLive(b: GroupBucketState, depth = 0): boolean {
    if (b.watchPort !== Port.ANY) {
      const p = this.ports.get(b.watchPort);
      if (!p || !p.live) return false;
    }
    if (b.watchGroup !== Group.ANY) {
      const g = this.groups.get(b.watchGroup);
      if (!g || depth > MAX_GROUP_DEPTH || !g.buckets.some((x) => this.bucketLive(x, depth + 1))) return false;
    }
    return true;
  }

  /** SELECT: 256 hash slots shared among live buckets in proportion to their weights. */
  private buildSelectTable(g: GroupState): void {
    const live = g.buckets.map((b, i) => ({ i, w: this.bucketLive(b) ? b.weight : 0 })).filter((x) => x.w > 0);
    const total = live.reduce((s, x) => s + x.w, 0);
    if (total === 0) {
      g.table.fill(-1);
      return;
    }
    let acc = 0;
    let j = 0;
    for (let s = 0; s < g.table.length; s++) {
      const pos = ((s + 0.5) * total) / g.table.length;
      while (j < live.length - 1 && pos >= acc + live[j]!.w) acc += live[j++]!.w;
      g.table[s] = live[j]!.i;
    }
  }

  groupStats(): GroupStats[] {
    return [...this.groups.values()].sort((a, b) => a.id - b.id).map((g) => ({
      groupId: g.id,
      type: g.type,
      refCount: this.select(TABLE_ALL, compileMatch({}), 0, false, { outGroup: g.id }).length,
      packetCount: g.packetCount,
      byteCount: g.byteCount,
      buckets: g.buckets.map((b) => ({ packetCount: b.packetCount, byteCount: b.byteCount, live: this.bucketLive(b) })),
    }));
  }

  groupConfigs(): GroupConfig[] {
    return [...this.groups.values()].sort((a, b) => a.id - b.id).map((g) => structuredClone(g.raw) as GroupConfig);
  }

  /** The bucket a SELECT group picks for a flow hash (see `tupleHash`), or -1 (for tools and reference models). */
  selectBucket(groupId: number, hash: number): number {
    const g = this.groups.get(groupId);
    return g ? g.table[hash & 255]! : -1;
  }

  /** Whether a group bucket is live (its watch port up, its watch group live). */
  isBucketLive(groupId: number, bucket: number): boolean {
    const b = this.groups.get(groupId)?.buckets[bucket];
    return b ? this.bucketLive(b) : false;
  }

  // ───────────────────────────── meters ─────────────────────────────

  /** An OpenFlow meter-mod (§5.7, §7.3.4.4). */
  meterMod(command: 'add' | 'modify' | 'delete', cfg: MeterConfig | { meterId: number }): void {
    this.checkOpen();
    const id = cfg.meterId;
    if (command === 'delete') {
      const ids = id === 0xffffffff ? [...this.meters.keys()] : this.meters.has(id) ? [id] : [];
      for (const m of ids) {
        // §5.7: deleting a meter removes the flow entries that use it.
        for (const t of this.tables) for (const r of [...t.rules()]) if (r.ins.meterId === m) this.removeRule(r, 'meter_delete');
        this.meters.delete(m);
      }
      this.invalidate();
      return;
    }
    if (!Number.isInteger(id) || id < 1 || id > METER_MAX) throw new VswitchError('bad-meter', `meter ${id} is not in 1..${METER_MAX} (OFPMMFC_INVALID_METER)`, 'meterId', id);
    if (command === 'add' && this.meters.has(id)) throw new VswitchError('bad-meter', `meter ${id} exists (OFPMMFC_METER_EXISTS)`, 'meterId', id);
    if (command === 'modify' && !this.meters.has(id)) throw new VswitchError('bad-meter', `meter ${id} does not exist (OFPMMFC_UNKNOWN_METER)`, 'meterId', id);
    if (command !== 'add' && command !== 'modify') throw new VswitchError('bad-meter', `meter-mod command ${String(command)} is unknown`, 'command', command);
    this.setNow(this.clock());
    const m = new Meter(structuredClone(cfg as MeterConfig), this.time);
    const old = this.meters.get(id);
    if (old) m.flowCount = old.flowCount;
    this.meters.set(id, m);
    this.invalidate();
  }

  meterStats(): MeterStats[] {
    return [...this.meters.values()].sort((a, b) => a.config.meterId - b.config.meterId).map((m) => m.stats());
  }

  // ───────────────────────────── mirrors ─────────────────────────────

  /** A SPAN mirror: copies of the frames selected by port and VLAN go to `outputPort`. */
  addMirror(cfg: MirrorConfig): void {
    this.checkOpen();
    if (this.mirrors.some((m) => m.name === cfg.name)) throw new VswitchError('bad-config', `mirror ${cfg.name} exists`, 'name', cfg.name);
    if (this.mirrors.length >= 32) throw new VswitchError('bad-config', 'at most 32 mirrors', 'name', cfg.name);
    const out = this.port(cfg.outputPort);
    for (const v of cfg.selectVlans ?? []) if (!Number.isInteger(v) || v < 0 || v > 4095) throw new VswitchError('bad-config', `mirror VLAN ${v} is not 0..4095`, 'selectVlans', v);
    for (const p of [...(cfg.selectSrcPorts ?? []), ...(cfg.selectDstPorts ?? [])]) this.port(p);
    let bit = 0;
    while (this.mirrors.some((m) => m.bit === 1 << bit)) bit++;
    const mask = (1 << bit) >>> 0;
    this.mirrors.push({ ...structuredClone(cfg), bit: mask, out });
    this.rebuildMirrors();
    this.invalidate();
  }

  removeMirror(name: string): void {
    const i = this.mirrors.findIndex((m) => m.name === name);
    if (i < 0) throw new VswitchError('bad-config', `mirror ${name} does not exist`, 'name', name);
    this.mirrors.splice(i, 1);
    this.rebuildMirrors();
    this.invalidate();
  }

  private rebuildMirrors(): void {
    for (const p of this.ports.values()) {
      p.mirrorSrcBits = p.mirrorDstBits = 0;
      p.mirrorOut = false;
    }
    let vlanBits: Uint32Array | null = null;
    for (const m of this.mirrors) {
      if (m.out) m.out.mirrorOut = true;
      for (const p of this.ports.values()) {
        if (m.selectAll || m.selectSrcPorts?.includes(p.no)) p.mirrorSrcBits |= m.bit;
        if (m.selectAll || m.selectDstPorts?.includes(p.no)) p.mirrorDstBits |= m.bit;
      }
      if (m.selectVlans?.length) {
        vlanBits ??= new Uint32Array(4096);
        for (const v of m.selectVlans) vlanBits[v]! |= m.bit;
      }
    }
    this.vlanMirrorBits = vlanBits;
  }

  // ───────────────────────────── controller ─────────────────────────────

  /** Receives packet-ins (delivered after the packet's processing, never re-entrantly). */
  onPacketIn(handler: (p: PacketIn) => void): () => void {
    this.packetInHandlers.push(handler);
    return () => (this.packetInHandlers = this.packetInHandlers.filter((h) => h !== handler));
  }

  /** A packet-out (§7.3.7): runs `actions` on `data` as if it came in on `inPort`. */
  packetOut(po: PacketOut): void {
    this.checkOpen();
    const inPortNo = po.inPort ?? Port.CONTROLLER;
    if (!(po.data instanceof Uint8Array) || po.data.length < 14 || po.data.length > 65535) {
      throw new VswitchError('bad-action', `packet-out data of ${po.data?.length} bytes is not an Ethernet frame`, 'data', po.data?.length);
    }
    if (inPortNo !== Port.CONTROLLER && inPortNo !== Port.LOCAL && !this.ports.has(inPortNo)) {
      throw new VswitchError('bad-port', `packet-out in_port ${inPortNo} does not exist`, 'inPort', inPortNo);
    }
    const acts = compileActions(po.actions, { match: null, groupExists: this.groupExists, allowTable: true });
    if (this.busy) throw new VswitchError('bad-config', 'packet-out called while the bridge is processing a packet; call it from a packet-in handler (they run afterwards)', 'busy', true);
    const data = po.data.slice();
    this.busy = true;
    try {
      this.setNow(this.clock());
      this.inPort = this.ports.get(inPortNo) ?? null;
      this.inPortNo = inPortNo;
      this.mirrorBits = 0;
      const p = this.levels[0]!;
      this.extractor.extract(data, this.ingress, inPortNo);
      this.initPkt(p, data);
      p.key.set(this.ingress.words);
      const ctx = this.newCtx();
      const wk = new Uint32Array(KEY_WORDS);
      wk.set(this.ingress.words);
      const ops: DpOp[] = [];
      this.emitList(acts, wk, ctx, ops, 0, null, 0);
      for (const r of ctx.rules) {
        r.packetCount++;
        r.byteCount += data.length;
        r.lastUsed = this.now;
      }
      this.run(new Program(ops, true), p, 0);
    } finally {
      this.busy = false;
    }
    this.drain();
  }

  // ───────────────────────────── translation (the slow path) ─────────────────────────────

  private newCtx(): XlateCtx {
    return { wc: new Uint32Array(KEY_WORDS), rules: [], lookedUp: [], matched: [], needsKey: false, steps: 0 };
  }

  /** Runs the pipeline (§5.3) over `ingress`, producing the program and the ingress bits it depended on. */
  private translate(ingress: Uint32Array): { t: Translation; wc: Uint32Array } {
    this.upcalls++;
    const ctx = this.newCtx();
    const wk = new Uint32Array(KEY_WORDS);
    wk.set(ingress);
    const ops: DpOp[] = [];
    this.xlateTables(wk, ctx, ops, 0, 0);
    return {
      t: new Translation(this.internProgram(ops, ctx.needsKey), ctx.rules, Uint8Array.from(ctx.lookedUp), Uint8Array.from(ctx.matched)),
      wc: ctx.wc,
    };
  }

  /**
   * One Program object per distinct simple program (outputs to ports and set-fields, the
   * common case): thousands of megaflows then share a few programs, so a hit touches the
   * entry, its translation and a program that stays in cache, rather than a program of its
   * own per entry. Programs with groups, meters, packet-ins or NORMAL are kept per entry. The
   * table is emptied with the caches (an interned program names ports that may go away).
   */
  private internProgram(ops: DpOp[], needsKey: boolean): Program {
    let sig = needsKey ? 'k' : '-';
    for (const op of ops) {
      if (op.subs !== null || op.group !== null || op.meter !== null || op.code === Op.CONTROLLER || op.code === Op.NORMAL) return new Program(ops, needsKey);
      sig += `|${op.code},${op.a},${op.b},${op.c},${op.port?.no ?? -1}`;
    }
    let prog = this.programs.get(sig);
    if (prog === undefined) {
      if (this.programs.size >= 4096) this.programs.clear();
      prog = new Program(ops, needsKey);
      this.programs.set(sig, prog);
    }
    return prog;
  }

  private xlateTables(wk: Uint32Array, ctx: XlateCtx, ops: DpOp[], start: number, depth: number): void {
    const set = new ActionSet();
    let t = start;
    for (;;) {
      const table = this.tables[t]!;
      const r = table.lookup(wk, ctx.wc);
      ctx.lookedUp.push(t);
      if (r === null) {
        // §5.4: without a table-miss entry the packet is dropped (its action set is not run), or sent to the controller if so configured.
        if (table.miss === 'controller') this.emitController(ops, ctx, 'no_match', this.missSendLen, t, ALL_ONES_64, wk);
        return;
      }
      ctx.matched.push(t);
      ctx.rules.push(r);
      const ins = r.ins;
      // §5.9: meter, apply-actions, clear-actions, write-actions, write-metadata, goto-table.
      if (ins.meterId) {
        const op = new DpOp(Op.METER);
        op.meter = this.meters.get(ins.meterId)!;
        ops.push(op);
      }
      if (ins.apply) this.emitList(ins.apply, wk, ctx, ops, depth, r, t);
      if (ins.clear) set.clear();
      if (ins.write) set.write(ins.write);
      if (ins.hasMeta) {
        const meta = (BigInt(wk[META_HI]!) << 32n) | BigInt(wk[META_LO]!);
        const nm = (meta & ~ins.metaMask) | ins.metaValue;
        wk[META_HI] = Number(nm >> 32n);
        wk[META_LO] = Number(nm & 0xffffffffn);
      }
      if (ins.gotoTable >= 0) {
        t = ins.gotoTable;
        continue;
      }
      this.emitList(set.ordered(), wk, ctx, ops, depth, r, t);
      return;
    }
  }

  private emitController(ops: DpOp[], ctx: XlateCtx, reason: 'no_match' | 'action', maxLen: number, tableId: number, cookie: bigint, wk: Uint32Array): void {
    const op = new DpOp(Op.CONTROLLER);
    op.a = reason === 'no_match' ? 0 : 1;
    op.b = maxLen;
    op.c = tableId;
    op.cookie = cookie;
    op.meta = (BigInt(wk[META_HI]!) << 32n) | BigInt(wk[META_LO]!);
    // The high half of tunnel_id is known at translation (every packet enters with it zero).
    op.tunHi = wk[TUN_HI]!;
    ctx.needsKey = true;
    ops.push(op);
  }

  private emitList(acts: readonly CAction[], wk: Uint32Array, ctx: XlateCtx, ops: DpOp[], depth: number, rule: FlowRule | null, tableId: number): void {
    if (++ctx.steps > 4096) return; // a bound on work per translation (group fan-out)
    for (const a of acts) {
      switch (a.kind) {
        case A.OUTPUT:
          this.emitOutput(a, wk, ctx, ops, depth, rule, tableId);
          break;
        case A.GROUP:
          this.emitGroup(a.a, wk, ctx, ops, depth, rule, tableId);
          break;
        case A.PUSH_VLAN:
        case A.POP_VLAN: {
          // The tag fields move between outer and inner: keep both exact in the megaflow.
          ctx.wc[7] = (ctx.wc[7]! | 0xffff) >>> 0;
          ctx.wc[8] = 0xffffffff;
          const code = a.kind === A.PUSH_VLAN ? Op.PUSH_VLAN : Op.POP_VLAN;
          if (applyToKey(wk, code, a.a, 0)) {
            const op = new DpOp(code);
            op.a = a.a;
            ops.push(op);
          }
          break;
        }
        case A.SET_FIELD:
          this.emitSet(a, wk, ctx, ops);
          break;
      }
    }
  }

  private emitSet(a: CAction, wk: Uint32Array, ctx: XlateCtx, ops: DpOp[]): void {
    let code: number;
    let x = a.a;
    let y = a.b;
    const f = a.field!;
    switch (f) {
      case 'eth_dst': code = Op.SET_ETH_DST; break;
      case 'eth_src': code = Op.SET_ETH_SRC; break;
      case 'vlan_vid': code = Op.SET_VLAN_VID; ctx.wc[7] = (ctx.wc[7]! | 0x1000) >>> 0; break;
      case 'vlan_pcp': code = Op.SET_VLAN_PCP; ctx.wc[7] = (ctx.wc[7]! | 0x1000) >>> 0; break;
      case 'ip_dscp': code = Op.SET_IP_DSCP; break;
      case 'ip_ecn': code = Op.SET_IP_ECN; break;
      case 'ipv4_src': code = Op.SET_IPV4_SRC; break;
      case 'ipv4_dst': code = Op.SET_IPV4_DST; break;
      case 'tcp_src': case 'udp_src': code = Op.SET_TP_SRC; break;
      case 'tcp_dst': case 'udp_dst': code = Op.SET_TP_DST; break;
      case 'ipv6_src':
      case 'ipv6_dst': {
        // Whether the packet has an IPv6 header decides whether anything is written: keep
        // eth_type and the IPv6 layer bit exact in the megaflow.
        ctx.wc[7] = (ctx.wc[7]! | 0xffff0000) >>> 0;
        ctx.wc[23] = (ctx.wc[23]! | Layer.IPV6) >>> 0;
        const base = f === 'ipv6_src' ? 10 : 14;
        const v6 = a.v6!;
        for (let i = 0; i < 4; i++) {
          if (!applyToKey(wk, Op.SET_IPV6_WORD, base + i, v6[i]!)) return;
          const op = new DpOp(Op.SET_IPV6_WORD);
          op.a = base + i;
          op.b = v6[i]!;
          ops.push(op);
        }
        return;
      }
      case 'ipv6_flabel': code = Op.SET_IPV6_FLABEL; ctx.wc[23] = (ctx.wc[23]! | Layer.IPV6) >>> 0; break;
      case 'arp_op': code = Op.SET_ARP_OP; break;
      case 'arp_spa': code = Op.SET_ARP_SPA; break;
      case 'arp_tpa': code = Op.SET_ARP_TPA; break;
      case 'arp_sha': code = Op.SET_ARP_SHA; break;
      case 'arp_tha': code = Op.SET_ARP_THA; break;
      case 'icmpv4_type': case 'icmpv6_type': code = Op.SET_ICMP_TYPE; break;
      case 'icmpv4_code': case 'icmpv6_code': code = Op.SET_ICMP_CODE; break;
      case 'tunnel_id': {
        // 64 bits: the low half is ingress word 1 (a VXLAN output takes its low 24 bits as VNI),
        // the high half the pipeline word TUN_HI.
        for (const [w, v] of [[1, a.a], [TUN_HI, a.b]] as const) {
          applyToKey(wk, Op.SET_KEY, w, v);
          const op = new DpOp(Op.SET_KEY);
          op.a = w;
          op.b = v;
          ops.push(op);
        }
        return;
      }
      case 'tun_dst': code = Op.SET_KEY; x = 3; y = a.a; break;
      default: {
        // Registers live only in the pipeline key: nothing to do on the packet.
        wk[regWord(f)] = a.a;
        return;
      }
    }
    if (code >= Op.SET_IP_DSCP && code <= Op.SET_TP_DST) {
      // Whether the field exists depends on eth_type (and ip_proto): the megaflow keeps them.
      ctx.wc[7] = (ctx.wc[7]! | 0xffff0000) >>> 0;
      if (code >= Op.SET_TP_SRC) ctx.wc[9] = (ctx.wc[9]! | 0xff000000) >>> 0;
    }
    if (code >= Op.SET_IPV6_FLABEL && code <= Op.SET_ICMP_CODE) {
      // Whether the field exists depends on eth_type, ip_proto and the parsed layers: exact in the megaflow.
      ctx.wc[7] = (ctx.wc[7]! | 0xffff0000) >>> 0;
      ctx.wc[9] = (ctx.wc[9]! | 0xff000000) >>> 0;
      ctx.wc[23] = (ctx.wc[23]! | Layer.IPV6 | Layer.ARP | Layer.ICMP | Layer.ICMPV6) >>> 0;
    }
    // An ICMP set names the ICMP version the packet has (icmpv4_type on ICMPv6 does nothing).
    if ((f === 'icmpv4_type' || f === 'icmpv4_code') && (wk[9]! >>> 24 !== 1 || wk[7]! >>> 16 !== 0x0800)) return;
    if ((f === 'icmpv6_type' || f === 'icmpv6_code') && (wk[9]! >>> 24 !== 58 || wk[7]! >>> 16 !== 0x86dd)) return;
    // A TCP/UDP port set must name the protocol the packet has (tcp_src on UDP does nothing).
    if ((f === 'tcp_src' || f === 'tcp_dst') && wk[9]! >>> 24 !== 6) return;
    if ((f === 'udp_src' || f === 'udp_dst') && wk[9]! >>> 24 !== 17) return;
    if (!applyToKey(wk, code, x, y)) return;
    const op = new DpOp(code);
    op.a = x;
    op.b = y;
    ops.push(op);
  }

  private emitOutput(a: CAction, wk: Uint32Array, ctx: XlateCtx, ops: DpOp[], depth: number, rule: FlowRule | null, tableId: number): void {
    const no = a.a;
    switch (no) {
      case Port.IN_PORT: ctx.needsKey = true; ops.push(new DpOp(Op.OUTPUT_IN_PORT)); return;
      case Port.NORMAL: ctx.needsKey = true; ops.push(new DpOp(Op.NORMAL)); return;
      case Port.FLOOD: ctx.needsKey = true; ops.push(new DpOp(Op.FLOOD)); return;
      case Port.ALL: ctx.needsKey = true; ops.push(new DpOp(Op.ALL)); return;
      case Port.CONTROLLER: this.emitController(ops, ctx, 'action', a.b, tableId, rule?.cookie ?? ALL_ONES_64, wk); return;
      case Port.TABLE: {
        // Packet-out only (checked): the packet goes through the tables from table 0.
        const t = this.newCtx();
        this.xlateTables(wk, t, ops, 0, depth);
        ctx.rules.push(...t.rules);
        ctx.needsKey ||= t.needsKey;
        return;
      }
    }
    const p = this.ports.get(no);
    if (!p) return; // a port that does not exist (yet): adding it revalidates
    const op = new DpOp(Op.OUTPUT);
    op.port = p;
    if (p.kind !== 'netdev') ctx.needsKey = true;
    ops.push(op);
  }

  private emitGroup(id: number, wk: Uint32Array, ctx: XlateCtx, ops: DpOp[], depth: number, rule: FlowRule | null, tableId: number): void {
    const g = this.groups.get(id);
    if (!g || depth >= MAX_GROUP_DEPTH) return;
    // Each bucket works on a clone of the packet (§5.6.1 "the packet is effectively cloned for each bucket").
    const sub = (b: GroupBucketState): Program => {
      const k = wk.slice();
      const o: DpOp[] = [];
      const before = ctx.needsKey;
      ctx.needsKey = false;
      // A packet-in from a bucket names the table and entry that led to the group.
      this.emitList(b.actions, k, ctx, o, depth + 1, rule, tableId);
      const prog = new Program(o, ctx.needsKey);
      ctx.needsKey ||= before;
      return prog;
    };
    const op = new DpOp(g.type === 'select' ? Op.GROUP_SELECT : Op.GROUP);
    op.group = g;
    switch (g.type) {
      case 'all':
        op.subs = g.buckets.map(sub);
        op.buckets = g.buckets;
        break;
      case 'indirect':
        op.subs = [sub(g.buckets[0]!)];
        op.buckets = [g.buckets[0]!];
        break;
      case 'ff': {
        // §5.6.1: the first live bucket; liveness changes revalidate this choice.
        const b = g.buckets.find((x) => this.bucketLive(x));
        op.subs = b ? [sub(b)] : [];
        op.buckets = b ? [b] : [];
        break;
      }
      case 'select':
        op.subs = g.buckets.map(sub);
        op.buckets = g.buckets;
        ctx.needsKey = true;
        break;
    }
    ops.push(op);
  }

  // ───────────────────────────── the fast path ─────────────────────────────

  private checkOpen(): void {
    if (this.closed) throw new VswitchError('bad-config', 'the bridge is closed', 'closed', true);
  }

  private initPkt(p: Pkt, frame: Uint8Array): void {
    const info = this.extractor.info;
    p.buf = frame;
    p.start = 0;
    p.len = frame.length;
    p.own = false;
    p.src = null;
    p.l3 = info.l3Offset;
    p.l4 = info.l4Offset;
    p.layers = info.layers;
    p.proto = info.ipProtocol;
    p.vlans = info.vlanCount;
  }

  /**
   * Processes one frame received on port `portNo`, as the port's back-end does.
   * Exposed for in-process drivers and benchmarks; `frame` is only read during the call.
   */
  receive(portNo: number, frame: Uint8Array): void {
    const p = this.ports.get(portNo);
    if (!p) throw new VswitchError('bad-port', `port ${portNo} does not exist`, 'portNo', portNo);
    this.receiveOn(p, frame, p.kind === 'bond' ? Math.max(p.active, 0) : -1);
  }

  /** Processes `frames[0, count)` from one port. */
  receiveBatch(portNo: number, frames: readonly Uint8Array[], count = frames.length): void {
    const p = this.ports.get(portNo);
    if (!p) throw new VswitchError('bad-port', `port ${portNo} does not exist`, 'portNo', portNo);
    if (this.busy || this.closed) {
      for (let i = 0; i < count; i++) this.receiveOn(p, frames[i]!, -1);
      return;
    }
    this.busy = true;
    try {
      this.setNow(this.clock());
      if (this.now >= this.nextExpiry) this.expireFlows();
      const member = p.kind === 'bond' ? Math.max(p.active, 0) : -1;
      for (let i = 0; i < count; i++) {
        // The caller's frames stay valid for the whole call: outputs of unmodified frames are
        // queued per port and sent in one call at the end (one ring publish, one wake-up).
        const f = frames[i]!;
        this.batchFrame = f;
        this.process(p, f, member);
      }
    } finally {
      this.batchFrame = null;
      this.flushTx();
      this.busy = false;
    }
    this.drain();
  }

  private receiveOn(p: PortState, frame: Uint8Array, member: number): void {
    if (this.closed) return;
    if (this.busy) {
      // A back-end that delivers synchronously from inside a send: queue a copy, bounded.
      if (this.deferred.length < 1024) {
        this.deferred.push({ port: p, frame: frame.slice(), member });
        this.deferredCount++;
      } else p.stats.rxDropped++;
      return;
    }
    this.busy = true;
    try {
      if (!this.coarseClock) this.setNow(this.clock());
      else if (!this.nowValid) {
        this.setNow(this.clock());
        this.nowValid = true;
        queueMicrotask(this.expireNow);
      }
      if (this.now >= this.nextExpiry) this.expireFlows();
      this.process(p, frame, member);
    } finally {
      this.busy = false;
    }
    this.drain();
  }

  private drain(): void {
    while (this.deferred.length > 0 && !this.busy) {
      const d = this.deferred.shift()!;
      this.receiveOn(d.port, d.frame, d.member);
    }
    if (this.pendingPacketIns.length > 0 && !this.busy) {
      const list = this.pendingPacketIns.splice(0);
      for (const ev of list) for (const h of this.packetInHandlers) {
        try {
          h(ev);
        } catch {
          // The controller's failure is its own.
        }
      }
    }
  }

  private process(port: PortState, frame: Uint8Array, member: number): void {
    const st = port.stats;
    st.rxPackets++;
    st.rxBytes += frame.length;
    // Runts and frames larger than an IP packet can make are refused (back-ends already
    // enforce their MTU; this guards direct callers of receive()).
    if (port.noRecv || port.mirrorOut || !port.live || frame.length < 14 || frame.length > 65535) {
      st.rxDropped++;
      return;
    }
    // Active-backup: only the active member's frames count (as Open vSwitch drops the others).
    if (member >= 0 && port.bondMode === 'active-backup' && member !== port.active) {
      st.rxDropped++;
      return;
    }
    const p = this.levels[0]!;
    const key = this.ingress;
    if (port.kind === 'tunnel') {
      if (!this.decapsulate(port, frame, p)) {
        st.rxDropped++;
        return;
      }
    } else {
      this.extractor.extract(frame, key, port.no);
      this.initPkt(p, frame);
      this.rxFrame = frame;
    }
    this.inPort = port;
    this.inPortNo = port.no;
    let mb = port.mirrorSrcBits;
    if (this.vlanMirrorBits !== null) mb |= this.vlanMirrorBits[this.ingressVlan(port, key.words)]!;
    this.mirrorBits = mb;
    const kw = key.words;
    const h = this.micro.size === 0 ? 0 : keyHash(kw);
    let e = this.micro.lookup(kw, h);
    if (e === null) {
      e = this.mega.lookup(kw);
      if (e === null) {
        const { t, wc } = this.translate(kw);
        e = this.mega.insert(kw, wc, t);
      }
      this.micro.insert(kw, h, e);
    }
    this.execute(e, p);
    if (e.dead) this.pushStats(e);
    if (this.mirrorBits !== 0) this.mirror(p);
  }

  private execute(e: MegaflowEntry<Translation>, p: Pkt): void {
    // Statistics go to the cache entry only; the flow entries and tables it stands for are
    // credited lazily (pushStats), as Open vSwitch's revalidators do: a hit touches one object.
    e.hits++;
    e.bytes += p.len;
    e.used = this.now;
    const t = e.data;
    if (t.prog.needsKey) p.key.set(this.ingress.words);
    this.run(t.prog, p, 0);
  }

  /** Credits a cache entry's traffic since the last push to its flow entries and tables. */
  private pushStats(e: MegaflowEntry<Translation>): void {
    const n = e.hits - e.pushedHits;
    if (n === 0) return;
    const b = e.bytes - e.pushedBytes;
    e.pushedHits = e.hits;
    e.pushedBytes = e.bytes;
    const t = e.data;
    for (const r of t.rules) {
      r.packetCount += n;
      r.byteCount += b;
      if (e.used > r.lastUsed) r.lastUsed = e.used;
    }
    for (const id of t.lookedUp) this.tables[id]!.lookupCount += n;
    for (const id of t.matched) this.tables[id]!.matchedCount += n;
  }

  /** Brings every flow and table counter up to date. */
  private pushAllStats(): void {
    for (const e of this.mega.entries()) this.pushStats(e);
  }

  /** The VLAN NORMAL assigns at ingress (for VLAN mirrors). */
  private ingressVlan(port: PortState, k: Uint32Array): number {
    const tci = k[7]! & 0xffff;
    const vid = tci & 0x1000 ? tci & 0xfff : 0;
    if (port.access) return port.tag;
    return vid !== 0 ? vid : port.native;
  }

  private mirror(p: Pkt): void {
    const bits = this.mirrorBits;
    this.mirrorBits = 0;
    p.key.set(this.ingress.words);
    for (const m of this.mirrors) {
      if (!(bits & m.bit) || !m.out || m.out === this.inPort || !m.out.live) continue;
      // The copy is the frame as received (a SPAN port sees the wire), once per mirror.
      this.sendOn(m.out, this.rxFrame, p);
    }
  }

  private run(prog: Program, p: Pkt, depth: number): void {
    const ops = prog.ops;
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i]!;
      switch (op.code) {
        case Op.OUTPUT: {
          const port = op.port!;
          // §4.5: a packet goes back out its ingress port only through IN_PORT.
          if (port.no !== this.inPortNo) this.output(port, p);
          break;
        }
        case Op.OUTPUT_IN_PORT:
          if (this.inPort !== null) this.output(this.inPort, p);
          break;
        case Op.FLOOD:
        case Op.ALL: {
          const list = this.portList;
          for (let j = 0; j < list.length; j++) {
            const q = list[j]!;
            if (q === this.inPort || q.mirrorOut || (op.code === Op.FLOOD && q.noFlood)) continue;
            this.output(q, p);
          }
          break;
        }
        case Op.NORMAL:
          this.normal(p);
          break;
        case Op.CONTROLLER:
          this.packetIn(op, p);
          break;
        case Op.METER: {
          const m = op.meter!;
          if (m.admit(p.len)) return;
          if (m.remark !== 0) this.remark(p, m.remark, prog.needsKey);
          break;
        }
        case Op.GROUP: {
          const g = op.group!;
          g.packetCount++;
          g.byteCount += p.len;
          const subs = op.subs!;
          for (let j = 0; j < subs.length; j++) {
            const b = op.buckets![j]!;
            b.packetCount++;
            b.byteCount += p.len;
            this.runClone(subs[j]!, p, depth);
          }
          break;
        }
        case Op.GROUP_SELECT: {
          const g = op.group!;
          g.packetCount++;
          g.byteCount += p.len;
          const idx = g.table[tupleHash(p.key) & 255]!;
          if (idx >= 0) {
            const b = op.buckets![idx]!;
            b.packetCount++;
            b.byteCount += p.len;
            this.runClone(op.subs![idx]!, p, depth);
          }
          break;
        }
        default:
          applyToBytes(p, op.code, op.a, op.b);
          if (prog.needsKey) applyToKey(p.key, op.code, op.a, op.b);
      }
    }
  }

  /** A dscp_remark band applies: raise the packet's drop precedence (RFC 2597 AFxy) in its bytes. */
  private remark(p: Pkt, precLevel: number, withKey: boolean): void {
    let dscp: number;
    if (p.layers & Layer.IPV4) dscp = p.buf[p.start + p.l3 + 1]! >>> 2;
    else if (p.layers & Layer.IPV6) dscp = (((p.buf[p.start + p.l3]! & 0x0f) << 4) | (p.buf[p.start + p.l3 + 1]! >>> 4)) >>> 2;
    else return;
    const n = remarkDscp(dscp, precLevel);
    if (n === dscp) return;
    applyToBytes(p, Op.SET_IP_DSCP, n, 0);
    if (withKey) applyToKey(p.key, Op.SET_IP_DSCP, n, 0);
  }

  private runClone(prog: Program, p: Pkt, depth: number): void {
    if (prog.ops.length === 0 || depth >= MAX_GROUP_DEPTH) return;
    const q = this.levels[depth + 1]!;
    q.cloneFrom(p, true);
    this.run(prog, q, depth + 1);
  }

  private output(port: PortState, p: Pkt): void {
    if (!port.live || port.noFwd) {
      port.stats.txDropped++;
      return;
    }
    this.mirrorBits |= port.mirrorDstBits;
    this.sendOn(port, p.frame(), p);
  }

  private flushPortTx(port: PortState): void {
    const n = port.txn;
    port.txn = 0;
    const q = port.txq;
    const taken = port.backend!.send(q, n);
    const st = port.stats;
    for (let i = 0; i < n; i++) {
      if (i < taken) {
        st.txPackets++;
        st.txBytes += q[i]!.length;
      } else st.txDropped++;
    }
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(this.flushDeferred);
  }

  private flushTx(): void {
    const d = this.txDirty;
    const n = this.txDirtyN;
    this.txDirtyN = 0;
    for (let i = 0; i < n; i++) if (d[i]!.txn > 0) this.flushPortTx(d[i]!);
  }

  private markDirty(port: PortState): void {
    this.txDirty[this.txDirtyN++] = port;
  }

  private sendOn(port: PortState, frame: Uint8Array, p: Pkt): void {
    const st = port.stats;
    let backend: NetBackend;
    if (port.kind === 'netdev') {
      if (frame === this.batchFrame) {
        if (port.txn === 0) this.markDirty(port);
        port.txq[port.txn++] = frame;
        if (port.txn >= 256) this.flushPortTx(port);
        return;
      }
      if (this.deferredTx && this.batchFrame === null && frame.length <= port.backend!.maxFrameSize) {
        // Copy now (the received bytes are only ours during the call), send after the drain.
        const slot = (port.stage[port.txn] ??= new Scratch(port.backend!.maxFrameSize));
        slot.buf.set(frame, 0);
        if (port.txn === 0) this.markDirty(port);
        port.txq[port.txn++] = slot.view(0, frame.length);
        if (port.txn >= 256) this.flushPortTx(port);
        this.scheduleFlush();
        return;
      }
      // Keep the port's order: what is queued goes first.
      if (port.txn > 0) this.flushPortTx(port);
      backend = port.backend!;
    }
    else if (port.kind === 'bond') {
      let m: number;
      if (port.bondMode === 'active-backup') m = port.active;
      else {
        const live = port.liveMembers;
        if (live.length === 0) m = -1;
        else {
          const h = port.bondMode === 'balance-tcp' ? tupleHash(p.key) : hashWords(p.key, SLB_MASK, SLB_WORDS);
          m = live[h % live.length]!;
        }
      }
      if (m < 0) {
        st.txDropped++;
        return;
      }
      backend = port.members[m]!;
    } else {
      const enc = this.encapsulate(port, frame, p);
      if (enc === null) {
        st.txDropped++;
        return;
      }
      frame = enc;
      backend = port.underlay!;
    }
    const one = this.one;
    one[0] = frame;
    if (backend.send(one, 1) === 1) {
      st.txPackets++;
      st.txBytes += frame.length;
    } else st.txDropped++;
  }

  /** RFC 7348 §5: Ethernet/IPv4/UDP/VXLAN around the frame; VNI and remote from the port or the flow. */
  private encapsulate(port: PortState, inner: Uint8Array, p: Pkt): Uint8Array | null {
    // RFC 7348 §5: a 24-bit VNI; from the flow, the low 24 bits of tunnel_id (as Open vSwitch).
    const vni = port.vni >= 0 ? port.vni : p.key[1]! & 0xffffff;
    const dst = port.remoteIp !== 0 ? port.remoteIp : p.key[3]!;
    if (dst === 0) return null;
    const o = this.outer;
    o.srcMac = port.localMac;
    o.dstMac = port.remoteMac;
    o.srcIp = port.localIp;
    o.dstIp = dst;
    o.vni = vni;
    o.dstPort = port.dstPort;
    // RFC 7348 §5: the outer source port from a hash of the inner flow.
    o.srcPort = vxlanSourcePort(tupleHash(p.key));
    const tx = port.tx!;
    if (inner.length + 50 > tx.buf.length) return null;
    const n = encapsulateVxlan(tx.buf, inner, o);
    return tx.view(0, n);
  }

  private decapsulate(port: PortState, frame: Uint8Array, p: Pkt): boolean {
    const info = this.tunnelInfo;
    parsePacket(frame, info, frame.length, port.dstPort);
    if (!(info.layers & Layer.VXLAN) || info.ipVersion !== 4 || info.innerOffset < 0) return false;
    const l3 = info.l3Offset;
    const src = ((frame[l3 + 12]! << 24) | (frame[l3 + 13]! << 16) | (frame[l3 + 14]! << 8) | frame[l3 + 15]!) >>> 0;
    const dst = ((frame[l3 + 16]! << 24) | (frame[l3 + 17]! << 16) | (frame[l3 + 18]! << 8) | frame[l3 + 19]!) >>> 0;
    if (dst !== port.localIp) return false;
    if (port.remoteIp !== 0 && src !== port.remoteIp) return false;
    const vni = info.vni;
    if (port.vni >= 0 && vni !== port.vni) return false;
    const innerLen = frame.length - info.innerOffset;
    if (innerLen < 14) return false;
    const s = this.decap;
    s.buf.set(frame.subarray(info.innerOffset), HEADROOM);
    const inner = s.view(HEADROOM, innerLen);
    const k = this.ingress;
    this.extractor.extract(inner, k, port.no);
    k.words[1] = vni;
    k.words[2] = src;
    k.words[3] = dst;
    this.initPkt(p, inner);
    // Not ours to write: the first modification copies, so the decapsulated frame stays intact for mirrors.
    p.buf = s.buf;
    p.start = HEADROOM;
    p.src = s;
    this.rxFrame = inner;
    return true;
  }

  private packetIn(op: DpOp, p: Pkt): void {
    if (this.inPort?.noPacketIn) return;
    if (this.pendingPacketIns.length >= this.packetInLimit) {
      this.packetInDrops++;
      return;
    }
    const frame = p.frame();
    const max = op.b === NO_BUFFER ? frame.length : Math.min(op.b, frame.length);
    this.packetIns++;
    this.pendingPacketIns.push({
      reason: op.a === 0 ? 'no_match' : 'action',
      tableId: op.c,
      cookie: op.cookie,
      inPort: this.inPortNo,
      tunnelId: (BigInt(op.tunHi) << 32n) | BigInt(p.key[1]!),
      metadata: op.meta,
      data: frame.slice(0, max),
      totalLen: frame.length,
    });
  }

  /** NORMAL (§4.5): the traditional L2 switch, as Open vSwitch's xlate_normal. */
  private normal(p: Pkt): void {
    const inPort = this.inPort;
    if (inPort === null) return;
    const k = p.key;
    const tci = k[7]! & 0xffff;
    const tagged = (tci & 0x1000) !== 0;
    const vid = tagged ? tci & 0xfff : 0;
    let vlan: number;
    if (inPort.access) {
      // An access port takes untagged (or priority-tagged) frames only.
      if (vid !== 0) return;
      vlan = inPort.tag;
    } else {
      vlan = vid !== 0 ? vid : inPort.native;
      if (!inPort.carries(vlan)) return;
    }
    const srcHi = k[5]! & 0xffff;
    if (!(srcHi & 0x100)) {
      // Nothing cached depends on the MAC table (NORMAL runs live on every packet): a new
      // station or a move needs no revalidation.
      this.macs.learn(vlan, srcHi, k[6]! >>> 16, k[6]! & 0xffff, inPort.no);
    }
    const dstHi = k[4]!;
    const pcp = tagged ? tci & 0xe000 : 0;
    if (!(dstHi & 0x01000000)) {
      const out = this.macs.lookup(vlan, dstHi >>> 16, dstHi & 0xffff, k[5]! >>> 16);
      if (out >= 0) {
        if (out === inPort.no) return; // the destination is behind the ingress port
        const q = this.ports.get(out);
        if (q !== undefined && q.carries(vlan) && !q.mirrorOut) this.normalOut(q, p, vlan, pcp);
        return;
      }
    }
    const list = this.portList;
    for (let j = 0; j < list.length; j++) {
      const q = list[j]!;
      if (q === inPort || q.noFlood || q.mirrorOut || !q.carries(vlan)) continue;
      this.normalOut(q, p, vlan, pcp);
    }
  }

  /** Sends with the egress tagging of `q`: untagged on access ports and for the native VLAN, tagged otherwise. */
  private normalOut(q: PortState, p: Pkt, vlan: number, pcp: number): void {
    if (!q.live || q.noFwd) {
      q.stats.txDropped++;
      return;
    }
    this.mirrorBits |= q.mirrorDstBits;
    const untag = q.access || vlan === q.native;
    let frame: Uint8Array;
    if (untag && p.vlans === 0) frame = p.frame();
    else {
      // Copy the whole frame (no subarray per packet), then move the MAC addresses.
      const sc = untag ? this.untagged : this.tagged;
      const b = sc.buf;
      b.set(p.frame(), HEADROOM);
      const len = p.len;
      if (untag) {
        b.copyWithin(HEADROOM + 4, HEADROOM, HEADROOM + 12);
        frame = sc.view(HEADROOM + 4, len - 4);
      } else {
        const tci = pcp | vlan;
        let at = HEADROOM;
        let n = len;
        if (p.vlans === 0) {
          b.copyWithin(HEADROOM - 4, HEADROOM, HEADROOM + 12);
          at = HEADROOM - 4;
          n = len + 4;
        }
        b[at + 12] = 0x81;
        b[at + 13] = 0x00;
        b[at + 14] = tci >>> 8;
        b[at + 15] = tci & 0xff;
        frame = sc.view(at, n);
      }
    }
    this.sendOn(q, frame, p);
  }

  /** Detaches every port (their back-ends stay open: they belong to the caller). */
  close(): void {
    if (this.closed) return;
    this.flushTx();
    for (const p of this.ports.values()) for (const u of p.unsubscribe) u();
    this.closed = true;
  }
}
