import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Iotlb } from '../src/index.js';

const PAGE = Iotlb.PAGE_SIZE;

/** The entries an IOTLB holds, as "start-end" strings (the public arrays are the state). */
function live(t: Iotlb): string[] {
  const out: string[] = [];
  for (let i = 0; i < t.size; i++) if (t.start[i]! < t.end[i]!) out.push(`${i}:${t.start[i]}-${t.end[i]}`);
  return out;
}

describe('Iotlb.invalidatePages', () => {
  it('property: drops exactly what a full-scan invalidate drops, with single-page and wide entries mixed', () => {
    const op = fc.oneof(
      // A leaf of 1, 512 (2 MiB) pages, filled through one of its pages.
      fc.record({ kind: fc.constant('insert' as const), page: fc.integer({ min: 0, max: 4095 }), large: fc.boolean(), through: fc.nat() }),
      fc.record({ kind: fc.constant('inval' as const), page: fc.integer({ min: 0, max: 4095 }), am: fc.integer({ min: 0, max: 10 }) }),
      fc.record({ kind: fc.constant('flush' as const) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const a = new Iotlb(64);
        const b = new Iotlb(64);
        // The reference: a plain array of 64 slots, each empty or one run (start, end).
        const model = new Array<{ start: number; end: number } | undefined>(64).fill(undefined);
        for (const o of ops) {
          if (o.kind === 'insert') {
            const pages = o.large ? 512 : 1;
            const first = o.page - (o.page % pages);
            const addr = (first + (o.through % pages)) * PAGE;
            a.insert(addr, first * PAGE, (first + pages) * PAGE, 0x1000, 3);
            b.insert(addr, first * PAGE, (first + pages) * PAGE, 0x1000, 3);
            model[(addr / PAGE) % 64] = { start: first * PAGE, end: (first + pages) * PAGE };
          } else if (o.kind === 'inval') {
            const n = 2 ** o.am;
            const start = (o.page - (o.page % n)) * PAGE;
            a.invalidatePages(start, start + n * PAGE);
            b.invalidate(start, start + n * PAGE);
            for (let i = 0; i < 64; i++) if (model[i] !== undefined && model[i]!.start < start + n * PAGE && model[i]!.end > start) model[i] = undefined;
          } else {
            a.flush();
            b.flush();
            model.fill(undefined);
          }
          expect(live(a)).toEqual(live(b));
          expect(live(a)).toEqual(model.flatMap((m, i) => (m === undefined ? [] : [`${i}:${m.start}-${m.end}`])));
          // What a lookup finds agrees with the model too.
          for (let i = 0; i < 64; i++) {
            const m = model[i];
            if (m === undefined) continue;
            const at = a.find(m.start <= i * PAGE && i * PAGE < m.end ? i * PAGE : m.start);
            if (m.start <= i * PAGE && i * PAGE < m.end) {
              expect(at).toBe(i);
              expect(a.perm[at]).toBe(3);
              expect(a.delta[at]).toBe(0x1000);
            }
          }
        }
      }),
      { numRuns: 300 },
    );
  });
});
