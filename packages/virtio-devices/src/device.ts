import type { DmaMemory } from '@ioplane/guest-memory';
import { type DeviceQueue, type QueueConfig, VirtqueueError, createDeviceQueue, ringFeatures } from '@ioplane/virtqueue';
import {
  MAX_QUEUE_SIZE,
  STATUS_ACKNOWLEDGE,
  STATUS_DEVICE_NEEDS_RESET,
  STATUS_DRIVER,
  STATUS_DRIVER_BITS,
  STATUS_DRIVER_OK,
  STATUS_FAILED,
  STATUS_FEATURES_OK,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  bit,
} from './defs.js';
import { VirtioError, hex } from './errors.js';

/**
 * Where a device's notifications to the driver go: one callback per queue
 * (its MSI-X vector, its irqfd, its Doorbell) and one for configuration
 * changes. An interrupt-coalescing policy plugs in here by wrapping a sink.
 */
export interface InterruptSink {
  /** A used buffer notification for queue `queueIndex` (§2.3). */
  queue(queueIndex: number): void;
  /** A configuration change notification (§2.3), also sent after DEVICE_NEEDS_RESET (§2.1.2). */
  config(): void;
}

/** Config space accesses are 1, 2 or 4 bytes wide, as a transport's registers are (§4.1.3.1). */
export type AccessSize = 1 | 2 | 4;

/**
 * What a transport (virtio-pci, virtio-mmio, vhost-user) calls on a device:
 * the basic facilities of §2 in transport-neutral form. Queue methods take the
 * queue index (a PCI transport keeps queue_select itself). Every method takes
 * values straight from driver-written registers: none throws at the guest;
 * what the spec forbids is ignored and reported through `onGuestError`.
 */
export interface VirtioTransportTarget {
  readonly deviceId: number;
  readonly numQueues: number;
  /** Bytes of device-specific configuration space. */
  readonly configSize: number;
  /** Feature bits 32·select … 32·select+31 the device offers (§4.1.4.3 device_feature_select). */
  readDeviceFeatures(select: number): number;
  /** Sets feature bits 32·select … of the driver's choice (driver_feature_select). */
  writeDriverFeatures(select: number, value: number): void;
  /** Reads back what the driver wrote. */
  readDriverFeatures(select: number): number;
  /** The device status field (§2.1); reads non-zero until a reset has finished. */
  readonly status: number;
  setStatus(value: number): void;
  /** Changes whenever the device changes its configuration space (§2.5.1). */
  readonly configGeneration: number;
  readConfig(offset: number, size: AccessSize): number;
  writeConfig(offset: number, size: AccessSize, value: number): void;
  /** The largest size queue `q` accepts; 0 when there is no such queue (§4.1.4.3). */
  queueMaxSize(q: number): number;
  queueSize(q: number): number;
  setQueueSize(q: number, size: number): void;
  setQueueAddresses(q: number, descAddr: number, driverAddr: number, deviceAddr: number): void;
  queueEnabled(q: number): boolean;
  enableQueue(q: number): void;
  /** An available buffer notification (a kick) for queue `q` (§2.3). */
  notify(q: number): void;
  /** ISR status (§4.1.4.5): bit 0 queue interrupt, bit 1 config change; reading clears it. */
  readIsr(): number;
}

export interface VirtioDeviceOptions {
  /** How the device reads and writes guest memory (plain RAM, or a vIOMMU in front of it). */
  mem: DmaMemory;
  interrupts: InterruptSink;
  /** Called for each spec violation by the driver the device ignored or answered (never throws at the guest). */
  onGuestError?: (error: VirtioError) => void;
}

interface QueueSetup {
  maxSize: number;
  size: number;
  descAddr: number;
  driverAddr: number;
  deviceAddr: number;
  enabled: boolean;
}

/** Counters a management socket or a test can read. */
export interface DeviceStats {
  guestErrors: number;
  notifications: number;
  queueInterrupts: number;
  configInterrupts: number;
  resets: number;
}

const U32 = 0x1_0000_0000;

/**
 * The device framework (VirtIO 1.2 §2.1–§2.6, §3.1): feature negotiation,
 * the status state machine, configuration space with a generation counter,
 * per-queue set-up and activation, reset, and interrupt delivery. A device
 * type (virtio-blk, virtio-net) extends it with its config space, its feature
 * rules and its queue processing.
 *
 * Reset (a write of 0 to status) is not instant when requests are in flight
 * on the back-end: their guest buffers may still be written, so the device
 * keeps reporting a non-zero status until every one has settled, and drops
 * their completions (§4.1.4.3.2: the driver waits for status to read 0).
 */
