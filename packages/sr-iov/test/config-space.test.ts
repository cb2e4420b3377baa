import { describe, expect, it } from 'vitest';
import { ConfigSpace, type ExtendedCapabilityType, PciFunction, defs, installBar } from '../src/index.js';
import { expectSrIovError } from './helpers.js';

function plain(extra: Partial<Parameters<typeof PciFunction.create>[0]> = {}) {
  return PciFunction.create({
    address: '02:00.0',
    vendorId: 0x1af4,
    deviceId: 0x1041,
    classCode: 0x020000,
    revisionId: 1,
    interruptPin: 1,
    bars: [
      { index: 0, kind: 'mem32', size: 0x1000, address: 0xfe000000 },
      { index: 1, kind: 'io', size: 0x20 },
      { index: 2, kind: 'mem64', size: 0x4000, prefetchable: true },
      { index: 4, kind: 'mem64', size: 2n ** 34n, prefetchable: true },
    ],
    romSize: 0x10000,
    ...extra,
  });
}

describe('per-byte masks', () => {
  it('RW bits take the written value, RO bits never change, RW1C bits clear only where 1 is written', () => {
    const c = new ConfigSpace();
    c.setU32(0x40, 0xa5a5a5a5);
    c.setWritable(0x40, 4, 0x0000ff0f);
    c.setWriteOneToClear(0x40, 4, 0xff000000);
    c.write(0x40, 4, 0x5a00_3cf0);
    // byte0: RW low nibble ← 0 (from f0), RO high nibble keeps a → a0; byte1 RW ← 3c;
    // byte2 RO keeps a5; byte3 RW1C: a5 & ~5a = a5.
    expect(c.read(0x40, 4)).toBe(0xa5a53ca0);
    c.write(0x43, 1, 0x81);
    expect(c.read(0x43, 1)).toBe(0x24);
  });

  it('refuses a bit that would be both RW and RW1C', () => {
    const c = new ConfigSpace();
    c.setWritable(0x40, 1, 0x0f);
    expectSrIovError(() => c.setWriteOneToClear(0x40, 1, 0x18), 'invalid-argument');
  });

  it('checks size, range and natural alignment of every access', () => {
    const c = new ConfigSpace();
    expectSrIovError(() => c.read(0x1000, 1), 'out-of-range', 0x1000);
    expectSrIovError(() => c.read(0xffe, 4), 'out-of-range');
    expectSrIovError(() => c.read(-1, 1), 'out-of-range');
    expectSrIovError(() => c.read(1.5, 1), 'out-of-range');
    expectSrIovError(() => c.read(0x41, 2), 'misaligned', 0x41);
    expectSrIovError(() => c.write(0x42, 4, 0), 'misaligned', 0x42);
    expectSrIovError(() => c.read(0, 3 as never), 'invalid-size', 3);
    expectSrIovError(() => c.write(0, 4, Number.NaN), 'invalid-argument');
    expect(c.read(0xffc, 4)).toBe(0);
  });
});

describe('type 0 header', () => {
  it('identifies the function and keeps identity registers read-only', () => {
    const f = plain();
    for (const off of [0x00, 0x02, 0x08, 0x0c]) f.configWrite(off, 2, 0xffff);
    expect(f.configRead(0x00, 4)).toBe(0x10411af4);
    expect(f.configRead(0x08, 4)).toBe(0x02000001);
    expect(f.configRead(0x0e, 1)).toBe(0); // header type 0, single function
    expect(f.configRead(0x3d, 1)).toBe(1); // INTA
    expect(f.configRead(0x0c, 1)).toBe(0xff); // cache line size is RW
  });

  it('Command: only the bits a function implements are writable (§7.5.1.1.3)', () => {
    const f = plain();
    f.configWrite(defs.PCI_COMMAND, 2, 0xffff);
    expect(f.configRead(defs.PCI_COMMAND, 2)).toBe(0x0001 | 0x0002 | 0x0004 | 0x0040 | 0x0100 | 0x0400);
    const noIo = PciFunction.create({ address: 0x200, vendorId: 1, deviceId: 2, classCode: 0, bars: [{ index: 0, kind: 'mem32', size: 16 }] });
    noIo.configWrite(defs.PCI_COMMAND, 2, 0xffff);
    expect(noIo.configRead(defs.PCI_COMMAND, 2)).toBe(0x0002 | 0x0004 | 0x0040 | 0x0100);
  });

  it('Status: error bits are RW1C, Capabilities List is RO 1', () => {
    const f = plain();
    f.config.setU16(defs.PCI_STATUS, f.config.getU16(defs.PCI_STATUS) | 0xf900);
    f.configWrite(defs.PCI_STATUS, 2, 0x2000 | 0x0010);
    expect(f.configRead(defs.PCI_STATUS, 2)).toBe(0xd910);
    f.configWrite(defs.PCI_STATUS, 2, 0xffff);
    expect(f.configRead(defs.PCI_STATUS, 2)).toBe(0x0010);
  });
});

