import { describe, expect, it } from 'vitest';
import { GuestMemory, GuestMemoryError } from '../src/index.js';

function expectGmError(fn: () => unknown, kind: string, addr?: number | bigint, len?: number): GuestMemoryError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(GuestMemoryError);
    const err = e as GuestMemoryError;
    expect(err.kind).toBe(kind);
    if (addr !== undefined) expect(err.addr).toBe(addr);
    if (len !== undefined) expect(err.len).toBe(len);
    return err;
  }
  throw new Error(`expected a GuestMemoryError of kind ${kind}`);
}

/** Two regions with a hole: [0x1000, 0x2000) and [0x3000, 0x4000), plus [0x4000, 0x5000) adjacent. */
function holey(): GuestMemory {
  return new GuestMemory([
    { gpa: 0x1000, size: 0x1000 },
    { gpa: 0x3000, size: 0x1000 },
    { gpa: 0x4000, size: 0x1000 },
  ]);
}

describe('regions', () => {
  it('allocates a SharedArrayBuffer by default and sorts regions', () => {
    const m = new GuestMemory([{ gpa: 0x3000, size: 16 }, { gpa: 0, size: 16 }]);
    expect(m.regions.map((r) => r.gpa)).toEqual([0, 0x3000]);
    expect(m.regions[0]!.shared).toBe(true);
    expect(m.size).toBe(32);
  });

  it('accepts an ArrayBuffer and a Uint8Array backing', () => {
    const buf = new Uint8Array(64);
    const m = new GuestMemory([{ gpa: 0, backing: new ArrayBuffer(32) }, { gpa: 0x100, backing: buf }]);
    m.writeU8(0x101, 7);
    expect(buf[1]).toBe(7);
    expect(m.regions[0]!.shared).toBe(false);
  });

  it('refuses overlapping, empty, mis-sized and too-high regions', () => {
    expectGmError(() => new GuestMemory([{ gpa: 0, size: 0x100 }, { gpa: 0xff, size: 1 }]), 'invalid-region', 0xff);
    expectGmError(() => new GuestMemory([{ gpa: 0, size: 0 }]), 'invalid-region');
    expectGmError(() => new GuestMemory([{ gpa: 0, size: 8, backing: new ArrayBuffer(16) }]), 'invalid-region');
    expectGmError(() => new GuestMemory([{ gpa: 2 ** 53 - 4, size: 8 }]), 'invalid-region');
    expectGmError(() => new GuestMemory([{ gpa: -1, size: 8 }]), 'invalid-region');
    expectGmError(() => new GuestMemory([]), 'invalid-region');
  });
});

