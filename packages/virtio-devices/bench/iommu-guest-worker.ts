// The two-thread vIOMMU benchmark's guest: a virtio-blk driver and a VT-d
// guest driver in a worker thread, over shared guest memory. Each request's
// buffer is mapped before the read and unmapped after it (the DMA API in the
// submission and completion paths), in the scenario's invalidation mode;
// invalidations reach the unit on the device thread through the VT-d
// invalidation queue in guest memory.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { GuestMemory } from '@ioplane/guest-memory';
import { type DmaMapper, type InvalidationMode, VtdGuestDriver, VtdQiRegisters, VtdQueuedInvalidator } from '@ioplane/viommu';
import { Doorbell } from '@ioplane/virtqueue';
import { HaltPollGovernor, MessagePortTransport, VirtioBlkDriver, VirtioIommuDriver } from '../src/index.js';
import { futexInterrupts, type Job, type JobResult, pinThread, rng, serveJobs, summarize, threadCpuMs, threadId } from './common.js';
import { GUEST_LAYOUT, type IommuGuestSetup } from './iommu-threads-layout.js';

const setup = workerData as IommuGuestSetup & { port: MessagePort };
const mem = new GuestMemory([{ gpa: 0, backing: setup.sab }]);
const kick = new Doorbell(setup.bells, 0);
const irq = new Doorbell(setup.bells, 1);
const transport = new MessagePortTransport(setup.port, [kick]);
const { DATA, SLOT, BLK_AREA, TABLES } = GUEST_LAYOUT;

/** The scenario's mapper (undefined: vIOMMU off), and each slot's IOVA when mapped statically. */
let domain: DmaMapper | undefined;
/** The flush-queue timer (Linux's fq_timer): deferred batches are torn down by age from it, and maps read no clock. */
const schedule = (cb: () => void, ms: number): void => void setTimeout(cb, ms);
const fixed: number[] = [];

/**
 * `strict-many`: the buffers of the requests completed in one turn are
 * unmapped together, by one `unmapMany` after the turn's continuations (one
 * invalidation wait, or one submission, for the wave), as bench:iommu does.
 */
const toUnmap: number[] = [];
let unmapScheduled = false;
function unmapWithWave(iova: number): void {
  toUnmap.push(iova);
  if (unmapScheduled) return;
  unmapScheduled = true;
  queueMicrotask(() => {
    unmapScheduled = false;
    const n = toUnmap.length;
    domain!.unmapMany(toUnmap, n);
    toUnmap.length = 0;
  });
}

async function run(driver: VirtioBlkDriver, job: Job): Promise<JobResult> {
  const next = rng(job.seed);
  const blocks = Math.floor((driver.info.capacitySectors * 512) / job.bs);
  const lat = new Float64Array(job.ops);
  let issued = 0;
  const sectorsPerBlock = job.bs / 512;
  const perRequest = domain !== undefined && setup.scenario !== 'static';
  const cpu0 = threadCpuMs();
  const caught0 = haltPoll?.stats.caught ?? 0;
  const slept0 = haltPoll?.stats.slept ?? 0;
  const t0 = performance.now();
  const worker = async (slot: number): Promise<void> => {
    const gpa = DATA + slot * SLOT;
    while (issued < job.ops) {
      const i = issued++;
      const blk = next() % blocks;
      const s = performance.now();
      if (perRequest) {
        const iova = domain!.map(gpa, job.bs, 'from-device');
        await driver.read(blk * sectorsPerBlock, iova, job.bs);
        if (setup.scenario === 'strict-many') unmapWithWave(iova);
        else domain!.unmap(iova);
      } else await driver.read(blk * sectorsPerBlock, domain === undefined ? gpa : fixed[slot]!, job.bs);
      lat[i] = performance.now() - s;
    }
  };
  let done = false;
  const all = Promise.all(Array.from({ length: job.qd }, (_, s) => worker(s))).then(() => {
    done = true;
  });
  if (setup.wait === 'sync') await futexInterrupts(driver, irq, () => done);
  else if (setup.wait === 'poll') {
    // A polled queue (no interrupts): the guest thread spins on the used ring while the job runs.
    driver.setPolled(0, true);
    const yieldTurn = (r: () => void): void => void setImmediate(r);
    while (!done) {
      driver.poll(0);
      await new Promise<void>(yieldTurn);
    }
    driver.setPolled(0, false);
  }
  await all;
  // Nothing left reachable between jobs: every scenario starts the next one alike.
  if (toUnmap.length > 0) {
    domain!.unmapMany(toUnmap, toUnmap.length);
    toUnmap.length = 0;
  }
  domain?.flush();
  const r = summarize(lat, job, performance.now() - t0);
  r.guestCpuUs = ((threadCpuMs() - cpu0) * 1000) / job.ops;
  r.guestTid = tid;
  if (haltPoll !== undefined) {
    r.idleCaught = haltPoll.stats.caught - caught0;
    r.idleSlept = haltPoll.stats.slept - slept0;
  }
  return r;
}

