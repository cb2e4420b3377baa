import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FrameRing, ringBytes } from '../src/index.js';

/** The model: a FIFO of frames with a byte budget equal to what the ring can hold. */
type Op = { t: 'write'; len: number; fill: number } | { t: 'drain'; max: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ t: fc.constant('write' as const), len: fc.integer({ min: 14, max: 300 }), fill: fc.nat(255) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('drain' as const), max: fc.integer({ min: 1, max: 20 }) }) },
);

describe('FrameRing against a FIFO model', () => {
  it('delivers exactly the frames written, in order, across wrap-arounds; a full ring refuses without losing anything', () => {
    fc.assert(
      fc.property(fc.constantFrom(2048, 4096), fc.array(op, { maxLength: 200 }), (cap, ops) => {
        const ring = FrameRing.format(new ArrayBuffer(ringBytes(cap)), 300);
        const model: Uint8Array[] = [];
        let refused = 0;
        for (const o of ops) {
          if (o.t === 'write') {
            const f = new Uint8Array(o.len).fill(o.fill);
            f[0] = o.len & 0xff;
            if (ring.tryWrite(f)) model.push(f);
            else refused++;
            ring.publish();
          } else {
            const got: Uint8Array[] = [];
            const n = ring.drain((f) => got.push(f.slice()), o.max);
            expect(n).toBe(Math.min(o.max, model.length));
            const want = model.splice(0, n);
            got.forEach((g, i) => expect(Buffer.compare(g, want[i]!)).toBe(0));
          }
        }
        const rest: Uint8Array[] = [];
        ring.drain((f) => rest.push(f.slice()), 1e9);
        expect(rest.length).toBe(model.length);
        // After draining everything, a maximum frame always fits again.
        expect(ring.canWriteMax()).toBe(true);
        return refused >= 0;
      }),
      { numRuns: 300 },
    );
  });

  it('never throws and never hands out bytes outside the ring when the other side scribbles over it', () => {
    fc.assert(
      fc.property(fc.array(fc.record({ word: fc.nat(2048 / 4 - 1), value: fc.nat(0xffffffff) }), { maxLength: 20 }), fc.nat(0xffffffff), fc.array(fc.integer({ min: 14, max: 300 }), { maxLength: 10 }), (scribbles, head, sizes) => {
        const buf = new ArrayBuffer(ringBytes(2048));
        const ring = FrameRing.format(buf, 300);
        for (const s of sizes) ring.tryWrite(new Uint8Array(s));
        ring.publish();
        const words = new Uint32Array(buf, 192);
        for (const s of scribbles) words[s.word] = s.value;
        if (head % 3 === 0) new Int32Array(buf)[0] = head | 0;
        let r = 0;
        for (let k = 0; k < 5 && r >= 0; k++) {
          r = ring.drain((f) => {
            expect(f.length).toBeLessThanOrEqual(300);
            expect(f.byteOffset + f.length).toBeLessThanOrEqual(192 + 2048);
          }, 1000);
        }
        if (r < 0) expect(ring.corruption).not.toBe('');
      }),
      { numRuns: 500 },
    );
  });

  it('refuses a buffer whose header does not describe it', () => {
    const buf = new ArrayBuffer(ringBytes(4096));
    FrameRing.format(buf, 300);
    new Int32Array(buf)[33] = 8192;
    expect(() => new FrameRing(buf)).toThrow(expect.objectContaining({ kind: 'corrupt-ring' }));
    expect(() => FrameRing.format(new ArrayBuffer(ringBytes(1000)), 300)).toThrow(expect.objectContaining({ kind: 'invalid-config' }));
  });
});
