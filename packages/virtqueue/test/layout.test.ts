import { describe, expect, it } from 'vitest';
import {
  BufferList,
  PackedDeviceQueue,
  PackedDriverQueue,
  SplitDeviceQueue,
  SplitDriverQueue,
  layoutQueue,
  ringFeatures,
  featureBits,
} from '../src/index.js';
import { testMemory } from '../src/testing.js';

const none = { indirect: false, eventIdx: false, inOrder: false, packed: false };

describe('split ring byte layout (VirtIO 1.2 §2.7), offsets by hand', () => {
  // Queue size 8 at 0x1000:
  //   descriptor table 16·8 = 128 bytes at 0x1000 (align 16)
  //   avail: flags@0 idx@2 ring[8]@4..19 used_event@20 → 22 bytes at 0x1080 (align 2)
  //   used:  flags@0 idx@2 ring[8]{id,len}@4..67 avail_event@68 → 70 bytes at 0x1098 (0x1096 rounded up to 4)
  it('lays out a compact queue', () => {
    const { config, bytes } = layoutQueue(false, 8, 0x1000);
    expect(config).toEqual({ size: 8, descAddr: 0x1000, driverAddr: 0x1080, deviceAddr: 0x1098 });
    expect(bytes).toBe(0x98 + 70);
  });

  it('puts every field where the spec says', () => {
    const mem = testMemory(1 << 16);
    const { config } = layoutQueue(false, 8, 0x1000);
    const drv = new SplitDriverQueue<number>(mem, config, { ...none, eventIdx: true });
    const dev = new SplitDeviceQueue(mem, config, { ...none, eventIdx: true });
    const list = new BufferList().push(0x0123_4567_89a0, 0x11, false).push(0x4000, 0x22, true);
    // The address above is past guest memory on purpose: only bytes are checked here.
    drv.add(list, 7);
    drv.publish();
    // desc 0: le64 addr, le32 len, le16 flags (NEXT=1), le16 next (1)
    expect([...mem.view(0x1000, 16, 'read')]).toEqual([
      0xa0, 0x89, 0x67, 0x45, 0x23, 0x01, 0, 0, 0x11, 0, 0, 0, 0x01, 0x00, 0x01, 0x00,
    ]);
    // desc 1: addr 0x4000, len 0x22, flags WRITE=2, next 0
    expect([...mem.view(0x1010, 16, 'read')]).toEqual([0, 0x40, 0, 0, 0, 0, 0, 0, 0x22, 0, 0, 0, 0x02, 0, 0, 0]);
    // avail: flags 0, idx 1, ring[0] = 0
    expect(mem.readU16(0x1080)).toBe(0);
    expect(mem.readU16(0x1082)).toBe(1);
    expect(mem.readU16(0x1084)).toBe(0);
    // The device refuses the chain: its first buffer is outside guest memory.
    const chain = dev.createChain();
    expect(() => dev.pop(chain)).toThrow(/outside guest memory|not readable guest memory/);
    // used_event lives at avail+20, avail_event at used+68
    drv.enableInterrupts();
    expect(mem.readU16(0x1080 + 20)).toBe(0);
  });

  it('writes used elements and avail_event at their offsets', () => {
    const mem = testMemory(1 << 16);
    const { config } = layoutQueue(false, 8, 0x1000);
    const drv = new SplitDriverQueue<number>(mem, config, { ...none, eventIdx: true });
    const dev = new SplitDeviceQueue(mem, config, { ...none, eventIdx: true });
    for (let i = 0; i < 3; i++) drv.add(new BufferList().push(0x4000 + i * 0x100, 0x100, true), i);
    drv.publish();
    const c = dev.createChain();
    dev.enableNotifications();
    expect(dev.pop(c)).toBe(true);
    expect(dev.pop(c)).toBe(true); // head 1
    dev.complete(c, 0x33);
    // used: idx@2 = 1, ring[0] = { id 1, len 0x33 } at +4
    expect(mem.readU16(0x1098 + 2)).toBe(1);
    expect(mem.readU32(0x1098 + 4)).toBe(1);
    expect(mem.readU32(0x1098 + 8)).toBe(0x33);
    // avail_event at +68 moves when the device has taken all it saw (idx 3)
    expect(mem.readU16(0x1098 + 68)).toBe(0);
    expect(dev.pop(c)).toBe(true);
    expect(mem.readU16(0x1098 + 68)).toBe(3);
  });
});

