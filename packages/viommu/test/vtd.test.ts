import { GuestMemory, GuestMemoryError } from '@ioplane/guest-memory';
import { describe, expect, it } from 'vitest';
import { DmaFault, FAULT_REASONS, type FaultRecord, TranslatingMemory, type TranslationOut, type TranslationSource, VtdRemapper, VtdSource, type VtdOptions, aheadRights } from '../src/index.js';
import { rangeSlot } from '../src/translating-memory.js';

/*
 * Golden tests on hand-built VT-d tables (legacy mode, second-level). Layout:
 *   0x1000 root table; 0x2000 context table of bus 0
 *   device 00:01.0 (sid 0x08): 4-level (AW=2), domain 5, PML4 at 0x3000 → PDPT 0x4000 → PD 0x5000 → PT 0x6000
 *   device 00:02.0 (sid 0x10): 3-level (AW=1), domain 6, PDPT-level root at 0x9000 → PD 0xa000 → PT 0xb000
 */
const SID4 = 0x08;
const SID3 = 0x10;
const P = 1n;
const R = 1n;
const W = 2n;
const RW = 3n;
const PS = 0x80n;

function tables(options: Partial<VtdOptions> = {}) {
  const ram = GuestMemory.create(0x100000);
  const q = (addr: number, v: bigint) => ram.writeU64(addr, v);
  q(0x1000, 0x2000n | P); // root entry, bus 0
  q(0x2000 + SID4 * 16, 0x3000n | P); // context lo: SLPTPTR, TT = 0
  q(0x2000 + SID4 * 16 + 8, 2n | (5n << 8n)); // context hi: AW = 2 (48-bit), DID 5
  q(0x3000, 0x4000n | RW); // PML4[0]
  q(0x4000, 0x5000n | RW); // PDPT[0]
  q(0x4000 + 8, 0x8000_0000n | PS | RW); // PDPT[1]: 1 GiB leaf, IOVA 1 GiB → GPA 2 GiB
  q(0x5000, 0x6000n | RW); // PD[0]
  q(0x5000 + 8, 0x40_0000n | PS | RW); // PD[1]: 2 MiB leaf, IOVA 2 MiB → GPA 4 MiB
  q(0x6000 + 1 * 8, 0x7000n | R); // PT[1]: IOVA 0x1000 → 0x7000, read-only
  q(0x6000 + 2 * 8, 0x8000n | RW); // PT[2]: IOVA 0x2000 → 0x8000
  q(0x6000 + 3 * 8, 0xe000n | W); // PT[3]: IOVA 0x3000 → 0xe000, write-only
  q(0x2000 + SID3 * 16, 0x9000n | P);
  q(0x2000 + SID3 * 16 + 8, 1n | (6n << 8n)); // AW = 1 (39-bit), DID 6
  q(0x9000, 0xa000n | RW);
  q(0xa000, 0xb000n | RW);
  q(0xb000 + 3 * 8, 0xc000n | RW); // IOVA 0x3000 → 0xc000
  const vtd = new VtdRemapper({ memory: ram, ...options });
  vtd.setRootTable(0x1000);
  return { ram, q, vtd };
}

const out: TranslationOut = { gpa: 0, start: 0, end: 0 };
function tr(vtd: VtdRemapper, sid: number, addr: number, access: 'read' | 'write' = 'read'): string | [number, number] {
  const code = vtd.translate(sid, addr, access, out);
  return code === 0 ? [out.gpa, out.end] : FAULT_REASONS[code]!;
}

describe('VT-d second-level walker: golden translations', () => {
  it('walks 4-level tables to 4 KiB, 2 MiB and 1 GiB leaves', () => {
    const { vtd } = tables();
    expect(tr(vtd, SID4, 0x1234)).toEqual([0x7234, 0x2000]);
    expect(tr(vtd, SID4, 0x2fff, 'write')).toEqual([0x8fff, 0x3000]);
    expect(tr(vtd, SID4, 0x20_0000 + 0x12345)).toEqual([0x40_0000 + 0x12345, 0x40_0000]);
    expect(tr(vtd, SID4, 0x4000_0000 + 0x1234_5678)).toEqual([0x8000_0000 + 0x1234_5678, 0x8000_0000]);
    expect(tr(vtd, SID4, 0x7fff_ffff, 'write')).toEqual([0xbfff_ffff, 0x8000_0000]);
  });

  it('walks 3-level tables and refuses input addresses at or above 2^39 (fault 4h)', () => {
    const { vtd } = tables();
    expect(tr(vtd, SID3, 0x3008, 'write')).toEqual([0xc008, 0x4000]);
    expect(tr(vtd, SID3, 2 ** 39)).toBe('address-width');
    expect(tr(vtd, SID4, 2 ** 48)).toBe('address-width');
    expect(tr(vtd, SID3, 0x4000)).toBe('vtd-read'); // PT[4] not present
  });

  it('checks rights at every level: read-only and write-only leaves, and a read-only upper level', () => {
    const { vtd, q } = tables();
    expect(tr(vtd, SID4, 0x1000, 'write')).toBe('vtd-write');
    expect(tr(vtd, SID4, 0x3000, 'read')).toBe('vtd-read');
    expect(tr(vtd, SID4, 0x3000, 'write')).toEqual([0xe000, 0x4000]);
    q(0x3000, 0x4000n | R); // PML4[0] read-only: every leaf below is read-only
    vtd.invalidateIotlbDomain(5);
    expect(tr(vtd, SID4, 0x2000, 'write')).toBe('vtd-write');
    expect(tr(vtd, SID4, 0x2000, 'read')).toEqual([0x8000, 0x3000]);
  });

  it('reports root and context faults with their VT-d reason codes', () => {
    const { vtd, q, ram } = tables();
    expect(tr(vtd, 0x0100, 0)).toBe('root-not-present'); // bus 1
    expect(tr(vtd, 0x18, 0)).toBe('context-not-present');
    q(0x2000 + 0x18 * 16, 0x3000n | P);
    q(0x2000 + 0x18 * 16 + 8, 3n); // AW = 3 (57-bit): not supported
    expect(tr(vtd, 0x18, 0)).toBe('context-invalid');
    q(0x2000 + 0x18 * 16, 0x3000n | P | (3n << 2n)); // TT = 3: reserved
    q(0x2000 + 0x18 * 16 + 8, 2n);
    expect(tr(vtd, 0x18, 0)).toBe('context-invalid');
    q(0x2000 + 0x18 * 16, 0x3000n | P | 0x10n); // reserved bit 4
    expect(tr(vtd, 0x18, 0)).toBe('context-reserved');
    q(0x2000 + 0x18 * 16, 0x3000n | P);
    q(0x2000 + 0x18 * 16 + 8, 2n | (1n << 40n)); // reserved bit 104 of the entry
    expect(tr(vtd, 0x18, 0)).toBe('context-reserved');
    q(0x1000 + 2 * 16, 0x2000n | P | 0x100n); // root entry of bus 2 with reserved bit 8
    expect(tr(vtd, 0x0200, 0)).toBe('root-reserved');
    q(0x1000 + 3 * 16, 0x20_0000n | P); // bus 3: context table outside guest memory
    expect(tr(vtd, 0x0300, 0)).toBe('context-table-invalid');
    const tiny = new VtdRemapper({ memory: GuestMemory.create(0x1800) });
    tiny.setRootTable(0x1000);
    expect(tr(tiny, 0xff00, 0)).toBe('root-table-invalid'); // bus 255's entry is past memory
    expect(ram.size).toBe(0x100000);
  });

  it('refuses reserved bits in paging entries (fault Ch): SNP, PS at level 4, address above HAW, unsupported large pages', () => {
    const { vtd, q } = tables({ haw: 39 });
    q(0x6000 + 5 * 8, 0x9000n | RW | 0x800n); // SNP
    expect(tr(vtd, SID4, 0x5000)).toBe('paging-reserved');
    q(0x6000 + 6 * 8, (1n << 40n) | RW); // address bit 40 > HAW 39
    expect(tr(vtd, SID4, 0x6000)).toBe('paging-reserved');
    q(0x6000 + 7 * 8, 0x9000n | RW | (1n << 62n) | (0x3ffn << 52n) | (1n << 63n)); // TM + ignored bits: fine in a leaf
    expect(tr(vtd, SID4, 0x7000)).toEqual([0x9000, 0x8000]);
    q(0x5000 + 2 * 8, 0x40_1000n | PS | RW); // 2 MiB leaf with bits 20:12 set
    expect(tr(vtd, SID4, 0x40_0000)).toBe('paging-reserved');
    q(0x3000 + 8, 0n | PS | RW); // PS in a PML4 entry (IOVA 2^39: within AGAW 48 even with HAW 39)
    expect(tr(vtd, SID4, 2 ** 39)).toBe('paging-reserved');
    const { vtd: no1g } = tables({ largePages1G: false, largePages2M: false });
    expect(tr(no1g, SID4, 0x4000_0000)).toBe('paging-reserved');
    expect(tr(no1g, SID4, 0x20_0000)).toBe('paging-reserved');
  });

  it('passes through for TT = 2 and when translation is disabled', () => {
    const { vtd, q } = tables();
    q(0x2000 + 0x20 * 16, P | (2n << 2n));
    q(0x2000 + 0x20 * 16 + 8, 2n | (7n << 8n));
    expect(tr(vtd, 0x20, 0x1234)).toEqual([0x1234, 2 ** 48]);
    const noPt = tables({ passThrough: false });
    noPt.q(0x2000 + 0x20 * 16, P | (2n << 2n));
    noPt.q(0x2000 + 0x20 * 16 + 8, 2n | (7n << 8n));
    expect(tr(noPt.vtd, 0x20, 0)).toBe('context-invalid'); // TT = 2 without ECAP.PT
    vtd.disable();
    expect(tr(vtd, 0x0500, 0x1234)).toEqual([0x1234, 2 ** 53]);
  });
});

