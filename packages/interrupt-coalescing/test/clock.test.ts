import { describe, expect, it } from 'vitest';
import { CoalescingError, FakeClock, FakeScheduler, RealScheduler, monotonicClock } from '../src/index.js';

describe('FakeClock', () => {
  it('moves forward only', () => {
    const c = new FakeClock(5);
    c.advance(10);
    expect(c.now()).toBe(15);
    expect(() => c.set(14)).toThrow(CoalescingError);
    try {
      c.set(3);
    } catch (e) {
      expect((e as CoalescingError).kind).toBe('clock-backwards');
    }
    expect(() => new FakeClock(-1)).toThrow(CoalescingError);
  });
});

describe('FakeScheduler', () => {
  it('fires due timers in deadline order, moving the clock to each deadline', () => {
    const clock = new FakeClock();
    const s = new FakeScheduler(clock);
    const log: string[] = [];
    const a = s.createTimer(() => log.push(`a@${clock.now()}`));
    const b = s.createTimer(() => log.push(`b@${clock.now()}`));
    const c = s.createTimer(() => log.push(`c@${clock.now()}`));
    a.arm(300);
    b.arm(100);
    c.arm(100); // same deadline as b, armed later: fires after b
    expect(s.nextDeadline()).toBe(100);
    expect(s.advanceTo(250)).toBe(2);
    expect(log).toEqual(['b@100', 'c@100']);
    expect(clock.now()).toBe(250);
    expect(a.armed).toBe(true);
    a.cancel();
    expect(s.advanceTo(1000)).toBe(0);
    expect(s.nextDeadline()).toBe(Infinity);
  });

  it('re-arming replaces the deadline; a callback may re-arm', () => {
    const clock = new FakeClock();
    const s = new FakeScheduler(clock);
    let n = 0;
    const t = s.createTimer(() => {
      if (++n < 3) t.arm(clock.now() + 10);
    });
    t.arm(50);
    t.arm(20);
    s.runUntilIdle();
    expect(n).toBe(3);
    expect(clock.now()).toBe(40);
  });

  it('bounds a timer that re-arms in the past forever', () => {
    const clock = new FakeClock();
    const s = new FakeScheduler(clock, 100);
    const t = s.createTimer(() => t.arm(0));
    t.arm(0);
    expect(() => s.advanceTo(1)).toThrow(/more than 100/);
  });
});

describe('RealScheduler', () => {
  it('fires a sub-millisecond timer and a longer one, not before their deadlines', async () => {
    const sched = new RealScheduler();
    const fired: number[] = [];
    const deadlines: number[] = [];
    await new Promise<void>((resolve, reject) => {
      const guard = setTimeout(() => reject(new Error('timers did not fire within 2 s')), 2000);
      let left = 2;
      for (const waitNs of [200_000, 5_000_000]) {
        const deadline = monotonicClock.now() + waitNs;
        deadlines.push(deadline);
        const t = sched.createTimer(() => {
          fired.push(monotonicClock.now());
          if (--left === 0) {
            clearTimeout(guard);
            resolve();
          }
        });
        t.arm(deadline);
      }
    });
    expect(fired[0]).toBeGreaterThanOrEqual(deadlines[0]!);
    expect(fired[1]).toBeGreaterThanOrEqual(deadlines[1]!);
  });

  it('a cancelled timer never fires', async () => {
    const sched = new RealScheduler();
    let fired = false;
    const t = sched.createTimer(() => (fired = true));
    t.arm(monotonicClock.now() + 1_000_000);
    t.cancel();
    const t2 = sched.createTimer(() => (fired = true));
    t2.arm(monotonicClock.now() + 3_000_000);
    t2.arm(Infinity); // re-arming to Infinity disarms
    await new Promise((r) => setTimeout(r, 20));
    expect(fired).toBe(false);
    expect(t.armed).toBe(false);
  });
});
