import type { Access } from '@ioplane/guest-memory';
import { VIRTIO_IOMMU_RESV_MEM_T_MSI } from './defs.js';
import { FaultCode } from './errors.js';
import { Iotlb } from './iotlb.js';
import { type Mapping, MappingTable } from './mapping-table.js';
import type { TranslationOut, TranslationSource } from './translating-memory.js';

const TWO_53 = 2 ** 53;

/** A reserved IOVA region of an endpoint, reported by PROBE as a RESV_MEM property (VirtIO 1.2 §5.13.6.6.1). */
export interface ReservedRegion {
  /** First and last (inclusive) IOVA of the region. */
  readonly start: bigint;
  readonly end: bigint;
  /** VIRTIO_IOMMU_RESV_MEM_T_RESERVED (0, default) or VIRTIO_IOMMU_RESV_MEM_T_MSI (1). */
  readonly subtype?: number;
}

/** An I/O address space: the mappings its endpoints share, and the IOTLB in front of them. */
export class Domain {
  readonly endpoints = new Set<Endpoint>();
  readonly mappings: MappingTable;
  /** Undefined when the IOTLB is disabled (`iotlbEntries: 0`). */
  readonly tlb: Iotlb | undefined;

  constructor(
    readonly id: number,
    /** A bypass domain (ATTACH with VIRTIO_IOMMU_ATTACH_F_BYPASS): its endpoints see guest-physical memory as is. */
    readonly bypass: boolean,
    mappingLimit: number,
    iotlbEntries: number,
  ) {
    this.mappings = new MappingTable(mappingLimit);
    this.tlb = iotlbEntries > 0 ? new Iotlb(iotlbEntries) : undefined;
  }

  /** Whether some attached endpoint has reserved regions (MAP checks them only then). */
  anyReserved = false;

  /** Recomputes `anyReserved` (after an endpoint joins or leaves). */
  updateReserved(): void {
    let any = false;
    for (const ep of this.endpoints) if (ep.reserved.length > 0) any = true;
    this.anyReserved = any;
  }

  /** Drops every cached translation of `m` (synchronously: the next access walks the table again). */
  invalidate(m: Mapping): void {
    const tlb = this.tlb;
    if (tlb === undefined || m.startNum >= TWO_53) return;
    tlb.invalidateRun(m.startNum, m.endNum + 1);
  }
}

/**
 * What each generation bump revoked, for the last `InvalidationLog.SIZE`
 * bumps: one domain's IOVA range (an UNMAP) or everything (ATTACH, DETACH,
 * `bypass`, reset); a domain below −1 matches no query (VT-d logs its
 * selective context-cache invalidations so, and tracks the devices they
 * covered itself). Lets a translation made under an older generation be
 * kept when nothing since touched its range — so a strict-mode UNMAP of one
 * request's buffer does not cost the other in-flight requests (and the ring
 * area) their translations. Fixed typed arrays: recording allocates nothing.
 */
export class InvalidationLog {
  static readonly SIZE = 256;
  private static readonly MASK = InvalidationLog.SIZE - 1;
  /** The generation each slot describes (a slot not written for that generation means "unknown": treated as everything). */
  private readonly gens = new Float64Array(InvalidationLog.SIZE).fill(-1);
  /** Domain ID, or −1 for a change that affects every endpoint and address. */
  private readonly domains = new Float64Array(InvalidationLog.SIZE);
  private readonly starts = new Float64Array(InvalidationLog.SIZE);
  /** Exclusive. */
  private readonly ends = new Float64Array(InvalidationLog.SIZE);

  /** Generation `generation` revoked [start, end) of domain `domain` (−1: everything). */
  record(generation: number, domain: number, start: number, end: number): void {
    const i = generation & InvalidationLog.MASK;
    this.gens[i] = generation;
    this.domains[i] = domain;
    this.starts[i] = start;
    this.ends[i] = end;
  }

  /**
   * Whether no bump after `since` up to `current` revoked anything in
   * [start, end) of `domain`. False when unsure (too old, a slot overwritten).
   */
  unchangedSince(current: number, since: number, domain: number, start: number, end: number): boolean {
    const d = current - since;
    if (d === 0) return true;
    if (!(d > 0 && d <= InvalidationLog.SIZE && since >= 0)) return false;
    for (let g = since + 1; g <= current; g++) {
      const i = g & InvalidationLog.MASK;
      if (this.gens[i] !== g) return false;
      const dom = this.domains[i]!;
      if (dom === -1) return false;
      if (dom === domain && this.starts[i]! < end && this.ends[i]! > start) return false;
    }
    return true;
  }
}

/** Shared, mutable device state an endpoint consults on every translation. */
export interface BypassState {
  /** Unattached endpoints are in bypass (config `bypass` = 1 with VIRTIO_IOMMU_F_BYPASS_CONFIG offered). */
  bypass: boolean;
  /**
   * Bumped by every change that can invalidate a translation already handed
   * out: an UNMAP that removed something, ATTACH, DETACH, a `bypass` change,
   * reset. (MAP only adds translations.)
   */
  generation: number;
  /** What each bump revoked (absent: any bump may have revoked anything). */
  log?: InvalidationLog;
}

