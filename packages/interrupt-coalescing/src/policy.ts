import { CoalescingError, checkInt } from './errors.js';

/** Returned by a policy to mean "deliver the interrupt now". Any deadline ≤ now means the same. */
export const DELIVER_NOW = -Infinity;

/**
 * Decides when the interrupt covering a queue's pending completions is due.
 * The {@link InterruptCoalescer} owns the pending count and the time of the
 * oldest pending completion; a policy only turns them into a deadline.
 *
 * Every method runs on the completion hot path and must not allocate.
 * One policy object serves one coalescer (it keeps per-queue state sized by
 * `bind`); several queues of that coalescer may share it.
 */
export interface CoalescingPolicy {
  readonly name: string;
  /** Called once by the coalescer before any other method. */
  bind(queues: number): void;
  /**
   * A completion arrived on `queue`. `inFlight` is what the device still has
   * outstanding on that queue (taken from the guest, not yet completed),
   * `pending` counts completions awaiting an interrupt including this one, and
   * `firstNs` is when the oldest of them completed. Returns the absolute
   * deadline (ns) for the interrupt: ≤ `now` delivers now, `Infinity` waits for
   * more completions without a timer. `bytes` is the completion's payload
   * size when the device reports it (0 otherwise).
   */
  onCompletion(queue: number, inFlight: number, now: number, pending: number, firstNs: number, bytes: number): number;
  /** The same question without a new completion: parameters changed, or `reevaluate` was called. */
  recheck(queue: number, inFlight: number, now: number, pending: number, firstNs: number): number;
  /** An interrupt (or a guest-suppressed one) covered `count` completions of `queue` at `now`. */
  delivered(queue: number, now: number, count: number): void;
  /** Upper bound (ns) on how long a completion of `queue` may wait; `Infinity` if the policy has none. */
  maxDelayNs(queue: number): number;
  /** Back to the state after `bind` (device reset). */
  reset(): void;
}

/** `none`: every completion the guest wants interrupts at once. */
export class NonePolicy implements CoalescingPolicy {
  readonly name = 'none';
  bind(_queues: number): void {}
  onCompletion(): number {
    return DELIVER_NOW;
  }
  recheck(): number {
    return DELIVER_NOW;
  }
  delivered(): void {}
  maxDelayNs(): number {
    return 0;
  }
  reset(): void {}
}

/**
 * ethtool's coalescing pair for one direction: interrupts are held until
 * `(maxUsecs > 0 && time since first completion >= maxUsecs) ||
 * (maxFrames > 0 && completions >= maxFrames)` (Linux `struct ethtool_coalesce`).
 * Both zero is refused, as there: it would never interrupt. `{ maxFrames: 1,
 * maxUsecs: 0 }` is "no coalescing".
 */
export interface FixedParams {
  /** ethtool `rx-frames`/`tx-frames`; 0 = no frame limit. */
  maxFrames: number;
  /** ethtool `rx-usecs`/`tx-usecs`; 0 = no time limit. */
  maxUsecs: number;
}

const U32_MAX = 0xffff_ffff;

export function checkFixedParams(p: FixedParams, field = 'params'): FixedParams {
  const maxFrames = checkInt(`${field}.maxFrames`, p.maxFrames, 0, U32_MAX);
  const maxUsecs = checkInt(`${field}.maxUsecs`, p.maxUsecs, 0, U32_MAX);
  if (maxFrames === 0 && maxUsecs === 0) {
    throw new CoalescingError(
      'invalid-config',
      `${field}: maxFrames and maxUsecs both 0 would never interrupt (ethtool refuses it too); use { maxFrames: 1, maxUsecs: 0 } for no coalescing`,
      field,
      p,
    );
  }
  return { maxFrames, maxUsecs };
}

/** No coalescing, in `FixedParams` form. */
export const NO_COALESCING: Readonly<FixedParams> = Object.freeze({ maxFrames: 1, maxUsecs: 0 });

/**
 * `fixed`: frames and microseconds as ethtool `-C rx-frames N rx-usecs U`
 * (and, through {@link fromVirtioNetCoal} and {@link fromNvmeAggregation},
 * the virtio-net NOTF_COAL command and NVMe's Interrupt Coalescing feature).
 * Parameters are per queue, so a virtio-net device can set each virtqueue
 * from VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET.
 *
 * A frames-only setting (`maxUsecs` 0, `maxFrames` > 1) has no time bound in
 * ethtool; here it also delivers when the device reports nothing left in
 * flight, since no later completion could then fill the batch.
 */
