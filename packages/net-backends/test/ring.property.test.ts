import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FrameRing, ringBytes, RING_HEADER_BYTES } from '../src/index.js';
import { W_HEAD, W_TAIL, WRAP_MARKER } from '../src/ring.js';

const MAX_FRAME = 300;

/** A record is a u32 length word then the frame, zero-padded to 4 bytes (src/ring.ts). */
function recordBytes(len: number): number {
  return 4 + ((len + 3) & ~3);
}

/*
 * Bytes the ring may hold beyond its records: a record that does not fit before the end of
 * the data area is preceded by a wrap marker and the skipped rest. The skip is shorter than
 * the record (else the record would fit), so at most recordBytes(MAX_FRAME) - 4. [tail, head)
 * crosses the end at most once, and a write that would wrap while an older skip is still in
 * use needs more than the free bytes anyway, so one skip bounds both.
 */
const WRAP_SLACK = recordBytes(MAX_FRAME) - 4;

/**
 * Head and tail are free-running u32 byte counters: start anywhere, 4-aligned, often just
 * below 2^32, which is also just below the end of the data area (capacities divide 2^32).
 */
const start: fc.Arbitrary<number> = fc.oneof(
  fc.constant(0),
  fc.nat(0x3fffffff).map((k) => k * 4),
  fc.integer({ min: 1, max: 128 }).map((k) => 2 ** 32 - 4 * k),
);

/** A formatted ring whose counters begin at `at`, as a producer attaching mid-life would find it. */
function ringAt(buffer: ArrayBuffer, at: number): FrameRing {
  FrameRing.format(buffer, MAX_FRAME);
  const ctl = new Int32Array(buffer, 0, RING_HEADER_BYTES / 4);
  ctl[W_HEAD] = at | 0;
  ctl[W_TAIL] = at | 0;
  return new FrameRing(buffer);
}

/** The model: a FIFO of frames and the record bytes they occupy. */
type Op = { t: 'write'; len: number; fill: number } | { t: 'drain'; max: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ t: fc.constant('write' as const), len: fc.integer({ min: 14, max: MAX_FRAME }), fill: fc.nat(255) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('drain' as const), max: fc.integer({ min: 1, max: 20 }) }) },
);

describe('FrameRing against a FIFO model', () => {
  it('delivers exactly the frames written, in order, across wrap-arounds; a full ring refuses without losing anything', () => {
    let refusals = 0;
    // Writes accepted with less than two skips' room to spare: where a ring demanding extra slack would refuse.
    let tightWrites = 0;
    fc.assert(
      fc.property(fc.constantFrom(2048, 4096), start, fc.array(op, { maxLength: 200 }), (cap, at, ops) => {
        const ring = ringAt(new ArrayBuffer(ringBytes(cap)), at);
        const model: Uint8Array[] = [];
        let used = 0;
        for (const o of ops) {
          if (o.t === 'write') {
            const f = new Uint8Array(o.len).fill(o.fill);
            f[0] = o.len & 0xff;
            const need = recordBytes(o.len);
            const ok = ring.tryWrite(f);
            if (used + need + WRAP_SLACK <= cap) expect(ok, `refused ${need} bytes with ${used} used of ${cap}`).toBe(true);
            if (ok) {
              model.push(f);
              used += need;
              if (used + 2 * WRAP_SLACK > cap) tightWrites++;
            } else {
              refusals++;
            }
            ring.publish();
          } else {
            const got: Uint8Array[] = [];
            const n = ring.drain((f) => got.push(f.slice()), o.max);
            expect(n).toBe(Math.min(o.max, model.length));
            const want = model.splice(0, n);
            got.forEach((g, i) => expect(Buffer.compare(g, want[i]!)).toBe(0));
            for (const w of want) used -= recordBytes(w.length);
          }
        }
        const rest: Uint8Array[] = [];
        ring.drain((f) => rest.push(f.slice()), 1e9);
        expect(rest.length).toBe(model.length);
        rest.forEach((g, i) => expect(Buffer.compare(g, model[i]!)).toBe(0));
        // After draining everything, a maximum frame always fits again.
        expect(ring.canWriteMax()).toBe(true);
      }),
      { numRuns: 300 },
    );
    // Both sides of the bound must be exercised, or the check above proves nothing.
    expect(refusals).toBeGreaterThan(100);
    expect(tightWrites).toBeGreaterThan(100);
  });

  it('never throws and never hands out bytes outside the ring when the other side scribbles over it', () => {
    const cap = 2048;
    // Mostly plausible lengths and wrap markers, so the consumer walks far into scribbled records.
    const value = fc.oneof(fc.nat(0xffffffff), fc.nat(MAX_FRAME), fc.constant(WRAP_MARKER));
    // Word -1 stands for the first record's length word, which the consumer surely reads.
    const scribble = fc.record({ word: fc.oneof({ weight: 3, arbitrary: fc.nat(cap / 4 - 1) }, { weight: 1, arbitrary: fc.constant(-1) }), value });
    // A published head up to a whole ring past the tail is plausible; any other is corrupt.
    const headShift = fc.option(fc.oneof(fc.nat(cap), fc.nat(0xffffffff)), { nil: undefined });
    let delivered = 0;
    let corrupt = 0;
    fc.assert(
      fc.property(start, fc.array(fc.integer({ min: 14, max: MAX_FRAME }), { maxLength: 10 }), fc.array(scribble, { maxLength: 20 }), headShift, (at, sizes, scribbles, shift) => {
        const buf = new ArrayBuffer(ringBytes(cap));
        const ring = ringAt(buf, at);
        for (const s of sizes) ring.tryWrite(new Uint8Array(s));
        ring.publish();
        const words = new Uint32Array(buf, RING_HEADER_BYTES, cap / 4);
        for (const s of scribbles) words[s.word < 0 ? (at & (cap - 1)) / 4 : s.word] = s.value;
        if (shift !== undefined) new Int32Array(buf, 0, RING_HEADER_BYTES / 4)[W_HEAD] = (at + shift) | 0;
        let r = 0;
        for (let k = 0; k < 5 && r >= 0; k++) {
          r = ring.drain((f) => {
            // The view must be exactly the record its length word describes, wholly inside the data area.
            const rec = f.byteOffset - 4 - ring.data.byteOffset;
            expect(rec % 4).toBe(0);
            expect(rec).toBeGreaterThanOrEqual(0);
            expect(rec + recordBytes(f.length)).toBeLessThanOrEqual(cap);
            expect(words[rec / 4]).toBe(f.length);
            expect(f.length).toBeLessThanOrEqual(MAX_FRAME);
            delivered++;
          }, 1000);
        }
        if (r < 0) {
          corrupt++;
          expect(ring.corruption).not.toBe('');
        }
      }),
      { numRuns: 500 },
    );
    expect(delivered).toBeGreaterThan(2000);
    expect(corrupt).toBeGreaterThan(200);
  });

  it('refuses a buffer whose header does not describe it', () => {
    const buf = new ArrayBuffer(ringBytes(4096));
    FrameRing.format(buf, 300);
    new Int32Array(buf)[33] = 8192;
    expect(() => new FrameRing(buf)).toThrow(expect.objectContaining({ kind: 'corrupt-ring' }));
    expect(() => FrameRing.format(new ArrayBuffer(ringBytes(1000)), 300)).toThrow(expect.objectContaining({ kind: 'invalid-config' }));
  });
});
