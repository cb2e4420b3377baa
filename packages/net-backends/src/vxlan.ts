import type { Socket } from 'node:dgram';
import { isIP } from 'node:net';
import { FlowKey, FlowKeyExtractor, formatMac, macToNumber, parseMac, VXLAN_PORT } from '@ioplane/packet';
import { BaseNetBackend, DEFAULT_MTU, checkMtu } from './backend.js';
import { NetBackendError } from './errors.js';
import { SendPool } from './send-pool.js';
import { bindSocket, checkEndpoint, type Endpoint } from './udp.js';

/** RFC 7348 §5: the 8-byte VXLAN header. */
const VXLAN_HEADER = 8;
const FLAG_I = 0x08;

export interface VxlanEndpointOptions {
  /** Local VTEP address; the port defaults to 4789 (RFC 7348 §5), 0 lets the kernel choose. */
  local: { address: string; port?: number };
  /**
   * Sockets whose ports serve as outer UDP source ports (default 4). RFC 7348 §5
   * recommends a source port from a hash of the inner flow; a Node socket sends from
   * its bound port, so the inner flow hash picks one of these sockets: one flow keeps
   * one port (no reordering), flows spread over the set (ECMP entropy).
   */
  sourceSockets?: number;
  /** Bind the source sockets to these ports instead of kernel-chosen ones (e.g. from 49152–65535). */
  sourcePorts?: number[];
  /** Datagrams in flight per socket before `send` applies back-pressure (default 256). */
  sendSlots?: number;
  /** The largest inner MTU any attached network may use (default 9000), sizing the send slots. */
  maxMtu?: number;
}

export interface VxlanRemote {
  address: string;
  /** Default: the network's `remotePort` (4789). */
  port?: number;
}

export interface VxlanNetworkOptions {
  /** 24-bit VXLAN Network Identifier. */
  vni: number;
  /** Inner L3 MTU (default 1500). */
  mtu?: number;
  /**
   * VTEPs that receive broadcast, multicast and unknown-unicast frames (head-end
   * replication, as Linux's all-zeros FDB entries): RFC 7348 §4.2 maps them to an IP
   * multicast group; an underlay without multicast uses a list.
   */
  remotes?: VxlanRemote[];
  /** Static MAC → VTEP entries; never aged, never overwritten by learning. */
  fdb?: { mac: string; address: string; port?: number }[];
  /** Learn inner source MAC → outer source IP from received frames (RFC 7348 §4.1; default true). */
  learning?: boolean;
  /** Bound on learned entries (default 4096); when full and nothing has aged out, new MACs are not learned. */
  maxFdbEntries?: number;
  /** A learned entry unused for this long is forgotten (default 300 000 ms, as a Linux bridge). */
  ageingMs?: number;
  /** The outer destination port for learned entries and for remotes without a port (default 4789). */
  remotePort?: number;
  /** Accept decapsulated frames carrying a VLAN tag (RFC 7348 §6.1: SHOULD be discarded unless configured; default false). */
  allowInnerVlan?: boolean;
  /** Milliseconds clock for ageing (injected for tests; default `Date.now`). */
  now?: () => number;
}

export interface VxlanEndpointStats {
  rxDatagrams: number;
  /** Datagrams shorter than a VXLAN header plus an Ethernet header. */
  rxRunts: number;
  /** The I flag clear (RFC 7348 §5). */
  rxBadHeader: number;
  /** A VNI no network is attached for. */
  rxUnknownVni: number;
}

interface FdbEntry {
  address: string;
  port: number;
  at: number;
  isStatic: boolean;
}

export interface FdbView {
  mac: string;
  address: string;
  port: number;
  static: boolean;
  /** Milliseconds since last seen (0 for static entries). */
  ageMs: number;
}

/**
 * A VXLAN tunnel end point (RFC 7348): one UDP socket on the VXLAN port that
 * demultiplexes by VNI to attached networks, each a {@link VxlanBackend}.
 */
export class VxlanEndpoint {
  readonly stats: VxlanEndpointStats = { rxDatagrams: 0, rxRunts: 0, rxBadHeader: 0, rxUnknownVni: 0 };
  private readonly networks = new Map<number, VxlanBackend>();
  private closed = false;
  /** @internal */
  readonly pools: SendPool[];
  private readonly writableListeners = new Set<() => void>();

