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
export class IovaAllocator {
  /** Free intervals [s, e), sorted, disjoint, not adjacent. */
  private free: number[] = [];
  /** Where the next search starts: the end of the last allocation. */
  private cursor = 0;
  /** Index in `free` of the interval the last allocation cut (a guess, checked before use). */
  private hint = 0;
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
    const cursor = this.cursor;
    // The first interval ending after the cursor: usually the one the last allocation cut (checked in O(1)), else a binary search over the ends.
    let first = this.hint;
    if (!(first < f.length && f[first + 1]! > cursor && (first === 0 || f[first - 1]! <= cursor))) {
      let lo = 0;
      let hi = f.length / 2;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (f[2 * mid + 1]! <= cursor) lo = mid + 1;
        else hi = mid;
      }
      first = 2 * lo;
    }
    for (let i = first; i < f.length; i += 2) {
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
    this.hint = i;
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

