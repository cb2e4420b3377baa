import type { GuestMemory } from '@ioplane/guest-memory';
import { BufferList, type Doorbell, type DriverQueue, type UsedBuffer, createDriverQueue, featureBits, layoutQueue, ringFeatures } from '@ioplane/virtqueue';
import {
  BLK_CFG_BLK_SIZE,
  BLK_CFG_CAPACITY,
  BLK_CFG_MAX_DISCARD_SECTORS,
  BLK_CFG_MAX_DISCARD_SEG,
  BLK_CFG_MAX_WRITE_ZEROES_SECTORS,
  BLK_CFG_MAX_WRITE_ZEROES_SEG,
  BLK_CFG_NUM_QUEUES,
  BLK_CFG_SEG_MAX,
  BLK_CFG_WRITEBACK,
  BLK_CFG_WRITE_ZEROES_MAY_UNMAP,
  BLK_DWZ_SEGMENT_SIZE,
  BLK_REQ_HEADER_SIZE,
  SECTOR_SIZE,
  STATUS_DEVICE_NEEDS_RESET,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
  VIRTIO_F_VERSION_1,
  bit,
} from './defs.js';
import { driverOk, negotiateFeatures } from './driver-init.js';
import { VirtioError } from './errors.js';
import { type HaltPollGovernor, checkHaltPoll, haltPollWait } from './halt-poll.js';
import type { DriverTransport } from './transport.js';

/** A guest buffer: address and length in guest memory. */
export interface GuestBuffer {
  addr: number;
  len: number;
}

/** A range to discard or zero, in 512-byte sectors. */
export interface SectorRange {
  sector: number;
  count: number;
}

export interface VirtioBlkDriverOptions {
  transport: DriverTransport;
  mem: GuestMemory;
  /** Guest memory the driver owns for rings, indirect tables and request headers (`VirtioBlkDriver.areaSize`). */
  area: GuestBuffer;
  /** Queues to use (default: every queue the device has, if it offers MQ). */
  queues?: number;
  /** Queue size (default: the device's maximum, at most 256). */
  queueSize?: number;
  /** Ring features to accept when offered (default: all of indirect, eventIdx, packed). */
  ring?: { indirect?: boolean; eventIdx?: boolean; packed?: boolean };
  /** Accept FLUSH, DISCARD, WRITE_ZEROES, CONFIG_WCE when offered (default true). */
  flush?: boolean;
  discard?: boolean;
  writeZeroes?: boolean;
  /** With CONFIG_WCE: ask for a writethrough cache (writeback = 0). */
  writeThrough?: boolean;
  /** How long to wait for a reset to finish (status reads 0), default 5000 ms. */
  resetTimeoutMs?: number;
  /** Most data segments per request the driver builds indirect tables for (default 32). */
  maxSegments?: number;
  /**
   * Requests of fewer descriptors than this take ring descriptors, while the
   * ring has room, instead of an indirect table (`DriverOptions.indirectFrom`;
   * default 4). A read or write of one buffer is three (header, data,
   * status): in the ring, the device finds them in the descriptor table
   * without fetching a table of their own from the guest's core: +0.04 to
   * +0.13 on the ratio of 4 KiB random reads at QD32 to the direct back-end
   * (sync engine, same-run A/Bs), +0.05 to +0.18 on 64 KiB sequential
   * (README). 2 puts every request of more than one descriptor in a table,
   * as Linux does.
   */
  indirectFrom?: number;
}

export interface ListenOptions {
  /** Longest sleep between looks at the used ring (default 50 ms). */
  pollMs?: number;
  /** Configuration change notifications (DEVICE_NEEDS_RESET). */
  configBell?: Doorbell;
  /**
   * After a completion, keep looking at the queue's used ring once per turn
   * of the event loop for this many microseconds, with its interrupt off,
   * before re-arming it and sleeping on its doorbell (default 0: sleep at
   * once), as NAPI does. While requests keep completing the device then
   * raises no interrupt, whose cross-thread wake-up (an eventfd write and,
   * for a thread asleep on another core, an inter-processor interrupt) its
   * own thread pays for; the guest's thread spins meanwhile.
   */
  spinUs?: number;
  /**
   * The thread's halt polling (none by default): when a queue has nothing to
   * take and its interrupt is armed, look at the doorbell once per turn of
   * the event loop for the governor's window before sleeping on it, as a
   * halted vCPU under KVM does. An interrupt that comes while the thread
   * polls costs the device's thread no wake-up; this thread spins meanwhile.
   * One governor is the vCPU's: share it between the queues one thread serves.
   */
  haltPoll?: HaltPollGovernor;
  /** Clock for `spinUs` and `haltPoll`, in milliseconds (default `performance.now`). */
  now?: () => number;
}