describe('VT-d caching and invalidation', () => {
  it('keeps a cached leaf until page-selective invalidation, as hardware does, then walks again', () => {
    const { vtd, q } = tables();
    expect(tr(vtd, SID4, 0x2000)).toEqual([0x8000, 0x3000]);
    q(0x6000 + 2 * 8, 0x9000n | RW); // the guest edits its table...
    expect(tr(vtd, SID4, 0x2000)).toEqual([0x8000, 0x3000]); // ...and has not invalidated yet
    vtd.invalidateIotlbPages(6, 0x2000, 0); // another domain: no effect
    expect(tr(vtd, SID4, 0x2000)).toEqual([0x8000, 0x3000]);
    vtd.invalidateIotlbPages(5, 0x2000, 0);
    expect(tr(vtd, SID4, 0x2000)).toEqual([0x9000, 0x3000]);
    q(0x6000 + 2 * 8, 0n); // unmapped
    vtd.invalidateIotlbPages(5, 0x0, 2); // 4 pages from 0: covers 0x2000
    expect(tr(vtd, SID4, 0x2000)).toBe('vtd-read');
  });

  it('page-selective invalidation of any 4 KiB inside a cached 2 MiB leaf drops the leaf', () => {
    const { vtd, q } = tables();
    expect(tr(vtd, SID4, 0x20_0000)).toEqual([0x40_0000, 0x40_0000]);
    q(0x5000 + 8, 0x60_0000n | PS | RW);
    vtd.invalidateIotlbPages(5, 0x3f_f000, 0); // the last page of the leaf
    expect(tr(vtd, SID4, 0x20_0000)).toEqual([0x60_0000, 0x40_0000]);
  });

  it('domain-selective and queued invalidation', () => {
    const { vtd, q } = tables();
    tr(vtd, SID4, 0x2000);
    tr(vtd, SID3, 0x3000);
    q(0x6000 + 2 * 8, 0xa000n | RW);
    q(0xb000 + 3 * 8, 0xd000n | RW);
    vtd.invalidateIotlbDomain(6);
    expect(tr(vtd, SID3, 0x3000)).toEqual([0xd000, 0x4000]);
    expect(tr(vtd, SID4, 0x2000)).toEqual([0x8000, 0x3000]);
    // Queued IOTLB invalidate descriptor: type 2, granularity 3 (page), DID 5; hi: ADDR 0x2000, AM 0.
    expect(vtd.invalidateDescriptor(2n | (3n << 4n) | (5n << 16n), 0x2000n)).toBe(true);
    expect(tr(vtd, SID4, 0x2000)).toEqual([0xa000, 0x3000]);
    expect(vtd.invalidateDescriptor(5n, 0n)).toBe(false); // wait descriptor: the caller's business
  });

  it('caches context entries until a context-cache invalidation (device, domain, global)', () => {
    const { vtd, q } = tables();
    const dma = vtd.dmaMemory(SID4, vtd.memory);
    expect(dma.readU8(0x2000)).toBe(0);
    q(0x2000 + SID4 * 16, 0n); // context cleared
    expect(dma.readU8(0x2000)).toBe(0);
    vtd.invalidateContextDevice(SID4);
    expect(() => dma.readU8(0x2000)).toThrow(DmaFault);
    q(0x2000 + SID4 * 16, 0x3000n | P);
    expect(dma.readU8(0x2000)).toBe(0); // not-present entries are never cached
    q(0x2000 + SID4 * 16 + 8, 1n | (5n << 8n)); // now 3-level
    vtd.invalidateContextDomain(6);
    expect(dma.readU8(0x2000)).toBe(0);
    vtd.invalidateContextGlobal();
    // The context now says 3 levels from 0x3000, where that walk finds no leaf for 0x2000; but the
    // domain's IOTLB still holds the old leaf until software invalidates it too, as on hardware.
    expect(dma.readU8(0x2000)).toBe(0);
    vtd.invalidateIotlbDomain(5);
    expect(() => dma.readU8(0x2000)).toThrow(DmaFault);
  });
});

