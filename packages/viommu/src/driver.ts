import * as d from './defs.js';
import type { ReservedRegion } from './domain.js';
import { ViommuError } from './errors.js';
import { DmaMapper, type DmaDomainOptions, roundDown, roundUp } from './dma-mapper.js';

/**
 * The guest side of virtio-iommu, for simulated guests and tests: request
 * encoders, response and event decoders, and a DMA-mapping API with the three
 * invalidation strategies of the vIOMMU paper (Amit, Ben-Yehuda, Tsafrir,
 * Schuster, USENIX ATC 2011): strict, deferred, optimistic teardown.
 */

/** One request as the driver lays it out: a device-readable and a device-writable buffer. */
export class IommuRequest {
  /** Used length the device reported (bytes written at the start of `writable`). */
  used = 0;
  /** A little-endian view of `readable`, for the encoders. */
  readonly view: DataView;
  constructor(
    readonly readable: Uint8Array,
    readonly writable: Uint8Array,
  ) {
    this.view = new DataView(readable.buffer, readable.byteOffset, readable.byteLength);
  }

  /**
   * The status the device wrote: the tail is the last 4 of the `used` bytes.
   * A used length of 0 (or too short for a tail) reads as IOERR, as the Linux
   * driver does (§5.13.6.1: "the driver SHOULD interpret it as a request failure").
   */
  get status(): number {
    if (this.used < d.TAIL_SIZE || this.used > this.writable.length) return d.VIRTIO_IOMMU_S_IOERR;
    return this.writable[this.used - d.TAIL_SIZE]!;
  }

  get type(): number {
    return this.readable[0] ?? 0;
  }
}

function request(readableSize: number, writableSize: number, type: number): { req: IommuRequest; v: DataView } {
  // One buffer for both parts: one allocation per request.
  const both = new Uint8Array(readableSize + writableSize);
  both[d.HEAD_TYPE] = type;
  const req = new IommuRequest(both.subarray(0, readableSize), both.subarray(readableSize));
  return { req, v: req.view };
}

export function attachRequest(domain: number, endpoint: number, flags = 0): IommuRequest {
  const { req, v } = request(d.ATTACH_READABLE_SIZE, d.TAIL_SIZE, d.VIRTIO_IOMMU_T_ATTACH);
  v.setUint32(d.ATTACH_DOMAIN, domain, true);
  v.setUint32(d.ATTACH_ENDPOINT, endpoint, true);
  v.setUint32(d.ATTACH_FLAGS, flags, true);
  return req;
}

export function detachRequest(domain: number, endpoint: number): IommuRequest {
  const { req, v } = request(d.DETACH_READABLE_SIZE, d.TAIL_SIZE, d.VIRTIO_IOMMU_T_DETACH);
  v.setUint32(d.DETACH_DOMAIN, domain, true);
  v.setUint32(d.DETACH_ENDPOINT, endpoint, true);
  return req;
}

/** MAP [virtStart, virtEnd] (inclusive) → physStart with VIRTIO_IOMMU_MAP_F_* `flags`. */
export function mapRequest(domain: number, virtStart: bigint, virtEnd: bigint, physStart: bigint, flags: number): IommuRequest {
  const { req, v } = request(d.MAP_READABLE_SIZE, d.TAIL_SIZE, d.VIRTIO_IOMMU_T_MAP);
  v.setUint32(d.MAP_DOMAIN, domain, true);
  v.setBigUint64(d.MAP_VIRT_START, BigInt.asUintN(64, virtStart), true);
  v.setBigUint64(d.MAP_VIRT_END, BigInt.asUintN(64, virtEnd), true);
  v.setBigUint64(d.MAP_PHYS_START, BigInt.asUintN(64, physStart), true);
  v.setUint32(d.MAP_FLAGS, flags, true);
  return req;
}

export function unmapRequest(domain: number, virtStart: bigint, virtEnd: bigint): IommuRequest {
  const { req, v } = request(d.UNMAP_READABLE_SIZE, d.TAIL_SIZE, d.VIRTIO_IOMMU_T_UNMAP);
  v.setUint32(d.UNMAP_DOMAIN, domain, true);
  v.setBigUint64(d.UNMAP_VIRT_START, BigInt.asUintN(64, virtStart), true);
  v.setBigUint64(d.UNMAP_VIRT_END, BigInt.asUintN(64, virtEnd), true);
  return req;
}

