import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MegaflowCache, MicroflowCache } from '../src/cache.js';
import { INGRESS_WORDS } from '../src/constants.js';

const W = INGRESS_WORDS;
const MASKS = [
  (() => { const m = new Uint32Array(W); m[0] = 0xffffffff; m[14] = 0xffffffff; return m; })(),
  (() => { const m = new Uint32Array(W); m[14] = 0xffffff00; return m; })(),
  (() => { const m = new Uint32Array(W); m[7] = 0xffff0000; m[18] = 0xffff; return m; })(),
];
const keyOf = (a: number, b: number): Uint32Array => {
  const k = new Uint32Array(W);
  k[0] = a & 3;
  k[7] = 0x08000000;
  k[14] = (0x0a000000 | b) >>> 0;
  k[18] = b & 7;
  return k;
};
const masked = (k: Uint32Array, m: Uint32Array): string => Array.from(k, (w, i) => ((w & m[i]!) >>> 0).toString(16)).join(',');

describe('the megaflow cache\'s open-addressed subtables against a plain list of entries', () => {
  it('inserts, FIFO evictions (tombstones, regrowth) and lookups agree', () => {
    // Mostly the exact mask, a limit of at most 12 and rare flushes: the broad masks cover many keys, so
    // inserts under them were skipped as overlapping, and with limits up to 48 the live set stayed far
    // below the limit (peak 18; 57 of 200 runs evicted).
    const op = fc.oneof(
      { weight: 12, arbitrary: fc.record({ kind: fc.constant('insert' as const), a: fc.nat(7), b: fc.nat(400), m: fc.oneof({ weight: 18, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constantFrom(1, 2) }) }) },
      { weight: 10, arbitrary: fc.record({ kind: fc.constant('lookup' as const), a: fc.nat(7), b: fc.nat(400), pick: fc.option(fc.nat(), { freq: 4, nil: null }) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('flush' as const) }) },
    );
    const cov = { runs: 0, runsEvicting: 0, evictions: 0, inserts: 0, skipped: 0 };
    fc.assert(fc.property(fc.integer({ min: 1, max: 12 }), fc.array(op, { maxLength: 600 }), (limit, ops) => {
      cov.runs++;
      let evicted = 0;
      const c = new MegaflowCache<number>(limit);
      // The model: live entries in insertion order; the oldest goes when full.
      let live: { key: Uint32Array; mask: Uint32Array; id: number }[] = [];
      let id = 0;
      const seenKeys: Uint32Array[] = [];
      for (const o of ops) {
        if (o.kind === 'flush') {
          c.flush();
          live = [];
        } else if (o.kind === 'insert') {
          const key = keyOf(o.a, o.b);
          const mask = MASKS[o.m]!;
          // The bridge inserts only after a miss: keep the model's entries disjoint the same way.
          if (live.some((e) => masked(key, e.mask) === masked(e.key, e.mask))) {
            cov.skipped++;
            continue;
          }
          cov.inserts++;
          if (live.length >= limit) {
            live.shift();
            evicted++;
          }
          c.insert(key, mask, ++id);
          seenKeys.push(key);
          live.push({ key, mask, id });
        } else {
          // Mostly keys inserted before (live, evicted or flushed), to probe long chains.
          const key = o.pick !== null && seenKeys.length > 0 ? seenKeys[o.pick % seenKeys.length]! : keyOf(o.a, o.b);
          const want = live.filter((e) => masked(key, e.mask) === masked(e.key, e.mask)).map((e) => e.id);
          const got = c.lookup(key);
          if (want.length === 0) expect(got).toBeNull();
          else expect(want).toContain(got?.data);
        }
        expect(c.size).toBe(live.length);
      }
      expect([...c.entries()].map((e) => e.data).sort((x, y) => x - y)).toEqual(live.map((e) => e.id).sort((x, y) => x - y));
      expect(c.stats.evictions).toBe(evicted);
      cov.evictions += evicted;
      if (evicted > 0) cov.runsEvicting++;
    }), { numRuns: 200 });
    const why = JSON.stringify(cov);
    expect(cov.runsEvicting / cov.runs, why).toBeGreaterThan(0.75);
    expect(cov.evictions, why).toBeGreaterThan(8000);
    expect(cov.skipped / (cov.inserts + cov.skipped), why).toBeLessThan(0.25);
  });
});

describe('the megaflow cache under churn', () => {
  it('every live entry stays reachable through evictions (probe chains survive removals)', () => {
    for (const limit of [7, 20, 100, 300]) {
      const c = new MegaflowCache<number>(limit);
      for (let i = 0; i < limit * 5; i++) {
        c.insert(keyOf(1, i), MASKS[0]!, i);
        // The last `limit` inserted are live; all of them must be found, the older ones not.
        if (i % 7 === 0 || i === limit * 5 - 1) {
          for (let j = Math.max(0, i - limit + 1); j <= i; j++) expect(c.lookup(keyOf(1, j))?.data).toBe(j);
          if (i >= limit) expect(c.lookup(keyOf(1, i - limit))).toBeNull();
        }
      }
    }
  });
});

describe('the microflow (signature) cache', () => {
  it('a hash collision is a miss, not another flow\'s actions: hits are verified against the megaflow entry', () => {
    const mega = new MegaflowCache<string>(16);
    const micro = new MicroflowCache<string>(8);
    const a = keyOf(1, 1);
    const b = keyOf(1, 2);
    const ea = mega.insert(a, MASKS[0]!, 'a');
    micro.insert(a, 5, ea);
    expect(micro.lookup(a, 5)?.data).toBe('a');
    expect(micro.lookup(b, 5)).toBeNull(); // same slot and hash, different flow
    expect(micro.lookup(a, 13)).toBeNull(); // same slot, different hash
    mega.flush();
    expect(micro.lookup(a, 5)).toBeNull(); // a dead megaflow entry
    expect(micro.stats.hits).toBe(1);
    expect(micro.stats.misses).toBe(3);
  });
});