/** A device behind the vIOMMU, identified by its endpoint ID (§5.13.6.1). */
export class Endpoint implements TranslationSource {
  domain: Domain | undefined;
  /** Reserved regions sorted by start. */
  readonly reserved: readonly ReservedRegion[];
  private readonly resvStart: Float64Array;
  private readonly resvEnd: Float64Array;

  constructor(
    readonly endpoint: number,
    reserved: readonly ReservedRegion[],
    private readonly state: BypassState,
  ) {
    this.reserved = [...reserved].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
    this.resvStart = Float64Array.from(this.reserved, (r) => Number(r.start));
    this.resvEnd = Float64Array.from(this.reserved, (r) => Number(r.end));
  }

  get generation(): number {
    return this.state.generation;
  }

  /**
   * Whether a translation of [start, end) made under generation `since` still
   * holds: no bump since revoked anything of this endpoint's domain in the
   * range, nor changed which domain it is in (ATTACH/DETACH are global).
   */
  unchangedSince(since: number, start: number, end: number): boolean {
    const log = this.state.log;
    if (log === undefined) return since === this.state.generation;
    // An unattached endpoint (bypass or blocked) is only affected by global changes: −2 matches no UNMAP.
    return log.unchangedSince(this.state.generation, since, this.domain?.id ?? -2, start, end);
  }

  /** The reserved region holding `addr`, as an index, or -1. */
  private reservedAt(addr: number): number {
    const s = this.resvStart;
    for (let i = 0; i < s.length; i++) {
      if (addr >= s[i]! && addr <= this.resvEnd[i]!) return i;
    }
    return -1;
  }

  /**
   * VirtIO 1.2 §5.13.6: an endpoint attached to a translating domain reaches
   * guest memory only through that domain's mappings; an endpoint in bypass
   * (bypass domain, or unattached with config `bypass` = 1) through the
   * identity; any other unattached endpoint not at all. RESV_MEM regions are
   * checked first, as QEMU does: RESERVED faults, MSI passes through.
   *
   * The IOTLB is consulted before the reserved regions: a domain never holds
   * a mapping overlapping a reserved region of one of its endpoints (MAP and
   * ATTACH refuse it), so no cached run can cover one.
   */
  translate(addr: number, access: Access, out: TranslationOut): number {
    const d = this.domain;
    const need = access === 'read' ? 1 : 2;
    if (d !== undefined && !d.bypass) {
      const tlb = d.tlb;
      if (tlb !== undefined) {
        const i = tlb.find(addr);
        if (i >= 0) {
          const x = tlb.entries;
          if ((x[i + 3]! & need) === 0) return FaultCode.permission;
          out.gpa = addr + x[i + 2]!;
          out.start = x[i]!;
          out.end = x[i + 1]!;
          return 0;
        }
      }
      if (this.resvStart.length > 0) {
        const r = this.reservedAt(addr);
        if (r >= 0) return this.reservedHit(r, addr, out);
      }
      const m = d.mappings.findNum(addr);
      if (m === undefined) return FaultCode.unmapped;
      const perm = m.flags & 3;
      if ((perm & need) === 0) return FaultCode.permission;
      if (Number.isNaN(m.physNum)) return FaultCode.badTarget;
      const delta = m.physNum - m.startNum;
      const gpa = addr + delta;
      if (gpa >= TWO_53) return FaultCode.badTarget;
      let end = m.endNum + 1;
      if (end > TWO_53 - delta) end = TWO_53 - delta;
      tlb?.insert(addr, m.startNum, end, delta, perm);
      out.gpa = gpa;
      out.start = m.startNum;
      out.end = end;
      return 0;
    }
    if (this.resvStart.length > 0) {
      const r = this.reservedAt(addr);
      if (r >= 0) return this.reservedHit(r, addr, out);
    }
    if (d === undefined && !this.state.bypass) return FaultCode.unattached;
    out.gpa = addr;
    out.start = addr;
    out.end = this.nextReservedAfter(addr);
    return 0;
  }

  private reservedHit(r: number, addr: number, out: TranslationOut): number {
    if (this.reserved[r]!.subtype !== VIRTIO_IOMMU_RESV_MEM_T_MSI) return FaultCode.reserved;
    // MSI doorbell: identity, as the interrupt controller decodes it.
    out.gpa = addr;
    out.start = addr;
    const end = this.resvEnd[r]! + 1;
    out.end = end > TWO_53 ? TWO_53 : end;
    return 0;
  }

  /** The identity run from `addr` stops at the next reserved region. */
  private nextReservedAfter(addr: number): number {
    let end = TWO_53;
    const s = this.resvStart;
    for (let i = 0; i < s.length; i++) if (s[i]! > addr && s[i]! < end) end = s[i]!;
    return end;
  }

  /** `reservedOverlaps` for start ≤ end below 2^53 (region bounds as numbers are exact there and ≥ 2^53 above). */
  reservedOverlapsNum(start: number, end: number): boolean {
    const s = this.resvStart;
    for (let i = 0; i < s.length; i++) if (s[i]! <= end && this.resvEnd[i]! >= start) return true;
    return false;
  }

  /** True if some reserved region of this endpoint overlaps [start, end]. */
  reservedOverlaps(start: bigint, end: bigint): boolean {
    for (const r of this.reserved) if (r.start <= end && r.end >= start) return true;
    return false;
  }
}