const TWO_32 = 0x1_0000_0000;

/** Writes a u64 given as a number (< 2^53) without making a bigint. */
function setU64(v: DataView, at: number, value: number): void {
  v.setUint32(at, value >>> 0, true);
  v.setUint32(at + 4, Math.floor(value / TWO_32), true);
}

/** Re-encodes a pooled MAP request in place (addresses below 2^53; `end` inclusive). */
function refillMap(req: IommuRequest, domain: number, start: number, end: number, phys: number, flags: number): void {
  const v = req.view;
  v.setUint32(d.MAP_DOMAIN, domain, true);
  setU64(v, d.MAP_VIRT_START, start);
  setU64(v, d.MAP_VIRT_END, end);
  setU64(v, d.MAP_PHYS_START, phys);
  v.setUint32(d.MAP_FLAGS, flags, true);
  req.used = 0;
}

/** Re-encodes a pooled UNMAP request in place. */
function refillUnmap(req: IommuRequest, domain: number, start: number, end: number): void {
  const v = req.view;
  v.setUint32(d.UNMAP_DOMAIN, domain, true);
  setU64(v, d.UNMAP_VIRT_START, start);
  setU64(v, d.UNMAP_VIRT_END, end);
  req.used = 0;
}

/** PROBE `endpoint`; the writable part holds `probeSize` bytes of properties and the tail. */
export function probeRequest(endpoint: number, probeSize: number): IommuRequest {
  const { req, v } = request(d.PROBE_READABLE_SIZE, probeSize + d.TAIL_SIZE, d.VIRTIO_IOMMU_T_PROBE);
  v.setUint32(d.PROBE_ENDPOINT, endpoint, true);
  return req;
}

/**
 * Parses PROBE properties as §5.13.6.5 tells the driver to: stop at type 0 or
 * the end of the buffer; skip (but step over) unknown types and properties with
 * nonzero reserved bits; take each `length` from the header, never from the
 * type. Each step advances by at least 4 bytes, so the loop is bounded.
 */
export function parseProbeProperties(props: Uint8Array): ReservedRegion[] {
  const v = new DataView(props.buffer, props.byteOffset, props.byteLength);
  const out: ReservedRegion[] = [];
  let at = 0;
  while (at + d.PROBE_PROPERTY_HEADER_SIZE <= props.length) {
    const word = v.getUint16(at, true);
    const type = word & d.PROBE_PROPERTY_TYPE_MASK;
    const length = v.getUint16(at + 2, true);
    if (type === d.VIRTIO_IOMMU_PROBE_T_NONE) break;
    const next = at + d.PROBE_PROPERTY_HEADER_SIZE + length;
    if (next > props.length) break;
    if (word >> 12 === 0 && type === d.VIRTIO_IOMMU_PROBE_T_RESV_MEM && length >= d.RESV_MEM_SIZE - d.PROBE_PROPERTY_HEADER_SIZE) {
      const subtype = props[at + d.RESV_MEM_SUBTYPE]!;
      // §5.13.6.6.1: an unknown subtype is treated as RESERVED.
      out.push({
        subtype: subtype === d.VIRTIO_IOMMU_RESV_MEM_T_MSI ? d.VIRTIO_IOMMU_RESV_MEM_T_MSI : d.VIRTIO_IOMMU_RESV_MEM_T_RESERVED,
        start: v.getBigUint64(at + d.RESV_MEM_START, true),
        end: v.getBigUint64(at + d.RESV_MEM_END, true),
      });
    }
    at = next;
  }
  return out;
}

/** A fault report as the driver reads it from the event queue. */
export interface FaultEvent {
  reason: number;
  flags: number;
  endpoint: number;
  /** Present when VIRTIO_IOMMU_FAULT_F_ADDRESS is set. */
  address?: bigint;
}