describe('packed ring byte layout (VirtIO 1.2 §2.8), offsets by hand', () => {
  // Size 5 (packed needs no power of two) at 0x2000: ring 80 bytes, driver event at 0x2050, device event at 0x2054.
  it('lays out a compact queue', () => {
    const { config, bytes } = layoutQueue(true, 5, 0x2000);
    expect(config).toEqual({ size: 5, descAddr: 0x2000, driverAddr: 0x2050, deviceAddr: 0x2054 });
    expect(bytes).toBe(0x58);
  });

  it('writes descriptors with id, AVAIL/USED bits and the head last', () => {
    const mem = testMemory(1 << 16);
    const { config } = layoutQueue(true, 5, 0x2000);
    const f = { ...none, packed: true };
    const drv = new PackedDriverQueue<number>(mem, config, f);
    const dev = new PackedDeviceQueue(mem, config, f);
    drv.add(new BufferList().push(0x4000, 0x10, false).push(0x5000, 0x20, true), 9);
    // Buffer ID 0 (first free); flags: desc0 NEXT|AVAIL = 0x81, desc1 WRITE|AVAIL = 0x82
    expect([...mem.view(0x2000, 16, 'read')]).toEqual([0, 0x40, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0x81, 0]);
    expect([...mem.view(0x2010, 16, 'read')]).toEqual([0, 0x50, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0x82, 0]);
    const c = dev.createChain();
    expect(dev.pop(c)).toBe(true);
    expect(c.descCount).toBe(2);
    dev.complete(c, 0x20);
    // The used descriptor overwrites the list's first: id 0, len 0x20, flags AVAIL|USED|WRITE = 0x8082
    expect(mem.readU32(0x2000 + 8)).toBe(0x20);
    expect(mem.readU16(0x2000 + 12)).toBe(0);
    expect(mem.readU16(0x2000 + 14)).toBe(0x8082);
    const out = { token: undefined as number | undefined, len: 0 };
    expect(drv.pollUsed(out)).toBe(true);
    expect(out).toEqual({ token: 9, len: 0x20 });
  });
});

describe('feature bits', () => {
  it('maps bits 28, 29, 34, 35', () => {
    expect(featureBits({ indirect: true })).toBe(1n << 28n);
    expect(featureBits({ eventIdx: true })).toBe(1n << 29n);
    expect(featureBits({ packed: true })).toBe(1n << 34n);
    expect(featureBits({ inOrder: true })).toBe(1n << 35n);
    expect(ringFeatures((1n << 28n) | (1n << 35n) | (1n << 32n))).toEqual({ indirect: true, eventIdx: false, inOrder: true, packed: false });
  });
});

describe('EVENT_IDX: a driver that leaves interrupts on keeps getting them', () => {
  for (const packed of [false, true]) {
    it(`interrupts after every reaped batch without re-enabling (${packed ? 'packed' : 'split'})`, () => {
      const mem = testMemory(1 << 16);
      const f = { ...none, packed, eventIdx: true };
      const { config } = layoutQueue(packed, 8, 0x1000);
      const drv = packed ? new PackedDriverQueue<number>(mem, config, f) : new SplitDriverQueue<number>(mem, config, f);
      const dev = packed ? new PackedDeviceQueue(mem, config, f) : new SplitDeviceQueue(mem, config, f);
      drv.enableInterrupts();
      const c = dev.createChain();
      const out = { token: undefined as number | undefined, len: 0 };
      for (let round = 0; round < 20; round++) {
        drv.add(new BufferList().push(0x4000, 16, true), round);
        drv.publish();
        expect(dev.pop(c)).toBe(true);
        dev.complete(c, 4);
        // Every completion is wanted: the driver has taken everything before it.
        expect(dev.needsInterrupt()).toBe(true);
        expect(drv.pollUsed(out)).toBe(true);
        expect(out.token).toBe(round);
      }
    });
  }
});
