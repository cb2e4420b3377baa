import { GuestMemory } from '@ioplane/guest-memory';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DmaFault, U64_MAX, VIRTIO_IOMMU_S_INVAL, VIRTIO_IOMMU_S_OK, VIRTIO_IOMMU_S_RANGE } from '../src/index.js';
import { attach, device, map, unmap } from './helpers.js';

const PAGE = 4096;
const PAGES = 32; // IOVA pages in play, from `base`
const RAM_PAGES = 28; // targets run to page 63, so some are outside RAM

/**
 * The reference: a naive per-page map. Each IOVA page remembers the mapping
 * (by id) that covers it, its target page and flags. UNMAP semantics are
 * derived from the ids: a mapping touched by the range must lie inside it.
 */
class Model {
  readonly pages = new Map<number, { id: number; phys: number; flags: number }>();
  readonly extent = new Map<number, [number, number]>();
  private next = 1;
  readonly ram = new Uint8Array(RAM_PAGES * PAGE);

  map(first: number, n: number, phys: number, flags: number): number {
    for (let p = first; p < first + n; p++) if (this.pages.has(p)) return VIRTIO_IOMMU_S_INVAL;
    const id = this.next++;
    for (let i = 0; i < n; i++) this.pages.set(first + i, { id, phys: phys + i, flags });
    this.extent.set(id, [first, first + n - 1]);
    return VIRTIO_IOMMU_S_OK;
  }

  unmap(first: number, last: number): number {
    const ids = new Set<number>();
    for (let p = first; p <= last; p++) {
      const e = this.pages.get(p);
      if (e !== undefined) ids.add(e.id);
    }
    for (const id of ids) {
      const [a, b] = this.extent.get(id)!;
      if (a < first || b > last) return VIRTIO_IOMMU_S_RANGE;
    }
    for (const id of ids) {
      const [a, b] = this.extent.get(id)!;
      for (let p = a; p <= b; p++) this.pages.delete(p);
      this.extent.delete(id);
    }
    return VIRTIO_IOMMU_S_OK;
  }

  /** The first IOVA offset (from base) in [off, off+len) the access may not touch, or -1; and the target of each byte. */
  check(off: number, len: number, need: number): { bad: number; reason?: string } {
    for (let a = off; a < off + len; a++) {
      const e = this.pages.get(Math.floor(a / PAGE));
      if (e === undefined) return { bad: a, reason: 'unmapped' };
      if ((e.flags & need) === 0) return { bad: a, reason: 'permission' };
    }
    // Targets checked after every translation succeeded, as the device does.
    for (let a = off; a < off + len; a++) {
      if (this.target(a) >= this.ram.length) return { bad: a, reason: 'bad-target' };
    }
    return { bad: -1 };
  }

  target(off: number): number {
    const e = this.pages.get(Math.floor(off / PAGE))!;
    return e.phys * PAGE + (off % PAGE);
  }
}

type Op =
  | { t: 'map'; first: number; n: number; phys: number; flags: number }
  | { t: 'unmap'; first: number; last: number }
  | { t: 'write'; off: number; len: number; seed: number }
  | { t: 'read'; off: number; len: number }
  | { t: 'u32'; off: number; value: number }
  /** UNMAP exactly the k-th live mapping (resolved at run time). */
  | { t: 'unmapOne'; k: number }
  /** A DMA inside the k-th mapping ever made (live or since unmapped): where stale translations would show. */
  | { t: 'touch'; k: number; within: number; len: number; write: boolean };

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ t: fc.constant('map' as const), first: fc.nat(PAGES - 1), n: fc.integer({ min: 1, max: 6 }), phys: fc.nat(PAGES - 6), flags: fc.integer({ min: 1, max: 3 }) }).map((o) => ({ ...o, n: Math.min(o.n, PAGES - o.first) })) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('unmap' as const), first: fc.nat(PAGES - 1), last: fc.nat(PAGES - 1) }).map((o) => ({ ...o, first: Math.min(o.first, o.last), last: Math.max(o.first, o.last) })) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('write' as const), off: fc.nat(PAGES * PAGE - 1), len: fc.oneof(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: 3 * PAGE })), seed: fc.nat(255) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('read' as const), off: fc.nat(PAGES * PAGE - 1), len: fc.oneof(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: 3 * PAGE })) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('unmapOne' as const), k: fc.nat() }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('touch' as const), k: fc.nat(), within: fc.nat(6 * PAGE), len: fc.integer({ min: 1, max: 16 }), write: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('u32' as const), off: fc.nat(PAGES * PAGE - 4), value: fc.nat(0xffff_ffff) }) },
);

