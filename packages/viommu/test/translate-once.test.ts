import { type Access, GuestMemory } from '@ioplane/guest-memory';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DmaFault, InvalidationLog, TranslatingMemory, VtdRemapper } from '../src/index.js';
import { rangeSlot } from '../src/translating-memory.js';
import { R, RW, W, attach, device, map, unmap } from './helpers.js';

const PAGE = 4096;
const RAM = 1 << 20;

function rig(options: Parameters<typeof device>[0] = {}) {
  const ram = GuestMemory.create(RAM);
  const dev = device(options);
  const dma = dev.dmaMemory(1, ram);
  return { ram, dev, dma };
}

function fault(f: () => unknown): DmaFault {
  try {
    f();
  } catch (e) {
    if (e instanceof DmaFault) return e;
    throw e;
  }
  throw new Error('no fault');
}

describe('TranslatingMemory as TranslatingDma', () => {
  it('offers the capability: the guest RAM behind it, the generation, translateRange, stillValid', () => {
    const { ram, dev, dma } = rig();
    expect(dma.physical).toBe(ram);
    expect(typeof dma.translateRange).toBe('function');
    expect(typeof dma.stillValid).toBe('function');
    attach(dev, 1, 1);
    expect(dma.translationGeneration).toBe(dma.source.generation);
  });

  it('translateRange: the guest-physical address of a range inside one mapping, verified against RAM', () => {
    const { ram, dev, dma } = rig();
    attach(dev, 1, 1);
    expect(map(dev, 1, 0x10000n, 0x13fffn, 0x40000n, RW)).toBe(0);
    expect(dma.translateRange(0x10010, 0x100, 'read')).toBe(0x40010);
    expect(dma.translateRange(0x12000, 0x2000, 'write')).toBe(0x42000);
    ram.writeU32(0x40010, 0xfeedface);
    expect(dma.physical.readU32(dma.translateRange(0x10010, 4, 'read'))).toBe(0xfeedface);
    // A range over two mappings is not one run: checked, but not carried.
    expect(map(dev, 1, 0x14000n, 0x14fffn, 0x44000n, RW)).toBe(0);
    expect(dma.translateRange(0x13f00, 0x200, 'read')).toBe(-1);
  });

  it('translateRange faults as checkRange does, and records nothing (a probe, not a DMA)', () => {
    const { dev, dma } = rig();
    attach(dev, 1, 1);
    expect(map(dev, 1, 0x10000n, 0x10fffn, 0x40000n, R)).toBe(0);
    expect(map(dev, 1, 0x20000n, 0x20fffn, 0x200000n, RW)).toBe(0); // target past the 1 MiB of RAM
    for (const [addr, len, access, reason] of [
      [0x30000, 16, 'read', 'unmapped'],
      [0x10000, 16, 'write', 'permission'],
      [0x10ff0, 0x20, 'read', 'unmapped'],
      [0x20000, 16, 'read', 'bad-target'],
    ] as const) {
      const a = fault(() => dma.translateRange(addr, len, access));
      const b = fault(() => dma.checkRange(addr, len, access));
      expect(a.fault).toEqual(b.fault);
      expect(a.fault.reason).toBe(reason);
    }
    expect(dev.pendingEvents).toBe(0);
    expect(() => dma.translateRange(-1, 4, 'read')).toThrow();
  });

  it('the checked-range table: a repeated range is a hit; a bump that did not touch it keeps it, one that did drops it', () => {
    const { dev, dma } = rig();
    attach(dev, 1, 1);
    expect(map(dev, 1, 0x10000n, 0x10fffn, 0x40000n, RW)).toBe(0);
    expect(map(dev, 1, 0x11000n, 0x11fffn, 0x50000n, RW)).toBe(0);
    dma.translateRange(0x10000, 512, 'read');
    const s0 = { ...dma.rangeStats };
    expect(dma.translateRange(0x10200, 512, 'read')).toBe(0x40200);
    expect(dma.rangeStats.hits).toBe(s0.hits + 1);
    expect(unmap(dev, 1, 0x11000n, 0x11fffn)).toBe(0);
    expect(dma.translateRange(0x10000, 512, 'read')).toBe(0x40000);
    expect(dma.rangeStats.revalidated).toBe(s0.revalidated + 1);
    expect(unmap(dev, 1, 0x10000n, 0x10fffn)).toBe(0);
    expect(fault(() => dma.translateRange(0x10000, 512, 'read')).fault.reason).toBe('unmapped');
  });

  it('a miss asks the source once and leaves the run to the scalar path: the DMA that follows asks nothing', () => {
    const ram = GuestMemory.create(RAM);
    const dev = device();
    const inner = dev.dmaMemory(1, ram).source;
    let asked = 0;
    const counting = {
      endpoint: inner.endpoint,
      get generation() {
        return inner.generation;
      },
      translate(addr: number, access: Access, out: { gpa: number; start: number; end: number }) {
        asked++;
        return inner.translate(addr, access, out);
      },
      unchangedSince: (since: number, start: number, end: number) => inner.unchangedSince!(since, start, end),
    };
    const dma = new TranslatingMemory(ram, counting, dev);
    attach(dev, 1, 1);
    expect(map(dev, 1, 0x10000n, 0x13fffn, 0x40000n, RW)).toBe(0);
    expect(dma.translateRange(0x11000, PAGE, 'write')).toBe(0x41000);
    expect(asked).toBe(1);
    dma.writeFrom(0x11000, new Uint8Array(PAGE).fill(0x5a));
    dma.writeU8(0x13fff, 7);
    expect(dma.readU8(0x10000)).toBe(0);
    expect(asked).toBe(2); // the read direction's own first translation
    expect(ram.readU8(0x41fff)).toBe(0x5a);
    expect(ram.readU8(0x43fff)).toBe(7);
    // A run partly outside RAM is not recorded whole: the range alone is checked and kept.
    expect(map(dev, 1, 0x20000n, 0x21fffn, BigInt(RAM - PAGE), RW)).toBe(0);
    expect(dma.translateRange(0x20000, PAGE, 'read')).toBe(RAM - PAGE);
    expect(() => dma.translateRange(0x20000, 2 * PAGE, 'read')).toThrow();
  });
});

