// Frames per second through the loopback back-end, in-process and across a worker
// thread, against a bare SharedArrayBuffer ring measured in the same run (alternating,
// medians of RUNS, with the spread). Run: pnpm --filter @ioplane/net-backends bench
import { Worker } from 'node:worker_threads';
import { createLoopbackPair, createSharedLoopback, SharedLoopbackBackend, type NetBackend } from '../src/index.js';

const RUNS = Number(process.env.RUNS ?? 11);
const BATCH = 64;
const BOOT = new URL('./bootstrap.mjs', import.meta.url);
const WORKER = new URL('./loopback-worker.ts', import.meta.url).href;

function frames(size: number): Uint8Array[] {
  return Array.from({ length: BATCH }, (_, i) => {
    const f = new Uint8Array(size);
    f.fill(i);
    f[12] = 0x88;
    f[13] = 0xb5;
    return f;
  });
}

function stats(xs: number[]): { med: number; min: number; max: number } {
  const s = [...xs].sort((a, b) => a - b);
  return { med: s[Math.floor(s.length / 2)]!, min: s[0]!, max: s.at(-1)! };
}

function mfps(x: number): string {
  return `${(x / 1e6).toFixed(2)} M/s`;
}

class Peer {
  private waiter: ((m: { done?: number; ready?: boolean }) => void) | undefined;
  constructor(readonly w: Worker) {
    w.on('message', (m: { done?: number; ready?: boolean }) => this.waiter?.(m));
    w.on('error', (e) => {
      console.error(e);
      process.exit(1);
    });
  }
  next(): Promise<{ done?: number; ready?: boolean }> {
    return new Promise((r) => (this.waiter = r));
  }
  /** Tells the worker to expect n frames; resolves once it is ready, with a promise of its completion. */
  async expect(n: number): Promise<{ done: Promise<unknown> }> {
    const ready = this.next();
    this.w.postMessage({ expect: n });
    await ready;
    return { done: this.next() };
  }
}

/** Sends n frames through `a` in batches, honouring back-pressure. */
async function pump(a: NetBackend, batch: Uint8Array[], n: number): Promise<void> {
  let sent = 0;
  while (sent < n) {
    const want = Math.min(BATCH, n - sent);
    const k = a.send(batch, want);
    sent += k;
    if (k < want) await a.writable();
  }
}

async function inProcessLoopback(size: number, n: number): Promise<number> {
  const p = createLoopbackPair({ ringBytes: 1 << 20 });
  let got = 0;
  let done!: () => void;
  const all = new Promise<void>((r) => (done = r));
  p.b.onReceive(() => {
    if (++got === n) done();
  });
  const batch = frames(size);
  const t = performance.now();
  await pump(p.a, batch, n);
  await all;
  const dt = performance.now() - t;
  await p.a.close();
  await p.b.close();
  return n / (dt / 1000);
}

/** The bare in-process baseline: copy a frame into a slot ring and read it back, batch by batch. */
function inProcessBare(size: number, n: number, shared: boolean): number {
  const slots = 1024;
  const slotSize = (size + 4 + 3) & ~3;
  const buf = shared ? new SharedArrayBuffer(128 + slots * slotSize) : new ArrayBuffer(128 + slots * slotSize);
  const bytes = new Uint8Array(buf, 128);
  const words = new Uint32Array(buf, 128);
  const batch = frames(size);
  let head = 0;
  let tail = 0;
  let sink = 0;
  const t = performance.now();
  while (tail < n) {
    for (let i = 0; i < BATCH && head < n; i++, head++) {
      const at = (head % slots) * slotSize;
      words[at >>> 2] = size;
      bytes.set(batch[i]!, at + 4);
    }
    while (tail < head) {
      const at = (tail % slots) * slotSize;
      sink ^= bytes[at + 4 + words[at >>> 2]! - 1]!;
      tail++;
    }
  }
  const dt = performance.now() - t;
  if (sink === 256) console.log(sink);
  return n / (dt / 1000);
}