/** What the driver read from config space after negotiation (§5.2.4). */
export interface BlkDeviceInfo {
  capacitySectors: number;
  blkSize: number;
  segMax: number;
  numQueues: number;
  readOnly: boolean;
  writeback: boolean;
  maxDiscardSectors: number;
  maxDiscardSeg: number;
  maxWriteZeroesSectors: number;
  maxWriteZeroesSeg: number;
  writeZeroesMayUnmap: boolean;
  features: bigint;
}

/** Per-slot layout: header (16), status (1) at 16, ID buffer (20) at 32, discard table at 64. */
const SLOT_STATUS = 16;
const SLOT_ID = 32;
const SLOT_TABLE = 64;
const SLOT_MAX_RANGES = 28;
const SLOT_BYTES = SLOT_TABLE + SLOT_MAX_RANGES * BLK_DWZ_SEGMENT_SIZE;
const DEFAULT_MAX_SEGMENTS = 32;
/** Header, one data buffer and status (three descriptors) go direct; more go indirect. */
const DEFAULT_INDIRECT_FROM = 4;

/** What `tryAdd` did. */
const ADDED = 0;
const NO_SLOT = 1;
const NO_DESCRIPTORS = 2;
type AddResult = typeof ADDED | typeof NO_SLOT | typeof NO_DESCRIPTORS;

interface Slot {
  resolve: ((v: undefined) => void) | undefined;
  reject: ((e: Error) => void) | undefined;
  type: number;
  /** For GET_ID: the answer. */
  id: Uint8Array | undefined;
}

interface DQ {
  q: number;
  dq: DriverQueue<number>;
  slotBase: number;
  slots: Slot[];
  free: number[];
  waiters: (() => void)[];
  dirty: boolean;
  /** Interrupts off: completions are collected by `poll()` only (Linux's virtio-blk poll queues). */
  polled: boolean;
  /** Interrupts off while `listen` spins on the used ring (`ListenOptions.spinUs`). */
  spinning: boolean;
}

const wantedBits =
  bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_RO) | bit(VIRTIO_BLK_F_TOPOLOGY) | bit(VIRTIO_BLK_F_MQ);

/**
 * A guest's virtio-blk driver (what Linux's virtio_blk does), for simulated
 * guests and tests: negotiates features and sets up queues as §3.1.1 says,
 * then issues requests, each a Promise, as many in flight as the caller
 * wants (requests beyond the ring's room wait their turn). Completions are
 * collected from the used ring when the device interrupts: call
 * `handleInterrupt(q)` from an `InterruptSink`, or `listen()` on Doorbells.
 */
export class VirtioBlkDriver {
  readonly info: BlkDeviceInfo;
  readonly #transport: DriverTransport;
  readonly #mem: GuestMemory;
  readonly #queues: DQ[];
  readonly #list = new BufferList(DEFAULT_MAX_SEGMENTS + 2);
  readonly #one: GuestBuffer[] = [{ addr: 0, len: 0 }];
  readonly #used: UsedBuffer<number> = { token: undefined, len: 0 };
  readonly #maxSegments: number;
  #rr = 0;
  #publishScheduled = false;
  #closed = false;
  #failed: VirtioError | undefined;
  readonly #bells: Doorbell[] = [];
  readonly #publish = (): void => this.publishAll();
  /** One turn of the event loop (a macrotask: the turn's microtasks, the requests' continuations, run first). */
  readonly #turn = (resolve: () => void): void => void setImmediate(resolve);
  readonly #isClosed = (): boolean => this.#closed;

  private constructor(transport: DriverTransport, mem: GuestMemory, info: BlkDeviceInfo, queues: DQ[], maxSegments: number) {
    this.#transport = transport;
    this.#mem = mem;
    this.info = info;
    this.#queues = queues;
    this.#maxSegments = maxSegments;
  }

