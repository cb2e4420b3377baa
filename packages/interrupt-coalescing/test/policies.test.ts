import { describe, expect, it } from 'vitest';
import {
  AdaptivePolicy,
  BLOCK_PROFILES,
  CoalescingError,
  Rng,
  burstyArrivals,
  lognormalService,
  simulate,
  NetDimPolicy,
  FixedPolicy,
  NO_COALESCING,
  NonePolicy,
  QueueVectors,
  VicPolicy,
  fromNvmeAggregation,
  fromVirtioNetCoal,
  nvmeAggregationPolicy,
} from '../src/index.js';
import { US, harness } from './harness.js';

describe('none', () => {
  it('interrupts for every completion at once', () => {
    const h = harness(new NonePolicy());
    for (let i = 0; i < 5; i++) {
      h.at(i * 10 * US);
      h.coalescer.onCompletion(0, 7);
    }
    expect(h.deliveries.map((d) => d.t)).toEqual([0, 10, 20, 30, 40].map((x) => x * US));
    expect(h.coalescer.stats.coalescingRatio).toBe(1);
  });

  it('asks the guest at delivery time (EVENT_IDX / NO_INTERRUPT) and counts what it turned down', () => {
    let wants = false;
    const h = harness(new NonePolicy(), 1, { shouldNotify: () => wants });
    h.coalescer.onCompletion(0, 0);
    wants = true;
    h.coalescer.onCompletion(0, 0);
    h.coalescer.onCompletion(0, 0, false); // the device already knows the guest does not want this one
    expect(h.deliveries).toHaveLength(1);
    const st = h.coalescer.stats;
    expect([st.completions, st.suppressed, st.unwanted, st.interrupts, st.covered]).toEqual([3, 1, 1, 1, 2]);
  });
});

