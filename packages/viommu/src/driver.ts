import * as d from './defs.js';
import type { ReservedRegion } from './domain.js';
import { ViommuError } from './errors.js';

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

/** Which way a DMA buffer goes, as in the Linux DMA API. */
export type DmaDirection = 'to-device' | 'from-device' | 'bidirectional';

/**
 * Invalidation strategies (vIOMMU paper §3–4):
 * - `strict`: every unmap sends UNMAP and waits for it; on return the device cannot reach the buffer.
 * - `deferred`: unmaps are queued and sent in batches (one notification) when `batchSize` are pending
 *   or the oldest is `flushDelayMs` old; IOVAs are reused only after their UNMAP completed.
 * - `optimistic`: unmapped mappings stay live in the device for reuse by a later map of the same pages
 *   and direction; they are torn down (batched UNMAP) beyond `quota` or after `timeoutMs`.
 */
export type InvalidationMode = 'strict' | 'deferred' | 'optimistic';

export interface DmaDomainOptions {
  mode?: InvalidationMode;
  /** deferred: UNMAPs per batch (Linux's flush queue holds 256). Default 256. */
  batchSize?: number;
  /** deferred: the longest an unmapped buffer stays reachable (Linux: 10 ms). Default 10. */
  flushDelayMs?: number;
  /** optimistic: cached mappings kept at most. Default 256. */
  quota?: number;
  /** optimistic: how long a cached mapping may stay live after its unmap. Default 10. */
  timeoutMs?: number;
  /** Attach with VIRTIO_IOMMU_ATTACH_F_BYPASS (needs BYPASS_CONFIG). */
  bypass?: boolean;
}

export interface DriverStats {
  maps: number;
  unmaps: number;
  /** MAP and UNMAP requests sent. */
  requests: number;
  /** Batches submitted (one notification each). */
  batches: number;
  /** optimistic: maps served from the cache without a MAP request. */
  reused: number;
}

interface LiveMapping {
  iova: number;
  size: number;
  gpaPage: number;
  flags: number;
  /** Time of unmap (deferred/optimistic). */
  at: number;
  /** Made by `mapAt`: never reused by optimistic teardown. */
  fixed: boolean;
}

/**
 * Next-fit IOVA allocator over [start, end) with coalescing frees: each
 * allocation starts where the previous one ended (the free interval holding
 * or following that point), wrapping to the lowest free address when nothing
 * fits above — as Linux's IOVA allocator resumes from its cached node. So a
 * freed IOVA is not handed out again at once (a stale device access after a
 * strict unmap hits nothing, not someone else's buffer), consecutive
 * allocations are adjacent (a deferred batch goes as one range UNMAP) and
 * new mappings land at the top of the device's sorted table (an append, not
 * an insertion). O(log n) in the number of free intervals.
 */
class IovaAllocator {
  /** Free intervals [s, e), sorted, disjoint, not adjacent. */
  private free: number[] = [];
  /** Where the next search starts: the end of the last allocation. */
  private cursor = 0;
  constructor(start: number, end: number, holes: readonly { start: number; end: number }[]) {
    let at = start;
    for (const h of [...holes].sort((a, b) => a.start - b.start)) {
      if (h.end <= at || h.start >= end) continue;
      if (h.start > at) this.free.push(at, h.start);
      at = Math.max(at, h.end);
    }
    if (at < end) this.free.push(at, end);
  }

