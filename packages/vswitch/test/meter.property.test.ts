import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Bridge } from '../src/index.js';
import { SinkBackend, udpFrame } from './helpers.js';

/**
 * Meters against a token-bucket model in exact integers (§5.7.1): per band a bucket of
 * `burst` (kilobits or packets) refilled at `rate`; a packet spends its cost in every band
 * that holds it, and the band of highest rate among those that do not applies (drop).
 */
describe('meters agree with an integer token-bucket model on an injected clock', () => {
  it('random bands, units, packet sizes and clock steps', () => {
    const band = fc.record({ rate: fc.integer({ min: 1, max: 2000 }), burstSize: fc.integer({ min: 1, max: 50 }) });
    fc.assert(
      fc.property(
        fc.constantFrom<'kbps' | 'pktps'>('kbps', 'pktps'),
        fc.boolean(),
        fc.array(band, { minLength: 1, maxLength: 3 }),
        fc.array(fc.record({ dt: fc.integer({ min: 0, max: 50 }), size: fc.constantFrom(64, 200, 1000, 1500) }), { minLength: 1, maxLength: 80 }),
        (unit, burst, bands, packets) => {
          let now = 0;
          const br = new Bridge({ clock: () => now });
          const a = new SinkBackend();
          const b = new SinkBackend();
          br.addPort(a, { portNo: 1 });
          br.addPort(b, { portNo: 2 });
          br.meterMod('add', { meterId: 1, unit, burst, bands: bands.map((x) => ({ type: 'drop', ...x })) });
          br.addFlow({ instructions: [{ type: 'meter', meterId: 1 }, { type: 'apply_actions', actions: [{ type: 'output', port: 2 }] }] });
          // Model, in bits or milli-packets per millisecond.
          const model = bands.map((x) => {
            const cap = (burst ? x.burstSize : x.rate) * 1000;
            return { rate: x.rate, cap, tokens: cap, count: 0 };
          });
          let passed = 0;
          for (const p of packets) {
            now += p.dt;
            for (const m of model) m.tokens = Math.min(m.cap, m.tokens + p.dt * m.rate);
            const cost = unit === 'pktps' ? 1000 : p.size * 8;
            let hit: (typeof model)[number] | null = null;
            for (const m of model) {
              if (m.tokens >= cost) m.tokens -= cost;
              else if (hit === null || m.rate > hit.rate) hit = m;
            }
            if (hit) hit.count++;
            else passed++;
            a.inject(udpFrame(1, 2, { size: p.size }));
          }
          expect(b.sent.length).toBe(passed);
          expect(br.meterStats()[0]!.bands.map((x) => x.packetCount)).toEqual(model.map((m) => m.count));
          br.close();
        },
      ),
      { numRuns: 300 },
    );
  });
});
