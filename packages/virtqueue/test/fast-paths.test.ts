import { GuestMemory } from '@ioplane/guest-memory';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BufferList, SplitDeviceQueue, SplitDriverQueue, type UsedBuffer, VirtqueueError, layoutQueue } from '../src/index.js';
import { RawSplitRing as Raw, testMemory } from '../src/testing.js';

const eventIdx = { indirect: false, eventIdx: true, inOrder: false, packed: false };
// Queue size 8 at 0x1000: descriptors at 0x1000, avail at 0x1080 (used_event at +20),
// used at 0x1098 (avail_event at +68).
const AVAIL = 0x1080;
const USED = 0x1098;

function rig(mem: GuestMemory = testMemory(1 << 16)) {
  const { config } = layoutQueue(false, 8, 0x1000);
  const drv = new SplitDriverQueue<number>(mem, config, eventIdx);
  const dev = new SplitDeviceQueue(mem, config, eventIdx);
  return { mem, drv, dev, chain: dev.createChain(), out: { token: undefined, len: 0 } as UsedBuffer<number> };
}

describe('split ring: event indexes move once per batch', () => {
  it('the device sets avail_event when it has taken everything it saw', () => {
    const { mem, drv, dev, chain } = rig();
    for (let i = 0; i < 3; i++) drv.add(new BufferList().push(0x4000 + i * 0x100, 0x100, true), i);
    drv.publish();
    expect(dev.enableNotifications()).toBe(true);
    dev.pop(chain);
    dev.pop(chain);
    expect(mem.readU16(USED + 68)).toBe(0);
    dev.pop(chain);
    expect(mem.readU16(USED + 68)).toBe(3);
    // ...so the driver's next add crosses it and must notify (vring_need_event).
    drv.add(new BufferList().push(0x5000, 0x100, true), 9);
    drv.publish();
    expect(drv.needsNotify()).toBe(true);
  });

  it('the driver sets used_event when it has reclaimed everything it saw, and the next completion interrupts', () => {
    const { mem, drv, dev, chain, out } = rig();
    for (let i = 0; i < 4; i++) drv.add(new BufferList().push(0x4000 + i * 0x100, 0x100, true), i);
    drv.publish();
    for (let i = 0; i < 3; i++) {
      dev.pop(chain);
      dev.pushUsed(chain, 0x10);
    }
    dev.publishUsed();
    dev.needsInterrupt();
    expect(drv.pollUsed(out)).toBe(true);
    expect(drv.pollUsed(out)).toBe(true);
    expect(mem.readU16(AVAIL + 20)).toBe(0);
    expect(drv.pollUsed(out)).toBe(true);
    expect(mem.readU16(AVAIL + 20)).toBe(3);
    expect(drv.pollUsed(out)).toBe(false);
    dev.pop(chain);
    dev.complete(chain, 0);
    expect(dev.needsInterrupt()).toBe(true);
  });

  it('with interrupts off the driver leaves used_event alone', () => {
    const { mem, drv, dev, chain, out } = rig();
    drv.disableInterrupts();
    drv.add(new BufferList().push(0x4000, 0x100, true), 1);
    drv.publish();
    dev.pop(chain);
    dev.complete(chain, 0);
    expect(drv.pollUsed(out)).toBe(true);
    expect(mem.readU16(AVAIL + 20)).toBe(0);
  });
});

