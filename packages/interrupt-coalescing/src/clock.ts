import { CoalescingError } from './errors.js';

/**
 * A monotonic clock in nanoseconds. A `number` holds nanoseconds exactly up to
 * 2^53 ns (104 days), and reading it allocates nothing, unlike
 * `process.hrtime.bigint()`.
 */
export interface Clock {
  now(): number;
}

/** One re-armable timer. Made once (per queue), armed many times. */
export interface Timer {
  /** Fires the callback once, at or after `deadlineNs` on the scheduler's clock. Re-arming replaces the deadline. */
  arm(deadlineNs: number): void;
  cancel(): void;
  readonly armed: boolean;
  /** The armed deadline, or `Infinity`. */
  readonly deadline: number;
}

/** Makes timers. The coalescer makes one per queue at construction, so arming allocates no closure. */
export interface TimerScheduler {
  createTimer(callback: () => void): Timer;
}

/** The process's monotonic clock: `performance.now()` in ns (microsecond resolution or better). */
export const monotonicClock: Clock = { now: () => performance.now() * 1e6 };

/** A clock that moves only when told to: the time source of every test and of the simulator. */
export class FakeClock implements Clock {
  private t: number;
  constructor(startNs = 0) {
    if (!Number.isFinite(startNs) || startNs < 0) {
      throw new CoalescingError('invalid-config', `start time must be a finite number ≥ 0, got ${startNs}`, 'startNs', startNs);
    }
    this.t = startNs;
  }
  now(): number {
    return this.t;
  }
  /** Moves to `ns`; never backwards. */
  set(ns: number): void {
    if (!(ns >= this.t) || !Number.isFinite(ns)) {
      throw new CoalescingError('clock-backwards', `fake clock cannot move from ${this.t} ns to ${ns} ns`, 'ns', ns);
    }
    this.t = ns;
  }
  advance(ns: number): void {
    this.set(this.t + ns);
  }
}

class FakeTimer implements Timer {
  armed = false;
  deadline = Infinity;
  seq = 0;
  constructor(
    private readonly owner: FakeScheduler,
    readonly callback: () => void,
  ) {}
  arm(deadlineNs: number): void {
    if (Number.isNaN(deadlineNs)) throw new CoalescingError('invalid-config', 'timer deadline is NaN', 'deadlineNs', deadlineNs);
    this.deadline = deadlineNs;
    this.armed = deadlineNs !== Infinity;
    this.seq = this.owner.nextSeq++;
  }
  cancel(): void {
    this.armed = false;
    this.deadline = Infinity;
  }
}

/**
 * Timers over a {@link FakeClock}: nothing fires until `advanceTo`/`advanceBy`,
 * which fire due timers in deadline order (ties in arming order), moving the
 * clock to each deadline before its callback runs.
 */
export class FakeScheduler implements TimerScheduler {
  private readonly timers: FakeTimer[] = [];
  /** @internal */ nextSeq = 0;
  constructor(
    readonly clock: FakeClock,
    /** Bound on callbacks fired by one advance (a timer re-arming in the past forever would loop). */
    readonly maxFiresPerAdvance = 1_000_000,
  ) {}

  createTimer(callback: () => void): Timer {
    const t = new FakeTimer(this, callback);
    this.timers.push(t);
    return t;
  }

  /** The earliest armed deadline, or `Infinity`. */
  nextDeadline(): number {
    let best = Infinity;
    for (const t of this.timers) if (t.armed && t.deadline < best) best = t.deadline;
    return best;
  }

  private earliest(): FakeTimer | undefined {
    let best: FakeTimer | undefined;
    for (const t of this.timers) {
      if (!t.armed) continue;
      if (!best || t.deadline < best.deadline || (t.deadline === best.deadline && t.seq < best.seq)) best = t;
    }
    return best;
  }