describe('scalar access', () => {
  it('is little-endian at every width', () => {
    const m = GuestMemory.create(64);
    m.writeU32(0, 0x11223344);
    expect([...m.view(0, 4, 'read')]).toEqual([0x44, 0x33, 0x22, 0x11]);
    expect(m.readU16(0)).toBe(0x3344);
    expect(m.readU16(2)).toBe(0x1122);
    m.writeU64(8, 0x0102030405060708n);
    expect(m.readU8(8)).toBe(8);
    expect(m.readU64(8)).toBe(0x0102030405060708n);
    expectGmError(() => m.readU53(8), 'too-large', 8, 8);
  });

  it('reads u53 exactly up to 2^53-1 and refuses larger values naming them', () => {
    const m = GuestMemory.create(64);
    m.writeU53(0, Number.MAX_SAFE_INTEGER);
    expect(m.readU53(0)).toBe(Number.MAX_SAFE_INTEGER);
    expect(m.readU64(0)).toBe(BigInt(Number.MAX_SAFE_INTEGER));
    m.writeU64(8, 1n << 53n);
    const err = expectGmError(() => m.readU53(8), 'too-large', 8, 8);
    expect(err.message).toContain('0x20000000000000');
    expectGmError(() => m.writeU53(16, -1), 'too-large');
  });

  it('works across two adjacent regions', () => {
    const m = holey();
    m.writeU32(0x3ffe, 0xa1b2c3d4);
    expect(m.readU32(0x3ffe)).toBe(0xa1b2c3d4);
    expect(m.readU8(0x3fff)).toBe(0xc3);
    expect(m.readU8(0x4000)).toBe(0xb2);
    m.writeU64(0x3ffc, 0xdeadbeefcafebaben);
    expect(m.readU64(0x3ffc)).toBe(0xdeadbeefcafebaben);
    m.writeU53(0x3ffa, 2 ** 52 + 5);
    expect(m.readU53(0x3ffa)).toBe(2 ** 52 + 5);
  });

  it('fails whole on a hole, naming the address and length', () => {
    const m = holey();
    m.writeU8(0x1fff, 0x55);
    expectGmError(() => m.readU32(0x1ffe), 'out-of-bounds', 0x1ffe, 4);
    expectGmError(() => m.writeU32(0x1ffe, 0xffffffff), 'out-of-bounds', 0x1ffe, 4);
    expect(m.readU8(0x1fff)).toBe(0x55); // nothing was written by the failed access
    expectGmError(() => m.readU8(0x2000), 'out-of-bounds', 0x2000, 1);
    expectGmError(() => m.readU8(0), 'out-of-bounds');
    expectGmError(() => m.readU16(0x4fff), 'out-of-bounds');
  });

  it('refuses invalid addresses', () => {
    const m = GuestMemory.create(64);
    expectGmError(() => m.readU8(-1), 'invalid-address');
    expectGmError(() => m.readU8(1.5), 'invalid-address');
    expectGmError(() => m.readU8(Number.NaN), 'invalid-address');
    expectGmError(() => m.readU32(2 ** 53), 'invalid-address');
    expectGmError(() => m.readU32(2 ** 53 - 2), 'out-of-bounds');
  });

  it('refuses a range one byte past a region that ends at 2^53', () => {
    // 2^53 - 1 + 2 rounds to 2^53 in doubles, so a sum compared with the end let these through.
    const top = 2 ** 53;
    const m = new GuestMemory([{ gpa: top - 16, size: 16 }]);
    m.writeFrom(top - 2, Uint8Array.of(1, 2));
    expect(m.readU16(top - 2)).toBe(0x0201);
    expectGmError(() => m.checkRange(top - 1, 2, 'read'), 'out-of-bounds', top - 1, 2);
    expectGmError(() => m.readU16(top - 1), 'out-of-bounds', top - 1, 2);
    expectGmError(() => m.writeU16(top - 1, 0xffff), 'out-of-bounds', top - 1, 2);
    expectGmError(() => m.readInto(top - 1, new Uint8Array(2)), 'out-of-bounds');
    expectGmError(() => m.writeFrom(top - 1, new Uint8Array(2)), 'out-of-bounds');
    expectGmError(() => m.slices(top - 1, 2, 'read'), 'out-of-bounds');
    expectGmError(() => m.tryView(top - 1, 2, 'read'), 'out-of-bounds');
    expectGmError(() => m.readU8(top), 'invalid-address');
    expect(m.regions[0]!.contains(top - 1, 2)).toBe(false);
    expect(m.readU16(top - 2)).toBe(0x0201);
  });
});