  private constructor(
    private readonly socket: Socket,
    /** @internal */
    readonly senders: Socket[],
    slots: number,
    readonly maxMtu: number,
  ) {
    const freed = (): void => {
      for (const l of this.writableListeners) l();
    };
    this.pools = senders.map(() => new SendPool(maxMtu + 22 + VXLAN_HEADER, slots, freed));
    socket.on('message', (msg, rinfo) => this.receive(msg, rinfo.address));
    // Asynchronous socket errors (ICMP port unreachable on some kernels) are not fatal to a VTEP.
    socket.on('error', () => {});
  }

  static async open(options: VxlanEndpointOptions): Promise<VxlanEndpoint> {
    const port = options.local.port ?? VXLAN_PORT;
    checkEndpoint('local', { address: options.local.address, port }, true);
    const maxMtu = checkMtu(options.maxMtu ?? 9000);
    const slots = options.sendSlots ?? 256;
    if (!Number.isInteger(slots) || slots < 1 || slots > 65536) throw new NetBackendError('invalid-config', `sendSlots ${slots} is outside 1..65536`, 'sendSlots', slots);
    const ports = options.sourcePorts ?? new Array<number>(options.sourceSockets ?? 4).fill(0);
    if (ports.length < 1 || ports.length > 64) throw new NetBackendError('invalid-config', `${ports.length} source sockets is outside 1..64`, 'sourceSockets', ports.length);
    for (const p of ports) checkEndpoint('sourcePorts', { address: options.local.address, port: p }, true);
    const socket = await bindSocket(options.local.address, port);
    const senders: Socket[] = [];
    try {
      for (const p of ports) senders.push(await bindSocket(options.local.address, p));
    } catch (e) {
      socket.close();
      for (const s of senders) s.close();
      throw e;
    }
    for (const s of senders) {
      // Replies never come to the source ports (VXLAN always targets the VXLAN port); drain anything that does.
      s.on('message', () => {});
      s.on('error', () => {});
    }
    return new VxlanEndpoint(socket, senders, slots, maxMtu);
  }

  get local(): Endpoint {
    const a = this.socket.address();
    return { address: a.address, port: a.port };
  }

  /** The outer source ports in use, in socket order. */
  get sourcePorts(): number[] {
    return this.senders.map((s) => s.address().port);
  }

  /** Attaches a network (a VNI) and returns its back-end. */
  attach(options: VxlanNetworkOptions): VxlanBackend {
    if (this.closed) throw new NetBackendError('closed', 'the VXLAN endpoint is closed');
    const vni = options.vni;
    if (!Number.isInteger(vni) || vni < 0 || vni > 0xffffff) throw new NetBackendError('invalid-config', `VNI ${vni} is outside 0..16777215 (24 bits, RFC 7348 §5)`, 'vni', vni);
    if (this.networks.has(vni)) throw new NetBackendError('invalid-config', `VNI ${vni} is already attached`, 'vni', vni);
    const mtu = checkMtu(options.mtu ?? DEFAULT_MTU);
    if (mtu > this.maxMtu) throw new NetBackendError('invalid-config', `mtu ${mtu} is above the endpoint's maxMtu ${this.maxMtu}`, 'mtu', mtu);
    const b = new VxlanBackend(this, options, isIP(this.local.address));
    this.networks.set(vni, b);
    return b;
  }

  /** @internal */
  detach(b: VxlanBackend): void {
    if (this.networks.get(b.vni) === b) this.networks.delete(b.vni);
  }

  /** @internal */
  onWritable(l: () => void): () => void {
    this.writableListeners.add(l);
    return () => this.writableListeners.delete(l);
  }

  private receive(msg: Buffer, from: string): void {
    const s = this.stats;
    s.rxDatagrams++;
    if (msg.length < VXLAN_HEADER + 14) {
      s.rxRunts++;
      return;
    }
    // RFC 7348 §5: the I flag must be 1; the reserved bits are ignored on receipt.
    if ((msg[0]! & FLAG_I) === 0) {
      s.rxBadHeader++;
      return;
    }
    const vni = (msg[4]! << 16) | (msg[5]! << 8) | msg[6]!;
    const net = this.networks.get(vni);
    if (net === undefined) {
      s.rxUnknownVni++;
      return;
    }
    net.receiveInner(msg.subarray(VXLAN_HEADER), from);
  }