  alloc(size: number): number | undefined {
    const f = this.free;
    // The first interval ending after the cursor (binary search over the ends).
    let lo = 0;
    let hi = f.length / 2;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (f[2 * mid + 1]! <= this.cursor) lo = mid + 1;
      else hi = mid;
    }
    for (let i = 2 * lo; i < f.length; i += 2) {
      const s = f[i]!;
      const e = f[i + 1]!;
      const at = s < this.cursor ? this.cursor : s;
      if (e - at >= size) return this.cut(i, at, size);
    }
    // Wrap: first fit from the bottom.
    for (let i = 0; i < f.length; i += 2) {
      const s = f[i]!;
      if (f[i + 1]! - s >= size) return this.cut(i, s, size);
    }
    return undefined;
  }

  /** Takes [at, at+size) out of free interval `i` (which holds it) and moves the cursor past it. */
  private cut(i: number, at: number, size: number): number {
    const f = this.free;
    const s = f[i]!;
    const e = f[i + 1]!;
    const end = at + size;
    if (s === at && e === end) f.splice(i, 2);
    else if (s === at) f[i] = end;
    else if (e === end) f[i + 1] = at;
    else f.splice(i + 1, 0, at, end);
    this.cursor = end;
    return at;
  }

  /** Takes exactly [s, s+size) if it is free; false otherwise. */
  take(s: number, size: number): boolean {
    const e = s + size;
    const f = this.free;
    for (let i = 0; i < f.length; i += 2) {
      const fs = f[i]!;
      const fe = f[i + 1]!;
      if (fs > s) return false;
      if (fe < e) continue;
      if (fs === s && fe === e) f.splice(i, 2);
      else if (fs === s) f[i] = e;
      else if (fe === e) f[i + 1] = s;
      else f.splice(i + 1, 0, s, e);
      return true;
    }
    return false;
  }

  release(s: number, size: number): void {
    const e = s + size;
    const f = this.free;
    let i = 0;
    while (i < f.length && f[i]! < s) i += 2;
    const mergePrev = i > 0 && f[i - 1] === s;
    const mergeNext = i < f.length && f[i] === e;
    if (mergePrev && mergeNext) {
      f[i - 1] = f[i + 1]!;
      f.splice(i, 2);
    } else if (mergePrev) f[i - 1] = e;
    else if (mergeNext) f[i] = s;
    else f.splice(i, 0, s, e);
  }
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

/** A domain's DMA-mapping API: `map` before a device touches a buffer, `unmap` after. */
export class DmaDomain {
  readonly mode: InvalidationMode;
  readonly stats: DriverStats = { maps: 0, unmaps: 0, requests: 0, batches: 0, reused: 0 };
  private readonly iovas: IovaAllocator;
  /**
   * Live mappings by IOVA page number (iova / granule), not by IOVA: next-fit
   * IOVAs climb past 2^31 after half a million 4 KiB maps, and a Map keyed by
   * numbers that are not small integers hashes heap numbers — about twice the
   * cost per set/get/delete. Page numbers stay small integers up to 8 TiB of IOVA.
   */
  private readonly live = new Map<number, LiveMapping>();
  /** deferred: unmapped, UNMAP not yet sent. optimistic: unmapped, still live in the device (oldest first). */
  private pending: LiveMapping[] = [];
  /** optimistic: unmapped mappings still live in the device, by guest page (then matched on size and flags). */
  private readonly cache = new Map<number, LiveMapping[]>();
  /** Records of mappings fully torn down, reused by the next map (no object per request in steady state). */
  private readonly spare: LiveMapping[] = [];
  /** Request buffers reused from call to call: the driver makes no request objects in steady state. */
  private readonly mapReq = mapRequest(0, 0n, 0n, 0n, 0);
  private readonly unmapReqs: IommuRequest[] = [];
  /** Scratch for `sendUnmaps`: the batch in IOVA order. */
  private readonly sortScratch: LiveMapping[] = [];
  /** Scratch for `sendUnmaps`: where each run of adjacent mappings starts. */
  private readonly runStarts: number[] = [];
  private readonly batchSize: number;
  private readonly flushDelay: number;
  private readonly quota: number;
  private readonly timeout: number;

  constructor(
    readonly driver: GuestIommuDriver,
    readonly id: number,
    readonly endpoints: number[],
    readonly reserved: readonly ReservedRegion[],
    options: DmaDomainOptions,
  ) {
    this.mode = options.mode ?? 'strict';
    this.batchSize = options.batchSize ?? 256;
    this.flushDelay = options.flushDelayMs ?? 10;
    this.quota = options.quota ?? 256;
    this.timeout = options.timeoutMs ?? 10;
    const g = driver.granule;
    const ir = driver.config.inputRange;
    // IOVAs handed to devices must be numbers (DmaMemory), so the allocator works below 2^53;
    // IOVA 0 is left out so a zero address is never a valid DMA address.
    const start = Math.max(g, roundUp(Number(ir.start), g));
    const end = Math.min(2 ** 53, Number(ir.end < BigInt(2 ** 53) ? ir.end + 1n : BigInt(2 ** 53)));
    const holes = reserved.map((r) => ({ start: roundDown(Number(r.start), g), end: roundUp(Number(r.end) + 1, g) }));
    this.iovas = new IovaAllocator(start, Math.floor(end / g) * g, holes);
  }

