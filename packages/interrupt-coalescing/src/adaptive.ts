import { CoalescingError, checkInt, checkNumber } from './errors.js';
import { DELIVER_NOW, checkFixedParams, type CoalescingPolicy, type FixedParams } from './policy.js';

/** One moderation profile: the `fixed` limits in force while it is selected. */
export type Profile = FixedParams;

const p = (maxUsecs: number, maxFrames: number): Profile => Object.freeze({ maxUsecs, maxFrames });

/** Linux `lib/dim/net_dim.c` RX profiles, timer started from the first event (EQE mode). */
export const NET_DIM_RX_EQE_PROFILES: readonly Profile[] = Object.freeze([p(1, 256), p(8, 256), p(64, 256), p(128, 256), p(256, 256)]);
/** Linux net_dim RX profiles, timer restarted per completion (CQE mode; here applied as EQE). */
export const NET_DIM_RX_CQE_PROFILES: readonly Profile[] = Object.freeze([p(2, 256), p(8, 128), p(16, 64), p(32, 64), p(64, 64)]);
/** Linux net_dim TX profiles, EQE mode. */
export const NET_DIM_TX_EQE_PROFILES: readonly Profile[] = Object.freeze([p(1, 128), p(8, 128), p(32, 128), p(64, 128), p(128, 128)]);
/** Linux net_dim TX profiles, CQE mode. */
export const NET_DIM_TX_CQE_PROFILES: readonly Profile[] = Object.freeze([p(5, 128), p(8, 64), p(16, 32), p(32, 32), p(64, 32)]);
/**
 * The default: profile 0 is no moderation, so a light load pays nothing;
 * frame limits sized for block queue depths (net_dim's 64–256 frames are
 * never reached at QD ≤ 128).
 */
export const BLOCK_PROFILES: readonly Profile[] = Object.freeze([p(0, 1), p(8, 8), p(16, 16), p(32, 32), p(64, 64)]);

export interface AdaptiveOptions {
  /** Profiles from least to most moderation. Default {@link BLOCK_PROFILES}. */
  profiles?: readonly Profile[];
  /** Profile at start and after reset. Default 0. */
  startProfile?: number;
  /** Interrupts between two evaluations of the rate (net_dim's DIM_NEVENTS). Default 64. */
  nEvents?: number;
  /** A rate change counts when it exceeds this many percent of the reference (net_dim: 10). Default 10. */
  significancePercent?: number;
  /** Below this completion rate (per second) profile 0 is forced. Default 0 (off). */
  minRatePerSec?: number;
  /**
   * Deliver at once when the device reports nothing else in flight on the
   * queue: no later completion can share the interrupt, so waiting only adds
   * latency. A NIC's net_dim cannot know this; a virtual device does. Default true.
   */
  flushWhenIdle?: boolean;
  /**
   * Re-evaluation at a steady rate (closed loops): when the rate has not
   * changed significantly, step one profile up if the current profile already
   * shares its interrupts (at least two completions per interrupt over the
   * window) and the commands in flight, averaged over the window, reach the
   * next profile's frame limit — the bigger batch then fills from requests the
   * device already holds. Without it a closed loop, whose rate is set by its
   * queue depth and is steady from the start, keeps whatever profile its
   * start-up transient left. Default true.
   */
  climbWhenSteady?: boolean;
}

/**
 * `adaptive`: moderation that steps between profiles from the measured
 * completion rate, in the manner of Linux's net_dim (`lib/dim`): a table of
 * usecs/frames profiles, the rate re-measured every `nEvents` interrupts, and
 * a change acted on only when it is significant (more than
 * `significancePercent` from the reference). A significant rise steps one
 * profile up (more moderation), a significant fall one down; the reference is
 * the rate at the last step, so a slow drift adds up until it counts.
 *
 * What differs from net_dim, and why: net_dim is a hill-climber on NIC
 * throughput (it keeps a direction while bytes/packets per ms improve, turns
 * when they get worse, parks when stable or "tired"), which needs the NIC's
 * feedback from moderation to throughput. A virtual device's completion rate
 * is set mostly by its back-end, and a falling rate makes a hill-climber turn
 * back up as often as down; stepping by the rate itself moves up under a
 * rising rate and back down under a falling one, which is the behaviour asked
 * of this policy.
 */
