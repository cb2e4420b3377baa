/**
 * virtio-blk behind the VT-d unit on two threads: the guest — virtio-blk
 * driver and VT-d guest driver — in a worker, the device and the IOMMU in
 * this thread, guest RAM shared. As on a real host the guest's DMA-API work
 * (writing page-table entries, queueing invalidations) runs on the guest's
 * CPU and translation on the device's; the vIOMMU paper's "sidecore" setting,
 * where the one-thread `bench:iommu` adds both costs on one core.
 * Invalidations cross threads as VT-d software sends them: descriptors in
 * an invalidation queue in guest memory, the tail register written, an
 * invalidation-wait descriptor whose status write the guest waits for.
 *
 * 4 KiB random reads at QD 1 and 32 from a raw file on a warm page cache
 * (sync engine; BACKEND=threadpool or memory), scenarios: vIOMMU off, on with
 * static mappings, and map before / unmap after every request in strict,
 * deferred and optimistic mode (`strict-many`: strict, a completion wave's
 * unmaps in one `unmapMany`). Every scenario has its own guest and device,
 * started once; rounds run the scenarios back to back in a rotating order,
 * and each round's ratio is a scenario's IOPS over `off`'s in that round — over the mean of `off`'s
 * and `off-again`'s when both run (two samples of the baseline, so one rig's bad round moves
 * every ratio half as much). Medians over ROUNDS, IQR and min–max beside them; `off-again`'s own
 * row is the A/A control, `off-again` over `off` alone.
 *   pnpm --filter @ioplane/virtio-devices bench:iommu-threads   (ROUNDS=15 OPS=40000 QD=1,32 BACKEND=sync|threadpool|memory WAIT=async|sync|poll ONLY=off,off-again,static,strict,strict-many,deferred,optimistic)
 *   IOTLB=n, PDE=n: the unit's IOTLB and PDE-cache entries per domain, default 512 and 256; PREFETCH=0: no IOTLB prefetch of a leaf's line; PREFETCH_LINES=n: lines of leaves a prefetch reads (default 3); QI_HINT=0: the unit polls its queue at translation misses only;
 *   UNIT=virtio: the virtio-iommu device instead of VT-d (its driver in the guest, blocking on each request's answer with requestIrq);
 *   FQ_TIMER=0: the guest's deferred/optimistic teardown by age without a timer (every map reads the clock, as before December 2026);
 *   PACKED=0: split rings (the guest driver takes packed ones by default; split measured 0.77–0.79 for deferred at QD 32 against 0.84 packed);
 *   WARMUP=n: uncounted rounds at each depth first (default 2); WARMUP_OPS=n: uncounted reads every scenario runs once before them (default 1 000 000);
 *   PIN=0: leave the threads unbound (default: the device's on CPU 0, the rest on the other CPUs);
 *   PROFILE_DIR=… with node --cpu-prof: the guest workers' profiles too)
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import { type BlockBackend, MemoryBackend, RawFileBackend } from '@ioplane/blk-backends';
import { GuestMemory } from '@ioplane/guest-memory';
import { type Access } from '@ioplane/guest-memory';
import { QI_REG, TranslatingMemory, type TranslationOut, type TranslationSource, VtdInvalidationQueue, VtdQiRegisters, VtdRemapper, VtdSource } from '@ioplane/viommu';
import { Doorbell } from '@ioplane/virtqueue';
import { VirtioBlkDevice, VirtioIommuDevice, serveTransport, type ServedDevice } from '../src/index.js';
import { type Job, type JobResult, guestControl, pinThread, processThreadTimes, rng, threadCpuMs } from './common.js';
import { GUEST_LAYOUT, type IommuGuestSetup, type IommuScenario } from './iommu-threads-layout.js';

const ROUNDS = Number(process.env.ROUNDS ?? 15);
/** Warm-up rounds at each queue depth, not counted. */
const WARMUP = Number(process.env.WARMUP ?? 2);
/**
 * Requests every scenario runs once, before any depth's rounds, not counted: V8 compiles a
 * function only once it has run often enough, and the paths a deferred guest takes once a
 * batch (its teardown, the allocator's wrap-around) were still being compiled 800 000
 * requests in, 2–17 ms each on a helper thread that took the guest's CPU meanwhile.
 */
