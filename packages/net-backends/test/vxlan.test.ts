import { createSocket, type Socket } from 'node:dgram';
import { buildUdp, parseIpv4, parseMac } from '@ioplane/packet';
import { describe, expect, it } from 'vitest';
import { NetBackendError, VxlanEndpoint } from '../src/index.js';
import { testFrame, testNetBackend, waitFor } from '../src/testing.js';

async function pair(): Promise<{ a: ReturnType<VxlanEndpoint['attach']>; b: ReturnType<VxlanEndpoint['attach']>; cleanup: () => Promise<void> }> {
  const ea = await VxlanEndpoint.open({ local: { address: '127.0.0.1', port: 0 }, sourceSockets: 2 });
  const eb = await VxlanEndpoint.open({ local: { address: '127.0.0.1', port: 0 }, sourceSockets: 2 });
  const a = ea.attach({ vni: 4242, remotes: [{ address: '127.0.0.1', port: eb.local.port }], remotePort: eb.local.port });
  const b = eb.attach({ vni: 4242, remotes: [{ address: '127.0.0.1', port: ea.local.port }], remotePort: ea.local.port });
  return { a, b, cleanup: async () => { await ea.close(); await eb.close(); } };
}

testNetBackend('VXLAN (two endpoints on 127.0.0.1)', pair, { lossless: false, peerSeesClose: false });

async function rawSocket(): Promise<{ s: Socket; port: number; got: { msg: Buffer; port: number }[] }> {
  const s = createSocket('udp4');
  const got: { msg: Buffer; port: number }[] = [];
  s.on('message', (msg, r) => got.push({ msg, port: r.port }));
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  return { s, port: s.address().port, got };
}

const MAC_X = parseMac('02:aa:00:00:00:01');
const MAC_Y = parseMac('02:aa:00:00:00:02');

function vxlanDatagram(vni: number, inner: Uint8Array, flags = 0x08): Buffer {
  const d = Buffer.alloc(8 + inner.length);
  d[0] = flags;
  d[4] = vni >>> 16;
  d[5] = (vni >>> 8) & 0xff;
  d[6] = vni & 0xff;
  d.set(inner, 8);
  return d;
}

