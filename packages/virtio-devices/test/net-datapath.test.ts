import { createLoopbackPair } from '@ioplane/net-backends';
import { Layer, PacketInfo, buildTcp, buildUdp, parsePacket, segmentTcp, verifyL4Checksum } from '@ioplane/packet';
import { describe, expect, it } from 'vitest';
import {
  NET_HDR_SIZE,
  NetHdr,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6,
  VIRTIO_NET_HDR_GSO_UDP,
  bit,
} from '../src/index.js';
import { RAW_DATA, ethFrame, rawGuest, twoGuests, until } from './net-harness.js';

const IP_A = 0x0ac80001;
const IP_B = 0x0ac80002;

describe('virtio-net receive', () => {
  it('mergeable RX: a 1500-byte frame spread over 256-byte buffers, num_buffers in the first header', async () => {
    const { a, b, close } = await twoGuests({}, { rxBufferSize: 256 });
    try {
      expect(b.driver.mergeable).toBe(true);
      const f = ethFrame(b.device.mac, a.device.mac, 1514, 7);
      a.driver.send(f);
      await until(() => b.received.length === 1, 'frame at B');
      expect(b.received[0]!.numBuffers).toBe(Math.ceil((NET_HDR_SIZE + 1514) / 256));
      expect(Buffer.from(b.received[0]!.frame).equals(Buffer.from(f))).toBe(true);
      expect(b.driver.stats.rxErrors).toBe(0);
    } finally {
      await close();
    }
  });

  it('mergeable RX with too few buffers: the frame is dropped and counted, the chains are kept, nothing partial is published', async () => {
    const pair = createLoopbackPair();
    const g = await rawGuest(pair.b, bit(VIRTIO_NET_F_MRG_RXBUF));
    try {
      // Three 256-byte buffers: 768 bytes, a 1000-byte frame needs four.
      for (let i = 0; i < 3; i++) g.postRx(0, RAW_DATA + i * 256, 256, i);
      const big = ethFrame(g.device.mac, Uint8Array.of(2, 0, 0, 0, 0, 1), 1000, 1);
      pair.a.send([big]);
      await until(() => g.device.netStats.rxNoBuffers === 1, 'drop counted');
      expect(g.reap(0)).toEqual([]);
      // A fourth buffer: the next frame uses the three held chains plus it, all published together.
      g.postRx(0, RAW_DATA + 3 * 256, 256, 3);
      pair.a.send([big]);
      await until(() => g.device.netStats.rxPackets === 1, 'frame received');
      await new Promise((r) => setImmediate(r));
      const used = g.reap(0);
      expect(used.map((u) => u.token)).toEqual([0, 1, 2, 3]);
      expect(used.map((u) => u.len)).toEqual([256, 256, 256, NET_HDR_SIZE + 1000 - 768]);
      const h = new NetHdr().decode(g.mem.view(RAW_DATA, 12, 'read'));
      expect(h.numBuffers).toBe(4);
      const got = new Uint8Array(1000);
      got.set(g.mem.view(RAW_DATA + 12, 244, 'read'), 0);
      got.set(g.mem.view(RAW_DATA + 256, 256, 'read'), 244);
      got.set(g.mem.view(RAW_DATA + 512, 256, 'read'), 500);
      got.set(g.mem.view(RAW_DATA + 768, 244, 'read'), 756);
      expect(Buffer.from(got).equals(Buffer.from(big))).toBe(true);
    } finally {
      g.device.detach();
      await pair.a.close();
    }
  });

  it('without MRG_RXBUF a buffer too small for the frame is kept for a smaller one; the drop is counted', async () => {
    const pair = createLoopbackPair();
    const g = await rawGuest(pair.b, 0n);
    try {
      g.postRx(0, RAW_DATA, 512, 0);
      const src = Uint8Array.of(2, 0, 0, 0, 0, 1);
      pair.a.send([ethFrame(g.device.mac, src, 1000, 1)]);
      await until(() => g.device.netStats.rxNoBuffers === 1, 'drop counted');
      const small = ethFrame(g.device.mac, src, 200, 2);
      pair.a.send([small]);
      await until(() => g.device.netStats.rxPackets === 1, 'small frame received');
      await new Promise((r) => setImmediate(r));
      expect(g.reap(0)).toEqual([{ token: 0, len: 212 }]);
      expect(new NetHdr().decode(g.mem.view(RAW_DATA, 12, 'read')).numBuffers).toBe(1);
      expect(Buffer.from(g.mem.view(RAW_DATA + 12, 200, 'read')).equals(Buffer.from(small))).toBe(true);
    } finally {
      g.device.detach();
      await pair.a.close();
    }
  });

  it('a receive queue without buffers drops and counts, and never holds up another queue (MQ)', async () => {
    const pair = createLoopbackPair();
    const g = await rawGuest(pair.b, bit(VIRTIO_NET_F_CTRL_VQ) | bit(VIRTIO_NET_F_MQ), { queuePairs: 2 });
    try {
      // VQ_PAIRS_SET 2 on the control queue (index 2N = 4).
      const ctl = RAW_DATA + 0x10000;
      g.mem.writeFrom(ctl, Uint8Array.of(4, 0, 2, 0));
      g.submit(4, g.list.clear().push(ctl, 4, false).push(ctl + 8, 1, true), 0);
      expect(g.device.queuePairs).toBe(2);
      // Buffers only on receiveq2 (queue 2); receiveq1 (queue 0) has none.
      for (let i = 0; i < 32; i++) g.postRx(2, RAW_DATA + i * 2048, 2048, i);
      const frames = [];
      for (let i = 0; i < 32; i++) {
        const ub = new Uint8Array(64);
        const n = buildUdp(ub, { srcMac: Uint8Array.of(2, 0, 0, 0, 0, 1), dstMac: g.device.mac, srcIp: IP_A + i, dstIp: IP_B, srcPort: 1000 + i, dstPort: 7, payload: new Uint8Array(8) });
        frames.push(ub.subarray(0, n));
      }
      pair.a.send(frames);
      await until(() => g.device.netStats.rxPackets + g.device.netStats.rxNoBuffers === 32, 'all frames handled');
      await new Promise((r) => setImmediate(r));
      const s = g.device.netStats;
      // The flows hash over both queues: some land on queue 2 and are delivered, the rest are dropped.
      expect(s.rxPackets).toBeGreaterThan(0);
      expect(s.rxNoBuffers).toBeGreaterThan(0);
      expect(g.reap(2).length).toBe(s.rxPackets);
      expect(g.reap(0)).toEqual([]);
    } finally {
      g.device.detach();
      await pair.a.close();
    }
  });

  it('automatic receive steering: a reply flow arrives on the queue pair its request left from (§5.1.6.5.6.1)', async () => {
    const { a, b, close } = await twoGuests({ queuePairs: 2 });
    try {
      expect(a.driver.queuePairs).toBe(2);
      for (const pair of [0, 1]) {
        b.received.length = 0;
        for (let i = 0; i < 8; i++) {
          const out = new Uint8Array(100);
          // A flow from A on `pair`; B answers with the mirrored flow.
          const n = buildUdp(out, { srcMac: a.device.mac, dstMac: b.device.mac, srcIp: IP_A, dstIp: IP_B, srcPort: 4000 + i, dstPort: 53, payload: new Uint8Array(10) });
          a.driver.send(out.subarray(0, n), { pair });
        }
        await until(() => b.received.length === 8, 'requests at B');
        a.received.length = 0;
        for (let i = 0; i < 8; i++) {
          const out = new Uint8Array(100);
          const n = buildUdp(out, { srcMac: b.device.mac, dstMac: a.device.mac, srcIp: IP_B, dstIp: IP_A, srcPort: 53, dstPort: 4000 + i, payload: new Uint8Array(10) });
          b.driver.send(out.subarray(0, n), { pair: 0 });
        }
        await until(() => a.received.length === 8, 'replies at A');
        expect(a.received.map((r) => r.queue)).toEqual(Array(8).fill(pair));
      }
    } finally {
      await close();
    }
  });
});

