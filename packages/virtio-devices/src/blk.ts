import { type BlockBackend, COMPLETED } from '@ioplane/blk-backends';
import type { DescriptorChain, DeviceQueue, RingFeatures } from '@ioplane/virtqueue';
import { BlkRequest, type BlkLimits, parseBlkRequest, writeBlkStatus } from './blk-request.js';
import {
  BLK_CFG_BLK_SIZE,
  BLK_CFG_CAPACITY,
  BLK_CFG_DISCARD_SECTOR_ALIGNMENT,
  BLK_CFG_MAX_DISCARD_SECTORS,
  BLK_CFG_MAX_DISCARD_SEG,
  BLK_CFG_MAX_WRITE_ZEROES_SECTORS,
  BLK_CFG_MAX_WRITE_ZEROES_SEG,
  BLK_CFG_MIN_IO_SIZE,
  BLK_CFG_NUM_QUEUES,
  BLK_CFG_OPT_IO_SIZE,
  BLK_CFG_PHYSICAL_BLOCK_EXP,
  BLK_CFG_SEG_MAX,
  BLK_CFG_SIZE,
  BLK_CFG_WRITEBACK,
  BLK_CFG_WRITE_ZEROES_MAY_UNMAP,
  SECTOR_SIZE,
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
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_ID_BLOCK,
  bit,
} from './defs.js';
import { type AccessSize, VirtioDevice, type VirtioDeviceOptions } from './device.js';
import { VirtioError } from './errors.js';

export interface VirtioBlkOptions extends VirtioDeviceOptions {
  backend: BlockBackend;
  /** Request queues (default 1). More than one offers VIRTIO_BLK_F_MQ (§5.2.3). */
  numQueues?: number;
  /** Largest queue size the driver may choose (default 256). */
  queueSize?: number;
  /** Offer RO even if the back-end is writable. */
  readOnly?: boolean;
  /** The GET_ID answer: up to 20 bytes (ASCII), zero-padded (§5.2.6). */
  serial?: string;
  /** Ring features offered (default: indirect, event index, packed). IN_ORDER is never offered: requests complete out of order. */
  ring?: Partial<Omit<RingFeatures, 'inOrder'>>;
  /** Offer DISCARD (default true) and WRITE_ZEROES (default true). */
  discard?: boolean;
  writeZeroes?: boolean;
  /** Offer CONFIG_WCE: the driver may switch the cache to writethrough (default true). */
  configWce?: boolean;
  /**
   * While reads/writes are in flight on a queue, leave kicks suppressed and look
   * at the available ring at each published completion instead (default true).
   */
  pollWhileBusy?: boolean;
  /**
   * Merge reads (and writeback writes) that the driver made available together
   * and that are contiguous on the device into one back-end call, as QEMU's
   * virtio-blk does (`virtio_blk_submit_multireq`): sequential I/O then costs
   * one back-end request (one trip to libuv's threadpool) per run instead of
   * one per request. Only requests popped in the same pass over the available
   * ring, adjacent in ring order, are merged; issue order is kept. A merged call
   * that fails is retried request by request, so each request gets its own
   * status. Default `{ maxBytes: 1 MiB, maxSegments: 1024 }`; `false` disables it.
   */
  merge?: false | { maxBytes?: number; maxSegments?: number };
  /**
   * Busy-poll budget in nanoseconds (default 0: off). When a queue has run dry
   * and nothing is in flight, the device keeps looking at the available ring
   * for up to this long, notifications still suppressed, before it asks for a
   * kick and sleeps: QEMU's iothread `poll-max-ns`, vhost's busy polling. A
   * driver that refills the ring within the budget pays no kick and the device
   * no wake-up. It spends the device's thread: use it on a thread of its own.
   */
  pollNs?: number;
  /**
   * Called on every 64th turn of the busy poll (`pollNs`): lets other
   * emulation that shares the device's thread — a VT-d unit watching its
   * invalidation queue — make progress while the device spins, instead of
   * waiting for the device to return to the event loop. Must be cheap and
   * must not throw.
   */
  onPoll?: () => void;
  /**
   * Most requests taken from a queue in one pass before the device returns to
   * its event loop, where their completions are published (default: no limit).
   * With a back-end that completes at once (the `'sync'` engine, memory) a
   * smaller pass lets the driver see the first completions and refill the ring
   * while the device works on the rest, instead of the two taking turns.
   */
  maxBatch?: number;
  /** Clock for the poll budget, in milliseconds (default `performance.now`). */
  now?: () => number;
  /** Limits advertised in config space; defaults: 4 GiB worth of sectors and 16 segments. */
  maxDiscardSectors?: number;
  maxDiscardSeg?: number;
  maxWriteZeroesSectors?: number;
  maxWriteZeroesSeg?: number;
}