export class AdaptivePolicy implements CoalescingPolicy {
  readonly name = 'adaptive';
  readonly profiles: readonly Profile[];
  readonly nEvents: number;
  readonly significance: number;
  readonly minRatePerSec: number;
  readonly flushWhenIdle: boolean;
  readonly climbWhenSteady: boolean;
  private readonly startProfile: number;
  private readonly usecs: Uint32Array;
  private readonly frames: Uint32Array;
  private readonly maxDelay: number;
  private ix = new Uint8Array(0);
  private events = new Uint32Array(0);
  private windowCompletions = new Float64Array(0);
  private windowCif = new Float64Array(0);
  private windowStartNs = new Float64Array(0);
  private refRate = new Float64Array(0);
  /** Profile changes so far (up, down), for statistics. */
  stepsUp = 0;
  stepsDown = 0;

  constructor(options: AdaptiveOptions = {}) {
    const profiles = options.profiles ?? BLOCK_PROFILES;
    if (!Array.isArray(profiles) || profiles.length < 1 || profiles.length > 255) {
      throw new CoalescingError('invalid-config', 'profiles must be an array of 1 to 255 profiles', 'profiles', profiles);
    }
    this.profiles = (profiles as readonly Profile[]).map((pr, i) => {
      const c = checkFixedParams(pr, `profiles[${i}]`);
      if (c.maxUsecs === 0 && c.maxFrames !== 1) {
        throw new CoalescingError('invalid-config', `profiles[${i}] has a frame limit but no time limit: its delay would be unbounded`, `profiles[${i}]`, pr);
      }
      return Object.freeze(c);
    });
    this.usecs = Uint32Array.from(this.profiles, (x) => x.maxUsecs);
    this.frames = Uint32Array.from(this.profiles, (x) => x.maxFrames);
    this.maxDelay = Math.max(...this.usecs) * 1000;
    this.startProfile = checkInt('startProfile', options.startProfile ?? 0, 0, this.profiles.length - 1);
    this.nEvents = checkInt('nEvents', options.nEvents ?? 64, 1, 1 << 20);
    this.significance = checkNumber('significancePercent', options.significancePercent ?? 10, 0, 1000) / 100;
    this.minRatePerSec = checkNumber('minRatePerSec', options.minRatePerSec ?? 0, 0, 1e12);
    this.flushWhenIdle = options.flushWhenIdle ?? true;
    this.climbWhenSteady = options.climbWhenSteady ?? true;
  }

  bind(queues: number): void {
    this.ix = new Uint8Array(queues).fill(this.startProfile);
    this.events = new Uint32Array(queues);
    this.windowCompletions = new Float64Array(queues);
    this.windowCif = new Float64Array(queues);
    this.windowStartNs = new Float64Array(queues).fill(NaN);
    this.refRate = new Float64Array(queues);
  }

  /** The profile index in force on `queue`. */
  profileOf(queue: number): number {
    return this.ix[queue]!;
  }

  onCompletion(queue: number, inFlight: number, now: number, pending: number, firstNs: number): number {
    if (Number.isNaN(this.windowStartNs[queue]!)) this.windowStartNs[queue] = now;
    this.windowCompletions[queue]!++;
    this.windowCif[queue]! += inFlight;
    return this.recheck(queue, inFlight, now, pending, firstNs);
  }

  recheck(queue: number, inFlight: number, _now: number, pending: number, firstNs: number): number {
    const i = this.ix[queue]!;
    const frames = this.frames[i]!;
    const usecs = this.usecs[i]!;
    if (pending >= frames || usecs === 0 || (inFlight === 0 && this.flushWhenIdle)) return DELIVER_NOW;
    return firstNs + usecs * 1000;
  }

