/**
 * virtio-blk benchmark: 4 KiB random reads and 64 KiB sequential reads at
 * queue depth 1 and 32 through the whole path — a guest driver in a worker
 * thread → virtqueue in shared memory → virtio-blk in this thread → raw file
 * (warm page cache) — and, in the same run, the same pattern issued directly
 * on the back-end from this thread. Then the same through a qcow2 image
 * holding the same data. Configurations alternate run by run; medians over
 * RUNS runs, spread as min–max.
 *   pnpm --filter @ioplane/virtio-devices bench     (RUNS=10 SIZE_MB=128 by default;
 *   PATTERN=4k-rand-qd32 runs one pattern (or a comma-separated list), PACKED=1 uses packed rings,
 *   CONFIG='raw direct,raw virtio' picks configurations,
 *   RECORD_TRACES=DIR records, after each pattern's measured runs, one more
 *   (unmeasured) virtio run per image as an interrupt-coalescing trace:
 *   DIR/<pattern>-<raw|qcow2>.jsonl, at most TRACE_IOS requests, default 20000)
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MessageChannel, Worker } from 'node:worker_threads';
import { COMPLETED, RawFileBackend, copyImage, createImage, openImage, type BlockBackend, type IoEngine } from '@ioplane/blk-backends';
import { GuestMemory } from '@ioplane/guest-memory';
import { formatTrace } from '@ioplane/interrupt-coalescing';
import { Doorbell } from '@ioplane/virtqueue';
import { VirtioBlkDevice, serveTransport, type ServedDevice, type VirtioBlkOptions } from '../src/index.js';
import { IRQ_BELL, KICK_BELL, type Job, type JobResult, guestControl, rng, summarize, threadCpuMs } from './common.js';
import { RecordingBackend } from './trace-recorder.js';

const RUNS = Number(process.env.RUNS ?? 10);
const SIZE = Number(process.env.SIZE_MB ?? 128) * 1024 * 1024;
const PACKED = process.env.PACKED === '1';
const RECORD_TRACES = process.env.RECORD_TRACES;
const TRACE_IOS = Number(process.env.TRACE_IOS ?? 20000);
/** Which back-end I/O engines to measure (each with its own direct baseline): ENGINES=threadpool,sync. */
const ENGINES = (process.env.ENGINES ?? 'threadpool,sync').split(',') as IoEngine[];
/** The device's settings over the sync engine: publish every 16 requests, poll 50 µs before sleeping. */
/**
 * The guest vCPU's halt polling, µs (HaltPollGovernor's maxUs; HALT_POLL_US=0 for none): 200, as KVM
 * polls a halted vCPU by default on x86 (halt_poll_ns). The `no-halt-poll` variant runs without it.
 */
const HALT_POLL_US = Number(process.env.HALT_POLL_US ?? 200);
const SYNC_DEVICE = { maxBatch: Number(process.env.SYNC_BATCH ?? 16), pollNs: Number(process.env.POLL_NS ?? 50_000) };

/**
 * The direct baseline: QD workers, each awaiting its read before the next. With `skipCompleted`
 * a read that returns `COMPLETED` is not awaited (what the virtio-blk device does since December
 * 2026): the back-end's cheapest use, with no microtask per read.
 */
async function direct(b: BlockBackend, job: Job, skipCompleted = false): Promise<JobResult> {
  const next = rng(job.seed);
  const blocks = Math.floor(b.size / job.bs);
  const lat = new Float64Array(job.ops);
  const bufs = Array.from({ length: job.qd }, () => new Uint8Array(new SharedArrayBuffer(job.bs)));
  let issued = 0;
  let seq = 0;
  const t0 = performance.now();
  const worker = async (slot: number): Promise<void> => {
    const seg = [bufs[slot]!];
    while (issued < job.ops) {
      const i = issued++;
      const blk = job.random ? next() % blocks : seq++ % blocks;
      const s = performance.now();
      const p = b.read(blk * job.bs, seg);
      if (!skipCompleted || p !== COMPLETED) await p;
      lat[i] = performance.now() - s;
    }
  };
  await Promise.all(Array.from({ length: job.qd }, (_, s) => worker(s)));
  return summarize(lat, job, performance.now() - t0);
}

