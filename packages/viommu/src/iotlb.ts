/**
 * A direct-mapped IOTLB: `size` entries indexed by the 4 KiB bus page number.
 * Each entry holds one translated run [start, end) of bus addresses, the
 * offset `delta` to add to reach the guest-physical address, and the
 * permission bits (1 = device may read, 2 = device may write).
 *
 * An entry never extends past the mapping (or leaf page) it was filled from,
 * and it is stored at the index of a page inside its own run. The live
 * entries are listed: a general invalidation checks each of them for
 * overlap; a page-selective one visits the range's pages and the entries
 * spanning more than one page (also listed), or the live entries when they
 * are fewer than the pages. So an entry can never outlive the translation
 * it caches, whatever page it was filled through.
 *
 * Addresses are JS numbers below 2^53; runs above that are never cached.
 */
export class Iotlb {
  static readonly PAGE_SIZE = 4096;
  readonly size: number;
  private readonly mask: number;
  /**
   * Entry i at [4i, 4i+4): start, end, delta, perm — one array, so a lookup
   * or a fill touches one cache line, not four (a fresh IOVA costs a device
   * an IOTLB fill on every request in deferred mode).
   */
  readonly entries: Float64Array;
  /**
   * A number the owner keeps with each entry (`insert`'s `tag`): the VT-d
   * unit stores the translation generation an entry was filled under, and
   * checks its invalidation log for the entry's range when a lookup finds it
   * under a later one.
   */
  readonly tags: Float64Array;
  hits = 0;
  misses = 0;
  invalidations = 0;
  /**
   * Live entries whose run spans more than one page. Such an entry sits at
   * the index of whichever of its pages filled it, so only a full scan is
   * sure to find it; while there are none, an entry covering a page sits at
   * that page's index.
   */
  private wide = 0;
  /** The indices of the wide entries (`wide` of them), and each index's place in that list (−1: not wide). */
  private readonly wideAt: Int32Array;
  private readonly widePos: Int32Array;
  /**
   * The indices of the live entries (`live` of them), and each index's place
   * in that list (−1: empty). An invalidation of more pages than there are
   * live entries visits these instead of the pages: a deferred batch's few
   * hundred pages, or a 2 MiB frame, against the few entries a device whose
   * own caches hold the rest has left here — and those indices, not 512
   * slots gone cold since the last batch.
   */
  private live = 0;
  private readonly liveAt: Int32Array;
  private readonly livePos: Int32Array;

  constructor(size: number) {
    if (!Number.isInteger(size) || size < 1 || size > 1 << 20 || (size & (size - 1)) !== 0) {
      throw new RangeError(`IOTLB size ${String(size)} is not a power of two between 1 and 2^20`);
    }
    this.size = size;
    this.mask = size - 1;
    this.entries = new Float64Array(4 * size);
    this.tags = new Float64Array(size);
    for (let i = 0; i < size; i++) this.entries[4 * i] = 1;
    this.wideAt = new Int32Array(size);
    this.widePos = new Int32Array(size).fill(-1);
    this.liveAt = new Int32Array(size);
    this.livePos = new Int32Array(size).fill(-1);
  }

  /** Live entries (tests, statistics). */
  get liveEntries(): number {
    return this.live;
  }

  /** Empties entry `i` (live), with its places in the lists. */
  private drop(i: number): void {
    if (this.widePos[i]! >= 0) this.dropWide(i);
    const at = this.livePos[i]!;
    const last = this.liveAt[--this.live]!;
    this.liveAt[at] = last;
    this.livePos[last] = at;
    this.livePos[i] = -1;
    const b = i << 2;
    this.entries[b] = 1;
    this.entries[b + 1] = 0;
  }

  /**
   * Drops the live entries overlapping [start, endExclusive), visiting the
   * live list from its end (a drop moves the last, already visited, entry
   * into the freed place).
   */
  private dropLive(start: number, endExclusive: number): void {
    const x = this.entries;
    for (let k = this.live - 1; k >= 0; k--) {
      const i = this.liveAt[k]!;
      const b = i << 2;
      if (x[b]! < endExclusive && x[b + 1]! > start) this.drop(i);
    }
  }

  private addWide(i: number): void {
    this.widePos[i] = this.wide;
    this.wideAt[this.wide++] = i;
  }