describe('BAR sizing (§7.5.1.2.1)', () => {
  it('32-bit memory: all ones reads back the size mask with the flag bits', () => {
    const f = plain();
    f.configWrite(0x10, 4, 0xffffffff);
    expect(f.configRead(0x10, 4)).toBe(0xfffff000);
    f.configWrite(0x10, 4, 0xfe001234);
    expect(f.configRead(0x10, 4)).toBe(0xfe001000);
    expect(f.barAddress(0)).toBe(0xfe001000n);
  });

  it('I/O: bit 0 set, size mask above', () => {
    const f = plain();
    f.configWrite(0x14, 4, 0xffffffff);
    expect(f.configRead(0x14, 4)).toBe(0xffffffe1);
  });

  it('64-bit prefetchable: both halves size, flags 0xc', () => {
    const f = plain();
    f.configWrite(0x18, 4, 0xffffffff);
    f.configWrite(0x1c, 4, 0xffffffff);
    expect(f.configRead(0x18, 4)).toBe(0xffffc00c);
    expect(f.configRead(0x1c, 4)).toBe(0xffffffff);
    f.configWrite(0x18, 4, 0x12345678);
    f.configWrite(0x1c, 4, 0x9);
    expect(f.barAddress(2)).toBe(0x9_12344000n);
  });

  it('64-bit BAR of 16 GiB: the low half is all read-only, the upper half sizes', () => {
    const f = plain();
    f.configWrite(0x20, 4, 0xffffffff);
    f.configWrite(0x24, 4, 0xffffffff);
    expect(f.configRead(0x20, 4)).toBe(0x0000000c);
    expect(f.configRead(0x24, 4)).toBe(0xfffffffc);
  });

  it('Expansion ROM: enable bit and address above the size', () => {
    const f = plain();
    f.configWrite(0x30, 4, 0xffffffff);
    expect(f.configRead(0x30, 4)).toBe(0xffff0001);
  });

  it('unimplemented BARs read 0 whatever is written', () => {
    const f = plain();
    f.configWrite(0x28, 4, 0xffffffff); // CardBus CIS
    f.configWrite(0x30 - 4 * 0, 4, 0);
    expect(f.configRead(0x28, 4)).toBe(0);
  });

  it('refuses impossible BARs', () => {
    const mk = (bars: never) => () => PciFunction.create({ address: 0, vendorId: 1, deviceId: 1, classCode: 0, bars });
    expectSrIovError(mk([{ index: 0, kind: 'mem32', size: 24 }] as never), 'invalid-argument');
    expectSrIovError(mk([{ index: 5, kind: 'mem64', size: 4096 }] as never), 'invalid-argument', 5);
    expectSrIovError(mk([{ index: 0, kind: 'mem64', size: 4096 }, { index: 1, kind: 'mem32', size: 16 }] as never), 'invalid-argument', 1);
    expectSrIovError(mk([{ index: 0, kind: 'io', size: 512 }] as never), 'invalid-argument');
    expectSrIovError(mk([{ index: 0, kind: 'mem32', size: 4096, address: 0x800 }] as never), 'invalid-argument');
  });

  it('memory decode follows Command.MSE and the programmed address', () => {
    const f = plain();
    expect(f.decodeMemory(0xfe000010)).toBe(-1);
    f.configWrite(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MEMORY);
    expect(f.decodeMemory(0xfe000010)).toBe(0);
    expect(f.decodeMemory(0xfe001000)).toBe(-1);
  });

  it('installBar is reusable for a custom register block', () => {
    const c = new ConfigSpace();
    installBar(c, 0x40, { index: 0, kind: 'mem32', size: 256n, prefetchable: true });
    c.write(0x40, 4, 0xffffffff);
    expect(c.read(0x40, 4)).toBe(0xffffff08);
  });
});