  /** Fires every timer due at or before `ns`, then leaves the clock at `ns`. Returns how many fired. */
  advanceTo(ns: number): number {
    if (!(ns >= this.clock.now())) {
      throw new CoalescingError('clock-backwards', `cannot advance from ${this.clock.now()} ns to ${ns} ns`, 'ns', ns);
    }
    let fired = 0;
    for (;;) {
      const t = this.earliest();
      if (!t || t.deadline > ns) break;
      if (t.deadline > this.clock.now()) this.clock.set(t.deadline);
      t.armed = false;
      t.deadline = Infinity;
      if (++fired > this.maxFiresPerAdvance) {
        throw new CoalescingError('timer-loop', `more than ${this.maxFiresPerAdvance} timer callbacks in one advance`, 'maxFiresPerAdvance', fired);
      }
      t.callback();
    }
    this.clock.set(ns);
    return fired;
  }

  advanceBy(ns: number): number {
    return this.advanceTo(this.clock.now() + ns);
  }

  /** Fires armed timers in order until none is armed (bounded like `advanceTo`). */
  runUntilIdle(): number {
    let fired = 0;
    for (let d = this.nextDeadline(); d !== Infinity; d = this.nextDeadline()) {
      fired += this.advanceTo(Math.max(d, this.clock.now()));
      if (fired > this.maxFiresPerAdvance) {
        throw new CoalescingError('timer-loop', `more than ${this.maxFiresPerAdvance} timer callbacks`, 'maxFiresPerAdvance', fired);
      }
    }
    return fired;
  }
}

export interface RealSchedulerOptions {
  /** Don't keep the process alive for an armed timer (Node's `unref`). Default false. */
  unref?: boolean;
  /**
   * Deadlines closer than this (ns) are waited for by re-checking on
   * `setImmediate` rather than with `setTimeout`, whose resolution is 1 ms.
   * Default 2 ms. The cost is event-loop turns while a sub-millisecond
   * coalescing window is open; the loop still serves I/O between checks.
   */
  spinBelowNs?: number;
}

class RealTimer implements Timer {
  armed = false;
  deadline = Infinity;
  private timeout: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private readonly check = (): void => {
    this.timeout = undefined;
    this.immediate = undefined;
    if (!this.armed) return;
    if (this.clock.now() >= this.deadline) {
      this.armed = false;
      this.deadline = Infinity;
      this.callback();
    } else {
      this.schedule();
    }
  };
  constructor(
    private readonly clock: Clock,
    private readonly callback: () => void,
    private readonly unref: boolean,
    private readonly spinBelowNs: number,
  ) {}
  arm(deadlineNs: number): void {
    if (Number.isNaN(deadlineNs)) throw new CoalescingError('invalid-config', 'timer deadline is NaN', 'deadlineNs', deadlineNs);
    this.clear();
    this.deadline = deadlineNs;
    this.armed = deadlineNs !== Infinity;
    if (this.armed) this.schedule();
  }
  cancel(): void {
    this.clear();
    this.armed = false;
    this.deadline = Infinity;
  }
  private clear(): void {
    if (this.timeout) clearTimeout(this.timeout);
    if (this.immediate) clearImmediate(this.immediate);
    this.timeout = undefined;
    this.immediate = undefined;
  }
  private schedule(): void {
    const wait = this.deadline - this.clock.now();
    if (wait >= this.spinBelowNs) {
      // Wake a millisecond early, then finish on setImmediate.
      this.timeout = setTimeout(this.check, Math.max(1, Math.floor(wait / 1e6) - 1));
      if (this.unref) this.timeout.unref();
    } else {
      this.immediate = setImmediate(this.check);
      if (this.unref) this.immediate.unref();
    }
  }
}

/** Production timers over `setTimeout`/`setImmediate` and a monotonic clock. */
export class RealScheduler implements TimerScheduler {
  private readonly unref: boolean;
  private readonly spinBelowNs: number;
  constructor(
    readonly clock: Clock = monotonicClock,
    options: RealSchedulerOptions = {},
  ) {
    this.unref = options.unref ?? false;
    this.spinBelowNs = options.spinBelowNs ?? 2e6;
  }
  createTimer(callback: () => void): Timer {
    return new RealTimer(this.clock, callback, this.unref, this.spinBelowNs);
  }
}
