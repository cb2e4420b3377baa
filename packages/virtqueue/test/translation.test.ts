import { type Access, type DmaMemory, type GuestMemory, GuestMemoryError } from '@ioplane/guest-memory';
import { describe, expect, it } from 'vitest';
import {
  BufferList,
  type DescriptorChain,
  type DeviceQueue,
  type DriverQueue,
  type TranslatingDma,
  createDeviceQueue,
  createDriverQueue,
  isTranslatingDma,
  layoutQueue,
} from '../src/index.js';
import { testMemory } from '../src/testing.js';

/** IOVAs at and above WINDOW translate to WINDOW_GPA + (iova − WINDOW); below it, identity (rings, indirect tables). */
const WINDOW = 0x100000;
const WINDOW_GPA = 0x8000;
const RAM = 0x20000;

/** The error an IOMMU fault is: a GuestMemoryError of kind `fault` carrying a `fault` record (as @ioplane/viommu's DmaFault). */
class FakeFault extends GuestMemoryError {
  readonly fault: { address: number };
  constructor(addr: number, len: number, access: Access) {
    super('fault', addr, len, `IOVA 0x${addr.toString(16)} is not mapped`, access);
    this.fault = { address: addr };
  }
}

/**
 * A minimal translating memory playing the vIOMMU: a fixed translation with
 * revocable IOVA ranges, a generation bumped by each revocation and a log of
 * what each bump revoked. Counts accesses that go through translation, so a
 * test can tell a carried access (none) from a translated one.
 */
class FakeIommu implements TranslatingDma {
  translationGeneration = 0;
  /** Accesses through the translating path (every DmaMemory method). */
  translated = 0;
  /** `translateRange` calls (the queue's walk). */
  walks = 0;
  private readonly revoked: { gen: number; start: number; end: number }[] = [];

  constructor(readonly physical: GuestMemory) {}

  revoke(start: number, len: number): void {
    this.translationGeneration++;
    this.revoked.push({ gen: this.translationGeneration, start, end: start + len });
  }

  /** A bump that revokes nothing (an unrelated domain's UNMAP). */
  bump(): void {
    this.translationGeneration++;
  }

  private t(addr: number, len: number, access: Access): number {
    for (const r of this.revoked) if (addr < r.end && addr + len > r.start) throw new FakeFault(Math.max(addr, r.start), len, access);
    const gpa = addr >= WINDOW ? addr - WINDOW + WINDOW_GPA : addr;
    this.physical.checkRange(gpa, len, access);
    return gpa;
  }

  private through(addr: number, len: number, access: Access): number {
    this.translated++;
    return this.t(addr, len, access);
  }

  translateRange(addr: number, len: number, access: Access): number {
    this.walks++;
    return this.t(addr, len, access);
  }

  stillValid(addr: number, len: number, generation: number): boolean {
    return !this.revoked.some((r) => r.gen > generation && addr < r.end && addr + len > r.start);
  }

  checkRange(addr: number, len: number, access: Access): void {
    this.through(addr, len, access);
  }
  readU8(a: number): number {
    return this.physical.readU8(this.through(a, 1, 'read'));
  }
  readU16(a: number): number {
    return this.physical.readU16(this.through(a, 2, 'read'));
  }
  readU32(a: number): number {
    return this.physical.readU32(this.through(a, 4, 'read'));
  }
  readU64(a: number): bigint {
    return this.physical.readU64(this.through(a, 8, 'read'));
  }
  readU53(a: number): number {
    return this.physical.readU53(this.through(a, 8, 'read'));
  }
  writeU8(a: number, v: number): void {
    this.physical.writeU8(this.through(a, 1, 'write'), v);
  }
  writeU16(a: number, v: number): void {
    this.physical.writeU16(this.through(a, 2, 'write'), v);
  }
  writeU32(a: number, v: number): void {
    this.physical.writeU32(this.through(a, 4, 'write'), v);
  }
  writeU64(a: number, v: bigint): void {
    this.physical.writeU64(this.through(a, 8, 'write'), v);
  }
  writeU53(a: number, v: number): void {
    this.physical.writeU53(this.through(a, 8, 'write'), v);
  }
  readInto(a: number, dest: Uint8Array): void {
    this.physical.readInto(this.through(a, dest.length, 'read'), dest);
  }
  writeFrom(a: number, src: Uint8Array): void {
    this.physical.writeFrom(this.through(a, src.length, 'write'), src);
  }
  fill(a: number, len: number, value: number): void {
    this.physical.fill(this.through(a, len, 'write'), len, value);
  }
  tryView(a: number, len: number, access: Access): Uint8Array | undefined {
    return this.physical.tryView(this.through(a, len, access), len, access);
  }
  slices(a: number, len: number, access: Access, out: Uint8Array[] = []): Uint8Array[] {
    return this.physical.slices(this.through(a, len, access), len, access, out);
  }
}

const FORMATS = [
  { name: 'split', packed: false },
  { name: 'packed', packed: true },
] as const;