describe('fixed (ethtool rx-frames / rx-usecs)', () => {
  it('interrupts exactly at the maxFrames-th completion', () => {
    const h = harness(new FixedPolicy({ maxFrames: 4, maxUsecs: 0 }));
    for (let i = 1; i <= 9; i++) {
      h.at(i * US);
      h.coalescer.onCompletion(0, 10);
      expect(h.deliveries).toHaveLength(Math.floor(i / 4));
    }
    expect(h.deliveries.map((d) => d.t)).toEqual([4 * US, 8 * US]);
  });

  it('interrupts exactly maxUsecs after the first completion of the batch, not a nanosecond earlier', () => {
    const h = harness(new FixedPolicy({ maxFrames: 100, maxUsecs: 50 }));
    h.at(1000);
    h.coalescer.onCompletion(0, 10);
    h.at(20 * US);
    h.coalescer.onCompletion(0, 10);
    h.at(1000 + 50 * US - 1);
    expect(h.deliveries).toHaveLength(0);
    h.at(1000 + 50 * US);
    expect(h.deliveries).toEqual([{ t: 1000 + 50 * US, vector: 0 }]);
    // The next batch times from its own first completion.
    h.at(100 * US);
    h.coalescer.onCompletion(0, 10);
    h.at(150 * US);
    expect(h.deliveries.map((d) => d.t)).toEqual([1000 + 50 * US, 150 * US]);
    expect(h.coalescer.stats.maxDelayNs).toBe(50 * US);
    expect(h.coalescer.stats.timerFired).toBe(2);
  });

  it('whichever limit comes first wins, and the timer of a batch closed by frames is cancelled', () => {
    const h = harness(new FixedPolicy({ maxFrames: 3, maxUsecs: 100 }));
    h.coalescer.onCompletion(0, 5);
    h.at(10 * US);
    h.coalescer.onCompletion(0, 5);
    h.coalescer.onCompletion(0, 5);
    expect(h.deliveries).toEqual([{ t: 10 * US, vector: 0 }]);
    expect(h.scheduler.nextDeadline()).toBe(Infinity);
    h.at(500 * US);
    expect(h.deliveries).toHaveLength(1);
  });

  it('frames-only delivers when nothing is left in flight (nothing could fill the batch)', () => {
    const h = harness(new FixedPolicy({ maxFrames: 8, maxUsecs: 0 }));
    h.coalescer.onCompletion(0, 2);
    h.coalescer.onCompletion(0, 1);
    expect(h.deliveries).toHaveLength(0);
    h.coalescer.onCompletion(0, 0);
    expect(h.deliveries).toHaveLength(1);
    expect(h.coalescer.stats.covered).toBe(3);
  });

  it('refuses both limits zero, as ethtool does, naming the field', () => {
    try {
      new FixedPolicy({ maxFrames: 0, maxUsecs: 0 });
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(CoalescingError);
      expect((e as CoalescingError).kind).toBe('invalid-config');
    }
    expect(() => new FixedPolicy({ maxFrames: -1, maxUsecs: 5 })).toThrow(/maxFrames/);
    expect(() => new FixedPolicy({ maxFrames: 1, maxUsecs: 2 ** 32 })).toThrow(/maxUsecs/);
  });

  it('a parameter change that meets the condition delivers at once (virtio-net "Notifications When Coalescing Parameters Change")', () => {
    const policy = new FixedPolicy({ maxFrames: 15, maxUsecs: 1000 });
    const h = harness(policy);
    for (let i = 0; i < 10; i++) h.coalescer.onCompletion(0, 20);
    expect(h.deliveries).toHaveLength(0);
    policy.setParams(0, { maxFrames: 8, maxUsecs: 1000 });
    h.coalescer.reevaluate(0);
    expect(h.deliveries).toHaveLength(1);
  });

  it('virtio-net and NVMe parameters map onto it', () => {
    expect(fromVirtioNetCoal(15, 10)).toEqual({ maxFrames: 15, maxUsecs: 10 });
    expect(fromVirtioNetCoal(0, 10)).toEqual(NO_COALESCING);
    expect(fromVirtioNetCoal(15, 0)).toEqual(NO_COALESCING);
    expect(fromNvmeAggregation(7, 3)).toEqual({ maxFrames: 8, maxUsecs: 300 });
    expect(fromNvmeAggregation(0, 3)).toEqual(NO_COALESCING);
    expect(fromNvmeAggregation(7, 0)).toEqual(NO_COALESCING);
    expect(() => fromNvmeAggregation(256, 1)).toThrow(CoalescingError);
  });

  it('NVMe-style aggregation: THR 0-based entries, TIME in 100 µs', () => {
    const h = harness(nvmeAggregationPolicy(3, 2)); // 4 entries or 200 µs
    h.coalescer.onCompletion(0, 9);
    h.coalescer.onCompletion(0, 9);
    h.coalescer.onCompletion(0, 9);
    expect(h.deliveries).toHaveLength(0);
    h.coalescer.onCompletion(0, 9);
    expect(h.deliveries).toHaveLength(1);
    h.at(10 * US);
    h.coalescer.onCompletion(0, 9);
    h.at(210 * US - 1);
    expect(h.deliveries).toHaveLength(1);
    h.at(210 * US);
    expect(h.deliveries).toHaveLength(2);
  });
});

