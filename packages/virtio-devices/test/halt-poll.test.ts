import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HaltPollGovernor, VirtioError } from '../src/index.js';

describe('HaltPollGovernor', () => {
  it('starts with no window; idle periods polling missed but under maxUs grow it 50 → 100 → 200, and it stays at 200', () => {
    const g = new HaltPollGovernor();
    expect(g.windowUs).toBe(0);
    const seen: number[] = [];
    for (let i = 0; i < 4; i++) {
      g.idleEnded(Math.min(g.windowUs + 10, 200), false);
      seen.push(g.windowUs);
    }
    expect(seen).toEqual([50, 100, 200, 200]);
    expect(g.stats).toEqual({ idle: 4, caught: 0, slept: 4 });
  });

  it('an idle period caught while polling leaves the window as it was', () => {
    const g = new HaltPollGovernor();
    g.idleEnded(30, false);
    g.idleEnded(20, true);
    g.idleEnded(49, true);
    expect(g.windowUs).toBe(50);
    expect(g.stats).toEqual({ idle: 3, caught: 2, slept: 1 });
  });

  it('an idle period longer than maxUs shrinks the window by `shrink`, to none once under growStartUs; shrink 0 drops it at once', () => {
    const g = new HaltPollGovernor();
    for (let i = 0; i < 3; i++) g.idleEnded(g.windowUs + 1, false);
    expect(g.windowUs).toBe(200);
    g.idleEnded(10_000, false);
    expect(g.windowUs).toBe(100);
    g.idleEnded(10_000, false);
    expect(g.windowUs).toBe(50);
    g.idleEnded(10_000, false);
    expect(g.windowUs).toBe(0);
    g.idleEnded(10_000, false);
    expect(g.windowUs).toBe(0);
    const drop = new HaltPollGovernor({ shrink: 0 });
    for (let i = 0; i < 3; i++) drop.idleEnded(drop.windowUs + 1, false);
    drop.idleEnded(201, false);
    expect(drop.windowUs).toBe(0);
  });

  it('grow 0 never polls; maxUs 0 never polls', () => {
    for (const o of [{ grow: 0 }, { maxUs: 0 }]) {
      const g = new HaltPollGovernor(o);
      for (let i = 0; i < 5; i++) g.idleEnded(0.5, false);
      expect(g.windowUs).toBe(0);
    }
  });

  it('options outside their range are refused, naming the option', () => {
    for (const [o, name] of [
      [{ maxUs: -1 }, 'maxUs'],
      [{ maxUs: 2e6 }, 'maxUs'],
      [{ growStartUs: Number.NaN }, 'growStartUs'],
      [{ grow: -2 }, 'grow'],
      [{ shrink: 1e5 }, 'shrink'],
    ] as const) {
      let err: unknown;
      try {
        new HaltPollGovernor(o);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(VirtioError);
      expect((err as VirtioError).kind).toBe('invalid-argument');
      expect((err as Error).message).toMatch(new RegExp(`halt polling ${name} `));
    }
  });

  it('property: against the rule of Linux (KVM halt polling, the haltpoll governor) written out step by step', () => {
    const opts = fc.record({
      maxUs: fc.integer({ min: 0, max: 1000 }),
      growStartUs: fc.integer({ min: 0, max: 400 }),
      grow: fc.integer({ min: 0, max: 4 }),
      shrink: fc.integer({ min: 0, max: 4 }),
    });
    const idles = fc.array(fc.record({ us: fc.oneof(fc.integer({ min: 0, max: 400 }), fc.integer({ min: 0, max: 5000 })), poll: fc.boolean() }), { maxLength: 60 });
    fc.assert(
      fc.property(opts, idles, (o, seq) => {
        const g = new HaltPollGovernor(o);
        // The reference: an idle period is caught when the interrupt came within the window and polling was on.
        let window = 0;
        let caught = 0;
        for (const { us, poll } of seq) {
          const wasCaught = poll && us <= window && window > 0;
          g.idleEnded(wasCaught ? us : Math.max(us, g.windowUs), wasCaught);
          const idle = wasCaught ? us : Math.max(us, window);
          if (wasCaught) caught++;
          else if (idle > o.maxUs) {
            window = o.shrink === 0 ? 0 : window / o.shrink;
            if (window < o.growStartUs) window = 0;
          } else if (idle > window && o.grow !== 0) {
            let w = window * o.grow;
            if (w < o.growStartUs) w = o.growStartUs;
            if (w > o.maxUs) w = o.maxUs;
            window = w;
          }
          expect(g.windowUs).toBe(window);
          // Never longer than maxUs; none, or at least where a grow starts (unless maxUs is below it).
          expect(g.windowUs).toBeLessThanOrEqual(o.maxUs);
          if (g.windowUs !== 0) expect(g.windowUs).toBeGreaterThanOrEqual(Math.min(o.growStartUs, o.maxUs));
        }
        expect(g.stats).toEqual({ idle: seq.length, caught, slept: seq.length - caught });
      }),
    );
  });
});