describe('virtio-net transmit offloads', () => {
  it('NEEDS_CSUM: the device completes the UDP/TCP checksum; the receiver sees it valid and DATA_VALID', async () => {
    const { a, b, close } = await twoGuests();
    try {
      const info = new PacketInfo();
      const out = new Uint8Array(1600);
      const n = buildUdp(out, { srcMac: a.device.mac, dstMac: b.device.mac, srcIp: IP_A, dstIp: IP_B, srcPort: 5000, dstPort: 6000, payload: new Uint8Array(300).fill(0x5a) });
      const udp = out.slice(0, n);
      const t = buildTcp(out, { srcMac: a.device.mac, dstMac: b.device.mac, srcIp: IP_A, dstIp: IP_B, srcPort: 5000, dstPort: 80, seq: 1, payload: new Uint8Array(1000).fill(3) });
      const tcp = out.slice(0, t);
      // Spoil the checksums: the offload must recompute them.
      udp[40] = udp[40]! ^ 0xff;
      tcp[50] = tcp[50]! ^ 0xff;
      a.driver.send(udp, { offloadChecksum: true });
      a.driver.send(tcp, { offloadChecksum: true });
      await until(() => b.received.length === 2, 'frames at B');
      for (const r of b.received) {
        parsePacket(r.frame, info);
        expect(verifyL4Checksum(r.frame, info)).toBe(true);
        expect(r.flags).toBe(VIRTIO_NET_HDR_F_DATA_VALID);
      }
      expect(a.device.netStats.txCsumCompleted).toBe(2);
      expect(b.device.netStats.rxCsumValid).toBe(2);
    } finally {
      await close();
    }
  });

  it('without CSUM negotiated the driver computes the checksum itself; a corrupt checksum is not marked DATA_VALID', async () => {
    const { a, b, close } = await twoGuests({}, { txOffloads: false });
    try {
      const out = new Uint8Array(600);
      const n = buildUdp(out, { srcMac: a.device.mac, dstMac: b.device.mac, srcIp: IP_A, dstIp: IP_B, srcPort: 1, dstPort: 2, payload: new Uint8Array(100).fill(1) });
      const f = out.slice(0, n);
      f[40] = f[40]! ^ 0xff;
      a.driver.send(f, { offloadChecksum: true });
      const bad = out.slice(0, n);
      bad[n - 1] = bad[n - 1]! ^ 1;
      a.driver.send(bad);
      await until(() => b.received.length === 2, 'frames at B');
      expect(a.device.netStats.txCsumCompleted).toBe(0);
      expect(b.received[0]!.flags).toBe(VIRTIO_NET_HDR_F_DATA_VALID);
      expect(b.received[1]!.flags).toBe(0);
    } finally {
      await close();
    }
  });

  for (const v6 of [false, true]) {
    it(`TSO over IPv${v6 ? 6 : 4}: segmented in software, the same segments as segmentTcp, checksums valid`, async () => {
      const { a, b, close } = await twoGuests();
      try {
        const out = new Uint8Array(70000);
        const payload = new Uint8Array(20000);
        for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
        const src = v6 ? Uint8Array.of(0xfd, 0, ...new Array<number>(13).fill(0), 1) : IP_A;
        const dst = v6 ? Uint8Array.of(0xfd, 0, ...new Array<number>(13).fill(0), 2) : IP_B;
        const n = buildTcp(out, { srcMac: a.device.mac, dstMac: b.device.mac, srcIp: src, dstIp: dst, srcPort: 40000, dstPort: 80, seq: 1000, flags: 0x18, payload });
        const big = out.slice(0, n);
        const expected: Uint8Array[] = [];
        segmentTcp(big, 1448, new Uint8Array(2000), (s, l) => expected.push(s.slice(0, l)));
        expect(a.driver.sendTso(big, 1448)).toBe(true);
        await until(() => b.received.length === expected.length, 'segments at B');
        const info = new PacketInfo();
        b.received.forEach((r, i) => {
          expect(Buffer.from(r.frame).equals(Buffer.from(expected[i]!))).toBe(true);
          parsePacket(r.frame, info);
          expect(info.layers & Layer.TCP).not.toBe(0);
          expect(verifyL4Checksum(r.frame, info)).toBe(true);
        });
        expect(a.device.netStats.txGsoPackets).toBe(1);
        expect(a.device.netStats.txGsoSegments).toBe(Math.ceil(20000 / 1448));
      } finally {
        await close();
      }
    });
  }
});