describe('split driver: descriptors and avail entries are reused in place', () => {
  it('reuses free descriptors first-in first-out, so in-order completions keep each head in its avail slot', () => {
    const { mem, drv, dev, chain, out } = rig();
    const list = new BufferList().push(0x4000, 0x40, false);
    const heads: number[][] = [];
    for (let lap = 0; lap < 3; lap++) {
      for (let i = 0; i < 8; i++) expect(drv.add(list, i)).toBe(true);
      drv.publish();
      heads.push(Array.from({ length: 8 }, (_, i) => mem.readU16(AVAIL + 4 + 2 * i)));
      while (dev.pop(chain)) dev.pushUsed(chain, 0);
      dev.publishUsed();
      while (drv.pollUsed(out));
    }
    expect(heads[0]).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(heads[1]).toEqual(heads[0]);
    expect(heads[2]).toEqual(heads[0]);
  });

  it('rewrites a descriptor word a faulty device changed, and leaves equal words alone', () => {
    const { mem, drv, dev, chain, out } = rig();
    const list = new BufferList().push(0x4000, 0x40, true);
    drv.add(list, 1);
    drv.publish();
    dev.pop(chain);
    dev.complete(chain, 0);
    drv.pollUsed(out);
    // The device scribbles on the table it should only read.
    mem.writeU32(0x1000 + 8, 0xdead);
    mem.writeU16(0x1000 + 12, 0x4);
    // Descriptor 0 comes back to the driver last (FIFO); fill the ring to reuse it.
    for (let i = 0; i < 8; i++) drv.add(list, i);
    expect(mem.readU32(0x1000 + 8)).toBe(0x40);
    expect(mem.readU16(0x1000 + 12)).toBe(2); // WRITE, not INDIRECT
    expect(mem.readU32(0x1000)).toBe(0x4000);
  });
});

describe('split device: used elements are rewritten only when they change', () => {
  it('writes id and len over whatever the slot held', () => {
    const { mem, drv, dev, chain, out } = rig();
    const list = new BufferList().push(0x4000, 0x40, true);
    for (let lap = 0; lap < 2; lap++) {
      for (let i = 0; i < 8; i++) drv.add(list, i);
      drv.publish();
      // A faulty driver scribbles on slot 0 of the used ring before the device fills it.
      mem.writeU32(USED + 4, 0x77);
      mem.writeU32(USED + 8, 0x88);
      while (dev.pop(chain)) dev.pushUsed(chain, lap === 0 ? 0x10 : 0x20);
      dev.publishUsed();
      expect(mem.readU32(USED + 4)).toBe(0);
      expect(mem.readU32(USED + 8)).toBe(lap === 0 ? 0x10 : 0x20);
      const lens: number[] = [];
      while (drv.pollUsed(out)) lens.push(out.len);
      expect(lens).toEqual(Array(8).fill(lap === 0 ? 0x10 : 0x20));
    }
  });
});

