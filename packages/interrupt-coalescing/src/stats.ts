/** Buckets of the delay histogram: bucket 0 is < 1 µs, bucket i (1..) is [2^(i-1), 2^i) µs, the last is open-ended. */
export const DELAY_BUCKETS = 24;

/** Upper bound (µs, exclusive) of histogram bucket `i`; `Infinity` for the last. */
export function delayBucketUpperUs(i: number): number {
  return i >= DELAY_BUCKETS - 1 ? Infinity : 2 ** i;
}

/** @internal */
export function bucketOf(delayNs: number): number {
  const us = delayNs / 1000;
  if (!(us >= 1)) return 0;
  const b = Math.floor(Math.log2(us)) + 1;
  return b < DELAY_BUCKETS ? b : DELAY_BUCKETS - 1;
}

/**
 * Per-device statistics, updated without allocation. Counts are plain numbers
 * (exact to 2^53).
 */
export class CoalescingStats {
  /** Completions reported by the device. */
  completions = 0;
  /** Completions the guest did not want an interrupt for (`onCompletion(..., false)`). */
  unwanted = 0;
  /** Interrupts sent (handed to `deliver`). */
  interrupts = 0;
  /** Due interrupts the guest turned down at delivery time (EVENT_IDX / NO_INTERRUPT). */
  suppressed = 0;
  /** Due interrupts of queues mapped to NO_VECTOR (VirtIO 1.2 §4.1.5.3 "Used Buffer Notifications": the device MUST NOT deliver them). */
  noVector = 0;
  /** Pending batches of other queues covered by an interrupt on a vector they share. */
  sharedCovered = 0;
  /** Interrupts whose deadline came from a timer rather than a completion. */
  timerFired = 0;
  /** Completions covered (by an interrupt, a shared vector, or a guest suppression). */
  covered = 0;
  /** Sum over covered completions of completion→interrupt delay, ns. */
  totalDelayNs = 0;
  /** Largest completion→interrupt delay seen, ns. */
  maxDelayNs = 0;
  /**
   * Per completion: its completion→interrupt delay, in log2-µs buckets (see
   * {@link delayBucketUpperUs}). Exact for the first `timestampsPerQueue`
   * completions of a batch; later ones in a larger batch are counted in the
   * bucket of the last exact one (an upper bound on their delay).
   */
  readonly delayHistogram = new Float64Array(DELAY_BUCKETS);
  /** Per interrupt: the delay of the oldest completion it covers. */
  readonly oldestDelayHistogram = new Float64Array(DELAY_BUCKETS);
  /** Per interrupt: completions covered, bucket i = [2^i, 2^(i+1)). */
  readonly batchSizeHistogram = new Float64Array(DELAY_BUCKETS);
  readonly queueCompletions: Float64Array;
  readonly queueInterrupts: Float64Array;

  constructor(readonly queues: number) {
    this.queueCompletions = new Float64Array(queues);
    this.queueInterrupts = new Float64Array(queues);
  }

  /** Completions per interrupt sent (∞ shown as `Infinity` before the first interrupt). */
  get coalescingRatio(): number {
    return this.interrupts === 0 ? (this.completions === 0 ? 0 : Infinity) : this.completions / this.interrupts;
  }

  /** Mean completion→interrupt delay of covered completions, ns. */
  get meanDelayNs(): number {
    return this.covered === 0 ? 0 : this.totalDelayNs / this.covered;
  }

  /** @internal */
  recordBatch(count: number, oldestDelayNs: number, sumDelayNs: number): void {
    this.covered += count;
    this.totalDelayNs += sumDelayNs;
    if (oldestDelayNs > this.maxDelayNs) this.maxDelayNs = oldestDelayNs;
    this.oldestDelayHistogram[bucketOf(oldestDelayNs)]!++;
    const b = 31 - Math.clz32(count);
    this.batchSizeHistogram[b < DELAY_BUCKETS ? b : DELAY_BUCKETS - 1]!++;
  }

  reset(): void {
    this.completions = this.unwanted = this.interrupts = this.suppressed = this.noVector = 0;
    this.sharedCovered = this.timerFired = this.covered = this.totalDelayNs = this.maxDelayNs = 0;
    this.delayHistogram.fill(0);
    this.oldestDelayHistogram.fill(0);
    this.batchSizeHistogram.fill(0);
    this.queueCompletions.fill(0);
    this.queueInterrupts.fill(0);
  }

  /** A plain snapshot (for a management socket or metrics). */
  toJSON(): Record<string, unknown> {
    return {
      completions: this.completions,
      unwanted: this.unwanted,
      interrupts: this.interrupts,
      suppressed: this.suppressed,
      noVector: this.noVector,
      sharedCovered: this.sharedCovered,
      timerFired: this.timerFired,
      covered: this.covered,
      coalescingRatio: this.coalescingRatio,
      meanDelayNs: this.meanDelayNs,
      maxDelayNs: this.maxDelayNs,
      delayHistogram: Array.from(this.delayHistogram, (count, i) => ({ upperUs: delayBucketUpperUs(i), count })).filter((b) => b.count > 0),
      oldestDelayHistogram: Array.from(this.oldestDelayHistogram, (count, i) => ({ upperUs: delayBucketUpperUs(i), count })).filter((b) => b.count > 0),
      batchSizeHistogram: Array.from(this.batchSizeHistogram, (count, i) => ({ atLeast: 2 ** i, count })).filter((b) => b.count > 0),
      queueCompletions: Array.from(this.queueCompletions),
      queueInterrupts: Array.from(this.queueInterrupts),
    };
  }
}
