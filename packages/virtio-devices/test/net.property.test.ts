import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ethFrame, twoGuests, until } from './net-harness.js';

/**
 * Reference model: a lossless, order-keeping wire. Whatever guest A sends
 * (in windows that fit guest B's posted receive buffers) guest B receives,
 * byte for byte, in the same order — through A's virtio-net TX, the
 * loopback back-end, and B's virtio-net RX (mergeable or not).
 */
describe('virtio-net property: guest → virtio-net → loopback → virtio-net → guest', () => {
  for (const [mergeable, packed] of [[true, false], [false, false], [true, true], [false, true]] as const) {
    it(`frames arrive intact and in order (${mergeable ? 'MRG_RXBUF' : 'no MRG_RXBUF'}, ${packed ? 'packed' : 'split'} rings)`, async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.record({ len: fc.integer({ min: 14, max: 1514 }), seed: fc.nat(), broadcast: fc.boolean() }), { minLength: 300, maxLength: 700 }),
          fc.constantFrom(256, 512, 2048),
          async (specs, rxBufferSize) => {
            const { a, b, close } = await twoGuests({}, { mergeable, rxBufferSize, ring: { packed }, queueSize: 256 });
            try {
              const frames = specs.map((s) => ethFrame(s.broadcast ? Uint8Array.of(255, 255, 255, 255, 255, 255) : b.device.mac, a.device.mac, s.len, s.seed));
              // Windows that fit B's ring: each frame takes up to ceil(1526 / bufferSize) buffers.
              const per = mergeable ? Math.ceil((12 + 1514) / rxBufferSize) : 1;
              const window = Math.max(1, Math.floor(256 / per) - 1);
              for (let i = 0; i < frames.length; i += window) {
                const chunk = frames.slice(i, i + window);
                for (const f of chunk) expect(a.driver.send(f)).toBe(true);
                await until(() => b.received.length === Math.min(frames.length, i + window), `window at ${i}`);
              }
              expect(b.received.length).toBe(frames.length);
              b.received.forEach((r, i) => expect(Buffer.from(r.frame).equals(Buffer.from(frames[i]!)), `frame ${i}`).toBe(true));
              if (!mergeable) expect(b.received.every((r) => r.numBuffers <= 1)).toBe(true);
              expect(b.device.netStats.rxNoBuffers).toBe(0);
              expect(a.errors).toEqual([]);
              expect(b.errors).toEqual([]);
            } finally {
              await close();
            }
          },
        ),
        { numRuns: 8 },
      );
    }, 60_000);
  }
});