/** Decodes an event buffer (§5.13.6.7); undefined when the driver must ignore it (short, or `reserved` nonzero). */
export function parseFaultEvent(buf: Uint8Array, used = buf.length): FaultEvent | undefined {
  if (used < d.FAULT_SIZE || buf.length < d.FAULT_SIZE) return undefined;
  if (buf[1] !== 0 || buf[2] !== 0 || buf[3] !== 0) return undefined;
  const v = new DataView(buf.buffer, buf.byteOffset, d.FAULT_SIZE);
  const flags = v.getUint32(d.FAULT_FLAGS, true);
  const ev: FaultEvent = { reason: buf[d.FAULT_REASON]!, flags, endpoint: v.getUint32(d.FAULT_ENDPOINT, true) };
  if ((flags & d.VIRTIO_IOMMU_FAULT_F_ADDRESS) !== 0) ev.address = v.getBigUint64(d.FAULT_ADDRESS, true);
  return ev;
}

/** The configuration space as the driver reads it (§5.13.4). */
export interface IommuConfig {
  pageSizeMask: bigint;
  inputRange: { start: bigint; end: bigint };
  domainRange: { start: number; end: number };
  probeSize: number;
  bypass: number;
}

export function parseConfig(bytes: Uint8Array): IommuConfig {
  if (bytes.length < d.CONFIG_SIZE) throw new ViommuError('invalid-option', `config space of ${bytes.length} bytes is shorter than ${d.CONFIG_SIZE}`, bytes.length);
  const v = new DataView(bytes.buffer, bytes.byteOffset, d.CONFIG_SIZE);
  return {
    pageSizeMask: v.getBigUint64(d.CONFIG_PAGE_SIZE_MASK, true),
    inputRange: { start: v.getBigUint64(d.CONFIG_INPUT_RANGE_START, true), end: v.getBigUint64(d.CONFIG_INPUT_RANGE_END, true) },
    domainRange: { start: v.getUint32(d.CONFIG_DOMAIN_RANGE_START, true), end: v.getUint32(d.CONFIG_DOMAIN_RANGE_END, true) },
    probeSize: v.getUint32(d.CONFIG_PROBE_SIZE, true),
    // §5.13.4.1: the driver SHOULD ignore bits 1–7.
    bypass: bytes[d.CONFIG_BYPASS]! & 1,
  };
}

/**
 * How requests reach the device. `submit` adds the whole batch to the request
 * queue, notifies once, and returns when every request has been used (sets
 * each `used`). A simulated guest in a worker blocks on the used ring; tests
 * call the device directly (`directTransport`).
 */
export interface IommuTransport {
  /** Submits the first `count` requests of `batch` (default: all of them). */
  submit(batch: readonly IommuRequest[], count?: number): void;
}

/** A transport that hands each request straight to a device's `handleRequest` (no virtqueue). */
export function directTransport(device: { handleRequest(request: Uint8Array, response: Uint8Array): number }): IommuTransport & { kicks: number } {
  const t = {
    kicks: 0,
    submit(batch: readonly IommuRequest[], count = batch.length): void {
      t.kicks++;
      for (let i = 0; i < count; i++) {
        const r = batch[i]!;
        r.used = device.handleRequest(r.readable, r.writable);
      }
    },
  };
  return t;
}

/** The guest driver: attaches endpoints to domains and hands out per-domain DMA mappers. */
export class GuestIommuDriver {
  readonly config: IommuConfig;
  readonly granule: number;
  private nextDomain: number;
  /** Scratch batch of one request (`send`). */
  private readonly one: IommuRequest[] = [];

  constructor(
    readonly transport: IommuTransport,
    config: IommuConfig,
    /** Milliseconds, monotonic: the guest's clock (injected so tests are deterministic). */
    readonly now: () => number = () => 0,
    /** A one-shot timer on the guest's thread: deferred and optimistic teardown by age runs from it (see `MapperHost.schedule`). */
    readonly schedule?: (callback: () => void, delayMs: number) => void,
  ) {
    this.config = config;
    const g = config.pageSizeMask & -config.pageSizeMask;
    if (g === 0n || g > 1n << 30n) throw new ViommuError('invalid-option', `page_size_mask 0x${config.pageSizeMask.toString(16)} has no usable granule`, config.pageSizeMask);
    this.granule = Number(g);
    this.nextDomain = config.domainRange.start;
  }

  /** Sends one request and throws unless it succeeded. */
  send(req: IommuRequest): void {
    const one = this.one;
    one[0] = req;
    this.transport.submit(one);
    if (req.status !== d.VIRTIO_IOMMU_S_OK) {
      throw new ViommuError('request-failed', `virtio-iommu request type ${req.type} failed with ${d.STATUS_NAMES[req.status] ?? req.status}`, req.type, req.status);
    }
  }

