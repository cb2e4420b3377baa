/**
 * Property: any sequence of writes, compressed cluster writes, discards,
 * write-zeroes, reads and flushes (issued in batches, concurrently on disjoint
 * ranges that often share clusters) leaves a qcow2 image — with or without a
 * backing file — equal to the memory back-end given the same sequence; reads
 * issued beside a batch see what the model holds; the image stays equal after
 * close and reopen, check() finds neither errors nor leaks, and so do
 * `qemu-img check` and `qemu-img compare`.
 */
import fc from 'fast-check';
import { writeFileSync } from 'node:fs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Qcow2Backend} from '../src/index.js';
import { createImage, MemoryBackend, openImage, type BlockBackend } from '../src/index.js';
import { tempDir } from './helpers.js';
import { requireQemu, run as runTool } from './qemu.js';

let tmp: ReturnType<typeof tempDir> | undefined;
afterEach(() => {
  tmp?.remove();
  tmp = undefined;
});

const SIZE = 1 << 20;
const SECTORS = SIZE / 512;

/** Positions in sectors; `compressed` rounds down to its cluster and writes it whole. */
type Op =
  | { t: 'write'; s: number; n: number; v: number }
  | { t: 'compressed'; s: number; v: number }
  | { t: 'discard'; s: number; n: number }
  | { t: 'zero'; s: number; n: number; unmap: boolean }
  | { t: 'read'; s: number; n: number }
  | { t: 'flush' };

const kind = fc.oneof(
  { weight: 6, arbitrary: fc.constant('write' as const) },
  { weight: 1, arbitrary: fc.constant('compressed' as const) },
  { weight: 2, arbitrary: fc.constant('discard' as const) },
  { weight: 2, arbitrary: fc.constant('zero' as const) },
  { weight: 2, arbitrary: fc.constant('read' as const) },
  { weight: 1, arbitrary: fc.constant('flush' as const) },
);
/**
 * Anywhere, or just after the batch's previous op (a gap of 0–7 sectors): ops of one batch then
 * share clusters, and race for their allocation.
 */
const place = fc.oneof(fc.record({ near: fc.constant(true), d: fc.integer({ min: 0, max: 7 }) }), fc.record({ near: fc.constant(false), s: fc.nat({ max: SECTORS - 1 }) }));
const length = fc.oneof(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1, max: 300 }));
/** Batches: the ops of one batch are issued together (disjoint ranges only). */
const batches = fc.array(
  fc
    .tuple(fc.nat({ max: SECTORS - 1 }), fc.array(fc.tuple(kind, place, length, fc.integer({ min: 1, max: 255 }), fc.boolean()), { minLength: 1, maxLength: 4 }))
    .map(([base, raw]) => {
      let cursor = base;
      return raw.map(([t, p, len, v, unmap]): Op => {
        const s = Math.min(SECTORS - 1, p.near ? cursor + p.d : p.s);
        // Next to each other, ops are short: several fit in one cluster.
        const n = Math.min(p.near ? 1 + (len % 8) : len, SECTORS - s);
        cursor = s + n;
        switch (t) {
          case 'write':
            return { t, s, n, v };
          case 'compressed':
            return { t, s, v };
          case 'zero':
            return { t, s, n, unmap };
          case 'flush':
            return { t };
          default:
            return { t, s, n };
        }
      });
    }),
  { minLength: 1, maxLength: 25 },
);

/** The bytes an op touches, [start, end), for a cluster size `cs`. */
function span(o: Exclude<Op, { t: 'flush' }>, cs: number): [number, number] {
  if (o.t === 'compressed') {
    const c = Math.floor((o.s * 512) / cs) * cs;
    return [c, Math.min(c + cs, SIZE)];
  }
  return [o.s * 512, (o.s + o.n) * 512];
}

function disjoint(batch: Op[], cs: number): Op[] {
  const taken: [number, number][] = [];
  return batch.filter((o) => {
    if (o.t === 'flush') return true;
    const [a, b] = span(o, cs);
    if (taken.some(([x, y]) => a < y && x < b)) return false;
    taken.push([a, b]);
    return true;
  });
}

function pattern(len: number, v: number): Uint8Array {
  const d = new Uint8Array(len);
  for (let i = 0; i < d.length; i++) d[i] = (v + (i >> 9)) & 0xff;
  return d;
}