/** Counters of a virtio-blk device. */
export interface BlkStats {
  requests: number;
  /** Requests answered IOERR/UNSUPP by the parser. */
  rejected: number;
  /** Back-end calls that failed (answered IOERR). */
  backendErrors: number;
  /** Completions dropped because a reset came first. */
  dropped: number;
  /** Requests that went to the back-end as part of a merged call. */
  merged: number;
  /** Merged back-end calls (each carrying two or more requests). */
  mergedCalls: number;
  /** Idle polls (`pollNs`) that found new requests, and that ran out of budget (then the device asked for a kick). */
  pollHits: number;
  pollMisses: number;
}

/** One request slot: a chain, its parsed request, and pre-bound completion callbacks (no allocation per request). */
class Slot {
  readonly req: BlkRequest;
  queue = 0;
  epoch = 0;
  /** Next discard / write-zeroes range to issue. */
  range = 0;
  /** Used length to report on success. */
  okLen = 0;
  /** Counted in the device's in-flight total (handed to the back-end). */
  async = false;
  /** A flush, discard or write-zeroes (or a writethrough write): may take long. */
  slow = false;
  readonly ok: () => void;
  readonly fail: (e: unknown) => void;
  readonly flushed: () => void;
  readonly nextRange: () => void;

  constructor(
    readonly dev: VirtioBlkDevice,
    readonly chain: DescriptorChain,
    maxRanges: number,
  ) {
    this.req = new BlkRequest(maxRanges);
    this.ok = () => dev.finishSlot(this, VIRTIO_BLK_S_OK);
    this.fail = (e: unknown) => dev.backendFailed(this, e);
    this.flushed = () => dev.writeThroughFlush(this);
    this.nextRange = () => dev.issueRange(this);
  }
}

/**
 * Two or more contiguous reads (or writes) issued as one back-end call: the
 * slots it completes, the concatenated segment list, and pre-bound callbacks.
 * Pooled by the device; nothing is allocated per merged call once warm.
 */
class Merge {
  readonly slots: Slot[] = [];
  readonly segments: Uint8Array[] = [];
  readonly ok: () => void;
  readonly fail: () => void;

  constructor(readonly dev: VirtioBlkDevice) {
    this.ok = () => dev.mergeDone(this, true);
    this.fail = () => dev.mergeDone(this, false);
  }
}

/** The run of contiguous requests being collected while the available ring is drained. */
interface Run {
  slots: Slot[];
  count: number;
  /** 'read' or 'write'. */
  write: boolean;
  /** Device byte just past the run. */
  end: number;
  bytes: number;
  segments: number;
}

interface QueueState {
  dq: DeviceQueue;
  free: Slot[];
  /** Used entries pushed and not yet published. */
  dirty: boolean;
  /** Number of slots. */
  slots: number;
  /** Every slot was busy: look at the ring again at the next completion. */
  recheck: boolean;
  processing: boolean;
  /** Reads and writes of this queue handed to the back-end and not yet settled. */
  busyRw: number;
  /** Flushes, discards and write-zeroes in flight: they may take long, so the queue never waits on them for new work. */
  busySlow: number;
  /** Reads / writes popped in this pass and not yet handed to the back-end. */
  run: Run;
}

const DEFAULT_RING: Omit<RingFeatures, 'inOrder'> = { indirect: true, eventIdx: true, packed: true };

/**
 * virtio-blk (VirtIO 1.2 §5.2) in front of any `BlockBackend`. Requests are
 * parsed by `parseBlkRequest`, issued asynchronously with the guest's buffers
 * handed to the back-end in place, many in flight per queue, completed in
 * whatever order the back-end finishes them; used entries are published in
 * batches (one release store and at most one interrupt per batch).
 */