describe('vic', () => {
  /** Runs the first epoch at a high rate so the IOPS gate opens, then clears the record. */
  function warmed(options: ConstructorParameters<typeof VicPolicy>[0] = {}) {
    const policy = new VicPolicy({ epochPeriodUs: 1000, ...options });
    const h = harness(policy);
    for (let t = 0; t <= 1000; t += 10) {
      h.at(t * US);
      h.coalescer.onCompletion(0, 0);
    }
    h.deliveries.length = 0;
    return { policy, ...h };
  }

  it('never delays a completion at CIF below cifThreshold, whatever the rate', () => {
    const { policy, coalescer, deliveries, at, clock } = warmed({ cifThreshold: 8 });
    expect(policy.iops).toBeGreaterThan(50_000);
    let t = clock.now();
    for (let i = 0; i < 2000; i++) {
      t += 1 + (i % 7) * 100;
      at(t);
      const before = deliveries.length;
      const cif = i % 8; // 0..7, all below 8
      coalescer.onCompletion(0, cif);
      expect(deliveries.length).toBe(before + 1);
      expect(deliveries.at(-1)!.t).toBe(t);
    }
  });

  it('never delays below iopsThreshold, even with many commands in flight', () => {
    const policy = new VicPolicy({ iopsThreshold: 2000, epochPeriodUs: 10_000 });
    const h = harness(policy);
    for (let i = 0; i < 50; i++) {
      h.at(i * 1000 * US); // 1000 IOPS
      h.coalescer.onCompletion(0, 64);
      expect(h.deliveries).toHaveLength(i + 1);
    }
    expect(policy.iops).toBeGreaterThan(0);
    expect(policy.iops).toBeLessThan(2000);
  });

  it('delivers one interrupt per skipUp completions at high CIF (R = 1/skipUp)', () => {
    const { policy, coalescer, deliveries, at, clock } = warmed({ cifPerSkipUp: 4 });
    expect(policy.skipUpFor(32)).toBe(9); // ⌊32/4⌋ + 1
    let t = clock.now();
    for (let i = 0; i < 90; i++) {
      at((t += US));
      coalescer.onCompletion(0, 32);
    }
    expect(deliveries).toHaveLength(10);
  });

  it('applies a countUp/skipUp table (R = 2/3 at CIF ≥ 4)', () => {
    const { coalescer, deliveries, at, clock } = warmed({ ratios: [{ minCif: 4, countUp: 2, skipUp: 3 }] });
    let t = clock.now();
    for (let i = 0; i < 30; i++) {
      at((t += US));
      coalescer.onCompletion(0, 10);
    }
    expect(deliveries).toHaveLength(20);
  });

  it('flushes held completions as soon as CIF falls below the threshold, and the backstop bounds the rest', () => {
    const { coalescer, deliveries, at, clock } = warmed({ backstopUs: 300 });
    const t0 = clock.now();
    at(t0 + US);
    coalescer.onCompletion(0, 40);
    at(t0 + 2 * US);
    coalescer.onCompletion(0, 40);
    expect(deliveries).toHaveLength(0);
    at(t0 + 3 * US);
    coalescer.onCompletion(0, 2);
    expect(deliveries).toHaveLength(1);
    expect(coalescer.stats.covered).toBeGreaterThanOrEqual(3);
    // Completions stop: the backstop delivers 300 µs after the held one.
    at(t0 + 10 * US);
    coalescer.onCompletion(0, 40);
    at(t0 + 310 * US - 1);
    expect(deliveries).toHaveLength(1);
    at(t0 + 310 * US);
    expect(deliveries).toHaveLength(2);
  });

  it('default curve: skipUp = ⌊CIF/3⌋ + 1 (each interrupt held for about a third of the commands in flight), capped at maxSkipUp', () => {
    const { policy, coalescer, deliveries, at, clock } = warmed();
    expect(policy.cifPerSkipUp).toBe(3);
    expect([3, 4, 5, 6, 8, 9, 31, 32].map((c) => policy.skipUpFor(c))).toEqual([2, 2, 2, 3, 3, 4, 11, 11]);
    expect(new VicPolicy({ maxSkipUp: 8 }).skipUpFor(200)).toBe(8);
    let t = clock.now();
    for (let i = 0; i < 110; i++) {
      at((t += US));
      coalescer.onCompletion(0, 31);
    }
    expect(deliveries).toHaveLength(10); // R = 1/11
  });

  it('coalesces only when CIF exceeds cifThreshold (US 8,478,924 claim 3: not exceeded → disabled); cifPerSkipUp is independent of it', () => {
    const { policy, coalescer, deliveries, at, clock } = warmed({ cifThreshold: 8, cifPerSkipUp: 2 });
    expect(policy.coalescing(7)).toBe(false);
    expect(policy.coalescing(8)).toBe(false);
    expect(policy.coalescing(9)).toBe(true);
    expect(policy.skipUpFor(9)).toBe(5);
    let t = clock.now();
    for (let i = 0; i < 20; i++) {
      at((t += US));
      coalescer.onCompletion(0, 8);
    }
    expect(deliveries).toHaveLength(20);
    for (let i = 0; i < 20; i++) {
      at((t += US));
      coalescer.onCompletion(0, 9);
    }
    expect(deliveries).toHaveLength(24);
  });

  it('validates its parameters', () => {
    expect(() => new VicPolicy({ cifPerSkipUp: 0 })).toThrow(/cifPerSkipUp/);
    expect(() => new VicPolicy({ cifThreshold: 0 })).toThrow(/cifThreshold/);
    expect(() => new VicPolicy({ ratios: [{ minCif: 8, countUp: 1, skipUp: 2 }, { minCif: 4, countUp: 1, skipUp: 3 }] })).toThrow(/sorted/);
    expect(() => new VicPolicy({ ratios: [{ minCif: 8, countUp: 3, skipUp: 2 }] })).toThrow(/countUp/);
  });

  /** One 1 ms epoch of completions 10 µs apart with 32 in flight: IOPS ≈ 100 000, so Little's law gives a mean service of ≈ 320 µs. */
  function measured(options: ConstructorParameters<typeof VicPolicy>[0] = {}) {
    const policy = new VicPolicy({ epochPeriodUs: 1000, ...options });
    const h = harness(policy);
    for (let t = 0; t <= 1000; t += 10) {
      h.at(t * US);
      h.coalescer.onCompletion(0, 32);
    }
    h.coalescer.flush(); // whatever was held is delivered (idling instead would end the next epoch at a low rate)
    h.deliveries.length = 0;
    return { policy, ...h };
  }

  /** A device completing a batch all at once: one completion per µs, CIF falling from `from` to `to`. */
  function cluster(h: ReturnType<typeof measured>, from: number, to: number): number {
    let t = h.clock.now();
    for (let cif = from; cif >= to; cif--) {
      h.at((t += US));
      h.coalescer.onCompletion(0, cif);
    }
    return t;
  }

  it("estimates the mean service time each epoch by Little's law (mean CIF / IOPS)", () => {
    const { policy } = measured();
    expect(policy.iops).toBeCloseTo(101_000, -3);
    expect(policy.serviceNs / 1000).toBeCloseTo(32 / 101_000 * 1e6, 0);
    // The pace of a cycle: skipUp completions at CIF / service per second.
    expect(policy.paceNsFor(31)).toBeCloseTo((10 * policy.serviceNs) / 31, 6); // (skipUp 11 − 1) intervals of service / CIF
    expect(new VicPolicy({ paceByService: false }).paceNsFor(31)).toBe(0);
  });

  it('paces ratio deliveries: completions microseconds apart are held for the time CIF implies, not interrupted every skipUp', () => {
    const paced = measured();
    const pace = paced.policy.paceNsFor(31);
    expect(pace).toBeGreaterThan(100 * US); // ≈ 10 · 317 µs / 31
    const covered0 = paced.coalescer.stats.covered;
    cluster(paced, 31, 5); // 27 completions in 27 µs, all above the CIF threshold
    expect(paced.deliveries).toHaveLength(0);
    cluster(paced, 4, 0); // the tail, at or below the threshold: each interrupts at once, the first covering all held
    expect(paced.deliveries).toHaveLength(5);
    expect(paced.coalescer.stats.covered - covered0).toBe(32);
    // Counting alone interrupts several times inside the same 27 µs.
    const counted = measured({ paceByService: false });
    cluster(counted, 31, 5);
    expect(counted.deliveries.length).toBeGreaterThanOrEqual(4);
    // When completions stop, the pacing timer delivers at the first held completion + the pace at the last CIF seen, before the backstop.
    const lone = measured();
    const first = lone.clock.now() + US;
    cluster(lone, 31, 20);
    const pace20 = lone.policy.paceNsFor(20);
    expect(pace20).toBeGreaterThan(12 * US);
    lone.at(first + pace20 - 1);
    expect(lone.deliveries).toHaveLength(0);
    lone.at(first + pace20 + 1);
    expect(lone.deliveries).toHaveLength(1);
    expect(Math.abs(lone.deliveries[0]!.t - (first + pace20))).toBeLessThanOrEqual(1);
    expect(lone.coalescer.stats.timerFired).toBe(1);
  });

  it('does not hold completions that come at the rate CIF implies (pacing changes nothing there)', () => {
    const { policy, coalescer, deliveries, at, clock } = measured();
    // 31 in flight, service ≈ 317 µs: a completion every ≈ 10.2 µs; these come 11 µs apart (within the epoch).
    expect(policy.serviceNs / 31).toBeLessThan(11 * US);
    let t = clock.now();
    for (let i = 0; i < 55; i++) {
      at((t += 11 * US));
      coalescer.onCompletion(0, 31);
      if ((i + 1) % 11 === 0) expect(deliveries.at(-1)?.t).toBe(t); // R = 1/11, each on the 11th completion
    }
    expect(deliveries).toHaveLength(5);
    expect(coalescer.stats.timerFired).toBe(0);
  });

  it('starts a new cycle after a delivery it did not ask for (backstop timer), so covered completions are not counted twice', () => {
    const { coalescer, deliveries, at, clock } = warmed({ backstopUs: 300, paceByService: false });
    let t = clock.now();
    for (let i = 0; i < 5; i++) {
      at((t += US));
      coalescer.onCompletion(0, 40); // skipUp 14
    }
    at((t += 400 * US)); // the backstop delivers the 5
    expect(deliveries).toHaveLength(1);
    expect(coalescer.stats.timerFired).toBe(1);
    for (let i = 0; i < 13; i++) {
      at((t += US));
      coalescer.onCompletion(0, 40);
    }
    expect(deliveries).toHaveLength(1); // 13 of a fresh cycle of 14: still held
    at(t + US);
    coalescer.onCompletion(0, 40);
    expect(deliveries).toHaveLength(2);
  });
});

