import fc from 'fast-check';
import { expect } from 'vitest';
import { BufferList, type DeviceQueue, type DriverQueue, type UsedBuffer } from '../src/index.js';

/**
 * Moves a fresh split ring to avail and used index `target` with full
 * add/pop/complete/poll cycles: neither side can start elsewhere, and the
 * 16-bit wrap (`& 0xffff`, `vring_need_event`, used_event's `>= 0x8000`
 * test) is only reached after 65,536 buffers.
 */
export function warmUp(drv: DriverQueue<number>, dev: DeviceQueue, target: number, bufferAddr = 0x80000): void {
  const list = new BufferList().push(bufferAddr, 8, true);
  const c = dev.createChain();
  const out: UsedBuffer<number> = { token: undefined, len: 0 };
  for (let at = 0; at < target; ) {
    let k = 0;
    while (at + k < target && drv.add(list, -1)) k++;
    // Each publish asks about a kick / an interrupt, as a real driver and device do:
    // vring_need_event only compares indices less than 2^15 apart.
    drv.publish();
    drv.needsNotify();
    while (dev.pop(c)) dev.pushUsed(c, 0);
    dev.publishUsed();
    dev.needsInterrupt();
    while (drv.pollUsed(out));
    at += k;
  }
  expect(dev.state()).toEqual({ nextAvail: target, nextUsed: target });
}


/** Ring features a split-ring model run takes (packed is fixed to false). */
export interface SplitFeatures {
  indirect: boolean;
  eventIdx: boolean;
  inOrder: boolean;
}

/**
 * Runs a split-ring model (`run`: features, size seed, ops, starting index → the device's
 * final used index) from 1–6 below the 16-bit wrap, over `ops`, and asserts that most runs
 * cross it — else the property proves nothing about the wrap.
 */
export function checkAcrossWrap<Op>(run: (f: SplitFeatures & { packed: false }, sizeSeed: number, ops: Op[], start: number) => number, ops: fc.Arbitrary<Op>, maxLength: number): void {
  let runs = 0;
  let crossed = 0;
  fc.assert(
    fc.property(
      fc.record({ indirect: fc.boolean(), eventIdx: fc.boolean(), inOrder: fc.boolean() }),
      fc.nat(1000),
      fc.integer({ min: 1, max: 6 }),
      fc.array(ops, { minLength: 100, maxLength }),
      (f, sizeSeed, back, list) => {
        const start = 0x10000 - back;
        runs++;
        if (run({ ...f, packed: false }, sizeSeed, list, start) < start) crossed++;
      },
    ),
    { numRuns: 60 },
  );
  expect(crossed).toBeGreaterThanOrEqual(runs * 0.7);
}
