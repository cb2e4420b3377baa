import type { Doorbell } from '@ioplane/virtqueue';
import { VirtioError } from './errors.js';

export interface HaltPollOptions {
  /** The longest poll, µs (Linux's `halt_poll_ns` / `guest_halt_poll_ns`: 200 µs on x86; the default). */
  maxUs?: number;
  /** The first window a grow gives a vCPU that had none, µs (`guest_halt_poll_grow_start`; default 50). */
  growStartUs?: number;
  /** What a window is multiplied by when it grows (`guest_halt_poll_grow`; default 2; 0 never grows). */
  grow?: number;
  /** What a window is divided by after an idle period longer than `maxUs`; 0 drops it to none (`guest_halt_poll_shrink`; default 2). */
  shrink?: number;
}

/** What the governor saw: idle periods, and how each ended. */
export interface HaltPollStats {
  /** Idle periods: the vCPU had nothing to do and waited for an interrupt. */
  idle: number;
  /** … that the interrupt ended while the vCPU was still polling: no thread was woken for it. */
  caught: number;
  /** … in which the vCPU went to sleep, and the interrupt (or the timeout) had to wake it. */
  slept: number;
}

/**
 * Halt polling for a simulated vCPU: how long its thread keeps looking for an
 * interrupt, once it has nothing left to do, before it goes to sleep on it.
 *
 * A sleeping thread costs whoever wakes it: on this kind of host, an eventfd
 * or futex wake-up and an inter-processor interrupt, paid on the *device's*
 * thread (about 6 µs of its CPU per interrupt on the benchmark machine). A
 * thread still polling is woken by the store alone. Linux's KVM polls a halted
 * vCPU on the host (`halt_poll_ns`, 200 µs on x86) and guests can poll before
 * halting (the haltpoll cpuidle governor); both size the window with the rule
 * here (Documentation/virt/kvm/halt-polling.rst, guest-halt-polling.rst):
 * after an idle period of `t` µs that polling did not catch,
 * - `t` at most `maxUs`: the window was too short; it grows (×`grow`, from
 *   `growStartUs`, up to `maxUs`);
 * - `t` over `maxUs`: polling would not have caught it; the window shrinks
 *   (÷`shrink`; to none with 0, or when that falls below `growStartUs`).
 * A window starts at none, so an idle vCPU polls little and a busy one polls
 * up to `maxUs`. The polling itself is done by whoever owns the thread
 * (`VirtioBlkDriver.listen`'s `haltPoll`), which reports each idle period to
 * `idleEnded`.
 */
export class HaltPollGovernor {
  readonly maxUs: number;
  readonly growStartUs: number;
  readonly grow: number;
  readonly shrink: number;
  readonly stats: HaltPollStats = { idle: 0, caught: 0, slept: 0 };
  #windowUs = 0;

  constructor(options: HaltPollOptions = {}) {
    const { maxUs = 200, growStartUs = 50, grow = 2, shrink = 2 } = options;
    check('maxUs', maxUs, 0, 1e6);
    check('growStartUs', growStartUs, 0, 1e6);
    check('grow', grow, 0, 1024);
    check('shrink', shrink, 0, 1024);
    this.maxUs = maxUs;
    this.growStartUs = growStartUs;
    this.grow = grow;
    this.shrink = shrink;
  }

  /** How long to poll at the start of the next idle period, µs. */
  get windowUs(): number {
    return this.#windowUs;
  }

  /**
   * An idle period ended after `idleUs` (polling and any sleep): `caught`
   * when it ended while polling. Sizes the next window.
   */
  idleEnded(idleUs: number, caught: boolean): void {
    this.stats.idle++;
    if (caught) {
      this.stats.caught++;
      return;
    }
    this.stats.slept++;
    if (idleUs > this.maxUs) {
      const w = this.shrink === 0 ? 0 : this.#windowUs / this.shrink;
      // Below where a grow would start, none (as KVM's shrink does).
      this.#windowUs = w < this.growStartUs ? 0 : w;
    } else if (idleUs > this.#windowUs && this.grow !== 0) {
      this.#windowUs = Math.min(this.maxUs, Math.max(this.growStartUs, this.#windowUs * this.grow));
    }
  }
}

function check(name: string, v: number, lo: number, hi: number): void {
  if (!(typeof v === 'number' && v >= lo && v <= hi)) {
    throw new VirtioError('invalid-argument', `halt polling ${name} ${String(v)} is outside ${lo}..${hi}`, { [name]: v });
  }
}

/** `haltPoll` as `listen` takes it: a governor (not its options), or none. */
export function checkHaltPoll(g: unknown): HaltPollGovernor | undefined {
  if (g === undefined) return undefined;
  const o = g as HaltPollGovernor | null;
  if (o === null || typeof o !== 'object' || typeof o.idleEnded !== 'function' || typeof o.windowUs !== 'number') {
    throw new VirtioError('invalid-argument', 'haltPoll must be a HaltPollGovernor (new HaltPollGovernor(options)), not its options', {});
  }
  return o;
}

const nextTurn = (resolve: () => void): void => void setImmediate(resolve);

/**
 * An idle period of a thread that waits for `bell` to move past `seen`, as a
 * halted vCPU does: look at the doorbell once per turn of the event loop for
 * the governor's window (so other work of the thread still runs), then sleep
 * on it for at most `timeoutMs`. Reports the period to the governor. Stops
 * polling early when `stop()` says so.
 */
export async function haltPollWait(bell: Doorbell, seen: number, timeoutMs: number, governor: HaltPollGovernor, now: () => number, stop: () => boolean): Promise<void> {
  const idleAt = now();
  const windowMs = governor.windowUs / 1000;
  while (bell.count === seen && !stop() && now() - idleAt < windowMs) await new Promise<void>(nextTurn);
  const caught = bell.count !== seen;
  if (!caught) await bell.waitAsync(seen, timeoutMs);
  governor.idleEnded((now() - idleAt) * 1000, caught);
}