function run(b: BlockBackend, o: Op, cs: number): Promise<void> {
  switch (o.t) {
    case 'write': {
      const d = pattern(o.n * 512, o.v);
      // Two segments, split off the sector grid, to exercise vectored paths.
      const cut = Math.floor(d.length / 3) + 1;
      return b.write(o.s * 512, [d.subarray(0, cut), d.subarray(cut)]);
    }
    case 'compressed': {
      const [a, e] = span(o, cs);
      // The image stores it compressed (a whole cluster); the model takes it as a plain write.
      if (b instanceof MemoryBackend) return b.write(a, [pattern(e - a, o.v)]);
      return (b as Qcow2Backend).writeCompressed(a, pattern(cs, o.v).subarray(0, cs));
    }
    case 'discard':
      return b.discard(o.s * 512, o.n * 512);
    case 'zero':
      return b.writeZeroes(o.s * 512, o.n * 512, o.unmap);
    case 'read':
      // Compared where the batch is issued (see below).
      return Promise.resolve();
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

/** Across a test's runs: batches where two ops shared a cluster and one of them allocated. */
const shared = { clusters: 0, compressed: 0, reads: 0 };

function sharedCluster(batch: Op[], cs: number): boolean {
  const ranges = batch.filter((o) => o.t !== 'flush').map((o) => ({ o, r: span(o, cs) }));
  for (let i = 0; i < ranges.length; i++) {
    for (let j = i + 1; j < ranges.length; j++) {
      const [a, b] = [ranges[i]!, ranges[j]!];
      const writes = a.o.t === 'write' || a.o.t === 'compressed' || b.o.t === 'write' || b.o.t === 'compressed';
      const ca = [Math.floor(a.r[0] / cs), Math.floor((a.r[1] - 1) / cs)];
      const cb = [Math.floor(b.r[0] / cs), Math.floor((b.r[1] - 1) / cs)];
      if (writes && ca[0]! <= cb[1]! && cb[0]! <= ca[1]!) return true;
    }
  }
  return false;
}

describe('qcow2 equals the memory model', () => {
  beforeAll(() => requireQemu());

  for (const backing of ['none', 'raw', 'qcow2'] as const) {
    it(`backing: ${backing}`, async () => {
      shared.clusters = shared.compressed = shared.reads = 0;
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
          const cs = v3 && layout.extendedL2 ? Math.max(16384, layout.clusterSize) : layout.clusterSize;
          await createImage(f, 'qcow2', {
            size: SIZE,
            clusterSize: cs,
            extendedL2: v3 && layout.extendedL2,
            version: layout.version,
            refcountBits: v3 ? layout.refcountBits : 16,
            lazyRefcounts: v3 && layout.lazy,
            ...(backing !== 'none' ? { backingFile: `base.${backing}`, backingFormat: backing } : {}),
          });
          let q = await openImage(f);
          try {
            for (const batch of ops) {
              const b = disjoint(batch, cs);
              if (sharedCluster(b, cs)) shared.clusters++;
              // Reads go with the batch, on ranges no op of it touches: what the model holds now.
              const reads = b.filter((o): o is Extract<Op, { t: 'read' }> => o.t === 'read');
              const want = await Promise.all(reads.map(async (o) => {
                const buf = new Uint8Array(o.n * 512);
                await model.read(o.s * 512, [buf]);
                return buf;
              }));
              const got = reads.map((o) => new Uint8Array(o.n * 512));
              await Promise.all([...b.map((o) => run(q, o, cs)), ...reads.map((o, i) => q.read(o.s * 512, [got[i]!]))]);
              for (let i = 0; i < reads.length; i++) {
                shared.reads++;
                expect(firstDiff(got[i]!, want[i]!), `read of sectors ${reads[i]!.s}+${reads[i]!.n} during a batch`).toBe(-1);
              }
              for (const o of b) {
                if (o.t === 'compressed') shared.compressed++;
                await run(model, o, cs);
              }
            }
            const want = await content(model);
            expect(firstDiff(await content(q), want)).toBe(-1);
            await q.close();
            q = await openImage(f);
            expect(firstDiff(await content(q), want)).toBe(-1);
            const r = await (q as Qcow2Backend).check();
            expect(r.messages).toEqual([]);
            expect([r.corruptions, r.leaks]).toEqual([0, 0]);
            await q.close();
            // QEMU's own view: the image is clean and holds what the model holds.
            const chk = runTool('qemu-img', ['check', '-f', 'qcow2', f]);
            expect(chk.status, chk.stdout + chk.stderr).toBe(0);
            writeFileSync(tmp.path('want.raw'), want);
            const cmp = runTool('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', f, tmp.path('want.raw')]);
            expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
            q = await openImage(f);
          } finally {
            await q.close();
          }
        }),
        { numRuns: 60 },
      );
      // The generator reaches what this is for.
      expect(shared.clusters).toBeGreaterThan(40);
      expect(shared.compressed).toBeGreaterThan(30);
      expect(shared.reads).toBeGreaterThan(60);
    });
  }
});
