import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { fillIpv4HeaderChecksum, verifyIpv4HeaderChecksum } from '@ioplane/packet';
import { Bridge, type MeterBand } from '../src/index.js';
import { SinkBackend, udpFrame } from './helpers.js';

/**
 * Meters against a token-bucket model in exact integers (§5.7.1): per band a bucket of
 * `burst` (kilobits or packets) refilled at `rate`; a packet spends its cost in every band
 * that holds it, and the band of highest rate among those that do not applies: drop, or
 * dscp_remark (the AFxy drop precedence y raised by precLevel, at most 3; RFC 2597 §6).
 */
const modelRemark = (dscp: number, prec: number): number => {
  const x = dscp >> 3;
  const y = (dscp >> 1) & 3;
  return x >= 1 && x <= 4 && y >= 1 && dscp % 2 === 0 ? x * 8 + 2 * Math.min(3, y + prec) : dscp;
};
describe('meters agree with an integer token-bucket model on an injected clock', () => {
  it('random bands, units, packet sizes and clock steps', () => {
    const band = fc.record({ rate: fc.integer({ min: 1, max: 2000 }), burstSize: fc.integer({ min: 1, max: 50 }), remark: fc.option(fc.integer({ min: 1, max: 3 }), { nil: null }) });
    fc.assert(
      fc.property(
        fc.constantFrom<'kbps' | 'pktps'>('kbps', 'pktps'),
        fc.boolean(),
        fc.array(band, { minLength: 1, maxLength: 3 }),
        fc.array(fc.record({ dt: fc.integer({ min: 0, max: 50 }), size: fc.constantFrom(64, 200, 1000, 1500), dscp: fc.constantFrom(0, 10, 12, 14, 26, 34, 46) }), { minLength: 1, maxLength: 80 }),
        (unit, burst, bands, packets) => {
          let now = 0;
          const br = new Bridge({ clock: () => now });
          const a = new SinkBackend();
          const b = new SinkBackend();
          br.addPort(a, { portNo: 1 });
          br.addPort(b, { portNo: 2 });
          br.meterMod('add', { meterId: 1, unit, burst, bands: bands.map((x): MeterBand => (x.remark === null ? { type: 'drop', rate: x.rate, burstSize: x.burstSize } : { type: 'dscp_remark', rate: x.rate, burstSize: x.burstSize, precLevel: x.remark })) });
          br.addFlow({ instructions: [{ type: 'meter', meterId: 1 }, { type: 'apply_actions', actions: [{ type: 'output', port: 2 }] }] });
          // Model, in bits or milli-packets per millisecond.
          const model = bands.map((x) => {
            const cap = (burst ? x.burstSize : x.rate) * 1000;
            return { rate: x.rate, cap, tokens: cap, count: 0, remark: x.remark };
          });
          const passed: number[] = [];
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
            if (!hit) passed.push(p.dscp);
            else if (hit.remark !== null) passed.push(modelRemark(p.dscp, hit.remark));
            const f = udpFrame(1, 2, { size: p.size });
            f[15] = p.dscp << 2;
            fillIpv4HeaderChecksum(f, 14);
            a.inject(f);
          }
          expect(b.sent.map((f) => f[15]! >> 2)).toEqual(passed);
          for (const f of b.sent) expect(verifyIpv4HeaderChecksum(f, 14)).toBe(true);
          expect(br.meterStats()[0]!.bands.map((x) => x.packetCount)).toEqual(model.map((m) => m.count));
          br.close();
        },
      ),
      { numRuns: 300 },
    );
  });
});
