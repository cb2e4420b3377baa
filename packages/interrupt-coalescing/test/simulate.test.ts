import { describe, expect, it } from 'vitest';
import {
  CoalescingError,
  FixedPolicy,
  NonePolicy,
  Rng,
  VicPolicy,
  burstyArrivals,
  formatTrace,
  lognormalService,
  parseTrace,
  poissonArrivals,
  simulate,
} from '../src/index.js';

describe('trace format (JSON Lines)', () => {
  it('reads objects and bare timestamps, relative to the first arrival', () => {
    const t = parseTrace('{"format":"ioplane-io-trace","version":1}\n{"t_us":100,"service_us":80}\n\n100.5\n{"t_us":250}\n');
    expect(Array.from(t.arrivalsNs)).toEqual([0, 500, 150_000]);
    expect(t.serviceNs[0]).toBe(80_000);
    expect(Number.isNaN(t.serviceNs[1]!)).toBe(true);
  });

  it('round-trips through formatTrace', () => {
    const rng = new Rng(5);
    const trace = { arrivalsNs: poissonArrivals(rng, 50, 1e5), serviceNs: lognormalService(rng, 50, 60, 0.5) };
    const back = parseTrace(formatTrace(trace));
    for (let i = 0; i < 50; i++) {
      expect(back.arrivalsNs[i]).toBeCloseTo(trace.arrivalsNs[i]!, 6);
      expect(back.serviceNs[i]).toBeCloseTo(trace.serviceNs[i]!, 6);
    }
  });

  it.each([
    ['{"t_us":5}\n{"t_us":4}', 2, /before/],
    ['{"t_us":1}\nnot json', 2, /JSON/],
    ['{"t_us":-1}', 1, /t_us/],
    ['{"t_us":1,"service_us":0}', 1, /service_us/],
    ['[1]', 1, /expected/],
    ['{"t_us":1}\n{"format":"ioplane-io-trace","version":1}', 2, /header/],
    ['{"format":"other","version":1}', 1, /format/],
    [`{"t_us":1,"x":"${'a'.repeat(5000)}"}`, 1, /longer/],
  ])('rejects %j at line %i', (text, line, msg) => {
    try {
      parseTrace(text);
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(CoalescingError);
      expect((e as CoalescingError).kind).toBe('invalid-trace');
      expect((e as CoalescingError).line).toBe(line);
      expect((e as Error).message).toMatch(msg);
    }
  });

  it('rejects an empty trace', () => {
    expect(() => parseTrace('\n\n')).toThrow(/no I\/O/);
  });
});

describe('simulator', () => {
  const rng = new Rng(42);
  const n = 4000;
  const workload = { arrivalsNs: poissonArrivals(rng, n, 200_000), serviceNs: lognormalService(rng, n, 60, 0.5) };

  it('none: one interrupt per I/O and no added delay', () => {
    const r = simulate({ workload, queueDepth: 32, parallelism: 16, policy: new NonePolicy() });
    expect(r.ios).toBe(n);
    expect(r.interruptsPerIo).toBe(1);
    expect(r.addedP99Us).toBe(0);
    expect(r.latencyP50Us).toBeGreaterThan(30);
  });

  it('fixed: added delay never exceeds rx-usecs, and is deterministic', () => {
    const a = simulate({ workload, queueDepth: 32, parallelism: 16, policy: new FixedPolicy({ maxFrames: 8, maxUsecs: 40 }) });
    const b = simulate({ workload, queueDepth: 32, parallelism: 16, policy: new FixedPolicy({ maxFrames: 8, maxUsecs: 40 }) });
    expect(a).toEqual(b);
    expect(a.addedMaxUs).toBeLessThanOrEqual(40);
    expect(a.interruptsPerIo).toBeLessThan(0.5);
  });

  it('vic at QD1 is exactly none; at QD32 it cuts interrupts', () => {
    const none1 = simulate({ workload, queueDepth: 1, parallelism: 16, policy: new NonePolicy() });
    const vic1 = simulate({ workload, queueDepth: 1, parallelism: 16, policy: new VicPolicy({ epochPeriodUs: 1000 }) });
    expect(vic1).toEqual(none1);
    const vic32 = simulate({ workload, queueDepth: 32, parallelism: 32, policy: new VicPolicy({ epochPeriodUs: 1000 }) });
    expect(vic32.interruptsPerIo).toBeLessThan(0.5);
  });

  it('a guest CPU cost per interrupt makes coalescing raise throughput', () => {
    const closed = { arrivalsNs: new Float64Array(n), serviceNs: workload.serviceNs };
    const opts = { workload: closed, queueDepth: 64, parallelism: 64, interruptCostNs: 4000, perCompletionCostNs: 500 };
    const none = simulate({ ...opts, policy: new NonePolicy() });
    const fixed = simulate({ ...opts, policy: new FixedPolicy({ maxFrames: 16, maxUsecs: 30 }) });
    expect(fixed.iops).toBeGreaterThan(none.iops * 1.3);
  });

  it('a trace file replays to the same result as the workload it was written from', () => {
    const r1 = simulate({ workload, queueDepth: 4, parallelism: 8, policy: new FixedPolicy({ maxFrames: 4, maxUsecs: 20 }) });
    const r2 = simulate({ workload: parseTrace(formatTrace(workload)), queueDepth: 4, parallelism: 8, policy: new FixedPolicy({ maxFrames: 4, maxUsecs: 20 }) });
    expect(r2.interrupts).toBe(r1.interrupts);
    expect(r2.latencyP99Us).toBeCloseTo(r1.latencyP99Us, 3);
  });

  it('draws missing service times from the fallback, and refuses without one', () => {
    const t = parseTrace('0\n10\n20\n');
    const fb = new Rng(1);
    const r = simulate({ workload: t, queueDepth: 1, parallelism: 1, policy: new NonePolicy(), fallbackService: () => fb.lognormal(50_000, 0.3) });
    expect(r.ios).toBe(3);
    expect(() => simulate({ workload: t, queueDepth: 1, parallelism: 1, policy: new NonePolicy() })).toThrow(/fallbackService/);
  });

  it('bursty arrivals keep the mean rate', () => {
    const a = burstyArrivals(new Rng(9), 200_000, 100_000, 32, 4);
    const rate = (a.length - 1) / (a[a.length - 1]! / 1e9);
    expect(rate).toBeGreaterThan(90_000);
    expect(rate).toBeLessThan(110_000);
  });
});