  /** PROBE an endpoint: its reserved regions. */
  probe(endpoint: number): ReservedRegion[] {
    const req = probeRequest(endpoint, this.config.probeSize);
    this.send(req);
    return parseProbeProperties(req.writable.subarray(0, this.config.probeSize));
  }

  /**
   * Creates a domain for `endpoint` (probing it first, §5.13.5), attaches it,
   * and returns the domain's DMA mapper.
   */
  attach(endpoint: number, options: DmaDomainOptions = {}): DmaDomain {
    const reserved = this.config.probeSize > 0 ? this.probe(endpoint) : [];
    const id = this.nextDomain++;
    this.send(attachRequest(id, endpoint, options.bypass === true ? d.VIRTIO_IOMMU_ATTACH_F_BYPASS : 0));
    return new DmaDomain(this, id, [endpoint], reserved, options);
  }
}

/** A virtio-iommu domain's DMA-mapping API: maps and unmaps go as MAP and UNMAP requests on the request queue. */
export class DmaDomain extends DmaMapper {
  /** Request buffers for staged MAPs, reused from batch to batch: the driver makes no request objects in steady state. */
  private readonly mapReqs: IommuRequest[] = [];
  private readonly unmapReqs: IommuRequest[] = [];

  constructor(
    readonly driver: GuestIommuDriver,
    id: number,
    readonly endpoints: number[],
    readonly reserved: readonly ReservedRegion[],
    options: DmaDomainOptions,
  ) {
    const g = driver.granule;
    const ir = driver.config.inputRange;
    // IOVAs handed to devices must be numbers (DmaMemory), so the allocator works below 2^53;
    // IOVA 0 is left out so a zero address is never a valid DMA address.
    const start = Math.max(g, roundUp(Number(ir.start), g));
    const end = Math.min(2 ** 53, Number(ir.end < BigInt(2 ** 53) ? ir.end + 1n : BigInt(2 ** 53)));
    const holes = reserved.map((r) => ({ start: roundDown(Number(r.start), g), end: roundUp(Number(r.end) + 1, g) }));
    super(driver, id, start, Math.floor(end / g) * g, holes, options);
  }

  protected stageMap(k: number, iova: number, size: number, gpaPage: number, flags: number): void {
    const pool = this.mapReqs;
    if (k === pool.length) pool.push(mapRequest(0, 0n, 0n, 0n, 0));
    refillMap(pool[k]!, this.id, iova, iova + size - 1, gpaPage, flags);
  }

  protected commitMaps(n: number): boolean {
    this.stats.requests += n;
    // The pool may hold more requests than are staged: send only the first n (no slice per batch).
    this.driver.transport.submit(this.mapReqs, n);
    for (let i = 0; i < n; i++) if (this.mapReqs[i]!.status !== d.VIRTIO_IOMMU_S_OK) return false;
    return true;
  }

  protected mapError(k: number): Error | undefined {
    return requestError(this.mapReqs[k]!);
  }

  protected stageUnmap(r: number, start: number, end: number): void {
    const reqs = this.unmapReqs;
    if (r === reqs.length) reqs.push(unmapRequest(0, 0n, 0n));
    refillUnmap(reqs[r]!, this.id, start, end - 1);
  }

  protected commitUnmaps(n: number): boolean {
    this.stats.requests += n;
    this.driver.transport.submit(this.unmapReqs, n);
    for (let i = 0; i < n; i++) if (this.unmapReqs[i]!.status !== d.VIRTIO_IOMMU_S_OK) return false;
    return true;
  }

  protected unmapError(r: number): Error | undefined {
    return requestError(this.unmapReqs[r]!);
  }

  /** Flushes pending unmaps and detaches every endpoint (the domain then ceases to exist in the device). */
  destroy(): void {
    this.flush();
    for (const ep of this.endpoints) this.driver.send(detachRequest(this.id, ep));
  }
}

function requestError(req: IommuRequest): ViommuError | undefined {
  if (req.status === d.VIRTIO_IOMMU_S_OK) return undefined;
  return new ViommuError('request-failed', `virtio-iommu request type ${req.type} failed with ${d.STATUS_NAMES[req.status] ?? req.status}`, req.type, req.status);
}