  /** Closes the sockets and every attached network. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const n of [...this.networks.values()]) await n.close();
    await Promise.all([this.socket, ...this.senders].map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
}

/**
 * One VXLAN network (a VNI) on an endpoint, as a NetBackend: frames sent are
 * encapsulated to the VTEP their destination MAC was learned at (or flooded to the
 * configured remotes), frames received for this VNI are decapsulated.
 */
export class VxlanBackend extends BaseNetBackend {
  readonly kind = 'vxlan';
  readonly vni: number;
  private readonly fdb = new Map<number, FdbEntry>();
  private readonly remotes: Endpoint[] = [];
  private readonly learning: boolean;
  private readonly maxFdb: number;
  private readonly ageingMs: number;
  private readonly remotePort: number;
  private readonly allowInnerVlan: boolean;
  private readonly now: () => number;
  private readonly extractor = new FlowKeyExtractor(0);
  private readonly key = new FlowKey();
  private readonly offWritable: () => void;
  /** Frames not learned because the table was full. */
  fdbFull = 0;

  /** @internal use {@link VxlanEndpoint.attach}. */
  constructor(
    private readonly endpoint: VxlanEndpoint,
    o: VxlanNetworkOptions,
    private readonly family: number,
  ) {
    super(o.mtu ?? DEFAULT_MTU);
    this.vni = o.vni;
    this.learning = o.learning ?? true;
    this.maxFdb = o.maxFdbEntries ?? 4096;
    if (!Number.isInteger(this.maxFdb) || this.maxFdb < 0) throw new NetBackendError('invalid-config', `maxFdbEntries ${this.maxFdb} is not a non-negative integer`, 'maxFdbEntries', this.maxFdb);
    this.ageingMs = o.ageingMs ?? 300_000;
    if (!(this.ageingMs > 0)) throw new NetBackendError('invalid-config', `ageingMs ${this.ageingMs} is not positive`, 'ageingMs', this.ageingMs);
    this.remotePort = o.remotePort ?? VXLAN_PORT;
    checkEndpoint('remotePort', { address: '0.0.0.0', port: this.remotePort });
    this.allowInnerVlan = o.allowInnerVlan ?? false;
    this.now = o.now ?? Date.now;
    for (const r of o.remotes ?? []) this.addRemote(r);
    for (const e of o.fdb ?? []) this.addFdb(e.mac, e);
    this.offWritable = endpoint.onWritable(() => this.notifyWritable());
    this.setLink(true);
  }

  private toEndpoint(field: string, r: VxlanRemote): Endpoint {
    const e = { address: r.address, port: r.port ?? this.remotePort };
    checkEndpoint(field, e);
    if (isIP(e.address) !== this.family) throw new NetBackendError('invalid-config', `${field} ${e.address} is not of the endpoint's IP version`, field, e.address);
    return e;
  }

  /** Adds a flood destination (broadcast, multicast, unknown unicast). */
  addRemote(r: VxlanRemote): void {
    const e = this.toEndpoint('remote', r);
    if (!this.remotes.some((x) => x.address === e.address && x.port === e.port)) this.remotes.push(e);
  }

  removeRemote(r: VxlanRemote): void {
    const e = this.toEndpoint('remote', r);
    const i = this.remotes.findIndex((x) => x.address === e.address && x.port === e.port);
    if (i >= 0) this.remotes.splice(i, 1);
  }

  /** Adds a static FDB entry (MAC text or 6 bytes). */
  addFdb(mac: string | Uint8Array, r: VxlanRemote): void {
    let bytes: Uint8Array;
    try {
      bytes = typeof mac === 'string' ? parseMac(mac) : mac;
    } catch {
      throw new NetBackendError('invalid-config', `fdb MAC ${JSON.stringify(mac)} is not a MAC address`, 'fdb.mac', mac);
    }
    if (bytes.length !== 6) throw new NetBackendError('invalid-config', `fdb MAC has ${bytes.length} bytes, not 6`, 'fdb.mac', bytes.length);
    const e = this.toEndpoint('fdb', r);
    this.fdb.set(macToNumber(bytes), { address: e.address, port: e.port, at: 0, isStatic: true });
  }

  removeFdb(mac: string | Uint8Array): boolean {
    return this.fdb.delete(macToNumber(typeof mac === 'string' ? parseMac(mac) : mac));
  }