describe('VXLAN specifics (RFC 7348)', () => {
  it('puts the I flag, the VNI and zero reserved bits on the wire, to port 4789 by default', async () => {
    const ep = await VxlanEndpoint.open({ local: { address: '127.0.0.1', port: 0 } });
    const raw = await rawSocket();
    try {
      const net = ep.attach({ vni: 0xabcdef, remotes: [{ address: '127.0.0.1', port: raw.port }] });
      expect(net.floodList).toEqual([{ address: '127.0.0.1', port: raw.port }]);
      expect(ep.attach({ vni: 7 }).floodList).toEqual([]);
      const f = testFrame(64, 1, 1);
      expect(net.send([f])).toBe(1);
      await waitFor(() => raw.got.length === 1, 'the datagram');
      const m = raw.got[0]!.msg;
      expect([...m.subarray(0, 8)]).toEqual([0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
      expect(Buffer.compare(m.subarray(8), Buffer.from(f))).toBe(0);
      expect(ep.sourcePorts).toContain(raw.got[0]!.port);
      // A frame to nowhere (no remotes, nothing learned) is dropped and counted.
      const lonely = ep.attach({ vni: 8 });
      expect(lonely.send([f])).toBe(1);
      expect(lonely.stats.txDrops).toBe(1);
    } finally {
      await ep.close();
      raw.s.close();
    }
  });

  it('derives the outer source port from the inner flow: one flow one port, flows spread', async () => {
    const ep = await VxlanEndpoint.open({ local: { address: '127.0.0.1', port: 0 }, sourceSockets: 8 });
    const raw = await rawSocket();
    try {
      const net = ep.attach({ vni: 1, remotes: [{ address: '127.0.0.1', port: raw.port }] });
      const out = new Uint8Array(200);
      const frames: Uint8Array[] = [];
      for (let flow = 0; flow < 32; flow++) {
        for (let rep = 0; rep < 3; rep++) {
          const n = buildUdp(out, { srcMac: MAC_X, dstMac: MAC_Y, srcIp: parseIpv4('10.200.0.1'), dstIp: parseIpv4('10.200.0.2'), srcPort: 1000 + flow, dstPort: 53 });
          frames.push(out.slice(0, n));
        }
      }
      expect(net.send(frames)).toBe(frames.length);
      await waitFor(() => raw.got.length === frames.length, 'all datagrams');
      const portOfFlow = new Map<number, Set<number>>();
      for (const g of raw.got) {
        const flow = g.msg.readUInt16BE(8 + 34) - 1000;
        if (!portOfFlow.has(flow)) portOfFlow.set(flow, new Set());
        portOfFlow.get(flow)!.add(g.port);
      }
      for (const ports of portOfFlow.values()) expect(ports.size).toBe(1);
      const used = new Set(raw.got.map((g) => g.port));
      expect(used.size).toBeGreaterThanOrEqual(4);
      for (const f of frames) expect(ep.sourcePorts[net.sourcePortIndex(f)]).toBeDefined();
    } finally {
      await ep.close();
      raw.s.close();
    }
  });

  it('learns inner source MACs at the outer source address and then sends unicast only there (RFC 7348 §4.1)', async () => {
    let now = 1_000;
    const ep = await VxlanEndpoint.open({ local: { address: '127.0.0.1', port: 0 } });
    const vtepB = await rawSocket();
    const vtepC = await rawSocket();
    try {
      // Both raw VTEPs listen on their own ports; learned entries use remotePort, so point it at B.
      const net = ep.attach({ vni: 5, remotes: [{ address: '127.0.0.1', port: vtepB.port }, { address: '127.0.0.1', port: vtepC.port }], remotePort: vtepB.port, ageingMs: 10_000, now: () => now });
      let got = 0;
      net.onReceive(() => got++);
      // Broadcast floods to both.
      const bcast = testFrame(64, 1, 1);
      bcast.fill(0xff, 0, 6);
      net.send([bcast]);
      await waitFor(() => vtepB.got.length === 1 && vtepC.got.length === 1, 'flooded copies');
      // A frame from MAC_Y arrives from 127.0.0.1: learned.
      const fromY = testFrame(64, 1, 2);
      fromY.set(MAC_Y, 6);
      vtepC.s.send(vxlanDatagram(5, fromY), ep.local.port, '127.0.0.1');
      await waitFor(() => got === 1, 'the decapsulated frame');
      expect(net.fdbEntries()).toEqual([{ mac: '02:aa:00:00:00:02', address: '127.0.0.1', port: vtepB.port, static: false, ageMs: 0 }]);
      // Unicast to MAC_Y now goes to the learned VTEP only.
      const toY = testFrame(64, 1, 3);
      toY.set(MAC_Y, 0);
      net.send([toY]);
      await waitFor(() => vtepB.got.length === 2, 'the unicast');
      expect(vtepC.got.length).toBe(1);
      // After the ageing time, the entry is forgotten and the frame floods again.
      now += 10_001;
      net.send([toY]);
      await waitFor(() => vtepB.got.length === 3 && vtepC.got.length === 2, 'the flood after ageing');
      expect(net.fdbEntries()).toEqual([]);
    } finally {
      await ep.close();
      vtepB.s.close();
      vtepC.s.close();
    }
  });

  it('keeps static entries, bounds the table, and can learn nothing', async () => {
    const ep = await VxlanEndpoint.open({ local: { address: '127.0.0.1', port: 0 } });
    const raw = await rawSocket();
    try {
      const net = ep.attach({ vni: 9, maxFdbEntries: 2, fdb: [{ mac: '02:aa:00:00:00:02', address: '127.0.0.2', port: 4789 }] });
      net.onReceive(() => {});
      for (let i = 1; i <= 4; i++) {
        const f = testFrame(64, 1, i);
        f.set([0x02, 0xaa, 0, 0, 0, i], 6);
        raw.s.send(vxlanDatagram(9, f), ep.local.port, '127.0.0.1');
      }
      await waitFor(() => net.stats.rxPackets === 4, 'four frames');
      const entries = net.fdbEntries();
      expect(entries.length).toBe(2);
      expect(entries.find((e) => e.mac === '02:aa:00:00:00:02')).toMatchObject({ address: '127.0.0.2', static: true });
      expect(net.fdbFull).toBe(2);
      expect(net.removeFdb('02:aa:00:00:00:02')).toBe(true);
      const quiet = ep.attach({ vni: 10, learning: false });
      quiet.onReceive(() => {});
      raw.s.send(vxlanDatagram(10, testFrame(64, 1, 1)), ep.local.port, '127.0.0.1');
      await waitFor(() => quiet.stats.rxPackets === 1, 'the frame');
      expect(quiet.fdbEntries()).toEqual([]);
    } finally {
      await ep.close();
      raw.s.close();
    }
  });

  it('drops and counts runts, a clear I flag, unknown VNIs and inner VLAN tags (RFC 7348 §5, §6.1)', async () => {
    const ep = await VxlanEndpoint.open({ local: { address: '127.0.0.1', port: 0 } });
    const raw = await rawSocket();
    try {
      const net = ep.attach({ vni: 3 });
      const tagged = ep.attach({ vni: 4, allowInnerVlan: true });
      let got = 0;
      net.onReceive(() => got++);
      let gotTagged = 0;
      tagged.onReceive(() => gotTagged++);
      const vlanFrame = testFrame(64, 1, 1);
      vlanFrame.set([0x81, 0x00, 0x00, 0x05], 12);
      const send = (d: Buffer): void => void raw.s.send(d, ep.local.port, '127.0.0.1');
      send(Buffer.alloc(10));
      send(vxlanDatagram(3, testFrame(64, 1, 1), 0x00));
      send(vxlanDatagram(99, testFrame(64, 1, 1)));
      send(vxlanDatagram(3, vlanFrame));
      send(vxlanDatagram(4, vlanFrame));
      send(vxlanDatagram(3, testFrame(64, 1, 1), 0xff));
      await waitFor(() => ep.stats.rxDatagrams === 6, 'six datagrams');
      expect(ep.stats).toEqual({ rxDatagrams: 6, rxRunts: 1, rxBadHeader: 1, rxUnknownVni: 1 });
      expect(net.stats.rxDrops).toBe(1);
      expect(gotTagged).toBe(1);
      // Reserved bits set (flags 0xff) are ignored on receipt.
      await waitFor(() => got === 1, 'the frame with reserved bits set');
    } finally {
      await ep.close();
      raw.s.close();
    }
  });

  it('rejects bad configuration with typed errors', async () => {
    const ep = await VxlanEndpoint.open({ local: { address: '127.0.0.1', port: 0 } });
    try {
      expect(() => ep.attach({ vni: 1 << 24 })).toThrow(expect.objectContaining({ kind: 'invalid-config', field: 'vni' }));
      ep.attach({ vni: 1 });
      expect(() => ep.attach({ vni: 1 })).toThrow(NetBackendError);
      expect(() => ep.attach({ vni: 2, remotes: [{ address: '::1' }] })).toThrow(expect.objectContaining({ field: 'remote' }));
      expect(() => ep.attach({ vni: 3, fdb: [{ mac: 'zz', address: '127.0.0.1' }] })).toThrow(expect.objectContaining({ kind: 'invalid-config', field: 'fdb.mac' }));
      expect(() => ep.attach({ vni: 4, mtu: 9500 })).toThrow(expect.objectContaining({ field: 'mtu' }));
    } finally {
      await ep.close();
    }
    await expect(VxlanEndpoint.open({ local: { address: '127.0.0.1', port: 0 }, sourceSockets: 0 })).rejects.toMatchObject({ kind: 'invalid-config' });
  });
});

testNetBackend('VXLAN over IPv6 (two endpoints on ::1)', async () => {
  const ea = await VxlanEndpoint.open({ local: { address: '::1', port: 0 }, sourceSockets: 1 });
  const eb = await VxlanEndpoint.open({ local: { address: '::1', port: 0 }, sourceSockets: 1 });
  const a = ea.attach({ vni: 1, remotes: [{ address: '::1', port: eb.local.port }] });
  const b = eb.attach({ vni: 1, remotes: [{ address: '::1', port: ea.local.port }] });
  return { a, b, cleanup: async () => { await ea.close(); await eb.close(); } };
}, { lossless: false, peerSeesClose: false });