describe('adaptive', () => {
  /** Feeds completions at `ratePerSec` with `inFlight` outstanding for `n` interrupts' worth. */
  function drive(h: ReturnType<typeof harness>, ratePerSec: number, completions: number): void {
    const gap = 1e9 / ratePerSec;
    for (let i = 0; i < completions; i++) {
      h.at(h.clock.now() + gap);
      h.coalescer.onCompletion(0, 16);
    }
  }

  it('steps up under a rising rate and back down under a falling one', () => {
    const policy = new AdaptivePolicy({ nEvents: 16 });
    const h = harness(policy);
    const seen: number[] = [];
    for (const rate of [10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 640_000]) {
      drive(h, rate, 600);
      seen.push(policy.profileOf(0));
    }
    const top = policy.profileOf(0);
    expect(top).toBe(policy.profiles.length - 1);
    for (let i = 1; i < seen.length; i++) expect(seen[i]).toBeGreaterThanOrEqual(seen[i - 1]!);
    const down: number[] = [];
    for (const rate of [320_000, 160_000, 80_000, 40_000, 20_000, 10_000, 5_000]) {
      drive(h, rate, 600);
      down.push(policy.profileOf(0));
    }
    for (let i = 1; i < down.length; i++) expect(down[i]).toBeLessThanOrEqual(down[i - 1]!);
    expect(policy.profileOf(0)).toBe(0);
    expect(policy.stepsUp).toBeGreaterThanOrEqual(4);
    expect(policy.stepsDown).toBeGreaterThanOrEqual(4);
  });

  it('stays put while the rate changes by less than the significance threshold', () => {
    const policy = new AdaptivePolicy({ nEvents: 16, significancePercent: 10, startProfile: 2 });
    const h = harness(policy);
    for (const rate of [100_000, 105_000, 96_000, 104_000, 100_000]) drive(h, rate, 400);
    expect(policy.profileOf(0)).toBe(2);
    expect(policy.stepsUp + policy.stepsDown).toBe(0);
  });

  it('uses the selected profile as fixed limits, and delivers at once when nothing is in flight', () => {
    const policy = new AdaptivePolicy({ profiles: [{ maxUsecs: 0, maxFrames: 1 }, { maxUsecs: 20, maxFrames: 4 }], startProfile: 1 });
    const h = harness(policy);
    h.coalescer.onCompletion(0, 5);
    h.at(20 * US);
    expect(h.deliveries).toHaveLength(1);
    for (let i = 0; i < 4; i++) h.coalescer.onCompletion(0, 5);
    expect(h.deliveries).toHaveLength(2);
    h.coalescer.onCompletion(0, 0);
    expect(h.deliveries).toHaveLength(3);
  });

  it('at a steady rate, climbs while batches are shared and commands in flight cover the next frame limit', () => {
    // 500 000 completions/s with 31 in flight: profile 1 (8 µs/8) batches ~5 per interrupt, and 31 in flight
    // cover profile 2's 16 frames but not profile 3's 32.
    const policy = new AdaptivePolicy({ nEvents: 16, startProfile: 1 });
    const h = harness(policy);
    const gap = 2 * US;
    for (let i = 0; i < 3000; i++) {
      h.at(h.clock.now() + gap);
      h.coalescer.onCompletion(0, 31);
    }
    expect(policy.profileOf(0)).toBe(2);
    expect(policy.stepsDown).toBe(0);
    // The same steady rate with 64 in flight climbs on to the top profile (64 µs/64).
    for (let i = 0; i < 6000; i++) {
      h.at(h.clock.now() + gap);
      h.coalescer.onCompletion(0, 64);
    }
    expect(policy.profileOf(0)).toBe(policy.profiles.length - 1);
  });

  it('does not climb at a steady rate when interrupts are not shared, or when climbWhenSteady is off', () => {
    // 20 000/s with 31 in flight: profile 1 holds 8 µs, catching ~1.2 completions per interrupt.
    const slow = new AdaptivePolicy({ nEvents: 16, startProfile: 1 });
    const h = harness(slow);
    for (let i = 0; i < 2000; i++) {
      h.at(h.clock.now() + 50 * US);
      h.coalescer.onCompletion(0, 31);
    }
    expect(slow.profileOf(0)).toBe(1);
    const off = new AdaptivePolicy({ nEvents: 16, startProfile: 1, climbWhenSteady: false });
    const h2 = harness(off);
    for (let i = 0; i < 3000; i++) {
      h2.at(h2.clock.now() + 2 * US);
      h2.coalescer.onCompletion(0, 31);
    }
    expect(off.profileOf(0)).toBe(1);
  });

  it('in a closed loop at QD32 settles on the same profile whatever the seed', () => {
    const ends: number[] = [];
    for (let seed = 1; seed <= 5; seed++) {
      const rng = new Rng(seed);
      const n = 20_000;
      const policy = new AdaptivePolicy();
      const r = simulate({
        workload: { arrivalsNs: new Float64Array(n), serviceNs: lognormalService(rng, n, 60, 0.5) },
        queueDepth: 32,
        parallelism: 32,
        policy,
        interruptCostNs: 2000,
        perCompletionCostNs: 500,
        warmupNs: 10_000_000, // past the start-up transient
      });
      expect(r.interruptsPerIo).toBeLessThan(0.2);
      ends.push(policy.profileOf(0));
    }
    expect(new Set(ends).size).toBe(1);
    expect(ends[0]).toBeGreaterThanOrEqual(2);
  });

  it('refuses a profile whose delay would be unbounded', () => {
    expect(() => new AdaptivePolicy({ profiles: [{ maxUsecs: 0, maxFrames: 8 }] })).toThrow(/unbounded/);
    expect(() => new AdaptivePolicy({ profiles: [] })).toThrow(CoalescingError);
  });
});

