import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Bridge, Port, type VlanMode } from '../src/index.js';
import { SinkBackend, hex, mac, tag, udpFrame } from './helpers.js';

const VLANS = [10, 20, 30];

const vlanModeArb: fc.Arbitrary<VlanMode> = fc.oneof(
  fc.constantFrom(...VLANS).map((t) => ({ mode: 'access' as const, tag: t })),
  fc.record({
    mode: fc.constant('trunk' as const),
    trunks: fc.option(fc.subarray([10, 20, 30, 40]), { nil: undefined }),
    native: fc.constantFrom(0, 10, 20),
  }),
);

interface Frame {
  port: number;
  src: number;
  dst: number; // 0 = broadcast
  vid: number | null;
}

const frameArb = (ports: number): fc.Arbitrary<Frame> => fc.record({
  port: fc.integer({ min: 1, max: ports }),
  src: fc.integer({ min: 1, max: 4 }),
  dst: fc.integer({ min: 0, max: 4 }),
  vid: fc.constantFrom(null, 0, 10, 20, 30, 40),
});

const carries = (m: VlanMode, v: number): boolean => (m.mode === 'access' ? m.tag === v : m.trunks === undefined || m.trunks.includes(v) || v === (m.native ?? 0));

/** NORMAL's model: ingress VLAN, learning, forwarding, egress tagging, written plainly. */
describe('NORMAL against a plain model: VLAN isolation, learning, station moves, flooding within a VLAN', () => {
  it('random port VLAN modes and random traffic', () => {
    fc.assert(
      fc.property(fc.array(vlanModeArb, { minLength: 2, maxLength: 5 }), fc.array(frameArb(5), { minLength: 1, maxLength: 40 }), (modes, frames) => {
        const br = new Bridge({ clock: () => 0 });
        const sinks = modes.map((vlan, i) => {
          const s = new SinkBackend();
          br.addPort(s, { portNo: i + 1, vlan });
          return s;
        });
        br.addFlow({ priority: 0, instructions: [{ type: 'apply_actions', actions: [{ type: 'output', port: Port.NORMAL }] }] });
        const learned = new Map<string, number>();
        for (const f of frames) {
          if (f.port > modes.length) continue;
          const inMode = modes[f.port - 1]!;
          const dstMac = f.dst === 0 ? 'ff:ff:ff:ff:ff:ff' : mac(f.dst);
          let bytes = udpFrame(f.src, f.dst, { dstMac });
          const untagged = bytes;
          if (f.vid !== null) bytes = tag(bytes, f.vid);
          // Ingress VLAN (priority-tagged = untagged).
          const vid = f.vid ?? 0;
          let vlan: number | null;
          if (inMode.mode === 'access') vlan = vid === 0 ? inMode.tag : null;
          else {
            vlan = vid !== 0 ? vid : inMode.native ?? 0;
            if (!carries(inMode, vlan)) vlan = null;
          }
          const expected: string[] = [];
          if (vlan !== null) {
            const V = vlan;
            learned.set(`${V}/${f.src}`, f.port);
            const egress = (q: number): void => {
              const m = modes[q - 1]!;
              const out = m.mode === 'access' || V === (m.native ?? 0) ? untagged : tag(untagged, V);
              expected.push(`${q}:${hex(out)}`);
            };
            const known = f.dst === 0 ? undefined : learned.get(`${V}/${f.dst}`);
            if (known !== undefined) {
              if (known !== f.port && carries(modes[known - 1]!, V)) egress(known);
            } else {
              for (let q = 1; q <= modes.length; q++) if (q !== f.port && carries(modes[q - 1]!, V)) egress(q);
            }
          }
          sinks[f.port - 1]!.inject(bytes);
          const got: string[] = [];
          sinks.forEach((s, i) => {
            for (const o of s.take()) got.push(`${i + 1}:${hex(o)}`);
          });
          expect(got.sort(), `frame ${JSON.stringify(f)} with ports ${JSON.stringify(modes)}`).toEqual(expected.sort());
          // Isolation, said directly: every copy went to a port of the frame's VLAN.
          for (const g of got) expect(vlan !== null && carries(modes[Number(g.split(':')[0]) - 1]!, vlan)).toBe(true);
        }
        br.close();
      }),
      { numRuns: 300 },
    );
  });
});