function run(ops: Op[], base: bigint, iotlbEntries: number): void {
  const dev = device({ iotlbEntries });
  attach(dev, 1, 1);
  const ram = GuestMemory.create(RAM_PAGES * PAGE);
  const dma = dev.dmaMemory(1, ram);
  const model = new Model();
  const dmaReachable = base + BigInt(PAGES * PAGE) <= 2n ** 53n;
  const B = Number(base);
  const history: [number, number][] = [];
  for (const raw of ops) {
    let o: Op = raw;
    if (o.t === 'unmapOne') {
      const live = [...model.extent.values()];
      if (live.length === 0) continue;
      const [a, b] = live[o.k % live.length]!;
      o = { t: 'unmap', first: a, last: b };
    } else if (o.t === 'touch') {
      if (history.length === 0) continue;
      const [a, b] = history[o.k % history.length]!;
      const off = a * PAGE + (o.within % ((b - a + 1) * PAGE));
      const len = Math.min(o.len, PAGES * PAGE - off);
      o = o.write ? { t: 'write', off, len, seed: o.k & 0xff } : { t: 'read', off, len };
    }
    if (o.t === 'map') {
      history.push([o.first, o.first + o.n - 1]);
      const s = base + BigInt(o.first * PAGE);
      const e = s + BigInt(o.n * PAGE) - 1n;
      expect(map(dev, 1, s, e, BigInt(o.phys * PAGE), o.flags)).toBe(model.map(o.first, o.n, o.phys, o.flags));
    } else if (o.t === 'unmap') {
      const s = base + BigInt(o.first * PAGE);
      const e = base + BigInt(o.last * PAGE + PAGE) - 1n;
      expect(unmap(dev, 1, s, e)).toBe(model.unmap(o.first, o.last));
    } else if (!dmaReachable) {
      // Above 2^53: check the lookup over the full 64-bit range instead of a DMA.
      const at = o.off;
      const m = dev.domain(1)!.mappings.find(base + BigInt(at));
      const e = model.pages.get(Math.floor(at / PAGE));
      expect(m === undefined).toBe(e === undefined);
      if (m !== undefined && e !== undefined) expect(m.physStart + (base + BigInt(at) - m.virtStart)).toBe(BigInt(model.target(at)));
    } else {
      const len = o.t === 'u32' ? 4 : Math.min(o.len, PAGES * PAGE - o.off);
      const need = o.t === 'read' ? 1 : 2;
      const verdict = model.check(o.off, len, need);
      const before = ram.regions[0]!.bytes.slice();
      let thrown: unknown;
      let got: Uint8Array | undefined;
      try {
        if (o.t === 'write') {
          const data = Uint8Array.from({ length: len }, (_, i) => (o.seed + i * 7) & 0xff);
          dma.writeFrom(B + o.off, data);
          for (let i = 0; i < len; i++) model.ram[model.target(o.off + i)] = data[i]!;
        } else if (o.t === 'u32') {
          dma.writeU32(B + o.off, o.value);
          for (let i = 0; i < 4; i++) model.ram[model.target(o.off + i)] = (o.value >>> (8 * i)) & 0xff;
        } else {
          got = new Uint8Array(len);
          dma.readInto(B + o.off, got);
        }
      } catch (e) {
        thrown = e;
      }
      if (verdict.bad < 0) {
        expect(thrown).toBeUndefined();
        if (got !== undefined) {
          let mismatch = -1;
          for (let i = 0; i < len && mismatch < 0; i++) if (got[i] !== model.ram[model.target(o.off + i)]) mismatch = i;
          expect(mismatch).toBe(-1);
        }
      } else {
        expect(thrown).toBeInstanceOf(DmaFault);
        const f = (thrown as DmaFault).fault;
        expect(f.address).toBe(B + verdict.bad);
        expect(f.reason).toBe(verdict.reason);
        // Nothing moved.
        expect(Buffer.compare(ram.regions[0]!.bytes, before)).toBe(0);
      }
    }
  }
  expect(Buffer.compare(ram.regions[0]!.bytes, model.ram)).toBe(0);
}

const bases = [0n, 0x1_0000_0000n - BigInt(8 * PAGE), 2n ** 53n - BigInt(PAGES * PAGE), 2n ** 53n, U64_MAX + 1n - BigInt(PAGES * PAGE)];

describe('domains agree with a naive per-page map (property)', () => {
  for (const iotlb of [0, 1, 16, 512]) {
    it(`random MAP/UNMAP/DMA sequences, IOTLB of ${iotlb} entries`, () => {
      fc.assert(
        fc.property(fc.constantFrom(...bases), fc.array(op, { minLength: 1, maxLength: 60, size: 'max' }), (base, ops) => run(ops, base, iotlb)),
        { numRuns: 300 },
      );
    });
  }
});
