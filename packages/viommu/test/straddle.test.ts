import { GuestMemory } from '@ioplane/guest-memory';
import { describe, expect, it } from 'vitest';
import { DmaFault, FaultCode, TranslatingMemory, type TranslationOut, type TranslationSource } from '../src/index.js';
import { attach, device, map } from './helpers.js';

const PAGE = 0x1000;

/** IOVA pages 1..n mapped to GPA pages in reverse order, so no two neighbours are physically adjacent. */
function scattered(n: number) {
  const ram = GuestMemory.create(64 * PAGE);
  const dev = device();
  attach(dev, 1, 1);
  for (let i = 1; i <= n; i++) map(dev, 1, BigInt(i * PAGE), BigInt(i * PAGE + PAGE - 1), BigInt((40 - i) * PAGE));
  return { ram, dev, dma: dev.dmaMemory(1, ram), gpa: (iova: number) => (40 - Math.floor(iova / PAGE)) * PAGE + (iova % PAGE) };
}

describe('accesses that straddle two translations', () => {
  it('every scalar width reads and writes across a page whose neighbour is elsewhere in RAM', () => {
    const { dma, ram, gpa } = scattered(3);
    const at = 2 * PAGE - 3; // 3 bytes in page 1, the rest in page 2
    dma.writeU16(2 * PAGE - 1, 0xbeef);
    expect(ram.readU8(gpa(2 * PAGE - 1))).toBe(0xef);
    expect(ram.readU8(gpa(2 * PAGE))).toBe(0xbe);
    expect(dma.readU16(2 * PAGE - 1)).toBe(0xbeef);
    dma.writeU32(at, 0x11223344);
    expect(dma.readU32(at)).toBe(0x11223344);
    dma.writeU64(at, 0x0102030405060708n);
    expect(dma.readU64(at)).toBe(0x0102030405060708n);
    for (let i = 0; i < 8; i++) expect(ram.readU8(gpa(at + i))).toBe(8 - i);
    dma.writeU53(at, 2 ** 53 - 1);
    expect(dma.readU53(at)).toBe(2 ** 53 - 1);
    dma.writeU64(at, 1n << 60n);
    expect(() => dma.readU53(at)).toThrow(/does not fit in 53 bits/);
  });

  it('a range over many discontiguous mappings gathers and scatters in order', () => {
    const { dma, ram, gpa } = scattered(20);
    const src = Uint8Array.from({ length: 18 * PAGE + 100 }, (_, i) => (i * 31) & 0xff);
    dma.writeFrom(PAGE + 50, src);
    for (const i of [0, PAGE - 51, PAGE - 50, 5 * PAGE, src.length - 1]) expect(ram.readU8(gpa(PAGE + 50 + i))).toBe(src[i]);
    const back = new Uint8Array(src.length);
    dma.readInto(PAGE + 50, back);
    expect(back).toEqual(src);
    expect(dma.slices(PAGE + 50, src.length, 'read').length).toBe(19);
  });

  it('a bad target in a later chunk is reported at that chunk’s first IOVA, before anything moves', () => {
    const ram = GuestMemory.create(16 * PAGE);
    ram.regions[0]!.bytes.fill(0x5a);
    const dev = device();
    attach(dev, 1, 1);
    map(dev, 1, 0x1000n, 0x1fffn, 0x8000n);
    map(dev, 1, 0x2000n, 0x2fffn, 0x3000n);
    map(dev, 1, 0x3000n, 0x3fffn, 0x20000n); // past RAM
    const dma = dev.dmaMemory(1, ram);
    for (const fn of [() => dma.writeFrom(0x1800, new Uint8Array(0x2000)), () => dma.fill(0x1800, 0x2000, 0), () => dma.checkRange(0x1800, 0x2000, 'write')]) {
      try {
        fn();
        throw new Error('expected a fault');
      } catch (e) {
        expect(e).toBeInstanceOf(DmaFault);
        expect((e as DmaFault).fault).toMatchObject({ reason: 'bad-target', address: 0x3000, accessStart: 0x1800 });
      }
    }
    expect(ram.regions[0]!.bytes.every((b) => b === 0x5a)).toBe(true);
    for (const fn of [() => dma.readU16(0x3000), () => dma.readU32(0x3000), () => dma.readU64(0x3000), () => dma.readU53(0x3000), () => dma.writeU16(0x3000, 1), () => dma.writeU64(0x3000, 1n), () => dma.writeU53(0x3000, 1)]) {
      expect(fn).toThrow(DmaFault);
    }
  });

  it('a translation source that makes no progress is refused, not looped on', () => {
    const ram = GuestMemory.create(PAGE);
    const stuck: TranslationSource = {
      endpoint: 9,
      generation: 0,
      translate(addr: number, _access, out: TranslationOut): number {
        out.gpa = addr;
        out.start = addr;
        out.end = addr; // no progress
        return 0;
      },
    };
    const dma = new TranslatingMemory(ram, stuck, undefined, false);
    expect(() => dma.readInto(0, new Uint8Array(4))).toThrow(DmaFault);
    const refusing: TranslationSource = { endpoint: 9, generation: 0, translate: () => FaultCode.unmapped };
    expect(() => new TranslatingMemory(ram, refusing).readU8(0)).toThrow(/unmapped/);
  });
});
