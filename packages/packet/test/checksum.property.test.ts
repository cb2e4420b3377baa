import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { completePartialChecksum, internetChecksum, onesComplementSum } from '../src/index.js';
import { refChecksum, refSum } from './helpers.js';

const bytes = fc.uint8Array({ maxLength: 300 });

describe('checksum against the RFC 1071 reference', () => {
  it('sums every range like the reference', () => {
    fc.assert(
      fc.property(bytes, fc.nat(), fc.nat(), (b, x, y) => {
        const s = b.length ? x % (b.length + 1) : 0;
        const e = s + (b.length ? y % (b.length - s + 1) : 0);
        const ref = refSum(b, s, e);
        const got = onesComplementSum(b, s, e);
        // 0 and 0xffff are the two zeros of one's complement; the fold may land on either only when all input is zero.
        expect(got === ref || (got % 0xffff === ref % 0xffff)).toBe(true);
        expect(internetChecksum(b, s, e) % 0xffff).toBe(refChecksum(b, s, e) % 0xffff);
      }),
    );
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