describe('the checked-range table index', () => {
  it('puts 128 pages at any power-of-two stride from an aligned start in 128 distinct slots', () => {
    for (let stride = 1; stride <= 1 << 16; stride *= 2) {
      for (const base of [0, stride * 128 * 3, 2 ** 40]) {
        const slots = new Set<number>();
        for (let k = 0; k < 128; k++) slots.add(rangeSlot((base + k * stride) * PAGE));
        expect(slots.size, `stride ${stride} pages from page ${base}`).toBe(128);
      }
    }
  });

  it('keeps 32 buffers 64 KiB apart all resident: a second pass over them is all hits', () => {
    // The two-thread benchmark's static layout: 64 KiB IOVA windows from 0x410000. A Fibonacci
    // index put them in 8 slots, and the device asked the unit again at nearly every request.
    const ram = GuestMemory.create(8 << 20);
    const dev = device();
    const dma = dev.dmaMemory(1, ram);
    attach(dev, 1, 1);
    const base = 0x410000;
    for (let s = 0; s < 32; s++) expect(map(dev, 1, BigInt(base + s * 0x10000), BigInt(base + s * 0x10000 + 0xffff), BigInt(0x400000 - s * 0x10000), W)).toBe(0);
    for (let s = 0; s < 32; s++) expect(dma.translateRange(base + s * 0x10000, PAGE, 'write')).toBe(0x400000 - s * 0x10000);
    const misses = dma.rangeStats.misses;
    for (let round = 0; round < 3; round++) {
      for (let s = 31; s >= 0; s--) expect(dma.translateRange(base + s * 0x10000 + 512, 1024, 'write')).toBe(0x400000 - s * 0x10000 + 512);
    }
    expect(dma.rangeStats.misses).toBe(misses);
  });
});

