import { describe, expect, it } from 'vitest';
import {
  completePartialChecksum, completePartialChecksumOrThrow, computeIpv4HeaderChecksum, internetChecksum, onesComplementSum,
  PacketError, PacketInfo, parsePacket, pseudoHeaderSum, verifyIpv4HeaderChecksum, verifyL4Checksum, buildUdp, parseIpv4,
  parseMac, parseIpv6, computeL4Checksum, fillL4Checksum,
} from '../src/index.js';
import { hex } from './helpers.js';

describe('Internet checksum', () => {
  it('matches the RFC 1071 §3 worked example', () => {
    // RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2 (folded); the checksum is its complement.
    const b = hex('0001f203f4f5f6f7');
    expect(onesComplementSum(b, 0, b.length)).toBe(0xddf2);
    expect(internetChecksum(b)).toBe(0x220d);
  });

  it('computes the well-known IPv4 header checksum b861', () => {
    const h = hex('4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7');
    expect(computeIpv4HeaderChecksum(h, 0)).toBe(0xb861);
    h[10] = 0xb8;
    h[11] = 0x61;
    expect(verifyIpv4HeaderChecksum(h, 0)).toBe(true);
    h[11] = 0x62;
    expect(verifyIpv4HeaderChecksum(h, 0)).toBe(false);
  });

  it('pads an odd final byte with zero', () => {
    expect(onesComplementSum(hex('ab'), 0, 1)).toBe(0xab00);
    expect(onesComplementSum(hex('0102ab'), 0, 3)).toBe(0x0102 + 0xab00);
  });

  it('verifies and fills UDP checksums over IPv4 and IPv6, and treats an IPv4 zero as none (RFC 768)', () => {
    const out = new Uint8Array(200);
    const info = new PacketInfo();
    const mac = parseMac('02:00:00:00:00:01');
    for (const [src, dst] of [[parseIpv4('10.200.0.1'), parseIpv4('10.200.0.2')], [parseIpv6('fd00::1'), parseIpv6('fd00::2')]] as const) {
      const n = buildUdp(out, { srcMac: mac, dstMac: mac, srcIp: src, dstIp: dst, srcPort: 1234, dstPort: 53, payload: hex('deadbeef01') });
      const f = out.subarray(0, n);
      parsePacket(f, info);
      expect(verifyL4Checksum(f, info)).toBe(true);
      f[n - 1] = f[n - 1]! ^ 1;
      expect(verifyL4Checksum(f, info)).toBe(false);
      expect(fillL4Checksum(f, info)).toBe(true);
      expect(verifyL4Checksum(f, info)).toBe(true);
    }
    const n = buildUdp(out, { srcMac: mac, dstMac: mac, srcIp: 1, dstIp: 2, srcPort: 1, dstPort: 2, checksum: false });
    parsePacket(out.subarray(0, n), info);
    expect(verifyL4Checksum(out.subarray(0, n), info)).toBe(true);
  });

  it('completes a NEEDS_CSUM partial checksum to the full one (VirtIO 1.2 §5.1.6.2)', () => {
    const out = new Uint8Array(200);
    const info = new PacketInfo();
    const mac = parseMac('02:00:00:00:00:01');
    const n = buildUdp(out, { srcMac: mac, dstMac: mac, srcIp: parseIpv4('10.0.0.1'), dstIp: parseIpv4('10.0.0.2'), srcPort: 9, dstPort: 7, payload: hex('0102030405') });
    const f = out.subarray(0, n);
    parsePacket(f, info);
    const full = computeL4Checksum(f, info);
    // The driver leaves the uncomplemented pseudo-header sum in the field.
    const p = pseudoHeaderSum(f, info);
    f[info.l4Offset + 6] = p >>> 8;
    f[info.l4Offset + 7] = p & 0xff;
    expect(completePartialChecksum(f, info.l4Offset, 6)).toBe(true);
    expect((f[info.l4Offset + 6]! << 8) | f[info.l4Offset + 7]!).toBe(full);
  });

  it('refuses csum offsets outside the frame and changes nothing', () => {
    const f = new Uint8Array(20).fill(7);
    expect(completePartialChecksum(f, 18, 1)).toBe(false);
    expect(completePartialChecksum(f, -1, 0)).toBe(false);
    expect(completePartialChecksum(f, 0, 19)).toBe(false);
    expect(completePartialChecksum(f, 0, 18, 10)).toBe(false);
    expect(completePartialChecksum(f, 1.5, 0)).toBe(false);
    expect([...f].every((b) => b === 7)).toBe(true);
    expect(() => completePartialChecksumOrThrow(f, 30, 0)).toThrow(PacketError);
    expect(completePartialChecksum(f, 0, 18)).toBe(true);
  });
});

describe('IPv6 pseudo-header with a Routing header (RFC 8200 §8.1)', () => {
  it('uses the final destination: Segment List[0] of an SRH with segments left, the Destination Address when none are left', () => {
    const mac = parseMac('02:00:00:00:00:01');
    const src = parseIpv6('fd00::1');
    const final = parseIpv6('fd00::99');
    const out = new Uint8Array(300);
    // Build UDP to the final destination, then splice in an SRH (type 4) with one segment and
    // rewrite the Destination Address to the next hop: the checksum must still verify.
    const n = buildUdp(out, { srcMac: mac, dstMac: mac, srcIp: src, dstIp: final, srcPort: 1, dstPort: 2, payload: hex('0102') });
    const udp = out.slice(54, n);
    const srh = new Uint8Array(8 + 32);
    srh.set([17, 4, 4, 1, 1, 0, 0, 0]); // next UDP, hdr ext len 4 (40 bytes), type 4, segments left 1, last entry 1
    srh.set(final, 8);
    srh.set(parseIpv6('fd00::50'), 24);
    const f = new Uint8Array(54 + srh.length + udp.length);
    f.set(out.subarray(0, 54));
    f[18] = 0;
    f[19] = srh.length + udp.length;
    f[20] = 43;
    f.set(parseIpv6('fd00::50'), 38);
    f.set(srh, 54);
    f.set(udp, 54 + srh.length);
    const info = new PacketInfo();
    parsePacket(f, info);
    expect(info.anomalies).toBe(0);
    expect(info.ipv6FinalDstOffset).toBe(62);
    expect(verifyL4Checksum(f, info)).toBe(true);
    // With no segments left the Destination Address is the final one; ours is not, so it fails.
    f[57] = 0;
    parsePacket(f, info);
    expect(info.ipv6FinalDstOffset).toBe(38);
    expect(verifyL4Checksum(f, info)).toBe(false);
  });
});