const WARMUP_OPS = Number(process.env.WARMUP_OPS ?? 1_000_000);
/**
 * PIN=0: threads unbound. Else (with two CPUs or more, and util-linux taskset) the device's
 * thread is bound to CPU 0 and the guests' threads and every other thread (V8's compiler
 * and GC helpers, libuv's pool) to the rest, as a host gives a device's I/O thread a core
 * of its own (a vhost worker, an SPDK reactor): unbound, the scheduler put a guest or a
 * helper on the device's CPU now and then and single rounds spread twice as wide.
 */
const CPUS = allowedCpus();
const PIN = process.env.PIN !== '0' && CPUS.length >= 2;
const DEVICE_CPUS = String(CPUS[0]);
const GUEST_CPUS = CPUS.slice(1).join(',');

/** The CPUs this process may run on (Linux's Cpus_allowed_list, e.g. "0-3,6"), ascending; one entry per CPU Node counts elsewhere. */
function allowedCpus(): number[] {
  let list: string | undefined;
  try {
    list = /^Cpus_allowed_list:\s*(\S+)/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
  } catch {
    // Not Linux.
  }
  if (list === undefined) return Array.from({ length: availableParallelism() }, (_, i) => i);
  const cpus: number[] = [];
  for (const part of list.split(',')) {
    const [a, b] = part.split('-').map(Number);
    for (let c = a!; c <= (b ?? a!); c++) cpus.push(c);
  }
  return cpus;
}
const OPS = Number(process.env.OPS ?? 40000);
const QDS = (process.env.QD ?? '1,32').split(',').map(Number);
const BACKEND = process.env.BACKEND ?? 'sync';
/** How the guest waits: WAIT=async (Atomics.waitAsync on its event loop, the default), sync (a futex sleep, like a halted vCPU) or poll (a polled queue, no interrupts). */
const WAIT = process.env.WAIT === 'sync' || process.env.WAIT === 'poll' ? process.env.WAIT : 'async';
/**
 * The guest vCPU's halt polling with WAIT=async, µs: by default KVM's own on x86 (halt_poll_ns
 * 200 000, grown and shrunk as KVM does) when the threads are bound (PIN), none when they are not —
 * unbound, a polling guest and the polling device shared two CPUs with V8's helpers and rounds
 * spread twice as wide (viommu's BENCHMARKS.md, session 12). Without it a halted guest thread on
 * this VM takes 5–10 µs to wake, and a request the device finished a little later than another
 * paid that whole wake-up: at QD 1 that, not the vIOMMU's work, made most of deferred's gap
 * (BENCHMARKS.md, session 17).
 */
const haltPollUs = (): number => Number(process.env.HALT_POLL_US ?? (pinned ? 200 : 0));
const DISK = 64 << 20;
/** QI_HINT=0: poll at translation misses only (the control: the plain read stays, nothing acts on it). */
const HINT = process.env.QI_HINT !== '0';
/** READ_AHEAD=0: the device's TranslatingMemory does not read its window again through the unit's cached PDE (a walk instead). */
const READ_AHEAD = process.env.READ_AHEAD !== '0';
const SID = 0x0008;
/** UNIT=virtio: the virtio-iommu device (its driver in the guest's worker, answers awaited with `requestIrq`) instead of VT-d. */
const UNIT: 'vtd' | 'virtio' = process.env.UNIT === 'virtio' ? 'virtio' : 'vtd';
type Scenario = IommuScenario | 'off-again';
const SCENARIOS = (process.env.ONLY?.split(',') as Scenario[] | undefined) ?? ['off', 'off-again', 'static', 'strict', 'strict-many', 'deferred', 'optimistic'];
/** The device's settings, as bench:blk's sync-engine device: publish every 16 requests, poll 50 µs before sleeping. */
const DEVICE = { pollWhileBusy: true, maxBatch: 16, pollNs: 50_000 };
const TARGET: Partial<Record<Scenario, number>> = { static: 0.95, deferred: 0.9, strict: 0.5, 'strict-many': 0.5 };
const PAPER: Partial<Record<Scenario, string>> = { strict: '0.43', deferred: '0.91', optimistic: '1.00' };

interface Guest {
  scenario: Scenario;
  device: VirtioBlkDevice;
  qi: VtdInvalidationQueue | undefined;
  source: PollingSource | KickPollingSource | undefined;
  unit: VtdRemapper | undefined;
  irqTime: { ns: number; n: number; last: Float64Array };
  /** The guest's idle periods over the counted rounds: ended by an interrupt while it halt-polled, or slept through. */
  idle: { caught: number; slept: number; requests: number };
  dma: GuestMemory | TranslatingMemory;
  run(job: Job): Promise<JobResult>;
  stop(): Promise<void>;
  kill(): Promise<number>;
}