  /** Mappings whose IOVA a device may currently use (live, plus unmapped-but-not-yet-invalidated). */
  get reachable(): number {
    return this.live.size + this.pending.length;
  }

  /**
   * Maps [gpa, gpa+len) for a device and returns the IOVA of `gpa`. The MAP
   * covers whole granules; the device may reach the rest of them too.
   */
  map(gpa: number, len: number, dir: DmaDirection): number {
    const iova = this.queueMap(gpa, len, dir);
    this.syncMaps();
    return iova;
  }

  /**
   * `map` without waiting: the IOVA is chosen and the MAP request built, but
   * it is sent only by the next `syncMaps()` (or `map`, `unmap`, `flush`,
   * `destroy`), together with every other queued MAP, in one submission —
   * one notification for a burst of requests, as Linux's virtio-iommu driver
   * adds each MAP to the request queue in `map_pages` and kicks once in
   * `iotlb_sync_map`. The caller MUST NOT hand the IOVA to a device before
   * `syncMaps()` returned: until then the device has no such mapping (an
   * access faults; nothing is reachable that was not mapped). An optimistic
   * reuse needs no request and is usable at once. It does not read the clock
   * (`syncMaps` does).
   */
  queueMap(gpa: number, len: number, dir: DmaDirection): number {
    if (!Number.isSafeInteger(gpa) || gpa < 0 || !Number.isSafeInteger(len) || len <= 0) {
      throw new ViommuError('driver-state', `cannot map ${String(len)} byte(s) at GPA ${String(gpa)}`, gpa);
    }
    const g = this.driver.granule;
    const gpaPage = roundDown(gpa, g);
    const size = roundUp(gpa + len, g) - gpaPage;
    const flags = dirFlags(dir);
    this.stats.maps++;
    if (this.mode === 'optimistic') {
      const hit = this.takeCached(gpaPage, size, flags);
      if (hit !== undefined) {
        this.pending.splice(this.pending.indexOf(hit), 1);
        this.live.set(hit.iova / this.driver.granule, hit);
        this.stats.reused++;
        return hit.iova + (gpa - gpaPage);
      }
    }
    let iova = this.iovas.alloc(size);
    if (iova === undefined && this.pending.length > 0) {
      this.flush();
      iova = this.iovas.alloc(size);
    }
    if (iova === undefined) throw new ViommuError('driver-state', `IOVA space of domain ${this.id} exhausted (${size} bytes wanted)`, size);
    const k = this.queued.length;
    const pool = this.mapReqs;
    if (k === pool.length) pool.push(mapRequest(0, 0n, 0n, 0n, 0));
    refillMap(pool[k]!, this.id, iova, iova + size - 1, gpaPage, flags);
    this.queued.push(this.record(iova, gpaPage, size, flags, false));
    return iova + (gpa - gpaPage);
  }

  /**
   * Sends every queued MAP in one submission (one notification) and returns
   * when the device has answered them all: from then on the device may use
   * their IOVAs. Throws the first failure after forgetting every failed
   * mapping (its IOVA returns to the allocator); the others stand.
   */
  syncMaps(): void {
    this.expire();
    this.sendQueued();
  }

  /** `syncMaps` without applying the clock. */
  private sendQueued(): void {
    const q = this.queued;
    const n = q.length;
    if (n === 0) return;
    const reqs = this.mapReqs;
    this.stats.requests += n;
    this.stats.batches++;
    try {
      // The pool may hold more requests than are queued: send only the first n (no slice per batch).
      this.driver.transport.submit(reqs, n);
    } catch (e) {
      // The transport failed as a whole: nothing is known to be mapped.
      for (const m of q) this.forget(m);
      q.length = 0;
      throw e;
    }
    let failed: IommuRequest | undefined;
    for (let i = 0; i < n; i++) {
      const req = reqs[i]!;
      if (req.status === d.VIRTIO_IOMMU_S_OK) continue;
      failed ??= req;
      this.forget(q[i]!);
    }
    clear(q);
    if (failed !== undefined) {
      throw new ViommuError('request-failed', `virtio-iommu request type ${failed.type} failed with ${d.STATUS_NAMES[failed.status] ?? failed.status}`, failed.type, failed.status);
    }
  }

