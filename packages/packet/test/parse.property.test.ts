import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Anomaly, FlowKey, extractFlowKey, Layer, PacketInfo, parsePacket, FRAG_ANY, FRAG_LATER } from '../src/index.js';
import { serialize, type PacketModel } from './model.js';

const model: fc.Arbitrary<PacketModel> = fc.record({
  vlans: fc.array(fc.record({ tpid: fc.constantFrom(0x8100, 0x88a8), tci: fc.nat(0xffff) }), { maxLength: 2 }),
  l3: fc.constantFrom('arp', 'ipv4', 'ipv6', 'other'),
  // Valid option lists: NOPs and a 4-byte option, then EOL padding, whole words.
  ipv4Options: fc.array(fc.constantFrom([1, 1, 1, 1], [0x94, 4, 0, 0], [7, 4, 4, 0], [1, 1, 0, 0]), { maxLength: 10 }).map((ws) => ws.flat()),
  ipv6Ext: fc.uniqueArray(fc.record({ type: fc.constantFrom(0 as const, 43 as const, 60 as const, 44 as const), units: fc.nat(3) }), { maxLength: 4, selector: (e) => e.type })
    .map((es) => [...es.filter((e) => e.type === 0), ...es.filter((e) => e.type !== 0)]),
  // Offset 0 with More Fragments is a first fragment (the only one with an L4 header); offsets 1 and 0x1fff are the edges.
  frag: fc.record({
    offset8: fc.oneof({ weight: 2, arbitrary: fc.constant(0) }, fc.constantFrom(1, 2, 0x1fff), fc.nat(0x1fff)),
    more: fc.boolean(),
  }),
  l4: fc.constantFrom('udp', 'tcp', 'icmp', 'none'),
  tcpOptionsWords: fc.nat(10),
  payload: fc.array(fc.nat(255), { maxLength: 64 }),
  ethPadding: fc.nat(20),
});

type FragmentKind = 'whole' | 'atomic' | 'first' | 'later';

/** What the description makes of the packet: IPv6 has a fragment header only when listed; offset 0 without M is atomic (RFC 6946). */
function fragmentKind(m: PacketModel): FragmentKind {
  if (m.l3 === 'ipv6' && !m.ipv6Ext.some((x) => x.type === 44)) return 'whole';
  if (m.frag.offset8 !== 0) return 'later';
  if (m.frag.more) return 'first';
  return m.l3 === 'ipv6' ? 'atomic' : 'whole';
}

/** Open vSwitch's nw_frag: `any` for every fragment, `later` only for those past offset 0. */
const NW_FRAG: Record<FragmentKind, number> = { whole: 0, atomic: 0, first: FRAG_ANY, later: FRAG_ANY | FRAG_LATER };

