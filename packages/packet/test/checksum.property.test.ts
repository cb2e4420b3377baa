import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { completePartialChecksum, internetChecksum, onesComplementSum } from '../src/index.js';
import { refChecksum, refSum } from './helpers.js';

const bytes = fc.uint8Array({ maxLength: 300 });

/*
 * Runs of 0x00 and 0xff reach one's complement's two zeros: +0 (0x0000), the sum of an
 * all-zero range, and -0 (0xffff), the sum of any other range that adds up to a multiple of 0xffff.
 */
const zeroish = fc.oneof(
  fc.nat(300).map((n) => new Uint8Array(n)),
  fc.array(fc.constantFrom(0, 0xff), { maxLength: 300 }).map((a) => Uint8Array.from(a)),
  fc.array(fc.oneof(fc.constant(0), fc.constant(0xff), fc.nat(255)), { maxLength: 300 }).map((a) => Uint8Array.from(a)),
);

describe('checksum against the RFC 1071 reference', () => {
  it('sums every range like the reference', () => {
    let plusZero = 0;
    let minusZero = 0;
    fc.assert(
      fc.property(fc.oneof(bytes, zeroish), fc.nat(), fc.nat(), (b, x, y) => {
        const s = b.length ? x % (b.length + 1) : 0;
        const e = s + (b.length ? y % (b.length - s + 1) : 0);
        const ref = refSum(b, s, e);
        const got = onesComplementSum(b, s, e);
        if (b.subarray(s, e).every((v) => v === 0)) {
          // Only a range of zeros (an empty one included) may sum to either zero: RFC 1071's end-around
          // carry gives +0, a fold like `sum % 0xffff || 0xffff` gives -0, and one's complement holds them equal.
          if (e > s) plusZero++;
          expect([0, 0xffff]).toContain(got);
          expect(internetChecksum(b, s, e)).toBe(~got & 0xffff);
        } else {
          if (ref === 0xffff) minusZero++;
          expect(got).toBe(ref);
          expect(internetChecksum(b, s, e)).toBe(refChecksum(b, s, e));
        }
      }),
      { numRuns: 1000 },
    );
    // Both zeros must be reached, or the exception above is untested and the strict branch never meets -0.
    expect(plusZero).toBeGreaterThan(50);
    expect(minusZero).toBeGreaterThan(5);
  });

  it('a buffer with its checksum inserted at an even offset sums to 0xffff', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 2, maxLength: 300 }), fc.nat(), (b, at) => {
        const pos = (at % Math.floor(b.length / 2)) * 2;
        b[pos] = 0;
        b[pos + 1] = 0;
        const c = internetChecksum(b);
        b[pos] = c >>> 8;
        b[pos + 1] = c & 0xff;
        expect(onesComplementSum(b, 0, b.length) === 0xffff || b.every((v) => v === 0)).toBe(true);
      }),
    );
  });

  it('partial completion equals the checksum of the range with the seed in the field', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 4, maxLength: 300 }), fc.nat(), fc.nat(), fc.nat(0xffff), (b, s0, o0, seed) => {
        const start = s0 % (b.length - 2);
        const off = o0 % (b.length - start - 1);
        const f = Uint8Array.from(b);
        f[start + off] = seed >>> 8;
        f[start + off + 1] = seed & 0xff;
        const expected = Uint8Array.from(f);
        const c = refChecksum(expected, start, expected.length) || 0xffff;
        expected[start + off] = c >>> 8;
        expected[start + off + 1] = c & 0xff;
        expect(completePartialChecksum(f, start, off)).toBe(true);
        expect([...f]).toEqual([...expected]);
      }),
    );
  });
});
