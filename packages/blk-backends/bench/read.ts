/**
 * Read benchmark: 4 KiB random and 64 KiB sequential reads at queue depth 1
 * and 32 on a raw file (warm page cache) and on a qcow2 image holding the same
 * data, directly on the back-ends. Raw and qcow2 runs alternate back to back;
 * medians over RUNS runs, spread as min–max, and the qcow2/raw ratio. Then
 * 4 KiB random allocating writes at QD32 into fresh images of both formats.
 *   pnpm --filter @ioplane/blk-backends bench     (RUNS=10 SIZE_MB=128 by default)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { copyImage, createImage, openImage, RawFileBackend, type BlockBackend } from '../src/index.js';

const RUNS = Number(process.env.RUNS ?? 10);
const SIZE = Number(process.env.SIZE_MB ?? 128) * 1024 * 1024;

/** xorshift32: deterministic offsets, seeded per run. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

interface Result {
  iops: number;
  mbps: number;
  p50: number;
  p99: number;
}

async function runPattern(b: BlockBackend, bs: number, qd: number, random: boolean, ops: number, seed: number): Promise<Result> {
  const next = rng(seed);
  const blocks = b.size / bs;
  const lat = new Float64Array(ops);
  const bufs = Array.from({ length: qd }, () => new Uint8Array(bs));
  let issued = 0;
  let seq = 0;
  const t0 = performance.now();
  const worker = async (slot: number): Promise<void> => {
    const seg = [bufs[slot]!];
    while (issued < ops) {
      const i = issued++;
      const blk = random ? next() % blocks : seq++ % blocks;
      const s = performance.now();
      await b.read(blk * bs, seg);
      lat[i] = performance.now() - s;
    }
  };
  await Promise.all(Array.from({ length: qd }, (_, s) => worker(s)));
  const secs = (performance.now() - t0) / 1000;
  lat.sort();
  return { iops: ops / secs, mbps: (ops * bs) / secs / 1e6, p50: lat[Math.floor(ops * 0.5)]! * 1000, p99: lat[Math.floor(ops * 0.99)]! * 1000 };
}

async function runWrites(b: BlockBackend, bs: number, qd: number, ops: number, seed: number): Promise<Result> {
  const next = rng(seed);
  const blocks = b.size / bs;
  const lat = new Float64Array(ops);
  const bufs = Array.from({ length: qd }, (_, i) => new Uint8Array(bs).fill(i + 1));
  let issued = 0;
  const t0 = performance.now();
  const worker = async (slot: number): Promise<void> => {
    const seg = [bufs[slot]!];
    while (issued < ops) {
      const i = issued++;
      const s = performance.now();
      await b.write((next() % blocks) * bs, seg);
      lat[i] = performance.now() - s;
    }
  };
  await Promise.all(Array.from({ length: qd }, (_, s) => worker(s)));
  const secs = (performance.now() - t0) / 1000;
  lat.sort();
  return { iops: ops / secs, mbps: (ops * bs) / secs / 1e6, p50: lat[Math.floor(ops * 0.5)]! * 1000, p99: lat[Math.floor(ops * 0.99)]! * 1000 };
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ioplane-bench-'));
  try {
    const rawPath = join(dir, 'disk.raw');
    const qPath = join(dir, 'disk.qcow2');
    await RawFileBackend.create(rawPath, SIZE);
    const w = await openImage(rawPath);
    const chunk = new Uint8Array(1 << 20);
    const r = rng(7);
    for (let off = 0; off < SIZE; off += chunk.length) {
      for (let i = 0; i < chunk.length; i += 4) new DataView(chunk.buffer).setUint32(i, r());
      await w.write(off, [chunk]);
    }
    await w.flush();
    await createImage(qPath, 'qcow2', { size: SIZE });
    const q0 = await openImage(qPath);
    await copyImage(w, q0);
    await q0.close();
    await w.close();

    const raw = await openImage(rawPath, { readOnly: true });
    const qcow = await openImage(qPath, { readOnly: true });
    // Warm the page cache (and qcow2's L2 cache) with one full pass each.
    for (const b of [raw, qcow]) for (let off = 0; off < SIZE; off += chunk.length) await b.read(off, [chunk]);

    const cases = [
      { name: '4k rand', bs: 4096, random: true, ops: 20000 },
      { name: '64k seq', bs: 65536, random: false, ops: 4000 },
    ];
    console.log(`ioplane blk-backends read benchmark: ${SIZE >> 20} MiB image, ${RUNS} runs (alternating), medians [min–max]`);
    console.log(`node ${process.version}, ${process.platform}/${process.arch}`);
    const rows: string[] = [];
    for (const c of cases) {
      for (const qd of [1, 32]) {
        const res: Record<'raw' | 'qcow2', Result[]> = { raw: [], qcow2: [] };
        for (let run = 0; run < RUNS; run++) {
          res.raw.push(await runPattern(raw, c.bs, qd, c.random, c.ops, 1000 + run));
          res.qcow2.push(await runPattern(qcow, c.bs, qd, c.random, c.ops, 1000 + run));
        }
        const ratios = res.qcow2.map((x, i) => x.iops / res.raw[i]!.iops);
        for (const k of ['raw', 'qcow2'] as const) {
          const iops = res[k].map((x) => x.iops);
          rows.push(
            `${c.name.padEnd(8)} QD${String(qd).padEnd(3)} ${k.padEnd(6)} ` +
              `${median(iops).toFixed(0).padStart(8)} IOPS [${Math.min(...iops).toFixed(0)}–${Math.max(...iops).toFixed(0)}]  ` +
              `${median(res[k].map((x) => x.mbps)).toFixed(1).padStart(7)} MB/s  ` +
              `p50 ${median(res[k].map((x) => x.p50)).toFixed(1).padStart(6)} µs  p99 ${median(res[k].map((x) => x.p99)).toFixed(1).padStart(7)} µs`,
          );
        }
        rows.push(`${c.name.padEnd(8)} QD${String(qd).padEnd(3)} qcow2/raw IOPS ratio ${median(ratios).toFixed(2)} [${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}]`);
        console.log(rows.slice(-3).join('\n'));
      }
    }
    await raw.close();
    await qcow.close();

    // Allocating writes: 4 KiB random writes at QD32 into fresh images (qcow2 allocates a cluster per
    // first touch, copy-on-write of the rest of it; raw extends a sparse file).
    const wr: Record<'raw' | 'qcow2', Result[]> = { raw: [], qcow2: [] };
    const wsize = 64 * 1024 * 1024;
    for (let run = 0; run < RUNS; run++) {
      for (const fmt of ['raw', 'qcow2'] as const) {
        const p = join(dir, `w.${fmt}`);
        await createImage(p, fmt, { size: wsize });
        const b = await openImage(p);
        wr[fmt].push(await runWrites(b, 4096, 32, 4000, 2000 + run));
        await b.flush();
        await b.close();
        rmSync(p);
      }
    }
    const wratios = wr.qcow2.map((x, i) => x.iops / wr.raw[i]!.iops);
    for (const k of ['raw', 'qcow2'] as const) {
      const iops = wr[k].map((x) => x.iops);
      console.log(
        `4k randw QD32 ${k.padEnd(6)} ${median(iops).toFixed(0).padStart(8)} IOPS [${Math.min(...iops).toFixed(0)}–${Math.max(...iops).toFixed(0)}]  ` +
          `${median(wr[k].map((x) => x.mbps)).toFixed(1).padStart(7)} MB/s  p50 ${median(wr[k].map((x) => x.p50)).toFixed(1).padStart(6)} µs  p99 ${median(wr[k].map((x) => x.p99)).toFixed(1).padStart(7)} µs  (fresh image)`,
      );
    }
    console.log(`4k randw QD32 qcow2/raw IOPS ratio ${median(wratios).toFixed(2)} [${Math.min(...wratios).toFixed(2)}–${Math.max(...wratios).toFixed(2)}]`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
