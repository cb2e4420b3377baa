import type { GuestMemory } from '@ioplane/guest-memory';
import { Layer, PacketInfo, fillL4Checksum, l4ChecksumFieldOffset, parsePacket, pseudoHeaderSum } from '@ioplane/packet';
import { BufferList, type Doorbell, type DriverQueue, type UsedBuffer, createDriverQueue, featureBits, layoutQueue, ringFeatures } from '@ioplane/virtqueue';
import {
  STATUS_DEVICE_NEEDS_RESET,
  VIRTIO_F_VERSION_1,
  bit,
} from '../defs.js';
import { driverOk, negotiateFeatures } from '../driver-init.js';
import { VirtioError } from '../errors.js';
import { type HaltPollGovernor, checkHaltPoll, haltPollWait } from '../halt-poll.js';
import type { DriverTransport } from '../transport.js';
import {
  NET_CFG_MAC,
  NET_CFG_MAX_VIRTQUEUE_PAIRS,
  NET_CFG_MTU,
  NET_CFG_STATUS,
  NET_HDR_SIZE,
  VIRTIO_NET_CTRL_ANNOUNCE,
  VIRTIO_NET_CTRL_ANNOUNCE_ACK,
  VIRTIO_NET_CTRL_MAC,
  VIRTIO_NET_CTRL_MAC_ADDR_SET,
  VIRTIO_NET_CTRL_MAC_TABLE_SET,
  VIRTIO_NET_CTRL_MQ,
  VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
  VIRTIO_NET_CTRL_RX,
  VIRTIO_NET_CTRL_VLAN,
  VIRTIO_NET_CTRL_VLAN_ADD,
  VIRTIO_NET_CTRL_VLAN_DEL,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_CTRL_MAC_ADDR,
  VIRTIO_NET_F_CTRL_RX,
  VIRTIO_NET_F_CTRL_RX_EXTRA,
  VIRTIO_NET_F_CTRL_VLAN,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_GUEST_ANNOUNCE,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6,
  VIRTIO_NET_OK,
  VIRTIO_NET_S_ANNOUNCE,
  VIRTIO_NET_S_LINK_UP,
} from './defs.js';
import { NetHdr } from './header.js';

export interface VirtioNetDriverOptions {
  transport: DriverTransport;
  mem: GuestMemory;
  /** Guest memory the driver owns for rings and packet buffers (`VirtioNetDriver.areaSize`). */
  area: { addr: number; len: number };
  /** Queue pairs to use (default: all the device offers with MQ). */
  queuePairs?: number;
  /** Queue size (default: the device's maximum, at most 256). */
  queueSize?: number;
  /** Ring features to accept when offered (default all). */
  ring?: { indirect?: boolean; eventIdx?: boolean; packed?: boolean };
  /** Accept MRG_RXBUF when offered (default true). */
  mergeable?: boolean;
  /** Bytes of each receive buffer with MRG_RXBUF (default 1536 + header, as Linux's minimum); without it a buffer holds a whole frame. */
  rxBufferSize?: number;
  /** Accept CSUM / HOST_TSO (TX offloads), GUEST_CSUM (default true). */
  txOffloads?: boolean;
  guestCsum?: boolean;
  /** Accept the control virtqueue (default true). */
  ctrl?: boolean;
  resetTimeoutMs?: number;
}

/** What the driver read from config space (§5.1.4). */
/** How `VirtioNetDriver.listen` waits. */
export interface NetListenOptions {
  /** Longest sleep between looks at a queue (default 50 ms). */
  pollMs?: number;
  /** The thread's halt polling (none by default): see `HaltPollGovernor`. One governor per thread, shared by its queues. */
  haltPoll?: HaltPollGovernor;
  /** Clock for `haltPoll`, in milliseconds (default `performance.now`). */
  now?: () => number;
}

export interface NetDeviceInfo {
  mac: Uint8Array;
  linkUp: boolean;
  mtu: number;
  maxQueuePairs: number;
  features: bigint;
}

/** A received packet: the frame (valid only during the call) and its header. */
export type NetFrameHandler = (frame: Uint8Array, hdr: NetHdr, queue: number) => void;

export interface NetDriverStats {
  txPackets: number;
  rxPackets: number;
  /** Packets whose used length or num_buffers did not add up (the device's fault). */
  rxErrors: number;
}

