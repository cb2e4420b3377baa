import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PageMap } from '../src/page-map.js';

/** Keys whose home is the last slot of every table up to 64 slots (PageMap's Fibonacci hash): their runs wrap to slot 0. */
const LAST_SLOT: number[] = [];
for (let k = 0; LAST_SLOT.length < 12; k++) if (Math.imul(k, 0x9e37_79b1) >>> 26 === 63) LAST_SLOT.push(k);
/** Keys whose home is slot 0 of every table up to 64 slots. */
const FIRST_SLOT: number[] = [];
for (let k = 1; FIRST_SLOT.length < 4; k++) if (Math.imul(k, 0x9e37_79b1) >>> 26 === 0) FIRST_SLOT.push(k);

describe('PageMap', () => {
  it('property: agrees with Map under sets, gets, deletes and takes — clustered, colliding and huge keys, through growth', () => {
    const key = fc.oneof(
      fc.integer({ min: 0, max: 40 }), // dense: long probe runs
      fc.integer({ min: 0, max: 40 }).map((k) => 2 ** 36 + k * 64), // above 2^32
      fc.constantFrom(...LAST_SLOT), // all on the last slot: long runs wrapping to slot 0
      fc.constantFrom(...LAST_SLOT).map((k) => k + 2 ** 40), // the same low 32 bits above 2^32
      fc.constant(2 ** 53 - 1),
    );
    const op = fc.oneof(
      { arbitrary: fc.record({ kind: fc.constant('set' as const), key, value: fc.nat() }), weight: 10 },
      { arbitrary: fc.record({ kind: fc.constant('delete' as const), key }), weight: 6 },
      { arbitrary: fc.record({ kind: fc.constant('take' as const), key }), weight: 3 },
      { arbitrary: fc.record({ kind: fc.constant('clear' as const) }), weight: 1 },
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 200 }), (ops) => {
        const a = new PageMap<number>(16);
        const b = new Map<number, number>();
        const touched = new Set<number>();
        for (const o of ops) {
          if (o.kind === 'set') {
            a.set(o.key, o.value);
            b.set(o.key, o.value);
            touched.add(o.key);
          } else if (o.kind === 'delete') {
            expect(a.delete(o.key)).toBe(b.delete(o.key));
          } else if (o.kind === 'take') {
            const want = b.get(o.key);
            b.delete(o.key);
            expect(a.take(o.key)).toBe(want);
          } else {
            a.clear();
            b.clear();
          }
          expect(a.size).toBe(b.size);
          for (const k of touched) {
            expect(a.get(k)).toBe(b.get(k));
            expect(a.has(k)).toBe(b.has(k));
          }
        }
        expect([...a.values()].sort((x, y) => x - y)).toEqual([...b.values()].sort((x, y) => x - y));
      }),
      { numRuns: 500 },
    );
  });

  it('property: runs wrapping past the last slot of a 16-slot table survive any deletes', () => {
    // Three keys for each home slot 12–15, 0 and 1 of a 16-slot table: at most 8 live keys, so it never grows.
    const pool: number[] = [];
    for (const slot of [12, 13, 14, 15, 0, 1]) {
      let n = 0;
      for (let k = 1; n < 3; k++) {
        if (Math.imul(k, 0x9e37_79b1) >>> 28 === slot) {
          pool.push(k);
          n++;
        }
      }
    }
    const op = fc.record({ del: fc.boolean(), key: fc.constantFrom(...pool) });
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const a = new PageMap<number>(16);
        const b = new Map<number, number>();
        ops.forEach((o, i) => {
          if (o.del) expect(a.delete(o.key)).toBe(b.delete(o.key));
          else if (b.size < 8 || b.has(o.key)) {
            a.set(o.key, i);
            b.set(o.key, i);
          }
          for (const k of pool) expect(a.get(k)).toBe(b.get(k));
        });
      }),
      { numRuns: 500 },
    );
  });
});