export class VirtioBlkDevice extends VirtioDevice {
  readonly backend: BlockBackend;
  readonly blkStats: BlkStats = { requests: 0, rejected: 0, backendErrors: 0, dropped: 0, merged: 0, mergedCalls: 0, pollHits: 0, pollMisses: 0 };
  readonly serial: Uint8Array;
  readonly capacitySectors: number;
  readonly #limits: BlkLimits;
  #state: (QueueState | undefined)[] = [];
  #writeThrough = false;
  #inFlight = 0;
  #drained: (() => void) | undefined;
  #publishScheduled = false;
  /** A microtask will close the current pass (see `closePass`). */
  #passClosing = false;
  /** Passes chained through microtasks since the event loop last ran a publish. */
  #chained = 0;
  readonly #closePass = (): void => this.closePass();
  readonly #pollWhileBusy: boolean;
  /** Merge limits; maxBytes 0 = merging off. */
  readonly #mergeMaxBytes: number;
  readonly #mergeMaxSegments: number;
  readonly #merges: Merge[] = [];
  readonly #publish = (): void => this.publishAll();
  readonly #pollMs: number;
  readonly #onPoll: (() => void) | undefined;
  readonly #maxBatch: number;
  readonly #now: () => number;

  constructor(options: VirtioBlkOptions) {
    const b = options.backend;
    const numQueues = options.numQueues ?? 1;
    const ring = { ...DEFAULT_RING, ...options.ring };
    const readOnly = (options.readOnly ?? false) || b.readOnly;
    const lbs = b.logicalBlockSize;
    if (!Number.isInteger(lbs) || lbs < SECTOR_SIZE || (lbs & (lbs - 1)) !== 0) {
      throw new VirtioError('invalid-argument', `back-end logical block size ${lbs} is not a power of two ≥ 512`, { logicalBlockSize: lbs });
    }
    const discard = (options.discard ?? true) && !readOnly;
    const writeZeroes = (options.writeZeroes ?? true) && !readOnly;
    const configWce = options.configWce ?? true;
    let f = bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_TOPOLOGY);
    if (readOnly) f |= bit(VIRTIO_BLK_F_RO);
    if (numQueues > 1) f |= bit(VIRTIO_BLK_F_MQ);
    if (discard) f |= bit(VIRTIO_BLK_F_DISCARD);
    if (writeZeroes) f |= bit(VIRTIO_BLK_F_WRITE_ZEROES);
    if (configWce) f |= bit(VIRTIO_BLK_F_CONFIG_WCE);
    if (ring.indirect) f |= bit(VIRTIO_F_INDIRECT_DESC);
    if (ring.eventIdx) f |= bit(VIRTIO_F_EVENT_IDX);
    if (ring.packed) f |= bit(VIRTIO_F_RING_PACKED);
    const queueSize = options.queueSize ?? 256;
    super(VIRTIO_ID_BLOCK, f, numQueues, queueSize, BLK_CFG_SIZE, options);
    this.backend = b;
    this.#pollWhileBusy = options.pollWhileBusy ?? true;
    const merge = options.merge ?? {};
    this.#mergeMaxBytes = merge === false ? 0 : (merge.maxBytes ?? 1 << 20);
    this.#mergeMaxSegments = merge === false ? 0 : (merge.maxSegments ?? 1024);
    if (!Number.isSafeInteger(this.#mergeMaxBytes) || this.#mergeMaxBytes < 0 || !Number.isInteger(this.#mergeMaxSegments) || this.#mergeMaxSegments < 0) {
      throw new VirtioError('invalid-argument', `merge limits ${this.#mergeMaxBytes} bytes / ${this.#mergeMaxSegments} segments must be non-negative integers`, { maxBytes: this.#mergeMaxBytes, maxSegments: this.#mergeMaxSegments });
    }
    const pollNs = options.pollNs ?? 0;
    const maxBatch = options.maxBatch ?? Number.POSITIVE_INFINITY;
    if (!(pollNs >= 0 && pollNs <= 1e9)) throw new VirtioError('invalid-argument', `pollNs ${pollNs} is outside 0..1e9`, { pollNs });
    if (!(maxBatch >= 1) || (maxBatch !== Number.POSITIVE_INFINITY && !Number.isInteger(maxBatch))) {
      throw new VirtioError('invalid-argument', `maxBatch ${maxBatch} is not a positive integer`, { maxBatch });
    }
    this.#pollMs = pollNs / 1e6;
    this.#onPoll = options.onPoll;
    this.#maxBatch = maxBatch;
    this.#now = options.now ?? (() => performance.now());
    this.capacitySectors = Math.floor(b.size / SECTOR_SIZE);
    const u32 = (v: number | undefined, d: number, what: string): number => {
      const x = v ?? d;
      if (!Number.isInteger(x) || x < 1 || x > 0xffff_ffff) throw new VirtioError('invalid-argument', `${what} ${x} is outside 1..2^32-1`, { [what]: x });
      return x;
    };
    const sectorsPerBlock = lbs / SECTOR_SIZE;
    // Limits are whole logical blocks so a maximal request stays aligned.
    const maxSectors = Math.floor(0xffff_ffff / sectorsPerBlock) * sectorsPerBlock;
    this.#limits = {
      capacitySectors: this.capacitySectors,
      logicalBlockSize: lbs,
      readOnly,
      flush: false,
      discard: false,
      writeZeroes: false,
      // Linux and QEMU: two descriptors go to the header and the status.
      segMax: Math.max(1, queueSize - 2),
      maxDiscardSectors: u32(options.maxDiscardSectors, maxSectors, 'maxDiscardSectors'),
      maxDiscardSeg: u32(options.maxDiscardSeg, 16, 'maxDiscardSeg'),
      maxWriteZeroesSectors: u32(options.maxWriteZeroesSectors, maxSectors, 'maxWriteZeroesSectors'),
      maxWriteZeroesSeg: u32(options.maxWriteZeroesSeg, 16, 'maxWriteZeroesSeg'),
      writeZeroesMayUnmap: true,
    };
    if (this.#limits.maxDiscardSeg > 4096 || this.#limits.maxWriteZeroesSeg > 4096) {
      throw new VirtioError('invalid-argument', 'at most 4096 discard / write-zeroes segments per request', {});
    }
    this.serial = new Uint8Array(VIRTIO_BLK_ID_BYTES);
    const id = new TextEncoder().encode(options.serial ?? '');
    if (id.length > VIRTIO_BLK_ID_BYTES) throw new VirtioError('invalid-argument', `serial '${options.serial}' is longer than 20 bytes`, { serial: options.serial });
    this.serial.set(id);
    this.writeConfigSpace();
  }

  /** struct virtio_blk_config at the offsets of §5.2.4. */
  private writeConfigSpace(): void {
    const v = this.configView;
    const b = this.backend;
    const l = this.#limits;
    v.setBigUint64(BLK_CFG_CAPACITY, BigInt(this.capacitySectors), true);
    v.setUint32(BLK_CFG_SEG_MAX, l.segMax, true);
    v.setUint32(BLK_CFG_BLK_SIZE, b.logicalBlockSize, true);
    // Topology: physical blocks of 2^exp logical blocks; I/O sizes in logical blocks.
    const ratio = Math.max(1, Math.floor(b.physicalBlockSize / b.logicalBlockSize));
    v.setUint8(BLK_CFG_PHYSICAL_BLOCK_EXP, Math.min(31, Math.floor(Math.log2(ratio))));
    v.setUint16(BLK_CFG_MIN_IO_SIZE, Math.min(0xffff, ratio), true);
    v.setUint32(BLK_CFG_OPT_IO_SIZE, 0, true);
    v.setUint8(BLK_CFG_WRITEBACK, 1);
    v.setUint16(BLK_CFG_NUM_QUEUES, this.numQueues, true);
    v.setUint32(BLK_CFG_MAX_DISCARD_SECTORS, l.maxDiscardSectors, true);
    v.setUint32(BLK_CFG_MAX_DISCARD_SEG, l.maxDiscardSeg, true);
    v.setUint32(BLK_CFG_DISCARD_SECTOR_ALIGNMENT, b.logicalBlockSize / SECTOR_SIZE, true);
    v.setUint32(BLK_CFG_MAX_WRITE_ZEROES_SECTORS, l.maxWriteZeroesSectors, true);
    v.setUint32(BLK_CFG_MAX_WRITE_ZEROES_SEG, l.maxWriteZeroesSeg, true);
    v.setUint8(BLK_CFG_WRITE_ZEROES_MAY_UNMAP, l.writeZeroesMayUnmap ? 1 : 0);
  }

  /** Requests handed to the back-end and not yet settled. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Is the volatile cache in writethrough mode (every write flushed before it completes)? */
  get writeThrough(): boolean {
    return this.#writeThrough;
  }

  protected override validateFeatures(f: bigint): string | undefined {
    // §5.2.5: RO is the device's; a driver that drops it still gets IOERR on writes, so nothing to refuse.
    if ((f & bit(VIRTIO_BLK_F_MQ)) !== 0n && this.numQueues < 2) return 'MQ accepted but not offered';
    return undefined;
  }

  protected override onConfigWrite(offset: number, size: AccessSize, value: number): void {
    // §5.2.4: writeback is writable when CONFIG_WCE is negotiated.
    if (offset === BLK_CFG_WRITEBACK && size === 1 && this.hasFeature(VIRTIO_BLK_F_CONFIG_WCE) && (value === 0 || value === 1)) {
      this.configView.setUint8(BLK_CFG_WRITEBACK, value);
      this.#writeThrough = value === 0 || !this.hasFeature(VIRTIO_BLK_F_FLUSH);
      return;
    }
    super.onConfigWrite(offset, size, value);
  }

  protected override activate(): void {
    const l = this.#limits;
    l.flush = this.hasFeature(VIRTIO_BLK_F_FLUSH);
    l.discard = this.hasFeature(VIRTIO_BLK_F_DISCARD);
    l.writeZeroes = this.hasFeature(VIRTIO_BLK_F_WRITE_ZEROES);
    // §5.2.5.1: without FLUSH the driver assumes writethrough; with CONFIG_WCE the writeback field says.
    const wce = this.hasFeature(VIRTIO_BLK_F_CONFIG_WCE) ? this.configView.getUint8(BLK_CFG_WRITEBACK) : 1;
    this.#writeThrough = !l.flush || wce === 0;
    const maxRanges = Math.max(l.maxDiscardSeg, l.maxWriteZeroesSeg);
    this.#state = this.queues.map((dq, q) => {
      if (dq === undefined) return undefined;
      const free: Slot[] = [];
      for (let i = 0; i < dq.size; i++) {
        const s = new Slot(this, dq.createChain(), maxRanges);
        s.queue = q;
        free.push(s);
      }
      const run: Run = { slots: new Array<Slot>(free.length), count: 0, write: false, end: 0, bytes: 0, segments: 0 };
      return { dq, free, slots: free.length, dirty: false, recheck: false, processing: false, busyRw: 0, busySlow: 0, run };
    });
  }

  protected override quiesce(): Promise<void> | undefined {
    this.#state = [];
    this.configView.setUint8(BLK_CFG_WRITEBACK, 1);
    this.#writeThrough = false;
    if (this.#inFlight === 0) return undefined;
    return new Promise<void>((resolve) => {
      this.#drained = resolve;
    });
  }

  /** Capacity changed (the back-end grew): update config space and tell the driver (§5.2.4). */
  resized(): void {
    const cap = Math.floor(this.backend.size / SECTOR_SIZE);
    (this as { capacitySectors: number }).capacitySectors = cap;
    this.#limits.capacitySectors = cap;
    this.configView.setBigUint64(BLK_CFG_CAPACITY, BigInt(cap), true);
    this.configChanged();
  }

  protected override processQueue(q: number): void {
    const st = this.#state[q];
    if (st === undefined || st.processing) return;
    st.processing = true;
    const dq = st.dq;
    try {
      dq.disableNotifications();
      let taken = 0;
      for (;;) {
        while (st.free.length > 0) {
          if (taken >= this.#maxBatch) {
            // Pass full: publish what it completes first (the next publish pass comes back here).
            if (st.run.count > 0) this.flushRun(st);
            st.recheck = true;
            if (!this.#publishScheduled) {
              this.#publishScheduled = true;
              setImmediate(this.#publish);
            }
            return;
          }
          const slot = st.free.pop()!;
          let got: boolean;
          try {
            got = dq.pop(slot.chain);
          } catch (e) {
            st.free.push(slot);
            this.queueBroken(q, e);
            return;
          }
          if (!got) {
            st.free.push(slot);
            break;
          }
          taken++;
          this.start(slot);
          if (!this.running) return;
        }
        // The ring is empty (or every slot busy): what was popped goes to the back-end now.
        if (st.run.count > 0) {
          this.flushRun(st);
          // A back-end that completed at once had the status written already: if that failed the device
          // needs a reset and leaves the ring alone (no notification re-enabled, no poll).
          if (!this.running) return;
        }
        // Completions pushed and not yet published (a back-end that completed during the pass) count as
        // busy: their publish, scheduled already, looks at the ring again.
        if (st.free.length === 0 || (this.#pollWhileBusy && (st.busyRw > 0 || st.dirty) && st.busySlow === 0)) {
          // Every slot is busy: the next completion looks at the ring again
          // (notifications stay off meanwhile). With slots free, the device asks
          // for kicks instead, so a slow request (a long flush) never holds up new ones.
          //
          // Reads and writes in flight (and nothing slow): the device polls the
          // available ring at each completion it publishes instead of asking for
          // kicks (§2.7.10 allows a device to leave notifications suppressed), as
          // vhost and SPDK's virtio-blk poll while busy. The driver then skips the
          // kick and the device skips a cross-thread wake-up per batch; a request
          // added meanwhile waits at most for the next read/write completion.
          st.recheck = true;
          return;
        }
        // Idle: poll a while before asking for a kick (only with nothing in flight, so no completion waits behind the spin).
        if (this.#pollMs > 0 && this.#inFlight === 0 && !st.dirty && this.pollRing(dq)) continue;
        // §2.7.10 / §2.8.21: re-enable, then re-check for buffers added meanwhile.
        if (!dq.enableNotifications()) return;
        dq.disableNotifications();
      }
    } finally {
      // Whatever was popped goes to the back-end, even if the queue broke meanwhile (as before merging).
      if (st.run.count > 0) this.flushRun(st);
      st.processing = false;
      if (!this.#passClosing) {
        this.#passClosing = true;
        queueMicrotask(this.#closePass);
      }
    }
  }

  /**
   * Runs after the microtasks a pass queued: a back-end that completed during
   * the pass (the sync engine on a raw file, memory) has had its completions
   * pushed by now, so they are published at once instead of a turn of the
   * event loop later.
   * At most 32 passes chain this way before the event loop gets a turn (its
   * publish resets the count), so control messages and timers still run.
   */
  private closePass(): void {
    this.#passClosing = false;
    // Only when the pass's requests have all completed: a back-end still working on some (a qcow2
    // read waiting on its metadata, the threadpool) publishes through the event loop as before, so
    // its completions are not published, and interrupted for, piecemeal.
    if (this.#chained >= 32 || this.#inFlight > 0) return;
    let work = false;
    for (const st of this.#state) if (st !== undefined && (st.dirty || st.recheck)) work = true;
    if (!work) return;
    const chained = this.#chained + 1;
    this.publishAll();
    this.#chained = chained;
  }

  /** Spins on the available ring for up to the poll budget; true if buffers arrived. */
  private pollRing(dq: DeviceQueue): boolean {
    const deadline = this.#now() + this.#pollMs;
    // Bounded by the clock; the ring is read every turn, the clock every 64th.
    for (let i = 1; ; i++) {
      if (dq.hasAvailable()) {
        this.blkStats.pollHits++;
        return true;
      }
      if ((i & 63) === 0) {
        this.#onPoll?.();
        if (this.#now() >= deadline) {
          this.blkStats.pollMisses++;
          return false;
        }
      }
    }
  }

  private start(slot: Slot): void {
    this.blkStats.requests++;
    slot.epoch = this.epoch;
    const req = parseBlkRequest(slot.chain, this.mem, this.#limits, slot.req);
    const st = this.#state[slot.queue];
    if (st !== undefined) {
      if ((req.kind === 'read' || (req.kind === 'write' && !this.#writeThrough)) && this.#mergeMaxBytes > 0) {
        slot.okLen = req.kind === 'read' ? req.length + 1 : 1;
        this.addToRun(st, slot);
        return;
      }
      // Anything else is issued after the requests popped before it, in ring order.
      if (st.run.count > 0) this.flushRun(st);
    }
    switch (req.kind) {
      case 'invalid':
        this.blkStats.rejected++;
        if (this.listensForGuestErrors) {
          this.guestError('bad-request', `virtio-blk request type ${req.type} on queue ${slot.queue}: ${req.error}`, { queue: slot.queue, type: req.type, error: req.error, status: req.status });
        } else this.stats.guestErrors++;
        if (req.status < 0) this.complete(slot, 0);
        else this.finishSlot(slot, req.status);
        return;
      case 'read':
        slot.okLen = req.length + 1;
        this.issued(slot, false);
        this.settle(this.backend.read(req.offset, req.segments), slot);
        return;
      case 'write':
        slot.okLen = 1;
        this.issued(slot, this.#writeThrough);
        this.backend.write(req.offset, req.segments).then(this.#writeThrough ? slot.flushed : slot.ok, slot.fail);
        return;
      case 'flush':
        // A completed FLUSH means the back-end's flush resolved (data and metadata on stable storage).
        slot.okLen = 1;
        this.issued(slot, true);
        this.backend.flush().then(slot.ok, slot.fail);
        return;
      case 'get-id': {
        const n = Math.min(req.length, VIRTIO_BLK_ID_BYTES);
        try {
          slot.chain.writeFrom(this.mem, 0, this.serial.subarray(0, n));
        } catch {
          this.finishSlot(slot, VIRTIO_BLK_S_IOERR);
          return;
        }
        slot.okLen = n + 1;
        this.finishSlot(slot, VIRTIO_BLK_S_OK);
        return;
      }
      case 'discard':
      case 'write-zeroes':
        slot.okLen = 1;
        slot.range = 0;
        this.issued(slot, true);
        this.issueRange(slot);
        return;
    }
  }

  /** Appends a read / writeback write to the queue's run, first flushing a run it cannot join. */
  private addToRun(st: QueueState, slot: Slot): void {
    const run = st.run;
    const req = slot.req;
    const write = req.kind === 'write';
    if (
      run.count > 0 &&
      (run.write !== write || run.end !== req.offset || run.bytes + req.length > this.#mergeMaxBytes || run.segments + req.segments.length > this.#mergeMaxSegments)
    ) {
      this.flushRun(st);
    }
    if (run.count === 0) {
      run.write = write;
      run.bytes = 0;
      run.segments = 0;
    }
    run.slots[run.count++] = slot;
    run.end = req.offset + req.length;
    run.bytes += req.length;
    run.segments += req.segments.length;
  }

  /** Hands the run to the back-end: one request as it is, two or more as one merged call. */
  private flushRun(st: QueueState): void {
    const run = st.run;
    const n = run.count;
    run.count = 0;
    if (n === 1) {
      const slot = run.slots[0]!;
      this.issueRw(slot);
      return;
    }
    const m = this.#merges.pop() ?? new Merge(this);
    const first = run.slots[0]!.req;
    for (let i = 0; i < n; i++) {
      const slot = run.slots[i]!;
      m.slots.push(slot);
      const segs = slot.req.segments;
      for (let j = 0; j < segs.length; j++) m.segments.push(segs[j]!);
      this.issued(slot, false);
    }
    this.blkStats.merged += n;
    this.blkStats.mergedCalls++;
    const p = run.write ? this.backend.write(first.offset, m.segments) : this.backend.read(first.offset, m.segments);
    if (p === COMPLETED) this.mergeDone(m, true);
    else p.then(m.ok, m.fail);
  }

  /** One read or writeback write on its own. */
  private issueRw(slot: Slot): void {
    const req = slot.req;
    this.issued(slot, false);
    this.settle(req.kind === 'write' ? this.backend.write(req.offset, req.segments) : this.backend.read(req.offset, req.segments), slot);
  }

  /**
   * A read's or writeback write's back-end promise: completed at once when the
   * back-end did the I/O before returning (`COMPLETED`: the sync engine, memory),
   * else when it settles. Saves a promise reaction and a microtask per request.
   */
  private settle(p: Promise<void>, slot: Slot): void {
    if (p === COMPLETED) this.finishSlot(slot, VIRTIO_BLK_S_OK);
    else p.then(slot.ok, slot.fail);
  }

  /**
   * A merged call settled. Success completes every request in it; a failure
   * retries each on its own, so only the requests that really fail are
   * answered IOERR (and a reset meanwhile drops them).
   */
  mergeDone(m: Merge, ok: boolean): void {
    const slots = m.slots;
    for (let i = 0; i < slots.length; i++) {
      const slot = slots[i]!;
      if (ok) {
        this.finishSlot(slot, VIRTIO_BLK_S_OK);
      } else if (slot.epoch !== this.epoch) {
        this.finishSlot(slot, VIRTIO_BLK_S_IOERR);
      } else {
        // Still counted in flight: hand it back to the back-end alone.
        this.retrySingle(slot);
      }
    }
    slots.length = 0;
    m.segments.length = 0;
    this.#merges.push(m);
  }

  private retrySingle(slot: Slot): void {
    const req = slot.req;
    this.settle(req.kind === 'write' ? this.backend.write(req.offset, req.segments) : this.backend.read(req.offset, req.segments), slot);
  }

  private issued(slot: Slot, slow: boolean): void {
    this.#inFlight++;
    slot.async = true;
    slot.slow = slow;
    const st = this.#state[slot.queue];
    if (st === undefined) return;
    if (slow) st.busySlow++;
    else st.busyRw++;
  }

  /** Discard / write-zeroes: ranges one after another (each validated already). */
  issueRange(slot: Slot): void {
    const req = slot.req;
    if (slot.epoch !== this.epoch || slot.range >= req.rangeCount) {
      this.finishSlot(slot, VIRTIO_BLK_S_OK);
      return;
    }
    const i = slot.range++;
    const off = req.rangeOffset[i]!;
    const len = req.rangeLength[i]!;
    const p = req.kind === 'discard' ? this.backend.discard(off, len) : this.backend.writeZeroes(off, len, req.rangeUnmap[i] === 1);
    p.then(slot.nextRange, slot.fail);
  }

  /** Writethrough: the write completes after a flush (§5.2.5.1). */
  writeThroughFlush(slot: Slot): void {
    if (slot.epoch !== this.epoch) {
      this.finishSlot(slot, VIRTIO_BLK_S_OK);
      return;
    }
    this.backend.flush().then(slot.ok, slot.fail);
  }

  backendFailed(slot: Slot, e: unknown): void {
    this.blkStats.backendErrors++;
    if (slot.epoch === this.epoch && this.listensForGuestErrors) {
      this.report(new VirtioError('bad-request', `back-end ${slot.req.kind} failed: ${e instanceof Error ? e.message : String(e)}`, { queue: slot.queue, kind: slot.req.kind }, { cause: e }));
    }
    this.finishSlot(slot, VIRTIO_BLK_S_IOERR);
  }

  /** Writes the status byte and returns the chain; dropped if a reset came in between. */
  finishSlot(slot: Slot, status: number): void {
    if (slot.async) {
      slot.async = false;
      this.#inFlight--;
      const st = this.#state[slot.queue];
      if (st !== undefined && slot.epoch === this.epoch) {
        if (slot.slow) st.busySlow--;
        else st.busyRw--;
      }
    }
    if (slot.epoch !== this.epoch) {
      // Reset came first: the ring is forgotten; nothing is written to guest memory.
      this.blkStats.dropped++;
      if (this.#inFlight === 0 && this.#drained) {
        const d = this.#drained;
        this.#drained = undefined;
        d();
      }
      return;
    }
    try {
      writeBlkStatus(slot.chain, this.mem, slot.req, status);
    } catch (e) {
      this.needsReset(new VirtioError('queue-broken', `queue ${slot.queue}: status byte at ${slot.req.statusAddr} is no longer writable`, { queue: slot.queue }, { cause: e }));
      return;
    }
    this.complete(slot, status === VIRTIO_BLK_S_OK ? slot.okLen : 1);
  }

  private complete(slot: Slot, len: number): void {
    const st = this.#state[slot.queue];
    if (st === undefined) return;
    st.dq.pushUsed(slot.chain, len);
    st.free.push(slot);
    st.dirty = true;
    if (!this.#publishScheduled) {
      // Publish once per event-loop turn: the back-end's completions of one poll
      // phase share one release store and at most one interrupt per queue.
      this.#publishScheduled = true;
      setImmediate(this.#publish);
    }
  }

  /** One release store and at most one interrupt per queue for every completion of this turn. */
  private publishAll(): void {
    this.#publishScheduled = false;
    this.#chained = 0;
    const states = this.#state;
    for (let q = 0; q < states.length; q++) {
      const st = states[q];
      if (st === undefined || (!st.dirty && !st.recheck)) continue;
      if (st.dirty) {
        st.dirty = false;
        st.dq.publishUsed();
        if (st.dq.needsInterrupt()) this.raiseQueueInterrupt(q);
      }
      // Look at the available ring while here: the driver adds requests as
      // completions reach it, and a kick's wake-up through the event loop would
      // come later than this (it also resumes a queue whose slots were all busy).
      st.recheck = false;
      if (this.running) this.processQueue(q);
    }
  }
}
