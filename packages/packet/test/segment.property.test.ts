import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { buildTcp, buildUdp, Layer, PacketError, PacketInfo, parsePacket, segmentTcp, verifyIpv4HeaderChecksum, verifyL4Checksum } from '../src/index.js';

const mac = new Uint8Array([2, 0, 0, 0, 0, 1]);
const v6a = Uint8Array.from({ length: 16 }, (_, i) => (i === 0 ? 0xfd : i));
const v6b = Uint8Array.from({ length: 16 }, (_, i) => (i === 0 ? 0xfd : 16 - i));

describe('segmentTcp against the reference (reassembly)', () => {
  it('segments reassemble to the payload, with sequence, IP ID, flags, lengths and checksums right', () => {
    const big = new Uint8Array(70000);
    const out = new Uint8Array(70000);
    const info = new PacketInfo();
    const seg = new PacketInfo();
    fc.assert(
      fc.property(
        fc.boolean(), fc.integer({ min: 0, max: 9000 }), fc.integer({ min: 1, max: 1460 }), fc.nat(0xffffffff), fc.nat(0xff), fc.nat(0xffff),
        fc.constantFrom(new Uint8Array(0), new Uint8Array([2, 4, 5, 0xb4]), new Uint8Array([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])), fc.option(fc.nat(0xfff), { nil: undefined }),
        (v4, payloadLen, mss, seq, flags, ipId, options, vlan) => {
          const payload = Uint8Array.from({ length: payloadLen }, (_, i) => (i * 7 + 3) & 0xff);
          const n = buildTcp(big, { srcMac: mac, dstMac: mac, srcIp: v4 ? 0x0ac80001 : v6a, dstIp: v4 ? 0x0ac80002 : v6b, srcPort: 80, dstPort: 4242, seq, flags, ipId, options, payload, vlanTci: vlan });
          const got: number[] = [];
          const segs: { seq: number; flags: number; id: number; len: number }[] = [];
          const count = segmentTcp(big.subarray(0, n), mss, out, (s, len) => {
            const f = s.subarray(0, len);
            parsePacket(f, seg);
            expect(seg.anomalies).toBe(0);
            expect(seg.layers & Layer.TCP).toBeTruthy();
            expect(verifyL4Checksum(f, seg)).toBe(true);
            if (v4) expect(verifyIpv4HeaderChecksum(f, seg.l3Offset)).toBe(true);
            const l4 = seg.l4Offset;
            segs.push({ seq: new DataView(f.buffer, f.byteOffset).getUint32(l4 + 4), flags: f[l4 + 13]!, id: v4 ? (f[seg.l3Offset + 4]! << 8) | f[seg.l3Offset + 5]! : 0, len: seg.ipEnd - seg.payloadOffset });
            expect(len).toBe(seg.ipEnd);
            for (let i = seg.payloadOffset; i < seg.ipEnd; i++) got.push(f[i]!);
          }, info);
          const expected = payloadLen === 0 ? 1 : Math.ceil(payloadLen / mss);
          expect(count).toBe(expected);
          expect(got).toEqual([...payload]);
          let at = 0;
          segs.forEach((s, i) => {
            expect(s.len).toBeLessThanOrEqual(mss);
            expect(s.seq).toBe((seq + at) >>> 0);
            at += s.len;
            if (v4) expect(s.id).toBe((ipId + i) & 0xffff);
            const last = i === segs.length - 1;
            const want = (flags & ~(last ? 0 : 0x09) & ~(i === 0 ? 0 : 0x80)) & 0xff;
            expect(s.flags).toBe(want);
          });
        },
      ),
      { numRuns: 200 },
    );
  });

  it('refuses what is not a whole TCP segment, and bad arguments', () => {
    const f = new Uint8Array(200);
    const out = new Uint8Array(200);
    const n = buildUdp(f, { srcMac: mac, dstMac: mac, srcIp: 1, dstIp: 2, srcPort: 1, dstPort: 2 });
    expect(segmentTcp(f.subarray(0, n), 100, out, () => {})).toBe(-1);
    const t = buildTcp(f, { srcMac: mac, dstMac: mac, srcIp: 1, dstIp: 2, srcPort: 1, dstPort: 2, seq: 0, payload: new Uint8Array(50) });
    expect(segmentTcp(f.subarray(0, t - 10), 20, out, () => {})).toBe(-1);
    expect(() => segmentTcp(f.subarray(0, t), 0, out, () => {})).toThrow(PacketError);
    expect(() => segmentTcp(f.subarray(0, t), 20, new Uint8Array(30), () => {})).toThrow(expect.objectContaining({ kind: 'buffer-too-small' }));
  });
});