const tid = threadId();
/** The guest's halt polling (HALT_POLL_US), when on. */
let haltPoll: HaltPollGovernor | undefined;

async function main(): Promise<void> {
  // The guest's vCPU: off the device's core (the harness bound this thread's creator there).
  if (setup.cpus !== undefined && tid !== undefined && !pinThread(tid, setup.cpus)) throw new Error(`could not bind the guest thread ${tid} to CPUs ${setup.cpus} (PIN=0 runs unbound)`);
  if (setup.scenario !== 'off' && setup.unit === 'virtio') {
    // The virtio-iommu driver: MAP and UNMAP over its request queue; each call waits for the device thread's answer.
    const iommu = await VirtioIommuDriver.create({
      transport: new MessagePortTransport(setup.iommuPort!, [new Doorbell(setup.bells, 2), new Doorbell(setup.bells, 3)]),
      mem,
      area: { addr: TABLES.addr, len: VirtioIommuDriver.areaSize() },
      requestIrq: new Doorbell(setup.bells, 4),
      answerTimeoutMs: 10_000,
      now: () => performance.now(),
      ...(setup.fqTimer ? { schedule } : {}),
    });
    const mode: InvalidationMode = setup.scenario === 'static' || setup.scenario === 'strict-many' ? 'strict' : setup.scenario;
    domain = iommu.iommu.attach(setup.sid, { mode });
    domain.mapAt(BLK_AREA.addr, BLK_AREA.addr, BLK_AREA.len, 'bidirectional');
    if (setup.scenario === 'static') for (let s = 0; s < 64; s++) fixed.push(domain.map(DATA + s * SLOT, SLOT, 'from-device'));
  } else if (setup.scenario !== 'off') {
    const unit = new VtdQueuedInvalidator({ mem, regs: new VtdQiRegisters(setup.qi!), queue: { addr: GUEST_LAYOUT.QUEUE.addr }, status: GUEST_LAYOUT.STATUS });
    const vtd = new VtdGuestDriver({ unit, mem, area: TABLES, now: () => performance.now(), ...(setup.fqTimer ? { schedule } : {}) });
    const mode: InvalidationMode = setup.scenario === 'static' || setup.scenario === 'strict-many' ? 'strict' : setup.scenario;
    domain = vtd.attach(setup.sid, { mode });
    // The rings and the driver's own area: an identity mapping, as for memory a driver placed before it knew of the IOMMU.
    domain.mapAt(BLK_AREA.addr, BLK_AREA.addr, BLK_AREA.len, 'bidirectional');
    if (setup.scenario === 'static') for (let s = 0; s < 64; s++) fixed.push(domain.map(DATA + s * SLOT, SLOT, 'from-device'));
  }
  const driver = await VirtioBlkDriver.create({ transport, mem, area: BLK_AREA, ring: { packed: setup.packed } });
  haltPoll = setup.haltPollUs > 0 ? new HaltPollGovernor({ maxUs: setup.haltPollUs }) : undefined;
  const listening = driver.listen([irq], { haltPoll });
  serveJobs(driver, listening, transport, (job) => run(driver, job));
}

main().catch((e: unknown) => parentPort!.postMessage({ type: 'error', message: e instanceof Error ? (e.stack ?? e.message) : String(e) }));