/**
 * A VT-d source that first runs whatever the guest queued for the unit (an
 * emulated unit polling its tail register) whenever the device needs a
 * translation it has not cached, and whenever the device checks the
 * translation generation and a plain read of the tail register shows it
 * moved — so a strict unmap's invalidation is taken up within the request
 * the device is working on, not at its next fresh IOVA. (Polling with
 * `Atomics.load`s on every generation check cost a fifth of the device
 * thread's time; the plain read costs a few nanoseconds, and a stale value
 * only delays the poll to the next miss, where the atomic poll runs.)
 */
class PollingSource implements TranslationSource {
  /** Translations the device asked of the unit (its own run caches missed). */
  translations = 0;

  /** The tail register read plainly (a hint: a stale value only delays the poll to the next miss). */
  private readonly hint: Int32Array;
  private readonly iqt: number;
  private seenTail = 0;

  constructor(
    private readonly inner: VtdSource,
    private readonly queue: VtdInvalidationQueue,
    registers: Int32Array,
  ) {
    this.hint = new Int32Array(registers.buffer, registers.byteOffset, registers.length);
    this.iqt = HINT ? QI_REG.IQT : QI_REG.IQH;
  }

  get endpoint(): number {
    return this.inner.endpoint;
  }

  get generation(): number {
    if (this.hint[this.iqt] !== this.seenTail) this.tailMoved();
    return this.inner.generation;
  }

  private tailMoved(): void {
    this.seenTail = this.hint[this.iqt]!;
    if (HINT) this.queue.poll();
  }

  translate(addr: number, access: Access, out: TranslationOut): number {
    this.translations++;
    this.queue.poll();
    return this.inner.translate(addr, access, out);
  }

  unchangedSince(since: number, start: number, end: number): boolean {
    return this.inner.unchangedSince(since, start, end);
  }

  readAhead(addr: number, out: TranslationOut): boolean {
    if (!READ_AHEAD) return false;
    // A translation the device has not cached, as in `translate`: the unit takes up its queue first.
    this.queue.poll();
    return this.inner.readAhead(addr, out);
  }
}

/**
 * The virtio-iommu counterpart of `PollingSource`: the device thread takes up
 * the virtio-iommu request queue (MAP, UNMAP) whenever the guest has kicked it
 * since the last look — at each translation-generation check (a plain read of
 * the kick doorbell), each translation the device asks for, each publish and
 * each idle poll — so a guest blocked on a MAP waits microseconds, not for the
 * device thread's next event-loop turn.
 */
class KickPollingSource implements TranslationSource {
  translations = 0;
  private readonly counts: Int32Array;
  private seen: number;

  constructor(
    private readonly inner: TranslationSource,
    private readonly dev: VirtioIommuDevice,
    kick: Doorbell,
  ) {
    this.counts = kick.array;
    this.seen = kick.count;
    this.index = kick.index;
  }

  private readonly index: number;

  get endpoint(): number {
    return this.inner.endpoint;
  }

  get generation(): number {
    if (this.counts[this.index] !== this.seen) this.poll();
    return this.inner.generation;
  }

  poll(): void {
    const c = Atomics.load(this.counts, this.index);
    if (c === this.seen) return;
    this.seen = c;
    this.dev.notify(0);
  }

  translate(addr: number, access: Access, out: TranslationOut): number {
    this.translations++;
    this.poll();
    return this.inner.translate(addr, access, out);
  }

  unchangedSince(since: number, start: number, end: number): boolean {
    return this.inner.unchangedSince?.(since, start, end) ?? false;
  }
}

/** Whether the threads were bound (PIN). */
let pinned = false;

/** Binds this thread (the device's) to DEVICE_CPUS and every other thread of the process to GUEST_CPUS; threads started later inherit the device's binding (a guest rebinds itself). */
function pinThreads(): boolean {
  for (const t of readdirSync('/proc/self/task')) {
    const tid = Number(t);
    if (tid !== process.pid && !pinThread(tid, GUEST_CPUS)) return false;
  }
  return pinThread(process.pid, DEVICE_CPUS);
}

