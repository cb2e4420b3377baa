import { describe, expect, it } from 'vitest';
import { runDemo } from '../src/demo.js';

describe('the virtqueue demo (the data plane default)', () => {
  for (const packed of [false, true]) {
    for (const indirect of [false, true]) {
      it(`moves every chain with the right checksum (${packed ? 'packed' : 'split'}${indirect ? ', indirect' : ''})`, async () => {
        const r = await runDemo({ features: { packed, eventIdx: true, indirect, inOrder: false }, queueSize: 64, chains: 5000 });
        expect(r.error).toBeUndefined();
        expect(r.mismatches).toBe(0);
        expect(r.chains).toBe(5000);
        // EVENT_IDX keeps notifications well below one per chain under load.
        expect(r.kicks).toBeLessThanOrEqual(5000);
      });
    }
  }
});
