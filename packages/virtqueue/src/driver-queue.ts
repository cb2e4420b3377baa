import type { BufferList } from './chain.js';
import type { VirtqueueError } from './errors.js';
import type { RingFeatures } from './layout.js';

/** What `pollUsed` hands back: the token given to `add`, and the used length. */
export interface UsedBuffer<T> {
  token: T | undefined;
  len: number;
}

/** How a driver places lists with more than one segment. */
export type IndirectMode = 'never' | 'always' | 'auto';

export interface DriverOptions {
  /**
   * Guest memory for indirect tables: one slot of `maxIndirect` × 16 bytes
   * per queue entry, starting at `addr` (16-byte aligned). Without it the
   * driver never uses indirect descriptors.
   */
  indirectArea?: { addr: number; maxIndirect: number };
  /** `auto` (default): indirect for lists of `indirectFrom` or more segments when negotiated. */
  indirect?: IndirectMode;
  /**
   * With `auto`, the fewest segments a list needs to go in an indirect table
   * (default 2). Shorter lists take ring descriptors: the device reads them
   * in the descriptor table itself, not in a table of their own, one cache
   * line fewer to fetch from the driver's core per request (a block
   * request's header, data and status take three). A shorter list still
   * goes indirect when the ring has fewer descriptors free than it needs,
   * so it never waits for room that one descriptor would do with.
   */
  indirectFrom?: number;
}

/**
 * The driver's side of a virtqueue (what a guest's virtio driver does). It
 * lives in the guest: it lays out rings in guest memory, adds buffers,
 * decides when to notify, and reclaims used buffers — checking what the
 * device wrote, so a faulty device is reported, not followed.
 */
export interface DriverQueue<T> {
  readonly size: number;
  readonly features: RingFeatures;
  readonly broken: VirtqueueError | undefined;
  /** Descriptors free for new lists. */
  readonly numFree: number;
  /** Adds a list; false if there is no room (reclaim used buffers first). */
  add(list: BufferList, token: T): boolean;
  /** Makes every added list visible to the device (release). */
  publish(): void;
  /** After `publish`: must the driver notify the device? */
  needsNotify(): boolean;
  /** Takes the next used buffer into `out`; false when there is none. */
  pollUsed(out: UsedBuffer<T>): boolean;
  /** Asks the device to interrupt on used buffers; true if some arrived meanwhile. */
  enableInterrupts(): boolean;
  /**
   * As `enableInterrupts`, but with EVENT_IDX the device is asked to
   * interrupt only once `share` (0 ≤ share < 1, default 3/4, as Linux's
   * `virtqueue_enable_cb_delayed`) of the buffers outstanding have come back;
   * never later than the last of them. True if used buffers are already there.
   */
  enableInterruptsDelayed(share?: number): boolean;
  disableInterrupts(): void;
  /** Lists added and not yet reclaimed. */
  readonly inFlight: number;
}

/** `enableInterruptsDelayed`'s share: 1 or more would put the event past the last outstanding buffer. */
export function checkShare(share: number): void {
  if (!(share >= 0 && share < 1)) throw new RangeError(`interrupt delay share ${share} is outside [0, 1)`);
}
