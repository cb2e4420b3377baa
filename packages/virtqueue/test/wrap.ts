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

