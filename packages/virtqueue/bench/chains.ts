/**
 * Chains per second through a virtqueue, against a bare SharedArrayBuffer
 * SPSC ring of u32 tokens doing the same round trip, measured in one run:
 *  (a) one thread: add → pop → complete → reclaim in batches of 32;
 *  (b) driver and device in two worker threads, each publishing after at
 *      most 32 buffers (as vhost batches used entries, as a guest batches
 *      kicks), with doorbells (Atomics.wait) when a side runs dry. The bare
 *      ring runs the same loop.
 * Each queue format runs with EVENT_IDX, and again with IN_ORDER as well
 * (the device then writes one used entry per batch, §2.7.9).
 * Runs of baseline and candidates alternate (timings on a 2-core machine are
 * bimodal); figures are medians of ROUNDS runs with min–max spread.
 *
 * Usage: pnpm --filter @ioplane/virtqueue bench [-- --rounds 15 --quick --batch 32]
 * (`--batch 256`, a whole ring, makes (b) lock-step: each side drains all it
 * sees before it publishes, so the two never work at once.)
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { GuestMemory } from '@ioplane/guest-memory';
import { BufferList, type RingFeatures, type UsedBuffer, createDeviceQueue, createDriverQueue, layoutQueue } from '../src/index.js';
import { SpscRing, spscBytes } from './spsc.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const ROUNDS = Number(args[args.indexOf('--rounds') + 1]) || (quick ? 3 : 11);
const SIZE = 256;
const BATCH = Number(args[args.indexOf('--batch') + 1]) || 32;
const N1 = quick ? 200_000 : 1_000_000;
// Two threads: runs of ~0.1 s each (the bare ring is 4-5 times as fast).
const N2 = quick ? 300_000 : 2_000_000;
const N2_BARE = quick ? 1_500_000 : 10_000_000;

const split: RingFeatures = { packed: false, eventIdx: true, indirect: false, inOrder: false };
const packed: RingFeatures = { packed: true, eventIdx: true, indirect: false, inOrder: false };
const CASES: { name: string; features: RingFeatures }[] = [
  { name: 'split virtqueue', features: split },
  { name: 'split virtqueue, IN_ORDER', features: { ...split, inOrder: true } },
  { name: 'packed virtqueue', features: packed },
  { name: 'packed virtqueue, IN_ORDER', features: { ...packed, inOrder: true } },
];

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

// ── (a) one thread ──
function oneThreadQueue(features: RingFeatures, n: number): number {
  const mem = new GuestMemory([{ gpa: 0, size: 1 << 21 }]);
  const { config } = layoutQueue(features.packed, SIZE, 0x1000);
  const drv = createDriverQueue<number>(mem, config, features);
  const dev = createDeviceQueue(mem, config, features);
  const list = new BufferList().push(0x100000, 64, false);
  const chain = dev.createChain();
  const out: UsedBuffer<number> = { token: undefined, len: 0 };
  const t0 = process.hrtime.bigint();
  let done = 0;
  while (done < n) {
    for (let i = 0; i < BATCH; i++) drv.add(list, i);
    drv.publish();
    drv.needsNotify();
    while (dev.pop(chain)) {
      if (features.inOrder) dev.pushUsedInOrder(chain);
      else dev.pushUsed(chain, 0);
    }
    dev.publishUsed();
    dev.needsInterrupt();
    while (drv.pollUsed(out)) done++;
  }
  return n / (Number(process.hrtime.bigint() - t0) / 1e9);
}

function oneThreadBare(n: number): number {
  const sab = new SharedArrayBuffer(2 * spscBytes(SIZE));
  const fwd = new SpscRing(sab, 0, SIZE);
  const back = new SpscRing(sab, spscBytes(SIZE), SIZE);
  const t0 = process.hrtime.bigint();
  let done = 0;
  while (done < n) {
    for (let i = 0; i < BATCH; i++) fwd.push(i);
    fwd.publish();
    fwd.consumerSleeping();
    let v: number;
    while ((v = fwd.pop()) >= 0) back.push(v);
    fwd.release();
    back.publish();
    back.consumerSleeping();
    while (back.pop() >= 0) done++;
    back.release();
  }
  return n / (Number(process.hrtime.bigint() - t0) / 1e9);
}

// ── (b) two threads ──
const BOOT = new URL('./ts-worker.mjs', import.meta.url);
const ENTRY = new URL('./worker.ts', import.meta.url).href;

interface Pair {
  first: Worker;
  second: Worker;
  sab: SharedArrayBuffer;
  virtqueue: boolean;
}

function spawn(role: string, sab: SharedArrayBuffer, features: RingFeatures, bells: Int32Array): Promise<Worker> {
  const w = new Worker(BOOT, { execArgv: ['--conditions=@ioplane/source'], workerData: { __entry: ENTRY, role, sab, features, size: SIZE, bells, batch: BATCH } });
  return new Promise((resolve, reject) => {
    w.once('message', () => resolve(w));
    w.once('error', reject);
  });
}

async function pair(features: RingFeatures | undefined): Promise<Pair> {
  const sab = new SharedArrayBuffer(1 << 21);
  const bells = new Int32Array(new SharedArrayBuffer(8));
  const f = features ?? split;
  const [first, second] = await Promise.all(
    features ? [spawn('driver', sab, f, bells), spawn('device', sab, f, bells)] : [spawn('producer', sab, f, bells), spawn('consumer', sab, f, bells)],
  );
  return { first, second, sab, virtqueue: features !== undefined };
}

function next(w: Worker, type: string): Promise<{ ns?: number }> {
  return new Promise((resolve, reject) => {
    const on = (m: { type: string; ns?: number }): void => {
      if (m.type === type) {
        w.off('message', on);
        w.off('error', reject);
        resolve(m);
      }
    };
    w.on('message', on);
    w.once('error', reject);
  });
}

async function twoThreads(p: Pair, n: number): Promise<number> {
  new Uint8Array(p.sab).fill(0);
  const firstDone = next(p.first, 'done');
  if (p.virtqueue) {
    // The driver lays out (and zeroes) the ring before the device attaches.
    const ready = next(p.first, 'ring-ready');
    p.first.postMessage({ n });
    await ready;
  } else {
    p.first.postMessage({ n });
  }
  const secondDone = next(p.second, 'done');
  p.second.postMessage({ n });
  const [{ ns }] = await Promise.all([firstDone, secondDone]);
  return n / (ns! / 1e9);
}

interface Row {
  name: string;
  samples: number[];
}

function report(title: string, rows: Row[]): Record<string, unknown> {
  const base = rows[0]!.samples;
  const baseMedian = median(base);
  console.log(`\n${title}`);
  const heads = ['case', 'median chains/s', 'min', 'max', 'ratio of medians', 'median of ratios'];
  console.log('  ' + heads.map((h, i) => (i === 0 ? h.padEnd(34) : h.padStart(i >= 4 ? 18 : 16))).join(''));
  const out: Record<string, unknown> = {};
  for (const r of rows) {
    const m = median(r.samples);
    // Each round runs every case back to back: a ratio within a round is
    // immune to the machine's slower and faster spells, the median of those
    // to the odd round one of them hit.
    const perRound = median(r.samples.map((v, i) => v / base[i]!));
    const fmt = (v: number): string => `${(v / 1e6).toFixed(2)} M`;
    console.log('  ' + r.name.padEnd(34) + [fmt(m), fmt(Math.min(...r.samples)), fmt(Math.max(...r.samples))].map((s) => s.padStart(16)).join('') + [(m / baseMedian).toFixed(3), perRound.toFixed(3)].map((s) => s.padStart(18)).join(''));
    out[r.name] = { median: m, min: Math.min(...r.samples), max: Math.max(...r.samples), ratio: m / baseMedian, medianOfRoundRatios: perRound, samples: r.samples };
  }
  return out;
}

async function main(): Promise<void> {
  console.log(`virtqueue benchmark: queue size ${SIZE}, 1-descriptor chains, EVENT_IDX; ${ROUNDS} rounds; node ${process.version}`);
  const rows = (): Row[] => [{ name: 'bare SPSC ring (u32 tokens)', samples: [] }, ...CASES.map((c) => ({ name: c.name, samples: [] }))];
  const a = rows();
  for (let r = 0; r < ROUNDS; r++) {
    a[0]!.samples.push(oneThreadBare(N1));
    CASES.forEach((c, i) => a[i + 1]!.samples.push(oneThreadQueue(c.features, N1)));
    process.stdout.write(`  (a) round ${r + 1}/${ROUNDS}\r`);
  }
  const ra = report(`(a) one thread, batches of ${BATCH}: add → pop → complete → reclaim`, a);

  const pairs = await Promise.all([pair(undefined), ...CASES.map((c) => pair(c.features))]);
  const b = rows();
  try {
    for (let r = 0; r < ROUNDS; r++) {
      for (let i = 0; i < pairs.length; i++) b[i]!.samples.push(await twoThreads(pairs[i]!, i === 0 ? N2_BARE : N2));
      process.stdout.write(`  (b) round ${r + 1}/${ROUNDS}\r`);
    }
  } finally {
    for (const p of pairs) {
      await p.first.terminate();
      await p.second.terminate();
    }
  }
  const rb = report(`(b) driver and device in two worker threads, publishing every ≤ ${BATCH}, doorbells when idle`, b);
  mkdirSync('bench-results', { recursive: true });
  writeFileSync('bench-results/virtqueue.json', JSON.stringify({ date: new Date().toISOString(), node: process.version, size: SIZE, batch: BATCH, rounds: ROUNDS, oneThread: ra, twoThreads: rb }, null, 2));
  console.log('\nwritten: bench-results/virtqueue.json');
}

await main();