describe('byte ranges, views and scatter/gather', () => {
  it('copies across regions and refuses ranges that touch a hole', () => {
    const m = holey();
    const src = Uint8Array.from({ length: 0x20 }, (_, i) => i + 1);
    m.writeFrom(0x3ff0, src);
    const back = new Uint8Array(0x20);
    m.readInto(0x3ff0, back);
    expect(back).toEqual(src);
    expectGmError(() => m.writeFrom(0x1ff0, src), 'out-of-bounds', 0x1ff0, 0x20);
    expect(m.readU8(0x1ff0)).toBe(0);
    expectGmError(() => m.readInto(0x1ff0, back), 'out-of-bounds');
  });

  it('gives zero-copy views inside one region only', () => {
    const m = holey();
    const v = m.view(0x1010, 4, 'write');
    v[0] = 9;
    expect(m.readU8(0x1010)).toBe(9);
    expect(m.tryView(0x3ff0, 0x20, 'read')).toBeUndefined();
    expectGmError(() => m.view(0x3ff0, 0x20, 'read'), 'not-contiguous', 0x3ff0, 0x20);
    expectGmError(() => m.tryView(0x1ff0, 0x20, 'read'), 'out-of-bounds');
    expect(m.tryView(0x1000, 0, 'read')?.byteLength).toBe(0);
  });

  it('splits a range into per-region slices', () => {
    const m = holey();
    const s = m.slices(0x3f00, 0x200, 'read');
    expect(s.map((x) => x.byteLength)).toEqual([0x100, 0x100]);
    const out: Uint8Array[] = [new Uint8Array(1)];
    expectGmError(() => m.slices(0x1f00, 0x200, 'read', out), 'out-of-bounds');
    expect(out.length).toBe(1);
  });

  it('hands the same view back for the same range, and the right one after any number of others', () => {
    const m = GuestMemory.create(1 << 20);
    const a = m.slices(0x1000, 4096, 'write')[0]!;
    expect(m.slices(0x1000, 4096, 'read')[0]).toBe(a);
    expect(m.slices(0x1000, 512, 'read')[0]).not.toBe(a);
    // More ranges than the cache has entries: every answer is still the range asked for.
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < 1000; i++) {
        const addr = (i * 4097) % ((1 << 20) - 600);
        const len = 1 + (i % 512);
        const [v] = m.slices(addr, len, 'read');
        expect(v!.byteOffset).toBe(addr);
        expect(v!.byteLength).toBe(len);
      }
    }
    m.writeU8(0x1000, 0x5a);
    expect(m.slices(0x1000, 4096, 'read')[0]![0]).toBe(0x5a);
    expect(m.slices(0x1000, 0, 'read')).toEqual([]);
  });

  it('keeps 256 buffers at any power-of-two stride resident: a second pass gets the same views', () => {
    for (let stride = 512; stride <= 1 << 16; stride *= 2) {
      const m = GuestMemory.create(256 * stride + (1 << 20));
      const base = stride * 256 >= 1 << 20 ? 0 : 1 << 20; // an aligned start
      const first = Array.from({ length: 256 }, (_, k) => m.slices(base + k * stride, 512, 'read')[0]!);
      for (let k = 0; k < 256; k++) expect(m.slices(base + k * stride, 512, 'read')[0], `stride ${stride}, buffer ${k}`).toBe(first[k]);
    }
    // 32 buffers 4 KiB apart (a guest's page-sized I/O buffers): once a hash put three pairs together.
    const m = GuestMemory.create(1 << 20);
    const views = Array.from({ length: 32 }, (_, k) => m.slices(0x10000 + k * 4096, 4096, 'write')[0]!);
    for (let k = 0; k < 32; k++) expect(m.slices(0x10000 + k * 4096, 4096, 'write')[0]).toBe(views[k]);
  });

  it('fills shared memory like a plain fill, zeroes copied page by page, across adjacent regions', () => {
    // Two adjacent shared regions of 3 and 2 pages and a little over: fills of every kind of length and alignment.
    const sizes = [3 * 4096 + 100, 2 * 4096 + 60];
    const backs = sizes.map((n) => new SharedArrayBuffer(n));
    const m = new GuestMemory([
      { gpa: 0x10000, backing: backs[0]! },
      { gpa: 0x10000 + sizes[0]!, backing: backs[1]! },
    ]);
    const total = sizes[0]! + sizes[1]!;
    const model = new Uint8Array(total);
    let seed = 7;
    const rnd = (n: number): number => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
    const bytes = (): Uint8Array => {
      const out = new Uint8Array(total);
      out.set(new Uint8Array(backs[0]!), 0);
      out.set(new Uint8Array(backs[1]!), sizes[0]);
      return out;
    };
    for (let i = 0; i < 400; i++) {
      // Dirty a random stretch first, so a zero fill that skips a byte shows.
      const d = rnd(total);
      const dl = 1 + rnd(total - d);
      m.fill(0x10000 + d, dl, 0xa5);
      model.fill(0xa5, d, d + dl);
      const at = rnd(total);
      const len = [1, 255, 256, 257, 4095, 4096, 4097, 8192 + 17, rnd(total - at + 1)][i % 9]!;
      const n = Math.min(len, total - at);
      const value = [0, 0, 256, 0x5a][i % 4]!;
      m.fill(0x10000 + at, n, value);
      model.fill(value, at, at + n);
      expect(bytes()).toEqual(model);
    }
  });

  it('fills', () => {
    const m = holey();
    m.fill(0x3ffe, 4, 0xee);
    expect(m.readU32(0x3ffe)).toBe(0xeeeeeeee);
    expectGmError(() => m.fill(0x1fff, 2, 1), 'out-of-bounds');
  });

  it('keeps device writes out of read-only regions', () => {
    const m = new GuestMemory([{ gpa: 0, size: 16, readonly: true }, { gpa: 16, size: 16 }]);
    expectGmError(() => m.writeU8(0, 1), 'read-only', 0, 1);
    expectGmError(() => m.writeFrom(14, new Uint8Array(4)), 'read-only');
    expectGmError(() => m.tryView(0, 4, 'write'), 'read-only');
    expect(m.readU8(0)).toBe(0);
    expect(m.tryView(0, 4, 'read')?.byteLength).toBe(4);
    expect(() => m.checkRange(0, 32, 'read')).not.toThrow();
    expectGmError(() => m.checkRange(0, 32, 'write'), 'read-only');
    // Scalar accesses take a fast path through the region last found: it keeps the same rules.
    m.writeU32(16, 0x11223344);
    expect(m.readU32(16)).toBe(0x11223344);
    expectGmError(() => m.writeU16(2, 1), 'read-only');
    expect(m.readU16(2)).toBe(0);
    expectGmError(() => m.writeU8(15, 1), 'read-only');
    expectGmError(() => m.readU32(16.5), 'invalid-address');
    // Straddling the two regions (last found: the ROM): the write is refused whole, the read is gathered.
    expectGmError(() => m.writeU32(14, 0), 'read-only');
    expect(m.readU32(14)).toBe(0x33440000);
  });
});

