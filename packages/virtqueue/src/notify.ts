/**
 * How one side tells the other "look at the ring": the VirtIO available
 * buffer notification (driver → device, a doorbell) and the used buffer
 * notification (device → driver, an interrupt). The queues only decide
 * *whether* to notify (`needsNotify`, `needsInterrupt`); a Notifier delivers.
 */
export interface Notifier {
  notify(): void;
}

/** In-process: calls a function. */
export class CallbackNotifier implements Notifier {
  constructor(private readonly fn: () => void) {}
  notify(): void {
    this.fn();
  }
}

export type WaitResult = 'ok' | 'not-equal' | 'timed-out';

/**
 * A counter in shared memory that one thread rings and another waits on,
 * like an eventfd: `ring()` increments it and wakes waiters. A waiter reads
 * `count`, checks the ring, and then waits for the count to move past what it
 * read, so a ring between the check and the wait is never lost.
 */
export class Doorbell implements Notifier {
  readonly array: Int32Array;
  readonly index: number;

  constructor(array?: Int32Array, index = 0) {
    this.array = array ?? new Int32Array(new SharedArrayBuffer(4));
    if (!(this.array.buffer instanceof SharedArrayBuffer)) {
      throw new TypeError('a Doorbell needs an Int32Array over a SharedArrayBuffer');
    }
    if (!Number.isInteger(index) || index < 0 || index >= this.array.length) {
      throw new RangeError(`doorbell index ${index} is outside its Int32Array of ${this.array.length}`);
    }
    this.index = index;
  }

  get count(): number {
    return Atomics.load(this.array, this.index);
  }

  notify(): void {
    this.ring();
  }

  ring(): void {
    Atomics.add(this.array, this.index, 1);
    Atomics.notify(this.array, this.index);
  }

  /** Blocks (worker threads only) until the count differs from `seen`, at most `timeoutMs`. */
  wait(seen: number, timeoutMs: number): WaitResult {
    return Atomics.wait(this.array, this.index, seen, timeoutMs);
  }

  /** Resolves when the count differs from `seen`, or after `timeoutMs`. */
  async waitAsync(seen: number, timeoutMs: number): Promise<WaitResult> {
    const r = Atomics.waitAsync(this.array, this.index, seen, timeoutMs);
    return r.async ? r.value : r.value;
  }
}
