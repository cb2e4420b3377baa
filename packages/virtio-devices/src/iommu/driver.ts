import type { GuestMemory } from '@ioplane/guest-memory';
import {
  CONFIG_SIZE,
  DEFAULT_FEATURES,
  FAULT_SIZE,
  type FaultEvent,
  GuestIommuDriver,
  type IommuConfig,
  type IommuRequest,
  type IommuTransport,
  TAIL_SIZE,
  VIRTIO_IOMMU_F_BYPASS_CONFIG,
  parseConfig,
  parseFaultEvent,
} from '@ioplane/viommu';
import { BufferList, type Doorbell, type DriverQueue, type UsedBuffer, createDriverQueue, layoutQueue, ringFeatures } from '@ioplane/virtqueue';
import { STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_FAILED, VIRTIO_F_VERSION_1, bit } from '../defs.js';
import { driverOk, negotiateFeatures } from '../driver-init.js';
import { VirtioError } from '../errors.js';
import type { GuestBuffer } from '../blk-driver.js';
import type { DriverTransport } from '../transport.js';
import { IOMMU_EVENT_QUEUE, IOMMU_REQUEST_QUEUE } from './device.js';

export interface VirtioIommuDriverOptions {
  transport: DriverTransport;
  mem: GuestMemory;
  /** Guest memory the driver owns for both rings, request buffers and event buffers (`VirtioIommuDriver.areaSize`). */
  area: GuestBuffer;
  /** Queue size for both queues (default: the device's maximum, at most 64). */
  queueSize?: number;
  /** Event buffers kept in the event queue (default: the queue size). */
  eventBuffers?: number;
  /** The guest's monotonic clock in ms, for deferred / optimistic invalidation (default: always 0). */
  now?: () => number;
  /**
   * A one-shot timer on the guest's thread (`(cb, ms) => void setTimeout(cb, ms)`): deferred and
   * optimistic teardown by age then runs from it, and maps read no clock (`MapperHost.schedule`).
   */
  schedule?: (callback: () => void, delayMs: number) => void;
  /** Called with every fault report read from the event queue. */
  onFault?: (event: FaultEvent) => void;
  resetTimeoutMs?: number;
  /**
   * For a device on another thread: the doorbell its request queue's
   * used-buffer notifications ring. `submit` then waits for the answers of a
   * batch it sent, spinning on the used ring for `answerSpinUs` and then
   * sleeping on this doorbell with `Atomics.wait` (the calling thread blocks,
   * as a guest CPU waits for a synchronous IOMMU command: a worker thread,
   * or Node's main thread, never a browser's), instead of requiring the
   * answers within the notification. Without it the device must answer
   * within the notification (same thread, `DirectTransport`).
   */
  requestIrq?: Doorbell;
  /** With `requestIrq`: how long `submit` spins on the used ring before sleeping (default 50 µs; 0 sleeps at once). */
  answerSpinUs?: number;
  /** With `requestIrq`: how long `submit` waits for a batch's answers before it throws (default 1000 ms). */
  answerTimeoutMs?: number;
  /** With `requestIrq`: the clock for the spin and the timeout, in ms (default `performance.now`). */
  clock?: () => number;
}

/** Bytes of one request buffer: the readable part (≤ 128: PROBE's 72 is the longest) then properties and tail. */
const REQ_READABLE = 128;
const EVENT_SLOT = 32;
const MAX_QUEUE = 64;

function align(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}

function slotBytes(probeSize: number): number {
  return align(REQ_READABLE + probeSize + TAIL_SIZE, 64);
}

/**
 * The guest's virtio-iommu driver over virtqueues (VirtIO 1.2 §5.13.5):
 * initialises the device (§3.1.1), reads the config space under
 * config_generation, sets up the request queue and the event queue (filled
 * with device-writable buffers for fault reports), and is the
 * `IommuTransport` of a `GuestIommuDriver` (`driver.iommu`), whose encoders
 * and invalidation modes it reuses: `submit(batch)` copies each request into
 * guest memory, adds the whole batch to the request queue, notifies once and
 * reaps the answers.
 *
 * `submit` is synchronous, as a guest's DMA API is: it needs a device that
 * answers within the notification (same thread, `DirectTransport`, as
 * `VirtioIommuDevice` does). A batch larger than the ring goes in ring-sized
 * chunks, one notification each.
 */
