import { FakeClock, FakeScheduler, InterruptCoalescer, type CoalescerOptions, type CoalescingPolicy } from '../src/index.js';

export interface Delivery {
  t: number;
  vector: number;
}

/** A coalescer on a fake clock that records every delivery. */
export function harness(policy: CoalescingPolicy | CoalescingPolicy[], queues = 1, extra: Partial<CoalescerOptions> = {}) {
  const clock = new FakeClock();
  const scheduler = new FakeScheduler(clock);
  const deliveries: Delivery[] = [];
  const coalescer = new InterruptCoalescer({
    queues,
    clock,
    scheduler,
    policy,
    deliver: (vector) => deliveries.push({ t: clock.now(), vector }),
    ...extra,
  });
  const at = (ns: number): void => {
    scheduler.advanceTo(ns);
  };
  return { clock, scheduler, coalescer, deliveries, at };
}

export const US = 1000;
