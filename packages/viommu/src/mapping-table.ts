const TWO_53 = 2 ** 53;

/**
 * One mapping created by a single MAP request: [virtStart, virtEnd]
 * (inclusive) → physStart. Made from bigints (any u64), or from numbers when
 * every address is below 2^53 (`fromNumbers`, the MAP fast path: no bigint is
 * made until one is asked for).
 */
export class Mapping {
  /** Number(virtStart) and Number(virtEnd): exact below 2^53, and at least 2^53 otherwise (rounding is monotone). */
  readonly startNum: number;
  readonly endNum: number;
  /** Number(physStart), or NaN when physStart ≥ 2^53 (then no byte of the mapping is guest RAM reachable by number). */
  readonly physNum: number;
  #virtStart: bigint | undefined;
  #virtEnd: bigint | undefined;
  #physStart: bigint | undefined;
  constructor(
    virtStart: bigint,
    virtEnd: bigint,
    physStart: bigint,
    /** VIRTIO_IOMMU_MAP_F_* bits: READ = 1, WRITE = 2, MMIO = 4. */
    readonly flags: number,
    /** Internal (`fromNumbers`): the three addresses as exact numbers, bigints made on demand. */
    nums?: { start: number; end: number; phys: number },
  ) {
    if (nums !== undefined) {
      this.startNum = nums.start;
      this.endNum = nums.end;
      this.physNum = nums.phys;
      return;
    }
    this.#virtStart = virtStart;
    this.#virtEnd = virtEnd;
    this.#physStart = physStart;
    this.startNum = Number(virtStart);
    this.endNum = Number(virtEnd);
    this.physNum = physStart < BigInt(TWO_53) ? Number(physStart) : NaN;
  }

  /** A mapping whose addresses are all non-negative safe integers (start ≤ end, phys + end − start < 2^53). */
  static fromNumbers(start: number, end: number, phys: number, flags: number): Mapping {
    NUMS.start = start;
    NUMS.end = end;
    NUMS.phys = phys;
    return new Mapping(0n, 0n, 0n, flags, NUMS);
  }

  get virtStart(): bigint {
    return (this.#virtStart ??= BigInt(this.startNum));
  }

  get virtEnd(): bigint {
    return (this.#virtEnd ??= BigInt(this.endNum));
  }

  get physStart(): bigint {
    return (this.#physStart ??= BigInt(this.physNum));
  }
}

/** Scratch argument of `Mapping.fromNumbers` (read at once by the constructor). */
const NUMS = { start: 0, end: 0, phys: 0 };

/** Result of `MappingTable.unmap`. */
export type UnmapResult = { ok: true; removed: Mapping[] } | { ok: false; splits: Mapping };

const EMPTY_UNMAP: UnmapResult = { ok: true, removed: [] };

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
    // The newest mapping usually sits at the top (next-fit IOVAs): one compare for it.
    const top = l[l.length - 1];
    if (top !== undefined && addr >= top.startNum) return addr <= top.endNum ? top : undefined;
    const found = this.floorIndexNum(addr);
    if (found < 0) return undefined;
    const m = l[found]!;
    return addr <= m.endNum ? m : undefined;
  }

  /**
   * Index of the last mapping whose start is ≤ addr, or -1, for addr below
   * 2^53: `startNum` is exact there and at least 2^53 above (monotone
   * rounding), so the order and the answer are those of the bigint search.
   */
  private floorIndexNum(addr: number): number {
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
    return found;
  }

  /** The first mapping overlapping [start, end] (inclusive, both below 2^53), if any: `firstOverlap` without bigints. */
  firstOverlapNum(start: number, end: number): Mapping | undefined {
    let i = this.floorIndexNum(start);
    if (i >= 0 && this.list[i]!.endNum >= start) return this.list[i];
    i++;
    const next = this.list[i];
    return next !== undefined && next.startNum <= end ? next : undefined;
  }

  /**
   * For [start, end] below 2^53: the index a new mapping would be inserted
   * at, or −1 if it overlaps one (one search for both questions; then
   * `insertAtNum`, with no change to the table in between).
   */
  slotNum(start: number, end: number): number {
    const l = this.list;
    const n = l.length;
    // Above the top mapping (the next-fit case): no search.
    const i = n > 0 && l[n - 1]!.startNum <= start ? n - 1 : this.floorIndexNum(start);
    if (i >= 0 && l[i]!.endNum >= start) return -1;
    const next = l[i + 1];
    if (next !== undefined && next.startNum <= end) return -1;
    return i + 1;
  }

  /** Inserts `m` at `at`, as returned by `slotNum(m.startNum, m.endNum)` on the unchanged table. */
  insertAtNum(at: number, m: Mapping): void {
    if (at === this.list.length) this.list.push(m);
    else this.list.splice(at, 0, m);
  }

  /** `insert` for a mapping made by `Mapping.fromNumbers` (every address below 2^53). */
  insertNum(m: Mapping): Mapping | undefined {
    const clash = this.firstOverlapNum(m.startNum, m.endNum);
    if (clash !== undefined) return clash;
    const at = this.floorIndexNum(m.startNum) + 1;
    if (at === this.list.length) this.list.push(m);
    else this.list.splice(at, 0, m);
    return undefined;
  }

  /**
   * `unmap` for [start, end] both below 2^53, without bigints. Mappings
   * reaching past 2^53 compare by `endNum` ≥ 2^53 > end: still "not wholly
   * inside", as with bigints.
   */
  unmapNum(start: number, end: number): UnmapResult {
    const removed: Mapping[] = [];
    const splits = this.unmapNumInto(start, end, removed);
    if (splits !== undefined) return { ok: false, splits };
    return removed.length === 0 ? EMPTY_UNMAP : { ok: true, removed };
  }

  /**
   * `unmapNum` without allocating (the device's UNMAP path): the removed
   * mappings are put in `removed` (emptied first), in IOVA order; returns the
   * mapping the request would split — then nothing is removed — or undefined.
   */
  unmapNumInto(start: number, end: number, removed: Mapping[]): Mapping | undefined {
    while (removed.length > 0) removed.pop();
    const l = this.list;
    let first = this.floorIndexNum(start);
    if (first < 0 || l[first]!.endNum < start) first++;
    let last = first;
    while (last < l.length && l[last]!.startNum <= end) last++;
    if (last === first) return undefined;
    const a = l[first]!;
    if (a.startNum < start) return a;
    const b = l[last - 1]!;
    if (b.endNum > end) return b;
    for (let i = first; i < last; i++) removed.push(l[i]!);
    const n = last - first;
    // Removing the top is pops; anything else is splice, whose memmove beats a JS loop of element
    // stores (each with a write barrier) even though it returns an array we drop.
    if (last === l.length && n <= 16) for (let i = 0; i < n; i++) l.pop();
    else l.splice(first, n);
    return undefined;
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
