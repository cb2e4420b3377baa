import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { parentPort, type Worker } from 'node:worker_threads';

/** Int32 indices of the kick and interrupt doorbells in their shared array: 64 bytes apart, one cache line each. */
export const KICK_BELL = 0;
export const IRQ_BELL = 16;

/** What the benchmark measures: one pattern of reads. */
export interface Job {
  type: 'job';
  bs: number;
  qd: number;
  random: boolean;
  ops: number;
  seed: number;
}

export interface JobResult {
  type: 'result';
  iops: number;
  mbps: number;
  /** Microseconds. */
  p50: number;
  p99: number;
  /** CPU time of the whole process (every thread: device, guest, libuv's threadpool) per request, µs; filled in by the harness. */
  cpuUs?: number;
  /** CPU time of the guest's own thread over the job, µs per request (`threadCpuMs`). */
  guestCpuUs?: number;
  /** CPU time of the harness's main thread over the job, µs per request: the device's thread, or the direct loop's. */
  mainCpuUs?: number;
  /** The guest thread's halt polling over the job: idle periods the interrupt ended while it polled, and ones it slept through. */
  idleCaught?: number;
  idleSlept?: number;
  /** The guest thread's Linux thread id (`threadId()`), so the harness can tell its scheduler figures from the helpers'. */
  guestTid?: number;
}

/** The calling thread's Linux thread id (from /proc/thread-self), or undefined elsewhere. */
export function threadId(): number | undefined {
  try {
    return Number(readlinkSync('/proc/thread-self').split('/').pop());
  } catch {
    return undefined;
  }
}

/**
 * Binds a thread (by Linux thread id) to a CPU list such as "0" or "1-3",
 * with util-linux `taskset`; false where that cannot be done (no taskset, not
 * Linux, a CPU the process may not use). A thread created afterwards inherits
 * its creator's binding.
 */
