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
        for (const o of ops) {
          if (o.kind === 'insert') {
            const pages = o.large ? 512 : 1;
            const first = o.page - (o.page % pages);
            const addr = (first + (o.through % pages)) * PAGE;
            a.insert(addr, first * PAGE, (first + pages) * PAGE, 0x1000, 3);
            b.insert(addr, first * PAGE, (first + pages) * PAGE, 0x1000, 3);
          } else if (o.kind === 'inval') {
            const n = 2 ** o.am;
            const start = (o.page - (o.page % n)) * PAGE;
            a.invalidatePages(start, start + n * PAGE);
            b.invalidate(start, start + n * PAGE);
          } else {
            a.flush();
            b.flush();
          }
          expect(live(a)).toEqual(live(b));
        }
      }),
      { numRuns: 300 },
    );
  });
});