describe('atomics', () => {
  it('loads and stores aligned u16/u32 and refuses misaligned ones', () => {
    const m = GuestMemory.create(64);
    m.storeU16Release(2, 0xbeef);
    expect(m.loadU16Acquire(2)).toBe(0xbeef);
    expect(m.readU16(2)).toBe(0xbeef);
    m.storeU32Release(4, 0xcafef00d);
    expect(m.loadU32Acquire(4)).toBe(0xcafef00d);
    expectGmError(() => m.loadU16Acquire(1), 'misaligned', 1, 2);
    expectGmError(() => m.storeU32Release(6, 0), 'misaligned', 6, 4);
    expectGmError(() => m.loadU32Acquire(64), 'out-of-bounds');
    m.fence();
  });

  it('judges alignment by host offset, not guest address', () => {
    const buf = new SharedArrayBuffer(64);
    const m = new GuestMemory([{ gpa: 0x1000, backing: new Uint8Array(buf, 1, 32) }]);
    expectGmError(() => m.loadU16Acquire(0x1000), 'misaligned');
    expect(m.loadU16Acquire(0x1001)).toBe(0);
  });

  it('exposes an Int32Array for wait/notify', () => {
    const m = GuestMemory.create(64);
    const { array, index } = m.int32At(8);
    Atomics.store(array, index, 5);
    expect(m.loadU32Acquire(8)).toBe(5);
    expect(Atomics.wait(array, index, 4, 0)).toBe('not-equal');
  });
});
