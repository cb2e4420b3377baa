import { describe, expect, it } from 'vitest';
import { GuestMemory } from '@ioplane/guest-memory';
import {
  type DeviceQueue,
  PackedDeviceQueue,
  SplitDeviceQueue,
  VIRTQ_DESC_F_INDIRECT as INDIRECT,
  VIRTQ_DESC_F_NEXT as NEXT,
  VIRTQ_DESC_F_WRITE as WRITE,
  VirtqueueError,
  layoutQueue,
} from '../src/index.js';
import { RawPackedRing, RawSplitRing, testMemory } from '../src/testing.js';

const MEM = 1 << 20; // guest memory: [0, 1 MiB)
const BUF = 0x10000;
const TABLE = 0x20000;

function split(size = 8, feat: Partial<{ indirect: boolean; eventIdx: boolean; inOrder: boolean }> = {}) {
  const mem = testMemory(MEM);
  const { config } = layoutQueue(false, size, 0x1000);
  const raw = new RawSplitRing(mem, config);
  const dev = new SplitDeviceQueue(mem, config, { indirect: true, eventIdx: false, inOrder: false, packed: false, ...feat });
  return { mem, raw, dev, config };
}

function expectError(dev: DeviceQueue, kind: string): VirtqueueError {
  const c = dev.createChain();
  let err: unknown;
  try {
    dev.pop(c);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(VirtqueueError);
  const ve = err as VirtqueueError;
  expect(ve.kind).toBe(kind);
  // The queue is now broken: it says so, and keeps refusing.
  expect(dev.broken).toBe(ve);
  expect(() => dev.pop(c)).toThrow(ve);
  expect(dev.hasAvailable()).toBe(false);
  return ve;
}

describe('split device: every guest-written field is validated', () => {
  it('accepts a well-formed chain and reports its segments', () => {
    const { raw, dev } = split();
    raw.desc(0, BUF, 16, NEXT, 3).desc(3, BUF + 16, 512, NEXT | WRITE, 5).desc(5, BUF + 1024, 1, WRITE).pushAvail(0);
    const c = dev.createChain();
    expect(dev.pop(c)).toBe(true);
    expect(c.head).toBe(0);
    expect(c.count).toBe(3);
    expect(c.readableCount).toBe(1);
    expect([c.readableBytes, c.writableBytes]).toEqual([16, 513]);
    expect([c.addr(1), c.len(1), c.isWritable(1)]).toEqual([BUF + 16, 512, true]);
    expect(dev.pop(c)).toBe(false);
  });

  it('refuses a loop (a chain longer than the queue)', () => {
    const { raw, dev } = split();
    raw.desc(0, BUF, 1, NEXT, 1).desc(1, BUF, 1, NEXT, 0).pushAvail(0);
    expect(expectError(dev, 'chain-too-long').details.head).toBe(0);
  });

  it('accepts a chain exactly as long as the queue', () => {
    const { raw, dev } = split(4);
    raw.desc(0, BUF, 1, NEXT, 1).desc(1, BUF, 1, NEXT, 2).desc(2, BUF, 1, NEXT, 3).desc(3, BUF, 1).pushAvail(0);
    const c = dev.createChain();
    expect(dev.pop(c)).toBe(true);
    expect(c.count).toBe(4);
  });

  it('refuses next out of range', () => {
    const { raw, dev } = split();
    raw.desc(0, BUF, 1, NEXT, 8).pushAvail(0);
    const e = expectError(dev, 'next-out-of-range');
    expect(e.details.value).toBe(8);
  });

  it('refuses a head out of range', () => {
    const { raw, dev } = split();
    raw.pushAvail(9);
    expectError(dev, 'head-out-of-range');
  });

  it('refuses an available index more than the queue size ahead', () => {
    const { raw, dev } = split();
    raw.desc(0, BUF, 1);
    raw.availIdx = 9;
    expectError(dev, 'avail-index-ahead');
  });

  it('accepts an available index exactly the queue size ahead, across the 16-bit wrap', () => {
    const { raw, dev } = split(4);
    for (let i = 0; i < 4; i++) raw.desc(i, BUF, 1);
    const c = dev.createChain();
    // Walk the indices up to just below the wrap.
    let idx = 0;
    while (idx < 0xfffe) {
      raw.pushAvail(idx % 4);
      expect(dev.pop(c)).toBe(true);
      dev.complete(c, 0);
      idx++;
    }
    for (let i = 0; i < 4; i++) raw.pushAvail(i); // idx wraps to 2
    expect(raw.availIdx).toBe(2);
    let n = 0;
    while (dev.pop(c)) n++;
    expect(n).toBe(4);
  });

  it('refuses INDIRECT with NEXT', () => {
    const { raw, dev } = split();
    raw.tableDesc(TABLE, 0, BUF, 8);
    raw.desc(0, TABLE, 16, INDIRECT | NEXT, 1).desc(1, BUF, 8).pushAvail(0);
    expectError(dev, 'indirect-with-next');
  });

  it('refuses INDIRECT when the feature was not negotiated', () => {
    const { raw, dev } = split(8, { indirect: false });
    raw.tableDesc(TABLE, 0, BUF, 8);
    raw.desc(0, TABLE, 16, INDIRECT).pushAvail(0);
    expectError(dev, 'indirect-not-negotiated');
  });

  it('refuses a nested indirect table', () => {
    const { raw, dev } = split();
    raw.tableDesc(TABLE, 0, TABLE + 0x100, 16, INDIRECT);
    raw.desc(0, TABLE, 16, INDIRECT).pushAvail(0);
    expectError(dev, 'nested-indirect');
  });

  it('refuses an indirect table whose length is not a non-zero multiple of 16', () => {
    for (const len of [0, 8, 17, 33]) {
      const { raw, dev } = split();
      raw.desc(0, TABLE, len, INDIRECT).pushAvail(0);
      expect(expectError(dev, 'indirect-table-length').details.value).toBe(len);
    }
  });

  it('follows direct descriptors then one indirect table, ignoring WRITE on the table descriptor', () => {
    const { raw, dev } = split();
    raw.tableDesc(TABLE, 0, BUF + 0x100, 8, NEXT, 1).tableDesc(TABLE, 1, BUF + 0x200, 64, WRITE);
    raw.desc(0, BUF, 4, NEXT, 1).desc(1, TABLE, 32, INDIRECT | WRITE).pushAvail(0);
    const c = dev.createChain();
    expect(dev.pop(c)).toBe(true);
    expect(c.count).toBe(3);
    expect([c.readableBytes, c.writableBytes]).toEqual([12, 64]);
  });

  it('refuses a loop inside an indirect table', () => {
    const { raw, dev } = split();
    raw.tableDesc(TABLE, 0, BUF, 8, NEXT, 1).tableDesc(TABLE, 1, BUF, 8, NEXT, 0);
    raw.desc(0, TABLE, 32, INDIRECT).pushAvail(0);
    expectError(dev, 'chain-too-long');
  });

  it('refuses next out of range inside an indirect table', () => {
    const { raw, dev } = split();
    raw.tableDesc(TABLE, 0, BUF, 8, NEXT, 2).tableDesc(TABLE, 1, BUF, 8);
    raw.desc(0, TABLE, 32, INDIRECT).pushAvail(0);
    expectError(dev, 'next-out-of-range');
  });

  it('refuses an indirect table outside guest memory', () => {
    const { raw, dev } = split();
    raw.desc(0, MEM - 16, 32, INDIRECT).pushAvail(0);
    expectError(dev, 'buffer-out-of-memory');
  });

  it('refuses a buffer outside guest memory, or running past its end', () => {
    for (const [addr, len] of [
      [MEM, 1],
      [MEM - 4, 8],
      [0xffff_ffff_ffff_fff0n, 0x20], // wraps past 2^64
      [2n ** 53n, 1],
    ] as const) {
      const { raw, dev } = split();
      raw.desc(0, addr, len).pushAvail(0);
      const e = expectError(dev, typeof addr === 'bigint' ? 'address-too-large' : 'buffer-out-of-memory');
      expect(e.details.head).toBe(0);
    }
  });

  it('accepts a buffer that ends exactly at the end of memory', () => {
    const { raw, dev } = split();
    raw.desc(0, MEM - 8, 8).pushAvail(0);
    expect(dev.pop(dev.createChain())).toBe(true);
  });

  it('refuses a chain longer than 2^32 bytes in total', () => {
    const mem = testMemory(MEM);
    const { config } = layoutQueue(false, 8, 0x1000);
    const raw = new RawSplitRing(mem, config);
    // A checker that accepts any range, to reach the length rule: reads
    // and writes still go nowhere outside `mem` because the chain is refused.
    const permissive = Object.create(mem) as typeof mem;
    permissive.checkRange = () => undefined;
    const dev = new SplitDeviceQueue(permissive, config, { indirect: false, eventIdx: false, inOrder: false, packed: false });
    raw.desc(0, BUF, 0xffff_ffff, NEXT, 1).desc(1, BUF, 1).pushAvail(0);
    expectError(dev, 'chain-too-large');
  });

  it('refuses a readable descriptor after a writable one', () => {
    const { raw, dev } = split();
    raw.desc(0, BUF, 8, WRITE | NEXT, 1).desc(1, BUF, 8).pushAvail(0);
    expect(expectError(dev, 'readable-after-writable').details.desc).toBe(1);
  });

  it('refuses a read-only buffer as device-writable', () => {
    const mem = testMemory(MEM);
    const ro = new GuestMemory([
      { gpa: 0, backing: mem.regions[0]!.bytes },
      { gpa: MEM, size: 0x1000, readonly: true },
    ]);
    const { config } = layoutQueue(false, 8, 0x1000);
    const raw = new RawSplitRing(ro, config);
    const dev = new SplitDeviceQueue(ro, config, { indirect: false, eventIdx: false, inOrder: false, packed: false });
    raw.desc(0, MEM, 8, WRITE).pushAvail(0);
    expectError(dev, 'buffer-out-of-memory');
  });

  it('never throws anything but VirtqueueError on garbage rings', () => {
    for (let seed = 1; seed < 200; seed++) {
      const { mem, dev, config } = split(8);
      // Fill descriptor table and avail ring with pseudo-random bytes.
      let x = seed;
      const rnd = (): number => {
        x = (x * 1103515245 + 12345) & 0x7fffffff;
        return x;
      };
      for (let a = config.descAddr; a < config.deviceAddr; a++) mem.writeU8(a, rnd() & 0xff);
      const c = dev.createChain();
      for (let i = 0; i < 20; i++) {
        try {
          if (!dev.pop(c)) break;
          dev.complete(c, 0);
        } catch (e) {
          expect(e).toBeInstanceOf(VirtqueueError);
          break;
        }
      }
    }
  });
});

describe('split device: set-up checks', () => {
  it('refuses bad sizes and misplaced rings', () => {
    const mem = testMemory(MEM);
    const f = { indirect: false, eventIdx: false, inOrder: false, packed: false };
    const kind = (fn: () => unknown): string => {
      try {
        fn();
      } catch (e) {
        return (e as VirtqueueError).kind;
      }
      return 'none';
    };
    for (const size of [0, 3, 65536, 1.5]) {
      expect(kind(() => new SplitDeviceQueue(mem, { size, descAddr: 0, driverAddr: 0x1000, deviceAddr: 0x2000 }, f))).toBe('invalid-size');
    }
    expect(kind(() => new SplitDeviceQueue(mem, { size: 8, descAddr: 8, driverAddr: 0x1000, deviceAddr: 0x2000 }, f))).toBe('ring-misaligned');
    expect(kind(() => new SplitDeviceQueue(mem, { size: 8, descAddr: 0, driverAddr: 0x1001, deviceAddr: 0x2000 }, f))).toBe('ring-misaligned');
    expect(kind(() => new SplitDeviceQueue(mem, { size: 8, descAddr: 0, driverAddr: 0x1000, deviceAddr: 0x2002 }, f))).toBe('ring-misaligned');
    expect(kind(() => new SplitDeviceQueue(mem, { size: 8, descAddr: MEM - 64, driverAddr: 0x1000, deviceAddr: 0x2000 }, f))).toBe('ring-out-of-memory');
  });
});

function packed(size = 8, feat: Partial<{ indirect: boolean; eventIdx: boolean; inOrder: boolean }> = {}) {
  const mem = testMemory(MEM);
  const { config } = layoutQueue(true, size, 0x1000);
  const raw = new RawPackedRing(mem, config);
  const dev = new PackedDeviceQueue(mem, config, { indirect: true, eventIdx: false, inOrder: false, packed: true, ...feat });
  return { mem, raw, dev, config };
}

const A1 = RawPackedRing.availBits(1);

describe('packed device: every guest-written field is validated', () => {
  it('takes a list with the Buffer ID of its last descriptor', () => {
    const { raw, dev } = packed();
    raw.desc(1, BUF + 8, 8, 0xbeef, WRITE | A1).desc(0, BUF, 8, 0, NEXT | A1);
    const c = dev.createChain();
    expect(dev.pop(c)).toBe(true);
    expect([c.head, c.descCount, c.readableBytes, c.writableBytes]).toEqual([0xbeef, 2, 8, 8]);
    expect(dev.pop(c)).toBe(false);
  });

  it('does not take a descriptor whose AVAIL/USED bits do not say available', () => {
    const { raw, dev } = packed();
    raw.desc(0, BUF, 8, 1, 0); // zero-initialised: not available in lap 1
    expect(dev.pop(dev.createChain())).toBe(false);
    raw.desc(0, BUF, 8, 1, RawPackedRing.availBits(0)); // available in lap 0, not lap 1
    expect(dev.pop(dev.createChain())).toBe(false);
  });

  it('refuses a list longer than the queue', () => {
    const { raw, dev } = packed(4);
    for (let i = 0; i < 4; i++) raw.desc(i, BUF, 8, 0, NEXT | A1);
    // Four descriptors all saying NEXT: the list would need a fifth.
    expectError(dev, 'chain-too-long');
  });

  it('refuses a list whose middle descriptor is not available', () => {
    const { raw, dev } = packed();
    raw.desc(0, BUF, 8, 0, NEXT | A1).desc(1, BUF, 8, 0, 0);
    expectError(dev, 'descriptor-not-available');
  });

  it('refuses INDIRECT with NEXT, INDIRECT inside a list, and INDIRECT without the feature', () => {
    {
      const { raw, dev } = packed();
      raw.desc(0, TABLE, 16, 0, INDIRECT | NEXT | A1).desc(1, BUF, 8, 0, A1);
      expectError(dev, 'indirect-with-next');
    }
    {
      const { raw, dev } = packed();
      raw.desc(0, BUF, 8, 0, NEXT | A1).desc(1, TABLE, 16, 0, INDIRECT | A1);
      expectError(dev, 'indirect-in-chain');
    }
    {
      const { raw, dev } = packed(8, { indirect: false });
      raw.desc(0, TABLE, 16, 0, INDIRECT | A1);
      expectError(dev, 'indirect-not-negotiated');
    }
  });

  it('reads an indirect table in order, honouring only WRITE', () => {
    const { raw, dev } = packed();
    raw.tableDesc(TABLE, 0, BUF, 10, NEXT | INDIRECT).tableDesc(TABLE, 1, BUF + 0x100, 20, WRITE);
    raw.desc(0, TABLE, 32, 77, INDIRECT | A1);
    const c = dev.createChain();
    expect(dev.pop(c)).toBe(true);
    expect([c.head, c.count, c.readableBytes, c.writableBytes, c.descCount]).toEqual([77, 2, 10, 20, 1]);
  });

  it('refuses bad indirect tables and buffers', () => {
    {
      const { raw, dev } = packed();
      raw.desc(0, TABLE, 24, 0, INDIRECT | A1);
      expectError(dev, 'indirect-table-length');
    }
    {
      const { raw, dev } = packed();
      raw.tableDesc(TABLE, 0, BUF, 8, WRITE).tableDesc(TABLE, 1, BUF, 8, 0);
      raw.desc(0, TABLE, 32, 0, INDIRECT | A1);
      expectError(dev, 'readable-after-writable');
    }
    {
      const { raw, dev } = packed();
      raw.desc(0, MEM - 2, 8, 0, A1);
      expectError(dev, 'buffer-out-of-memory');
    }
    {
      const { raw, dev } = packed();
      raw.desc(0, 1n << 60n, 8, 0, A1);
      expectError(dev, 'address-too-large');
    }
  });

  it('refuses a driver that makes more descriptors available than the ring holds', () => {
    const { raw, dev } = packed(2);
    const c = dev.createChain();
    raw.desc(0, BUF, 8, 0, A1).desc(1, BUF, 8, 1, A1);
    expect(dev.pop(c)).toBe(true);
    expect(dev.pop(c)).toBe(true);
    // Lap 2 begins, but nothing was used: position 0 cannot legally be available again.
    raw.desc(0, BUF, 8, 2, RawPackedRing.availBits(0));
    expectError(dev, 'ring-overrun');
  });

  it('accepts any queue size up to 32768, refuses others', () => {
    const mem = testMemory(MEM);
    const f = { indirect: false, eventIdx: false, inOrder: false, packed: true };
    expect(() => new PackedDeviceQueue(mem, { size: 3, descAddr: 0, driverAddr: 0x1000, deviceAddr: 0x1004 }, f)).not.toThrow();
    expect(() => new PackedDeviceQueue(mem, { size: 32769, descAddr: 0, driverAddr: 0x1000, deviceAddr: 0x1004 }, f)).toThrow(VirtqueueError);
    expect(() => new PackedDeviceQueue(mem, { size: 3, descAddr: 0, driverAddr: 0x1002, deviceAddr: 0x1004 }, f)).toThrow(/aligned/);
  });
});