function rig(packed: boolean, indirect: boolean) {
  const mem = testMemory(RAM);
  const iommu = new FakeIommu(mem);
  const features = { indirect, eventIdx: false, inOrder: false, packed };
  const { config } = layoutQueue(packed, 8, 0x1000);
  const drv: DriverQueue<number> = createDriverQueue<number>(mem, config, features, indirect ? { indirectArea: { addr: 0x2000, maxIndirect: 8 }, indirect: 'always' } : {});
  const dev: DeviceQueue = createDeviceQueue(iommu, config, features);
  return { mem, iommu, drv, dev, chain: dev.createChain() };
}

/** A request shaped like virtio-blk's: a 16-byte header, a data buffer, a status byte. */
function request(drv: DriverQueue<number>, data: number, dataLen: number, writable: boolean, token = 1): void {
  const list = new BufferList().push(WINDOW + 0x100, 16, false).push(data, dataLen, writable).push(WINDOW + 0x200, 1, true);
  expect(drv.add(list, token)).toBe(true);
  drv.publish();
}

function popOne(dev: DeviceQueue, chain: DescriptorChain): void {
  expect(dev.pop(chain)).toBe(true);
}

describe('TranslatingDma: a chain carries its translations', () => {
  it('is detected on a translating memory, not on plain guest memory', () => {
    const mem = testMemory(RAM);
    expect(isTranslatingDma(mem)).toBe(false);
    expect(isTranslatingDma(new FakeIommu(mem))).toBe(true);
  });

  for (const f of FORMATS) {
    for (const indirect of [false, true]) {
      it(`${f.name}${indirect ? ', indirect' : ''}: every segment is translated once at pop; reads and writes then go straight to RAM`, () => {
        const { mem, iommu, drv, dev, chain } = rig(f.packed, indirect);
        mem.writeFrom(WINDOW_GPA + 0x100, Uint8Array.from({ length: 16 }, (_, i) => i + 1));
        request(drv, WINDOW + 0x1000, 0x800, true);
        popOne(dev, chain);
        expect(chain.via).toBe(iommu);
        expect(iommu.walks).toBe(indirect ? 4 : 3); // an indirect table is translated once too
        expect(Array.from(chain.gpas.subarray(0, 3))).toEqual([WINDOW_GPA + 0x100, WINDOW_GPA + 0x1000, WINDOW_GPA + 0x200]);
        const before = iommu.translated;
        const hdr = new Uint8Array(16);
        expect(chain.readInto(iommu, 0, hdr)).toBe(16);
        expect(hdr).toEqual(Uint8Array.from({ length: 16 }, (_, i) => i + 1));
        const payload = Uint8Array.from({ length: 0x801 }, (_, i) => (i * 7) & 0xff);
        expect(chain.writeFrom(iommu, 0, payload)).toBe(0x801);
        expect(iommu.translated).toBe(before); // nothing went through the translating path
        expect(mem.view(WINDOW_GPA + 0x1000, 0x800, 'read')).toEqual(payload.subarray(0, 0x800));
        expect(mem.readU8(WINDOW_GPA + 0x200)).toBe(payload[0x800]);
      });
    }

    it(`${f.name}: the one-descriptor fast path carries its translation too`, () => {
      const { iommu, drv, dev, chain } = rig(f.packed, false);
      expect(drv.add(new BufferList().push(WINDOW + 0x400, 64, true), 1)).toBe(true);
      drv.publish();
      popOne(dev, chain);
      expect(chain.count).toBe(1);
      expect(chain.via).toBe(iommu);
      expect(chain.carried(iommu, 0)).toBe(WINDOW_GPA + 0x400);
    });
  }

  it('plain guest memory: nothing is carried, every access goes through the memory as before', () => {
    const mem = testMemory(RAM);
    const features = { indirect: false, eventIdx: false, inOrder: false, packed: false };
    const { config } = layoutQueue(false, 8, 0x1000);
    const drv = createDriverQueue<number>(mem, config, features);
    const dev = createDeviceQueue(mem, config, features);
    const chain = dev.createChain();
    expect(drv.add(new BufferList().push(0x4000, 16, false).push(0x5000, 1, true), 1)).toBe(true);
    drv.publish();
    popOne(dev, chain);
    expect(chain.via).toBeUndefined();
    expect(chain.carried(mem, 0)).toBe(-1);
    expect(chain.carried(mem, 1)).toBe(-1);
  });

  it('a carried translation is offered only to the memory that made it', () => {
    const { mem, iommu, drv, dev, chain } = rig(false, false);
    request(drv, WINDOW + 0x1000, 512, true);
    popOne(dev, chain);
    expect(chain.carried(iommu, 1)).toBe(WINDOW_GPA + 0x1000);
    expect(chain.carried(mem, 1)).toBe(-1);
    expect(chain.carried(new FakeIommu(mem), 1)).toBe(-1);
  });
});

