import type { Clock, Timer, TimerScheduler } from './clock.js';
import { CoalescingError, checkInt } from './errors.js';
import { NO_VECTOR, type QueueVectors } from './msix.js';
import type { CoalescingPolicy } from './policy.js';
import { CoalescingStats, bucketOf } from './stats.js';

export interface CoalescerOptions {
  /** Number of queues (virtqueue indices 0..queues−1). */
  queues: number;
  clock: Clock;
  scheduler: TimerScheduler;
  /** One policy for every queue, or one per queue (a policy object may serve several queues). */
  policy: CoalescingPolicy | readonly CoalescingPolicy[];
  /** Called with the vector when an interrupt is due; e.g. `(v) => msix.signal(v)`. */
  deliver: (vector: number) => void;
  /** Queue → vector. Without it, queue q interrupts vector q. */
  vectors?: QueueVectors;
  /**
   * Asked at the moment an interrupt is due: does the guest want it? With
   * VIRTIO_F_EVENT_IDX the answer depends on the used index at that moment
   * (`used_event`), without it on VIRTQ_AVAIL_F_NO_INTERRUPT (VirtIO 1.2 §2.7.7
   * "Used Buffer Notification Suppression"; a packed ring's event suppression
   * structure plays the same part), so it is
   * a callback, not a value fixed at completion time. The
   * virtqueue answers it; a `false` covers the pending completions (the
   * driver will find them when it polls) without an interrupt.
   */
  shouldNotify?: (queue: number) => boolean;
  stats?: CoalescingStats;
  /** Completion timestamps kept per queue for the exact per-completion delay histogram. Default 256. */
  timestampsPerQueue?: number;
}

/**
 * The wiring point between a device and the guest's interrupts. The device
 * calls {@link onCompletion} for each used buffer it publishes; the policy of
 * that queue decides when one interrupt covers all completions so far; the
 * coalescer asks `shouldNotify`, maps the queue to its vector and calls
 * `deliver`. Per completion it allocates nothing: per-queue state lives in
 * typed arrays and one timer per queue is made up front.
 *
 * Guarantee (the property tests check it): every completion reported with
 * `notify` true is covered by a delivery (an interrupt, an interrupt on a
 * vector it shares, or a guest suppression) no later than its policy's
 * `maxDelayNs`, provided the scheduler's timers fire.
 */
export class InterruptCoalescer {
  readonly queues: number;
  readonly stats: CoalescingStats;
  private readonly clock: Clock;
  private readonly policies: CoalescingPolicy[];
  private readonly deliverFn: (vector: number) => void;
  private readonly vectors: QueueVectors | undefined;
  private readonly shouldNotify: ((queue: number) => boolean) | undefined;
  private readonly pending: Uint32Array;
  private readonly firstNs: Float64Array;
  private readonly sumNs: Float64Array;
  private readonly deadline: Float64Array;
  private readonly lastInFlight: Uint32Array;
  private readonly timers: Timer[];
  /** Per queue, the completion times of the current batch (the first `cap` of them). */
  private readonly stamps: Float64Array;
  private readonly cap: number;

  constructor(options: CoalescerOptions) {
    this.queues = checkInt('queues', options.queues, 1, 65536);
    this.clock = options.clock;
    if (typeof options.deliver !== 'function') throw new CoalescingError('invalid-config', 'deliver must be a function', 'deliver', options.deliver);
    this.deliverFn = options.deliver;
    this.vectors = options.vectors;
    if (this.vectors && this.vectors.queues < this.queues) {
      throw new CoalescingError('invalid-config', `vector map covers ${this.vectors.queues} queues, fewer than ${this.queues}`, 'vectors', this.vectors.queues);
    }
    this.shouldNotify = options.shouldNotify;
    this.stats = options.stats ?? new CoalescingStats(this.queues);
    const given = options.policy;
    if (Array.isArray(given)) {
      if (given.length !== this.queues) throw new CoalescingError('invalid-config', `${given.length} policies for ${this.queues} queues`, 'policy', given.length);
      this.policies = [...(given as readonly CoalescingPolicy[])];
    } else {
      this.policies = new Array<CoalescingPolicy>(this.queues).fill(given as CoalescingPolicy);
    }
    for (const p of new Set(this.policies)) p.bind(this.queues);
    this.pending = new Uint32Array(this.queues);
    this.firstNs = new Float64Array(this.queues);
    this.sumNs = new Float64Array(this.queues);
    this.deadline = new Float64Array(this.queues).fill(Infinity);
    this.lastInFlight = new Uint32Array(this.queues);
    this.cap = checkInt('timestampsPerQueue', options.timestampsPerQueue ?? 256, 1, 65536);
    this.stamps = new Float64Array(this.queues * this.cap);
    this.timers = [];
    for (let q = 0; q < this.queues; q++) this.timers.push(options.scheduler.createTimer(() => this.onTimer(q)));
  }

  /**
   * The device published a used buffer on `queue`; `inFlight` requests remain
   * outstanding on that queue (taken from the guest, not yet completed).
   * `notify` false: the guest turned interrupts off for it (counted, not held).
   * `bytes`: the payload size, for policies that weigh throughput (net_dim).
   */
  onCompletion(queue: number, inFlight: number, notify = true, bytes = 0): void {
    if (!(queue >= 0 && queue < this.queues) || !Number.isInteger(queue)) {
      throw new CoalescingError('invalid-queue', `queue ${queue} is not in [0, ${this.queues})`, 'queue', queue);
    }
    const cif = inFlight >= 0 && inFlight <= 0xffff_ffff ? Math.floor(inFlight) : 0;
    const now = this.clock.now();
    const st = this.stats;
    st.completions++;
    st.queueCompletions[queue]!++;
    this.lastInFlight[queue] = cif;
    if (!notify) {
      st.unwanted++;
      return;
    }
    const n = this.pending[queue]! + 1;
    this.pending[queue] = n;
    if (n === 1) {
      this.firstNs[queue] = now;
      this.sumNs[queue] = now;
    } else {
      this.sumNs[queue]! += now;
    }
    if (n <= this.cap) this.stamps[queue * this.cap + n - 1] = now;
    this.apply(queue, this.policies[queue]!.onCompletion(queue, cif, now, n, this.firstNs[queue]!, bytes > 0 ? bytes : 0), now, false);
  }