describe('split ring: the short paths and the general paths agree', () => {
  it('refuses a one-descriptor chain outside memory with the general path\'s error, and breaks the queue', () => {
    const { drv, dev, chain } = rig();
    drv.add(new BufferList().push(0x1_0000 - 8, 64, true), 1); // runs past the end of the 64 KiB
    drv.publish();
    let err: unknown;
    try {
      dev.pop(chain);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(VirtqueueError);
    expect((err as VirtqueueError).kind).toBe('buffer-out-of-memory');
    expect(dev.broken?.kind).toBe('buffer-out-of-memory');
  });

  it('refuses a used entry naming a head not in flight', () => {
    const { mem, drv, dev, chain, out } = rig();
    drv.add(new BufferList().push(0x4000, 0x40, true), 1);
    drv.publish();
    dev.pop(chain);
    dev.complete(chain, 0);
    mem.writeU32(USED + 4, 5); // id 5 was never added
    expect(() => drv.pollUsed(out)).toThrow(expect.objectContaining({ kind: 'used-id-invalid' }));
  });

  it('a chain of ring descriptors (the u32 short path) pops as the DataView-only general path pops it, or fails with its error', () => {
    // The same guest bytes twice: host-aligned (u32 views, short paths) and 2 bytes off (DataView, general path only).
    const unaligned = (): GuestMemory => new GuestMemory([{ gpa: 0, backing: new Uint8Array(new SharedArrayBuffer((1 << 16) + 2), 2, 1 << 16) }]);
    // Well-formed descriptors, and one in fifteen with a bad field (address past memory, a length
    // running off it, INDIRECT not negotiated, next out of range): most runs pop several chains
    // through the short path before an error, if any, breaks the queue.
    const good = fc.record({
      addr: fc.constantFrom(0x4000, 0x8000, 0xc000),
      len: fc.constantFrom(16, 0x100, 0x1000, 0),
      flags: fc.oneof({ arbitrary: fc.constantFrom(0, 2), weight: 3 }, { arbitrary: fc.constantFrom(1, 3), weight: 1 }),
      next: fc.integer({ min: 0, max: 7 }),
    });
    const bad = fc.oneof(
      fc.tuple(good, fc.constantFrom(0xfff0, 2 ** 60)).map(([d, addr]) => ({ ...d, addr })),
      good.map((d) => ({ ...d, len: 0xffff_ffff })),
      good.map((d) => ({ ...d, len: 0x8000 })),
      good.map((d) => ({ ...d, flags: d.flags | 4 })),
      good.map((d) => ({ ...d, flags: d.flags | 1, next: 8 + (d.next & 1) })),
    );
    const desc = fc.oneof({ arbitrary: good, weight: 14 }, { arbitrary: bad, weight: 1 });
    let runs = 0;
    let chainsOk = 0;
    fc.assert(
      fc.property(fc.array(desc, { minLength: 8, maxLength: 8 }), fc.array(fc.oneof({ arbitrary: fc.integer({ min: 0, max: 7 }), weight: 15 }, { arbitrary: fc.constant(8), weight: 1 }), { minLength: 1, maxLength: 8 }), (table, heads) => {
        const pop = (mem: GuestMemory): unknown[] => {
          const { config } = layoutQueue(false, 8, 0x1000);
          const raw = new Raw(mem, config);
          table.forEach((d, i) => raw.desc(i, BigInt(d.addr), d.len, d.flags, d.next));
          for (const h of heads) raw.pushAvail(h);
          raw.availIdx = heads.length;
          const dev = new SplitDeviceQueue(mem, config, { indirect: false, eventIdx: false, inOrder: false, packed: false });
          const chain = dev.createChain();
          const got: unknown[] = [];
          try {
            while (dev.pop(chain)) {
              got.push([chain.head, chain.count, chain.readableCount, chain.readableBytes, chain.writableBytes, [...chain.addrs.subarray(0, chain.count)], [...chain.lens.subarray(0, chain.count)]]);
            }
          } catch (e) {
            got.push((e as VirtqueueError).kind);
          }
          return got;
        };
        const fast = pop(testMemory(1 << 16));
        expect(fast).toEqual(pop(unaligned()));
        runs++;
        chainsOk += fast.filter((g) => Array.isArray(g)).length;
      }),
      { numRuns: 1000 },
    );
    // Chains after the first are what the short path's state between pops is tested on.
    expect(chainsOk / runs).toBeGreaterThanOrEqual(2);
  });

  it('runs on DataView when the rings are not 4-byte aligned in host memory', () => {
    // A backing that starts 2 bytes into its buffer: Uint32Array views cannot be laid over it.
    const bytes = new Uint8Array(new SharedArrayBuffer((1 << 16) + 2), 2, 1 << 16);
    const mem = new GuestMemory([{ gpa: 0, backing: bytes }]);
    const { drv, dev, chain, out } = rig(mem);
    for (let lap = 0; lap < 3; lap++) {
      for (let i = 0; i < 8; i++) drv.add(new BufferList().push(0x4000 + i * 0x100, 0x80, true), lap * 8 + i);
      drv.publish();
      let k = 0;
      while (dev.pop(chain)) {
        expect(chain.addrs[0]).toBe(0x4000 + (chain.head % 8) * 0x100);
        dev.pushUsed(chain, k++);
      }
      dev.publishUsed();
      const got: number[] = [];
      while (drv.pollUsed(out)) got.push(out.token!);
      expect(got.sort((a, b) => a - b)).toEqual(Array.from({ length: 8 }, (_, i) => lap * 8 + i));
    }
    // Field bytes as the spec lays them out (le32 len at +8 of descriptor 0).
    expect(mem.readU32(0x1000 + 8)).toBe(0x80);
  });
});