describe('TranslatingDma: a generation change forces a new translation where it matters', () => {
  for (const f of FORMATS) {
    it(`${f.name}: a bump that revoked nothing of the chain keeps its translations (and re-stamps them)`, () => {
      const { iommu, drv, dev, chain } = rig(f.packed, false);
      request(drv, WINDOW + 0x1000, 512, true);
      popOne(dev, chain);
      iommu.bump();
      iommu.revoke(WINDOW + 0x3000, 0x1000); // another request's buffer
      expect(chain.carried(iommu, 1)).toBe(WINDOW_GPA + 0x1000);
      expect(chain.gens[1]).toBe(iommu.translationGeneration);
      const before = iommu.translated;
      chain.writeFrom(iommu, 0, new Uint8Array(513));
      expect(iommu.translated).toBe(before);
    });

    it(`${f.name}: an unmap of the data buffer after pop: the access re-translates and faults as without the carried translation`, () => {
      const { mem, iommu, drv, dev, chain } = rig(f.packed, false);
      mem.fill(WINDOW_GPA + 0x1000, 512, 0xaa);
      request(drv, WINDOW + 0x1000, 512, true);
      popOne(dev, chain);
      iommu.revoke(WINDOW + 0x1000, 512);
      expect(() => chain.writeFrom(iommu, 0, new Uint8Array(513))).toThrow(FakeFault);
      expect(chain.gpas[1]).toBe(-1); // never trusted again
      expect(mem.view(WINDOW_GPA + 0x1000, 512, 'read').every((b) => b === 0xaa)).toBe(true);
      // The header and status byte were not revoked: still carried.
      expect(chain.carried(iommu, 0)).toBe(WINDOW_GPA + 0x100);
      expect(chain.carried(iommu, 2)).toBe(WINDOW_GPA + 0x200);
    });

    it(`${f.name}: an unmap before pop: the chain pops (the ring is fine), nothing is carried for that buffer, and its access faults`, () => {
      const { iommu, drv, dev, chain } = rig(f.packed, false);
      request(drv, WINDOW + 0x1000, 512, false);
      iommu.revoke(WINDOW + 0x1000, 512);
      popOne(dev, chain);
      expect(dev.broken).toBeUndefined();
      expect(chain.gpas[1]).toBe(-1);
      expect(chain.carried(iommu, 0)).toBe(WINDOW_GPA + 0x100);
      const before = iommu.translated;
      expect(() => chain.readInto(iommu, 0, new Uint8Array(16 + 512))).toThrow(FakeFault);
      expect(iommu.translated).toBe(before + 1);
    });
  }

  for (const f of FORMATS) {
    it(`${f.name}: an indirect table that faults is read through the translating path (which records the fault) and breaks the queue as before`, () => {
      const { iommu, drv, dev, chain } = rig(f.packed, true);
      request(drv, WINDOW + 0x1000, 512, true);
      iommu.revoke(0x2000, 0x1000);
      const before = iommu.translated;
      expect(() => dev.pop(chain)).toThrow(expect.objectContaining({ kind: 'buffer-out-of-memory' }) as Error);
      expect(iommu.translated).toBe(before + 1);
    });
  }

  it('a one-descriptor chain whose buffer was unmapped before pop still pops, with no translation carried', () => {
    const { iommu, drv, dev, chain } = rig(false, false);
    expect(drv.add(new BufferList().push(WINDOW + 0x400, 64, true), 1)).toBe(true);
    drv.publish();
    iommu.revoke(WINDOW + 0x400, 64);
    popOne(dev, chain);
    expect(chain.carried(iommu, 0)).toBe(-1);
    expect(() => chain.writeFrom(iommu, 0, new Uint8Array(64))).toThrow(FakeFault);
  });
});

describe('BufferList: the translation columns', () => {
  it('grow with the list (doubling) and keep what was stored', () => {
    const l = new BufferList(2);
    for (let i = 0; i < 9; i++) l.push(0x1000 * i, 16, i > 4, i % 3 === 0 ? -1 : 0x100 * i, i);
    expect(l.addrs.length).toBe(16);
    expect(l.gpas.length).toBe(16);
    expect(l.gens.length).toBe(16);
    for (let i = 0; i < 9; i++) {
      expect(l.gpas[i]).toBe(i % 3 === 0 ? -1 : 0x100 * i);
      expect(l.gens[i]).toBe(i);
    }
    // A list built by hand (a driver's) carries nothing, and clear() forgets the memory.
    expect(new BufferList().push(0, 1, false).gpas[0]).toBe(-1);
    const dma: DmaMemory = testMemory(RAM);
    expect(l.carried(dma, 1)).toBe(-1);
    expect(l.clear().via).toBeUndefined();
  });

  it('a pooled chain allocates no new columns once it has seen its longest chain', () => {
    const { drv, dev, chain } = rig(false, false);
    const cols = [chain.addrs, chain.gpas, chain.gens];
    for (let i = 0; i < 20; i++) {
      request(drv, WINDOW + 0x1000, 512, true, i);
      popOne(dev, chain);
      dev.pushUsed(chain, 0);
      dev.publishUsed();
      drv.pollUsed({ token: undefined, len: 0 });
    }
    expect([chain.addrs, chain.gpas, chain.gens]).toEqual(cols);
    expect(chain.addrs).toBe(cols[0]);
    expect(chain.gpas).toBe(cols[1]);
    expect(chain.gens).toBe(cols[2]);
  });
});