async function startGuest(scenario: Scenario, backend: BlockBackend): Promise<Guest> {
  const sab = new SharedArrayBuffer(GUEST_LAYOUT.SIZE);
  const mem = new GuestMemory([{ gpa: 0, backing: sab }]);
  // Doorbells: virtio-blk kick, virtio-blk interrupt; virtio-iommu kicks (requests, events) and interrupts (requests, events).
  const bells = new Int32Array(new SharedArrayBuffer(4 * 6));
  const kick = new Doorbell(bells, 0);
  const irq = new Doorbell(bells, 1);
  const guestScenario: IommuScenario = scenario === 'off-again' ? 'off' : scenario;
  let qi: VtdInvalidationQueue | undefined;
  let registers: Int32Array | undefined;
  let dma: GuestMemory | TranslatingMemory = mem;
  let source: PollingSource | KickPollingSource | undefined;
  let unit: VtdRemapper | undefined;
  let pollIommu: (() => void) | undefined;
  let iommuServed: ServedDevice | undefined;
  let iommuPort: MessagePort | undefined;
  if (guestScenario !== 'off' && UNIT === 'virtio') {
    const kicks = [new Doorbell(bells, 2), new Doorbell(bells, 3)];
    const irqs = [new Doorbell(bells, 4), new Doorbell(bells, 5)];
    const iommuDev = new VirtioIommuDevice({ mem, interrupts: { queue: (q) => irqs[q]?.ring(), config: () => undefined } });
    iommuDev.iommu.addEndpoint(SID);
    const { port1: ip1, port2: ip2 } = new MessageChannel();
    iommuServed = serveTransport(iommuDev, ip1, kicks);
    iommuPort = ip2;
    const ks = new KickPollingSource(iommuDev.iommu.source(SID), iommuDev, kicks[0]!);
    source = ks;
    dma = new TranslatingMemory(mem, ks, iommuDev.iommu);
    pollIommu = () => ks.poll();
  } else if (guestScenario !== 'off') {
    const vtd = (unit = new VtdRemapper({ memory: mem, ...(process.env.IOTLB ? { iotlbEntries: Number(process.env.IOTLB) } : {}), ...(process.env.PDE ? { pdeCacheEntries: Number(process.env.PDE) } : {}), iotlbPrefetch: process.env.PREFETCH !== '0', ...(process.env.PREFETCH_LINES ? { iotlbPrefetchLines: Number(process.env.PREFETCH_LINES) } : {}) }));
    const regs = VtdQiRegisters.create();
    registers = regs.array;
    const queue = new VtdInvalidationQueue(vtd, mem, regs);
    // When the device thread is idle, a doorbell wakes the unit; while the device is busy (and
    // may not return to the event loop for a while) the unit looks at its tail register each
    // time the device consults it — one atomic load — so an invalidation waits microseconds.
    queue.serve();
    source = new PollingSource(new VtdSource(vtd, SID), queue, regs.array);
    dma = process.env.QI_POLL === '0' ? vtd.dmaMemory(SID, mem) : new TranslatingMemory(mem, source, vtd);
    qi = queue;
  }
  const q = qi;
  // The wall time of raising each interrupt (the doorbell's notify wakes the guest's thread).
  // The last 4096 raises' times too, for the median and tail (waking a guest thread whose vCPU halted: a few µs, with a long tail on this VM).
  const irqTime = { ns: 0, n: 0, last: new Float64Array(4096) };
  // And at every pass of the device that publishes completions.
  const device = new VirtioBlkDevice({
    mem: dma,
    backend,
    queueSize: 256,
    ...DEVICE,
    // While the device spins for work, the unit keeps taking up invalidations (a strict guest waits on one).
    onPoll: q !== undefined ? () => void q.poll() : pollIommu,
    interrupts: {
      queue: () => {
        q?.poll();
        pollIommu?.();
        const t = process.hrtime.bigint();
        irq.ring();
        const ns = Number(process.hrtime.bigint() - t);
        irqTime.ns += ns;
        irqTime.last[irqTime.n++ & 4095] = ns;
      },
      config: () => {},
    },
  });
  const { port1, port2 } = new MessageChannel();
  const served: ServedDevice = serveTransport(device, port1, [kick]);
  const setup: IommuGuestSetup & { port: typeof port2; __entry: string } = {
    sab,
    bells,
    scenario: guestScenario,
    wait: WAIT,
    haltPollUs: haltPollUs(),
    sid: SID,
    qi: registers,
    packed: process.env.PACKED !== '0',
    fqTimer: process.env.FQ_TIMER !== '0',
    unit: UNIT,
    cpus: pinned ? GUEST_CPUS : undefined,
    iommuPort,
    port: port2,
    __entry: new URL('./iommu-guest-worker.ts', import.meta.url).href,
  };
  const worker = new Worker(new URL('./ts-worker.mjs', import.meta.url), { execArgv: ['--conditions=@ioplane/source', ...(process.env.PROFILE_DIR ? ['--cpu-prof', `--cpu-prof-dir=${process.env.PROFILE_DIR}`] : [])], workerData: setup, transferList: iommuPort === undefined ? [port2] : [port2, iommuPort] });
  const ctl = await guestControl(worker, scenario, served, 120_000);
  return {
    scenario,
    irqTime,
    idle: { caught: 0, slept: 0, requests: 0 },
    unit,
    device,
    qi,
    source,
    dma,
    run: (job) => ctl.run(job),
    stop: async () => {
      await ctl.stop();
      await qi?.stop();
      await iommuServed?.stop();
    },
    kill: () => worker.terminate(),
  };
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
}

