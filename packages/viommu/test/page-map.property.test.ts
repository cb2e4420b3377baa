import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PageMap } from '../src/page-map.js';

describe('PageMap', () => {
  it('property: agrees with Map under sets, gets and deletes — clustered, colliding and huge keys, through growth', () => {
    const key = fc.oneof(
      fc.integer({ min: 0, max: 40 }), // dense: long probe runs
      fc.integer({ min: 0, max: 40 }).map((k) => k * 16), // all on one home slot of a 16-slot table
      fc.integer({ min: 0, max: 40 }).map((k) => 2 ** 36 + k * 64), // above 2^32
      fc.integer({ min: 0, max: 20 }).map((k) => 2 ** 32 - 1 - k), // homes at the end of the table: runs wrap to slot 0
      fc.integer({ min: 0, max: 6 }).map((k) => 2 ** 32 - 1 - 64 * k), // all on the last slot, whatever the size: long wrapped runs
      fc.constant(2 ** 53 - 1),
    );
    const op = fc.oneof(
      { arbitrary: fc.record({ kind: fc.constant('set' as const), key, value: fc.nat() }), weight: 10 },
      { arbitrary: fc.record({ kind: fc.constant('delete' as const), key }), weight: 6 },
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
});
