import { describe, expect, it } from 'vitest';
import {
  NET_CFG_MAC,
  RxFilter,
  VIRTIO_NET_CTRL_MQ,
  VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
  VIRTIO_NET_CTRL_RX_ALLUNI,
  VIRTIO_NET_CTRL_RX_NOBCAST,
  VIRTIO_NET_CTRL_RX_NOMULTI,
  VIRTIO_NET_CTRL_RX_NOUNI,
  VirtioError,
} from '../src/index.js';
import { ethFrame, twoGuests, until } from './net-harness.js';

const OTHER = Uint8Array.of(0x52, 0x54, 0, 0, 0, 0x77);
const MCAST = Uint8Array.of(0x01, 0x00, 0x5e, 0, 0, 0xfb);
const MCAST2 = Uint8Array.of(0x33, 0x33, 0, 0, 0, 1);
const BCAST = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff);

function tagged(dst: Uint8Array, src: Uint8Array, vid: number): Uint8Array {
  const f = ethFrame(dst, src, 80, vid);
  f[12] = 0x81;
  f[13] = 0x00;
  f[14] = (vid >>> 8) & 0x0f;
  f[15] = vid & 0xff;
  return f;
}

describe('RxFilter (§5.1.6.5.1–3)', () => {
  it('promiscuous by default; then unicast by MAC or table, multicast by allmulti or table, broadcast unless NOBCAST', () => {
    const f = new RxFilter();
    f.mac.set(Uint8Array.of(0x52, 0x54, 0, 0, 0, 1));
    const me = ethFrame(f.mac, OTHER, 60, 1);
    const them = ethFrame(OTHER, f.mac, 60, 1);
    const m = ethFrame(MCAST, OTHER, 60, 1);
    const b = ethFrame(BCAST, OTHER, 60, 1);
    expect([me, them, m, b].map((x) => f.accepts(x))).toEqual([true, true, true, true]);
    f.promisc = false;
    expect([me, them, m, b].map((x) => f.accepts(x))).toEqual([true, false, false, true]);
    f.allMulti = true;
    expect(f.accepts(m)).toBe(true);
    f.allMulti = false;
    f.table.set(OTHER, 0);
    f.uniCount = 1;
    f.table.set(MCAST, 6);
    f.multiCount = 1;
    expect([me, them, m, b].map((x) => f.accepts(x))).toEqual([true, true, true, true]);
    expect(f.accepts(ethFrame(MCAST2, OTHER, 60, 1))).toBe(false);
    f.noBcast = true;
    f.noMulti = true;
    f.noUni = true;
    expect([me, them, m, b].map((x) => f.accepts(x))).toEqual([false, false, false, false]);
  });

  it('VLAN filter: tagged frames pass only for VIDs in the table', () => {
    const f = new RxFilter();
    f.promisc = false;
    f.vlanFiltering = true;
    const t = tagged(f.mac, OTHER, 100);
    expect(f.accepts(t)).toBe(false);
    f.addVlan(100);
    expect(f.accepts(t)).toBe(true);
    expect(f.accepts(tagged(f.mac, OTHER, 101))).toBe(false);
    f.delVlan(100);
    expect(f.accepts(t)).toBe(false);
    // Untagged frames are not affected.
    expect(f.accepts(ethFrame(f.mac, OTHER, 60, 1))).toBe(true);
  });
});

