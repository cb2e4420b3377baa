import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { IovaAllocator } from '../src/iova-allocator.js';

/** Next-fit over a bitmap of units: the lowest fit at or above the cursor, else the lowest fit from the bottom. */
class Model {
  readonly used: boolean[];
  cursor = 0;
  constructor(
    readonly start: number,
    readonly end: number,
    holes: { start: number; end: number }[],
  ) {
    this.used = Array.from({ length: end }, (_, a) => a < start || holes.some((h) => a >= h.start && a < h.end));
  }
  fits(a: number, size: number): boolean {
    if (a + size > this.end) return false;
    for (let x = a; x < a + size; x++) if (this.used[x]) return false;
    return true;
  }
  alloc(size: number): number | undefined {
    for (const from of [this.cursor, 0]) {
      for (let a = from; a + size <= this.end; a++) {
        if (!this.fits(a, size)) continue;
        for (let x = a; x < a + size; x++) this.used[x] = true;
        this.cursor = a + size;
        return a;
      }
    }
    return undefined;
  }
  take(a: number, size: number): boolean {
    if (!this.fits(a, size)) return false;
    for (let x = a; x < a + size; x++) this.used[x] = true;
    return true;
  }
  release(a: number, size: number): void {
    for (let x = a; x < a + size; x++) this.used[x] = false;
  }
}

describe('IovaAllocator', () => {
  it('property: agrees with a next-fit bitmap under allocs, takes and releases, with holes and wrap-around', () => {
    const op = fc.oneof(
      { weight: 6, arbitrary: fc.record({ kind: fc.constant('alloc' as const), size: fc.integer({ min: 1, max: 6 }) }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant('take' as const), at: fc.nat(70), size: fc.integer({ min: 1, max: 4 }) }) },
      { weight: 5, arbitrary: fc.record({ kind: fc.constant('release' as const), pick: fc.nat(), part: fc.nat() }) },
    );
    const holes = fc.array(fc.record({ start: fc.nat(63), len: fc.integer({ min: 1, max: 5 }) }), { maxLength: 3 });
    fc.assert(
      fc.property(holes, fc.array(op, { maxLength: 150 }), (hs, ops) => {
        const h = hs.map((x) => ({ start: x.start, end: x.start + x.len }));
        const a = new IovaAllocator(1, 64, h);
        const m = new Model(1, 64, h);
        // What is allocated, as [start, size] runs (a release frees a run or its head/tail).
        const held: [number, number][] = [];
        for (const o of ops) {
          if (o.kind === 'alloc') {
            const got = a.alloc(o.size);
            expect(got).toBe(m.alloc(o.size));
            if (got !== undefined) held.push([got, o.size]);
          } else if (o.kind === 'take') {
            const ok = a.take(o.at, o.size);
            expect(ok).toBe(m.take(o.at, o.size));
            if (ok) held.push([o.at, o.size]);
          } else if (held.length > 0) {
            const i = o.pick % held.length;
            const [s, size] = held[i]!;
            // Release the whole run, or its first part (the rest stays held).
            const n = 1 + (o.part % size);
            a.release(s, n);
            m.release(s, n);
            if (n === size) held.splice(i, 1);
            else held[i] = [s + n, size - n];
          }
        }
      }),
      { numRuns: 400 },
    );
  });
});