export function pinThread(tid: number, cpus: string): boolean {
  try {
    execFileSync('taskset', ['-pc', cpus, String(tid)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * CPU time of the calling thread so far, in milliseconds: from
 * /proc/thread-self/schedstat (nanoseconds on the CPU) where the kernel has
 * it, else from /proc/thread-self/stat (user + system clock ticks, 10 ms
 * steps — then read it over whole runs only).
 */
/**
 * The scheduler's view of this process's threads (Linux `/proc/self/task/<tid>/schedstat`): per
 * thread id, ns on a CPU and ns runnable but waiting for one. Undefined where there is no such file.
 */
export function processThreadTimes(): Map<number, { run: number; wait: number }> | undefined {
  let tids: string[];
  try {
    tids = readdirSync('/proc/self/task');
  } catch {
    return undefined;
  }
  const m = new Map<number, { run: number; wait: number }>();
  for (const t of tids) {
    try {
      const f = readFileSync(`/proc/self/task/${t}/schedstat`, 'utf8').split(' ');
      m.set(Number(t), { run: Number(f[0]), wait: Number(f[1]) });
    } catch {
      // The thread ended meanwhile.
    }
  }
  return m;
}

export function threadCpuMs(): number {
  if (schedstat) {
    try {
      const s = readFileSync('/proc/thread-self/schedstat', 'utf8');
      return Number(s.slice(0, s.indexOf(' '))) / 1e6;
    } catch {
      schedstat = false;
    }
  }
  const stat = readFileSync('/proc/thread-self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14 and 15 of stat(5) (utime, stime) are the 12th and 13th after the command name.
  return ((Number(f[11]) + Number(f[12])) * 1000) / TICKS_PER_SECOND;
}
let schedstat = true;

/** USER_HZ: 100 on every Linux architecture Node runs on. */
const TICKS_PER_SECOND = 100;

/** xorshift32: deterministic offsets, seeded per run, the same on both paths. */
export function rng(seed: number): () => number {
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

export function summarize(lat: Float64Array, job: Job, ms: number): JobResult {
  const secs = ms / 1000;
  lat.sort();
  const n = lat.length;
  return {
    type: 'result',
    iops: n / secs,
    mbps: (n * job.bs) / secs / 1e6,
    p50: lat[Math.floor(n * 0.5)]! * 1000,
    p99: lat[Math.min(n - 1, Math.floor(n * 0.99))]! * 1000,
  };
}

/**
 * A guest worker's message loop: each Job is run and its result posted; a
 * stop closes the driver, waits for its interrupt listener, closes the
 * transport and posts 'stopped'. Failures are posted as 'error' messages.
 */
export function serveJobs(driver: { close(): Promise<void> }, listening: Promise<unknown>, transport: { close(): void }, run: (job: Job) => Promise<JobResult>): void {
  const port = parentPort!;
  port.on('message', (m: Job | { type: 'stop' }) => {
    if (m.type === 'stop') {
      void driver.close().then(() => listening).then(() => {
        transport.close();
        port.postMessage({ type: 'stopped' });
        // Nothing else holds the thread: it ends by itself, and `node --cpu-prof` writes its profile.
        port.unref();
      });
      return;
    }
    void run(m).then(
      (r) => port.postMessage(r),
      (e: unknown) => port.postMessage({ type: 'error', message: e instanceof Error ? (e.stack ?? e.message) : String(e) }),
    );
  });
  port.postMessage({ type: 'ready' });
}

/**
 * Waits for the next message of `type` from a guest worker (an 'error'
 * message or a worker error rejects), at most `timeoutMs` when given.
 */
export function messagesOf(worker: Worker, label: string, timeoutMs?: number): <T>(type: string) => Promise<T> {
  let failure: Error | undefined;
  worker.on('error', (e) => (failure = e));
  return <T>(type: string): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      if (failure) reject(failure);
      const timer = timeoutMs === undefined ? undefined : setTimeout(() => reject(new Error(`${label}: no '${type}' from the guest in ${timeoutMs} ms`)), timeoutMs);
      timer?.unref();
      const on = (m: { type: string; message?: string }): void => {
        if (m.type !== 'error' && m.type !== type) return;
        worker.off('message', on);
        clearTimeout(timer);
        if (m.type === 'error') reject(new Error(m.message));
        else resolve(m as T);
      };
      worker.on('message', on);
    });
}

/** A started guest worker, driven by Jobs. */
export interface GuestControl {
  run(job: Job): Promise<JobResult>;
  /** Stops the guest (its driver closed), ends the worker, then stops `served`. */
  stop(): Promise<void>;
}

/** Waits for the guest worker's 'ready' and returns its controls. */
export async function guestControl(worker: Worker, label: string, served: { stop(): Promise<void> }, timeoutMs?: number): Promise<GuestControl> {
  const waitFor = messagesOf(worker, label, timeoutMs);
  await waitFor('ready');
  return {
    run: (job) => {
      const p = waitFor<JobResult>('result');
      worker.postMessage(job);
      return p;
    },
    stop: async () => {
      const p = waitFor('stopped');
      worker.postMessage({ type: 'stop' });
      const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
      await p;
      // Let the worker end by itself (a profile is written only then); terminate it if it lingers.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([exited, new Promise<void>((resolve) => (timer = setTimeout(resolve, 2000)))]);
      clearTimeout(timer);
      await worker.terminate();
      await served.stop();
    },
  };
}

/**
 * Runs a job's interrupt handling on the guest thread itself until `done()`:
 * the thread sleeps on the interrupt doorbell (a futex, like a halted vCPU)
 * whenever nothing is used, instead of Atomics.waitAsync on its event loop.
 */
export async function futexInterrupts(driver: { handleInterrupt(queue: number): number }, irq: { readonly count: number; wait(seen: number, timeoutMs: number): unknown }, done: () => boolean): Promise<void> {
  const yieldTurn = (r: () => void): void => void setImmediate(r);
  while (!done()) {
    const seen = irq.count;
    if (driver.handleInterrupt(0) === 0) {
      // Nothing used: interrupts are armed (reap re-enables them); sleep until the device rings.
      irq.wait(seen, 1);
      driver.handleInterrupt(0);
    }
    // Let the completed requests' continuations run and submit (a macrotask turn drains every microtask).
    await new Promise<void>(yieldTurn);
  }
}