function raiseQuantile(g: Guest, q: number): string {
  const n = Math.min(4096, g.irqTime.n);
  return n === 0 ? '—' : (quantile(Array.from(g.irqTime.last.subarray(0, n)), q) / 1000).toFixed(1);
}

const fmt = (n: number): string => (n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : `${(n / 1e3).toFixed(1)} k`);

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ioplane-iommu-threads-'));
  const guests: Guest[] = [];
  const backends: BlockBackend[] = [];
  try {
    const disk = new Uint8Array(DISK);
    const fill = rng(3);
    const dv = new DataView(disk.buffer);
    for (let i = 0; i < DISK; i += 4) dv.setUint32(i, fill());
    const path = join(dir, 'disk.raw');
    await RawFileBackend.create(path, DISK);
    const w = await RawFileBackend.open(path);
    await w.write(0, [disk]);
    await w.flush();
    await w.read(0, [disk]); // warm the page cache
    await w.close();
    // After the file work above started libuv's pool, so its threads are bound with the helpers.
    pinned = PIN && pinThreads();
    for (const s of SCENARIOS) {
      let b: BlockBackend;
      if (BACKEND === 'memory') {
        b = new MemoryBackend({ size: DISK });
        await b.write(0, [disk]);
      } else b = await RawFileBackend.open(path, { readOnly: true, engine: BACKEND === 'threadpool' ? 'threadpool' : 'sync' });
      backends.push(b);
      guests.push(await startGuest(s, b));
    }
    console.log(`virtio-blk behind ${UNIT === 'virtio' ? 'the virtio-iommu device' : 'VT-d'} on two threads (guest worker, device + IOMMU here): 4 KiB random reads, ${BACKEND === 'memory' ? 'MemoryBackend' : `raw file, warm page cache, ${BACKEND} engine`}, guest ${WAIT === 'sync' ? 'sleeping on a futex' : WAIT === 'poll' ? 'polling (no interrupts)' : `waiting with Atomics.waitAsync${haltPollUs() > 0 ? ` after halt polling (up to ${haltPollUs()} µs)` : ''}`}, ${OPS} reads per scenario per round, ${ROUNDS} rounds after ${WARMUP_OPS} warm-up reads per scenario and ${WARMUP} warm-up rounds per depth, ${pinned ? `device thread on CPU ${DEVICE_CPUS}, guest and helper threads on CPUs ${GUEST_CPUS}` : 'threads unbound'}, Node ${process.version}`);
    // The guests' thread ids, as their results report them: every other thread but this one is a helper.
    const guestTids = new Set<number>();
    if (WARMUP_OPS > 0) {
      const qd = Math.max(...QDS);
      for (let done = 0, k = 0; done < WARMUP_OPS; done += OPS, k++) {
        for (const g of guests) {
          const r = await g.run({ type: 'job', bs: 4096, qd, random: true, ops: Math.min(OPS, WARMUP_OPS - done), seed: 1000 + k });
          if (r.guestTid !== undefined) guestTids.add(r.guestTid);
        }
      }
    }
    for (const qd of QDS) {
      // QD 1 is ruled by its wake-up tail (p99 ~8× p50): half the reads of QD 32, not an eighth, keep its median steady.
      const ops = qd === 1 ? Math.max(1000, OPS >> 1) : OPS;
      const iops = new Map<Scenario, number[]>(SCENARIOS.map((s) => [s, []]));
      // Each round's median request latency (µs), as the guest timed it: map, round trip, unmap.
      const p50 = new Map<Scenario, number[]>(SCENARIOS.map((s) => [s, []]));
      // CPU µs per request of the device's thread (this one) and of the guest's.
      const devCpu = new Map<Scenario, number[]>(SCENARIOS.map((s) => [s, []]));
      const guestCpu = new Map<Scenario, number[]>(SCENARIOS.map((s) => [s, []]));
      // Cores the whole process kept busy over the run (every thread: near 2 means the machine was full).
      const cores = new Map<Scenario, number[]>(SCENARIOS.map((s) => [s, []]));
      const ratios = new Map<Scenario, number[]>(SCENARIOS.map((s) => [s, []]));
      // The scheduler's view, ns per request: the device thread on a CPU, runnable but waiting for one, off
      // CPU (blocked or asleep); the guest's thread runnable but waiting for a CPU; and the helper threads
      // (V8's compiler and GC, libuv's pool: every thread but the device's and the guests') on a CPU.
      const sched = new Map<Scenario, { run: number[]; wait: number[]; off: number[]; guestWait: number[]; helpers: number[] }>(SCENARIOS.map((s) => [s, { run: [], wait: [], off: [], guestWait: [], helpers: [] }]));
      for (let round = -WARMUP; round < ROUNDS; round++) {
        const got = new Map<Scenario, number>();
        for (let k = 0; k < guests.length; k++) {
          const g = guests[(k + round + WARMUP) % guests.length]!;
          const job: Job = { type: 'job', bs: 4096, qd, random: true, ops, seed: 100 + round };
          const c0 = threadCpuMs();
          const p0 = process.cpuUsage();
          const t0 = processThreadTimes();
          const w0 = performance.now();
          const r = await g.run(job);
          const wall = (performance.now() - w0) * 1e6;
          const t1 = processThreadTimes();
          const p1 = process.cpuUsage(p0);
          got.set(g.scenario, r.iops);
          if (r.guestTid !== undefined) guestTids.add(r.guestTid);
          if (round >= 0) {
            p50.get(g.scenario)!.push(r.p50);
            g.idle.caught += r.idleCaught ?? 0;
            g.idle.slept += r.idleSlept ?? 0;
            g.idle.requests += ops;
            devCpu.get(g.scenario)!.push(((threadCpuMs() - c0) * 1000) / ops);
            guestCpu.get(g.scenario)!.push(r.guestCpuUs ?? NaN);
            cores.get(g.scenario)!.push((p1.user + p1.system) / 1000 / (performance.now() - w0));
            const dev0 = t0?.get(process.pid);
            const dev1 = t1?.get(process.pid);
            if (t0 !== undefined && t1 !== undefined && dev0 !== undefined && dev1 !== undefined) {
              const x = sched.get(g.scenario)!;
              const run = dev1.run - dev0.run;
              const wait = dev1.wait - dev0.wait;
              let helpers = 0;
              for (const [tid, t] of t1) if (tid !== process.pid && !guestTids.has(tid)) helpers += t.run - (t0.get(tid)?.run ?? 0);
              const gt = r.guestTid === undefined ? undefined : t1.get(r.guestTid);
              x.run.push(run / ops);
              x.wait.push(wait / ops);
              x.off.push((wall - run - wait) / ops);
              x.guestWait.push(gt === undefined ? NaN : (gt.wait - (t0.get(r.guestTid!)?.wait ?? 0)) / ops);
              x.helpers.push(helpers / ops);
            }
          }
        }
        if (round < 0) continue; // warm-up
        for (const s of SCENARIOS) {
          iops.get(s)!.push(got.get(s)!);
          if (!got.has('off')) continue;
          const off = got.get('off')!;
          const base = s !== 'off' && s !== 'off-again' && got.has('off-again') ? (off + got.get('off-again')!) / 2 : off;
          ratios.get(s)!.push(got.get(s)! / base);
        }
      }
      console.log(`\nQD ${qd}${SCENARIOS.includes('off') && SCENARIOS.includes('off-again') ? ' (ratios against the mean of off and off-again in each round; off-again against off alone)' : ''}`);
      console.log('| scenario | IOPS (median) | ratio vs off (median) | IQR | min–max | target | paper | latency p50, µs | CPU µs/request: device, guest | cores busy |');
      console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
      for (const s of SCENARIOS) {
        const rs = ratios.get(s)!;
        const t = TARGET[s];
        const m = rs.length > 0 ? quantile(rs, 0.5) : NaN;
        const verdict = t === undefined || rs.length === 0 ? '' : `≥ ${t} ${m >= t ? 'met' : 'NOT met'}`;
        console.log(`| ${s} | ${fmt(quantile(iops.get(s)!, 0.5))} | ${rs.length === 0 ? '— (no off) | | ' : `${m.toFixed(3)} | ${quantile(rs, 0.25).toFixed(2)}–${quantile(rs, 0.75).toFixed(2)} | ${Math.min(...rs).toFixed(2)}–${Math.max(...rs).toFixed(2)}`} | ${verdict} | ${PAPER[s] ?? ''} | ${quantile(p50.get(s)!, 0.5).toFixed(1)} | ${quantile(devCpu.get(s)!, 0.5).toFixed(2)}, ${quantile(guestCpu.get(s)!, 0.5).toFixed(2)} | ${quantile(cores.get(s)!, 0.5).toFixed(2)} |`);
      }
      if (sched.get(SCENARIOS[0]!)!.run.length > 0) {
        console.log('\n| scenario | device thread, ns per request: on a CPU | runnable, waiting for one | off CPU | guest thread runnable, waiting for a CPU | helper threads (V8 compiler, GC; libuv) on a CPU |');
        console.log('|---|---:|---:|---:|---:|---:|');
        for (const s of SCENARIOS) {
          const x = sched.get(s)!;
          console.log(`| ${s} | ${quantile(x.run, 0.5).toFixed(0)} | ${quantile(x.wait, 0.5).toFixed(0)} | ${quantile(x.off, 0.5).toFixed(0)} | ${quantile(x.guestWait, 0.5).toFixed(0)} | ${quantile(x.helpers, 0.5).toFixed(0)} |`);
        }
      }
    }
    for (const g of guests) {
      const bs = g.device.blkStats;
      const rs = g.dma instanceof TranslatingMemory ? g.dma.rangeStats : undefined;
      const per =
        g.source !== undefined && rs !== undefined
          ? `, ${(g.source.translations / bs.requests).toFixed(2)} translations asked of the unit and ${((rs.hits + rs.revalidated) / bs.requests).toFixed(2)} hits, ${(rs.misses / bs.requests).toFixed(2)} misses of the checked-range table per request (${((g.dma as TranslatingMemory).windowStats.hits / bs.requests).toFixed(2)} served from the read-ahead window, which was read again ${((g.dma as TranslatingMemory).windowStats.reread / bs.requests).toFixed(3)} times)${g.unit !== undefined ? `, ${(g.unit.stats.walks / bs.requests).toFixed(2)} walks and ${(g.unit.stats.prefetched / bs.requests).toFixed(2)} leaves prefetched` : ''}`
          : '';
      console.log(`${g.scenario}: ${bs.requests} requests, ${(g.device.stats.queueInterrupts / bs.requests).toFixed(3)} interrupts (${(g.irqTime.ns / Math.max(1, g.irqTime.n) / 1000).toFixed(1)} µs of wall time each to raise; median ${raiseQuantile(g, 0.5)}, p90 ${raiseQuantile(g, 0.9)}, p99 ${raiseQuantile(g, 0.99)} µs of the last ${Math.min(4096, g.irqTime.n)}), ${(g.device.stats.notifications / bs.requests).toFixed(3)} kicks and ${(bs.pollMisses / bs.requests).toFixed(3)} idle polls that ran dry per request${g.idle.caught + g.idle.slept > 0 ? `, the guest idle ${(g.idle.caught / g.idle.requests).toFixed(3)} times caught by halt polling and ${(g.idle.slept / g.idle.requests).toFixed(3)} asleep per counted request` : ''}${per}${g.qi !== undefined ? `, invalidation queue ${JSON.stringify(g.qi.stats)}` : ''}`);
    }
    for (const g of guests.splice(0)) await g.stop();
  } finally {
    for (const g of guests) await g.kill();
    for (const b of backends) await b.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