  /** Re-asks the queue's policy (after its parameters changed, e.g. NOTF_COAL); delivers if the condition is now met. */
  reevaluate(queue: number, inFlight?: number): void {
    this.checkQueue(queue);
    if (inFlight !== undefined) this.lastInFlight[queue] = Math.max(0, Math.floor(inFlight));
    const n = this.pending[queue]!;
    if (n === 0) return;
    const now = this.clock.now();
    this.apply(queue, this.policies[queue]!.recheck(queue, this.lastInFlight[queue]!, now, n, this.firstNs[queue]!), now, false);
  }

  /** Replaces the policy of `queue` (bound to this coalescer if new) and re-evaluates what is pending. */
  setPolicy(queue: number, policy: CoalescingPolicy): void {
    this.checkQueue(queue);
    if (!this.policies.includes(policy)) policy.bind(this.queues);
    this.policies[queue] = policy;
    this.reevaluate(queue);
  }

  policyOf(queue: number): CoalescingPolicy {
    this.checkQueue(queue);
    return this.policies[queue]!;
  }

  /** Completions waiting for an interrupt on `queue`. */
  pendingOf(queue: number): number {
    this.checkQueue(queue);
    return this.pending[queue]!;
  }

  /** Delivers what is pending now (all queues, or one): e.g. before the device quiesces. */
  flush(queue?: number): void {
    const now = this.clock.now();
    if (queue !== undefined) {
      this.checkQueue(queue);
      if (this.pending[queue]! > 0) this.deliverQueue(queue, now, false);
      return;
    }
    for (let q = 0; q < this.queues; q++) if (this.pending[q]! > 0) this.deliverQueue(q, now, false);
  }

  /** Device reset: drops what is pending (no interrupt after reset), cancels timers, resets policies. */
  reset(): void {
    for (let q = 0; q < this.queues; q++) {
      this.timers[q]!.cancel();
      this.pending[q] = 0;
      this.deadline[q] = Infinity;
      this.lastInFlight[q] = 0;
    }
    for (const p of new Set(this.policies)) p.reset();
  }

  private checkQueue(queue: number): void {
    if (!Number.isInteger(queue) || queue < 0 || queue >= this.queues) {
      throw new CoalescingError('invalid-queue', `queue ${queue} is not in [0, ${this.queues})`, 'queue', queue);
    }
  }

  private apply(queue: number, due: number, now: number, fromTimer: boolean): void {
    if (due <= now) {
      this.deliverQueue(queue, now, fromTimer);
    } else if (due !== this.deadline[queue]) {
      this.deadline[queue] = due;
      if (due === Infinity) this.timers[queue]!.cancel();
      else this.timers[queue]!.arm(due);
    }
  }

  private onTimer(queue: number): void {
    this.deadline[queue] = Infinity;
    if (this.pending[queue] === 0) return;
    const now = this.clock.now();
    this.deliverQueue(queue, now, true);
  }

  /** Clears `queue`'s batch and accounts for it; returns how many completions it held. */
  private take(queue: number, now: number): number {
    const n = this.pending[queue]!;
    this.pending[queue] = 0;
    if (this.deadline[queue] !== Infinity) {
      this.timers[queue]!.cancel();
      this.deadline[queue] = Infinity;
    }
    const st = this.stats;
    st.recordBatch(n, now - this.firstNs[queue]!, n * now - this.sumNs[queue]!);
    // Per-completion delays: exact for the stored ones, the rest bounded by the last stored.
    const base = queue * this.cap;
    const exact = n < this.cap ? n : this.cap;
    const h = st.delayHistogram;
    for (let i = 0; i < exact; i++) h[bucketOf(now - this.stamps[base + i]!)]!++;
    if (n > exact) h[bucketOf(now - this.stamps[base + exact - 1]!)]! += n - exact;
    this.policies[queue]!.delivered(queue, now, n);
    return n;
  }

  private deliverQueue(queue: number, now: number, fromTimer: boolean): void {
    this.take(queue, now);
    const st = this.stats;
    if (this.shouldNotify && !this.shouldNotify(queue)) {
      st.suppressed++;
      return;
    }
    const vectors = this.vectors;
    const vector = vectors ? vectors.get(queue) : queue;
    if (vector === NO_VECTOR) {
      st.noVector++;
      return;
    }
    if (vectors && vectors.shares(queue)) {
      // The driver's handler looks through every virtqueue mapped to the
      // vector (VirtIO 1.2 §4.1.5.5 "Driver Handling Interrupts"), so this interrupt covers their batches.
      for (let q = 0; q < this.queues; q++) {
        if (q !== queue && this.pending[q]! > 0 && vectors.get(q) === vector) {
          this.take(q, now);
          st.sharedCovered++;
        }
      }
    }
    st.interrupts++;
    st.queueInterrupts[queue]!++;
    if (fromTimer) st.timerFired++;
    this.deliverFn(vector);
  }
}