describe('coalescer', () => {
  it('maps queues to vectors; NO_VECTOR queues get no interrupt (VirtIO 1.2 §4.1.5.3)', () => {
    const vectors = new QueueVectors(3, 4);
    expect(vectors.set(0, 2)).toBe(2);
    expect(vectors.set(1, 9)).toBe(0xffff); // out of the table: the driver reads back NO_VECTOR
    const h = harness(new NonePolicy(), 3, { vectors });
    h.coalescer.onCompletion(0, 0);
    h.coalescer.onCompletion(1, 0);
    h.coalescer.onCompletion(2, 0); // never mapped
    expect(h.deliveries).toEqual([{ t: 0, vector: 2 }]);
    expect(h.coalescer.stats.noVector).toBe(2);
  });

  it('an interrupt covers pending batches of the queues that share its vector', () => {
    const vectors = new QueueVectors(2, 1);
    vectors.set(0, 0);
    vectors.set(1, 0);
    const h = harness(new FixedPolicy({ maxFrames: 2, maxUsecs: 100 }), 2, { vectors });
    h.coalescer.onCompletion(1, 5);
    h.coalescer.onCompletion(0, 5);
    h.coalescer.onCompletion(0, 5);
    expect(h.deliveries).toHaveLength(1);
    expect(h.coalescer.pendingOf(1)).toBe(0);
    expect(h.coalescer.stats.sharedCovered).toBe(1);
    h.at(1000 * US);
    expect(h.deliveries).toHaveLength(1); // queue 1's timer was cancelled
  });

  it('rejects a bad queue index with a typed error, and reset drops pending work', () => {
    const h = harness(new FixedPolicy({ maxFrames: 4, maxUsecs: 10 }), 2);
    expect(() => h.coalescer.onCompletion(2, 0)).toThrow(CoalescingError);
    expect(() => h.coalescer.onCompletion(0.5, 0)).toThrow(/queue/);
    h.coalescer.onCompletion(0, 3);
    h.coalescer.reset();
    h.at(100 * US);
    expect(h.deliveries).toHaveLength(0);
  });

  it('per-queue policies and switching a policy re-evaluates the pending batch', () => {
    const h = harness([new FixedPolicy({ maxFrames: 10, maxUsecs: 100 }), new NonePolicy()], 2);
    h.coalescer.onCompletion(1, 0);
    h.coalescer.onCompletion(0, 3);
    expect(h.deliveries).toEqual([{ t: 0, vector: 1 }]);
    h.coalescer.setPolicy(0, new NonePolicy());
    expect(h.deliveries).toEqual([
      { t: 0, vector: 1 },
      { t: 0, vector: 0 },
    ]);
  });

  it('statistics: ratio, mean delay, histogram of the oldest completion per interrupt', () => {
    const h = harness(new FixedPolicy({ maxFrames: 4, maxUsecs: 1000 }));
    for (let i = 0; i < 8; i++) {
      h.at(i * 10 * US);
      h.coalescer.onCompletion(0, 8);
    }
    const st = h.coalescer.stats;
    expect(st.interrupts).toBe(2);
    expect(st.coalescingRatio).toBe(4);
    expect(st.maxDelayNs).toBe(30 * US);
    expect(st.meanDelayNs).toBe(15 * US); // delays 30, 20, 10, 0 µs per batch
    const json = st.toJSON() as Record<string, { count: number }[]>;
    expect(json['oldestDelayHistogram']).toEqual([{ upperUs: 32, count: 2 }]);
    // Per completion: delays 0, 10, 20, 30 µs twice → buckets <1, [8,16), [16,32) ×2.
    expect(json['delayHistogram']).toEqual([
      { upperUs: 1, count: 2 },
      { upperUs: 16, count: 2 },
      { upperUs: 32, count: 4 },
    ]);
    expect(json['batchSizeHistogram']).toEqual([{ atLeast: 4, count: 2 }]);
  });

  it('per-completion histogram past the stored timestamps is bounded by the last stored one', () => {
    const h = harness(new FixedPolicy({ maxFrames: 10, maxUsecs: 1000 }), 1, { timestampsPerQueue: 2 });
    for (let i = 0; i < 10; i++) {
      h.at(i * 100 * US);
      h.coalescer.onCompletion(0, 20);
    }
    const hist = h.coalescer.stats.delayHistogram;
    // Delivered at 900 µs: stored completions at 0 and 100 µs waited 900 and 800 µs ([512, 1024)); the other 8 counted there too.
    expect(hist[10]).toBe(10);
    expect(h.coalescer.stats.covered).toBe(10);
  });
});