export class FixedPolicy implements CoalescingPolicy {
  readonly name: string;
  private readonly defaults: FixedParams;
  private frames = new Uint32Array(0);
  private usecs = new Uint32Array(0);
  constructor(params: FixedParams, name = 'fixed') {
    this.defaults = checkFixedParams(params);
    this.name = name;
  }
  bind(queues: number): void {
    this.frames = new Uint32Array(queues).fill(this.defaults.maxFrames);
    this.usecs = new Uint32Array(queues).fill(this.defaults.maxUsecs);
  }
  /** Sets one queue's limits. Call the coalescer's `reevaluate(queue)` after, so a now-met condition delivers at once. */
  setParams(queue: number, params: FixedParams): void {
    const p = checkFixedParams(params);
    this.checkQueue(queue);
    this.frames[queue] = p.maxFrames;
    this.usecs[queue] = p.maxUsecs;
  }
  params(queue: number): FixedParams {
    this.checkQueue(queue);
    return { maxFrames: this.frames[queue]!, maxUsecs: this.usecs[queue]! };
  }
  private checkQueue(queue: number): void {
    if (!Number.isInteger(queue) || queue < 0 || queue >= this.frames.length) {
      throw new CoalescingError('invalid-queue', `queue ${queue} is not in [0, ${this.frames.length})`, 'queue', queue);
    }
  }
  onCompletion(queue: number, inFlight: number, now: number, pending: number, firstNs: number): number {
    return this.recheck(queue, inFlight, now, pending, firstNs);
  }
  recheck(queue: number, inFlight: number, _now: number, pending: number, firstNs: number): number {
    const frames = this.frames[queue]!;
    const usecs = this.usecs[queue]!;
    if (frames > 0 && pending >= frames) return DELIVER_NOW;
    if (usecs > 0) return firstNs + usecs * 1000;
    return inFlight === 0 ? DELIVER_NOW : Infinity;
  }
  delivered(): void {}
  maxDelayNs(queue: number): number {
    const usecs = this.usecs[queue]!;
    if (usecs > 0) return usecs * 1000;
    return this.frames[queue] === 1 ? 0 : Infinity;
  }
  reset(): void {
    this.frames.fill(this.defaults.maxFrames);
    this.usecs.fill(this.defaults.maxUsecs);
  }
}

/**
 * virtio-net `struct virtio_net_ctrl_coal { le32 max_packets; le32 max_usecs; }`
 * as `FixedParams`. VirtIO 1.3, Network Device, Control Virtqueue, "Notifications Coalescing / Operation": "When the device has
 * max_usecs = 0 or max_packets = 0, the notification conditions are met after
 * every packet" — unlike ethtool, either zero means no coalescing.
 */
export function fromVirtioNetCoal(maxPackets: number, maxUsecs: number): FixedParams {
  checkInt('max_packets', maxPackets, 0, U32_MAX);
  checkInt('max_usecs', maxUsecs, 0, U32_MAX);
  if (maxPackets === 0 || maxUsecs === 0) return { ...NO_COALESCING };
  return { maxFrames: maxPackets, maxUsecs };
}

/**
 * NVMe Interrupt Coalescing (Set Features, Feature Identifier 08h): THR, the
 * Aggregation Threshold, is a 0's based count of completion queue entries;
 * TIME, the Aggregation Time, is in 100 µs increments, 0 meaning no delay. The
 * controller interrupts when either condition is met; either field cleared to
 * 0h disables coalescing.
 */
export function fromNvmeAggregation(thr: number, time: number): FixedParams {
  checkInt('THR', thr, 0, 0xff);
  checkInt('TIME', time, 0, 0xff);
  if (thr === 0 || time === 0) return { ...NO_COALESCING };
  return { maxFrames: thr + 1, maxUsecs: time * 100 };
}

/** NVMe-style aggregation: a {@link FixedPolicy} from THR (0's based) and TIME (100 µs units). */
export function nvmeAggregationPolicy(thr: number, time: number): FixedPolicy {
  return new FixedPolicy(fromNvmeAggregation(thr, time), 'nvme');
}
