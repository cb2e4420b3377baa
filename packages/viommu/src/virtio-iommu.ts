import type { DmaMemory } from '@ioplane/guest-memory';
import * as d from './defs.js';
import { type BypassState, Domain, Endpoint, InvalidationLog, type ReservedRegion } from './domain.js';
import { type FaultRecord, type FaultSink, ViommuError } from './errors.js';
import { Mapping, type UnmapResult } from './mapping-table.js';
import { TranslatingMemory, type TranslationSource } from './translating-memory.js';

/** Host-side configuration of a virtio-iommu device. */
export interface VirtioIommuOptions {
  /** Supported page sizes (VirtIO 1.2 §5.13.4); the lowest set bit is the mapping granule. Default: every size ≥ 4 KiB. */
  pageSizeMask?: bigint;
  /** IOVAs the device translates, inclusive. Default: the whole 64-bit space. */
  inputRange?: { start: bigint; end: bigint };
  /** Domain IDs the device accepts, inclusive. Default: every u32. */
  domainRange?: { start: number; end: number };
  /** Bytes of properties a PROBE answers with. Default 512 (QEMU's). */
  probeSize?: number;
  /** Initial value of config `bypass` (restored on system reset). Default false: unattached endpoints are blocked. */
  bypass?: boolean;
  /** Feature bits offered. Default INPUT_RANGE | DOMAIN_RANGE | MAP_UNMAP | PROBE | MMIO | BYPASS_CONFIG. */
  features?: bigint;
  /** IOTLB entries per domain (a power of two), 0 to disable. Default 512. */
  iotlbEntries?: number;
  /** Mappings one domain may hold; MAP beyond answers NOMEM. Default 65536. */
  maxMappingsPerDomain?: number;
  /** Domains the device may hold; ATTACH creating one more answers NOMEM. Default 65536. */
  maxDomains?: number;
  /** Last guest-physical address a MAP may target; beyond answers RANGE. Default 2^64 − 1. */
  physLimit?: bigint;
  /** Fault reports kept for the event queue before the oldest are dropped. Default 256. */
  maxPendingEvents?: number;
  /** Called with every translation fault (after it is queued for the event queue). */
  onFault?: (fault: FaultRecord) => void;
}

/** One buffer of a descriptor chain: `len` bytes of guest memory at `addr`. */
export interface ChainSegment {
  readonly addr: number;
  readonly len: number;
}

/** Counters, for tests, metrics and the management socket. */
export interface VirtioIommuStats {
  requests: number;
  /** Requests answered without a status (used length 0): unparseable or unknown type. */
  dropped: number;
  /** Answers by status code (index = VIRTIO_IOMMU_S_*). */
  statuses: number[];
  faults: number;
  eventsDropped: number;
  /** Config writes to fields other than `bypass` (the driver MUST NOT), ignored. */
  badConfigWrites: number;
}

const TWO_32 = 0x1_0000_0000;
const TWO_53 = 2 ** 53;
/** The largest high u32 of a u64 below 2^53. */
const MAX_HI_53 = 0x1f_ffff;

export const DEFAULT_FEATURES =
  (1n << BigInt(d.VIRTIO_IOMMU_F_INPUT_RANGE)) |
  (1n << BigInt(d.VIRTIO_IOMMU_F_DOMAIN_RANGE)) |
  (1n << BigInt(d.VIRTIO_IOMMU_F_MAP_UNMAP)) |
  (1n << BigInt(d.VIRTIO_IOMMU_F_PROBE)) |
  (1n << BigInt(d.VIRTIO_IOMMU_F_MMIO)) |
  (1n << BigInt(d.VIRTIO_IOMMU_F_BYPASS_CONFIG));

const KNOWN_FEATURES =
  DEFAULT_FEATURES | (1n << BigInt(d.VIRTIO_IOMMU_F_BYPASS));

/**
 * The virtio-iommu device model (VirtIO 1.2 §5.13, device ID 23), without its
 * transport: `handleRequest` answers one request from the request queue given
 * its device-readable and device-writable bytes; `takeFaultEvent` fills one
 * event-queue buffer; `config` is the configuration space. The virtqueue
 * wiring only moves bytes between descriptor chains and these calls.
 *
 * Endpoints are registered by the host (`addEndpoint`), each with its
 * reserved regions; `dmaMemory(endpoint, ram)` is the `DmaMemory` that
 * device models behind the IOMMU must use.
 */
export class VirtioIommu implements FaultSink {
  readonly offeredFeatures: bigint;
  private negotiated: bigint;
  readonly pageSizeMask: bigint;
  /** The mapping granule: the lowest set bit of `pageSizeMask`. */
  readonly granule: bigint;
  readonly inputRange: { readonly start: bigint; readonly end: bigint };
  readonly domainRange: { readonly start: number; readonly end: number };
  readonly probeSize: number;
  readonly physLimit: bigint;
  private readonly initialBypass: boolean;
  /** The granule as a number (0 when it is above 2^52: then MAP always takes the bigint path). */
  private readonly granuleNum: number;
  /** granule − 1 when the granule is at most 2^31 (alignment checked on the low u32), else −1. */
  private readonly granuleLowMask: number;
  private readonly inputStartNum: number;
  private readonly inputEndNum: number;
  private readonly physLimitNum: number;
  private readonly state: BypassState;
  private readonly iotlbEntries: number;
  private readonly maxMappings: number;
  private readonly maxDomains: number;
  private readonly maxEvents: number;
  private readonly onFault: ((f: FaultRecord) => void) | undefined;
  private readonly endpoints = new Map<number, Endpoint>();
  private readonly domains = new Map<number, Domain>();
  private readonly events: FaultRecord[] = [];
  /** The 40-byte configuration space (§5.13.4), kept current. */
  readonly config = new Uint8Array(d.CONFIG_SIZE);
  private readonly configView = new DataView(this.config.buffer);
  /** Scratch for `processChain` / `processEvent`: the chain is gathered here, never allocated per request. */
  private readonly inScratch = new Uint8Array(128);
  private outScratch: Uint8Array;
  readonly stats: VirtioIommuStats = { requests: 0, dropped: 0, statuses: new Array<number>(9).fill(0), faults: 0, eventsDropped: 0, badConfigWrites: 0 };