interface TxQ {
  q: number;
  dq: DriverQueue<number>;
  bufBase: number;
  bufSize: number;
  free: number[];
  /** TSO slots: 64 KiB buffers, tokens from `size` on. */
  gsoBase: number;
  gsoFree: number[];
  dirty: boolean;
  waiters: (() => void)[];
}

interface CtrlQ {
  q: number;
  dq: DriverQueue<number>;
  slot: number;
}

interface RxQ {
  q: number;
  dq: DriverQueue<number>;
  bufBase: number;
  bufSize: number;
  dirty: boolean;
}

const GSO_SLOTS = 4;
/** Used-buffer tokens of TSO slots start here (ordinary TX tokens are slot indices below the queue size). */
const GSO_TOKEN = 0x10000;
const GSO_SLOT_BYTES = NET_HDR_SIZE + 65535 + 22;
const CTRL_SLOT_BYTES = 4096;

function align(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}

/**
 * A guest's virtio-net driver (what Linux's virtio_net does), for simulated
 * guests and tests: negotiates features (§3.1.1, §5.1.5), keeps receive
 * buffers posted (mergeable or not), sends packets with checksum offload or
 * TSO, and drives the control virtqueue (RX modes, MAC table and address,
 * VLAN filter, queue pairs, announce acks). Received packets go to
 * `onFrame`; call `handleInterrupt(q)` from an `InterruptSink`, or
 * `listen()` on Doorbells.
 */
export class VirtioNetDriver {
  readonly info: NetDeviceInfo;
  readonly stats: NetDriverStats = { txPackets: 0, rxPackets: 0, rxErrors: 0 };
  readonly mergeable: boolean;
  readonly #t: DriverTransport;
  readonly #mem: GuestMemory;
  readonly #tx: TxQ[];
  readonly #rx: RxQ[];
  readonly #ctrl: CtrlQ | undefined;
  readonly #list = new BufferList(4);
  readonly #used: UsedBuffer<number> = { token: undefined, len: 0 };
  readonly #hdr = new NetHdr();
  readonly #hdrOut = new NetHdr();
  readonly #info = new PacketInfo();
  readonly #assembly: Uint8Array;
  /** How long a control command may wait for its answer (ms). */
  ctrlTimeoutMs = 5000;
  #handler: NetFrameHandler | null = null;
  #pairs: number;
  #rr = 0;
  #publishScheduled = false;
  #closed = false;
  readonly #isClosed = (): boolean => this.#closed;
  #ctrlChain: Promise<void> = Promise.resolve();
  #ctrlWaiter: ((ack: number) => void) | undefined;
  readonly #publish = (): void => this.publishAll();

  private constructor(t: DriverTransport, mem: GuestMemory, info: NetDeviceInfo, tx: TxQ[], rx: RxQ[], ctrl: CtrlQ | undefined, mergeable: boolean) {
    this.#t = t;
    this.#mem = mem;
    this.info = info;
    this.#tx = tx;
    this.#rx = rx;
    this.#ctrl = ctrl;
    this.#pairs = 1;
    this.mergeable = mergeable;
    this.#assembly = new Uint8Array(NET_HDR_SIZE + 65535 + 22);
  }

  /** Bytes of driver-owned guest memory for `pairs` queue pairs of `size` entries with `rxBufferSize` receive buffers. */
  static areaSize(pairs: number, size: number, rxBufferSize = 2048, txBufferSize = 2048): number {
    const rings = align(Math.max(layoutQueue(false, size, 0).bytes, layoutQueue(true, size, 0).bytes), 4096);
    const rx = rings + align(size * rxBufferSize, 4096);
    const tx = rings + align(size * txBufferSize + GSO_SLOTS * GSO_SLOT_BYTES, 4096);
    return pairs * (rx + tx) + rings + CTRL_SLOT_BYTES + 8192;
  }