describe('virtio-net malformed TX chains', () => {
  it('each is dropped and counted, its chain returned; the device keeps running', async () => {
    const pair = createLoopbackPair();
    const features = bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6);
    const g = await rawGuest(pair.a, features);
    const sent: Uint8Array[] = [];
    pair.b.onReceive((f) => sent.push(f.slice()));
    try {
      const mem = g.mem;
      const good = ethFrame(Uint8Array.of(2, 0, 0, 0, 0, 2), g.device.mac, 100, 3);
      const put = (at: number, h: Partial<NetHdr>, frame: Uint8Array): number => {
        const b = new Uint8Array(12 + frame.length);
        Object.assign(new NetHdr(), h).encode(b, 0);
        b.set(frame, 12);
        mem.writeFrom(at, b);
        return b.length;
      };
      const udpOut = new Uint8Array(200);
      const udpLen = buildUdp(udpOut, { srcMac: g.device.mac, dstMac: Uint8Array.of(2, 0, 0, 0, 0, 2), srcIp: IP_A, dstIp: IP_B, srcPort: 1, dstPort: 2, payload: new Uint8Array(100) });
      const udp = udpOut.subarray(0, udpLen);
      const L = g.list;
      let at = RAW_DATA;
      const cases: [string, () => void][] = [
        ['device-writable descriptor', () => g.submit(1, L.clear().push(at, put(at, {}, good), false).push(at + 4096, 64, true), 1)],
        ['shorter than the header', () => g.submit(1, L.clear().push(at, 8, false), 2)],
        ['runt frame', () => g.submit(1, L.clear().push(at, put(at, {}, new Uint8Array(10)), false), 3)],
        ['frame above the MTU', () => g.submit(1, L.clear().push(at, put(at, {}, new Uint8Array(1600)), false), 4)],
        ['csum offsets past the frame', () => g.submit(1, L.clear().push(at, put(at, { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 90, csumOffset: 16 }, good), false), 5)],
        ['DATA_VALID on TX', () => g.submit(1, L.clear().push(at, put(at, { flags: VIRTIO_NET_HDR_F_DATA_VALID }, good), false), 6)],
        ['UFO not negotiated', () => g.submit(1, L.clear().push(at, put(at, { flags: 1, gsoType: VIRTIO_NET_HDR_GSO_UDP, gsoSize: 100, csumStart: 34, csumOffset: 6 }, udp), false), 7)],
        ['TCPV4 gso on a UDP packet', () => g.submit(1, L.clear().push(at, put(at, { flags: 1, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 100, csumStart: 34, csumOffset: 6 }, udp), false), 8)],
        ['gso_size making too many segments', () => {
          const t = new Uint8Array(40000);
          const n = buildTcp(t, { srcMac: g.device.mac, dstMac: Uint8Array.of(2, 0, 0, 0, 0, 2), srcIp: IP_A, dstIp: IP_B, srcPort: 1, dstPort: 2, seq: 0, payload: new Uint8Array(30000) });
          g.submit(1, L.clear().push(at, put(at, { flags: 1, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1, csumStart: 34, csumOffset: 16 }, t.subarray(0, n)), false), 9);
        }],
        ['TSO whose segments would copy 2 KiB of IPv6 extension headers 250 times', () => {
          const t = new Uint8Array(70000);
          const v6a = Uint8Array.of(0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1);
          const v6b = Uint8Array.of(0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2);
          const n = buildTcp(t, { srcMac: g.device.mac, dstMac: Uint8Array.of(2, 0, 0, 0, 0, 2), srcIp: v6a, dstIp: v6b, srcPort: 1, dstPort: 2, seq: 0, payload: new Uint8Array(60000) });
          // Insert a 2008-byte Destination Options header (PadN options) after the IPv6 header.
          const ext = new Uint8Array(2008);
          ext[0] = 6;
          ext[1] = 250;
          let o = 2;
          while (o < ext.length) {
            const pad = Math.min(255, ext.length - o - 2);
            ext[o] = 1;
            ext[o + 1] = pad;
            o += 2 + pad;
          }
          const f = new Uint8Array(n + ext.length);
          f.set(t.subarray(0, 54), 0);
          f.set(ext, 54);
          f.set(t.subarray(54, n), 54 + ext.length);
          f[20] = 60;
          const pl = ((f[18]! << 8) | f[19]!) + ext.length;
          f[18] = pl >>> 8;
          f[19] = pl & 0xff;
          g.submit(1, L.clear().push(at, put(at, { flags: 1, gsoType: VIRTIO_NET_HDR_GSO_TCPV6, gsoSize: 240, csumStart: 54 + 2008, csumOffset: 16 }, f), false), 10);
        }],
      ];
      for (const [, run] of cases) {
        run();
        at += 0x10000;
      }
      await new Promise((r) => setImmediate(r));
      const used = g.reap(1);
      expect(used.map((u) => u.token)).toEqual(cases.map((_, i) => i + 1));
      expect(g.device.netStats.txMalformed).toBe(cases.length);
      expect(g.errors.filter((e) => e.kind === 'bad-request').length).toBe(cases.length);
      expect(g.errors.some((e) => e.message.includes('header bytes each exceed'))).toBe(true);
      expect(g.device.running).toBe(true);
      // A good packet still goes out.
      g.submit(1, L.clear().push(at, put(at, {}, good), false), 99);
      await until(() => sent.length === 1, 'good frame sent');
      expect(Buffer.from(sent[0]!).equals(Buffer.from(good))).toBe(true);
      expect(g.device.netStats.txZeroCopy).toBe(1);
    } finally {
      g.device.detach();
      await pair.b.close();
    }
  });
});