  delivered(queue: number, now: number): void {
    if (++this.events[queue]! < this.nEvents) return;
    const start = this.windowStartNs[queue]!;
    const elapsed = now - start;
    if (!(elapsed > 0)) return; // keep counting until time has passed
    const completions = this.windowCompletions[queue]!;
    const rate = (completions * 1e9) / elapsed;
    const perInterrupt = completions / this.events[queue]!;
    const meanCif = completions > 0 ? this.windowCif[queue]! / completions : 0;
    this.events[queue] = 0;
    this.windowCompletions[queue] = 0;
    this.windowCif[queue] = 0;
    this.windowStartNs[queue] = now;
    const ref = this.refRate[queue]!;
    const i = this.ix[queue]!;
    if (rate < this.minRatePerSec) {
      if (i !== 0) this.stepsDown++;
      this.ix[queue] = 0;
      this.refRate[queue] = rate;
    } else if (ref === 0) {
      this.refRate[queue] = rate;
    } else if (rate > ref * (1 + this.significance)) {
      if (i < this.profiles.length - 1) {
        this.ix[queue] = i + 1;
        this.stepsUp++;
      }
      this.refRate[queue] = rate;
    } else if (rate < ref * (1 - this.significance)) {
      if (i > 0) {
        this.ix[queue] = i - 1;
        this.stepsDown++;
      }
      this.refRate[queue] = rate;
    } else if (this.climbWhenSteady && i < this.profiles.length - 1 && perInterrupt >= 2 && meanCif >= this.frames[i + 1]!) {
      this.ix[queue] = i + 1;
      this.stepsUp++;
      this.refRate[queue] = rate;
    }
  }

  maxDelayNs(): number {
    return this.maxDelay;
  }

  reset(): void {
    this.ix.fill(this.startProfile);
    this.events.fill(0);
    this.windowCompletions.fill(0);
    this.windowCif.fill(0);
    this.windowStartNs.fill(NaN);
    this.refRate.fill(0);
    this.stepsUp = 0;
    this.stepsDown = 0;
  }
}

export interface NetDimOptions {
  /** Profiles from least to most moderation. Default {@link NET_DIM_RX_EQE_PROFILES}. */
  profiles?: readonly Profile[];
  /** Profile at start and after reset. Default 1 (Linux's NET_DIM_DEF_PROFILE_EQE). */
  startProfile?: number;
  /** Interrupts per measurement (DIM_NEVENTS). Default 64. */
  nEvents?: number;
  /** IS_SIGNIFICANT_DIFF: a change over this many percent counts. Default 10. */
  significancePercent?: number;
  /**
   * Deliver at once when the device reports nothing else in flight on the
   * queue, whatever the profile: no later completion can share that interrupt
   * (a guest at queue depth 1 cannot even issue its next request before it),
   * so moderating it only adds latency. A NIC cannot know this and Linux's
   * net_dim has no such rule; a virtual block device knows its commands in
   * flight. Default true.
   */
  flushWhenIdle?: boolean;
}

const PARKING_ON_TOP = 0;
const PARKING_TIRED = 1;
const GOING_RIGHT = 2;
const GOING_LEFT = 3;
const STATS_WORSE = -1;
const STATS_SAME = 0;
const STATS_BETTER = 1;

/**
 * `net_dim`: Linux's dynamic interrupt moderation (`lib/dim/net_dim.c`) as a
 * policy, for devices whose moderation feeds back into their throughput (a
 * NIC, or a guest that refills only on interrupts). Every `nEvents`
 * interrupts it measures bytes, completions and interrupts per millisecond
 * and hill-climbs the profile table: it keeps stepping in one direction
 * (right = more moderation) while the measurement gets significantly better
 * — more bytes/ms, else more completions/ms, else fewer interrupts/ms at the
 * same throughput — turns when it does not, parks "on top" when it has gone
 * both ways around one profile or hit an edge, leaves the park when the
 * measurement changes, and rests after 2×profiles steps ("tired"). Written
 * from the algorithm's description, not from the kernel's code. The bytes
 * stage is skipped while the device reports no bytes.
 */
export class NetDimPolicy implements CoalescingPolicy {
  readonly name = 'net_dim';
  readonly profiles: readonly Profile[];
  readonly nEvents: number;
  readonly significance: number;
  readonly flushWhenIdle: boolean;
  private readonly startProfile: number;
  private readonly usecs: Uint32Array;
  private readonly frames: Uint32Array;
  private readonly maxDelay: number;
  private ix = new Uint8Array(0);
  private state = new Uint8Array(0);
  private stepsLeft = new Uint32Array(0);
  private stepsRight = new Uint32Array(0);
  private tired = new Uint32Array(0);
  private events = new Uint32Array(0);
  private winStart = new Float64Array(0);
  private winCompletions = new Float64Array(0);
  private winBytes = new Float64Array(0);
  private prevBpms = new Float64Array(0);
  private prevPpms = new Float64Array(0);
  private prevEpms = new Float64Array(0);
  private sawBytes = false;

