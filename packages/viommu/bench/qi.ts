/**
 * What a strict unmap costs when its invalidation goes through the VT-d
 * invalidation queue: `node --conditions=@ioplane/source --import tsx bench/qi.ts`.
 *
 * Per strict map + unmap pair (one PSI each), medians over RUNS rounds, each round running every
 * scenario in turn:
 *  - direct        VtdGuestDriver calling the VtdRemapper itself (the baseline: one thread)
 *  - queued-inline the same through VtdQueuedInvalidator, the queue processed inline (one thread)
 *  - worker/serve  the guest in a worker, the device thread serving the doorbell (Atomics.waitAsync)
 *  - worker/poll   the guest in a worker, the device thread spinning on queue.poll()
 */
import { Worker } from 'node:worker_threads';
import { GuestMemory } from '@ioplane/guest-memory';
import { VtdGuestDriver, VtdInvalidationQueue, VtdQiRegisters, VtdQueuedInvalidator, VtdRemapper, type VtdInvalidator } from '../src/index.js';

const RUNS = Number(process.env.RUNS ?? 7);
const OPS = Number(process.env.OPS ?? 20_000);
const BOOT = new URL('./ts-worker.mjs', import.meta.url);
const ENTRY = new URL('./qi-guest.ts', import.meta.url).href;

function oneThread(queued: boolean): number {
  const ram = GuestMemory.create(1 << 20);
  const vtd = new VtdRemapper({ memory: ram });
  let unit: VtdInvalidator = vtd;
  if (queued) {
    const regs = VtdQiRegisters.create();
    const q = new VtdInvalidationQueue(vtd, ram, regs);
    unit = new VtdQueuedInvalidator({ mem: ram, regs, queue: { addr: 0xc0000 }, status: 0xc2000, notify: () => q.process() });
  }
  const driver = new VtdGuestDriver({ unit, mem: ram, area: { addr: 0x80000, len: 0x40000 } });
  const dom = driver.attach(0x0108, { mode: 'strict' });
  dom.map(0x10000, 4096, 'bidirectional');
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < OPS; i++) dom.unmap(dom.map(0x10000 + (i & 63) * 4096, 4096, 'bidirectional'));
  return Number(process.hrtime.bigint() - t0) / OPS;
}

async function twoThreads(spin: boolean): Promise<number> {
  const ram = GuestMemory.create(1 << 20);
  const vtd = new VtdRemapper({ memory: ram });
  const regs = VtdQiRegisters.create();
  const q = new VtdInvalidationQueue(vtd, ram, regs);
  const flag = new Int32Array(new SharedArrayBuffer(4));
  q.serve(5);
  const worker = new Worker(BOOT, { execArgv: ['--conditions=@ioplane/source'], workerData: { __entry: ENTRY, sab: ram.regions[0]!.bytes.buffer, regs: regs.array, flag, ops: OPS } });
  try {
    const next = (type: string) =>
      new Promise<{ ns: number }>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no ${type} within 60 s`)), 60_000);
        worker.on('message', (m: { type: string; ns: number }) => {
          if (m.type === type) {
            clearTimeout(t);
            resolve(m);
          }
        });
        worker.once('error', reject);
      });
    await next('ready');
    const done = next('done');
    if (spin) await q.stop();
    worker.postMessage('go');
    if (spin) {
      const deadline = Date.now() + 60_000;
      while (Atomics.load(flag, 0) === 0 && Date.now() < deadline) q.poll();
    }
    return (await done).ns;
  } finally {
    await q.stop();
    await worker.terminate();
  }
}

const names = ['direct', 'queued-inline', 'worker/serve', 'worker/poll'] as const;
const samples: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
oneThread(false);
oneThread(true);
for (let r = 0; r < RUNS; r++) {
  samples.direct!.push(oneThread(false));
  samples['queued-inline']!.push(oneThread(true));
  samples['worker/serve']!.push(await twoThreads(false));
  samples['worker/poll']!.push(await twoThreads(true));
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const base = median(samples.direct!);
console.log(`strict map + unmap (one PSI + wait), ${OPS} pairs, median of ${RUNS} rounds`);
for (const n of names) {
  const m = median(samples[n]!);
  console.log(`${n.padEnd(14)} ${m.toFixed(0).padStart(8)} ns/pair   ×${(m / base).toFixed(2)} of direct`);
}