  constructor(options: VirtioIommuOptions = {}) {
    const features = options.features ?? DEFAULT_FEATURES;
    if ((features & ~KNOWN_FEATURES) !== 0n) throw new ViommuError('invalid-option', `features 0x${features.toString(16)} name bits this device does not implement`, features);
    if ((features & (1n << BigInt(d.VIRTIO_IOMMU_F_BYPASS))) !== 0n) {
      // §5.13.3.2: new devices SHOULD NOT offer VIRTIO_IOMMU_F_BYPASS; BYPASS_CONFIG supersedes it.
      throw new ViommuError('invalid-option', 'VIRTIO_IOMMU_F_BYPASS is superseded by VIRTIO_IOMMU_F_BYPASS_CONFIG (VirtIO 1.2 §5.13.3.2); offer that instead', features);
    }
    this.offeredFeatures = features;
    this.negotiated = features;
    this.offeredLow = Number(features & 0xff_ffffn);
    this.negotiatedLow = this.offeredLow;
    const mask = options.pageSizeMask ?? d.U64_MAX ^ 0xfffn;
    if (mask <= 0n || mask > d.U64_MAX) throw new ViommuError('invalid-option', `pageSizeMask 0x${mask.toString(16)} must set at least one bit of a u64 (§5.13.4)`, mask);
    this.pageSizeMask = mask;
    this.granule = mask & -mask;
    const ir = options.inputRange ?? { start: 0n, end: d.U64_MAX };
    if (ir.start < 0n || ir.end > d.U64_MAX || ir.start > ir.end) throw new ViommuError('invalid-option', `inputRange [0x${ir.start.toString(16)}, 0x${ir.end.toString(16)}] is not a u64 range`, ir);
    this.inputRange = { start: ir.start, end: ir.end };
    const dr = options.domainRange ?? { start: 0, end: d.U32_MAX };
    if (!isU32(dr.start) || !isU32(dr.end) || dr.start > dr.end) throw new ViommuError('invalid-option', `domainRange [${dr.start}, ${dr.end}] is not a u32 range`, dr);
    this.domainRange = { start: dr.start, end: dr.end };
    this.probeSize = options.probeSize ?? 512;
    if (!isU32(this.probeSize) || this.probeSize > 1 << 20) throw new ViommuError('invalid-option', `probeSize ${this.probeSize} is not between 0 and 1 MiB`, this.probeSize);
    this.physLimit = options.physLimit ?? d.U64_MAX;
    // Number forms for the MAP/UNMAP fast path: exact below 2^53, at least 2^53 above.
    this.granuleNum = this.granule <= 1n << 52n ? Number(this.granule) : 0;
    this.granuleLowMask = this.granule <= 1n << 31n ? Number(this.granule) - 1 : -1;
    this.inputStartNum = Number(this.inputRange.start);
    this.inputEndNum = Number(this.inputRange.end);
    this.physLimitNum = Number(this.physLimit);
    this.initialBypass = options.bypass ?? false;
    this.state = { bypass: false, generation: 0, log: new InvalidationLog() };
    this.iotlbEntries = options.iotlbEntries ?? 512;
    this.maxMappings = positiveInt('maxMappingsPerDomain', options.maxMappingsPerDomain ?? 65536);
    this.maxDomains = positiveInt('maxDomains', options.maxDomains ?? 65536);
    this.maxEvents = positiveInt('maxPendingEvents', options.maxPendingEvents ?? 256);
    this.onFault = options.onFault;
    if (this.iotlbEntries !== 0) new Domain(0, false, 1, this.iotlbEntries); // validates the size now rather than at the first ATTACH
    this.writeConfigSpace(this.initialBypass);
    this.outScratch = new Uint8Array(this.probeSize + d.TAIL_SIZE);
  }

  /** The device-specific feature bits (0–23) as numbers: checked on every request, where bigint masks cost. */
  private negotiatedLow = 0;
  private offeredLow = 0;

  private has(bit: number): boolean {
    return ((this.negotiatedLow >>> bit) & 1) === 1;
  }

  private offers(bit: number): boolean {
    return ((this.offeredLow >>> bit) & 1) === 1;
  }

  /** The driver's accepted features (FEATURES_OK): the device honours only these from now on. */
  ackFeatures(driverFeatures: bigint): void {
    this.negotiated = this.offeredFeatures & driverFeatures;
    this.negotiatedLow = Number(this.negotiated & 0xff_ffffn);
  }

  get negotiatedFeatures(): bigint {
    return this.negotiated;
  }

  private writeConfigSpace(bypass: boolean): void {
    const v = this.configView;
    v.setBigUint64(d.CONFIG_PAGE_SIZE_MASK, this.pageSizeMask, true);
    v.setBigUint64(d.CONFIG_INPUT_RANGE_START, this.inputRange.start, true);
    v.setBigUint64(d.CONFIG_INPUT_RANGE_END, this.inputRange.end, true);
    v.setUint32(d.CONFIG_DOMAIN_RANGE_START, this.domainRange.start, true);
    v.setUint32(d.CONFIG_DOMAIN_RANGE_END, this.domainRange.end, true);
    v.setUint32(d.CONFIG_PROBE_SIZE, this.offers(d.VIRTIO_IOMMU_F_PROBE) ? this.probeSize : 0, true);
    this.setBypass(bypass);
  }

