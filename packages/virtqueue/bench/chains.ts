/**
 * Chains per second through a virtqueue, against a bare SharedArrayBuffer
 * SPSC ring of u32 tokens doing the same round trip, measured in one run:
 *  (a) one thread: add → pop → complete → reclaim in batches of 32;
 *  (b) driver and device in two worker threads, with doorbells (Atomics.wait)
 *      when a side runs dry.
 * Runs of baseline and candidates alternate (timings on a 2-core machine are
 * bimodal); figures are medians of ROUNDS runs with min–max spread.
 *
 * Usage: pnpm --filter @ioplane/virtqueue bench [-- --rounds 11 --quick]
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
const BATCH = 32;
const N1 = quick ? 200_000 : 1_000_000;
const N2 = quick ? 100_000 : 300_000;

const split: RingFeatures = { packed: false, eventIdx: true, indirect: false, inOrder: false };
const packed: RingFeatures = { packed: true, eventIdx: true, indirect: false, inOrder: false };

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
    while (dev.pop(chain)) dev.pushUsed(chain, 0);
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
  const w = new Worker(BOOT, { execArgv: ['--conditions=@ioplane/source'], workerData: { __entry: ENTRY, role, sab, features, size: SIZE, bells } });
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
  const base = median(rows[0]!.samples);
  console.log(`\n${title}`);
  console.log('  ' + ['case', 'median chains/s', 'min', 'max', 'ratio to bare ring'].map((h, i) => (i === 0 ? h.padEnd(34) : h.padStart(i === 4 ? 20 : 16))).join(''));
  const out: Record<string, unknown> = {};
  for (const r of rows) {
    const m = median(r.samples);
    const fmt = (v: number): string => `${(v / 1e6).toFixed(2)} M`;
    console.log('  ' + r.name.padEnd(34) + [fmt(m), fmt(Math.min(...r.samples)), fmt(Math.max(...r.samples)), (m / base).toFixed(3)].map((s) => s.padStart(16)).join(''));
    out[r.name] = { median: m, min: Math.min(...r.samples), max: Math.max(...r.samples), ratio: m / base, samples: r.samples };
  }
  return out;
}

async function main(): Promise<void> {
  console.log(`virtqueue benchmark: queue size ${SIZE}, 1-descriptor chains, EVENT_IDX; ${ROUNDS} rounds; node ${process.version}`);
  const a: Row[] = [
    { name: 'bare SPSC ring (u32 tokens)', samples: [] },
    { name: 'split virtqueue', samples: [] },
    { name: 'packed virtqueue', samples: [] },
  ];
  for (let r = 0; r < ROUNDS; r++) {
    a[0]!.samples.push(oneThreadBare(N1));
    a[1]!.samples.push(oneThreadQueue(split, N1));
    a[2]!.samples.push(oneThreadQueue(packed, N1));
    process.stdout.write(`  (a) round ${r + 1}/${ROUNDS}\r`);
  }
  const ra = report(`(a) one thread, batches of ${BATCH}: add → pop → complete → reclaim`, a);

  const pairs = await Promise.all([pair(undefined), pair(split), pair(packed)]);
  const b: Row[] = [
    { name: 'bare SPSC ring (u32 tokens)', samples: [] },
    { name: 'split virtqueue', samples: [] },
    { name: 'packed virtqueue', samples: [] },
  ];
  try {
    for (let r = 0; r < ROUNDS; r++) {
      for (let i = 0; i < 3; i++) b[i]!.samples.push(await twoThreads(pairs[i]!, N2));
      process.stdout.write(`  (b) round ${r + 1}/${ROUNDS}\r`);
    }
  } finally {
    for (const p of pairs) {
      await p.first.terminate();
      await p.second.terminate();
    }
  }
  const rb = report('(b) driver and device in two worker threads, doorbells when idle', b);
  mkdirSync('bench-results', { recursive: true });
  writeFileSync('bench-results/virtqueue.json', JSON.stringify({ date: new Date().toISOString(), node: process.version, size: SIZE, rounds: ROUNDS, oneThread: ra, twoThreads: rb }, null, 2));
  console.log('\nwritten: bench-results/virtqueue.json');
}

await main();