  /** A mapping whose MAP did not succeed: not live, IOVA free again. */
  private forget(m: LiveMapping): void {
    this.live.delete(m.iova / this.driver.granule);
    this.iovas.release(m.iova, m.size);
  }

  /** MAPs built by `queueMap`, not yet sent (their records, in `mapReqs` order). */
  private readonly queued: LiveMapping[] = [];
  /** Request buffers for queued MAPs, reused from batch to batch. */
  private readonly mapReqs: IommuRequest[] = [];

  /**
   * Maps [gpa, gpa+len) at a fixed IOVA (whole granules): `mapAt(gpa, gpa, …)`
   * is an identity ("direct") mapping, as a guest sets up for memory a device
   * must reach at its physical address — e.g. virtqueue rings a driver placed
   * before it knew of the IOMMU. Fails if any part of the IOVA range is in use
   * or outside the domain's IOVA space (reserved regions included). Undone by
   * `unmap(iova)`, in the domain's mode; never reused by optimistic teardown.
   */
  mapAt(iova: number, gpa: number, len: number, dir: DmaDirection): number {
    this.syncMaps();
    const g = this.driver.granule;
    if (!Number.isSafeInteger(gpa) || gpa < 0 || !Number.isSafeInteger(iova) || iova < 0 || !Number.isSafeInteger(len) || len <= 0 || iova % g !== gpa % g) {
      throw new ViommuError('driver-state', `cannot map ${String(len)} byte(s) at GPA ${String(gpa)} to IOVA ${String(iova)} (offsets within a ${g}-byte granule must agree)`, gpa);
    }
    const gpaPage = roundDown(gpa, g);
    const iovaPage = roundDown(iova, g);
    const size = roundUp(gpa + len, g) - gpaPage;
    if (!this.iovas.take(iovaPage, size)) {
      if (this.pending.length > 0) this.flush();
      if (!this.iovas.take(iovaPage, size)) throw new ViommuError('driver-state', `IOVA range 0x${iovaPage.toString(16)}+0x${size.toString(16)} of domain ${this.id} is in use, reserved or outside input_range`, iovaPage);
    }
    this.stats.maps++;
    // Fixed mappings never enter the optimistic cache.
    return this.sendMap(iovaPage, gpaPage, size, dirFlags(dir), true) + (gpa - gpaPage);
  }

  /** optimistic: the most recently unmapped cached mapping of exactly these pages and flags, removed from the cache. */
  private takeCached(gpaPage: number, size: number, flags: number): LiveMapping | undefined {
    const list = this.cache.get(gpaPage);
    if (list === undefined) return undefined;
    for (let i = list.length - 1; i >= 0; i--) {
      const m = list[i]!;
      if (m.size === size && m.flags === flags) {
        list.splice(i, 1);
        if (list.length === 0) this.cache.delete(gpaPage);
        return m;
      }
    }
    return undefined;
  }

  private sendMap(iova: number, gpaPage: number, size: number, flags: number, fixed: boolean): number {
    const req = this.mapReq;
    refillMap(req, this.id, iova, iova + size - 1, gpaPage, flags);
    this.stats.requests++;
    this.stats.batches++;
    try {
      this.driver.send(req);
    } catch (e) {
      this.iovas.release(iova, size);
      throw e;
    }
    this.record(iova, gpaPage, size, flags, fixed);
    return iova;
  }

  /** A live-mapping record (recycled), entered in `live`. */
  private record(iova: number, gpaPage: number, size: number, flags: number, fixed: boolean): LiveMapping {
    const m = this.spare.pop() ?? { iova: 0, size: 0, gpaPage: 0, flags: 0, at: 0, fixed: false };
    m.iova = iova;
    m.size = size;
    m.gpaPage = gpaPage;
    m.flags = flags;
    m.at = 0;
    m.fixed = fixed;
    this.live.set(iova / this.driver.granule, m);
    return m;
  }

  /** Ends the device's use of the buffer mapped at `iova` (what it guarantees depends on the mode; see the README). */
  unmap(iova: number): void {
    // A MAP still queued goes first: UNMAP must find what it removes.
    if (this.queued.length > 0) this.sendQueued();
    const m = this.takeLive(iova);
    this.stats.unmaps++;
    if (this.mode === 'strict') {
      const one = this.one;
      one[0] = m;
      this.sendUnmaps(one, 1);
      return;
    }
    const now = this.driver.now();
    this.retire(m, now);
    this.expireAt(now);
  }

