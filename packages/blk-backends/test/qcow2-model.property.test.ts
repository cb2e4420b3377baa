/**
 * Property: any sequence of writes, discards, write-zeroes and flushes (some
 * issued concurrently on disjoint ranges) leaves a qcow2 image — with or
 * without a backing file — equal to the memory back-end given the same
 * sequence; the image stays equal after close and reopen, and check() finds
 * neither errors nor leaks.
 */
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import type { Qcow2Backend} from '../src/index.js';
import { createImage, MemoryBackend, openImage, type BlockBackend } from '../src/index.js';
import { tempDir } from './helpers.js';

let tmp: ReturnType<typeof tempDir> | undefined;
afterEach(() => {
  tmp?.remove();
  tmp = undefined;
});

const SIZE = 1 << 20;
const SECTORS = SIZE / 512;

type Op =
  | { t: 'write'; s: number; n: number; v: number }
  | { t: 'discard'; s: number; n: number }
  | { t: 'zero'; s: number; n: number; unmap: boolean }
  | { t: 'flush' };

const range = fc
  .tuple(fc.nat({ max: SECTORS - 1 }), fc.oneof(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1, max: 300 })))
  .map(([s, n]) => ({ s, n: Math.min(n, SECTORS - s) }));
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(range, fc.integer({ min: 1, max: 255 })).map(([r, v]) => ({ t: 'write' as const, ...r, v })) },
  { weight: 2, arbitrary: range.map((r) => ({ t: 'discard' as const, ...r })) },
  { weight: 2, arbitrary: fc.tuple(range, fc.boolean()).map(([r, unmap]) => ({ t: 'zero' as const, ...r, unmap })) },
  { weight: 1, arbitrary: fc.constant({ t: 'flush' as const }) },
);
/** Batches: the ops of one batch are issued together (disjoint ranges only). */
const batches = fc.array(fc.array(op, { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 25 });

function disjoint(batch: Op[]): Op[] {
  const taken: [number, number][] = [];
  return batch.filter((o) => {
    if (o.t === 'flush') return true;
    if (taken.some(([a, b]) => o.s < b && a < o.s + o.n)) return false;
    taken.push([o.s, o.s + o.n]);
    return true;
  });
}

function run(b: BlockBackend, o: Op): Promise<void> {
  switch (o.t) {
    case 'write': {
      const d = new Uint8Array(o.n * 512);
      for (let i = 0; i < d.length; i++) d[i] = (o.v + (i >> 9)) & 0xff;
      // Two segments, split off the sector grid, to exercise vectored paths.
      const cut = Math.floor(d.length / 3) + 1;
      return b.write(o.s * 512, [d.subarray(0, cut), d.subarray(cut)]);
    }
    case 'discard':
      return b.discard(o.s * 512, o.n * 512);
    case 'zero':
      return b.writeZeroes(o.s * 512, o.n * 512, o.unmap);
    case 'flush':
      return b.flush();
  }
}

async function content(b: BlockBackend): Promise<Uint8Array> {
  const buf = new Uint8Array(b.size);
  await b.read(0, [buf]);
  return buf;
}

function firstDiff(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

const layouts = fc.record({
  clusterSize: fc.constantFrom(512, 4096, 65536),
  version: fc.constantFrom(2 as const, 3 as const),
  refcountBits: fc.constantFrom(1, 16, 64),
  lazy: fc.boolean(),
  extendedL2: fc.boolean(),
});

describe('qcow2 equals the memory model', () => {
  for (const backing of ['none', 'raw', 'qcow2'] as const) {
    it(`backing: ${backing}`, async () => {
      await fc.assert(
        fc.asyncProperty(layouts, batches, fc.integer({ min: 1, max: 255 }), async (layout, ops, baseSeed) => {
          tmp?.remove();
          tmp = tempDir();
          const f = tmp.path('p.qcow2');
          const model = new MemoryBackend({ size: SIZE });
          const v3 = layout.version === 3;
          if (backing !== 'none') {
            const base = tmp.path(`base.${backing}`);
            await createImage(base, backing, { size: SIZE, clusterSize: 4096 });
            const bb = await openImage(base);
            const d = new Uint8Array(SIZE / 2);
            for (let i = 0; i < d.length; i++) d[i] = (baseSeed + (i >> 10)) & 0xff;
            await bb.write(SIZE / 4, [d]);
            await model.write(SIZE / 4, [d]);
            await bb.close();
          }
          await createImage(f, 'qcow2', {
            size: SIZE,
            clusterSize: v3 && layout.extendedL2 ? Math.max(16384, layout.clusterSize) : layout.clusterSize,
            extendedL2: v3 && layout.extendedL2,
            version: layout.version,
            refcountBits: v3 ? layout.refcountBits : 16,
            lazyRefcounts: v3 && layout.lazy,
            ...(backing !== 'none' ? { backingFile: `base.${backing}`, backingFormat: backing } : {}),
          });
          let q = await openImage(f);
          try {
            for (const batch of ops) {
              const b = disjoint(batch);
              await Promise.all(b.map((o) => run(q, o)));
              for (const o of b) await run(model, o);
            }
            const want = await content(model);
            expect(firstDiff(await content(q), want)).toBe(-1);
            await q.close();
            q = await openImage(f);
            expect(firstDiff(await content(q), want)).toBe(-1);
            const r = await (q as Qcow2Backend).check();
            expect(r.messages).toEqual([]);
            expect([r.corruptions, r.leaks]).toEqual([0, 0]);
          } finally {
            await q.close();
          }
        }),
        { numRuns: 25, seed: backing === 'none' ? 1 : backing === 'raw' ? 2 : 3 },
      );
    });
  }
});