describe('net_dim (Linux lib/dim hill-climbing)', () => {
  it('walks the profile table as net_dim decides: exit parking, edge, climb, turn', () => {
    const p = new NetDimPolicy();
    harness(p);
    const step = (ppms: number): [number, string] => {
      p.decide(0, 0, ppms, 10);
      return [p.profileOf(0), p.stateOf(0)];
    };
    expect([p.profileOf(0), p.stateOf(0)]).toEqual([1, 'parking-on-top']);
    expect(step(100)).toEqual([0, 'going-left']); // first measurement is "better" than nothing: leave the park towards 0
    expect(step(120)).toEqual([0, 'parking-on-top']); // better, but at the left edge: park
    expect(step(150)).toEqual([1, 'going-right']); // a significant change leaves the park, rightwards from 0
    expect(step(200)).toEqual([2, 'going-right']); // better: keep going
    expect(step(150)).toEqual([1, 'going-left']); // worse: turn
    expect(step(152)).toEqual([2, 'going-right']); // not better: turn again
    expect(step(300)).toEqual([3, 'going-right']);
  });

  it('parks on top after going both ways around a profile', () => {
    const p = new NetDimPolicy({ startProfile: 0 });
    harness(p);
    p.decide(0, 0, 100, 10); // → right, ix 1
    p.decide(0, 0, 200, 10); // better → ix 2
    p.decide(0, 0, 100, 10); // worse → turn left, ix 1
    p.decide(0, 0, 50, 10); // worse → turn right, ix 2 (steps: right 1)
    p.decide(0, 0, 20, 10); // worse → turn left, ix 1
    p.decide(0, 0, 30, 10); // better → left, ix 0 (steps left 2)
    p.decide(0, 0, 10, 10); // worse → turn right: stepsLeft 2 > 1, stepsRight 0 → step to 1
    expect(p.stateOf(0)).toBe('going-right');
    p.decide(0, 0, 5, 10); // worse → turn left; stepsRight 1, stepsLeft 0 → step
    expect(p.profileOf(0)).toBe(0);
  });

  it('gets tired after 2×profiles steps without settling, rests, then leaves the park', () => {
    const p = new NetDimPolicy({ startProfile: 2 });
    harness(p);
    let rate = 1000;
    p.decide(0, 0, rate, 10);
    for (let i = 0; i < 10; i++) p.decide(0, 0, (rate *= 0.8), 10); // always worse: turn and step each time
    expect(p.stateOf(0)).toBe('parking-tired');
    const ix = p.profileOf(0);
    for (let i = 0; i < 9; i++) p.decide(0, 0, (rate *= 0.8), 10);
    expect(p.stateOf(0)).toBe('parking-tired');
    expect(p.profileOf(0)).toBe(ix);
    p.decide(0, 0, rate, 10);
    expect(p.stateOf(0)).not.toBe('parking-tired');
  });

  it('delivers at once when nothing else is in flight, whatever the profile (flushWhenIdle)', () => {
    const p = new NetDimPolicy({ profiles: [{ maxUsecs: 0, maxFrames: 1 }, { maxUsecs: 50, maxFrames: 16 }], startProfile: 1 });
    const h = harness(p);
    h.coalescer.onCompletion(0, 3);
    expect(h.deliveries).toHaveLength(0); // moderated: others are in flight
    h.at(5 * US);
    h.coalescer.onCompletion(0, 0); // the last one: no later completion can share the interrupt
    expect(h.deliveries).toEqual([{ t: 5 * US, vector: 0 }]);
    expect(h.coalescer.stats.covered).toBe(2);
    const off = new NetDimPolicy({ profiles: [{ maxUsecs: 0, maxFrames: 1 }, { maxUsecs: 50, maxFrames: 16 }], startProfile: 1, flushWhenIdle: false });
    const h2 = harness(off);
    h2.coalescer.onCompletion(0, 0);
    expect(h2.deliveries).toHaveLength(0);
    h2.at(50 * US);
    expect(h2.deliveries).toHaveLength(1); // Linux's behaviour: the profile's time limit
  });

  it('adds no delay at queue depth 1, on bursty arrivals too', () => {
    const rng = new Rng(3);
    const n = 5000;
    const workload = { arrivalsNs: burstyArrivals(rng, n, 8000, 32, 4), serviceNs: lognormalService(rng, n, 60, 0.5) };
    const r = simulate({ workload, queueDepth: 1, parallelism: 32, policy: new NetDimPolicy({ profiles: BLOCK_PROFILES }), interruptCostNs: 2000, perCompletionCostNs: 500 });
    const none = simulate({ workload, queueDepth: 1, parallelism: 32, policy: new NonePolicy(), interruptCostNs: 2000, perCompletionCostNs: 500 });
    expect(r.addedMaxUs).toBe(0);
    expect(r.latencyP99Us).toBe(none.latencyP99Us);
  });

  it('weighs bytes first when the device reports them', () => {
    const p = new NetDimPolicy({ startProfile: 0, nEvents: 2, profiles: [{ maxUsecs: 0, maxFrames: 1 }, { maxUsecs: 10, maxFrames: 2 }] });
    const h = harness(p);
    h.coalescer.onCompletion(0, 3, true, 1500);
    h.at(US);
    h.coalescer.onCompletion(0, 3, true, 1500); // 2 interrupts: a measurement with bytes
    expect([p.profileOf(0), p.stateOf(0)]).toEqual([1, 'going-right']); // more than nothing: leave the park rightwards
    // 3000 bytes in 1 µs = 3e6 bytes/ms. Now 17 % more bytes/ms with far fewer packets/ms: bytes decide, it is better.
    p.decide(0, 3.5e6, 1, 1);
    expect([p.profileOf(0), p.stateOf(0)]).toEqual([1, 'parking-on-top']); // better, at the right edge: park
    // Bytes within 10 %: packets decide; 1 → 0.5 per ms is worse, which leaves the park.
    p.decide(0, 3.4e6, 0.5, 1);
    expect([p.profileOf(0), p.stateOf(0)]).toEqual([0, 'going-left']);
  });
});