export abstract class VirtioDevice implements VirtioTransportTarget {
  readonly mem: DmaMemory;
  readonly stats: DeviceStats = { guestErrors: 0, notifications: 0, queueInterrupts: 0, configInterrupts: 0, resets: 0 };
  /** Feature bits the device offers: VERSION_1 always (§6.1). */
  readonly deviceFeatures: bigint;
  /** The device-specific configuration space; a subclass writes it with `configView`. */
  protected readonly config: Uint8Array;
  protected readonly configView: DataView;
  protected readonly interrupts: InterruptSink;
  /** Active queues (after DRIVER_OK), by index. */
  protected queues: (DeviceQueue | undefined)[] = [];
  /** Bumped by every reset: work started before it is dropped on completion. */
  protected epoch = 0;

  #status = 0;
  #driverFeatures = 0n;
  #generation = 0;
  #isr = 0;
  #resetting: Promise<void> | undefined;
  readonly #setup: QueueSetup[];
  readonly #onGuestError: ((e: VirtioError) => void) | undefined;

  protected constructor(
    readonly deviceId: number,
    deviceFeatures: bigint,
    readonly numQueues: number,
    maxQueueSize: number,
    configSize: number,
    options: VirtioDeviceOptions,
  ) {
    if (!Number.isInteger(numQueues) || numQueues < 1 || numQueues > 0xffff) {
      throw new VirtioError('invalid-argument', `a device has 1 to 65535 queues, not ${numQueues}`, { numQueues });
    }
    if (!Number.isInteger(maxQueueSize) || maxQueueSize < 1 || maxQueueSize > MAX_QUEUE_SIZE) {
      throw new VirtioError('invalid-argument', `queue size ${maxQueueSize} is outside 1..${MAX_QUEUE_SIZE}`, { maxQueueSize });
    }
    this.mem = options.mem;
    this.interrupts = options.interrupts;
    this.#onGuestError = options.onGuestError;
    this.deviceFeatures = deviceFeatures | bit(VIRTIO_F_VERSION_1);
    this.config = new Uint8Array(configSize);
    this.configView = new DataView(this.config.buffer);
    this.#setup = Array.from({ length: numQueues }, () => ({ maxSize: maxQueueSize, size: maxQueueSize, descAddr: 0, driverAddr: 0, deviceAddr: 0, enabled: false }));
  }

  // ── Hooks for a device type ──

  /** Device-specific feature rules checked at FEATURES_OK (dependencies between bits, §5.x.3.1). */
  protected validateFeatures(_features: bigint): string | undefined {
    return undefined;
  }
  /** DRIVER_OK: the queues are live. */
  protected abstract activate(): void;
  /** A kick on an active queue. */
  protected abstract processQueue(q: number): void;
  /** Reset: forget device state; resolve once no request touches guest memory any more. */
  protected abstract quiesce(): Promise<void> | undefined;
  /** A driver write to config space (device-specific fields only; the rest is read-only). */
  protected onConfigWrite(offset: number, size: AccessSize, value: number): void {
    this.guestError('ignored-access', `write of ${size} byte(s) at config offset ${offset}: read-only field`, { offset, size, value });
  }

  // ── Features (§2.2) ──

  get driverFeatures(): bigint {
    return this.#driverFeatures;
  }

  readDeviceFeatures(select: number): number {
    if (!Number.isInteger(select) || select < 0 || select > 1) return 0;
    return Number((this.deviceFeatures >> BigInt(32 * select)) & 0xffff_ffffn);
  }

