import { FakeClock, FakeScheduler } from './clock.js';
import { InterruptCoalescer } from './coalescer.js';
import { CoalescingError, checkInt, checkNumber } from './errors.js';
import type { CoalescingPolicy } from './policy.js';
import type { Trace } from './trace.js';

/** A small seeded PRNG (mulberry32): deterministic workloads from a seed. */
export class Rng {
  private s: number;
  private spare = NaN;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  exponential(mean: number): number {
    return -mean * Math.log(1 - this.next());
  }
  normal(): number {
    if (!Number.isNaN(this.spare)) {
      const v = this.spare;
      this.spare = NaN;
      return v;
    }
    const u = 1 - this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
  /** Log-normal with the given median and shape σ. */
  lognormal(median: number, sigma: number): number {
    return median * Math.exp(sigma * this.normal());
  }
}

/** Service times: log-normal around `medianUs` (σ = `sigma`), as flash latencies are. */
export function lognormalService(rng: Rng, n: number, medianUs: number, sigma: number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.lognormal(medianUs * 1000, sigma);
  return out;
}

/** Poisson arrivals at `ratePerSec`. */
export function poissonArrivals(rng: Rng, n: number, ratePerSec: number): Float64Array {
  const out = new Float64Array(n);
  const mean = 1e9 / ratePerSec;
  let t = 0;
  for (let i = 0; i < n; i++) {
    out[i] = t;
    t += rng.exponential(mean);
  }
  return out;
}

/**
 * Bursty (on/off) arrivals averaging `ratePerSec`: bursts of geometrically
 * distributed size (mean `burstMean`) arriving `peakFactor` times faster than
 * the average, separated by exponential idle gaps that make up the average.
 */
export function burstyArrivals(rng: Rng, n: number, ratePerSec: number, burstMean = 32, peakFactor = 4): Float64Array {
  const out = new Float64Array(n);
  const meanGap = 1e9 / ratePerSec;
  const inBurstGap = meanGap / peakFactor;
  // Per burst of B requests the time is B·inBurstGap + idle; for mean rate: idle = B·(meanGap − inBurstGap).
  const idleMean = burstMean * (meanGap - inBurstGap);
  const pEnd = 1 / burstMean;
  let t = 0;
  for (let i = 0; i < n; i++) {
    out[i] = t;
    t += rng.next() < pEnd ? rng.exponential(idleMean) : rng.exponential(inBurstGap);
  }
  return out;
}

export interface SimOptions {
  /** Arrival times (ns, non-decreasing) and per-request service times (ns; NaN → drawn from `fallbackService`). */
  workload: Trace;
  /** The guest's queue depth: requests issued and not yet seen complete. */
  queueDepth: number;
  /** Requests the back-end serves at once (FIFO beyond that). */
  parallelism: number;
  policy: CoalescingPolicy;
  /** Service time for requests whose trace gave none. */
  fallbackService?: () => number;
  /**
   * Guest CPU time to take one interrupt (exit, injection, handler entry), ns,
   * and to process each completion it covers. The guest handles interrupts one
   * at a time and sees (and refills) completions when the handling ends. Both
   * default to 0: then coalescing can only cost latency, never gain throughput.
   */
  interruptCostNs?: number;
  perCompletionCostNs?: number;
  /** Requests issued before this time (ns) are run but not measured (warm-up). */
  warmupNs?: number;
}

export interface SimResult {
  ios: number;
  /** Interrupts that covered at least one measured request. */
  interrupts: number;
  interruptsPerIo: number;
  /** Completion → interrupt: the delay coalescing adds, µs. */
  addedP50Us: number;
  addedP99Us: number;
  addedMaxUs: number;
  /** Issue → the guest has handled the completion (interrupt delay and guest CPU included), µs. */
  latencyP50Us: number;
  latencyP99Us: number;
  /** Arrival → handled, including waiting for a queue slot, µs. */
  responseP99Us: number;
  /** Measured I/Os per second of simulated time. */
  iops: number;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[i]!;
}

/**
 * Discrete-event simulation of one queue: a guest issuing requests under a
 * queue-depth cap, a back-end with `parallelism` servers, and the coalescer
 * deciding when the guest hears of completions. The guest frees queue slots
 * only when an interrupt covers them, so delaying interrupts can slow a
 * shallow queue — the effect vIC's thresholds avoid. Timers run on a fake
 * clock; the same workload gives the same result.
 */
export function simulate(options: SimOptions): SimResult {
  const { workload, policy } = options;
  const n = workload.arrivalsNs.length;
  if (workload.serviceNs.length !== n || n === 0) throw new CoalescingError('invalid-config', 'workload needs as many service times as arrivals, at least one', 'workload', n);
  const qd = checkInt('queueDepth', options.queueDepth, 1, 65536);
  const par = checkInt('parallelism', options.parallelism, 1, 65536);
  const warmupNs = checkNumber('warmupNs', options.warmupNs ?? 0, 0, Number.MAX_SAFE_INTEGER);
  const fallback = options.fallbackService;
  const irqCost = checkNumber('interruptCostNs', options.interruptCostNs ?? 0, 0, 1e12);
  const perCost = checkNumber('perCompletionCostNs', options.perCompletionCostNs ?? 0, 0, 1e12);
  const cpuModel = irqCost > 0 || perCost > 0;

  const clock = new FakeClock();
  const scheduler = new FakeScheduler(clock, 10 * n + 1000);
  const issuedAt = new Float64Array(n);
  const completedAt = new Float64Array(n);
  const interruptAt = new Float64Array(n).fill(NaN); // when the interrupt covering it was sent
  const deliveredAt = new Float64Array(n).fill(NaN); // when the guest had handled it
  const service = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = workload.serviceNs[i]!;
    if (Number.isNaN(s)) {
      if (!fallback) throw new CoalescingError('invalid-config', `request ${i} has no service time and no fallbackService was given`, 'fallbackService', i);
      s = fallback();
    }
    service[i] = s;
  }