  private setBypass(on: boolean): void {
    // §5.13.4.2: the device never presents anything but 0 or 1.
    this.config[d.CONFIG_BYPASS] = on ? 1 : 0;
    this.bump(-1, 0, Infinity);
    // §5.13.6: bypass applies with BYPASS_CONFIG offered, even if the driver did not accept it.
    this.state.bypass = on && this.offers(d.VIRTIO_IOMMU_F_BYPASS_CONFIG);
  }

  /**
   * A driver write to the configuration space. §5.13.4.1: with BYPASS_CONFIG
   * negotiated the driver may write `bypass` (bits 1–7 are ignored); any other
   * write is ignored and counted.
   */
  writeConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      if (offset + i === d.CONFIG_BYPASS && this.has(d.VIRTIO_IOMMU_F_BYPASS_CONFIG)) this.setBypass((data[i]! & 1) === 1);
      else this.stats.badConfigWrites++;
    }
  }

  /** Whether unattached endpoints are currently in bypass. */
  get bypass(): boolean {
    return this.state.bypass;
  }

  /** Device reset (§5.13.5): every endpoint detached, every domain gone, features renegotiated; `bypass` is kept (§5.13.4.2). */
  reset(): void {
    for (const ep of this.endpoints.values()) ep.domain = undefined;
    for (const dom of this.domains.values()) dom.tlb?.flush();
    this.domains.clear();
    this.bump(-1, 0, Infinity);
    this.events.length = 0;
    this.negotiated = this.offeredFeatures;
    this.negotiatedLow = this.offeredLow;
  }

  /** System reset: a device reset that also restores `bypass` to its initial value. */
  systemReset(): void {
    this.reset();
    this.setBypass(this.initialBypass);
  }

  /** Registers an endpoint the platform puts behind this IOMMU. */
  addEndpoint(id: number, options: { reserved?: readonly ReservedRegion[] } = {}): Endpoint {
    if (!isU32(id)) throw new ViommuError('endpoint', `endpoint ID ${String(id)} is not a u32`, id);
    if (this.endpoints.has(id)) throw new ViommuError('endpoint', `endpoint ${id} is already registered`, id);
    const reserved = options.reserved ?? [];
    for (const r of reserved) {
      if (r.start < 0n || r.end > d.U64_MAX || r.start > r.end) throw new ViommuError('invalid-option', `reserved region [0x${r.start.toString(16)}, 0x${r.end.toString(16)}] of endpoint ${id} is not a u64 range`, r);
      if (r.subtype !== undefined && r.subtype !== d.VIRTIO_IOMMU_RESV_MEM_T_RESERVED && r.subtype !== d.VIRTIO_IOMMU_RESV_MEM_T_MSI) throw new ViommuError('invalid-option', `reserved region subtype ${r.subtype} is neither RESERVED (0) nor MSI (1)`, r);
    }
    if (this.offers(d.VIRTIO_IOMMU_F_PROBE) && reserved.length * d.RESV_MEM_SIZE > this.probeSize) {
      throw new ViommuError('invalid-option', `endpoint ${id} has ${reserved.length} reserved regions, ${reserved.length * d.RESV_MEM_SIZE} bytes of PROBE properties, more than probeSize ${this.probeSize}`, reserved.length);
    }
    const ep = new Endpoint(id, reserved, this.state);
    this.endpoints.set(id, ep);
    return ep;
  }

  endpoint(id: number): Endpoint | undefined {
    return this.endpoints.get(id);
  }

  domain(id: number): Domain | undefined {
    return this.domains.get(id);
  }

  /** IOTLB counters summed over the domains that exist now (for metrics). */
  iotlbTotals(): { hits: number; misses: number; invalidations: number } {
    const t = { hits: 0, misses: 0, invalidations: 0 };
    for (const dom of this.domains.values()) {
      if (dom.tlb === undefined) continue;
      t.hits += dom.tlb.hits;
      t.misses += dom.tlb.misses;
      t.invalidations += dom.tlb.invalidations;
    }
    return t;
  }

  /** Every domain that currently exists. */
  listDomains(): Domain[] {
    return [...this.domains.values()];
  }

  /** The `DmaMemory` through which the device at `endpoint` must reach `ram`. */
  dmaMemory(endpoint: number, ram: DmaMemory): TranslatingMemory {
    return new TranslatingMemory(ram, this.source(endpoint), this, this.iotlbEntries > 0);
  }

  /**
   * The translation source of `endpoint` (what `dmaMemory` translates
   * through), for a caller that builds its own `TranslatingMemory` around it
   * — e.g. one that takes up the request queue whenever the device checks
   * the translation generation, as VT-d's `VtdSource` allows.
   */
  source(endpoint: number): TranslationSource {
    const ep = this.endpoints.get(endpoint);
    if (ep === undefined) throw new ViommuError('endpoint', `endpoint ${endpoint} is not registered (addEndpoint first)`, endpoint);
    return ep;
  }

  /** FaultSink: queues the fault for the event queue (§5.13.6.7), dropping the oldest beyond `maxPendingEvents`. */
  report(fault: FaultRecord): void {
    this.stats.faults++;
    if (this.events.length >= this.maxEvents) {
      this.events.shift();
      this.stats.eventsDropped++;
    }
    this.events.push(fault);
    this.onFault?.(fault);
  }

  get pendingEvents(): number {
    return this.events.length;
  }

  /**
   * Fills one device-writable event-queue buffer with the oldest pending fault
   * report (§5.13.6.7, struct virtio_iommu_fault) and returns the used length
   * (24), or 0 when no fault is pending or the buffer is too small for one
   * (the device SHOULD NOT split a report across buffers; the report stays queued).
   */
  takeFaultEvent(buf: Uint8Array): number {
    const f = this.events[0];
    if (f === undefined || buf.length < d.FAULT_SIZE) return 0;
    this.events.shift();
    encodeFault(f, buf);
    return d.FAULT_SIZE;
  }

  /**
   * Answers one request (§5.13.6). `request` is the device-readable part (head
   * and payload), `response` the device-writable part (the tail, after the
   * properties for PROBE). Returns the used length: bytes written at the start
   * of `response`, or 0 when the request was not understood (too short to hold
   * a head, unknown type, PROBE not offered, or no room for the tail) — then
   * nothing is written (§5.13.6: the driver reads a zero used length as a failure).
   */
  handleRequest(request: Uint8Array, response: Uint8Array): number {
    this.stats.requests++;
    if (request.length < d.HEAD_SIZE) return this.drop();
    const type = request[d.HEAD_TYPE]!;
    const req = this.viewOf(request);
    if (type === d.VIRTIO_IOMMU_T_PROBE) {
      if (!this.offers(d.VIRTIO_IOMMU_F_PROBE)) return this.drop();
      return this.probe(request, req, response);
    }
    let size: number;
    switch (type) {
      case d.VIRTIO_IOMMU_T_ATTACH:
        size = d.ATTACH_READABLE_SIZE;
        break;
      case d.VIRTIO_IOMMU_T_DETACH:
        size = d.DETACH_READABLE_SIZE;
        break;
      case d.VIRTIO_IOMMU_T_MAP:
        size = d.MAP_READABLE_SIZE;
        break;
      case d.VIRTIO_IOMMU_T_UNMAP:
        size = d.UNMAP_READABLE_SIZE;
        break;
      default:
        // §5.13.6.2: an unrecognized type is not written and gets used length 0.
        return this.drop();
    }
    if (response.length < d.TAIL_SIZE) return this.drop();
    let status: d.VirtioIommuStatus;
    if (request.length < size) status = d.VIRTIO_IOMMU_S_INVAL;
    else if (type === d.VIRTIO_IOMMU_T_ATTACH) status = this.attach(req);
    else if (type === d.VIRTIO_IOMMU_T_DETACH) status = this.detach(req);
    else if (!this.has(d.VIRTIO_IOMMU_F_MAP_UNMAP)) status = d.VIRTIO_IOMMU_S_UNSUPP;
    else if (type === d.VIRTIO_IOMMU_T_MAP) status = this.map(req);
    else status = this.unmap(req);
    return this.tail(response, 0, status);
  }

  /**
   * Answers one request-queue element given as descriptor-chain segments in
   * guest memory `mem` (the device's own memory: the IOMMU's queues are not
   * translated by itself). The device-readable segments are gathered (only
   * the first 128 bytes matter: longer payloads are ignored, §5.13.6), the
   * answer is scattered over the device-writable segments; returns the used
   * length. Guest memory errors propagate (the transport marks the device
   * broken, as QEMU's virtio_error does). Bounded by the segment lists, which
   * the virtqueue already bounds by the queue size (VirtIO 1.2 §2.7.5.3.1).
   */
  processChain(mem: DmaMemory, readable: readonly ChainSegment[], writable: readonly ChainSegment[]): number {
    const inBuf = this.inScratch;
    let inLen = 0;
    let total = 0;
    for (let i = 0; i < readable.length; i++) {
      const seg = readable[i]!;
      const n = Math.min(seg.len, inBuf.length - inLen);
      if (n > 0) {
        const dst = inLen === 0 ? this.inView(n) : inBuf.subarray(inLen, inLen + n);
        // Copied, never decoded in place: the guest may rewrite its buffer while we validate.
        // A view of a recurring buffer comes from the memory's view cache (no subarray per request).
        const src = mem.tryView(seg.addr, n, 'read');
        if (src !== undefined) dst.set(src);
        else mem.readInto(seg.addr, dst);
      }
      inLen += n;
      total += seg.len;
    }
    let outLen = 0;
    for (let i = 0; i < writable.length; i++) outLen += writable[i]!.len;
    const out = this.outScratch;
    const used = this.handleRequest(this.inView(Math.min(total, inBuf.length)), this.outView(Math.min(outLen, out.length)));
    const w0 = writable[0];
    // The usual chain: one writable descriptor holding the whole answer.
    if (w0 !== undefined && used === d.TAIL_SIZE && w0.len >= d.TAIL_SIZE) {
      // A bare tail (every request but PROBE): one scalar write.
      mem.writeU32(w0.addr, (out[0]! | (out[1]! << 8) | (out[2]! << 16) | (out[3]! << 24)) >>> 0);
    } else if (w0 !== undefined && used > 0 && used <= w0.len) mem.writeFrom(w0.addr, this.outView(used));
    else scatter(mem, out, used, writable);
    return used;
  }

  /**
   * `processChain` for the usual chain, one device-readable and one
   * device-writable descriptor (every request a driver lays out as
   * head + payload, then tail): no segment lists, no loops.
   */
  processRequest(mem: DmaMemory, readAddr: number, readLen: number, writeAddr: number, writeLen: number): number {
    const n = Math.min(readLen, this.inScratch.length);
    const dst = this.inView(n);
    if (n > 0) {
      // Copied, never decoded in place: the guest may rewrite its buffer while we validate.
      const src = mem.tryView(readAddr, n, 'read');
      if (src !== undefined) dst.set(src);
      else mem.readInto(readAddr, dst);
    }
    const out = this.outScratch;
    const used = this.handleRequest(dst, this.outView(Math.min(writeLen, out.length)));
    if (used === d.TAIL_SIZE) mem.writeU32(writeAddr, (out[0]! | (out[1]! << 8) | (out[2]! << 16) | (out[3]! << 24)) >>> 0);
    else if (used > 0) mem.writeFrom(writeAddr, this.outView(used));
    return used;
  }

  /** `inScratch.subarray(0, n)`, made once per length (no view per request). */
  private inView(n: number): Uint8Array {
    return (this.inViews[n] ??= this.inScratch.subarray(0, n));
  }

  /** `outScratch.subarray(0, n)`, made once per length (the cache is emptied when `outScratch` is replaced). */
  private outView(n: number): Uint8Array {
    return (this.outViews[n] ??= this.outScratch.subarray(0, n));
  }

  private readonly inViews: (Uint8Array | undefined)[] = [];
  private readonly outViews: (Uint8Array | undefined)[] = [];

  /** Fills one event-queue element (device-writable segments) with the oldest pending fault; returns the used length (24 or 0). */
  processEvent(mem: DmaMemory, writable: readonly ChainSegment[]): number {
    let outLen = 0;
    for (const seg of writable) outLen += seg.len;
    if (this.outScratch.length < d.FAULT_SIZE) {
      this.outScratch = new Uint8Array(d.FAULT_SIZE);
      this.outViews.length = 0;
    }
    const out = this.outScratch;
    const used = this.takeFaultEvent(out.subarray(0, Math.min(outLen, d.FAULT_SIZE)));
    scatter(mem, out, used, writable);
    return used;
  }

  /** Two cached DataViews (a driver alternates MAP and UNMAP buffers; processChain uses one scratch). */
  private viewA: DataView | undefined;
  private viewB: DataView | undefined;
  /** The last scratch input view handed to `viewOf` and its DataView. */
  private inViewKey: Uint8Array | undefined;
  private inViewDv: DataView | undefined;

  /** A little-endian view starting at `b`'s first byte, reused when `b` sits where a cached one does. */
  private viewOf(b: Uint8Array): DataView {
    // processChain passes the same scratch view object for every request of a length: identity is enough.
    if (b === this.inViewKey) return this.inViewDv!;
    if (b.buffer === this.inScratch.buffer) {
      const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
      this.inViewKey = b;
      this.inViewDv = v;
      return v;
    }
    const a = this.viewA;
    if (a !== undefined && a.buffer === b.buffer && a.byteOffset === b.byteOffset && a.byteLength >= b.byteLength) return a;
    const c = this.viewB;
    if (c !== undefined && c.buffer === b.buffer && c.byteOffset === b.byteOffset && c.byteLength >= b.byteLength) {
      this.viewB = a;
      this.viewA = c;
      return c;
    }
    const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
    this.viewB = a;
    this.viewA = v;
    return v;
  }

  /**
   * A change that can revoke translations already handed out: a new
   * generation, logged with what it revoked — [start, end) of domain
   * `domain`, or everything (−1) — so translations of other ranges survive it.
   */
  private bump(domain: number, start: number, end: number): void {
    const g = ++this.state.generation;
    this.state.log?.record(g, domain, start, end);
  }

  private drop(): number {
    this.stats.dropped++;
    return 0;
  }

  private tail(response: Uint8Array, at: number, status: d.VirtioIommuStatus): number {
    // §5.13.6.2: the device SHOULD set the tail's reserved bytes to zero.
    response[at] = status;
    response[at + 1] = 0;
    response[at + 2] = 0;
    response[at + 3] = 0;
    this.stats.statuses[status]!++;
    return at + d.TAIL_SIZE;
  }

  /** §5.13.6.1 ATTACH. */
  private attach(req: DataView): d.VirtioIommuStatus {
    const domainId = req.getUint32(d.ATTACH_DOMAIN, true);
    const epId = req.getUint32(d.ATTACH_ENDPOINT, true);
    const flags = req.getUint32(d.ATTACH_FLAGS, true);
    // "If the reserved field of an ATTACH request is not zero, the device MUST reject ... INVAL."
    if (req.getUint32(d.ATTACH_RESERVED, true) !== 0) return d.VIRTIO_IOMMU_S_INVAL;
    // "If the device does not recognize a flags bit, it MUST reject ... INVAL." BYPASS is recognized with BYPASS_CONFIG.
    const known = this.has(d.VIRTIO_IOMMU_F_BYPASS_CONFIG) ? d.VIRTIO_IOMMU_ATTACH_F_BYPASS : 0;
    if ((flags & ~known) !== 0) return d.VIRTIO_IOMMU_S_INVAL;
    const bypass = (flags & d.VIRTIO_IOMMU_ATTACH_F_BYPASS) !== 0;
    // "If the endpoint ... doesn't exist, the device MUST reject ... NOENT."
    const ep = this.endpoints.get(epId);
    if (ep === undefined) return d.VIRTIO_IOMMU_S_NOENT;
    // §5.13.6: with DOMAIN_RANGE negotiated, domain IDs are limited to domain_range.
    if (this.has(d.VIRTIO_IOMMU_F_DOMAIN_RANGE) && (domainId < this.domainRange.start || domainId > this.domainRange.end)) return d.VIRTIO_IOMMU_S_RANGE;
    let dom = this.domains.get(domainId);
    if (dom !== undefined) {
      // "If the domain already exists and the BYPASS flag is not consistent with that domain ... INVAL."
      // Checked before detaching from the old domain, so a refused ATTACH changes nothing.
      if (dom.bypass !== bypass) return d.VIRTIO_IOMMU_S_INVAL;
      if (ep.domain === dom) return d.VIRTIO_IOMMU_S_OK;
      // "If properties of the endpoint are [not] compatible with ... other endpoints already attached ... UNSUPP":
      // an endpoint whose reserved regions the domain already maps could reach them through the domain.
      for (const r of ep.reserved) if (dom.mappings.firstOverlap(r.start, r.end) !== undefined) return d.VIRTIO_IOMMU_S_UNSUPP;
    } else {
      const freed = ep.domain !== undefined && ep.domain.endpoints.size === 1 ? 1 : 0;
      if (this.domains.size - freed >= this.maxDomains) return d.VIRTIO_IOMMU_S_NOMEM;
    }
    // "If the endpoint ... is already attached to another domain, the device SHOULD first detach it."
    if (ep.domain !== undefined) this.detachEndpoint(ep);
    if (dom === undefined) {
      dom = new Domain(domainId, bypass, this.maxMappings, this.iotlbEntries);
      this.domains.set(domainId, dom);
    }
    dom.endpoints.add(ep);
    dom.updateReserved();
    ep.domain = dom;
    this.bump(-1, 0, Infinity);
    return d.VIRTIO_IOMMU_S_OK;
  }

  private detachEndpoint(ep: Endpoint): void {
    const dom = ep.domain;
    if (dom === undefined) return;
    dom.endpoints.delete(ep);
    dom.updateReserved();
    ep.domain = undefined;
    this.bump(-1, 0, Infinity);
    // §5.13.6.2: "After all endpoints have been successfully detached from a domain, it ceases to exist."
    if (dom.endpoints.size === 0) {
      dom.mappings.clear();
      dom.tlb?.flush();
      this.domains.delete(dom.id);
    }
  }

  /** §5.13.6.2 DETACH. The reserved bytes are ignored ("The device MUST ignore reserved"). */
  private detach(req: DataView): d.VirtioIommuStatus {
    const domainId = req.getUint32(d.DETACH_DOMAIN, true);
    const epId = req.getUint32(d.DETACH_ENDPOINT, true);
    const ep = this.endpoints.get(epId);
    if (ep === undefined) return d.VIRTIO_IOMMU_S_NOENT;
    // "If the domain ... doesn't exist, or if the endpoint ... isn't attached to this domain, the device MAY set INVAL."
    if (ep.domain === undefined || ep.domain.id !== domainId) return d.VIRTIO_IOMMU_S_INVAL;
    this.detachEndpoint(ep);
    return d.VIRTIO_IOMMU_S_OK;
  }

  /**
   * §5.13.6.3 MAP. Requests whose addresses all lie below 2^53 (every
   * mapping a `DmaMemory` can use) take `mapNum`, the same rules on numbers
   * without a bigint; the others are decided on exact bigints here.
   */
  private map(req: DataView): d.VirtioIommuStatus {
    const dom = this.mapDomain(req);
    if (typeof dom === 'number') return dom;
    const vsHi = req.getUint32(d.MAP_VIRT_START + 4, true);
    const veHi = req.getUint32(d.MAP_VIRT_END + 4, true);
    const psHi = req.getUint32(d.MAP_PHYS_START + 4, true);
    if (vsHi <= MAX_HI_53 && veHi <= MAX_HI_53 && psHi <= MAX_HI_53 && this.granuleNum !== 0) {
      const vs = vsHi * TWO_32 + req.getUint32(d.MAP_VIRT_START, true);
      const ve = veHi * TWO_32 + req.getUint32(d.MAP_VIRT_END, true);
      const ps = psHi * TWO_32 + req.getUint32(d.MAP_PHYS_START, true);
      // phys_end must be exact too; past 2^53 the bigint path decides.
      if (ve < vs || ps + (ve - vs) < TWO_53) {
        // Alignment on the low words when the granule fits in them (no float modulo per request).
        const m = this.granuleLowMask;
        const aligned =
          m >= 0
            ? (req.getUint32(d.MAP_VIRT_START, true) & m) === 0 && (req.getUint32(d.MAP_PHYS_START, true) & m) === 0 && (req.getUint32(d.MAP_VIRT_END, true) & m) === m
            : vs % this.granuleNum === 0 && ps % this.granuleNum === 0 && (ve + 1) % this.granuleNum === 0;
        return this.mapNum(dom, req.getUint32(d.MAP_FLAGS, true), vs, ve, ps, aligned);
      }
    }
    return this.mapBig(dom, req);
  }

  /**
   * MAP's first checks, which need no address (§5.13.6.3, in the order both
   * paths apply them): the flags, then the domain. The domain, or the status
   * that refuses the request.
   */
  private mapDomain(req: DataView): Domain | d.VirtioIommuStatus {
    const flags = req.getUint32(d.MAP_FLAGS, true);
    // "If the device doesn't recognize a flags bit, it MUST reject ... INVAL." MMIO only with VIRTIO_IOMMU_F_MMIO.
    let known = d.VIRTIO_IOMMU_MAP_F_READ | d.VIRTIO_IOMMU_MAP_F_WRITE;
    if (this.has(d.VIRTIO_IOMMU_F_MMIO)) known |= d.VIRTIO_IOMMU_MAP_F_MMIO;
    if ((flags & ~known) !== 0) return d.VIRTIO_IOMMU_S_INVAL;
    const dom = this.domains.get(req.getUint32(d.MAP_DOMAIN, true));
    if (dom === undefined) return d.VIRTIO_IOMMU_S_NOENT;
    if (dom.bypass) return d.VIRTIO_IOMMU_S_INVAL;
    return dom;
  }

  /** MAP (after `mapDomain`) with virt_start, virt_end, phys_start and phys_end below 2^53: the rules of `mapBig`, in the same order, on numbers. */
  private mapNum(dom: Domain, flags: number, virtStart: number, virtEnd: number, physStart: number, aligned: boolean): d.VirtioIommuStatus {
    if (virtEnd < virtStart) return d.VIRTIO_IOMMU_S_INVAL;
    if (!aligned) return d.VIRTIO_IOMMU_S_RANGE;
    // Number(bound) is exact below 2^53 and at least 2^53 above, so these compare as the bigints do.
    if (this.has(d.VIRTIO_IOMMU_F_INPUT_RANGE) && (virtStart < this.inputStartNum || virtEnd > this.inputEndNum)) return d.VIRTIO_IOMMU_S_RANGE;
    if (physStart + (virtEnd - virtStart) > this.physLimitNum) return d.VIRTIO_IOMMU_S_RANGE;
    const at = dom.mappings.slotNum(virtStart, virtEnd);
    if (at < 0) return d.VIRTIO_IOMMU_S_INVAL;
    if (dom.anyReserved) for (const ep of dom.endpoints) if (ep.reservedOverlapsNum(virtStart, virtEnd)) return d.VIRTIO_IOMMU_S_RANGE;
    if (dom.mappings.size >= this.maxMappings) return d.VIRTIO_IOMMU_S_NOMEM;
    dom.mappings.insertAtNum(at, Mapping.fromNumbers(virtStart, virtEnd, physStart, flags));
    return d.VIRTIO_IOMMU_S_OK;
  }

  /** §5.13.6.3 MAP (after `mapDomain`) on exact u64s. */
  private mapBig(dom: Domain, req: DataView): d.VirtioIommuStatus {
    const virtStart = req.getBigUint64(d.MAP_VIRT_START, true);
    const virtEnd = req.getBigUint64(d.MAP_VIRT_END, true);
    const physStart = req.getBigUint64(d.MAP_PHYS_START, true);
    const flags = req.getUint32(d.MAP_FLAGS, true);
    // "virt_end MUST be strictly greater than virt_start" — read as ≥, as the one-byte granule (page_size_mask bit 0) needs.
    if (virtEnd < virtStart) return d.VIRTIO_IOMMU_S_INVAL;
    // "If virt_start, phys_start or (virt_end + 1) is not aligned on the page granularity ... RANGE."
    const g = this.granule - 1n;
    if ((virtStart & g) !== 0n || (physStart & g) !== 0n || ((virtEnd + 1n) & g) !== 0n) return d.VIRTIO_IOMMU_S_RANGE;
    // "Any mapping request to virtual addresses outside of [input_range] fails."
    if (this.has(d.VIRTIO_IOMMU_F_INPUT_RANGE) && (virtStart < this.inputRange.start || virtEnd > this.inputRange.end)) return d.VIRTIO_IOMMU_S_RANGE;
    // phys_end = phys_start + virt_end − virt_start must stay in the guest-physical space.
    const physEnd = physStart + (virtEnd - virtStart);
    if (physEnd > this.physLimit) return d.VIRTIO_IOMMU_S_RANGE;
    // "If a mapping already exists in the requested range, the device SHOULD reject ... INVAL."
    if (dom.mappings.firstOverlap(virtStart, virtEnd) !== undefined) return d.VIRTIO_IOMMU_S_INVAL;
    // §5.13.6.6.1: "The device SHOULD reject a MAP request that overlaps a RESV_MEM region."
    for (const ep of dom.endpoints) if (ep.reservedOverlaps(virtStart, virtEnd)) return d.VIRTIO_IOMMU_S_RANGE;
    if (dom.mappings.size >= this.maxMappings) return d.VIRTIO_IOMMU_S_NOMEM;
    dom.mappings.insert(new Mapping(virtStart, virtEnd, physStart, flags));
    return d.VIRTIO_IOMMU_S_OK;
  }

  /** Scratch for UNMAP: the mappings one request removed (no array per request). */
  private readonly removedScratch: Mapping[] = [];

  /** §5.13.6.4 UNMAP. */
  private unmap(req: DataView): d.VirtioIommuStatus {
    const domainId = req.getUint32(d.UNMAP_DOMAIN, true);
    // "If the reserved field ... is not zero, the device MAY set INVAL" — and then does not unmap.
    if (req.getUint32(d.UNMAP_RESERVED, true) !== 0) return d.VIRTIO_IOMMU_S_INVAL;
    const dom = this.domains.get(domainId);
    if (dom === undefined) return d.VIRTIO_IOMMU_S_NOENT;
    if (dom.bypass) return d.VIRTIO_IOMMU_S_INVAL;
    const vsHi = req.getUint32(d.UNMAP_VIRT_START + 4, true);
    const veHi = req.getUint32(d.UNMAP_VIRT_END + 4, true);
    let removed: readonly Mapping[];
    if (vsHi <= MAX_HI_53 && veHi <= MAX_HI_53) {
      // Both ends below 2^53: the same rules on numbers (no bigint per request).
      const virtStart = vsHi * TWO_32 + req.getUint32(d.UNMAP_VIRT_START, true);
      const virtEnd = veHi * TWO_32 + req.getUint32(d.UNMAP_VIRT_END, true);
      if (virtEnd < virtStart) return d.VIRTIO_IOMMU_S_INVAL;
      if (this.has(d.VIRTIO_IOMMU_F_INPUT_RANGE) && (virtStart < this.inputStartNum || virtEnd > this.inputEndNum)) return d.VIRTIO_IOMMU_S_RANGE;
      removed = this.removedScratch;
      // "If a mapping affected by the range is not covered in its entirety ... RANGE, and SHOULD NOT remove any mapping."
      if (dom.mappings.unmapNumInto(virtStart, virtEnd, this.removedScratch) !== undefined) return d.VIRTIO_IOMMU_S_RANGE;
    } else {
      const virtStart = req.getBigUint64(d.UNMAP_VIRT_START, true);
      const virtEnd = req.getBigUint64(d.UNMAP_VIRT_END, true);
      if (virtEnd < virtStart) return d.VIRTIO_IOMMU_S_INVAL;
      if (this.has(d.VIRTIO_IOMMU_F_INPUT_RANGE) && (virtStart < this.inputRange.start || virtEnd > this.inputRange.end)) return d.VIRTIO_IOMMU_S_RANGE;
      // "If a mapping affected by the range is not covered in its entirety ... RANGE, and SHOULD NOT remove any mapping."
      const r: UnmapResult = dom.mappings.unmap(virtStart, virtEnd);
      if (!r.ok) return d.VIRTIO_IOMMU_S_RANGE;
      removed = r.removed;
    }
    const n = removed.length;
    if (n > 0) {
      // The IOTLB forgets each removed mapping before the status is written: once
      // the driver sees OK, no endpoint of the domain can use the mapping.
      for (let i = 0; i < n; i++) dom.invalidate(removed[i]!);
      // One bump for the request, logged with the span of what it removed (§5.13.6.4 removes
      // only mappings wholly inside the range, so nothing outside the span changed). The
      // mappings are in IOVA order and disjoint: the span is first start .. last end.
      const lo = removed[0]!.startNum;
      const hi = removed[n - 1]!.endNum + 1;
      if (removed === this.removedScratch) while (this.removedScratch.length > 0) this.removedScratch.pop();
      // Bounds at or above 2^53 are inexact as numbers: widen to infinity (no device address is there).
      this.bump(dom.id, lo >= TWO_53 ? TWO_53 - 1 : lo, hi >= TWO_53 ? Infinity : hi);
    }
    return d.VIRTIO_IOMMU_S_OK;
  }

  /** §5.13.6.5 PROBE. */
  private probe(request: Uint8Array, req: DataView, response: Uint8Array): number {
    const need = this.probeSize + d.TAIL_SIZE;
    if (response.length < d.TAIL_SIZE) return this.drop();
    if (request.length < d.PROBE_READABLE_SIZE || response.length < need) {
      // "If the properties list is smaller than probe_size, the device SHOULD NOT write any property ... INVAL."
      // The tail is then the last 4 bytes of the writable part, where the driver looks for it.
      const at = response.length < need ? response.length - d.TAIL_SIZE : this.probeSize;
      response.fill(0, 0, at);
      return this.tail(response, at, d.VIRTIO_IOMMU_S_INVAL);
    }
    const ep = this.endpoints.get(req.getUint32(d.PROBE_ENDPOINT, true));
    if (ep === undefined) {
      response.fill(0, 0, this.probeSize);
      return this.tail(response, this.probeSize, d.VIRTIO_IOMMU_S_NOENT);
    }
    const out = new DataView(response.buffer, response.byteOffset, response.byteLength);
    let at = 0;
    for (const r of ep.reserved) {
      // struct virtio_iommu_probe_resv_mem; length excludes the 4-byte property header.
      out.setUint16(at, d.VIRTIO_IOMMU_PROBE_T_RESV_MEM, true);
      out.setUint16(at + 2, d.RESV_MEM_SIZE - d.PROBE_PROPERTY_HEADER_SIZE, true);
      response[at + d.RESV_MEM_SUBTYPE] = r.subtype ?? d.VIRTIO_IOMMU_RESV_MEM_T_RESERVED;
      response[at + 5] = 0;
      response[at + 6] = 0;
      response[at + 7] = 0;
      out.setBigUint64(at + d.RESV_MEM_START, r.start, true);
      out.setBigUint64(at + d.RESV_MEM_END, r.end, true);
      at += d.RESV_MEM_SIZE;
    }
    // "If the device doesn't fill all probe_size bytes with properties, it SHOULD fill the remaining bytes with zeroes."
    response.fill(0, at, this.probeSize);
    return this.tail(response, this.probeSize, d.VIRTIO_IOMMU_S_OK);
  }
}