  readDriverFeatures(select: number): number {
    if (!Number.isInteger(select) || select < 0 || select > 1) return 0;
    return Number((this.#driverFeatures >> BigInt(32 * select)) & 0xffff_ffffn);
  }

  writeDriverFeatures(select: number, value: number): void {
    // §2.2.1 / §3.1.1: features are written after DRIVER and before FEATURES_OK.
    if ((this.#status & STATUS_FEATURES_OK) !== 0 || (this.#status & STATUS_DRIVER) === 0 || this.#resetting) {
      this.guestError('invalid-features', `driver features written with status ${hex(this.#status)} (only between DRIVER and FEATURES_OK)`, { status: this.#status, select, value });
      return;
    }
    if (!Number.isInteger(select) || select < 0 || select > 1 || !Number.isInteger(value) || value < 0 || value >= U32) {
      this.guestError('invalid-features', `driver features word ${select} = ${value}: no such feature word`, { select, value });
      return;
    }
    const shift = BigInt(32 * select);
    this.#driverFeatures = (this.#driverFeatures & ~(0xffff_ffffn << shift)) | (BigInt(value) << shift);
  }

  /** Has the driver accepted feature bit `n`? Meaningful from FEATURES_OK on. */
  hasFeature(n: number): boolean {
    return (this.#driverFeatures & bit(n)) !== 0n;
  }

  // ── Status (§2.1, §3.1.1) ──

  get status(): number {
    return this.#status;
  }

  get resetting(): boolean {
    return this.#resetting !== undefined;
  }

  /** Running: DRIVER_OK, not FAILED, not NEEDS_RESET, not resetting. */
  get running(): boolean {
    return (this.#status & (STATUS_DRIVER_OK | STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET)) === STATUS_DRIVER_OK && !this.#resetting;
  }

  setStatus(value: number): void {
    if (!Number.isInteger(value) || value < 0 || value > 0xff) {
      this.guestError('invalid-status', `status ${value} is not a byte`, { value });
      return;
    }
    if (value === 0) {
      void this.reset();
      return;
    }
    if (this.#resetting) {
      this.guestError('invalid-status', `status ${hex(value)} written before the reset finished (wait for status 0, §4.1.4.3.2)`, { value });
      return;
    }
    const cur = this.#status;
    // §2.1.1: the driver MUST NOT clear a status bit; DEVICE_NEEDS_RESET is the device's.
    if ((value & ~(STATUS_DRIVER_BITS | STATUS_DEVICE_NEEDS_RESET)) !== 0) {
      this.guestError('invalid-status', `status ${hex(value)} sets undefined bits ${hex(value & ~(STATUS_DRIVER_BITS | STATUS_DEVICE_NEEDS_RESET))}`, { value, status: cur });
      return;
    }
    if ((cur & STATUS_DRIVER_BITS & ~value) !== 0) {
      this.guestError('invalid-status', `status ${hex(value)} clears bits ${hex(cur & STATUS_DRIVER_BITS & ~value)} (only a reset clears them, §2.1.1)`, { value, status: cur });
      return;
    }
    const added = value & STATUS_DRIVER_BITS & ~cur;
    if (added === 0) return;
    // FAILED may come at any time: the driver gave up (§2.1).
    if ((added & STATUS_FAILED) !== 0) {
      this.#status |= STATUS_FAILED;
    }
    // §3.1.1: ACKNOWLEDGE, then DRIVER, then FEATURES_OK, then DRIVER_OK, in order.
    const next = cur | added;
    const order: [number, number][] = [
      [STATUS_DRIVER, STATUS_ACKNOWLEDGE],
      [STATUS_FEATURES_OK, STATUS_DRIVER],
      [STATUS_DRIVER_OK, STATUS_FEATURES_OK],
    ];
    for (const [b, needs] of order) {
      if ((added & b) !== 0 && (next & needs) === 0) {
        this.guestError('invalid-status', `status ${hex(value)} sets ${hex(b)} without ${hex(needs)} (§3.1.1 order)`, { value, status: cur });
        return;
      }
    }
    if ((added & STATUS_ACKNOWLEDGE) !== 0) this.#status |= STATUS_ACKNOWLEDGE;
    if ((added & STATUS_DRIVER) !== 0) this.#status |= STATUS_DRIVER;
    if ((added & STATUS_FEATURES_OK) !== 0) {
      const why = this.checkFeatures(this.#driverFeatures);
      if (why !== undefined) {
        // §2.2.2: the device does not set FEATURES_OK; the driver re-reads status and sees it (§3.1.1 step 6).
        this.guestError('invalid-features', `features ${hex(this.#driverFeatures)} refused: ${why}`, { features: this.#driverFeatures });
        return;
      }
      this.#status |= STATUS_FEATURES_OK;
    }
    if ((added & STATUS_DRIVER_OK) !== 0) {
      this.#status |= STATUS_DRIVER_OK;
      if ((this.#status & STATUS_FAILED) === 0) this.startQueues();
    }
  }

  private checkFeatures(f: bigint): string | undefined {
    const extra = f & ~this.deviceFeatures;
    if (extra !== 0n) return `bits ${hex(extra)} were not offered (§2.2.1)`;
    if ((f & bit(VIRTIO_F_VERSION_1)) === 0n) return 'VIRTIO_F_VERSION_1 not accepted: this device has no legacy interface (§6.1)';
    return this.validateFeatures(f);
  }

  /** DRIVER_OK: build a device queue for every enabled queue, then activate. */
  private startQueues(): void {
    const rf = ringFeatures(this.#driverFeatures);
    const queues: (DeviceQueue | undefined)[] = [];
    for (let q = 0; q < this.numQueues; q++) {
      const s = this.#setup[q]!;
      if (!s.enabled) {
        queues.push(undefined);
        continue;
      }
      const cfg: QueueConfig = { size: s.size, descAddr: s.descAddr, driverAddr: s.driverAddr, deviceAddr: s.deviceAddr };
      try {
        queues.push(createDeviceQueue(this.mem, cfg, rf));
      } catch (e) {
        // Misaligned rings or rings outside memory: the device cannot run (§2.1.2).
        this.queues = [];
        this.needsReset(new VirtioError('invalid-queue', `queue ${q} cannot start: ${e instanceof Error ? e.message : String(e)}`, { queue: q }, { cause: e }));
        return;
      }
    }
    this.queues = queues;
    this.activate();
    // §3.1.1: buffers the driver made available before DRIVER_OK are consumed now.
    for (let q = 0; q < this.numQueues; q++) if (this.queues[q] && this.running) this.processQueue(q);
  }

  /**
   * Enters the error state: DEVICE_NEEDS_RESET, and a configuration change
   * notification once DRIVER_OK is set (§2.1.2). The device stops using its
   * queues until the driver resets it.
   */
  needsReset(error: VirtioError): void {
    this.report(error);
    if ((this.#status & STATUS_DEVICE_NEEDS_RESET) !== 0) return;
    this.#status |= STATUS_DEVICE_NEEDS_RESET;
    if ((this.#status & STATUS_DRIVER_OK) !== 0) this.raiseConfigInterrupt();
  }

  /** A queue's `pop` threw: the ring is malformed, the device needs a reset. */
  protected queueBroken(q: number, e: unknown): void {
    if (!(e instanceof VirtqueueError)) throw e;
    this.needsReset(new VirtioError('queue-broken', `queue ${q}: ${e.kind}: ${e.message}`, { queue: q, virtqueueKind: e.kind }, { cause: e }));
  }

  /**
   * Device reset (§2.4): forget features, status, queue set-up; drop every
   * request in flight. Resolves (and status reads 0) once no request can
   * touch guest memory any more.
   */
  reset(): Promise<void> {
    if (this.#resetting) return this.#resetting;
    this.stats.resets++;
    this.epoch++;
    this.queues = [];
    const drained = this.quiesce();
    const finish = (): void => {
      this.#status = 0;
      this.#driverFeatures = 0n;
      this.#isr = 0;
      for (const s of this.#setup) {
        s.size = s.maxSize;
        s.descAddr = s.driverAddr = s.deviceAddr = 0;
        s.enabled = false;
      }
      this.#resetting = undefined;
    };
    if (drained === undefined) {
      finish();
      return Promise.resolve();
    }
    this.#resetting = drained.then(finish, finish);
    return this.#resetting;
  }

  // ── Configuration space (§2.5) ──

  get configSize(): number {
    return this.config.length;
  }

  get configGeneration(): number {
    return this.#generation;
  }

  readConfig(offset: number, size: AccessSize): number {
    if (!this.configAccessOk(offset, size)) return 0;
    if (size === 1) return this.config[offset]!;
    if (size === 2) return this.configView.getUint16(offset, true);
    return this.configView.getUint32(offset, true);
  }

  writeConfig(offset: number, size: AccessSize, value: number): void {
    if (!this.configAccessOk(offset, size)) return;
    if (!Number.isInteger(value) || value < 0 || value >= 2 ** (8 * size)) {
      this.guestError('ignored-access', `config write of ${value} does not fit ${size} byte(s)`, { offset, size, value });
      return;
    }
    this.onConfigWrite(offset, size, value);
  }

  private configAccessOk(offset: number, size: number): boolean {
    if ((size !== 1 && size !== 2 && size !== 4) || !Number.isInteger(offset) || offset < 0 || offset + size > this.config.length) {
      this.guestError('ignored-access', `config access of ${size} byte(s) at ${offset} is outside the ${this.config.length}-byte config space`, { offset, size });
      return false;
    }
    return true;
  }

  /**
   * The device changed its config space: bump config_generation (§2.5.1) and
   * send a configuration change notification once the driver is running.
   */
  protected configChanged(): void {
    this.#generation = (this.#generation + 1) >>> 0;
    if ((this.#status & STATUS_DRIVER_OK) !== 0) this.raiseConfigInterrupt();
  }

  // ── Queues (§2.6, §4.1.4.3) ──

  queueMaxSize(q: number): number {
    return this.#setup[q]?.maxSize ?? 0;
  }

  queueSize(q: number): number {
    return this.#setup[q]?.size ?? 0;
  }

  queueEnabled(q: number): boolean {
    return this.#setup[q]?.enabled ?? false;
  }

  /** The set-up of queue `q` as the driver wrote it. */
  queueConfig(q: number): QueueConfig | undefined {
    const s = this.#setup[q];
    return s && { size: s.size, descAddr: s.descAddr, driverAddr: s.driverAddr, deviceAddr: s.deviceAddr };
  }

  private setupWindow(q: number, what: string): QueueSetup | undefined {
    const s = this.#setup[q];
    if (s === undefined) {
      this.guestError('invalid-queue', `${what} on queue ${q}: the device has ${this.numQueues}`, { queue: q });
      return undefined;
    }
    // §3.1.1 step 7: queues are set up after FEATURES_OK and before DRIVER_OK;
    // §4.1.4.3.2: an enabled queue's set-up is not changed.
    if ((this.#status & STATUS_FEATURES_OK) === 0 || (this.#status & STATUS_DRIVER_OK) !== 0 || s.enabled || this.#resetting) {
      this.guestError('invalid-queue', `${what} on queue ${q} with status ${hex(this.#status)}${s.enabled ? ' after it was enabled' : ''}`, { queue: q, status: this.#status });
      return undefined;
    }
    return s;
  }

  setQueueSize(q: number, size: number): void {
    const s = this.setupWindow(q, `queue_size ${size}`);
    if (s === undefined) return;
    const packed = this.hasFeature(VIRTIO_F_RING_PACKED);
    // §2.7: a split queue's size is a power of two; §2.8: packed, any size up to 2^15. Never above the maximum.
    if (!Number.isInteger(size) || size < 1 || size > s.maxSize || (!packed && (size & (size - 1)) !== 0)) {
      this.guestError('invalid-queue', `queue ${q} size ${size} is not ${packed ? '' : 'a power of two '}in 1..${s.maxSize}`, { queue: q, size });
      return;
    }
    s.size = size;
  }

  setQueueAddresses(q: number, descAddr: number, driverAddr: number, deviceAddr: number): void {
    const s = this.setupWindow(q, 'queue addresses');
    if (s === undefined) return;
    for (const a of [descAddr, driverAddr, deviceAddr]) {
      if (!Number.isSafeInteger(a) || a < 0) {
        this.guestError('invalid-queue', `queue ${q} address ${a} is not a guest address`, { queue: q, addr: a });
        return;
      }
    }
    s.descAddr = descAddr;
    s.driverAddr = driverAddr;
    s.deviceAddr = deviceAddr;
  }

  enableQueue(q: number): void {
    const s = this.setupWindow(q, 'queue_enable');
    if (s === undefined) return;
    s.enabled = true;
  }

  notify(q: number): void {
    this.stats.notifications++;
    if (!this.running) {
      // §2.1.2: no buffers are consumed before DRIVER_OK, nor after NEEDS_RESET or FAILED.
      if ((this.#status & STATUS_DRIVER_OK) === 0) this.guestError('ignored-access', `notification of queue ${q} before DRIVER_OK`, { queue: q });
      return;
    }
    if (this.queues[q] === undefined) {
      this.guestError('ignored-access', `notification of queue ${q}, which is not enabled`, { queue: q });
      return;
    }
    this.processQueue(q);
  }

  // ── Interrupts (§2.3) ──

  readIsr(): number {
    const v = this.#isr;
    this.#isr = 0;
    return v;
  }

  protected raiseQueueInterrupt(q: number): void {
    this.#isr |= 1;
    this.stats.queueInterrupts++;
    this.interrupts.queue(q);
  }

  protected raiseConfigInterrupt(): void {
    this.#isr |= 2;
    this.stats.configInterrupts++;
    this.interrupts.config();
  }

  // ── Guest errors ──

  protected guestError(kind: VirtioError['kind'], message: string, details: Record<string, unknown> = {}): void {
    this.report(new VirtioError(kind, message, details));
  }

  /** Counts a guest error; builds nothing unless someone listens (hot paths call `countGuestError`). */
  protected report(e: VirtioError): void {
    this.stats.guestErrors++;
    this.#onGuestError?.(e);
  }

  protected get listensForGuestErrors(): boolean {
    return this.#onGuestError !== undefined;
  }
}