  constructor(options: NetDimOptions = {}) {
    const profiles = options.profiles ?? NET_DIM_RX_EQE_PROFILES;
    if (!Array.isArray(profiles) || profiles.length < 1 || profiles.length > 255) {
      throw new CoalescingError('invalid-config', 'profiles must be an array of 1 to 255 profiles', 'profiles', profiles);
    }
    this.profiles = (profiles as readonly Profile[]).map((pr, i) => {
      const c = checkFixedParams(pr, `profiles[${i}]`);
      if (c.maxUsecs === 0 && c.maxFrames !== 1) {
        throw new CoalescingError('invalid-config', `profiles[${i}] has a frame limit but no time limit: its delay would be unbounded`, `profiles[${i}]`, pr);
      }
      return Object.freeze(c);
    });
    this.usecs = Uint32Array.from(this.profiles, (x) => x.maxUsecs);
    this.frames = Uint32Array.from(this.profiles, (x) => x.maxFrames);
    this.maxDelay = Math.max(...this.usecs) * 1000;
    this.startProfile = checkInt('startProfile', options.startProfile ?? Math.min(1, this.profiles.length - 1), 0, this.profiles.length - 1);
    this.nEvents = checkInt('nEvents', options.nEvents ?? 64, 1, 1 << 20);
    this.significance = checkNumber('significancePercent', options.significancePercent ?? 10, 0, 1000) / 100;
    this.flushWhenIdle = options.flushWhenIdle ?? true;
  }

  bind(queues: number): void {
    this.ix = new Uint8Array(queues).fill(this.startProfile);
    this.state = new Uint8Array(queues).fill(PARKING_ON_TOP);
    this.stepsLeft = new Uint32Array(queues);
    this.stepsRight = new Uint32Array(queues);
    this.tired = new Uint32Array(queues);
    this.events = new Uint32Array(queues);
    this.winStart = new Float64Array(queues).fill(NaN);
    this.winCompletions = new Float64Array(queues);
    this.winBytes = new Float64Array(queues);
    this.prevBpms = new Float64Array(queues);
    this.prevPpms = new Float64Array(queues);
    this.prevEpms = new Float64Array(queues);
  }

  profileOf(queue: number): number {
    return this.ix[queue]!;
  }

  onCompletion(queue: number, inFlight: number, now: number, pending: number, firstNs: number, bytes: number): number {
    if (Number.isNaN(this.winStart[queue]!)) this.winStart[queue] = now;
    this.winCompletions[queue]!++;
    if (bytes > 0) {
      this.winBytes[queue]! += bytes;
      this.sawBytes = true;
    }
    return this.recheck(queue, inFlight, now, pending, firstNs);
  }

  recheck(queue: number, inFlight: number, _now: number, pending: number, firstNs: number): number {
    const i = this.ix[queue]!;
    if (pending >= this.frames[i]! || this.usecs[i] === 0 || (inFlight === 0 && this.flushWhenIdle)) return DELIVER_NOW;
    return firstNs + this.usecs[i]! * 1000;
  }

  delivered(queue: number, now: number): void {
    if (++this.events[queue]! < this.nEvents) return;
    const elapsedMs = (now - this.winStart[queue]!) / 1e6;
    if (!(elapsedMs > 0)) return;
    const bpms = this.winBytes[queue]! / elapsedMs;
    const ppms = this.winCompletions[queue]! / elapsedMs;
    const epms = this.events[queue]! / elapsedMs;
    this.events[queue] = 0;
    this.winCompletions[queue] = 0;
    this.winBytes[queue] = 0;
    this.winStart[queue] = now;
    this.decide(queue, bpms, ppms, epms);
  }