/** Writes the first `used` bytes of `src` over the segments, in order. */
function scatter(mem: DmaMemory, src: Uint8Array, used: number, segs: readonly ChainSegment[]): void {
  let done = 0;
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i]!;
    if (done >= used) break;
    const n = Math.min(seg.len, used - done);
    mem.writeFrom(seg.addr, src.subarray(done, done + n));
    done += n;
  }
}

/** Encodes a fault as struct virtio_iommu_fault (§5.13.6.7) into the first 24 bytes of `buf`. */
export function encodeFault(f: FaultRecord, buf: Uint8Array): void {
  const v = new DataView(buf.buffer, buf.byteOffset, d.FAULT_SIZE);
  let reason: number = d.VIRTIO_IOMMU_FAULT_R_UNKNOWN;
  if (f.reason === 'unattached') reason = d.VIRTIO_IOMMU_FAULT_R_DOMAIN;
  else if (f.reason === 'unmapped' || f.reason === 'permission' || f.reason === 'reserved') reason = d.VIRTIO_IOMMU_FAULT_R_MAPPING;
  const flags = (f.access === 'read' ? d.VIRTIO_IOMMU_FAULT_F_READ : d.VIRTIO_IOMMU_FAULT_F_WRITE) | d.VIRTIO_IOMMU_FAULT_F_ADDRESS;
  buf.fill(0, 0, d.FAULT_SIZE);
  v.setUint8(d.FAULT_REASON, reason);
  v.setUint32(d.FAULT_FLAGS, flags, true);
  v.setUint32(d.FAULT_ENDPOINT, f.endpoint, true);
  v.setBigUint64(d.FAULT_ADDRESS, BigInt(f.address), true);
}

function isU32(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= d.U32_MAX;
}

function positiveInt(name: string, v: number): number {
  if (!Number.isSafeInteger(v) || v < 1) throw new ViommuError('invalid-option', `${name} ${String(v)} is not a positive integer`, v);
  return v;
}
