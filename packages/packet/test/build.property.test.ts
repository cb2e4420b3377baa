import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  buildIcmpEcho, buildUdp, encapsulateVxlan, FlowKey, FlowKeyExtractor, FLOW_KEY_WORDS, Layer, PacketInfo, parsePacket,
  verifyIpv4HeaderChecksum, verifyL4Checksum, readIpv4, vxlanSourcePort,
} from '../src/index.js';
import { refChecksum } from './helpers.js';

const mac = fc.uint8Array({ minLength: 6, maxLength: 6 }).map((m) => {
  m[0] = m[0]! & 0xfe;
  return m;
});
const ip = fc.oneof(fc.nat(0xffffffff), fc.uint8Array({ minLength: 16, maxLength: 16 }));
const port = fc.nat(0xffff);

describe('builders against the parser and the RFC 1071 reference', () => {
  it('UDP: every field built is parsed back, and both checksums verify', () => {
    const out = new Uint8Array(2000);
    const info = new PacketInfo();
    fc.assert(
      fc.property(mac, mac, ip, fc.nat(0xffffffff), port, port, fc.uint8Array({ maxLength: 300 }), fc.option(fc.nat(0xffff), { nil: undefined }), (src, dst, ipA, ipB4, sp, dp, payload, tci) => {
        const dstIp = typeof ipA === 'number' ? ipB4 : Uint8Array.from(ipA).reverse();
        const n = buildUdp(out, { srcMac: src, dstMac: dst, srcIp: ipA, dstIp, srcPort: sp, dstPort: dp, payload, vlanTci: tci });
        const f = out.subarray(0, n);
        parsePacket(f, info, n, 0);
        expect(info.anomalies).toBe(0);
        expect(info.layers & Layer.UDP).toBeTruthy();
        expect(info.vlanCount).toBe(tci === undefined ? 0 : 1);
        if (tci !== undefined) expect(info.vlanTci0).toBe(tci);
        expect([...f.subarray(info.payloadOffset, info.ipEnd)]).toEqual([...payload]);
        expect(verifyL4Checksum(f, info)).toBe(true);
        if (typeof ipA === 'number') {
          expect(verifyIpv4HeaderChecksum(f, info.l3Offset)).toBe(true);
          expect(readIpv4(f, info.l3Offset + 12)).toBe(ipA);
          // The IPv4 header checksum agrees with the by-the-letter reference.
          expect(refChecksum(f, info.l3Offset, info.l3Offset + 20)).toBe(0);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('ICMP echo and VXLAN encapsulation round-trip through the parser', () => {
    const inner = new Uint8Array(1600);
    const outer = new Uint8Array(1700);
    const info = new PacketInfo();
    fc.assert(
      fc.property(mac, mac, ip, port, port, fc.uint8Array({ maxLength: 200 }), fc.nat(0xffffff), fc.nat(0xffffffff), (a, b, srcIp, id, seq, payload, vni, h) => {
        const dstIp = typeof srcIp === 'number' ? (srcIp ^ 1) >>> 0 : Uint8Array.from(srcIp).reverse();
        const n = buildIcmpEcho(inner, { srcMac: a, dstMac: b, srcIp, dstIp, id, sequence: seq, payload });
        parsePacket(inner.subarray(0, n), info);
        expect(info.layers & (Layer.ICMP | Layer.ICMPV6)).toBeTruthy();
        expect(verifyL4Checksum(inner.subarray(0, n), info)).toBe(true);
        const sp = vxlanSourcePort(h);
        const m = encapsulateVxlan(outer, inner.subarray(0, n), { srcMac: b, dstMac: a, srcIp: 0x0a000001, dstIp: 0x0a000002, srcPort: sp, vni, udpChecksum: (h & 1) === 1 });
        parsePacket(outer.subarray(0, m), info);
        expect(info.anomalies).toBe(0);
        expect(info.vni).toBe(vni);
        expect(verifyL4Checksum(outer.subarray(0, m), info)).toBe(true);
        expect([...outer.subarray(info.innerOffset, m)]).toEqual([...inner.subarray(0, n)]);
      }),
      { numRuns: 300 },
    );
  });
});

describe('flow key masks', () => {
  it('hash(mask) is the hash of the masked copy; equalsMasked is equality of masked copies', () => {
    const words = fc.uint32Array({ minLength: FLOW_KEY_WORDS, maxLength: FLOW_KEY_WORDS });
    fc.assert(
      fc.property(words, words, words, (x, y, m) => {
        const a = new FlowKey(x);
        const b = new FlowKey(y);
        const mask = new FlowKey(m);
        const ma = new FlowKey().maskFrom(a, mask);
        const mb = new FlowKey().maskFrom(b, mask);
        expect(a.hash(mask)).toBe(ma.hash());
        expect(a.equalsMasked(b, mask)).toBe(ma.equals(mb));
        const c = new FlowKey().copyFrom(a);
        for (let i = 0; i < FLOW_KEY_WORDS; i++) c.words[i] = (c.words[i]! & m[i]!) | (y[i]! & ~m[i]!);
        expect(c.equalsMasked(a, mask)).toBe(true);
        expect(c.hash(mask)).toBe(a.hash(mask));
      }),
    );
  });

  it('extraction allocates no new key and is deterministic', () => {
    const ex = new FlowKeyExtractor();
    const key = new FlowKey();
    const words = key.words;
    const out = new Uint8Array(200);
    const n = buildUdp(out, { srcMac: new Uint8Array(6), dstMac: new Uint8Array(6), srcIp: 1, dstIp: 2, srcPort: 3, dstPort: 4 });
    const h1 = ex.extract(out.subarray(0, n), key, 5).hash();
    expect(key.words).toBe(words);
    expect(ex.extract(out.subarray(0, n), key, 5).hash()).toBe(h1);
  });
});