  /**
   * `unmap` of the first `count` IOVAs of `iovas` in one call, as a DMA API
   * unmaps a scatter list or a completion batch. strict: every UNMAP goes in
   * one submission (one notification) — mappings with adjacent IOVA ranges in
   * one range UNMAP — and on return the device can reach none of the buffers,
   * exactly as after `count` calls of `unmap`. deferred / optimistic: the same
   * as calling `unmap` for each, with one clock read. Throws, changing
   * nothing, if an IOVA is not mapped (or is named twice).
   */
  unmapMany(iovas: ArrayLike<number>, count: number = iovas.length): void {
    if (!Number.isSafeInteger(count) || count < 0 || count > iovas.length) throw new ViommuError('driver-state', `cannot unmap ${String(count)} of ${iovas.length} IOVAs`, count);
    if (count === 0) return;
    if (this.queued.length > 0) this.sendQueued();
    const batch = this.manyBatch;
    clear(batch);
    try {
      for (let i = 0; i < count; i++) batch.push(this.takeLive(iovas[i]!));
    } catch (e) {
      // Nothing changes: the mappings already taken are live again.
      for (const m of batch) this.live.set(m.iova / this.driver.granule, m);
      clear(batch);
      throw e;
    }
    this.stats.unmaps += count;
    if (this.mode === 'strict') {
      try {
        this.sendUnmaps(batch, count);
      } finally {
        clear(batch);
      }
      return;
    }
    const now = this.driver.now();
    for (let i = 0; i < count; i++) this.retire(batch[i]!, now);
    clear(batch);
    this.expireAt(now);
  }

  /** Scratch for `unmapMany`: the records being unmapped. */
  private readonly manyBatch: LiveMapping[] = [];

  /** Removes and returns the live mapping holding `iova`'s granule; throws if there is none. */
  private takeLive(iova: number): LiveMapping {
    const page = Math.floor(iova / this.driver.granule);
    const m = this.live.get(page);
    if (m === undefined) {
      const name = typeof iova === 'number' && Number.isFinite(iova) ? `0x${iova.toString(16)}` : String(iova);
      throw new ViommuError('driver-state', `IOVA ${name} is not mapped in domain ${this.id}`, iova);
    }
    this.live.delete(page);
    return m;
  }

  /** deferred / optimistic: `m` was unmapped at `now`; queue it (and send what is due by count; the clock is applied by the caller). */
  private retire(m: LiveMapping, now: number): void {
    m.at = now;
    this.pending.push(m);
    if (this.mode === 'optimistic') {
      if (!m.fixed) {
        let list = this.cache.get(m.gpaPage);
        if (list === undefined) this.cache.set(m.gpaPage, (list = []));
        list.push(m);
      }
      if (this.pending.length > this.quota) this.teardown(this.pending.length - this.quota);
    } else if (this.pending.length >= this.batchSize) {
      this.flush();
    }
  }

  /** Scratch batch of one (strict unmap). */
  private readonly one: LiveMapping[] = [];

  /** Applies the clock: sends the deferred batch, or tears down expired cached mappings, when due. */
  expire(): void {
    if (this.pending.length === 0) return;
    this.expireAt(this.driver.now());
  }

  private expireAt(now: number): void {
    const p = this.pending;
    if (p.length === 0) return;
    if (this.mode === 'deferred') {
      if (now - p[0]!.at >= this.flushDelay) this.flush();
    } else if (this.mode === 'optimistic') {
      let n = 0;
      while (n < p.length && now - p[n]!.at >= this.timeout) n++;
      if (n > 0) this.teardown(n);
    }
  }

  /** Sends every pending UNMAP now (one batch); afterwards no unmapped buffer is reachable. */
  flush(): void {
    this.sendQueued();
    if (this.pending.length === 0) return;
    this.teardown(this.pending.length);
  }

  /** Sends UNMAP for the `n` oldest pending mappings in one batch. */
  private teardown(n: number): void {
    let batch: LiveMapping[];
    if (n === this.pending.length) {
      // The whole queue (every deferred flush): swap in the empty spare array, no copy.
      batch = this.pending;
      this.pending = this.drained;
      this.drained = batch;
    } else batch = this.pending.splice(0, n);
    if (this.mode === 'optimistic') {
      for (const m of batch) {
        if (m.fixed) continue;
        const list = this.cache.get(m.gpaPage)!;
        list.splice(list.indexOf(m), 1);
        if (list.length === 0) this.cache.delete(m.gpaPage);
      }
    }
    try {
      this.sendUnmaps(batch, batch.length);
    } finally {
      if (batch === this.drained) clear(batch);
    }
  }