  private dropWide(i: number): void {
    const at = this.widePos[i]!;
    const last = this.wideAt[--this.wide]!;
    this.wideAt[at] = last;
    this.widePos[last] = at;
    this.widePos[i] = -1;
  }

  /** The offset in `entries` of the entry holding `addr` (start; end, delta, perm follow), or -1 (counts a hit or a miss). */
  find(addr: number): number {
    const b = (((addr / Iotlb.PAGE_SIZE) >>> 0) & this.mask) << 2;
    const x = this.entries;
    if (addr >= x[b]! && addr < x[b + 1]!) {
      this.hits++;
      return b;
    }
    this.misses++;
    return -1;
  }

  /** Drops the entry at offset `at` of `entries` (what `find` returned). */
  dropAt(at: number): void {
    const i = at >> 2;
    if (this.livePos[i]! >= 0) this.drop(i);
  }

  /** Caches the run [start, end) → start + delta with `perm`, at the index of `addr` (which must lie in the run), with `tag` (see `tags`). */
  insert(addr: number, start: number, end: number, delta: number, perm: number, tag = 0): void {
    const i = ((addr / Iotlb.PAGE_SIZE) >>> 0) & this.mask;
    const wasWide = this.widePos[i]! >= 0;
    const isWide = end - start > Iotlb.PAGE_SIZE;
    if (wasWide && !isWide) this.dropWide(i);
    else if (isWide && !wasWide) this.addWide(i);
    if (this.livePos[i]! < 0) {
      this.livePos[i] = this.live;
      this.liveAt[this.live++] = i;
    }
    const x = this.entries;
    const b = i << 2;
    x[b] = start;
    x[b + 1] = end;
    x[b + 2] = delta;
    x[b + 3] = perm;
    this.tags[i] = tag;
  }

  /** Drops every entry overlapping [start, endExclusive). */
  invalidate(start: number, endExclusive: number): void {
    this.invalidations++;
    this.dropLive(start, endExclusive);
  }

  /**
   * `invalidate` for page-table leaves (VT-d): drops every entry overlapping
   * [start, endExclusive), visiting the range's pages (a single-page entry
   * sits at its own page's index) and the few wide entries (which may sit at
   * any of their pages' indices) — or scanning everything when the range has
   * more pages than there are entries.
   */
  invalidatePages(start: number, endExclusive: number): void {
    const x = this.entries;
    // Wide entries first, from the end of the list: dropping one moves only the last into its place.
    for (let k = this.wide - 1; k >= 0; k--) {
      const i = this.wideAt[k]!;
      const b = i << 2;
      if (x[b]! < endExclusive && x[b + 1]! > start) this.drop(i);
    }
    this.invalidateRun(start, endExclusive);
  }

  /**
   * Drops the entries filled from one run [start, endExclusive) that no entry
   * crosses (a virtio-iommu mapping: its entries lie inside it and sit at the
   * index of one of its pages). Visits only the run's pages when there are
   * fewer of them than entries, else scans everything.
   */
  invalidateRun(start: number, endExclusive: number): void {
    const first = Math.floor(start / Iotlb.PAGE_SIZE);
    const last = Math.floor((endExclusive - 1) / Iotlb.PAGE_SIZE);
    this.invalidations++;
    const count = last - first + 1;
    if (count > this.live) {
      this.dropLive(start, endExclusive);
      return;
    }
    const x = this.entries;
    const mask = this.mask;
    // Slot indices walked as small integers (the page numbers may be doubles past 2^31).
    let i = (first >>> 0) & mask;
    for (let k = 0; k < count; k++) {
      const b = i << 2;
      if (x[b]! < endExclusive && x[b + 1]! > start) this.drop(i);
      i = (i + 1) & mask;
    }
  }

  flush(): void {
    this.invalidations++;
    for (let k = 0; k < this.wide; k++) this.widePos[this.wideAt[k]!] = -1;
    this.wide = 0;
    const x = this.entries;
    for (let k = 0; k < this.live; k++) {
      const i = this.liveAt[k]!;
      this.livePos[i] = -1;
      x[i << 2] = 1;
      x[(i << 2) + 1] = 0;
    }
    this.live = 0;
  }
}
