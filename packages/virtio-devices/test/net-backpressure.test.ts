import { createLoopbackPair } from '@ioplane/net-backends';
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '@ioplane/guest-memory';
import { DirectTransport, NetHdr, VirtioNetDevice, VirtioNetDriver } from '../src/index.js';
import { NET_AREA, NET_MEM, RAW_DATA, ethFrame, netGuest, rawGuest, until } from './net-harness.js';

describe('virtio-net back-pressure and hostile receive buffers', () => {
  it('a back-end that pushes back holds the TX batch (chains not returned) until it drains; nothing is lost or reordered', async () => {
    // A 4 KiB ring holds two full-size frames.
    const pair = createLoopbackPair({ ringBytes: 4096 });
    const a = await netGuest(pair.a);
    const got: Uint8Array[] = [];
    pair.b.onReceive((f) => got.push(f.slice()));
    pair.b.pause();
    try {
      const frames = Array.from({ length: 20 }, (_, i) => ethFrame(Uint8Array.of(2, 0, 0, 0, 0, 2), a.device.mac, 1000, i));
      for (const f of frames) expect(a.driver.send(f)).toBe(true);
      await until(() => a.device.netStats.txBackpressure > 0, 'back-pressure');
      // The TX chains of the refused frames are still the device's.
      expect(a.driver.txRoom()).toBeLessThan(256);
      pair.b.resume();
      await until(() => got.length === frames.length, 'all frames through');
      got.forEach((f, i) => expect(Buffer.from(f).equals(Buffer.from(frames[i]!)), `frame ${i}`).toBe(true));
      await until(() => a.driver.txRoom() === 256, 'TX chains returned');
      expect(a.device.netStats.txMalformed).toBe(0);
    } finally {
      await a.driver.close();
      a.device.detach();
      await pair.a.close();
      await pair.b.close();
    }
  });

  it('an RX chain with a device-readable part, or shorter than the header, is returned unused and counted', async () => {
    const pair = createLoopbackPair();
    const g = await rawGuest(pair.b, 0n);
    try {
      g.submit(0, g.list.clear().push(RAW_DATA, 64, false).push(RAW_DATA + 64, 2048, true), 7);
      g.postRx(0, RAW_DATA + 0x1000, 8, 8);
      g.postRx(0, RAW_DATA + 0x2000, 2048, 9);
      const f = ethFrame(g.device.mac, Uint8Array.of(2, 0, 0, 0, 0, 1), 300, 4);
      pair.a.send([f]);
      await until(() => g.device.netStats.rxPackets === 1, 'frame received');
      await new Promise((r) => setImmediate(r));
      expect(g.reap(0)).toEqual([
        { token: 7, len: 0 },
        { token: 8, len: 0 },
        { token: 9, len: 312 },
      ]);
      expect(g.device.netStats.rxMalformed).toBe(2);
      expect(new NetHdr().decode(g.mem.view(RAW_DATA + 0x2000, 12, 'read')).numBuffers).toBe(1);
      expect(Buffer.from(g.mem.view(RAW_DATA + 0x2000 + 12, 300, 'read')).equals(Buffer.from(f))).toBe(true);
      expect(g.device.running).toBe(true);
    } finally {
      g.device.detach();
      await pair.a.close();
    }
  });

  it('a reset while the back-end pushes back forgets the batch; the same device starts again and traffic flows', async () => {
    const pair = createLoopbackPair({ ringBytes: 4096 });
    const mem = GuestMemory.create(NET_MEM);
    const cur: { drv?: VirtioNetDriver } = {};
    const device = new VirtioNetDevice({ mem, backend: pair.a, interrupts: { queue: (q) => void cur.drv?.handleInterrupt(q), config: () => {} } });
    const transport = new DirectTransport(device);
    const got: Uint8Array[] = [];
    pair.b.onReceive((f) => got.push(f.slice()));
    pair.b.pause();
    try {
      cur.drv = await VirtioNetDriver.create({ transport, mem, area: NET_AREA });
      for (let i = 0; i < 10; i++) cur.drv.send(ethFrame(Uint8Array.of(2, 0, 0, 0, 0, 2), device.mac, 1000, i));
      await until(() => device.netStats.txBackpressure > 0, 'back-pressure');
      const held = device.netStats.txPackets;
      await cur.drv.close();
      cur.drv = undefined;
      expect(device.status).toBe(0);
      pair.b.resume();
      await until(() => got.length > 0, 'what the back-end took before the reset');
      await new Promise((r) => setTimeout(r, 10));
      // Frames the back-end refused before the reset are gone with it.
      expect(got.length).toBeLessThan(held);
      const before = got.length;
      cur.drv = await VirtioNetDriver.create({ transport, mem, area: NET_AREA });
      const f = ethFrame(Uint8Array.of(2, 0, 0, 0, 0, 2), device.mac, 200, 99);
      cur.drv.send(f);
      await until(() => got.length === before + 1, 'frame after the reset');
      expect(Buffer.from(got[before]!).equals(Buffer.from(f))).toBe(true);
      expect(device.stats.resets).toBe(3);
      await cur.drv.close();
    } finally {
      device.detach();
      await pair.a.close();
      await pair.b.close();
    }
  });
});