  /** The array `pending` last swapped out (empty between teardowns). */
  private drained: LiveMapping[] = [];

  /**
   * Sends the UNMAPs for `batch` in one submission (one notification).
   * Mappings whose IOVA ranges are adjacent go in one UNMAP covering the run:
   * §5.13.6.4 removes every mapping wholly inside [virt_start, virt_end], and
   * nothing else can lie between adjacent ranges, so no live mapping is
   * touched and none is split. A deferred batch, allocated next-fit, is
   * mostly one run: one request for up to `batchSize` unmaps.
   */
  private sendUnmaps(batch: LiveMapping[], count: number): void {
    if (count === 0) return;
    let sorted = batch;
    if (count > 1) {
      // Sorted in a scratch array (no array or closure per batch); usually already in order (next-fit).
      sorted = this.sortScratch;
      clear(sorted);
      for (let i = 0; i < count; i++) sorted.push(batch[i]!);
      if (!isSortedByIova(sorted)) sorted.sort(byIova);
    }
    const runs = this.runStarts;
    clear(runs);
    for (let i = 0; i < count; i++) {
      if (i === 0 || sorted[i - 1]!.iova + sorted[i - 1]!.size !== sorted[i]!.iova) runs.push(i);
    }
    runs.push(count);
    const n = runs.length - 1;
    const reqs = this.unmapReqs;
    while (reqs.length < n) reqs.push(unmapRequest(0, 0n, 0n));
    for (let r = 0; r < n; r++) {
      const first = sorted[runs[r]!]!;
      const last = sorted[runs[r + 1]! - 1]!;
      refillUnmap(reqs[r]!, this.id, first.iova, last.iova + last.size - 1);
    }
    this.stats.requests += n;
    this.stats.batches++;
    this.driver.transport.submit(reqs, n);
    let failed: IommuRequest | undefined;
    for (let r = 0; r < n; r++) {
      const req = reqs[r]!;
      // A failed UNMAP leaves its IOVAs reachable: they are never reused.
      if (req.status === d.VIRTIO_IOMMU_S_OK) {
        const first = sorted[runs[r]!]!;
        const last = sorted[runs[r + 1]! - 1]!;
        this.iovas.release(first.iova, last.iova + last.size - first.iova);
        const spare = this.spare;
        for (let i = runs[r]!; i < runs[r + 1]! && spare.length < 1024; i++) spare.push(sorted[i]!);
      } else failed ??= req;
    }
    if (sorted !== batch) clear(sorted);
    if (failed !== undefined) {
      throw new ViommuError('request-failed', `UNMAP failed with ${d.STATUS_NAMES[failed.status] ?? failed.status}`, failed.type, failed.status);
    }
  }

  /** Flushes pending unmaps and detaches every endpoint (the domain then ceases to exist in the device). */
  destroy(): void {
    this.flush();
    for (const ep of this.endpoints) this.driver.send(detachRequest(this.id, ep));
  }
}

/**
 * Empties a scratch array. Short ones are popped: an assignment to `length`
 * is a runtime call in V8, dearer than a few inlined pops.
 */
function clear(a: unknown[]): void {
  if (a.length > 16) a.length = 0;
  else while (a.length > 0) a.pop();
}

function byIova(a: LiveMapping, b: LiveMapping): number {
  return a.iova - b.iova;
}

function isSortedByIova(l: readonly LiveMapping[]): boolean {
  for (let i = 1; i < l.length; i++) if (l[i - 1]!.iova > l[i]!.iova) return false;
  return true;
}

function dirFlags(dir: DmaDirection): number {
  return dir === 'to-device' ? d.VIRTIO_IOMMU_MAP_F_READ : dir === 'from-device' ? d.VIRTIO_IOMMU_MAP_F_WRITE : d.VIRTIO_IOMMU_MAP_F_READ | d.VIRTIO_IOMMU_MAP_F_WRITE;
}

function roundDown(v: number, g: number): number {
  return v - (v % g);
}

function roundUp(v: number, g: number): number {
  const r = v % g;
  return r === 0 ? v : v + (g - r);
}