  // Rings of request ids: waiting in the guest, queued in the device, completed awaiting an interrupt.
  const waiting = new Int32Array(n);
  let wHead = 0;
  let wTail = 0;
  const devQueue = new Int32Array(n);
  let dHead = 0;
  let dTail = 0;
  const undelivered = new Int32Array(n);
  let uHead = 0;
  let uTail = 0;
  // Min-heap of in-service requests by completion time.
  const heapT = new Float64Array(par + 1);
  const heapId = new Int32Array(par + 1);
  let heapN = 0;
  let outstanding = 0; // issued, not yet seen complete by the guest
  let deviceInFlight = 0; // in the device's queue or being served
  let busy = 0;
  let interrupts = 0; // interrupts covering at least one measured request

  const heapPush = (t: number, id: number): void => {
    let i = heapN++;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (heapT[parent]! <= t) break;
      heapT[i] = heapT[parent]!;
      heapId[i] = heapId[parent]!;
      i = parent;
    }
    heapT[i] = t;
    heapId[i] = id;
  };
  const heapPop = (): number => {
    const top = heapId[0]!;
    const lastT = heapT[--heapN]!;
    const lastId = heapId[heapN]!;
    let i = 0;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= heapN) break;
      if (c + 1 < heapN && heapT[c + 1]! < heapT[c]!) c++;
      if (heapT[c]! >= lastT) break;
      heapT[i] = heapT[c]!;
      heapId[i] = heapId[c]!;
      i = c;
    }
    heapT[i] = lastT;
    heapId[i] = lastId;
    return top;
  };

  const startService = (id: number, now: number): void => {
    busy++;
    heapPush(now + service[id]!, id);
  };
  const issue = (now: number): void => {
    while (outstanding < qd && wHead < wTail) {
      const id = waiting[wHead++]!;
      outstanding++;
      deviceInFlight++;
      issuedAt[id] = now;
      if (busy < par) startService(id, now);
      else devQueue[dTail++] = id;
    }
  };

  // Guest CPU: batches handled in order; when one is done its slots refill.
  let cpuFreeAt = 0;
  const handled = new Int32Array(n);
  let hHead = 0;
  let hTail = 0;
  const guestTimer = scheduler.createTimer(() => {
    const now = clock.now();
    while (hHead < hTail && deliveredAt[handled[hHead]!]! <= now) {
      hHead++;
      outstanding--;
    }
    if (hHead < hTail) guestTimer.arm(deliveredAt[handled[hHead]!]!);
    issue(now);
  });
  const coalescer = new InterruptCoalescer({
    queues: 1,
    clock,
    scheduler,
    policy,
    deliver: () => {
      const now = clock.now();
      let measured = false;
      const count = uTail - uHead;
      // The guest sees the batch when its CPU has handled the interrupt.
      const seen = cpuModel ? (cpuFreeAt = Math.max(now, cpuFreeAt) + irqCost + count * perCost) : now;
      while (uHead < uTail) {
        const id = undelivered[uHead++]!;
        interruptAt[id] = now;
        deliveredAt[id] = seen;
        if (issuedAt[id]! >= warmupNs) measured = true;
        if (!cpuModel) outstanding--;
        else handled[hTail++] = id;
      }
      if (measured) interrupts++;
      if (cpuModel && !guestTimer.armed) guestTimer.arm(seen);
      else issue(now);
    },
  });

  let nextArrival = 0;
  for (let guard = 0; guard < 20 * n + 1000; guard++) {
    const tArr = nextArrival < n ? workload.arrivalsNs[nextArrival]! : Infinity;
    const tDone = heapN > 0 ? heapT[0]! : Infinity;
    const tTimer = scheduler.nextDeadline();
    const t = Math.min(tArr, tDone);
    if (tTimer !== Infinity && tTimer <= t) {
      scheduler.advanceTo(Math.max(tTimer, clock.now()));
      continue;
    }
    if (t === Infinity) {
      if (uHead < uTail) {
        coalescer.flush(); // a policy without a time bound left some: the end of the run covers them
        continue;
      }
      break;
    }
    if (t > clock.now()) scheduler.advanceTo(t);
    const now = clock.now();
    if (tDone <= tArr) {
      const id = heapPop();
      busy--;
      deviceInFlight--;
      if (dHead < dTail) startService(devQueue[dHead++]!, now);
      completedAt[id] = now;
      undelivered[uTail++] = id;
      coalescer.onCompletion(0, deviceInFlight);
    } else {
      waiting[wTail++] = nextArrival++;
      issue(now);
    }
  }

  // Metrics over measured requests.
  let m = 0;
  for (let i = 0; i < n; i++) if (issuedAt[i]! >= warmupNs) m++;
  const added = new Float64Array(m);
  const lat = new Float64Array(m);
  const resp = new Float64Array(m);
  let j = 0;
  let firstIssue = Infinity;
  let lastDelivery = 0;
  for (let i = 0; i < n; i++) {
    if (issuedAt[i]! < warmupNs) continue;
    const d = deliveredAt[i]!;
    if (Number.isNaN(d)) throw new CoalescingError('invalid-config', `simulation ended with request ${i} never delivered`, 'request', i);
    added[j] = (interruptAt[i]! - completedAt[i]!) / 1000;
    lat[j] = (d - issuedAt[i]!) / 1000;
    resp[j] = (d - workload.arrivalsNs[i]!) / 1000;
    if (issuedAt[i]! < firstIssue) firstIssue = issuedAt[i]!;
    if (d > lastDelivery) lastDelivery = d;
    j++;
  }
  added.sort();
  lat.sort();
  resp.sort();
  return {
    ios: m,
    interrupts,
    interruptsPerIo: m > 0 ? interrupts / m : 0,
    addedP50Us: percentile(added, 0.5),
    addedP99Us: percentile(added, 0.99),
    addedMaxUs: m > 0 ? added[m - 1]! : 0,
    latencyP50Us: percentile(lat, 0.5),
    latencyP99Us: percentile(lat, 0.99),
    responseP99Us: percentile(resp, 0.99),
    iops: lastDelivery > firstIssue ? (m * 1e9) / (lastDelivery - firstIssue) : 0,
  };
}