describe('VT-d behind the DmaMemory interface', () => {
  it('reads and writes through the walk, faults with the VT-d reason, touches nothing on a fault', () => {
    const { vtd, ram } = tables();
    const faults: unknown[] = [];
    const dma = vtd.dmaMemory(SID4, ram);
    ram.writeU32(0x7010, 0x11223344);
    expect(dma.readU32(0x1010)).toBe(0x11223344);
    try {
      dma.writeFrom(0x2ff0, new Uint8Array(0x20).fill(0xee)); // 0x2000 read-write, 0x3000 write-only: both permit
    } catch (e) {
      faults.push(e);
    }
    expect(faults).toEqual([]);
    expect(ram.readU8(0xe000)).toBe(0xee);
    const snapshot = ram.regions[0]!.bytes.slice();
    let fault: DmaFault | undefined;
    try {
      dma.writeFrom(0xff0, new Uint8Array(0x20).fill(0xdd)); // 0x1000 is read-only
    } catch (e) {
      fault = e as DmaFault;
    }
    expect(fault).toBeInstanceOf(DmaFault);
    expect(fault!.fault).toMatchObject({ endpoint: SID4, address: 0xff0, reason: 'vtd-write', vtdReason: 5 });
    expect(Buffer.compare(ram.regions[0]!.bytes, snapshot)).toBe(0);
    expect(vtd.faults.length).toBe(1);
  });

  it('through the DmaMemory too, an edited leaf is seen exactly after its invalidation', () => {
    const { vtd, q, ram } = tables();
    const dma = vtd.dmaMemory(SID4, ram);
    ram.writeU8(0x8000, 1);
    ram.writeU8(0x9000, 2);
    expect(dma.readU8(0x2000)).toBe(1);
    q(0x6000 + 2 * 8, 0x9000n | RW);
    expect(dma.readU8(0x2000)).toBe(1); // not invalidated yet: the old leaf, as on hardware
    vtd.invalidateIotlbPages(5, 0x2000, 0);
    expect(dma.readU8(0x2000)).toBe(2);
    q(0x6000 + 2 * 8, 0n);
    vtd.invalidateDescriptor(2n | (2n << 4n) | (5n << 16n), 0n); // queued domain-selective
    expect(() => dma.readU8(0x2000)).toThrow(DmaFault);
    const uncached = tables({ iotlbEntries: 0 });
    const d2 = uncached.vtd.dmaMemory(SID4, uncached.ram);
    expect(d2.readU8(0x2000)).toBe(0);
    uncached.q(0x6000 + 2 * 8, 0n);
    expect(() => d2.readU8(0x2000)).toThrow(DmaFault); // no IOTLB: every access walks
  });

  it('suppresses fault recording for a context with FPD set, but still fails the DMA', () => {
    const { vtd, q, ram } = tables();
    q(0x2000 + SID4 * 16, 0x3000n | P | 2n);
    const dma = vtd.dmaMemory(SID4, ram);
    expect(() => dma.writeU8(0x1000, 1)).toThrow(DmaFault);
    expect(vtd.faults.length).toBe(0);
    expect(vtd.stats.suppressedFaults).toBe(1);
  });

  it('executes context-cache descriptors at each granularity and refuses unknown ones', () => {
    const { vtd, q } = tables();
    const dma = vtd.dmaMemory(SID4, vtd.memory);
    const cut = () => q(0x2000 + SID4 * 16, 0n);
    const restore = () => q(0x2000 + SID4 * 16, 0x3000n | P);
    for (const desc of [1n | (1n << 4n), 1n | (2n << 4n) | (5n << 16n), 1n | (3n << 4n) | (BigInt(SID4) << 32n)]) {
      expect(dma.readU8(0x2000)).toBe(0);
      cut();
      expect(dma.readU8(0x2000)).toBe(0); // cached context
      expect(vtd.invalidateDescriptor(desc, 0n)).toBe(true);
      expect(() => dma.readU8(0x2000)).toThrow(DmaFault);
      restore();
    }
    expect(vtd.invalidateDescriptor(1n, 0n)).toBe(false); // granularity 0
    expect(vtd.invalidateDescriptor(2n, 0n)).toBe(false);
    expect(vtd.invalidateDescriptor(2n | (1n << 4n), 0n)).toBe(true); // global IOTLB
  });

  it('faults 7h when a paging entry lies outside guest memory, and bounds its fault log', () => {
    const { vtd, q, ram } = tables({ maxFaults: 2 });
    q(0x5000 + 3 * 8, 0x80_0000n | RW); // PD[3] → a page table past the end of RAM
    expect(tr(vtd, SID4, 3 * 0x20_0000)).toBe('paging-entry-invalid');
    const dma = vtd.dmaMemory(SID4, ram);
    for (let i = 0; i < 5; i++) expect(() => dma.readU8(0x5000 + i)).toThrow(DmaFault);
    expect(vtd.faults.length).toBe(2);
    expect(vtd.faults[1]!.address).toBe(0x5004);
    expect(vtd.stats.faults).toBe(5);
  });

  it('with translation disabled, a source-id’s DmaMemory sees guest-physical memory', () => {
    const { vtd, ram } = tables();
    const dma = vtd.dmaMemory(0x0700, ram);
    expect(() => dma.readU8(0x10)).toThrow(DmaFault); // root entry of bus 7 not present
    vtd.disable();
    expect(dma.readU8(0x1000)).toBe(0x01); // the root table's first byte, untranslated
    vtd.setRootTable(0x1000);
    expect(() => dma.readU8(0x10)).toThrow(DmaFault);
  });

  it('validates its options', () => {
    const ram = GuestMemory.create(0x1000);
    expect(() => new VtdRemapper({ memory: ram, haw: 60 })).toThrow(/haw/);
    expect(() => new VtdRemapper({ memory: ram, levels: [5 as 4] })).toThrow(/3 or 4/);
    const v = new VtdRemapper({ memory: ram });
    expect(() => v.setRootTable(0x10)).toThrow(/aligned/);
    expect(() => v.invalidateIotlbPages(0, 0, 99)).toThrow(/address mask/);
    expect(() => v.dmaMemory(0x10000, ram)).toThrow(/source-id/);
  });
});

