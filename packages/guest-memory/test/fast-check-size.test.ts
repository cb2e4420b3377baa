import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

// Every package's tests run with the repository's fast-check set-up (vitest.shared.ts): without it,
// fast-check's default size caps each generated array at 10 elements, whatever its maxLength.
describe('property-test set-up', () => {
  it('generated arrays reach far past 10 elements when their maxLength allows it', () => {
    const lengths = fc.sample(fc.array(fc.nat(), { maxLength: 300 }), { numRuns: 200, seed: 42 }).map((a) => a.length);
    expect(Math.max(...lengths)).toBeGreaterThan(100);
  });
});
