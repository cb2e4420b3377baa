/**
 * Flush benchmark: rounds of one 4 KiB write into a fresh cluster followed by a flush (the
 * pattern of a guest that syncs after every allocating write: a journal, a database log), on
 * qcow2 with refcounts in order and with lazy refcounts, alternating in each run; medians of
 * RUNS runs (spread min–max) and the lazy/ordered ratio run by run. Each flush pays the
 * fdatasyncs the integrity order needs (see the README): the figure is mostly theirs.
 *   pnpm --filter @ioplane/blk-backends bench:flush     (RUNS=5 OPS=400 by default)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createImage, Qcow2Backend } from '../src/index.js';

const RUNS = Number(process.env.RUNS ?? 5);
const OPS = Number(process.env.OPS ?? 400);
const CLUSTER = 65536;

async function round(lazy: boolean): Promise<number> {
  const dir = mkdtempSync(join(process.env.BENCH_DIR ?? tmpdir(), 'ioplane-flush-'));
  try {
    const f = join(dir, 'f.qcow2');
    await createImage(f, 'qcow2', { size: 1 << 30, clusterSize: CLUSTER, lazyRefcounts: lazy });
    const q = await Qcow2Backend.open(f, { engine: 'sync' });
    const buf = new Uint8Array(4096).fill(7);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < OPS; i++) {
      // Scattered over the image: each write allocates, and L2 tables fill over the run.
      await q.write(((i * 7919) % 16384) * CLUSTER, [buf]);
      await q.flush();
    }
    const us = Number(process.hrtime.bigint() - t0) / 1000 / OPS;
    await q.close();
    return us;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const med = (a: number[]): number => [...a].sort((x, y) => x - y)[a.length >> 1]!;
const ordered: number[] = [];
const lazy: number[] = [];
const ratio: number[] = [];
for (let r = 0; r < RUNS; r++) {
  ordered.push(await round(false));
  lazy.push(await round(true));
  ratio.push(lazy[r]! / ordered[r]!);
}
const row = (name: string, v: number[]): string => `${name.padEnd(22)} ${med(v).toFixed(1).padStart(8)} µs  (${Math.min(...v).toFixed(0)}–${Math.max(...v).toFixed(0)})`;
console.log(`4 KiB allocating write + flush, ${OPS} per run, medians of ${RUNS} runs`);
console.log(row('refcounts in order', ordered));
console.log(row('lazy refcounts', lazy));
console.log(`lazy/ordered ratio      ${med(ratio).toFixed(3)}`);