describe('virtio-net control virtqueue (§5.1.6.5)', () => {
  it('RX modes, MAC table, MAC address and VLAN filter, applied to received frames', async () => {
    const { a, b, close } = await twoGuests();
    try {
      const A = a.device.mac;
      let sent = 0;
      /** Sends each frame from A and reports which B received. */
      const probe = async (frames: Uint8Array[]): Promise<boolean[]> => {
        b.received.length = 0;
        const rxBefore = b.device.netStats.rxPackets;
        const before = rxBefore + b.device.netStats.rxFiltered;
        for (const f of frames) a.driver.send(f);
        sent += frames.length;
        await until(() => b.device.netStats.rxPackets + b.device.netStats.rxFiltered === before + frames.length, 'frames handled');
        await until(() => b.received.length === b.device.netStats.rxPackets - rxBefore, 'delivered to the driver');
        return frames.map((f) => b.received.some((r) => Buffer.from(r.frame).equals(Buffer.from(f))));
      };
      const toB = ethFrame(b.device.mac, A, 60, 1);
      const toOther = ethFrame(OTHER, A, 60, 2);
      const mc = ethFrame(MCAST, A, 60, 3);
      const bc = ethFrame(BCAST, A, 60, 4);
      // The device starts promiscuous (QEMU's reset state).
      expect(await probe([toB, toOther, mc, bc])).toEqual([true, true, true, true]);
      await b.driver.setPromisc(false);
      expect(await probe([toB, toOther, mc, bc])).toEqual([true, false, false, true]);
      await b.driver.setAllMulti(true);
      expect(await probe([mc])).toEqual([true]);
      await b.driver.setAllMulti(false);
      await b.driver.setMacTable([OTHER], [MCAST]);
      expect(await probe([toB, toOther, mc, ethFrame(MCAST2, A, 60, 5)])).toEqual([true, true, true, false]);
      await b.driver.setRxMode(VIRTIO_NET_CTRL_RX_NOBCAST, true);
      await b.driver.setRxMode(VIRTIO_NET_CTRL_RX_NOMULTI, true);
      expect(await probe([bc, mc])).toEqual([false, false]);
      await b.driver.setRxMode(VIRTIO_NET_CTRL_RX_NOUNI, true);
      expect(await probe([toB])).toEqual([false]);
      await b.driver.setRxMode(VIRTIO_NET_CTRL_RX_NOUNI, false);
      await b.driver.setMacTable([], []);
      await b.driver.setRxMode(VIRTIO_NET_CTRL_RX_ALLUNI, true);
      expect(await probe([toOther])).toEqual([true]);
      await b.driver.setRxMode(VIRTIO_NET_CTRL_RX_ALLUNI, false);
      // MAC_ADDR_SET: the new address is the device's, in config space too.
      const NEW = Uint8Array.of(0x52, 0x54, 0, 0, 0, 0x42);
      await b.driver.setMac(NEW);
      expect(Array.from({ length: 6 }, (_, i) => b.device.readConfig(NET_CFG_MAC + i, 1))).toEqual(Array.from(NEW));
      expect(await probe([toB, ethFrame(NEW, A, 60, 6)])).toEqual([false, true]);
      // VLAN filter: tagged frames need their VID added.
      const t = tagged(NEW, A, 300);
      expect(await probe([t])).toEqual([false]);
      await b.driver.addVlan(300);
      expect(await probe([t])).toEqual([true]);
      await b.driver.delVlan(300);
      expect(await probe([t])).toEqual([false]);
      expect(b.device.netStats.rxFiltered).toBeGreaterThan(0);
      expect(sent).toBeGreaterThan(0);
      expect(b.errors).toEqual([]);
    } finally {
      await close();
    }
  });

  it('answers VIRTIO_NET_ERR to bad commands, counted, and the queue goes on', async () => {
    const { a, close } = await twoGuests({ queuePairs: 2 });
    try {
      const bad: [number, number, Uint8Array][] = [
        [9, 0, new Uint8Array(0)], // unknown class
        [0, 9, Uint8Array.of(1)], // unknown RX command
        [0, 0, Uint8Array.of(1, 1)], // RX command with 2 data bytes
        [1, 0, Uint8Array.of(5, 0, 0, 0)], // MAC table promising 5 entries it lacks
        [1, 1, Uint8Array.of(1, 2, 3, 4, 5, 6)], // multicast address as the MAC
        [2, 0, Uint8Array.of(0, 0x10)], // VLAN 4096
        [VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, Uint8Array.of(3, 0)], // more pairs than offered
        [VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, Uint8Array.of(0, 0)], // zero pairs
        [3, 0, Uint8Array.of(1)], // announce ack with data
      ];
      for (const [cls, cmd, data] of bad) {
        const e = await a.driver.command(cls, cmd, data).then(() => undefined, (x: unknown) => x);
        expect(e, `class ${cls} command ${cmd}`).toBeInstanceOf(VirtioError);
        expect((e as VirtioError).kind).toBe('unsupported');
      }
      expect(a.device.netStats.ctrlErrors).toBe(bad.length);
      expect(a.errors.filter((e) => e.kind === 'bad-request').length).toBe(bad.length);
      // Still working: a good command after the bad ones.
      await a.driver.setQueuePairs(1);
      expect(a.device.queuePairs).toBe(1);
      await a.driver.setQueuePairs(2);
      expect(a.device.queuePairs).toBe(2);
    } finally {
      await close();
    }
  });
});
