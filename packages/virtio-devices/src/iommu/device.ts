import { CONFIG_SIZE, FAULT_SIZE, type FaultRecord, VIRTIO_ID_IOMMU, VirtioIommu, type VirtioIommuOptions } from '@ioplane/viommu';
import type { DescriptorChain } from '@ioplane/virtqueue';
import { type AccessSize, VirtioDevice, type VirtioDeviceOptions } from '../device.js';
import { VirtioError } from '../errors.js';

/** Queue indices of virtio-iommu (VirtIO 1.2 §5.13.2). */
export const IOMMU_REQUEST_QUEUE = 0;
export const IOMMU_EVENT_QUEUE = 1;

export interface VirtioIommuDeviceOptions extends VirtioDeviceOptions, Omit<VirtioIommuOptions, 'onFault'> {
  /** Largest queue size the driver may choose, both queues (default 256). */
  queueSize?: number;
  /** Called with every translation fault, after it is queued for the event queue. */
  onFault?: (fault: FaultRecord) => void;
  /**
   * How fault delivery is deferred out of the DMA access that faulted (a fault
   * is raised inside another device's request processing; its report is
   * written to the event queue afterwards). Default `queueMicrotask`.
   */
  schedule?: (task: () => void) => void;
}

/** One descriptor as `VirtioIommu.processChain` reads it. */
interface Seg {
  addr: number;
  len: number;
}

/** Counters of the virtqueue side. */
export interface IommuQueueStats {
  requests: number;
  events: number;
  /** Event buffers returned with used length 0 (too small, or with device-readable parts). */
  badEventBuffers: number;
}

/**
 * The virtio-iommu device (VirtIO 1.2 §5.13, device ID 23) on the device
 * framework: `VirtioIommu` (the request handler, domains, IOTLB, fault
 * queue) behind a request queue (0) and an event queue (1).
 *
 * - requestq: each chain is one request — device-readable head and payload,
 *   then device-writable properties and tail (§5.13.6). Answered at once,
 *   in order; the used entries of one kick are published together (one
 *   release store, at most one interrupt), before `notify` returns, so a
 *   same-thread driver sees its answers when the kick returns.
 * - eventq: the driver keeps device-writable buffers of at least 24 bytes
 *   there; each fault report (§5.13.6.7, `struct virtio_iommu_fault`) fills
 *   one. Reports wait in the device (up to `maxPendingEvents`, oldest
 *   dropped) while no buffer is available.
 * - config space (§5.13.4): page_size_mask, input_range, domain_range,
 *   probe_size, bypass; only `bypass` is writable (with BYPASS_CONFIG).
 *
 * The device's own rings are in `mem`, untranslated (the IOMMU does not
 * translate itself). The endpoints' `DmaMemory` comes from
 * `device.iommu.dmaMemory(endpoint, ram)`.
 */
