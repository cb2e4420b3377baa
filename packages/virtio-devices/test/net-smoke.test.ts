import { describe, expect, it } from 'vitest';
import { ethFrame, twoGuests, until } from './net-harness.js';

describe('virtio-net smoke', () => {
  it('a frame from guest A reaches guest B', async () => {
    const { a, b, close } = await twoGuests();
    try {
      const f = ethFrame(b.device.mac, a.device.mac, 100, 1);
      expect(a.driver.send(f)).toBe(true);
      await until(() => b.received.length === 1, 'frame at B');
      expect(Buffer.from(b.received[0]!.frame).equals(Buffer.from(f))).toBe(true);
      expect(a.errors).toEqual([]);
    } finally {
      await close();
    }
  });
});