  /** Device initialisation (§3.1.1) and virtio-net set-up (§5.1.5). */
  static async create(opts: VirtioNetDriverOptions): Promise<VirtioNetDriver> {
    const t = opts.transport;
    const ring = { indirect: true, eventIdx: true, packed: true, ...opts.ring };
    let want = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS) | bit(VIRTIO_NET_F_MTU) | featureBits({ indirect: ring.indirect, eventIdx: ring.eventIdx, packed: ring.packed });
    if (opts.mergeable ?? true) want |= bit(VIRTIO_NET_F_MRG_RXBUF);
    if (opts.txOffloads ?? true) want |= bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6);
    if (opts.guestCsum ?? true) want |= bit(VIRTIO_NET_F_GUEST_CSUM);
    if (opts.ctrl ?? true) {
      want |= bit(VIRTIO_NET_F_CTRL_VQ) | bit(VIRTIO_NET_F_CTRL_RX) | bit(VIRTIO_NET_F_CTRL_RX_EXTRA) | bit(VIRTIO_NET_F_CTRL_VLAN);
      want |= bit(VIRTIO_NET_F_CTRL_MAC_ADDR) | bit(VIRTIO_NET_F_GUEST_ANNOUNCE) | bit(VIRTIO_NET_F_MQ);
    }
    const accepted = await negotiateFeatures(
      t,
      (offered) => {
        let f = offered & want;
        // §5.1.3.1: what depends on CTRL_VQ / CSUM goes when they are missing.
        if ((f & bit(VIRTIO_NET_F_CTRL_VQ)) === 0n) f &= ~(bit(VIRTIO_NET_F_CTRL_RX) | bit(VIRTIO_NET_F_CTRL_RX_EXTRA) | bit(VIRTIO_NET_F_CTRL_VLAN) | bit(VIRTIO_NET_F_CTRL_MAC_ADDR) | bit(VIRTIO_NET_F_GUEST_ANNOUNCE) | bit(VIRTIO_NET_F_MQ));
        if ((f & bit(VIRTIO_NET_F_CSUM)) === 0n) f &= ~(bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6));
        return f;
      },
      opts.resetTimeoutMs,
    );
    const has = (n: number): boolean => (accepted & bit(n)) !== 0n;
    const info = await readInfo(t, accepted, has);
    const mq = has(VIRTIO_NET_F_MQ);
    const maxPairs = mq ? info.maxQueuePairs : 1;
    const pairs = Math.min(maxPairs, opts.queuePairs ?? maxPairs);
    if (!Number.isInteger(pairs) || pairs < 1) throw new VirtioError('invalid-argument', `queue pairs ${opts.queuePairs} must be at least 1`, { queuePairs: opts.queuePairs });
    const mergeable = has(VIRTIO_NET_F_MRG_RXBUF);
    const maxFrame = info.mtu + 22;
    // Without MRG_RXBUF every buffer holds header + the largest frame (§5.1.6.3.1).
    const rxBufSize = mergeable ? (opts.rxBufferSize ?? NET_HDR_SIZE + 1536) : NET_HDR_SIZE + maxFrame;
    if (!Number.isInteger(rxBufSize) || rxBufSize < NET_HDR_SIZE + 1) throw new VirtioError('invalid-argument', `receive buffers of ${rxBufSize} bytes cannot hold a header`, { rxBufferSize: rxBufSize });
    const txBufSize = NET_HDR_SIZE + maxFrame;
    const rf = ringFeatures(accepted);
    let at = opts.area.addr;
    const end = opts.area.addr + opts.area.len;
    const setup = async (q: number, bytesPerQueue: (size: number) => number): Promise<{ dq: DriverQueue<number>; base: number; size: number }> => {
      const max = await t.queueMaxSize(q);
      if (max === 0) throw new VirtioError('invalid-argument', `the device has no queue ${q}`, { queue: q });
      let size = Math.min(max, opts.queueSize ?? 256);
      if (!rf.packed) size = 2 ** Math.floor(Math.log2(size));
      const { config, bytes } = layoutQueue(rf.packed, size, align(at, 4096));
      const base = align(config.descAddr + bytes, 64);
      const next = base + bytesPerQueue(size);
      if (next > end) throw new VirtioError('invalid-argument', `driver area of ${opts.area.len} bytes is too small for queue ${q}`, { area: opts.area.len, queue: q });
      opts.mem.fill(config.descAddr, base - config.descAddr, 0);
      await t.setQueueSize(q, size);
      await t.setQueueAddresses(q, config.descAddr, config.driverAddr, config.deviceAddr);
      await t.enableQueue(q);
      at = next;
      return { dq: createDriverQueue<number>(opts.mem, config, rf), base, size };
    };
    const rx: RxQ[] = [];
    const tx: TxQ[] = [];
    for (let p = 0; p < pairs; p++) {
      const r = await setup(2 * p, (s) => s * rxBufSize);
      rx.push({ q: 2 * p, dq: r.dq, bufBase: r.base, bufSize: rxBufSize, dirty: false });
      const w = await setup(2 * p + 1, (s) => s * txBufSize + 64 + GSO_SLOTS * GSO_SLOT_BYTES);
      const gsoBase = align(w.base + w.size * txBufSize, 64);
      tx.push({
        q: 2 * p + 1, dq: w.dq, bufBase: w.base, bufSize: txBufSize, free: Array.from({ length: w.size }, (_, i) => w.size - 1 - i),
        gsoBase, gsoFree: has(VIRTIO_NET_F_HOST_TSO4) || has(VIRTIO_NET_F_HOST_TSO6) ? [3, 2, 1, 0] : [], dirty: false, waiters: [],
      });
    }
    let ctrl: CtrlQ | undefined;
    if (has(VIRTIO_NET_F_CTRL_VQ)) {
      const cq = mq ? 2 * maxPairs : 2;
      const c = await setup(cq, () => CTRL_SLOT_BYTES);
      ctrl = { q: cq, dq: c.dq, slot: c.base };
    }
    await driverOk(t);
    const d = new VirtioNetDriver(t, opts.mem, info, tx, rx, ctrl, mergeable);
    // §5.1.6.3.1: fill the receive queues.
    for (const r of rx) d.fillRx(r);
    d.publishAll();
    // §5.1.5 step: more than one pair is used after VQ_PAIRS_SET.
    if (pairs > 1) await d.setQueuePairs(pairs);
    return d;
  }

  get queuePairs(): number {
    return this.#pairs;
  }

  /** Sets the receive callback (frames arriving without one are counted and reposted). */
  onFrame(handler: NetFrameHandler | null): void {
    this.#handler = handler;
  }

  // ── Transmit ──

  /** Free TX buffers on `pair`'s queue (reclaiming used ones first). */
  txRoom(pair = 0): number {
    const d = this.#tx[pair];
    if (d === undefined) return 0;
    this.reapTx(d);
    return d.free.length;
  }

  /** Resolves when `send` on `pair` can take a packet. */
  writable(pair = 0): Promise<void> {
    const d = this.#tx[pair];
    if (d === undefined || this.txRoom(pair) > 0 || this.#closed) return Promise.resolve();
    return new Promise((r) => d.waiters.push(r));
  }

  /**
   * Queues `frame` for transmission on queue pair `pair` (default round
   * robin). With `offloadChecksum`, a TCP, UDP, ICMP or ICMPv6 checksum is left to the
   * device (NEEDS_CSUM with the pseudo-header sum in the field, §5.1.6.2)
   * when CSUM was negotiated, or computed here otherwise. Returns false when
   * the queue is full (see `writable`).
   */
  send(frame: Uint8Array, options: { offloadChecksum?: boolean; pair?: number } = {}): boolean {
    if (this.#closed) return false;
    if (frame.length < 14 || frame.length > this.info.mtu + 22) throw new VirtioError('invalid-argument', `frame of ${frame.length} bytes is outside 14..${this.info.mtu + 22}`, { length: frame.length });
    const d = this.pickTx(options.pair);
    if (d.free.length === 0) this.reapTx(d);
    const slot = d.free.pop();
    if (slot === undefined) return false;
    const at = d.bufBase + slot * d.bufSize;
    const buf = this.#mem.view(at, NET_HDR_SIZE + frame.length, 'write');
    buf.set(frame, NET_HDR_SIZE);
    const h = this.#hdrOut.clear();
    if (options.offloadChecksum === true) this.prepareChecksum(buf.subarray(NET_HDR_SIZE), h);
    h.encode(buf, 0);
    this.queueTx(d, at, NET_HDR_SIZE + frame.length, slot);
    return true;
  }

  /**
   * Sends a TCP segment larger than the MTU as one TSO packet (gso_type
   * TCPV4/TCPV6, gso_size `mss`, NEEDS_CSUM; §5.1.6.2). Needs HOST_TSO4/6.
   * Returns false when no TSO buffer is free.
   */
  sendTso(frame: Uint8Array, mss: number, pair?: number): boolean {
    const info = parsePacket(frame, this.#info, frame.length, 0);
    if ((info.layers & Layer.TCP) === 0) throw new VirtioError('invalid-argument', 'a TSO packet is a TCP segment', {});
    const v4 = info.ipVersion === 4;
    if ((this.info.features & bit(v4 ? VIRTIO_NET_F_HOST_TSO4 : VIRTIO_NET_F_HOST_TSO6)) === 0n) throw new VirtioError('feature-missing', `HOST_TSO${v4 ? 4 : 6} was not negotiated`, {});
    if (frame.length > GSO_SLOT_BYTES - NET_HDR_SIZE || !Number.isInteger(mss) || mss < 1 || mss > 65535) throw new VirtioError('invalid-argument', `TSO packet of ${frame.length} bytes, mss ${mss}`, { length: frame.length, mss });
    const d = this.pickTx(pair);
    this.reapTx(d);
    const g = d.gsoFree.pop();
    if (g === undefined) return false;
    const at = d.gsoBase + g * GSO_SLOT_BYTES;
    const buf = this.#mem.view(at, NET_HDR_SIZE + frame.length, 'write');
    buf.set(frame, NET_HDR_SIZE);
    const h = this.#hdrOut.clear();
    this.prepareChecksum(buf.subarray(NET_HDR_SIZE), h);
    h.gsoType = v4 ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_TCPV6;
    h.gsoSize = mss;
    h.hdrLen = info.payloadOffset;
    h.encode(buf, 0);
    this.queueTx(d, at, NET_HDR_SIZE + frame.length, GSO_TOKEN + g);
    return true;
  }

  private pickTx(pair: number | undefined): TxQ {
    if (pair === undefined) {
      const d = this.#tx[this.#rr]!;
      this.#rr = (this.#rr + 1) % this.#pairs;
      return d;
    }
    const d = this.#tx[pair];
    if (d === undefined || pair >= this.#pairs) throw new VirtioError('invalid-argument', `queue pair ${pair} is not in use (${this.#pairs})`, { pair });
    return d;
  }

  private prepareChecksum(frame: Uint8Array, h: NetHdr): void {
    const info = parsePacket(frame, this.#info, frame.length, 0);
    if ((info.layers & (Layer.TCP | Layer.UDP | Layer.ICMP | Layer.ICMPV6)) === 0 || info.fragment !== 0 || info.anomalies !== 0) return;
    if ((this.info.features & bit(VIRTIO_NET_F_CSUM)) === 0n) {
      fillL4Checksum(frame, info);
      return;
    }
    // What a guest stack does for CHECKSUM_PARTIAL: the pseudo-header sum, uncomplemented, in the field.
    const off = l4ChecksumFieldOffset(info.ipProtocol);
    const s = pseudoHeaderSum(frame, info);
    frame[info.l4Offset + off] = s >>> 8;
    frame[info.l4Offset + off + 1] = s & 0xff;
    h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    h.csumStart = info.l4Offset;
    h.csumOffset = off;
  }

  private queueTx(d: TxQ, addr: number, len: number, token: number): void {
    const list = this.#list.clear().push(addr, len, false);
    if (!d.dq.add(list, token)) throw new VirtioError('invalid-argument', 'TX ring has no free descriptor', { queue: d.q });
    this.stats.txPackets++;
    d.dirty = true;
    this.schedulePublish();
  }

  private reapTx(d: TxQ): number {
    const used = this.#used;
    let n = 0;
    for (;;) {
      let got: boolean;
      try {
        got = d.dq.pollUsed(used);
        if (!got && d.dq.enableInterrupts()) got = d.dq.pollUsed(used);
      } catch (e) {
        throw new VirtioError('bad-completion', `queue ${d.q}: ${e instanceof Error ? e.message : String(e)}`, { queue: d.q }, { cause: e });
      }
      if (!got) break;
      n++;
      const tok = used.token!;
      if (tok >= GSO_TOKEN) d.gsoFree.push(tok - GSO_TOKEN);
      else d.free.push(tok);
    }
    if (n > 0 && d.waiters.length > 0) for (const w of d.waiters.splice(0)) w();
    return n;
  }

  // ── Receive ──

  /** Posts every receive buffer (one per ring entry, token = buffer index), §5.1.6.3.1. */
  private fillRx(r: RxQ): void {
    const list = this.#list;
    for (let slot = 0; slot < r.dq.size; slot++) {
      list.clear().push(r.bufBase + slot * r.bufSize, r.bufSize, true);
      if (!r.dq.add(list, slot)) break;
      r.dirty = true;
    }
  }

  private repost(r: RxQ, slot: number): void {
    const list = this.#list.clear().push(r.bufBase + slot * r.bufSize, r.bufSize, true);
    // One descriptor per buffer and as many buffers as descriptors: the ring always has room.
    if (r.dq.add(list, slot)) {
      r.dirty = true;
      this.schedulePublish();
    }
  }

  private reapRx(r: RxQ): number {
    const used = this.#used;
    const mem = this.#mem;
    const hdr = this.#hdr;
    let n = 0;
    for (;;) {
      let got: boolean;
      try {
        got = r.dq.pollUsed(used);
        if (!got && r.dq.enableInterrupts()) got = r.dq.pollUsed(used);
      } catch (e) {
        throw new VirtioError('bad-completion', `queue ${r.q}: ${e instanceof Error ? e.message : String(e)}`, { queue: r.q }, { cause: e });
      }
      if (!got) break;
      n++;
      const slot = used.token!;
      const len = used.len;
      const at = r.bufBase + slot * r.bufSize;
      if (len < NET_HDR_SIZE || len > r.bufSize) {
        this.stats.rxErrors++;
        this.repost(r, slot);
        continue;
      }
      const first = mem.view(at, len, 'read');
      hdr.decode(first, 0);
      const count = this.mergeable ? hdr.numBuffers : 1;
      let frame: Uint8Array;
      if (count <= 1) {
        frame = first.subarray(NET_HDR_SIZE);
        this.deliver(frame, r);
        this.repost(r, slot);
        continue;
      }
      // Mergeable: the rest of the packet is in the next count-1 used buffers (§5.1.6.4).
      const asm = this.#assembly;
      let off = len - NET_HDR_SIZE;
      asm.set(first.subarray(NET_HDR_SIZE), 0);
      this.repost(r, slot);
      let ok = true;
      for (let i = 1; i < count; i++) {
        if (!r.dq.pollUsed(used)) {
          ok = false;
          break;
        }
        const s = used.token!;
        const l = used.len;
        if (l > r.bufSize || off + l > asm.length) ok = false;
        else asm.set(mem.view(r.bufBase + s * r.bufSize, l, 'read'), off);
        off += l;
        this.repost(r, s);
      }
      if (!ok) {
        this.stats.rxErrors++;
        continue;
      }
      this.deliver(asm.subarray(0, off), r);
    }
    return n;
  }

  private deliver(frame: Uint8Array, r: RxQ): void {
    this.stats.rxPackets++;
    this.#handler?.(frame, this.#hdr, r.q >> 1);
  }

  // ── Notifications ──

  private schedulePublish(): void {
    if (!this.#publishScheduled) {
      this.#publishScheduled = true;
      queueMicrotask(this.#publish);
    }
  }

  private publishAll(): void {
    this.#publishScheduled = false;
    for (const r of this.#rx) {
      if (!r.dirty) continue;
      r.dirty = false;
      r.dq.publish();
      if (r.dq.needsNotify()) this.#t.notify(r.q);
    }
    for (const d of this.#tx) {
      if (!d.dirty) continue;
      d.dirty = false;
      d.dq.publish();
      if (d.dq.needsNotify()) this.#t.notify(d.q);
    }
  }

  /** A used buffer notification for queue `q` (or every queue). Returns buffers reaped. */
  handleInterrupt(q?: number): number {
    let n = 0;
    for (const r of this.#rx) if (q === undefined || q === r.q) n += this.reapRx(r);
    for (const d of this.#tx) if (q === undefined || q === d.q) n += this.reapTx(d);
    if (this.#ctrl && (q === undefined || q === this.#ctrl.q)) n += this.reapCtrl();
    return n;
  }

  /** A configuration change: re-read status (link, announce); ack an announce request (§5.1.6.5.4). */
  async handleConfigChange(): Promise<void> {
    const st = await this.#t.status();
    if ((st & STATUS_DEVICE_NEEDS_RESET) !== 0) throw new VirtioError('device-needs-reset', 'the device set DEVICE_NEEDS_RESET', { status: st });
    if ((this.info.features & bit(VIRTIO_NET_F_STATUS)) === 0n) return;
    const s = await this.#t.readConfig(NET_CFG_STATUS, 2);
    this.info.linkUp = (s & VIRTIO_NET_S_LINK_UP) !== 0;
    if ((s & VIRTIO_NET_S_ANNOUNCE) !== 0 && (this.info.features & bit(VIRTIO_NET_F_GUEST_ANNOUNCE)) !== 0n) {
      await this.command(VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK, new Uint8Array(0));
    }
  }

  /**
   * Waits on one Doorbell per queue (rung by the device's thread) and reaps,
   * until `close()`. `options` is the longest sleep between looks (ms, default
   * 50), or `{ pollMs, haltPoll, now }`: with `haltPoll` the thread halt-polls
   * each queue's doorbell before it sleeps, as `VirtioBlkDriver.listen` does.
   */
  listen(bells: readonly Doorbell[], options: number | NetListenOptions = {}): Promise<void> {
    const { pollMs = 50, haltPoll: hp, now = () => performance.now() } = typeof options === 'number' ? { pollMs: options } : options;
    const haltPoll = checkHaltPoll(hp);
    const qs = [...this.#rx.map((r) => r.q), ...this.#tx.map((d) => d.q), ...(this.#ctrl ? [this.#ctrl.q] : [])];
    return Promise.all(
      qs.map(async (q) => {
        const bell = bells[q];
        if (bell === undefined) throw new VirtioError('invalid-argument', `no interrupt doorbell for queue ${q}`, { queue: q });
        while (!this.#closed) {
          const seen = bell.count;
          this.handleInterrupt(q);
          if (haltPoll === undefined) await bell.waitAsync(seen, pollMs);
          else await haltPollWait(bell, seen, pollMs, haltPoll, now, this.#isClosed);
        }
      }),
    ).then(() => undefined);
  }

  // ── Control virtqueue (§5.1.6.5) ──

  /** Sends one control command; resolves on VIRTIO_NET_OK, rejects on VIRTIO_NET_ERR. Commands run one at a time. */
  command(cls: number, cmd: number, data: Uint8Array): Promise<void> {
    const c = this.#ctrl;
    if (c === undefined) return Promise.reject(new VirtioError('feature-missing', 'the control virtqueue was not negotiated', {}));
    if (2 + data.length + 1 > CTRL_SLOT_BYTES) return Promise.reject(new VirtioError('invalid-argument', `control data of ${data.length} bytes is too long`, { length: data.length }));
    const run = async (): Promise<void> => {
      const mem = this.#mem;
      mem.writeU8(c.slot, cls);
      mem.writeU8(c.slot + 1, cmd);
      if (data.length > 0) mem.writeFrom(c.slot + 2, data);
      const ackAt = c.slot + CTRL_SLOT_BYTES - 1;
      mem.writeU8(ackAt, 0xff);
      const list = this.#list.clear().push(c.slot, 2 + data.length, false).push(ackAt, 1, true);
      const ack = await new Promise<number>((resolve, reject) => {
        this.#ctrlWaiter = resolve;
        if (!c.dq.add(list, 0)) {
          this.#ctrlWaiter = undefined;
          reject(new VirtioError('invalid-argument', 'control queue full', {}));
          return;
        }
        c.dq.publish();
        if (c.dq.needsNotify()) this.#t.notify(c.q);
        // Like Linux's virtnet_send_command, poll for the answer rather than rely on an
        // interrupt (none is wired up while `create` runs); bounded by `ctrlTimeoutMs`.
        const deadline = Date.now() + this.ctrlTimeoutMs;
        const poll = (): void => {
          if (this.#ctrlWaiter !== resolve) return;
          this.reapCtrl();
          if (this.#ctrlWaiter !== resolve) return;
          if (Date.now() > deadline) {
            this.#ctrlWaiter = undefined;
            reject(new VirtioError('transport', `control command class ${cls} command ${cmd} got no answer within ${this.ctrlTimeoutMs} ms`, { class: cls, command: cmd }));
            return;
          }
          setTimeout(poll, 1);
        };
        setImmediate(poll);
      });
      if (ack !== VIRTIO_NET_OK) throw new VirtioError('unsupported', `control command class ${cls} command ${cmd} answered VIRTIO_NET_ERR`, { class: cls, command: cmd, ack });
    };
    const p = this.#ctrlChain.then(run, run);
    this.#ctrlChain = p.catch(() => undefined);
    return p;
  }

  private reapCtrl(): number {
    const c = this.#ctrl!;
    let n = 0;
    while (c.dq.pollUsed(this.#used) || (c.dq.enableInterrupts() && c.dq.pollUsed(this.#used))) {
      n++;
      const ack = this.#used.len >= 1 ? this.#mem.readU8(c.slot + CTRL_SLOT_BYTES - 1) : 0xff;
      const w = this.#ctrlWaiter;
      this.#ctrlWaiter = undefined;
      w?.(ack);
    }
    return n;
  }

  setPromisc(on: boolean): Promise<void> {
    return this.command(VIRTIO_NET_CTRL_RX, 0, Uint8Array.of(on ? 1 : 0));
  }
  setAllMulti(on: boolean): Promise<void> {
    return this.command(VIRTIO_NET_CTRL_RX, 1, Uint8Array.of(on ? 1 : 0));
  }
  /** VIRTIO_NET_CTRL_RX commands 2..5 (ALLUNI, NOMULTI, NOUNI, NOBCAST; CTRL_RX_EXTRA). */
  setRxMode(cmd: number, on: boolean): Promise<void> {
    return this.command(VIRTIO_NET_CTRL_RX, cmd, Uint8Array.of(on ? 1 : 0));
  }
  /** MAC_TABLE_SET: the unicast and multicast filter tables. */
  setMacTable(unicast: readonly Uint8Array[], multicast: readonly Uint8Array[]): Promise<void> {
    const b = new Uint8Array(8 + 6 * (unicast.length + multicast.length));
    const dv = new DataView(b.buffer);
    let o = 0;
    for (const t of [unicast, multicast]) {
      dv.setUint32(o, t.length, true);
      o += 4;
      for (const m of t) {
        b.set(m.subarray(0, 6), o);
        o += 6;
      }
    }
    return this.command(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, b);
  }
  /** MAC_ADDR_SET: the default MAC address (CTRL_MAC_ADDR). */
  async setMac(mac: Uint8Array): Promise<void> {
    await this.command(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, mac.subarray(0, 6));
    this.info.mac = mac.slice(0, 6);
  }
  addVlan(vid: number): Promise<void> {
    return this.command(VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_ADD, Uint8Array.of(vid & 0xff, (vid >>> 8) & 0xff));
  }
  delVlan(vid: number): Promise<void> {
    return this.command(VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_DEL, Uint8Array.of(vid & 0xff, (vid >>> 8) & 0xff));
  }
  /** VQ_PAIRS_SET (MQ): how many queue pairs the device uses. */
  async setQueuePairs(n: number): Promise<void> {
    if (!Number.isInteger(n) || n < 1 || n > this.#tx.length) throw new VirtioError('invalid-argument', `queue pairs ${n} is outside 1..${this.#tx.length}`, { pairs: n });
    await this.command(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, Uint8Array.of(n & 0xff, n >>> 8));
    this.#pairs = n;
    this.#rr = 0;
  }

  /** Stops listening and resets the device. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const d of this.#tx) for (const w of d.waiters.splice(0)) w();
    this.#ctrlWaiter?.(0xff);
    await this.#t.setStatus(0);
  }
}

async function readInfo(t: DriverTransport, features: bigint, has: (n: number) => boolean): Promise<NetDeviceInfo> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const gen = await t.configGeneration();
    const mac = new Uint8Array(6);
    if (has(VIRTIO_NET_F_MAC)) for (let i = 0; i < 6; i++) mac[i] = await t.readConfig(NET_CFG_MAC + i, 1);
    else mac.set([0x02, 0, 0, 0, 0, 1]);
    const status = has(VIRTIO_NET_F_STATUS) ? await t.readConfig(NET_CFG_STATUS, 2) : VIRTIO_NET_S_LINK_UP;
    const info: NetDeviceInfo = {
      mac,
      linkUp: (status & VIRTIO_NET_S_LINK_UP) !== 0,
      mtu: has(VIRTIO_NET_F_MTU) ? await t.readConfig(NET_CFG_MTU, 2) : 1500,
      maxQueuePairs: has(VIRTIO_NET_F_MQ) ? await t.readConfig(NET_CFG_MAX_VIRTQUEUE_PAIRS, 2) : 1,
      features,
    };
    if ((await t.configGeneration()) === gen) return info;
  }
  throw new VirtioError('device-needs-reset', 'config_generation kept changing while reading config space', {});
}