  /** Bytes of driver-owned guest memory `create` needs for `queues` queues of `size`. */
  static areaSize(queues: number, size: number, maxSegments = DEFAULT_MAX_SEGMENTS): number {
    const rings = Math.max(layoutQueue(false, size, 0).bytes, layoutQueue(true, size, 0).bytes);
    const per = align(rings, 64) + align(size * (maxSegments + 2) * 16, 64) + size * SLOT_BYTES;
    return queues * align(per, 4096);
  }

  /** Device initialisation as a driver does it (VirtIO 1.2 §3.1.1), then queue set-up (§4.1.5.1.3). */
  static async create(opts: VirtioBlkDriverOptions): Promise<VirtioBlkDriver> {
    const t = opts.transport;
    // 1–6. Reset, ACKNOWLEDGE, DRIVER, features (the subset we understand of what is offered), FEATURES_OK.
    const ring = { indirect: true, eventIdx: true, packed: true, ...opts.ring };
    let want = wantedBits | featureBits({ indirect: ring.indirect, eventIdx: ring.eventIdx, packed: ring.packed });
    if (opts.flush ?? true) want |= bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_CONFIG_WCE);
    if (opts.discard ?? true) want |= bit(VIRTIO_BLK_F_DISCARD);
    if (opts.writeZeroes ?? true) want |= bit(VIRTIO_BLK_F_WRITE_ZEROES);
    const accepted = await negotiateFeatures(t, () => want, opts.resetTimeoutMs);
    const has = (n: number): boolean => (accepted & bit(n)) !== 0n;
    // 7. Device-specific set-up: config space read consistently (§2.5.1 config_generation).
    if (has(VIRTIO_BLK_F_CONFIG_WCE) && opts.writeThrough) await t.writeConfig(BLK_CFG_WRITEBACK, 1, 0);
    const info = await readInfo(t, accepted, has);
    const maxQ = has(VIRTIO_BLK_F_MQ) ? Math.max(1, info.numQueues) : 1;
    const nq = Math.min(maxQ, opts.queues ?? maxQ);
    if (!Number.isInteger(nq) || nq < 1) throw new VirtioError('invalid-argument', `queues ${opts.queues} must be at least 1`, { queues: opts.queues });
    info.numQueues = nq;
    const rf = ringFeatures(accepted);
    const maxSegments = opts.maxSegments ?? DEFAULT_MAX_SEGMENTS;
    const queues: DQ[] = [];
    let at = opts.area.addr;
    const end = opts.area.addr + opts.area.len;
    for (let q = 0; q < nq; q++) {
      const max = await t.queueMaxSize(q);
      if (max === 0) throw new VirtioError('invalid-argument', `the device has no queue ${q}`, { queue: q });
      let size = Math.min(max, opts.queueSize ?? 256);
      // Split rings: a power of two (§2.7).
      if (!rf.packed) size = 2 ** Math.floor(Math.log2(size));
      const { config, bytes } = layoutQueue(rf.packed, size, align(at, 4096));
      const indirect = align(config.descAddr + bytes, 64);
      const slotBase = align(indirect + size * (maxSegments + 2) * 16, 64);
      const next = slotBase + size * SLOT_BYTES;
      if (next > end) throw new VirtioError('invalid-argument', `driver area of ${opts.area.len} bytes is too small for ${nq} queue(s) of ${size}`, { area: opts.area.len });
      opts.mem.fill(config.descAddr, next - config.descAddr, 0);
      await t.setQueueSize(q, size);
      await t.setQueueAddresses(q, config.descAddr, config.driverAddr, config.deviceAddr);
      await t.enableQueue(q);
      const dq = createDriverQueue<number>(opts.mem, config, rf, { indirectArea: { addr: indirect, maxIndirect: maxSegments + 2 }, indirectFrom: opts.indirectFrom ?? DEFAULT_INDIRECT_FROM });
      const slots: Slot[] = Array.from({ length: size }, () => ({ resolve: undefined, reject: undefined, type: 0, id: undefined }));
      queues.push({ q, dq, slotBase, slots, free: Array.from({ length: size }, (_, i) => size - 1 - i), waiters: [], dirty: false, polled: false, spinning: false });
      at = next;
    }
    // 8. DRIVER_OK.
    await driverOk(t);
    return new VirtioBlkDriver(t, opts.mem, info, queues, maxSegments);
  }

  get numQueues(): number {
    return this.#queues.length;
  }

  /** Requests submitted and not completed, over every queue. */
  get inFlight(): number {
    let n = 0;
    for (const d of this.#queues) n += d.slots.length - d.free.length + d.waiters.length;
    return n;
  }

  read(sector: number, addr: number, len: number, queue?: number): Promise<void> {
    // One reusable buffer list: submit copies it if the request has to wait.
    const one = this.#one;
    one[0]!.addr = addr;
    one[0]!.len = len;
    return this.readv(sector, one, queue);
  }

  readv(sector: number, buffers: readonly GuestBuffer[], queue?: number): Promise<void> {
    return this.submit(VIRTIO_BLK_T_IN, sector, buffers, queue);
  }

  write(sector: number, addr: number, len: number, queue?: number): Promise<void> {
    const one = this.#one;
    one[0]!.addr = addr;
    one[0]!.len = len;
    return this.writev(sector, one, queue);
  }

  writev(sector: number, buffers: readonly GuestBuffer[], queue?: number): Promise<void> {
    return this.submit(VIRTIO_BLK_T_OUT, sector, buffers, queue);
  }

  flush(queue?: number): Promise<void> {
    return this.submit(VIRTIO_BLK_T_FLUSH, 0, [], queue);
  }

  discard(ranges: readonly SectorRange[], queue?: number): Promise<void> {
    return this.submitRanges(VIRTIO_BLK_T_DISCARD, ranges, false, queue);
  }

  writeZeroes(ranges: readonly SectorRange[], unmap = false, queue?: number): Promise<void> {
    return this.submitRanges(VIRTIO_BLK_T_WRITE_ZEROES, ranges, unmap, queue);
  }

  /** GET_ID: the device's serial (up to 20 bytes, NUL-padded). */
  async getId(queue?: number): Promise<string> {
    const holder: { id?: Uint8Array } = {};
    await this.submit(VIRTIO_BLK_T_GET_ID, 0, [], queue, holder);
    const id = holder.id ?? new Uint8Array(0);
    const nul = id.indexOf(0);
    return new TextDecoder().decode(nul < 0 ? id : id.subarray(0, nul));
  }

  private pickQueue(queue: number | undefined): DQ {
    if (queue === undefined) {
      const d = this.#queues[this.#rr]!;
      this.#rr = (this.#rr + 1) % this.#queues.length;
      return d;
    }
    const d = this.#queues[queue];
    if (d === undefined) throw new VirtioError('invalid-argument', `queue ${queue} is not set up (${this.#queues.length} queue(s))`, { queue });
    return d;
  }

  private submitRanges(type: number, ranges: readonly SectorRange[], unmap: boolean, queue: number | undefined): Promise<void> {
    if (ranges.length === 0 || ranges.length > SLOT_MAX_RANGES) {
      return Promise.reject(new VirtioError('invalid-argument', `1 to ${SLOT_MAX_RANGES} ranges per request, not ${ranges.length}`, { ranges: ranges.length }));
    }
    return this.submit(type, 0, [], queue, undefined, ranges, unmap);
  }

  private submit(
    type: number,
    sector: number,
    buffers: readonly GuestBuffer[],
    queue: number | undefined,
    idOut?: { id?: Uint8Array },
    ranges?: readonly SectorRange[],
    unmap = false,
  ): Promise<void> {
    if (this.#failed) return Promise.reject(this.#failed);
    if (this.#closed) return Promise.reject(new VirtioError('cancelled', 'the driver is closed', {}));
    if (buffers.length > this.#maxSegments) {
      return Promise.reject(new VirtioError('invalid-argument', `${buffers.length} data segments, at most ${this.#maxSegments}`, { segments: buffers.length }));
    }
    let d: DQ;
    try {
      d = this.pickQueue(queue);
    } catch (e) {
      return Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
    return new Promise<void>((resolve, reject) => {
      // The usual case (a slot and descriptors free) allocates nothing but the Promise;
      // a request that has to wait keeps a copy of its buffer list in a closure.
      const r = this.tryAdd(d, type, sector, buffers, idOut, ranges, unmap, resolve, reject);
      if (r === ADDED) return;
      const own = buffers.map((b) => ({ addr: b.addr, len: b.len }));
      const go = (): void => {
        if (this.#failed) {
          reject(this.#failed);
          return;
        }
        const again = this.tryAdd(d, type, sector, own, idOut, ranges, unmap, resolve, reject);
        if (again === NO_SLOT) d.waiters.push(go);
        // Not enough free descriptors: first in line at the next completion.
        else if (again === NO_DESCRIPTORS) d.waiters.unshift(go);
      };
      if (r === NO_SLOT) d.waiters.push(go);
      else d.waiters.unshift(go);
    });
  }

  /** Puts one request on the ring if a slot and descriptors are free. */
  private tryAdd(
    d: DQ,
    type: number,
    sector: number,
    buffers: readonly GuestBuffer[],
    idOut: { id?: Uint8Array } | undefined,
    ranges: readonly SectorRange[] | undefined,
    unmap: boolean,
    resolve: (v: undefined) => void,
    reject: (e: Error) => void,
  ): AddResult {
    const slotIndex = d.free.pop();
    if (slotIndex === undefined) return NO_SLOT;
    const hdr = d.slotBase + slotIndex * SLOT_BYTES;
    const mem = this.#mem;
    mem.writeU32(hdr, type);
    mem.writeU32(hdr + 4, 0);
    mem.writeU53(hdr + 8, sector);
    mem.writeU8(hdr + SLOT_STATUS, 0xff);
    const list = this.#list.clear();
    list.push(hdr, BLK_REQ_HEADER_SIZE, false);
    if (ranges !== undefined) {
      for (let i = 0; i < ranges.length; i++) {
        const r = ranges[i]!;
        const e = hdr + SLOT_TABLE + i * BLK_DWZ_SEGMENT_SIZE;
        mem.writeU53(e, r.sector);
        mem.writeU32(e + 8, r.count);
        mem.writeU32(e + 12, unmap ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0);
      }
      list.push(hdr + SLOT_TABLE, ranges.length * BLK_DWZ_SEGMENT_SIZE, false);
    }
    const writable = type === VIRTIO_BLK_T_IN;
    for (let i = 0; i < buffers.length; i++) list.push(buffers[i]!.addr, buffers[i]!.len, writable);
    if (type === VIRTIO_BLK_T_GET_ID) list.push(hdr + SLOT_ID, VIRTIO_BLK_ID_BYTES, true);
    list.push(hdr + SLOT_STATUS, 1, true);
    if (!d.dq.add(list, slotIndex)) {
      d.free.push(slotIndex);
      return NO_DESCRIPTORS;
    }
    const s = d.slots[slotIndex]!;
    s.resolve = resolve;
    s.reject = reject;
    s.type = type;
    s.id = undefined;
    if (idOut !== undefined) {
      s.resolve = () => {
        idOut.id = mem.view(hdr + SLOT_ID, VIRTIO_BLK_ID_BYTES, 'read').slice();
        resolve(undefined);
      };
    }
    d.dirty = true;
    if (!this.#publishScheduled) {
      this.#publishScheduled = true;
      queueMicrotask(this.#publish);
    }
    return ADDED;
  }

  /** Makes every request added this turn visible, one notification per queue if the device wants it. */
  private publishAll(): void {
    this.#publishScheduled = false;
    for (const d of this.#queues) {
      if (!d.dirty) continue;
      d.dirty = false;
      d.dq.publish();
      if (d.dq.needsNotify()) this.#transport.notify(d.q);
      // Collect completions that arrived meanwhile, without waiting for the interrupt's wake-up.
      this.reap(d);
    }
  }

  /** A used buffer notification for queue `q` (or all): complete what the device returned. Returns the count. */
  handleInterrupt(q?: number): number {
    if (q !== undefined) {
      const d = this.#queues[q];
      return d === undefined ? 0 : this.reap(d);
    }
    let n = 0;
    for (const d of this.#queues) n += this.reap(d);
    return n;
  }

  /**
   * Makes queue `q` a polled queue (`on`), as Linux's virtio-blk `poll_queues`
   * are: the driver asks the device for no used buffer notifications on it
   * (§2.7.10: NO_INTERRUPT, or with EVENT_IDX a used_event it stops moving)
   * and collects completions only when `poll(q)` is called — the caller spins
   * instead of sleeping, as io_uring's IOPOLL does. `on = false` re-arms the
   * interrupt and collects what is there.
   */
  setPolled(q: number, on: boolean): void {
    const d = this.#queues[q];
    if (d === undefined) throw new VirtioError('invalid-argument', `queue ${q} is not set up (the device has ${this.numQueues})`, { queue: q });
    d.polled = on;
    if (on) d.dq.disableInterrupts();
    else this.reap(d);
  }

  /** Collects the completions of queue `q` (or of every queue) now; returns how many. For polled queues. */
  poll(q?: number): number {
    return this.handleInterrupt(q);
  }

  private reap(d: DQ): number {
    let n = 0;
    const used = this.#used;
    for (;;) {
      let got: boolean;
      try {
        got = d.dq.pollUsed(used);
        // Out of used buffers: re-arm the interrupt (with EVENT_IDX, used_event moves on, §2.7.10)
        // and look again in case the device returned more meanwhile.
        if (!got && !d.polled && !d.spinning && d.dq.enableInterrupts()) got = d.dq.pollUsed(used);
      } catch (e) {
        this.fail(new VirtioError('bad-completion', `queue ${d.q}: ${e instanceof Error ? e.message : String(e)}`, { queue: d.q }, { cause: e }));
        return n;
      }
      if (!got) break;
      n++;
      const i = used.token!;
      const s = d.slots[i]!;
      const status = this.#mem.readU8(d.slotBase + i * SLOT_BYTES + SLOT_STATUS);
      const resolve = s.resolve;
      const reject = s.reject;
      s.resolve = s.reject = undefined;
      d.free.push(i);
      if (status === VIRTIO_BLK_S_OK && used.len >= 1) resolve?.(undefined);
      else if (status === VIRTIO_BLK_S_IOERR) reject?.(new VirtioError('io-error', `request type ${s.type} failed with VIRTIO_BLK_S_IOERR`, { type: s.type, status }));
      else if (status === VIRTIO_BLK_S_UNSUPP) reject?.(new VirtioError('unsupported', `request type ${s.type} is not supported (VIRTIO_BLK_S_UNSUPP)`, { type: s.type, status }));
      else reject?.(new VirtioError('bad-completion', `request type ${s.type}: status ${status}, used length ${used.len}`, { type: s.type, status, len: used.len }));
    }
    while (d.waiters.length > 0 && d.free.length > 0) {
      const before = d.free.length;
      d.waiters.shift()!();
      if (d.free.length === before) break;
    }
    return n;
  }

  /** A configuration change notification: re-read status; DEVICE_NEEDS_RESET fails every request. */
  async handleConfigChange(): Promise<void> {
    const st = await this.#transport.status();
    if ((st & STATUS_DEVICE_NEEDS_RESET) !== 0) this.fail(new VirtioError('device-needs-reset', 'the device set DEVICE_NEEDS_RESET', { status: st }));
  }

  private fail(e: VirtioError): void {
    this.#failed ??= e;
    for (const d of this.#queues) {
      for (const s of d.slots) {
        const r = s.reject;
        s.resolve = s.reject = undefined;
        r?.(e);
      }
      const w = d.waiters.splice(0);
      for (const go of w) go();
    }
  }

  /**
   * Waits for used buffer notifications on `bells` (one per queue, rung by the
   * device's thread) and completes requests, until `close()`; with
   * `configBell`, configuration change notifications too (DEVICE_NEEDS_RESET).
   */
  listen(bells: readonly Doorbell[], options: ListenOptions = {}): Promise<void> {
    const { pollMs = 50, configBell, spinUs = 0, now = () => performance.now() } = options;
    const haltPoll = checkHaltPoll(options.haltPoll);
    if (!(spinUs >= 0 && spinUs <= 1e6)) throw new VirtioError('invalid-argument', `spinUs ${spinUs} is outside 0..1e6`, { spinUs });
    const spinMs = spinUs / 1000;
    this.#bells.push(...bells);
    if (configBell !== undefined) this.#bells.push(configBell);
    const loops = this.#queues.map(async (d) => {
      const bell = bells[d.q];
      if (bell === undefined) throw new VirtioError('invalid-argument', `no interrupt doorbell for queue ${d.q}`, { queue: d.q });
      let busyAt = 0;
      while (!this.#closed) {
        if (spinMs > 0 && !d.polled && d.dq.inFlight > 0 && now() - busyAt < spinMs) {
          // Spinning: interrupts off (NAPI's way), completions taken once per turn.
          if (!d.spinning) {
            d.spinning = true;
            d.dq.disableInterrupts();
          }
          if (this.reap(d) > 0) busyAt = now();
          await new Promise<void>(this.#turn);
          continue;
        }
        // Going to sleep: the reap below re-arms the interrupt and looks once more.
        d.spinning = false;
        const seen = bell.count;
        if (this.reap(d) > 0 && spinMs > 0) {
          busyAt = now();
          continue;
        }
        if (haltPoll === undefined) await bell.waitAsync(seen, pollMs);
        else await haltPollWait(bell, seen, pollMs, haltPoll, now, this.#isClosed);
      }
    });
    if (configBell !== undefined) {
      loops.push(
        (async () => {
          let seen = configBell.count;
          while (!this.#closed) {
            await configBell.waitAsync(seen, pollMs);
            const now = configBell.count;
            if (now !== seen && !this.#closed) {
              seen = now;
              await this.handleConfigChange();
            }
          }
        })(),
      );
    }
    return Promise.all(loops).then(() => undefined);
  }

  /** Stops listening; requests still in flight are rejected as cancelled. Resets the device. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.fail(new VirtioError('cancelled', 'the driver was closed', {}));
    // Wake `listen` loops so they see `closed` at once.
    for (const b of this.#bells) b.ring();
    await this.#transport.setStatus(0);
  }
}

function align(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}

async function readInfo(t: DriverTransport, features: bigint, has: (n: number) => boolean): Promise<BlkDeviceInfo> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const gen = await t.configGeneration();
    const lo = await t.readConfig(BLK_CFG_CAPACITY, 4);
    const hi = await t.readConfig(BLK_CFG_CAPACITY + 4, 4);
    const info: BlkDeviceInfo = {
      capacitySectors: hi * 0x1_0000_0000 + lo,
      blkSize: has(VIRTIO_BLK_F_BLK_SIZE) ? await t.readConfig(BLK_CFG_BLK_SIZE, 4) : SECTOR_SIZE,
      segMax: has(VIRTIO_BLK_F_SEG_MAX) ? await t.readConfig(BLK_CFG_SEG_MAX, 4) : 0,
      numQueues: has(VIRTIO_BLK_F_MQ) ? await t.readConfig(BLK_CFG_NUM_QUEUES, 2) : 1,
      readOnly: has(VIRTIO_BLK_F_RO),
      writeback: has(VIRTIO_BLK_F_CONFIG_WCE) ? (await t.readConfig(BLK_CFG_WRITEBACK, 1)) === 1 : has(VIRTIO_BLK_F_FLUSH),
      maxDiscardSectors: has(VIRTIO_BLK_F_DISCARD) ? await t.readConfig(BLK_CFG_MAX_DISCARD_SECTORS, 4) : 0,
      maxDiscardSeg: has(VIRTIO_BLK_F_DISCARD) ? await t.readConfig(BLK_CFG_MAX_DISCARD_SEG, 4) : 0,
      maxWriteZeroesSectors: has(VIRTIO_BLK_F_WRITE_ZEROES) ? await t.readConfig(BLK_CFG_MAX_WRITE_ZEROES_SECTORS, 4) : 0,
      maxWriteZeroesSeg: has(VIRTIO_BLK_F_WRITE_ZEROES) ? await t.readConfig(BLK_CFG_MAX_WRITE_ZEROES_SEG, 4) : 0,
      writeZeroesMayUnmap: has(VIRTIO_BLK_F_WRITE_ZEROES) ? (await t.readConfig(BLK_CFG_WRITE_ZEROES_MAY_UNMAP, 1)) === 1 : false,
      features,
    };
    // §2.5.1: a generation that moved means a torn read; read again.
    if ((await t.configGeneration()) === gen) return info;
  }
  throw new VirtioError('device-needs-reset', 'config_generation kept changing while reading config space', {});
}