  /** One net_dim decision from a measurement; exposed for tests and for devices that measure themselves. */
  decide(queue: number, bpms: number, ppms: number, epms: number): void {
    const prevState = this.state[queue]!;
    switch (prevState) {
      case PARKING_ON_TOP:
        if (this.compare(queue, bpms, ppms, epms) !== STATS_SAME) this.exitParking(queue);
        break;
      case PARKING_TIRED:
        if (--this.tired[queue]! === 0) this.exitParking(queue);
        break;
      default: {
        if (this.compare(queue, bpms, ppms, epms) !== STATS_BETTER) this.turn(queue);
        if (this.onTop(queue)) {
          this.parkOnTop(queue);
          break;
        }
        const r = this.step(queue);
        if (r === 'edge') this.parkOnTop(queue);
        else if (r === 'tired') {
          this.stepsLeft[queue] = 0;
          this.stepsRight[queue] = 0;
          this.state[queue] = PARKING_TIRED;
        }
      }
    }
    if (prevState !== PARKING_ON_TOP || this.state[queue] !== PARKING_ON_TOP) {
      this.prevBpms[queue] = bpms;
      this.prevPpms[queue] = ppms;
      this.prevEpms[queue] = epms;
    }
  }

  private significant(val: number, ref: number): boolean {
    return ref !== 0 && Math.abs(val - ref) / ref > this.significance;
  }

  private compare(queue: number, bpms: number, ppms: number, epms: number): number {
    if (this.sawBytes) {
      const pb = this.prevBpms[queue]!;
      if (pb === 0) return bpms > 0 ? STATS_BETTER : STATS_SAME;
      if (this.significant(bpms, pb)) return bpms > pb ? STATS_BETTER : STATS_WORSE;
    }
    const pp = this.prevPpms[queue]!;
    if (pp === 0) return ppms > 0 ? STATS_BETTER : STATS_SAME;
    if (this.significant(ppms, pp)) return ppms > pp ? STATS_BETTER : STATS_WORSE;
    const pe = this.prevEpms[queue]!;
    if (pe === 0) return STATS_SAME;
    if (this.significant(epms, pe)) return epms < pe ? STATS_BETTER : STATS_WORSE;
    return STATS_SAME;
  }

  private step(queue: number): 'stepped' | 'edge' | 'tired' {
    if (this.tired[queue] === this.profiles.length * 2) return 'tired';
    const s = this.state[queue];
    if (s === GOING_RIGHT) {
      if (this.ix[queue] === this.profiles.length - 1) return 'edge';
      this.ix[queue]!++;
      this.stepsRight[queue]!++;
    } else if (s === GOING_LEFT) {
      if (this.ix[queue] === 0) return 'edge';
      this.ix[queue]!--;
      this.stepsLeft[queue]!++;
    }
    this.tired[queue]!++;
    return 'stepped';
  }

  private exitParking(queue: number): void {
    this.state[queue] = this.ix[queue]! > 0 ? GOING_LEFT : GOING_RIGHT;
    this.step(queue);
  }

  private onTop(queue: number): boolean {
    const s = this.state[queue];
    if (s === GOING_RIGHT) return this.stepsLeft[queue]! > 1 && this.stepsRight[queue] === 1;
    if (s === GOING_LEFT) return this.stepsRight[queue]! > 1 && this.stepsLeft[queue] === 1;
    return true;
  }

  private turn(queue: number): void {
    if (this.state[queue] === GOING_RIGHT) {
      this.state[queue] = GOING_LEFT;
      this.stepsLeft[queue] = 0;
    } else if (this.state[queue] === GOING_LEFT) {
      this.state[queue] = GOING_RIGHT;
      this.stepsRight[queue] = 0;
    }
  }

  private parkOnTop(queue: number): void {
    this.stepsLeft[queue] = 0;
    this.stepsRight[queue] = 0;
    this.tired[queue] = 0;
    this.state[queue] = PARKING_ON_TOP;
  }

  /** 'parking-on-top' | 'parking-tired' | 'going-right' | 'going-left', for statistics. */
  stateOf(queue: number): string {
    return ['parking-on-top', 'parking-tired', 'going-right', 'going-left'][this.state[queue]!]!;
  }

  maxDelayNs(): number {
    return this.maxDelay;
  }

  reset(): void {
    this.ix.fill(this.startProfile);
    this.state.fill(PARKING_ON_TOP);
    this.stepsLeft.fill(0);
    this.stepsRight.fill(0);
    this.tired.fill(0);
    this.events.fill(0);
    this.winStart.fill(NaN);
    this.winCompletions.fill(0);
    this.winBytes.fill(0);
    this.prevBpms.fill(0);
    this.prevPpms.fill(0);
    this.prevEpms.fill(0);
    this.sawBytes = false;
  }
}