describe('generation and invalidation log', () => {
  it('bumps on UNMAP that removed something, ATTACH, DETACH, bypass changes and reset — not on MAP or an UNMAP of nothing', () => {
    const { dev, dma } = rig();
    const g = (): number => dma.translationGeneration;
    let last = g();
    const bumped = (): boolean => {
      const b = g() !== last;
      last = g();
      return b;
    };
    attach(dev, 1, 1);
    expect(bumped()).toBe(true);
    map(dev, 1, 0x10000n, 0x10fffn, 0x40000n, RW);
    expect(bumped()).toBe(false);
    unmap(dev, 1, 0x30000n, 0x30fffn);
    expect(bumped()).toBe(false);
    unmap(dev, 1, 0x10000n, 0x10fffn);
    expect(bumped()).toBe(true);
    attach(dev, 1, 2);
    expect(bumped()).toBe(true);
    dev.reset();
    expect(bumped()).toBe(true);
  });

  it('stillValid: true across UNMAPs of other ranges and of other domains; false for the range, after ATTACH/DETACH/reset, or too long ago', () => {
    const { dev, dma } = rig();
    attach(dev, 1, 1);
    attach(dev, 2, 2);
    map(dev, 1, 0x10000n, 0x10fffn, 0x40000n, RW);
    map(dev, 1, 0x11000n, 0x11fffn, 0x41000n, RW);
    map(dev, 2, 0x10000n, 0x10fffn, 0x40000n, RW);
    const g0 = dma.translationGeneration;
    expect(dma.stillValid(0x10000, 0x1000, g0)).toBe(true);
    unmap(dev, 2, 0x10000n, 0x10fffn); // same IOVA, other domain
    expect(dma.stillValid(0x10000, 0x1000, g0)).toBe(true);
    unmap(dev, 1, 0x11000n, 0x11fffn); // same domain, other range
    expect(dma.stillValid(0x10000, 0x1000, g0)).toBe(true);
    expect(dma.stillValid(0x10fff, 2, g0)).toBe(false); // touches the unmapped one
    const g1 = dma.translationGeneration;
    attach(dev, 3, 2); // endpoint 2 moves: a global change
    expect(dma.stillValid(0x10000, 0x1000, g1)).toBe(false);
    const g2 = dma.translationGeneration;
    for (let i = 0; i < InvalidationLog.SIZE + 1; i++) {
      map(dev, 1, 0x80000n, 0x80fffn, 0x40000n, RW);
      unmap(dev, 1, 0x80000n, 0x80fffn);
    }
    expect(dma.stillValid(0x10000, 0x1000, g2)).toBe(false); // older than the log
    expect(dma.stillValid(0x10000, 0x1000, dma.translationGeneration)).toBe(true);
  });

  it('VT-d logs its invalidations too: a PSI moves the generation but revokes nothing else (test/vtd.test.ts has the rest)', () => {
    const ram = GuestMemory.create(RAM);
    const vtd = new VtdRemapper({ memory: ram }); // translation off: identity
    const dma = vtd.dmaMemory(8, ram);
    const g = dma.translationGeneration;
    expect(dma.stillValid(0, 16, g)).toBe(true);
    vtd.invalidateIotlbPages(1, 0x100000, 0); // a page nowhere near [0, 16)
    expect(dma.translationGeneration).not.toBe(g);
    expect(dma.stillValid(0, 16, g)).toBe(true);
    vtd.invalidateContextGlobal(); // logged as "everything"
    expect(dma.stillValid(0, 16, g)).toBe(false);
  });
});

/**
 * Against a naive model: IOVA pages 0..PAGES of two domains, each page
 * mapped (by mapping id) to a RAM page with permissions. Every translateRange
 * must agree with the model — the right address inside one mapping, -1 only
 * for a range over several permitted mappings, a fault where the model has a
 * hole or a missing permission — whatever the checked-range table and run
 * caches hold; and every translation a caller kept must pass stillValid only
 * while the model still translates it the same way.
 */