describe('capability lists', () => {
  it('links PCI capabilities from 34h and walks them', () => {
    const f = plain({ powerManagement: { at: 0x40 }, msix: { at: 0x70, vectors: 4, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800 }, express: { at: 0xa0 } });
    expect(f.configRead(0x34, 1)).toBe(0x40);
    expect(f.configRead(0x40, 2)).toBe(0x7001);
    expect(f.configRead(0x70, 2)).toBe(0xa011);
    expect(f.configRead(0xa0, 2)).toBe(0x0010);
    expect(f.config.findCapability(defs.PCI_CAP_ID_MSIX)).toBe(0x70);
    expect(f.config.findCapability(defs.PCI_CAP_ID_MSI)).toBe(0);
    // The list pointers are read-only.
    f.configWrite(0x34, 1, 0x80);
    f.configWrite(0x40, 2, 0xffff);
    expect(f.configRead(0x34, 1)).toBe(0x40);
    expect(f.configRead(0x40, 2)).toBe(0x7001);
  });

  it('places capabilities at the first free DW when no offset is given, and refuses overlaps', () => {
    const f = plain({ powerManagement: {} });
    expect(f.config.capabilities().map((c) => [c.name, c.offset])).toEqual([['Power Management', 0x40], ['PCI Express', 0x48]]);
    expectSrIovError(() => f.config.addCapability({ id: 0x09, name: 'vendor', size: () => 8, init: () => undefined }, {}, 0x44), 'no-space', 0x44);
    expectSrIovError(() => f.config.addCapability({ id: 0x09, name: 'vendor', size: () => 8, init: () => undefined }, {}, 0xfc), 'no-space');
  });

  it('registers a new extended capability without touching the core', () => {
    // A vendor-specific extended capability (ID 000Bh, §7.9.5) with a RW scratch register and an RW1C status.
    const vsec: ExtendedCapabilityType<{ vsecId: number }, { offset: number }> = {
      id: 0x000b,
      version: 1,
      name: 'Vendor-Specific',
      size: () => 16,
      init(space, offset, p) {
        space.setU32(offset + 4, p.vsecId | (1 << 16) | (16 << 20));
        space.setWritable(offset + 8, 4, 0xffffffff);
        space.setWriteOneToClear(offset + 12, 4, 0x1);
        space.setU32(offset + 12, 1);
        return { offset };
      },
    };
    const f = plain();
    const first = f.config.addExtendedCapability(vsec, { vsecId: 0x42 });
    const second = f.config.addExtendedCapability(vsec, { vsecId: 0x43 }, 0x200);
    expect(first.offset).toBe(0x100);
    expect(f.configRead(0x100, 4)).toBe(0x000b | (1 << 16) | (0x200 << 20));
    expect(f.configRead(0x200, 4)).toBe(0x0001000b);
    expect(f.config.findExtendedCapability(0x000b)).toBe(0x100);
    f.configWrite(second.offset + 8, 4, 0xdeadbeef);
    expect(f.configRead(0x208, 4)).toBe(0xdeadbeef);
    f.configWrite(second.offset + 12, 4, 0xffffffff);
    expect(f.configRead(0x20c, 4)).toBe(0);
    expectSrIovError(() => plain().config.addExtendedCapability(vsec, { vsecId: 1 }, 0x180), 'invalid-argument', 0x180);
  });

  it('a capability list walk is bounded even if a loop is forged', () => {
    const c = new ConfigSpace();
    c.setU16(defs.PCI_STATUS, defs.PCI_STATUS_CAP_LIST);
    c.setU8(0x34, 0x40);
    c.setU8(0x40, 0x05);
    c.setU8(0x41, 0x40); // points to itself
    expect(c.findCapability(0x11)).toBe(0);
    c.setU32(0x100, 0x0001 | (0x100 << 20)); // extended loop
    expect(c.findExtendedCapability(0x10)).toBe(0);
  });
});

describe('write hooks and reset', () => {
  it('a hook sees the access and what the bytes held before', () => {
    const c = new ConfigSpace();
    c.setWritable(0x44, 2, 0xffff);
    const seen: number[][] = [];
    c.onWrite(0x44, 4, (o, s, prev, written) => seen.push([o, s, prev, written]));
    c.write(0x44, 2, 0x1234);
    c.write(0x44, 4, 0xffff5678);
    expect(seen).toEqual([[0x44, 2, 0, 0x1234], [0x44, 4, 0x1234, 0xffff5678]]);
    expectSrIovError(() => c.onWrite(0x46, 2, () => undefined), 'invalid-argument');
  });

  it('reset restores the power-on bytes and masks', () => {
    const f = plain();
    f.configWrite(0x10, 4, 0xffffffff);
    f.configWrite(0x04, 2, 0x6);
    f.functionLevelReset();
    expect(f.configRead(0x10, 4)).toBe(0xfe000000);
    expect(f.configRead(0x04, 2)).toBe(0);
  });
});
