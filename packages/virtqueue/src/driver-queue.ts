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
  /** `auto` (default): indirect for lists of two or more segments when negotiated. */
  indirect?: IndirectMode;
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
  disableInterrupts(): void;
  /** Lists added and not yet reclaimed. */
  readonly inFlight: number;
}