describe('VT-d invalidation log: carried translations survive invalidations of other pages and domains', () => {
  /** Carries four translations (three pages of domain 5, one of domain 6) under generation `gen`. */
  function carried() {
    const t = tables();
    const a = t.vtd.dmaMemory(SID4, t.ram);
    const b = t.vtd.dmaMemory(SID3, t.ram);
    const gen = a.translationGeneration;
    expect(a.translateRange(0x1000, 16, 'read')).toBe(0x7000);
    expect(a.translateRange(0x2000, 16, 'write')).toBe(0x8000);
    expect(a.translateRange(0x3000, 16, 'write')).toBe(0xe000);
    expect(b.translateRange(0x3000, 16, 'read')).toBe(0xc000);
    return { ...t, a, b, gen };
  }

  it('a PSI of one page keeps the other pages of its domain and other domains, drops its own', () => {
    const { vtd, q, a, b, gen } = carried();
    q(0x6000 + 2 * 8, 0x9000n | RW);
    vtd.invalidateIotlbPages(5, 0x2000, 0, true);
    expect(a.translationGeneration).not.toBe(gen);
    expect(a.stillValid(0x1000, 16, gen)).toBe(true);
    expect(a.stillValid(0x2000, 16, gen)).toBe(false);
    expect(a.stillValid(0x3000, 16, gen)).toBe(true);
    expect(b.stillValid(0x3000, 16, gen)).toBe(true);
    // The checked-range table agrees: the untouched page is revalidated, the invalidated one re-translated.
    const revalidated = a.rangeStats.revalidated;
    expect(a.translateRange(0x1000, 16, 'read')).toBe(0x7000);
    expect(a.rangeStats.revalidated).toBe(revalidated + 1);
    expect(a.translateRange(0x2000, 16, 'write')).toBe(0x9000);
    // The same page number in the other domain is another address space.
    vtd.invalidateIotlbPages(6, 0x1000, 0);
    expect(a.stillValid(0x1000, 16, gen)).toBe(true);
  });

  it('a PSI with an address mask drops every page of its aligned range', () => {
    const { vtd, a, gen } = carried();
    vtd.invalidateIotlbPages(5, 0x3000, 1); // 8 KiB aligned: 0x2000..0x3fff
    expect(a.stillValid(0x1000, 16, gen)).toBe(true);
    expect(a.stillValid(0x2000, 16, gen)).toBe(false);
    expect(a.stillValid(0x3000, 16, gen)).toBe(false);
    vtd.invalidateDescriptor(2n | (3n << 4n) | (5n << 16n), 0x3000n | 2n); // queued, AM = 2: 0..0x3fff
    expect(a.stillValid(0x1000, 16, gen)).toBe(false);
  });

  it('a DSI drops its domain’s translations only; a global IOTLB invalidation drops every one', () => {
    const { vtd, a, b, gen } = carried();
    vtd.invalidateIotlbDomain(5);
    expect(a.stillValid(0x1000, 16, gen)).toBe(false);
    expect(a.stillValid(0x3000, 16, gen)).toBe(false);
    expect(b.stillValid(0x3000, 16, gen)).toBe(true);
    vtd.invalidateIotlbGlobal();
    expect(b.stillValid(0x3000, 16, gen)).toBe(false);
  });

  it('a context-cache invalidation drops the translations of the devices it covers, and no others; global, SRTP and TE drop everything', () => {
    const cases: [string, (v: VtdRemapper) => void, boolean, boolean][] = [
      ['device of another device', (v) => v.invalidateContextDevice(0x0700), true, true],
      ['device of SID4', (v) => v.invalidateContextDevice(SID4), false, true],
      ['queued, device of SID3', (v) => v.invalidateDescriptor(1n | (3n << 4n) | (BigInt(SID3) << 32n), 0n), true, false],
      ['domain of nobody', (v) => v.invalidateContextDomain(9), true, true],
      ['domain 5 (SID4)', (v) => v.invalidateContextDomain(5), false, true],
      ['queued, domain 6 (SID3)', (v) => v.invalidateDescriptor(1n | (2n << 4n) | (6n << 16n), 0n), true, false],
      ['global', (v) => v.invalidateContextGlobal(), false, false],
      ['SRTP', (v) => v.setRootTable(0x1000), false, false],
      ['TE', (v) => v.disable(), false, false],
    ];
    for (const [name, inv, keepA, keepB] of cases) {
      const { vtd, a, b, gen } = carried();
      inv(vtd);
      expect([name, a.stillValid(0x1000, 16, gen), a.stillValid(0x3000, 16, gen)]).toEqual([name, keepA, keepA]);
      expect([name, b.stillValid(0x3000, 16, gen)]).toEqual([name, keepB]);
    }
  });

  it('after a device-selective context invalidation the device translates through its new context; the other device keeps its carried translations', () => {
    const { vtd, q, a, b } = carried();
    // SID4 moves to domain 6's 3-level tables, as a guest reassigning the device would write it.
    q(0x2000 + SID4 * 16, 0x9000n | P);
    q(0x2000 + SID4 * 16 + 8, 1n | (6n << 8n));
    // Before the invalidation the unit may still use the cached context (as hardware may).
    expect(a.translateRange(0x3000, 16, 'write')).toBe(0xe000);
    vtd.invalidateContextDevice(SID4);
    vtd.invalidateIotlbDomain(5);
    const revalidated = b.rangeStats.revalidated;
    expect(b.translateRange(0x3000, 16, 'read')).toBe(0xc000);
    expect(b.rangeStats.revalidated).toBe(revalidated + 1);
    expect(a.translateRange(0x3000, 16, 'read')).toBe(0xc000);
    expect(() => a.readU8(0x1000)).toThrow(DmaFault); // not mapped in domain 6
  });

  it('with translation off, identity translations survive page and domain invalidations but not TE', () => {
    const { vtd, ram } = tables();
    vtd.disable();
    const a = vtd.dmaMemory(SID4, ram);
    const gen = a.translationGeneration;
    expect(a.translateRange(0x1000, 16, 'read')).toBe(0x1000);
    vtd.invalidateIotlbPages(5, 0x1000, 0);
    vtd.invalidateIotlbDomain(5);
    expect(a.stillValid(0x1000, 16, gen)).toBe(true);
    vtd.setRootTable(0x1000);
    expect(a.stillValid(0x1000, 16, gen)).toBe(false);
  });

  it('a source whose context faults vouches for nothing', () => {
    const { vtd, ram } = tables();
    const c = vtd.dmaMemory(0x0700, ram); // bus 7: root entry not present
    expect(() => c.readU8(0)).toThrow(DmaFault);
    const gen = c.translationGeneration;
    vtd.invalidateIotlbPages(5, 0x1000, 0);
    expect(c.stillValid(0x1000, 16, gen)).toBe(false);
    expect(c.stillValid(0x1000, 16, c.translationGeneration)).toBe(true); // the current generation always holds
  });
});