async function main(): Promise<void> {
  console.log(`loopback benchmark: ${RUNS} runs each, batches of ${BATCH}, medians [min–max]; Node ${process.version}`);
  for (const size of [64, 1500]) {
    const n = size === 64 ? 200_000 : 100_000;
    // Cross-thread: a shared-loopback worker and a bare-ring worker, kept for all runs.
    const channel = createSharedLoopback({ ringBytes: 1 << 20 });
    const backendPeer = new Peer(new Worker(BOOT, { workerData: { module: WORKER, kind: 'backend', channel } }));
    const a = SharedLoopbackBackend.open(channel, 'a');
    const slots = 4096;
    const slotSize = (size + 4 + 3) & ~3;
    const ring = new SharedArrayBuffer(128 + slots * slotSize);
    const barePeer = new Peer(new Worker(BOOT, { workerData: { module: WORKER, kind: 'bare', ring, slots, slotSize } }));
    const ctl = new Int32Array(ring, 0, 32);
    const rb = new Uint8Array(ring, 128);
    const rw = new Uint32Array(ring, 128);
    const batch = frames(size);
    let bareHead = 0;

    const res = { bareIn: [] as number[], bareInAb: [] as number[], loopIn: [] as number[], bareX: [] as number[], loopX: [] as number[] };
    await inProcessLoopback(size, n / 10); // warm-up
    for (let r = 0; r < RUNS; r++) {
      res.bareIn.push(inProcessBare(size, n, true));
      res.bareInAb.push(inProcessBare(size, n, false));
      res.loopIn.push(await inProcessLoopback(size, n));

      // Bare cross-thread: busy-poll producer into the ring the worker drains.
      let { done } = await barePeer.expect(n);
      let t = performance.now();
      const end = bareHead + n;
      while (bareHead !== end) {
        const tail = Atomics.load(ctl, 16);
        if (bareHead - tail >= slots) {
          // Full: sleep until the consumer frees a slot.
          Atomics.store(ctl, 17, 1);
          if (Atomics.load(ctl, 16) === tail) Atomics.wait(ctl, 16, tail, 50);
          Atomics.store(ctl, 17, 0);
          continue;
        }
        let wrote = 0;
        while (bareHead !== end && bareHead - tail < slots && wrote < BATCH) {
          const at = (bareHead % slots) * slotSize;
          rw[at >>> 2] = size;
          rb.set(batch[bareHead % BATCH]!, at + 4);
          bareHead++;
          wrote++;
        }
        Atomics.store(ctl, 0, bareHead);
        if (Atomics.load(ctl, 1) !== 0) Atomics.notify(ctl, 0);
      }
      await done;
      res.bareX.push(n / ((performance.now() - t) / 1000));

      ({ done } = await backendPeer.expect(n));
      t = performance.now();
      await pump(a, batch, n);
      await done;
      res.loopX.push(n / ((performance.now() - t) / 1000));
    }
    backendPeer.w.postMessage({ stop: true });
    barePeer.w.postMessage({ stop: true });
    await a.close();
    const fmt = (xs: number[]): string => {
      const s = stats(xs);
      return `${mfps(s.med)} [${mfps(s.min)}–${mfps(s.max)}]`;
    };
    const ratio = (x: number[], base: number[]): string => (stats(x).med / stats(base).med).toFixed(2);
    console.log(`${size} B frames:`);
    console.log(`  in-process   bare SAB ring ${fmt(res.bareIn)} | bare ArrayBuffer ring ${fmt(res.bareInAb)} | loopback back-end (ArrayBuffer rings) ${fmt(res.loopIn)} | ratio to SAB ${ratio(res.loopIn, res.bareIn)}, to ArrayBuffer ${ratio(res.loopIn, res.bareInAb)}`);
    console.log(`  cross-thread bare SAB ring ${fmt(res.bareX)} | shared loopback  ${fmt(res.loopX)} | ratio ${ratio(res.loopX, res.bareX)}`);
    await Promise.all([backendPeer.w, barePeer.w].map((w) => new Promise((r) => w.once('exit', r))));
  }
}

await main();