interface Guest {
  worker: Worker;
  served: ServedDevice;
  device: VirtioBlkDevice;
  run(job: Job): Promise<JobResult>;
  stop(): Promise<void>;
}

interface GuestMode {
  /** How the guest thread waits for interrupts while a job runs. */
  wait: 'sync' | 'async' | 'poll';
  /** The device's VirtioBlkOptions.pollWhileBusy. */
  pollWhileBusy: boolean;
  /** The device's VirtioBlkOptions.merge (default: merging on). */
  merge?: VirtioBlkOptions['merge'];
  pollNs?: number;
  maxBatch?: number;
  /** The guest driver's ListenOptions.spinUs (default 0). */
  spinUs?: number;
  /** The guest thread's halt polling, µs (default HALT_POLL_US). */
  haltPollUs?: number;
  /** The guest driver's VirtioBlkDriverOptions.indirectFrom (default: the driver's, 4). */
  indirectFrom?: number;
}

async function startGuest(backend: BlockBackend, mode: GuestMode = { wait: 'async', pollWhileBusy: true }): Promise<Guest> {
  const sab = new SharedArrayBuffer(16 << 20);
  const mem = new GuestMemory([{ gpa: 0, backing: sab }]);
  // Kick and interrupt doorbells a cache line apart: the guest rings one while the device rings the other.
  const bells = new Int32Array(new SharedArrayBuffer(2 * 64));
  const kick = new Doorbell(bells, KICK_BELL);
  const irq = new Doorbell(bells, IRQ_BELL);
  const device = new VirtioBlkDevice({ mem, backend, queueSize: 256, pollWhileBusy: mode.pollWhileBusy, merge: mode.merge, pollNs: mode.pollNs, maxBatch: mode.maxBatch, interrupts: { queue: () => irq.ring(), config: () => {} } });
  const { port1, port2 } = new MessageChannel();
  const served = serveTransport(device, port1, [kick]);
  const worker = new Worker(new URL('./ts-worker.mjs', import.meta.url), {
    execArgv: ['--conditions=@ioplane/source', ...(process.env.PROFILE_DIR ? ['--cpu-prof', `--cpu-prof-dir=${process.env.PROFILE_DIR}`] : [])],
    workerData: { sab, bells, port: port2, packed: PACKED, wait: mode.wait, indirectFrom: mode.indirectFrom, spinUs: mode.spinUs ?? 0, haltPollUs: mode.haltPollUs ?? HALT_POLL_US, __entry: new URL('./guest-worker.ts', import.meta.url).href },
    transferList: [port2],
  });
  const ctl = await guestControl(worker, 'guest', served);
  return { worker, served, device, ...ctl };
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const fmt = (v: number, d = 0): string => v.toFixed(d).padStart(9);

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ioplane-vblk-bench-'));
  const guests: Guest[] = [];
  const syncBackends: BlockBackend[] = [];
  const guestsByName: [string, Guest][] = [];
  try {
    const rawPath = join(dir, 'disk.raw');
    const qPath = join(dir, 'disk.qcow2');
    await RawFileBackend.create(rawPath, SIZE);
    const w = await openImage(rawPath);
    const chunk = new Uint8Array(1 << 20);
    const dv = new DataView(chunk.buffer);
    const r = rng(7);
    for (let off = 0; off < SIZE; off += chunk.length) {
      for (let i = 0; i < chunk.length; i += 4) dv.setUint32(i, r());
      await w.write(off, [chunk]);
    }
    await w.flush();
    await createImage(qPath, 'qcow2', { size: SIZE });
    const q = await openImage(qPath);
    await copyImage(w, q);
    await q.flush();
    // Warm the page cache: read both files once.
    for (const b of [w, q]) for (let off = 0; off < SIZE; off += chunk.length) await b.read(off, [chunk]);

    // With RECORD_TRACES the guests' back-ends go through a recorder (disarmed while measuring).
    const recW = RECORD_TRACES !== undefined ? new RecordingBackend(w, TRACE_IOS) : undefined;
    const recQ = RECORD_TRACES !== undefined ? new RecordingBackend(q, TRACE_IOS) : undefined;
    if (RECORD_TRACES !== undefined) mkdirSync(RECORD_TRACES, { recursive: true });
    const raw = await startGuest(recW ?? w);
    const qcow = await startGuest(recQ ?? q);
    guests.push(raw, qcow);
    const patterns = [
      { name: '4k-rand-qd1', bs: 4096, qd: 1, random: true, ops: 8000 },
      { name: '4k-rand-qd32', bs: 4096, qd: 32, random: true, ops: 40000 },
      { name: '64k-seq-qd1', bs: 65536, qd: 1, random: false, ops: 3000 },
      { name: '64k-seq-qd32', bs: 65536, qd: 32, random: false, ops: 8000 },
    ];
    const only = process.env.PATTERN;
    if (only !== undefined) patterns.splice(0, patterns.length, ...patterns.filter((p) => only.split(',').includes(p.name)));
    const allConfigs = [
      { name: 'raw direct', run: (j: Job) => direct(w, j) },
      { name: 'raw virtio', run: (j: Job) => raw.run(j) },
      { name: 'qcow2 direct', run: (j: Job) => direct(q, j) },
      { name: 'qcow2 virtio', run: (j: Job) => qcow.run(j) },
    ];
    // The same images opened with the sync engine: a direct baseline and a virtio path of their own.
    if (ENGINES.includes('sync')) {
      const ws = await openImage(rawPath, { engine: 'sync' });
      const qs = await openImage(qPath, { engine: 'sync' });
      syncBackends.push(ws, qs);
      const rawSync = await startGuest(ws, { wait: 'async', pollWhileBusy: true, ...SYNC_DEVICE });
      const qcowSync = await startGuest(qs, { wait: 'async', pollWhileBusy: true, ...SYNC_DEVICE });
      guests.push(rawSync, qcowSync);
      guestsByName.push(['raw virtio sync', rawSync], ['qcow2 virtio sync', qcowSync]);
      allConfigs.push(
        { name: 'raw direct sync', run: (j: Job) => direct(ws, j) },
        // Only when CONFIG names it: the direct loop that does not await a read returning COMPLETED.
        { name: 'raw direct sync no-await', run: (j: Job) => direct(ws, j, true) },
        { name: 'raw virtio sync', run: (j: Job) => rawSync.run(j) },
        { name: 'qcow2 direct sync', run: (j: Job) => direct(qs, j) },
        { name: 'qcow2 virtio sync', run: (j: Job) => qcowSync.run(j) },
      );
    }
    if (!ENGINES.includes('threadpool')) allConfigs.splice(0, 4);
    // Variants of the raw virtio path for A/B in the same run (started only when CONFIG names them):
    // the guest waiting with Atomics.waitAsync on its event loop, and/or the device asking for every kick.
    const variants: [string, GuestMode][] = [
      ['raw virtio futex-guest', { wait: 'sync', pollWhileBusy: true }],
      ['raw virtio kick-always', { wait: 'async', pollWhileBusy: false }],
      ['raw virtio no-merge', { wait: 'async', pollWhileBusy: true, merge: false }],
      ['raw virtio sync futex-guest', { wait: 'sync', pollWhileBusy: true, ...SYNC_DEVICE }],
      ['raw virtio sync polled-guest', { wait: 'poll', pollWhileBusy: true, ...SYNC_DEVICE }],
      // Header, data and status in one indirect table instead of three ring descriptors (the driver's default before).
      // The guest keeps looking at the used ring for 50 / 200 µs after a completion before sleeping.
      ['raw virtio sync spin50', { wait: 'async', pollWhileBusy: true, ...SYNC_DEVICE, spinUs: 50 }],
      ['raw virtio sync spin200', { wait: 'async', pollWhileBusy: true, ...SYNC_DEVICE, spinUs: 200 }],
      // The guest thread sleeps as soon as it has nothing to do (no halt polling).
      ['raw virtio sync no-halt-poll', { wait: 'async', pollWhileBusy: true, ...SYNC_DEVICE, haltPollUs: 0 }],
      ['raw virtio no-halt-poll', { wait: 'async', pollWhileBusy: true, haltPollUs: 0 }],
      ['raw virtio sync indirect', { wait: 'async', pollWhileBusy: true, ...SYNC_DEVICE, indirectFrom: 2 }],
      ['raw virtio sync no-poll', { wait: 'async', pollWhileBusy: true, maxBatch: SYNC_DEVICE.maxBatch }],
      ['raw virtio sync whole-pass', { wait: 'async', pollWhileBusy: true, pollNs: SYNC_DEVICE.pollNs }],
    ];
    for (const [name, mode] of variants) {
      if (!process.env.CONFIG?.split(',').includes(name)) continue;
      const g = await startGuest(name.startsWith('raw virtio sync') ? syncBackends[0]! : w, mode);
      guests.push(g);
      guestsByName.push([name, g]);
      allConfigs.push({ name, run: (j: Job) => g.run(j) });
    }
    const configs = allConfigs.filter((c) => (process.env.CONFIG === undefined && c.name !== 'raw direct sync no-await') || process.env.CONFIG?.split(',').includes(c.name));
    console.log(`virtio-blk read benchmark: ${SIZE >> 20} MiB image, warm page cache, ${RUNS} runs per cell, ${PACKED ? 'packed' : 'split'} rings, medians (min–max of IOPS)`);
    console.log(`node ${process.version}, ${(await import('node:os')).cpus().length} CPU(s)\n`);
    const summary: string[] = [];
    const idleTotals = new Map<string, { caught: number; slept: number }>();
    for (const p of patterns) {
      const res = new Map<string, JobResult[]>();
      for (let run = 0; run < RUNS + 1; run++) {
        for (const c of configs) {
          const job: Job = { type: 'job', bs: p.bs, qd: p.qd, random: p.random, ops: p.ops, seed: 1000 + run };
          const cpu0 = process.cpuUsage();
          const main0 = threadCpuMs();
          const out = await Promise.race([c.run(job), new Promise<JobResult>((_, rej) => setTimeout(() => rej(new Error(`${c.name} ${p.name} timed out; device stats ${JSON.stringify(guests.map((g) => [g.device.stats, g.device.blkStats, g.device.status]))}`)), 60_000).unref())]);
          const cpu = process.cpuUsage(cpu0);
          out.cpuUs = (cpu.user + cpu.system) / job.ops;
          out.mainCpuUs = ((threadCpuMs() - main0) * 1000) / job.ops;
          if (run === 0) continue; // warm-up round
          if (out.idleCaught !== undefined) {
            const t = idleTotals.get(c.name) ?? { caught: 0, slept: 0 };
            t.caught += out.idleCaught;
            t.slept += out.idleSlept ?? 0;
            idleTotals.set(c.name, t);
          }
          const list = res.get(c.name) ?? [];
          list.push(out);
          res.set(c.name, list);
        }
      }
      console.log(`${p.name}:        config      IOPS      MB/s   p50 µs   p99 µs  CPU µs/op  main µs/op guest µs/op  IOPS min–max`);
      const med = new Map<string, number>();
      for (const c of configs) {
        const l = res.get(c.name)!;
        const iops = l.map((x) => x.iops);
        med.set(c.name, median(iops));
        console.log(
          `  ${c.name.padEnd(24)}${fmt(median(iops))}${fmt(median(l.map((x) => x.mbps)), 1)}${fmt(median(l.map((x) => x.p50)), 1)}${fmt(median(l.map((x) => x.p99)), 1)}${fmt(median(l.map((x) => x.cpuUs ?? 0)), 1)}${fmt(median(l.map((x) => x.mainCpuUs ?? 0)), 2).padStart(11)}${(l[0]!.guestCpuUs === undefined ? '—' : median(l.map((x) => x.guestCpuUs ?? 0)).toFixed(2)).padStart(12)}   ${Math.min(...iops).toFixed(0)}–${Math.max(...iops).toFixed(0)}`,
        );
      }
      // Ratio of medians, then the median (min–max) of the ratios paired round by round: the two
      // cells of a round ran back to back, so load that drifts over the run cancels out of those.
      const ratio = (a: string, b: string): string => {
        const ra = res.get(a);
        const rb = res.get(b);
        if (ra === undefined || rb === undefined) return 'n/a';
        const paired = ra.map((x, i) => x.iops / rb[i]!.iops);
        return `${(med.get(a)! / med.get(b)!).toFixed(2)} (paired ${median(paired).toFixed(2)}, ${Math.min(...paired).toFixed(2)}–${Math.max(...paired).toFixed(2)})`;
      };
      const lines: string[] = [];
      for (const e of ENGINES) {
        const x = e === 'sync' ? ' sync' : '';
        lines.push(`${p.name}: ${e} engine: virtio/direct raw ${ratio(`raw virtio${x}`, `raw direct${x}`)}, qcow2 ${ratio(`qcow2 virtio${x}`, `qcow2 direct${x}`)}; qcow2/raw direct ${ratio(`qcow2 direct${x}`, `raw direct${x}`)}, virtio ${ratio(`qcow2 virtio${x}`, `raw virtio${x}`)}`);
      }
      if (ENGINES.length > 1) lines.push(`${p.name}: virtio (sync engine) / direct (threadpool engine): raw ${ratio('raw virtio sync', 'raw direct')}, qcow2 ${ratio('qcow2 virtio sync', 'qcow2 direct')}`);
      const line = lines.join('\n  ');
      const variantNames = new Set(variants.map((v) => v[0]));
      const extra = configs.filter((c) => variantNames.has(c.name)).map((c) => `${c.name.slice('raw '.length)} ${ratio(c.name, c.name.includes(' sync') ? 'raw direct sync' : 'raw direct')}`);
      const noAwait = configs.filter((c) => c.name.startsWith('raw virtio sync')).map((c) => `${c.name.slice('raw '.length)} ${ratio(c.name, 'raw direct sync no-await')}`);
      if (res.has('raw direct sync no-await')) extra.push(`and against the direct loop that skips the await of COMPLETED: ${noAwait.join(', ')}`);
      const line2 = extra.length > 0 ? `${p.name}: raw variants/direct: ${extra.join(', ')}` : undefined;
      console.log(`  ${line}${line2 !== undefined ? `\n  ${line2}` : ''}\n`);
      summary.push(line);
      if (line2 !== undefined) summary.push(line2);
      if (RECORD_TRACES !== undefined) {
        for (const [img, rec, g] of [['raw', recW!, raw], ['qcow2', recQ!, qcow]] as const) {
          if (!configs.some((c) => c.name === `${img} virtio`)) continue;
          rec.arm();
          await g.run({ type: 'job', bs: p.bs, qd: p.qd, random: p.random, ops: p.ops, seed: 999 });
          rec.disarm();
          const t = rec.trace();
          const file = join(RECORD_TRACES, `${p.name}-${img}.jsonl`);
          writeFileSync(file, formatTrace(t));
          const svc = [...t.serviceNs].sort((a, b) => a - b);
          console.log(`  trace ${file}: ${t.arrivalsNs.length} reads over ${(t.arrivalsNs[t.arrivalsNs.length - 1]! / 1e6).toFixed(1)} ms, service p50 ${(svc[svc.length >> 1]! / 1e3).toFixed(1)} µs\n`);
        }
      }
    }
    for (const [name, g] of [['raw virtio', raw], ['qcow2 virtio', qcow], ...guestsByName] as const) {
      const st = g.device.stats;
      const bs = g.device.blkStats;
      if (bs.requests === 0) continue;
      const idle = idleTotals.get(name);
      const halt = idle === undefined ? '' : `; guest idle ${idle.caught} times caught by halt polling, ${idle.slept} asleep (measured rounds)`;
      console.log(`${name} device: ${bs.requests} requests, ${st.notifications} kicks, ${st.queueInterrupts} interrupts (${(bs.requests / Math.max(1, st.notifications)).toFixed(1)} requests per kick, ${(bs.requests / Math.max(1, st.queueInterrupts)).toFixed(1)} per interrupt), polls ${bs.pollHits} hit / ${bs.pollMisses} missed${halt}`);
    }
    console.log('ratios (IOPS medians):');
    for (const l of summary) console.log(`  ${l}`);
    for (const g of guests.splice(0)) await g.stop();
    await w.close();
    await q.close();
    for (const b of syncBackends) await b.close();
  } finally {
    for (const g of guests) await g.worker.terminate();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
