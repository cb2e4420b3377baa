const TWO_53 = 2 ** 53;

/** One mapping created by a single MAP request: [virtStart, virtEnd] (inclusive) → physStart. */
export class Mapping {
  /** Number(virtStart) and Number(virtEnd): exact below 2^53, and at least 2^53 otherwise (rounding is monotone). */
  readonly startNum: number;
  readonly endNum: number;
  /** Number(physStart), or NaN when physStart ≥ 2^53 (then no byte of the mapping is guest RAM reachable by number). */
  readonly physNum: number;
  constructor(
    readonly virtStart: bigint,
    readonly virtEnd: bigint,
    readonly physStart: bigint,
    /** VIRTIO_IOMMU_MAP_F_* bits: READ = 1, WRITE = 2, MMIO = 4. */
    readonly flags: number,
  ) {
    this.startNum = Number(virtStart);
    this.endNum = Number(virtEnd);
    this.physNum = physStart < BigInt(TWO_53) ? Number(physStart) : NaN;
  }
}

/** Result of `MappingTable.unmap`. */
export type UnmapResult = { ok: true; removed: Mapping[] } | { ok: false; splits: Mapping };

/**
 * The mappings of one domain: non-overlapping intervals over the full 64-bit
 * IOVA space, kept sorted by start in an array.
 *
 * Control-path operations (MAP, UNMAP) compare bigints, so every u64 the guest
 * writes is exact; they cost O(log n) to search and O(n) to insert or remove
 * (a memmove of pointers), which is why a domain holds at most `limit`
 * mappings (the device answers NOMEM beyond it). The data path (`findNum`)
 * binary-searches with number keys: exact for every address below 2^53, the
 * only addresses a `DmaMemory` can name.
 */
export class MappingTable {
  private readonly list: Mapping[] = [];

  constructor(readonly limit: number) {}

  get size(): number {
    return this.list.length;
  }

  /** All mappings in IOVA order (a copy). */
  all(): Mapping[] {
    return this.list.slice();
  }

  /** Index of the last mapping whose start is ≤ addr, or -1. */
  private floorIndex(addr: bigint): number {
    const l = this.list;
    let lo = 0;
    let hi = l.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (l[mid]!.virtStart <= addr) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found;
  }

  /** The mapping holding the 64-bit IOVA `addr`, if any. */
  find(addr: bigint): Mapping | undefined {
    const i = this.floorIndex(addr);
    if (i < 0) return undefined;
    const m = this.list[i]!;
    return addr <= m.virtEnd ? m : undefined;
  }

  /** The mapping holding `addr` (a non-negative number below 2^53), if any: the data-path lookup. */
  findNum(addr: number): Mapping | undefined {
    const l = this.list;
    let lo = 0;
    let hi = l.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (l[mid]!.startNum <= addr) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    if (found < 0) return undefined;
    const m = l[found]!;
    return addr <= m.endNum ? m : undefined;
  }

  /** The first mapping overlapping [start, end] (inclusive), if any. */
  firstOverlap(start: bigint, end: bigint): Mapping | undefined {
    let i = this.floorIndex(start);
    if (i >= 0 && this.list[i]!.virtEnd >= start) return this.list[i];
    i++;
    const next = this.list[i];
    return next !== undefined && next.virtStart <= end ? next : undefined;
  }

  /** Adds `m` unless it overlaps a mapping (returns that one) — VirtIO 1.2 §5.13.6.3: overlapping MAP is refused, never merged or split. */
  insert(m: Mapping): Mapping | undefined {
    const clash = this.firstOverlap(m.virtStart, m.virtEnd);
    if (clash !== undefined) return clash;
    const at = this.floorIndex(m.virtStart) + 1;
    this.list.splice(at, 0, m);
    return undefined;
  }

  /**
   * UNMAP [start, end] (VirtIO 1.2 §5.13.6.4): every mapping wholly inside the
   * range is removed; if a mapping is only partly covered (the request would
   * split it) nothing is removed. Only the first and the last overlapping
   * mappings can be partly covered, since mappings do not overlap.
   */
  unmap(start: bigint, end: bigint): UnmapResult {
    const l = this.list;
    let first = this.floorIndex(start);
    if (first < 0 || l[first]!.virtEnd < start) first++;
    let last = first;
    while (last < l.length && l[last]!.virtStart <= end) last++;
    if (last === first) return { ok: true, removed: [] };
    const a = l[first]!;
    if (a.virtStart < start) return { ok: false, splits: a };
    const b = l[last - 1]!;
    if (b.virtEnd > end) return { ok: false, splits: b };
    return { ok: true, removed: l.splice(first, last - first) };
  }

  clear(): Mapping[] {
    return this.list.splice(0, this.list.length);
  }
}