describe('VT-d paging-structure (PDE) cache', () => {
  /** A `DmaMemory` that counts the 32-bit reads the walker makes (it reads nothing else). */
  function counting(ram: GuestMemory) {
    const c = { reads: 0 };
    const memory = { readU32: (a: number) => (c.reads++, ram.readU32(a)) } as unknown as GuestMemory;
    return { c, memory };
  }

  it('an IOTLB miss under a cached PDE reads one 8-byte leaf entry, not four', () => {
    const { ram } = tables();
    const { c, memory } = counting(ram);
    // runPages 1: the leaf alone, so no neighbour is read to extend the run; no prefetch, which reads the rest of the line.
    const vtd = new VtdRemapper({ memory, runPages: 1, iotlbPrefetch: false });
    vtd.setRootTable(0x1000);
    expect(tr(vtd, SID4, 0x1000)).toEqual([0x7000, 0x2000]);
    const first = c.reads; // root + context (2 × 16 bytes) + 4 paging entries: 16 reads of 4 bytes
    expect(first).toBe(16);
    expect(vtd.stats.pdeMisses).toBe(1);
    expect(tr(vtd, SID4, 0x2000, 'write')).toEqual([0x8000, 0x3000]);
    expect(c.reads - first).toBe(2);
    expect(vtd.stats.pdeHits).toBe(1);
    // Leaves are not PDE-cached: the 2 MiB leaf and the 1 GiB leaf are walked in full.
    expect(tr(vtd, SID4, 0x20_0000)).toEqual([0x40_0000, 0x40_0000]);
    expect(vtd.stats.pdeHits).toBe(1);
    const off = new VtdRemapper({ memory, pdeCacheEntries: 0, pdpteCacheEntries: 0, runPages: 1, iotlbPrefetch: false });
    off.setRootTable(0x1000);
    tr(off, SID4, 0x1000);
    const before = c.reads;
    tr(off, SID4, 0x2000);
    expect(c.reads - before).toBe(8);
  });

  it('a PDE miss under a cached PDPTE starts at the page directory: one or two entries, not three or four', () => {
    const { ram } = tables();
    const { c, memory } = counting(ram);
    const vtd = new VtdRemapper({ memory, runPages: 1, iotlbPrefetch: false, pdeCacheEntries: 0 });
    vtd.setRootTable(0x1000);
    expect(tr(vtd, SID4, 0x1000)).toEqual([0x7000, 0x2000]);
    expect(vtd.stats.pdpteMisses).toBe(1);
    let before = c.reads;
    // Another 2 MiB frame of the same GiB: the PD entry alone (a 2 MiB leaf).
    expect(tr(vtd, SID4, 0x20_0000)).toEqual([0x40_0000, 0x40_0000]);
    expect(c.reads - before).toBe(2);
    before = c.reads;
    expect(tr(vtd, SID4, 0x2000, 'write')).toEqual([0x8000, 0x3000]);
    expect(c.reads - before).toBe(4); // PD entry, then the leaf
    expect(vtd.stats.pdpteHits).toBe(2);
    // The next GiB is another PDPT entry (a 1 GiB leaf, never cached as a table pointer): walked from the top.
    before = c.reads;
    expect(tr(vtd, SID4, 0x4000_0000)).toEqual([0x8000_0000, 0x8000_0000]);
    expect(c.reads - before).toBe(4);
    expect(vtd.stats.pdpteMisses).toBe(2);
  });

  it('a PSI with IH = 1 keeps a stale PDPTE; IH = 0 in its GiB, a DSI or a global invalidation drops it', () => {
    for (const drop of [
      (v: VtdRemapper) => v.invalidateIotlbPages(5, 0x3000_0000, 0, false),
      (v: VtdRemapper) => v.invalidateIotlbDomain(5),
      (v: VtdRemapper) => v.invalidateIotlbGlobal(),
    ]) {
      const { vtd, q } = tables({ pdeCacheEntries: 0, iotlbEntries: 0 });
      expect(tr(vtd, SID4, 0x2000)).toEqual([0x8000, 0x3000]);
      // The guest points PDPT[0] at a new page directory whose PD[0] leads to a new table.
      q(0xf000, 0x10000n | RW);
      q(0x10000 + 2 * 8, 0x11000n | RW);
      q(0x4000, 0xf000n | RW);
      vtd.invalidateIotlbPages(5, 0x2000, 0, true);
      expect(tr(vtd, SID4, 0x2000)).toEqual([0x8000, 0x3000]); // still the old PD: allowed, software said IH = 1
      vtd.invalidateIotlbPages(5, 0x4000_0000, 0, false); // IH = 0, but in the next GiB
      expect(tr(vtd, SID4, 0x2000)).toEqual([0x8000, 0x3000]);
      drop(vtd);
      expect(tr(vtd, SID4, 0x2000)).toEqual([0x11000, 0x3000]);
    }
  });

  it('a PSI with IH = 1 keeps a stale PDE (software said only leaves changed); IH = 0, DSI and global drop it', () => {
    for (const drop of [
      (v: VtdRemapper) => v.invalidateIotlbPages(5, 0x2000, 0),
      (v: VtdRemapper) => v.invalidateDescriptor(2n | (3n << 4n) | (5n << 16n), 0x2000n), // IH = 0 in the descriptor
      (v: VtdRemapper) => v.invalidateIotlbDomain(5),
      (v: VtdRemapper) => v.invalidateIotlbGlobal(),
    ]) {
      // No IOTLB prefetch: this is about the PDE cache, and a prefetched leaf of the old table would (rightly) outlive a PSI of another page.
      const { vtd, q } = tables({ iotlbPrefetch: false });
      expect(tr(vtd, SID4, 0x1000)).toEqual([0x7000, 0x2000]); // PD[0] → PT 0x6000 cached
      q(0xf000 + 2 * 8, 0xd000n | RW); // a new page table at 0xf000...
      q(0x5000, 0xf000n | RW); // ...replaces PT 0x6000 in PD[0]
      vtd.invalidateIotlbPages(5, 0x2000, 0, true);
      expect(tr(vtd, SID4, 0x2000)).toEqual([0x8000, 0x3000]); // through the cached PDE: the old table
      vtd.invalidateDescriptor(2n | (3n << 4n) | (5n << 16n), 0x2000n | 0x40n); // IH = 1, queued
      expect(tr(vtd, SID4, 0x2000)).toEqual([0x8000, 0x3000]);
      vtd.invalidateIotlbPages(6, 0x2000, 0); // IH = 0, but another domain
      expect(tr(vtd, SID4, 0x2000)).toEqual([0x8000, 0x3000]);
      drop(vtd);
      expect(tr(vtd, SID4, 0x2000)).toEqual([0xd000, 0x3000]);
      expect(tr(vtd, SID4, 0x3000, 'write')).toBe('vtd-write'); // never cached: walked through the new table, which has no entry 3
    }
  });

  it('an IH = 0 PSI drops the PDEs of the 2 MiB frames its range touches, and keeps the others', () => {
    // No IOTLB: every translation walks, so the PDE cache's hits and misses show.
    const { vtd, q } = tables({ iotlbEntries: 0 });
    q(0x5000 + 2 * 8, 0xf000n | RW); // PD[2] → PT 0xf000 (IOVA 4 MiB .. 6 MiB)
    q(0xf000 + 1 * 8, 0x9000n | RW); // IOVA 0x401000 → 0x9000
    expect(tr(vtd, SID4, 0x1000)).toEqual([0x7000, 0x2000]);
    expect(tr(vtd, SID4, 0x40_1000)).toEqual([0x9000, 0x40_2000]);
    expect(vtd.stats.pdeMisses).toBe(2);
    vtd.invalidateIotlbPages(5, 0x2000, 0); // IH = 0, one page of frame 0
    expect(tr(vtd, SID4, 0x40_1000)).toEqual([0x9000, 0x40_2000]);
    expect(vtd.stats.pdeHits).toBe(1); // frame 2 kept
    expect(tr(vtd, SID4, 0x1000)).toEqual([0x7000, 0x2000]);
    expect(vtd.stats.pdeMisses).toBe(3); // frame 0 walked again
    // A range over both frames (AM = 11: 8 MiB) drops both.
    vtd.invalidateIotlbPages(5, 0, 11);
    tr(vtd, SID4, 0x1000);
    tr(vtd, SID4, 0x40_1000);
    expect(vtd.stats.pdeMisses).toBe(5);
  });

  it('caches the rights of the upper levels with the PDE and faults as the full walk does', () => {
    // runPages 1: with PML4[0] read-only, PT[1] and PT[2] would join into one read-only run.
    const { vtd, q } = tables({ runPages: 1, iotlbPrefetch: false });
    q(0x3000, 0x4000n | R); // PML4[0] read-only
    q(0x6000 + 5 * 8, 0x9000n | RW | 0x800n); // PT[5]: reserved SNP bit
    const full = tables({ pdeCacheEntries: 0, runPages: 1 });
    full.q(0x3000, 0x4000n | R);
    full.q(0x6000 + 5 * 8, 0x9000n | RW | 0x800n);
    expect(tr(vtd, SID4, 0x1000)).toEqual([0x7000, 0x2000]);
    expect(vtd.stats.pdeMisses).toBe(1);
    for (const [addr, access] of [
      [0x2000, 'write'], // leaf RW, PML4 R: the upper level refuses before the leaf is read
      [0x5000, 'write'], // leaf with a reserved bit: still a write fault (the rights are checked first)
      [0x5000, 'read'], // the reserved bit shows on a read
      [0x2000, 'read'],
      [0x4000, 'read'], // not present
    ] as const) {
      expect(tr(vtd, SID4, addr, access)).toEqual(tr(full.vtd, SID4, addr, access));
    }
    expect(tr(vtd, SID4, 0x5000, 'write')).toBe('vtd-write');
    expect(tr(vtd, SID4, 0x5000, 'read')).toBe('paging-reserved');
    expect(vtd.stats.pdeHits).toBe(7);
  });

  it('joins following 4 KiB leaves that map the next guest pages with the same rights into one run, and no further', () => {
    const { vtd, q } = tables();
    // PT[16..23]: IOVA 0x10000.. → GPA 0x20000.. contiguous RW, then breaks of every kind.
    for (let i = 0; i < 8; i++) q(0x6000 + (16 + i) * 8, BigInt(0x20000 + i * 0x1000) | RW);
    q(0x6000 + 24 * 8, 0x29000n | RW); // not the next guest page (0x28000)
    q(0x6000 + 32 * 8, 0x40000n | RW);
    q(0x6000 + 33 * 8, 0x41000n | R); // other rights
    q(0x6000 + 40 * 8, 0x50000n | RW);
    q(0x6000 + 41 * 8, 0x51000n | RW | 0x800n); // reserved SNP bit
    q(0x6000 + 48 * 8, 0x60000n | RW); // PT[49] not present
    expect(tr(vtd, SID4, 0x10000)).toEqual([0x20000, 0x18000]);
    expect(tr(vtd, SID4, 0x13004, 'write')).toEqual([0x23004, 0x18000]); // a walk from the middle: the rest of the run
    expect(tr(vtd, SID4, 0x10000)).toEqual([0x20000, 0x11000]); // an IOTLB hit: the IOTLB holds the leaf alone
    expect(tr(vtd, SID4, 0x20000)).toEqual([0x40000, 0x21000]);
    expect(tr(vtd, SID4, 0x28000)).toEqual([0x50000, 0x29000]);
    expect(tr(vtd, SID4, 0x30000)).toEqual([0x60000, 0x31000]);
    // Never past runPages, nor past the table.
    const { vtd: short, q: sq } = tables({ runPages: 3 });
    for (let i = 0; i < 8; i++) sq(0x6000 + (16 + i) * 8, BigInt(0x20000 + i * 0x1000) | RW);
    expect(tr(short, SID4, 0x10000)).toEqual([0x20000, 0x13000]);
    const { vtd: edge, q: eq } = tables();
    eq(0x6000 + 511 * 8, 0x30000n | RW);
    eq(0x5000 + 8, 0xa000n | RW); // PD[1] → another table, whose first leaf would continue the GPAs
    eq(0xa000, 0x31000n | RW);
    expect(tr(edge, SID4, 0x1ff000)).toEqual([0x30000, 0x200000]);
    expect(() => new VtdRemapper({ memory: GuestMemory.create(4096), runPages: 0 })).toThrow(/runPages 0/);
  });

  it('a run joined from several leaves is dropped from the device’s cache by an invalidation of any one of them', () => {
    const { vtd, q, ram } = tables();
    for (let i = 0; i < 4; i++) q(0x6000 + (16 + i) * 8, BigInt(0x20000 + i * 0x1000) | RW);
    ram.writeU32(0x23000, 0xaaaa);
    ram.writeU32(0x33000, 0xbbbb);
    const dma = vtd.dmaMemory(SID4, ram);
    expect(dma.readU32(0x10000)).toBe(0); // walks: the run [0x10000, 0x14000) sits in the device's run cache
    expect(dma.readU32(0x13000)).toBe(0xaaaa);
    q(0x6000 + 19 * 8, 0x33000n | RW); // the guest moves the last page of the run …
    vtd.invalidateIotlbPages(5, 0x13000, 0, true); // … and invalidates that page only
    expect(dma.readU32(0x13000)).toBe(0xbbbb);
    expect(dma.readU32(0x10000)).toBe(0);
  });

  it('does not cache a PDE whose walk faulted above it, nor across domains', () => {
    const { vtd, q } = tables();
    q(0x4000, 0x5000n | RW | 0x800n); // PDPT[0] with a reserved bit
    expect(tr(vtd, SID4, 0x1000)).toBe('paging-reserved');
    expect(tr(vtd, SID4, 0x1000)).toBe('paging-reserved');
    expect(vtd.stats.pdeHits).toBe(0);
    expect(tr(vtd, SID3, 0x3000)).toEqual([0xc000, 0x4000]); // domain 6 has its own cache
    expect(vtd.stats.pdeHits).toBe(0);
  });

  it('validates its size and the PSI address', () => {
    const ram = GuestMemory.create(0x1000);
    expect(() => new VtdRemapper({ memory: ram, pdeCacheEntries: 3 })).toThrow(/PDE cache/);
    expect(() => new VtdRemapper({ memory: ram, pdeCacheEntries: -1 })).toThrow(/PDE cache/);
    const v = new VtdRemapper({ memory: ram });
    expect(() => v.invalidateIotlbPages(0, -4096, 0)).toThrow(/address/);
    expect(() => v.invalidateIotlbPages(0, Number.NaN, 0)).toThrow(/address/);
  });
});