describe('checked-range table and stillValid against a model', () => {
  const PAGES = 24;
  const BASE = 0x100000;
  type Op =
    | { op: 'map'; dom: number; first: number; n: number; phys: number; perm: number }
    | { op: 'unmap'; dom: number; first: number; last: number }
    | { op: 'xlate'; page: number; off: number; len: number; write: boolean }
    | { op: 'move' };
  const opArb: fc.Arbitrary<Op> = fc.oneof(
    { weight: 3, arbitrary: fc.record({ op: fc.constant('map' as const), dom: fc.integer({ min: 1, max: 2 }), first: fc.integer({ min: 0, max: PAGES - 1 }), n: fc.integer({ min: 1, max: 4 }), phys: fc.integer({ min: 0, max: 200 }), perm: fc.constantFrom(R, W, RW) }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('unmap' as const), dom: fc.integer({ min: 1, max: 2 }), first: fc.integer({ min: 0, max: PAGES - 1 }), last: fc.integer({ min: 0, max: PAGES - 1 }) }) },
    { weight: 6, arbitrary: fc.record({ op: fc.constant('xlate' as const), page: fc.integer({ min: 0, max: PAGES - 1 }), off: fc.integer({ min: 0, max: PAGE - 1 }), len: fc.integer({ min: 1, max: 2 * PAGE }), write: fc.boolean() }) },
    { weight: 1, arbitrary: fc.constant({ op: 'move' as const }) },
  );

  it('agrees with the model, and never vouches for a revoked translation', () => {
    fc.assert(
      fc.property(fc.array(opArb, { minLength: 1, maxLength: 80 }), fc.constantFrom(0, 1, 16, 512), (ops, iotlbEntries) => {
        const ram = GuestMemory.create(RAM);
        const dev = device({ iotlbEntries }, 3);
        const dma: TranslatingMemory = dev.dmaMemory(1, ram);
        // Endpoint 1 starts in domain 1; endpoints 3 and 2 keep domains 1 and 2 alive; 'move' swaps endpoint 1 between them.
        attach(dev, 1, 1);
        attach(dev, 1, 3);
        attach(dev, 2, 2);
        let epDomain = 1;
        const pages = [new Map<number, { id: number; phys: number; perm: number }>(), new Map(), new Map()] as Map<number, { id: number; phys: number; perm: number }>[];
        const extent = new Map<number, [number, number]>();
        let nextId = 1;
        const kept: { addr: number; len: number; access: Access; gen: number; gpa: number }[] = [];

        const modelTranslate = (addr: number, len: number, need: number): { kind: 'gpa'; gpa: number } | { kind: 'multi' } | { kind: 'fault' } => {
          const m = pages[epDomain]!;
          const first = Math.floor((addr - BASE) / PAGE);
          const last = Math.floor((addr + len - 1 - BASE) / PAGE);
          let id = -1;
          let multi = false;
          for (let p = first; p <= last; p++) {
            const e = m.get(p);
            if (e === undefined || (e.perm & need) === 0) return { kind: 'fault' };
            if (id === -1) id = e.id;
            else if (e.id !== id) multi = true;
          }
          if (multi) return { kind: 'multi' };
          const e = m.get(first)!;
          return { kind: 'gpa', gpa: e.phys * PAGE + ((addr - BASE) % PAGE) };
        };

        for (const o of ops) {
          if (o.op === 'map') {
            const m = pages[o.dom]!;
            let free = true;
            for (let p = o.first; p < o.first + o.n && free; p++) if (m.has(p)) free = false;
            const st = map(dev, o.dom, BigInt(BASE + o.first * PAGE), BigInt(BASE + (o.first + o.n) * PAGE - 1), BigInt(o.phys * PAGE), o.perm);
            expect(st === 0).toBe(free);
            if (free) {
              const id = nextId++;
              extent.set(id, [o.first, o.first + o.n - 1]);
              for (let i = 0; i < o.n; i++) m.set(o.first + i, { id, phys: o.phys + i, perm: o.perm });
            }
          } else if (o.op === 'unmap') {
            const m = pages[o.dom]!;
            const [first, last] = o.first <= o.last ? [o.first, o.last] : [o.last, o.first];
            const ids = new Set<number>();
            for (let p = first; p <= last; p++) if (m.has(p)) ids.add(m.get(p)!.id);
            let ok = true;
            for (const id of ids) {
              const [a, b] = extent.get(id)!;
              if (a < first || b > last) ok = false;
            }
            const st = unmap(dev, o.dom, BigInt(BASE + first * PAGE), BigInt(BASE + (last + 1) * PAGE - 1));
            expect(st === 0).toBe(ok);
            if (ok) for (const id of ids) for (let p = extent.get(id)![0]; p <= extent.get(id)![1]; p++) m.delete(p);
          } else if (o.op === 'move') {
            epDomain = epDomain === 1 ? 2 : 1;
            attach(dev, epDomain, 1);
          } else {
            const addr = BASE + o.page * PAGE + o.off;
            const access: Access = o.write ? 'write' : 'read';
            const want = modelTranslate(addr, o.len, o.write ? W : R);
            // RAM is 256 pages: targets up to page 203 are all inside it.
            const gen = dma.translationGeneration;
            let got: number | 'fault';
            try {
              got = dma.translateRange(addr, o.len, access);
            } catch (e) {
              if (!(e instanceof DmaFault)) throw e;
              got = 'fault';
            }
            if (want.kind === 'fault') expect(got).toBe('fault');
            else if (want.kind === 'multi') expect(got).toBe(-1);
            else {
              expect(got).toBe(want.gpa);
              kept.push({ addr, len: o.len, access, gen, gpa: want.gpa });
            }
          }
          // Safety: whatever stillValid vouches for, the model still translates the same way.
          for (const k of kept) {
            if (!dma.stillValid(k.addr, k.len, k.gen)) continue;
            const now = modelTranslate(k.addr, k.len, k.access === 'write' ? W : R);
            expect(now).toEqual({ kind: 'gpa', gpa: k.gpa });
          }
        }
        expect(dev.pendingEvents).toBe(0);
      }),
      { numRuns: 300 },
    );
  });
});
