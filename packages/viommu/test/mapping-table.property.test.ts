import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Mapping, MappingTable } from '../src/index.js';

const T53 = 2 ** 53;
const PAGE = 0x1000;

/** Page numbers clustered near 0 and near 2^53 (both sides), where the number paths could go wrong. */
const page = fc.oneof(fc.integer({ min: 0, max: 64 }), fc.integer({ min: T53 / PAGE - 32, max: T53 / PAGE + 32 }));
/** Byte-granular ranges (the 1-byte granule), so every boundary compare is exercised. */
const op = fc.record({ kind: fc.constantFrom('map', 'unmap', 'find'), first: page, offset: fc.constantFrom(0, 1, PAGE - 1), bytes: fc.constantFrom(1, 2, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE) });

describe('MappingTable number paths agree with the bigint paths', () => {
  it('slotNum + insertAtNum, unmapNum and findNum against insert, unmap and find on a twin table', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const fast = new MappingTable(1000);
        const slow = new MappingTable(1000);
        for (const o of ops) {
          const start = BigInt(o.first) * BigInt(PAGE) + BigInt(o.offset);
          const end = start + BigInt(o.bytes) - 1n;
          const below = end < BigInt(T53);
          if (o.kind === 'map') {
            const clash = slow.insert(new Mapping(start, end, 0n, 3)) !== undefined;
            if (below) {
              const at = fast.slotNum(Number(start), Number(end));
              expect(at < 0).toBe(clash);
              if (at >= 0) fast.insertAtNum(at, Mapping.fromNumbers(Number(start), Number(end), 0, 3));
            } else if (fast.insert(new Mapping(start, end, 0n, 3)) !== undefined) expect(clash).toBe(true);
          } else if (o.kind === 'unmap') {
            const r = slow.unmap(start, end);
            if (below && o.bytes % 2 === 1) {
              // The device's allocation-free form, into a scratch array holding leftovers.
              const removed = [Mapping.fromNumbers(7, 7, 7, 1)];
              const splits = fast.unmapNumInto(Number(start), Number(end), removed);
              expect(splits === undefined).toBe(r.ok);
              if (!r.ok) expect(removed).toEqual([]);
              else expect(removed.map((m) => m.virtStart)).toEqual(r.removed.map((m) => m.virtStart));
            } else {
              const f = below ? fast.unmapNum(Number(start), Number(end)) : fast.unmap(start, end);
              expect(f.ok).toBe(r.ok);
              if (f.ok && r.ok) expect(f.removed.map((m) => m.virtStart)).toEqual(r.removed.map((m) => m.virtStart));
            }
            expect(fast.all().map((m) => m.virtStart)).toEqual(slow.all().map((m) => m.virtStart));
          } else if (start < BigInt(T53)) {
            expect(fast.findNum(Number(start))?.virtStart).toBe(slow.find(start)?.virtStart);
            for (const d of [-1n, 1n, 17n, BigInt(o.bytes) - 1n, BigInt(o.bytes)]) {
              const a = start + d;
              if (a >= 0n && a < BigInt(T53)) expect(fast.findNum(Number(a))?.virtStart).toBe(slow.find(a)?.virtStart);
            }
          }
          expect(fast.all().map((m) => [m.virtStart, m.virtEnd])).toEqual(slow.all().map((m) => [m.virtStart, m.virtEnd]));
          // Every mapping's edges, from the number side.
          for (const m of slow.all()) {
            for (const a of [m.virtStart - 1n, m.virtStart, m.virtEnd, m.virtEnd + 1n]) {
              if (a >= 0n && a < BigInt(T53)) expect(fast.findNum(Number(a))?.virtStart).toBe(slow.find(a)?.virtStart);
            }
          }
        }
      }),
      { numRuns: 300 },
    );
  });
});