export class VirtioIommuDevice extends VirtioDevice {
  readonly iommu: VirtioIommu;
  readonly queueStats: IommuQueueStats = { requests: 0, events: 0, badEventBuffers: 0 };
  readonly #schedule: (task: () => void) => void;
  #chains: (DescriptorChain | undefined)[] = [];
  readonly #readable: Seg[] = [];
  readonly #writable: Seg[] = [];
  readonly #pool: Seg[] = [];
  #deliveryScheduled = false;
  readonly #deliver = (): void => {
    this.#deliveryScheduled = false;
    if (this.running) this.processQueue(IOMMU_EVENT_QUEUE);
  };

  constructor(options: VirtioIommuDeviceOptions) {
    const userOnFault = options.onFault;
    const ref: { dev?: VirtioIommuDevice } = {};
    const iommu = new VirtioIommu({
      ...options,
      onFault: (f) => {
        ref.dev?.faultRaised();
        userOnFault?.(f);
      },
    });
    super(VIRTIO_ID_IOMMU, iommu.offeredFeatures, 2, options.queueSize ?? 256, CONFIG_SIZE, options);
    ref.dev = this;
    this.iommu = iommu;
    this.#schedule = options.schedule ?? queueMicrotask;
    this.config.set(iommu.config);
  }

  override readConfig(offset: number, size: AccessSize): number {
    // The config space lives in VirtioIommu (bypass changes with the driver's writes and with resets).
    this.config.set(this.iommu.config);
    return super.readConfig(offset, size);
  }

  protected override onConfigWrite(offset: number, size: AccessSize, value: number): void {
    // §5.13.4.1: the driver MUST NOT write any field but bypass, and bypass only with BYPASS_CONFIG.
    const bytes = new Uint8Array(size);
    for (let i = 0; i < size; i++) bytes[i] = (value >>> (8 * i)) & 0xff;
    const before = this.iommu.stats.badConfigWrites;
    this.iommu.writeConfig(offset, bytes);
    if (this.iommu.stats.badConfigWrites !== before) {
      this.guestError('ignored-access', `virtio-iommu config write of ${size} byte(s) at ${offset}: only bypass (offset 36) is writable, with VIRTIO_IOMMU_F_BYPASS_CONFIG (§5.13.4.1)`, { offset, size, value });
    }
    this.config.set(this.iommu.config);
  }

  protected override validateFeatures(f: bigint): string | undefined {
    // No dependencies between virtio-iommu feature bits (§5.13.3); from FEATURES_OK the device
    // honours only what was accepted (range limits, MAP_UNMAP, BYPASS_CONFIG, §5.13.6).
    this.iommu.ackFeatures(f);
    return undefined;
  }

  protected override activate(): void {
    this.#chains = this.queues.map((dq) => dq?.createChain());
  }

  protected override quiesce(): undefined {
    // §5.13.5 / §2.4: a device reset detaches every endpoint and forgets every domain;
    // requests are answered synchronously, so none is in flight.
    this.#chains = [];
    this.iommu.reset();
    this.config.set(this.iommu.config);
    return undefined;
  }

  /** A translation fault was queued: deliver it once the faulting access has returned. */
  private faultRaised(): void {
    if (this.#deliveryScheduled || !this.running) return;
    this.#deliveryScheduled = true;
    this.#schedule(this.#deliver);
  }

  protected override processQueue(q: number): void {
    const dq = this.queues[q];
    const chain = this.#chains[q];
    if (dq === undefined || chain === undefined) return;
    const isEvent = q === IOMMU_EVENT_QUEUE;
    // An event buffer is taken only when a report is waiting (§5.13.6.7: buffers wait for faults).
    if (isEvent && this.iommu.pendingEvents === 0) return;
    let pushed = false;
    try {
      // Bounded: each turn consumes one chain, and there are at most `size` of them available.
      for (;;) {
        if (isEvent && this.iommu.pendingEvents === 0) break;
        if (!dq.pop(chain)) break;
        let used: number;
        try {
          used = isEvent ? this.fillEvent(chain) : this.request(chain);
        } catch (e) {
          // A buffer outside guest memory (§2.1.2: the device needs a reset), as QEMU's virtio_error.
          this.needsReset(new VirtioError('queue-broken', `virtio-iommu queue ${q}: ${e instanceof Error ? e.message : String(e)}`, { queue: q }, { cause: e }));
          return;
        }
        dq.pushUsed(chain, used);
        pushed = true;
      }
    } catch (e) {
      this.queueBroken(q, e);
      return;
    } finally {
      if (pushed && this.running) {
        dq.publishUsed();
        if (dq.needsInterrupt()) this.raiseQueueInterrupt(q);
      }
    }
  }

  private segments(chain: DescriptorChain): void {
    const r = this.#readable;
    const w = this.#writable;
    const pool = this.#pool;
    while (pool.length < chain.count) pool.push({ addr: 0, len: 0 });
    r.length = 0;
    w.length = 0;
    for (let i = 0; i < chain.count; i++) {
      const s = pool[i]!;
      s.addr = chain.addr(i);
      s.len = chain.len(i);
      (i < chain.readableCount ? r : w).push(s);
    }
  }

  private request(chain: DescriptorChain): number {
    this.queueStats.requests++;
    if (chain.count === 2 && chain.readableCount === 1) {
      // The usual request (one readable, one writable descriptor): no segment lists.
      return this.iommu.processRequest(this.mem, chain.addr(0), chain.len(0), chain.addr(1), chain.len(1));
    }
    this.segments(chain);
    return this.iommu.processChain(this.mem, this.#readable, this.#writable);
  }

  private fillEvent(chain: DescriptorChain): number {
    // §5.13.6.7: event buffers are device-writable, room for one struct virtio_iommu_fault.
    if (chain.readableCount !== 0 || chain.writableBytes < FAULT_SIZE) {
      this.queueStats.badEventBuffers++;
      this.guestError('bad-request', `virtio-iommu event buffer with ${chain.readableBytes} device-readable and ${chain.writableBytes} device-writable bytes (needs ${FAULT_SIZE} writable, none readable)`, {
        readable: chain.readableBytes,
        writable: chain.writableBytes,
      });
      return 0;
    }
    this.segments(chain);
    const used = this.iommu.processEvent(this.mem, this.#writable);
    if (used > 0) this.queueStats.events++;
    return used;
  }
}