describe('parsePacket against the reference serializer', () => {
  it('recovers every offset and flow-key field the description implies, with no anomaly', () => {
    const info = new PacketInfo();
    const key = new FlowKey();
    const seen = new Map<string, number>();
    fc.assert(
      fc.property(model, (m) => {
        const { bytes, expect: e } = serialize(m);
        const kind = fragmentKind(m);
        if (m.l3 === 'ipv4' || m.l3 === 'ipv6') seen.set(`${m.l3} ${kind}`, (seen.get(`${m.l3} ${kind}`) ?? 0) + 1);
        parsePacket(bytes, info);
        expect(info.anomalies).toBe(0);
        expect(info.vlanCount).toBe(m.vlans.length);
        m.vlans.forEach((v, i) => expect(i === 0 ? info.vlanTci0 : info.vlanTci1).toBe(v.tci));
        expect(info.etherType).toBe(e.etherType);
        expect(info.l3Offset).toBe(e.l3Offset);
        if (m.l3 === 'arp') expect(info.layers & Layer.ARP).toBeTruthy();
        if (m.l3 === 'ipv4' || m.l3 === 'ipv6') {
          expect(info.ipHeaderLength).toBe(e.ipHeaderLength);
          expect(info.ipProtocol).toBe(e.ipProtocol);
          expect(info.ipEnd).toBe(e.ipEnd);
          expect(info.l4Offset).toBe(e.l4Offset);
          expect(info.payloadOffset).toBe(e.payloadOffset);
          expect(info.fragment).toBe(NW_FRAG[kind]);
          if (kind !== 'whole') {
            expect(info.fragmentOffset).toBe(m.frag.offset8 * 8);
            expect(info.moreFragments).toBe(m.frag.more);
            expect(info.fragmentId).toBe(m.l3 === 'ipv4' ? 7 : 9);
          }
          if (m.l3 === 'ipv6') expect(info.ipv6ExtensionCount).toBe(m.ipv6Ext.length);
        }
        // The flow key holds what the description says.
        extractFlowKey(bytes, info, key);
        expect(key.get('eth_type')).toBe(e.etherType);
        expect(key.get('vlan_tci')).toBe(m.vlans.length ? (m.vlans[0]!.tci | 0x1000) & 0xffff : 0);
        if (m.l3 === 'ipv4' || m.l3 === 'ipv6') {
          expect(key.get('nw_proto')).toBe(e.ipProtocol);
          expect(key.get('nw_frag')).toBe(NW_FRAG[kind]);
          const l4Present = e.l4Offset >= 0 && m.l4 !== 'none';
          const ports = !l4Present ? [0, 0] : m.l4 === 'icmp' ? [8, 0] : [1000, 2000];
          expect([key.get('tp_src'), key.get('tp_dst')]).toEqual(ports);
          if (m.l3 === 'ipv4') expect(key.get('nw_src')).toBe(0x0a000001);
          else expect(key.words[13]).toBe(0x0c0d0e0f);
        }
        if (m.l3 === 'arp') expect([key.get('nw_proto'), key.get('nw_src'), key.get('nw_dst')]).toEqual([1, 0x0a000001, 0x0a000002]);
      }),
      { numRuns: 2000 },
    );
    // Each kind is a different parser path (a first fragment still has its L4 header); all must be reached.
    for (const l3 of ['ipv4', 'ipv6']) {
      for (const kind of l3 === 'ipv4' ? ['whole', 'first', 'later'] : ['whole', 'atomic', 'first', 'later']) {
        expect(seen.get(`${l3} ${kind}`) ?? 0, `${l3} ${kind}`).toBeGreaterThanOrEqual(20);
      }
    }
  });

  it('any prefix of a valid frame parses without throwing, as a subset of the whole, marked when cut inside a header', () => {
    const info = new PacketInfo();
    const whole = new PacketInfo();
    const key = new FlowKey();
    fc.assert(
      fc.property(model, fc.nat(), (m, cut) => {
        const { bytes } = serialize(m);
        parsePacket(bytes, whole);
        const n = cut % (bytes.length + 1);
        parsePacket(bytes, info, n);
        extractFlowKey(bytes, info, key);
        expect(info.layers & ~whole.layers).toBe(0);
        if (info.l4Offset >= 0) expect(info.l4Offset).toBeLessThanOrEqual(n);
        if (info.payloadOffset >= 0) expect(info.payloadOffset).toBeLessThanOrEqual(n);
        if (info.ipEnd >= 0) expect(info.ipEnd).toBeLessThanOrEqual(n);
        if (n < 14) expect(info.anomalies & Anomaly.TRUNCATED).toBeTruthy();
        if (info.layers === whole.layers && info.anomalies === 0) expect(info.payloadOffset).toBe(whole.payloadOffset);
        if (n < (whole.ipEnd >= 0 ? whole.ipEnd : 0)) expect(info.anomalies & Anomaly.TRUNCATED).toBeTruthy();
      }),
      { numRuns: 500 },
    );
  });

  it('random bytes never throw and every offset stays inside the frame', () => {
    const info = new PacketInfo();
    const key = new FlowKey();
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.constantFrom(0x0800, 0x86dd, 0x0806, 0x8100, 0x88a8), (b, et) => {
        if (b.length >= 14) {
          b[12] = et >>> 8;
          b[13] = et & 0xff;
        }
        parsePacket(b, info);
        extractFlowKey(b, info, key);
        for (const o of [info.l3Offset, info.l4Offset, info.payloadOffset, info.ipEnd, info.innerOffset]) expect(o).toBeLessThanOrEqual(b.length);
      }),
      { numRuns: 2000 },
    );
  });
});