export class VirtioIommuDriver implements IommuTransport {
  readonly config: IommuConfig;
  readonly features: bigint;
  /** The DMA-mapping driver (attach, map, unmap in strict / deferred / optimistic mode) over this transport. */
  readonly iommu: GuestIommuDriver;
  /** Fault reports read from the event queue, oldest first (the caller may clear it). */
  readonly events: FaultEvent[] = [];
  readonly stats = { batches: 0, requests: 0, events: 0, ignoredEvents: 0 };
  readonly #t: DriverTransport;
  readonly #mem: GuestMemory;
  readonly #req: DriverQueue<number>;
  readonly #evq: DriverQueue<number>;
  readonly #slotBase: number;
  readonly #slotBytes: number;
  readonly #slots: number;
  /**
   * The request buffers as one host view, made once (guest RAM regions never
   * move), when they lie in one region; undefined otherwise (then every copy
   * goes through `mem`).
   */
  readonly #slotView: Uint8Array | undefined;
  readonly #eventBase: number;
  readonly #list = new BufferList(2);
  readonly #used: UsedBuffer<number> = { token: undefined, len: 0 };
  readonly #eventBytes = new Uint8Array(FAULT_SIZE);
  readonly #onFault: ((e: FaultEvent) => void) | undefined;
  #inEvents = false;
  #again = false;
  readonly #irq: Doorbell | undefined;
  #broken: VirtioError | undefined;
  #closed = false;
  readonly #listenBells: Doorbell[] = [];
  readonly #spinMs: number;
  readonly #timeoutMs: number;
  readonly #clock: () => number;

  private constructor(
    t: DriverTransport,
    mem: GuestMemory,
    config: IommuConfig,
    features: bigint,
    queues: { req: DriverQueue<number>; evq: DriverQueue<number>; slotBase: number; slots: number; eventBase: number },
    opts: VirtioIommuDriverOptions,
  ) {
    this.#t = t;
    this.#mem = mem;
    this.config = config;
    this.features = features;
    this.#req = queues.req;
    this.#evq = queues.evq;
    this.#slotBase = queues.slotBase;
    this.#slots = queues.slots;
    this.#slotBytes = slotBytes(config.probeSize);
    this.#slotView = mem.tryView(queues.slotBase, queues.slots * this.#slotBytes, 'write');
    this.#eventBase = queues.eventBase;
    this.#onFault = opts.onFault;
    this.#irq = opts.requestIrq;
    this.#spinMs = (opts.answerSpinUs ?? 50) / 1000;
    this.#timeoutMs = opts.answerTimeoutMs ?? 1000;
    this.#clock = opts.clock ?? (() => performance.now());
    this.iommu = new GuestIommuDriver(this, config, opts.now, opts.schedule);
  }

  /** Bytes of driver-owned guest memory `create` needs for queues of `size` and a device with `probeSize`. */
  static areaSize(size = MAX_QUEUE, probeSize = 512, eventBuffers = size): number {
    const ring = align(Math.max(layoutQueue(false, size, 0).bytes, layoutQueue(true, size, 0).bytes), 4096);
    return 2 * ring + align(size * slotBytes(probeSize), 4096) + align(eventBuffers * EVENT_SLOT, 4096);
  }