describe('VT-d IOTLB prefetch of a leaf line', () => {
  /** PT at 0x6000 (IOVA 0..2 MiB of sid 0x08) rewritten: scattered leaves, 16 pages apart in guest memory. */
  function scattered(options: Partial<VtdOptions> = {}) {
    const t = tables(options);
    for (let i = 0; i < 24; i++) t.q(0x6000 + i * 8, 0n);
    for (const i of [1, 2, 3, 5, 7, 8, 9]) t.q(0x6000 + i * 8, BigInt(0x20000 + i * 0x10000) | RW);
    t.q(0x6000 + 4 * 8, 0x60000n | RW | 0x800n); // PT[4]: present, reserved SNP bit
    t.q(0x6000 + 6 * 8, 0x80000n | R); // PT[6]: read-only
    return t;
  }

  it('caches the present leaves after a scattered leaf up to the end of its 64-byte line, and walks nothing for them', () => {
    const { vtd } = scattered({ iotlbPrefetchLines: 1 });
    expect(tr(vtd, SID4, 0x1000)).toEqual([0x30000, 0x2000]);
    expect(vtd.stats.walks).toBe(1);
    expect(vtd.stats.prefetched).toBe(5); // PT[2], [3], [5], [6], [7]: not [4] (reserved), not [8] (next line)
    expect(tr(vtd, SID4, 0x2000, 'write')).toEqual([0x40000, 0x3000]);
    expect(tr(vtd, SID4, 0x3000)).toEqual([0x50000, 0x4000]);
    expect(tr(vtd, SID4, 0x5000)).toEqual([0x70000, 0x6000]);
    expect(tr(vtd, SID4, 0x6000, 'write')).toBe('vtd-write'); // the prefetched rights hold
    expect(tr(vtd, SID4, 0x6000)).toEqual([0x80000, 0x7000]);
    expect(tr(vtd, SID4, 0x7000)).toEqual([0x90000, 0x8000]);
    expect(vtd.stats.walks).toBe(1);
    expect(tr(vtd, SID4, 0x4000)).toBe('paging-reserved'); // never cached: walked, and refused as before
    expect(tr(vtd, SID4, 0x8000)).toEqual([0xa0000, 0x9000]); // the next line: walked
    expect(vtd.stats.walks).toBe(3);
  });

  it('reads iotlbPrefetchLines lines (default 3): the walked leaf\'s and whole lines after it, never past the table', () => {
    const { vtd, q } = scattered();
    for (let i = 10; i < 32; i++) q(0x6000 + i * 8, BigInt(0x200000 + i * 0x10000) | RW);
    expect(tr(vtd, SID4, 0x1000)).toEqual([0x30000, 0x2000]);
    // Line 0 after PT[1]: [2], [3], [5], [6], [7]; lines 1 and 2: [8]..[23]. Not [24] (a fourth line).
    expect(vtd.stats.prefetched).toBe(5 + 16);
    expect(tr(vtd, SID4, 0x17000)).toEqual([0x200000 + 23 * 0x10000, 0x18000]);
    expect(vtd.stats.walks).toBe(1);
    expect(tr(vtd, SID4, 0x18000)).toEqual([0x200000 + 24 * 0x10000, 0x19000]);
    expect(vtd.stats.walks).toBe(2);
    // A walk in a table's last lines reads no further than the table.
    const end = scattered({ iotlbPrefetchLines: 8 });
    end.q(0x6000 + 509 * 8, 0x300000n | RW);
    end.q(0x6000 + 511 * 8, 0x320000n | RW);
    end.q(0x7000, 0x340000n | RW); // the page after the table: would read as a present leaf
    expect(tr(end.vtd, SID4, 509 * 0x1000)).toEqual([0x300000, 510 * 0x1000]);
    expect(end.vtd.stats.prefetched).toBe(1);
    expect(() => scattered({ iotlbPrefetchLines: 0 })).toThrow(/iotlbPrefetchLines/);
    expect(() => scattered({ iotlbPrefetchLines: 9 })).toThrow(/iotlbPrefetchLines/);
  });

  it('never caches a leaf that was not present when the line was read, and a PSI drops a prefetched one', () => {
    const { vtd, q } = scattered();
    tr(vtd, SID4, 0x9000); // PT[9]: prefetches nothing of PT[10..15], all empty
    expect(vtd.stats.prefetched).toBe(0);
    q(0x6000 + 10 * 8, 0xb0000n | RW); // mapped later: no invalidation needed for a non-present → present change
    expect(tr(vtd, SID4, 0xa000)).toEqual([0xb0000, 0xb000]);
    tr(vtd, SID4, 0x1000); // prefetches PT[2]
    q(0x6000 + 2 * 8, 0xc0000n | RW); // remapped: software must invalidate
    expect(tr(vtd, SID4, 0x2000)).toEqual([0x40000, 0x3000]); // the cached translation until it does
    vtd.invalidateIotlbPages(5, 0x2000, 0, true);
    expect(tr(vtd, SID4, 0x2000)).toEqual([0xc0000, 0x3000]);
  });

  /** The device's memory through a source that counts what it is asked (what the device did not find in its own caches). */
  function counted(vtd: VtdRemapper, ram: GuestMemory) {
    const inner = new VtdSource(vtd, SID4);
    const asked = { n: 0 };
    const source: TranslationSource = {
      endpoint: SID4,
      get generation() {
        return inner.generation;
      },
      translate(addr, access, o) {
        asked.n++;
        return inner.translate(addr, access, o);
      },
      unchangedSince: (since, start, end) => inner.unchangedSince(since, start, end),
    };
    return { dma: new TranslatingMemory(ram, source, vtd), asked };
  }

  it("hands the line's leaves to the device's TranslatingMemory as its read-ahead window: a neighbour's translateRange asks the unit nothing", () => {
    const { vtd, ram } = scattered();
    const { dma, asked } = counted(vtd, ram);
    expect(dma.translateRange(0x1000, 4096, 'read')).toBe(0x30000);
    expect(asked.n).toBe(1);
    expect(dma.windowStats.adopted).toBe(1);
    // PT[2], [3], [5], [7] are read-write: served from the window, for reads and for writes alike.
    expect(dma.translateRange(0x2000, 4096, 'read')).toBe(0x40000);
    expect(dma.translateRange(0x3000 + 8, 100, 'read')).toBe(0x50008);
    expect(dma.translateRange(0x7000, 4096, 'write')).toBe(0x90000);
    expect(dma.windowStats.hits).toBe(3);
    expect(asked.n).toBe(1);
    // Not recorded as checked ranges (a ring's page keeps its slot): served from the window again.
    const hits = dma.rangeStats.hits;
    expect(dma.translateRange(0x2000 + 16, 16, 'read')).toBe(0x40010);
    expect(dma.rangeStats.hits).toBe(hits);
    expect(dma.windowStats.hits).toBe(4);
    // PT[6] is read-only: a read is served, a write is not (the unit is asked, and faults).
    expect(dma.translateRange(0x6000, 4096, 'read')).toBe(0x80000);
    expect(asked.n).toBe(1);
    expect(() => dma.translateRange(0x6000, 4096, 'write')).toThrow(DmaFault);
    expect(asked.n).toBeGreaterThan(1);
    // PT[4] (a reserved bit) was never handed over: the unit refuses it.
    expect(() => dma.translateRange(0x4000, 4096, 'read')).toThrow(DmaFault);
    // Handed to the device, not also cached in the unit's IOTLB: a walk at the unit reads them again.
    const walks = vtd.stats.walks;
    expect(tr(vtd, SID4, 0x5000)).toEqual([0x70000, 0x6000]);
    expect(vtd.stats.walks).toBe(walks + 1);
  });

  it('drops from the window only what an invalidation revoked, and never a leaf that was not present when read', () => {
    const { vtd, q, ram } = scattered();
    const { dma, asked } = counted(vtd, ram);
    expect(dma.translateRange(0x1000, 4096, 'read')).toBe(0x30000);
    // PT[3] remapped and invalidated (IH = 1): the window's other pages stay, PT[3] is asked anew.
    q(0x6000 + 3 * 8, 0xd0000n | RW);
    vtd.invalidateIotlbPages(5, 0x3000, 0, true);
    expect(dma.translateRange(0x5000, 4096, 'write')).toBe(0x70000);
    expect(asked.n).toBe(1);
    expect(dma.translateRange(0x3000, 4096, 'write')).toBe(0xd0000);
    expect(asked.n).toBe(2);
    expect(dma.translateRange(0x7000, 4096, 'read')).toBe(0x90000);
    expect(asked.n).toBe(2);
    // A domain-selective invalidation revokes the whole window.
    vtd.invalidateIotlbDomain(5);
    expect(dma.translateRange(0x8000, 4096, 'read')).toBe(0xa0000);
    expect(asked.n).toBe(3);
    // A leaf of the line that was not present when it was read is never handed over.
    const fresh = scattered();
    const c2 = counted(fresh.vtd, fresh.ram);
    fresh.q(0x6000 + 3 * 8, 0n);
    expect(c2.dma.translateRange(0x1000, 4096, 'read')).toBe(0x30000);
    fresh.q(0x6000 + 3 * 8, 0xf0000n | RW); // mapped afterwards: no invalidation needed
    expect(c2.dma.translateRange(0x3000, 4096, 'read')).toBe(0xf0000);
    expect(c2.asked.n).toBe(2);
  });

  it('reads the window again through the cached PDE for a page in its reach mapped after it was read: no walk', () => {
    const { vtd, q, ram } = scattered();
    const dma = new TranslatingMemory(ram, new VtdSource(vtd, SID4), vtd);
    q(0x6000 + 3 * 8, 0n);
    expect(dma.translateRange(0x1000, 4096, 'read')).toBe(0x30000); // the window: PT[2..23], PT[3] absent
    expect(vtd.stats.walks).toBe(1);
    q(0x6000 + 3 * 8, 0xf0000n | RW); // mapped afterwards (a fresh IOVA needs no invalidation)
    expect(dma.translateRange(0x3000, 4096, 'write')).toBe(0xf0000);
    expect(vtd.stats.walks).toBe(1);
    expect(vtd.stats.readAheads).toBe(1);
    expect(dma.windowStats.reread).toBe(1);
    // The window read again from PT[3] to the end of its third line, PT[23]: PT[5] is still served.
    expect(dma.translateRange(0x5000, 4096, 'read')).toBe(0x70000);
    // A page just past the window's end, mapped now: read ahead from it (PT[24..47]), no walk.
    q(0x6000 + 24 * 8, 0xe0000n | RW);
    expect(dma.translateRange(0x18000, 4096, 'read')).toBe(0xe0000);
    expect(vtd.stats.walks).toBe(1);
    expect(dma.windowStats.reread).toBe(2);
    // A page far past it is not in its reach: walked.
    q(0x6000 + 100 * 8, 0xc0000n | RW);
    expect(dma.translateRange(0x64000, 4096, 'read')).toBe(0xc0000);
    expect(vtd.stats.walks).toBe(2);
    // A leaf that is still unusable is read again, then walked, and faults as before.
    expect(() => dma.translateRange(0x65000, 4096, 'read')).toThrow(DmaFault);
    expect(vtd.stats.walks).toBeGreaterThan(2);
    expect(dma.windowStats.reread).toBe(3);
  });

  it('reads ahead only through a PDE the unit still caches: an IH = 0 invalidation of the frame, a DSI or translation off refuses', () => {
    const { vtd } = scattered();
    const src = new VtdSource(vtd, SID4);
    const out: TranslationOut = { gpa: 0, start: 0, end: 0, ahead: new Float64Array(63) };
    expect(src.readAhead(0x2000, out)).toBe(false); // nothing walked yet: no PDE cached
    expect(tr(vtd, SID4, 0x1000)).toEqual([0x30000, 0x2000]);
    expect(src.readAhead(0x2000, out)).toBe(true);
    expect(out.aheadStart).toBe(0x2000);
    expect(out.aheadCount).toBe(22); // PT[2..23]
    expect(Array.from(out.ahead!.subarray(0, 4), aheadRights)).toEqual([3, 3, 0, 3]); // PT[4] has a reserved bit
    expect(out.ahead![0]! - 3).toBe(0x40000 - 0x2000);
    vtd.invalidateIotlbPages(5, 0x3000, 0, true); // IH = 1: leaves only, the PDE stays
    expect(src.readAhead(0x2000, out)).toBe(true);
    vtd.invalidateIotlbPages(5, 0x3000, 0, false); // IH = 0: the frame's PDE goes
    expect(src.readAhead(0x2000, out)).toBe(false);
    expect(tr(vtd, SID4, 0x1000)).toEqual([0x30000, 0x2000]);
    vtd.invalidateIotlbDomain(5);
    expect(src.readAhead(0x2000, out)).toBe(false);
    expect(tr(vtd, SID4, 0x1000)).toEqual([0x30000, 0x2000]);
    expect(src.readAhead(0x2000, { gpa: 0, start: 0, end: 0 })).toBe(false); // no room
    vtd.disable();
    expect(src.readAhead(0x2000, out)).toBe(false);
  });

  it('a page served from the window takes no slot of the checked-range table: a page in constant use keeps its own', () => {
    const { vtd, q, ram } = scattered();
    // IOVA page 131 shares the checked-range slot of page 2 (PT[2], in the window).
    expect(rangeSlot(131 * 4096)).toBe(rangeSlot(2 * 4096));
    q(0x6000 + 131 * 8, 0xb0000n | RW);
    const dma = new TranslatingMemory(ram, new VtdSource(vtd, SID4), vtd);
    expect(dma.translateRange(131 * 4096, 64, 'read')).toBe(0xb0000);
    expect(dma.translateRange(0x1000, 4096, 'read')).toBe(0x30000);
    expect(dma.translateRange(0x2000, 4096, 'read')).toBe(0x40000); // from the window
    const hits = dma.rangeStats.hits;
    expect(dma.translateRange(131 * 4096, 64, 'read')).toBe(0xb0000);
    expect(dma.rangeStats.hits).toBe(hits + 1);
  });

  it('serves from the window only pages in RAM: a leaf pointing outside faults as a walk would', () => {
    const { vtd, q, ram } = scattered();
    q(0x6000 + 2 * 8, 0x20_0000n | RW); // PT[2] → 2 MiB, past the 1 MiB of RAM
    const sink: FaultRecord[] = [];
    const dma = new TranslatingMemory(ram, new VtdSource(vtd, SID4), { report: (f) => void sink.push(f) });
    expect(dma.translateRange(0x1000, 4096, 'read')).toBe(0x30000);
    expect(() => dma.translateRange(0x2000, 4096, 'read')).toThrow(GuestMemoryError);
    expect(dma.windowStats.hits).toBe(0);
    expect(dma.translateRange(0x3000, 4096, 'read')).toBe(0x50000);
    expect(dma.windowStats.hits).toBe(1);
  });

  it('serves from the window only what RAM allows: a read-only page is not written, a page partly outside is not served', () => {
    const { vtd, q, ram } = scattered();
    // The device's memory: the same RAM, and 6 KiB of ROM above it.
    const inner = new GuestMemory([{ gpa: 0, backing: ram.findRegion(0)!.bytes }, { gpa: 0x10_0000, size: 0x1800, readonly: true }]);
    q(0x6000 + 2 * 8, 0x10_0000n | RW); // PT[2] → the ROM's first page
    q(0x6000 + 3 * 8, 0x10_1000n | RW); // PT[3] → a page only half of which is ROM
    const dma = new TranslatingMemory(inner, new VtdSource(vtd, SID4));
    expect(dma.translateRange(0x1000, 4096, 'read')).toBe(0x30000);
    expect(dma.translateRange(0x2000, 4096, 'read')).toBe(0x10_0000);
    expect(dma.windowStats.hits).toBe(1);
    expect(() => dma.translateRange(0x2000, 4096, 'write')).toThrow(GuestMemoryError);
    expect(() => dma.translateRange(0x3000, 4096, 'read')).toThrow(GuestMemoryError);
    expect(dma.translateRange(0x3000, 0x800, 'read')).toBe(0x10_1000); // the half inside, from the unit
    expect(dma.windowStats.hits).toBe(1);
    // A range running past the page's end is not one translation: not served from the window either.
    expect(dma.translateRange(0x5000 + 4000, 200, 'read')).toBe(-1);
    expect(dma.windowStats.hits).toBe(1);
  });

  it('never serves a page from what an earlier read-ahead left in a reused array', () => {
    const { vtd, q, ram } = scattered();
    for (const i of [40, 80, 120]) q(0x6000 + i * 8, BigInt(0x20000 + i * 0x1000) | RW);
    const { dma, asked } = counted(vtd, ram);
    expect(dma.translateRange(0x1000, 4096, 'read')).toBe(0x30000); // the window: PT[2..23]
    // PT[2] unmapped and invalidated; three more walks elsewhere rotate the window's arrays back to the first.
    q(0x6000 + 2 * 8, 0n);
    vtd.invalidateIotlbPages(5, 0x2000, 0, true);
    for (const i of [40, 80, 120]) {
      expect(dma.translateRange(i * 0x1000, 4096, 'read')).toBe(0x20000 + i * 0x1000);
      // Every other page of the new window is unmapped: whatever the array held before, none is served.
      for (let p = i + 1; p <= (i & ~7) + 23; p++) expect(() => dma.translateRange(p * 0x1000, 4096, 'read')).toThrow(DmaFault);
    }
    expect(dma.windowStats.adopted).toBe(4);
    expect(dma.windowStats.hits).toBe(0);
    vtd.invalidateIotlbPages(5, 0x1000, 0, true);
    const n = asked.n;
    expect(dma.translateRange(0x1000, 4096, 'read')).toBe(0x30000); // walks PT[1] again into that array
    expect(asked.n).toBe(n + 1);
    expect(() => dma.translateRange(0x2000, 4096, 'read')).toThrow(DmaFault); // not present: the unit says so
  });

  it('keeps a read-ahead under the generation read before asking: an invalidation while the source translated is applied', () => {
    const { vtd, q, ram } = scattered();
    const inner = new VtdSource(vtd, SID4);
    let during: (() => void) | undefined;
    // A source that takes up queued invalidations after its walk (as a unit polling its queue may).
    const source: TranslationSource = {
      endpoint: SID4,
      get generation() {
        return inner.generation;
      },
      translate(addr, access, o) {
        const code = inner.translate(addr, access, o);
        during?.();
        during = undefined;
        return code;
      },
      unchangedSince: (since, start, end) => inner.unchangedSince(since, start, end),
    };
    const dma = new TranslatingMemory(ram, source, vtd);
    during = () => {
      q(0x6000 + 3 * 8, 0xd0000n | RW);
      vtd.invalidateIotlbPages(5, 0x3000, 0, true);
    };
    expect(dma.translateRange(0x1000, 4096, 'read')).toBe(0x30000);
    expect(dma.translateRange(0x3000, 4096, 'read')).toBe(0xd0000); // not the 0x50000 the walk read ahead
    expect(dma.translateRange(0x5000, 4096, 'read')).toBe(0x70000);
    expect(dma.windowStats.hits).toBe(1);
  });

  it('does not prefetch after a leaf that starts a run (a walk returns the run), nor when turned off', () => {
    const run = scattered();
    run.q(0x6000 + 2 * 8, 0x31000n | RW); // PT[2] follows PT[1] in guest memory: one run
    expect(tr(run.vtd, SID4, 0x1000)).toEqual([0x30000, 0x3000]);
    expect(run.vtd.stats.prefetched).toBe(0);
    const { vtd } = scattered({ iotlbPrefetch: false });
    tr(vtd, SID4, 0x1000);
    tr(vtd, SID4, 0x2000);
    expect(vtd.stats.prefetched).toBe(0);
    expect(vtd.stats.walks).toBe(2);
  });
});