  /** A snapshot of the forwarding table. */
  fdbEntries(): FdbView[] {
    const now = this.now();
    const out: FdbView[] = [];
    const mac = new Uint8Array(6);
    for (const [k, e] of this.fdb) {
      const hi = Math.floor(k / 0x1_0000_0000);
      const lo = k % 0x1_0000_0000;
      mac.set([hi >>> 8, hi & 255, lo >>> 24, (lo >>> 16) & 255, (lo >>> 8) & 255, lo & 255]);
      out.push({ mac: formatMac(mac), address: e.address, port: e.port, static: e.isStatic, ageMs: e.isStatic ? 0 : now - e.at });
    }
    return out;
  }

  get floodList(): Endpoint[] {
    return this.remotes.map((r) => ({ ...r }));
  }

  /** @internal the endpoint hands decapsulated frames here. */
  receiveInner(inner: Uint8Array, from: string): void {
    if (this.closed) return;
    if (inner.length >= 14) {
      const et = (inner[12]! << 8) | inner[13]!;
      if ((et === 0x8100 || et === 0x88a8) && !this.allowInnerVlan) {
        // RFC 7348 §6.1: decapsulated frames with an inner VLAN tag SHOULD be discarded.
        this.stats.rxDrops++;
        return;
      }
      // RFC 7348 §4.1: learn the inner source MAC at the outer source IP.
      if (this.learning && (inner[6]! & 1) === 0) this.learn(macToNumber(inner, 6), from);
    }
    this.deliver(inner);
  }

  private learn(mac: number, from: string): void {
    if (mac === 0) return;
    const now = this.now();
    const e = this.fdb.get(mac);
    if (e !== undefined) {
      if (e.isStatic) return;
      e.at = now;
      if (e.address !== from) {
        e.address = from;
        e.port = this.remotePort;
      }
      return;
    }
    if (this.fdb.size >= this.maxFdb) {
      this.age(now);
      if (this.fdb.size >= this.maxFdb) {
        this.fdbFull++;
        return;
      }
    }
    this.fdb.set(mac, { address: from, port: this.remotePort, at: now, isStatic: false });
  }

  private age(now: number): void {
    for (const [k, e] of this.fdb) if (!e.isStatic && now - e.at > this.ageingMs) this.fdb.delete(k);
  }

  private lookup(frame: Uint8Array): FdbEntry | undefined {
    if ((frame[0]! & 1) !== 0) return undefined;
    const e = this.fdb.get(macToNumber(frame, 0));
    if (e === undefined) return undefined;
    if (!e.isStatic && this.now() - e.at > this.ageingMs) {
      this.fdb.delete(macToNumber(frame, 0));
      return undefined;
    }
    return e;
  }

  /** Which source socket (and so outer source port) a frame's flow uses. */
  sourcePortIndex(frame: Uint8Array): number {
    this.extractor.extract(frame, this.key);
    return this.key.hash5Tuple() % this.endpoint.senders.length;
  }

  protected override canSend(): boolean {
    return this.endpoint.pools.every((p) => p.available >= Math.max(1, this.remotes.length));
  }

  send(frames: readonly Uint8Array[], count = frames.length): number {
    const n = Math.min(count, frames.length);
    const s = this.stats;
    const vni = this.vni;
    let i = 0;
    for (; i < n; i++) {
      const f = frames[i]!;
      if (!this.admit(f)) continue;
      const e = this.lookup(f);
      const copies = e !== undefined ? 1 : this.remotes.length;
      if (copies === 0) {
        s.txDrops++;
        continue;
      }
      const si = this.sourcePortIndex(f);
      const pool = this.endpoint.pools[si]!;
      if (pool.available < copies) break;
      const sock = this.endpoint.senders[si]!;
      for (let c = 0; c < copies; c++) {
        const dst = e !== undefined ? e : this.remotes[c]!;
        const slot = pool.acquire()!;
        // RFC 7348 §5: flags with I set, 24 reserved bits, the VNI, 8 reserved bits.
        slot[0] = FLAG_I;
        slot[1] = 0;
        slot[2] = 0;
        slot[3] = 0;
        slot[4] = vni >>> 16;
        slot[5] = (vni >>> 8) & 0xff;
        slot[6] = vni & 0xff;
        slot[7] = 0;
        slot.set(f, VXLAN_HEADER);
        pool.send(sock, slot, VXLAN_HEADER + f.length, dst.port, dst.address);
      }
      s.txPackets++;
      s.txBytes += f.length;
    }
    return i;
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.markClosed();
    this.offWritable();
    this.endpoint.detach(this);
    return Promise.resolve();
  }
}