  /** Device initialisation (§3.1.1) and queue set-up; the event queue is filled before DRIVER_OK (§5.13.5). */
  static async create(opts: VirtioIommuDriverOptions): Promise<VirtioIommuDriver> {
    const t = opts.transport;
    if (opts.answerSpinUs !== undefined && !(opts.answerSpinUs >= 0 && opts.answerSpinUs <= 1e6)) {
      throw new VirtioError('invalid-argument', `answerSpinUs ${opts.answerSpinUs} is outside 0..1e6`, { answerSpinUs: opts.answerSpinUs });
    }
    if (opts.answerTimeoutMs !== undefined && !(opts.answerTimeoutMs > 0 && opts.answerTimeoutMs <= 3_600_000)) {
      throw new VirtioError('invalid-argument', `answerTimeoutMs ${opts.answerTimeoutMs} is outside (0, 3600000]`, { answerTimeoutMs: opts.answerTimeoutMs });
    }
    // Every device feature this driver implements (never the superseded BYPASS, §5.13.3.2); plain split rings.
    const accepted = await negotiateFeatures(t, () => DEFAULT_FEATURES | bit(VIRTIO_F_VERSION_1), opts.resetTimeoutMs);
    const config = await readConfig(t);
    if (config.probeSize > 1 << 16) {
      await t.setStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FAILED);
      throw new VirtioError('invalid-argument', `probe_size ${config.probeSize} is larger than this driver's 64 KiB request buffers`, { probeSize: config.probeSize });
    }
    const rf = ringFeatures(accepted);
    const sizes: number[] = [];
    for (const q of [IOMMU_REQUEST_QUEUE, IOMMU_EVENT_QUEUE]) {
      const max = await t.queueMaxSize(q);
      if (max === 0) throw new VirtioError('invalid-argument', `the device has no queue ${q} (virtio-iommu has requestq and eventq, §5.13.2)`, { queue: q });
      sizes.push(2 ** Math.floor(Math.log2(Math.min(max, opts.queueSize ?? MAX_QUEUE))));
    }
    const size = Math.min(sizes[0]!, sizes[1]!);
    const eventBuffers = opts.eventBuffers ?? size;
    if (!Number.isInteger(eventBuffers) || eventBuffers < 1 || eventBuffers > size) {
      throw new VirtioError('invalid-argument', `eventBuffers ${eventBuffers} must be 1..${size}`, { eventBuffers });
    }
    const need = VirtioIommuDriver.areaSize(size, config.probeSize, eventBuffers);
    if (opts.area.len < need || opts.area.addr % 4096 !== 0) {
      throw new VirtioError('invalid-argument', `driver area of ${opts.area.len} bytes at ${opts.area.addr} must be 4 KiB aligned and at least ${need} bytes`, { area: opts.area.len, need });
    }
    opts.mem.fill(opts.area.addr, need, 0);
    const ring = align(Math.max(layoutQueue(false, size, 0).bytes, layoutQueue(true, size, 0).bytes), 4096);
    const made: DriverQueue<number>[] = [];
    for (const q of [IOMMU_REQUEST_QUEUE, IOMMU_EVENT_QUEUE]) {
      const { config: qc } = layoutQueue(rf.packed, size, opts.area.addr + q * ring);
      await t.setQueueSize(q, size);
      await t.setQueueAddresses(q, qc.descAddr, qc.driverAddr, qc.deviceAddr);
      await t.enableQueue(q);
      made.push(createDriverQueue<number>(opts.mem, qc, rf));
    }
    const slotBase = opts.area.addr + 2 * ring;
    const eventBase = slotBase + align(size * slotBytes(config.probeSize), 4096);
    // The request queue is reaped by `submit` itself: no used-buffer notifications for it, as Linux
    // sets VRING_AVAIL_F_NO_INTERRUPT on a virtqueue without a callback (virtio-iommu's requestq).
    made[0]!.disableInterrupts();
    const drv = new VirtioIommuDriver(t, opts.mem, config, accepted, { req: made[0]!, evq: made[1]!, slotBase, slots: size, eventBase }, opts);
    // §5.13.5: the driver SHOULD fill the event queue with buffers for fault reports.
    for (let i = 0; i < eventBuffers; i++) drv.postEvent(i);
    made[1]!.publish();
    await driverOk(t);
    return drv;
  }

  /** Sets config `bypass` (§5.13.4.1; needs VIRTIO_IOMMU_F_BYPASS_CONFIG). */
  async setBypass(on: boolean): Promise<void> {
    if ((this.features & bit(VIRTIO_IOMMU_F_BYPASS_CONFIG)) === 0n) {
      throw new VirtioError('feature-missing', 'bypass is writable only with VIRTIO_IOMMU_F_BYPASS_CONFIG negotiated', {});
    }
    await this.#t.writeConfig(36, 1, on ? 1 : 0);
  }

  /**
   * IommuTransport: puts the batch on the request queue (each request one
   * readable and one writable descriptor, in this driver's buffers), one
   * notification per ring-full, and sets each request's `used`.
   */
  submit(batch: readonly IommuRequest[], count: number = batch.length): void {
    // Answers of a batch given up on may still come: none of them may be read as a later request's.
    if (this.#broken !== undefined) throw this.#broken;
    const dq = this.#req;
    const mem = this.#mem;
    const list = this.#list;
    const sb = this.#slotBytes;
    let i = 0;
    const total = Math.min(count, batch.length);
    while (i < total) {
      let n = 0;
      while (i + n < total && n < this.#slots && dq.numFree >= 2) {
        const r = batch[i + n]!;
        if (r.readable.length > REQ_READABLE || r.writable.length > sb - REQ_READABLE) {
          throw new VirtioError('invalid-argument', `request of ${r.readable.length} + ${r.writable.length} bytes does not fit a ${sb}-byte request buffer`, { readable: r.readable.length, writable: r.writable.length });
        }
        const at = this.#slotBase + n * sb;
        const slots = this.#slotView;
        // The driver's own buffers: a plain copy into the view made at set-up (no region lookup per request).
        if (slots !== undefined) slots.set(r.readable, n * sb);
        else mem.writeFrom(at, r.readable);
        list.clear().push(at, r.readable.length, false).push(at + REQ_READABLE, r.writable.length, true);
        if (!dq.add(list, n)) break;
        r.used = 0;
        n++;
      }
      if (n === 0) throw this.fail(new VirtioError('device-needs-reset', 'the request queue has no room: answers of an earlier batch were never used', { inFlight: dq.inFlight }));
      dq.publish();
      this.stats.batches++;
      this.stats.requests += n;
      if (dq.needsNotify()) this.#t.notify(IOMMU_REQUEST_QUEUE);
      let got = this.reap(batch, i, n);
      if (got < n && this.#irq !== undefined) got += this.awaitAnswers(batch, i, n, got);
      if (dq.broken !== undefined) throw this.fail(new VirtioError('device-needs-reset', `request queue: ${dq.broken.message}`, {}, { cause: dq.broken }));
      if (got < n) {
        throw this.fail(new VirtioError('device-needs-reset', `${n - got} of ${n} virtio-iommu request(s) not answered within the notification (this driver needs a device in the same thread, or \`requestIrq\`)`, { pending: n - got }));
      }
      i += n;
    }
  }

  /** Every later `submit` throws `e`: the request queue can no longer be trusted to answer in order. */
  private fail(e: VirtioError): VirtioError {
    this.#broken ??= e;
    return e;
  }

  /** Takes the answers of requests `i`..`i+n` of `batch` that are on the used ring; returns how many. */
  private reap(batch: readonly IommuRequest[], i: number, n: number): number {
    const dq = this.#req;
    const mem = this.#mem;
    const used = this.#used;
    const sb = this.#slotBytes;
    let got = 0;
    while (got < n && dq.pollUsed(used)) {
      const k = used.token;
      if (k === undefined || k >= n) continue;
      const r = batch[i + k]!;
      // A used length past the writable part is the device's error: `status` reads it as IOERR.
      r.used = used.len;
      const len = Math.min(used.len, r.writable.length);
      const at = this.#slotBase + k * sb + REQ_READABLE;
      const slots = this.#slotView;
      if (len === 4 && slots !== undefined) {
        // The usual answer, a bare tail: four bytes from the slot view.
        const o = k * sb + REQ_READABLE;
        const out = r.writable;
        out[0] = slots[o]!;
        out[1] = slots[o + 1]!;
        out[2] = slots[o + 2]!;
        out[3] = slots[o + 3]!;
      } else if (len === 4) {
        // One scalar read (no view).
        const w = mem.readU32(at);
        const out = r.writable;
        out[0] = w & 0xff;
        out[1] = (w >>> 8) & 0xff;
        out[2] = (w >>> 16) & 0xff;
        out[3] = w >>> 24;
      } else if (len > 0) mem.readInto(at, len === r.writable.length ? r.writable : r.writable.subarray(0, len));
      got++;
    }
    return got;
  }

  /**
   * With `requestIrq`: waits until the `n - got` answers still missing of the
   * batch's requests `i`..`i+n` are reaped, spinning first and then sleeping
   * on the doorbell with the request queue's interrupt enabled; returns how
   * many it reaped. Throws after `answerTimeoutMs`, or when the queue breaks.
   */
  private awaitAnswers(batch: readonly IommuRequest[], i: number, n: number, got: number): number {
    const dq = this.#req;
    const bell = this.#irq!;
    const start = this.#clock();
    const spinUntil = start + this.#spinMs;
    const deadline = start + this.#timeoutMs;
    let more = 0;
    // Bounded by the deadline (every turn reads the clock) and by the doorbell's own timed wait.
    while (got + more < n && dq.broken === undefined) {
      const now = this.#clock();
      let timedOut = now >= deadline;
      if (!timedOut && now >= spinUntil) {
        // Sleep: read the count, let the device interrupt, look once more, then wait for the count to move.
        const seen = bell.count;
        const arrived = dq.enableInterrupts();
        if (!arrived) timedOut = bell.wait(seen, Math.max(1, deadline - now)) === 'timed-out';
        dq.disableInterrupts();
      }
      const reaped = this.reap(batch, i, n);
      more += reaped;
      if (timedOut && reaped === 0 && got + more < n) {
        throw this.fail(new VirtioError('device-needs-reset', `${n - got - more} of ${n} virtio-iommu request(s) not answered within ${this.#timeoutMs} ms`, { pending: n - got - more }));
      }
    }
    return more;
  }

  /**
   * With the device on another thread: takes the fault reports off the event
   * queue whenever `eventIrq` rings (the doorbell the device's event-queue
   * interrupt rings), and at least every `pollMs`, until `close()`. Runs on
   * the caller's event loop (`Atomics.waitAsync`), so reports are taken
   * between the thread's other work, never while `submit` waits.
   */
  async listen(eventIrq: Doorbell, options: { pollMs?: number } = {}): Promise<void> {
    const pollMs = options.pollMs ?? 50;
    if (!(pollMs > 0 && pollMs <= 60_000)) throw new VirtioError('invalid-argument', `pollMs ${pollMs} is outside (0, 60000]`, { pollMs });
    this.#listenBells.push(eventIrq);
    // Bounded per turn: each reap takes at most the queue's buffers; the loop ends with close().
    while (!this.#closed) {
      const seen = eventIrq.count;
      this.handleInterrupt(IOMMU_EVENT_QUEUE);
      await eventIrq.waitAsync(seen, pollMs);
    }
  }

  /** Ends every `listen` loop (at once: their doorbells are rung). Requests still work. */
  close(): void {
    this.#closed = true;
    for (const b of this.#listenBells) b.ring();
  }

  /** A used buffer notification: event-queue buffers hold fault reports (the request queue is reaped by `submit`). */
  handleInterrupt(q?: number): number {
    if (q !== undefined && q !== IOMMU_EVENT_QUEUE) return 0;
    if (this.#inEvents) {
      // Re-entered from our own notify (same thread): the outer call reaps again.
      this.#again = true;
      return 0;
    }
    this.#inEvents = true;
    let n = 0;
    try {
      do {
        this.#again = false;
        n += this.reapEvents();
      } while (this.#again);
    } finally {
      this.#inEvents = false;
    }
    return n;
  }

  private reapEvents(): number {
    const dq = this.#evq;
    const used = this.#used;
    let n = 0;
    while (dq.pollUsed(used)) {
      const k = used.token;
      if (k === undefined) continue;
      const buf = this.#eventBytes;
      this.#mem.readInto(this.#eventBase + k * EVENT_SLOT, buf);
      // §5.13.6.7: a short report, or one with reserved bytes set, is ignored.
      const ev = parseFaultEvent(buf, used.len);
      if (ev === undefined) this.stats.ignoredEvents++;
      else {
        this.stats.events++;
        this.events.push(ev);
        this.#onFault?.(ev);
      }
      this.postEvent(k);
      n++;
    }
    if (n > 0) {
      dq.publish();
      if (dq.needsNotify()) this.#t.notify(IOMMU_EVENT_QUEUE);
    }
    return n;
  }

  private postEvent(k: number): void {
    const list = this.#list.clear().push(this.#eventBase + k * EVENT_SLOT, FAULT_SIZE, true);
    this.#evq.add(list, k);
  }
}

/** Reads struct virtio_iommu_config (§5.13.4) consistently: retried while config_generation moves (§2.5.1). */
async function readConfig(t: DriverTransport): Promise<IommuConfig> {
  const bytes = new Uint8Array(CONFIG_SIZE);
  const v = new DataView(bytes.buffer);
  for (let attempt = 0; attempt < 64; attempt++) {
    const gen = await t.configGeneration();
    for (let off = 0; off < CONFIG_SIZE; off += 4) v.setUint32(off, await t.readConfig(off, 4), true);
    if ((await t.configGeneration()) === gen) return parseConfig(bytes);
  }
  throw new VirtioError('device-needs-reset', 'config_generation kept changing while the config space was read', {});
}
