// The benchmark's guest: a virtio-blk driver in a worker thread issuing reads
// at a given queue depth, timing each one, over shared guest memory.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { GuestMemory } from '@ioplane/guest-memory';
import { Doorbell } from '@ioplane/virtqueue';
import { HaltPollGovernor, MessagePortTransport, VirtioBlkDriver } from '../src/index.js';
import { IRQ_BELL, KICK_BELL, futexInterrupts, type Job, type JobResult, rng, serveJobs, summarize, threadCpuMs } from './common.js';

interface Setup {
  sab: SharedArrayBuffer;
  bells: Int32Array;
  port: MessagePort;
  packed: boolean;
  /**
   * 'sync': while a job runs, the guest thread sleeps on the interrupt doorbell (a futex, like a halted vCPU) instead of Atomics.waitAsync.
   * 'poll': the queue is a polled queue (no interrupts) and the guest thread spins on the used ring while a job runs (Linux's poll queues with io_uring IOPOLL).
   */
  wait: 'async' | 'sync' | 'poll';
  /** ListenOptions.spinUs. */
  spinUs: number;
  /** HaltPollOptions.maxUs of the guest thread's halt polling (0: none). */
  haltPollUs: number;
  /** VirtioBlkDriverOptions.indirectFrom (undefined: the driver's default). */
  indirectFrom: number | undefined;
}

const setup = workerData as Setup;
const mem = new GuestMemory([{ gpa: 0, backing: setup.sab }]);
const kick = new Doorbell(setup.bells, KICK_BELL);
const irq = new Doorbell(setup.bells, IRQ_BELL);
const transport = new MessagePortTransport(setup.port, [kick]);
const haltPoll = setup.haltPollUs > 0 ? new HaltPollGovernor({ maxUs: setup.haltPollUs }) : undefined;
const DATA = 8 << 20;
const SLOT = 64 << 10;

async function run(driver: VirtioBlkDriver, job: Job): Promise<JobResult> {
  const next = rng(job.seed);
  const blocks = Math.floor((driver.info.capacitySectors * 512) / job.bs);
  const lat = new Float64Array(job.ops);
  let issued = 0;
  let seq = 0;
  const sectorsPerBlock = job.bs / 512;
  const cpu0 = threadCpuMs();
  const caught0 = haltPoll?.stats.caught ?? 0;
  const slept0 = haltPoll?.stats.slept ?? 0;
  const t0 = performance.now();
  const worker = async (slot: number): Promise<void> => {
    const at = DATA + slot * SLOT;
    while (issued < job.ops) {
      const i = issued++;
      const blk = job.random ? next() % blocks : seq++ % blocks;
      const s = performance.now();
      await driver.read(blk * sectorsPerBlock, at, job.bs);
      lat[i] = performance.now() - s;
    }
  };
  let done = false;
  const all = Promise.all(Array.from({ length: job.qd }, (_, s) => worker(s))).then(() => {
    done = true;
  });
  if (setup.wait === 'poll') {
    driver.setPolled(0, true);
    const yieldTurn = (r: () => void): void => void setImmediate(r);
    while (!done) {
      driver.poll(0);
      // Let the completed requests' continuations run and submit (a macrotask turn drains every microtask).
      await new Promise<void>(yieldTurn);
    }
    driver.setPolled(0, false);
  } else if (setup.wait === 'sync') {
    await futexInterrupts(driver, irq, () => done);
  }
  await all;
  const r = summarize(lat, job, performance.now() - t0);
  r.guestCpuUs = ((threadCpuMs() - cpu0) * 1000) / job.ops;
  if (haltPoll !== undefined) {
    r.idleCaught = haltPoll.stats.caught - caught0;
    r.idleSlept = haltPoll.stats.slept - slept0;
  }
  return r;
}

async function main(): Promise<void> {
  const driver = await VirtioBlkDriver.create({ transport, mem, area: { addr: 0x10000, len: 4 << 20 }, ring: { packed: setup.packed }, indirectFrom: setup.indirectFrom });
  const listening = driver.listen([irq], { spinUs: setup.spinUs, haltPoll });
  serveJobs(driver, listening, transport, (job) => run(driver, job));
}

main().catch((e: unknown) => parentPort!.postMessage({ type: 'error', message: e instanceof Error ? (e.stack ?? e.message) : String(e) }));
