import type { DescriptorChain } from './chain.js';
import type { VirtqueueError } from './errors.js';
import type { RingFeatures } from './layout.js';

/**
 * The device's side of a virtqueue, either format. The queue holds no
 * buffers: `pop` fills a chain object the caller owns (pool them, one per
 * request in flight), so requests can complete in any order.
 *
 * A guest that breaks the rules makes `pop` throw a `VirtqueueError`; the
 * queue is then broken (`broken` says why) and every later `pop` throws the
 * same error, until `reset`. The device model reports that to the driver as
 * DEVICE_NEEDS_RESET (VirtIO 1.2 §2.1.2). No method ever reads or writes
 * outside the guest memory the queue was given.
 */
export interface DeviceQueue {
  readonly size: number;
  readonly features: RingFeatures;
  readonly broken: VirtqueueError | undefined;
  /** A chain object sized for this queue. */
  createChain(): DescriptorChain;
  /** Fills `chain` with the next available chain; false when there is none. */
  pop(chain: DescriptorChain): boolean;
  /** Is a chain available (without taking it)? */
  hasAvailable(): boolean;
  /** Returns `chain` with `len` bytes written to its writable part; visible at `publishUsed`. */
  pushUsed(chain: DescriptorChain, len: number): void;
  /**
   * IN_ORDER only: `chain` was used completely and needs no used entry of its
   * own; the next `pushUsed` (or `publishUsed`) writes one entry for the batch
   * (VirtIO 1.2 §2.7.9, §2.8.7). Chains must be returned in the order popped.
   */
  pushUsedInOrder(chain: DescriptorChain): void;
  /** Makes every used entry pushed so far visible to the driver (release). */
  publishUsed(): void;
  /** `pushUsed` + `publishUsed`. */
  complete(chain: DescriptorChain, len: number): void;
  /** After `publishUsed`: does the driver want a used buffer notification now? */
  needsInterrupt(): boolean;
  /** Asks the driver to notify on new buffers; true if some arrived meanwhile (re-check). */
  enableNotifications(): boolean;
  /** Asks the driver not to notify (an optimisation the driver may ignore). */
  disableNotifications(): void;
  /** Stops the queue with `error` (as a device does on a fatal guest error). */
  markBroken(error: VirtqueueError): void;
  /** Ring positions, for migration or vhost-user GET_VRING_BASE. */
  state(): QueueState;
}

export interface QueueState {
  /** Split: the free-running avail index the device will read next. Packed: position | wrap << 15. */
  nextAvail: number;
  /** Split: the free-running used index. Packed: position | wrap << 15. */
  nextUsed: number;
}
