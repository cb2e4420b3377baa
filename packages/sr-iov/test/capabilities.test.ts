import { describe, expect, it } from 'vitest';
import { PciFunction, aerCapability, defs, intel82599LikePf, serialNumberCapability } from '../src/index.js';
import { expectSrIovError } from './helpers.js';

function fn(pm: { d1?: boolean; d2?: boolean; pmeSupport?: number } = {}) {
  return PciFunction.create({
    address: '01:00.0',
    vendorId: 0x1af4,
    deviceId: 0x1000,
    classCode: 0x020000,
    bars: [{ index: 0, kind: 'mem32', size: 0x4000, address: 0xfd000000 }],
    powerManagement: { at: 0x40, ...pm },
    msix: { at: 0x50, vectors: 70, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x1000 },
    express: { at: 0x60, flr: true },
  });
}

describe('Power Management (§7.5.2)', () => {
  it('PowerState is RW; an unsupported D1/D2 is discarded', () => {
    const f = fn({ d2: true, pmeSupport: 0b01001 });
    const pmcsr = 0x44;
    f.configWrite(pmcsr, 2, 3);
    expect(f.pm!.powerState()).toBe(3);
    f.configWrite(pmcsr, 2, 1); // D1 unsupported
    expect(f.pm!.powerState()).toBe(3);
    f.configWrite(pmcsr, 2, 2);
    expect(f.pm!.powerState()).toBe(2);
    f.configWrite(pmcsr, 2, 0);
    expect(f.configRead(0x42, 2)).toBe(3 | (1 << 10) | (0b01001 << 11));
  });

  it('PME_Status is RW1C and set only from a state PME is supported in', () => {
    const f = fn({ pmeSupport: 0b01000 }); // D3hot only
    expect(f.pm!.raisePme()).toBe(false);
    f.configWrite(0x44, 2, 3 | defs.PCI_PM_CTRL_PME_ENABLE);
    expect(f.pm!.raisePme()).toBe(true);
    expect(f.configRead(0x44, 2) & defs.PCI_PM_CTRL_PME_STATUS).toBeTruthy();
    f.configWrite(0x44, 2, 3 | defs.PCI_PM_CTRL_PME_ENABLE); // writing 0 to PME_Status keeps it
    expect(f.configRead(0x44, 2) & defs.PCI_PM_CTRL_PME_STATUS).toBeTruthy();
    f.configWrite(0x44, 2, defs.PCI_PM_CTRL_PME_STATUS | 3);
    expect(f.configRead(0x44, 2) & defs.PCI_PM_CTRL_PME_STATUS).toBe(0);
  });
});

describe('MSI-X (PCI 3.0 §6.8.2)', () => {
  function armed() {
    const f = fn();
    const sent: number[][] = [];
    f.msix!.setDeliver((lo, hi, data, v) => sent.push([lo, hi, data, v]));
    return { f, sent, m: f.msix! };
  }

  it('Message Control: Table Size RO (N−1), Function Mask and Enable RW; table/PBA offsets RO', () => {
    const { f } = armed();
    f.configWrite(0x52, 2, 0xffff);
    expect(f.configRead(0x52, 2)).toBe(0xc000 | 69);
    f.configWrite(0x54, 4, 0xffffffff);
    expect(f.configRead(0x54, 4)).toBe(0);
    expect(f.configRead(0x58, 4)).toBe(0x1000);
  });

  it('entries start masked; a signal while masked is pending, unmasking sends it once', () => {
    const { f, sent, m } = armed();
    expect(m.signal(65)).toBe('disabled');
    f.configWrite(0x52, 2, defs.PCI_MSIX_FLAGS_ENABLE);
    expect(m.signal(65)).toBe('blocked'); // Bus Master Enable clear
    f.configWrite(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MASTER | defs.PCI_COMMAND_MEMORY);
    expect(m.isMasked(65)).toBe(true);
    f.mmioWrite(0, 65 * 16, 4, 0xfee0100f); // bits 1:0 read 0
    f.mmioWrite(0, 65 * 16 + 4, 4, 0x1);
    f.mmioWrite(0, 65 * 16 + 8, 4, 0xabcd);
    expect(f.mmioRead(0, 65 * 16, 4)).toBe(0xfee0100c);
    expect(m.signal(65)).toBe('pending');
    expect(m.signal(65)).toBe('pending');
    expect(f.mmioRead(0, 0x1008, 4)).toBe(1 << 1); // PBA QWORD 1, bit 1
    f.mmioWrite(0, 0x1008, 4, 0); // PBA is read-only
    expect(m.isPending(65)).toBe(true);
    f.mmioWrite(0, 65 * 16 + 12, 4, 0xfffffffe); // unmask; reserved bits stay 0
    expect(f.mmioRead(0, 65 * 16 + 12, 4)).toBe(0);
    expect(sent).toEqual([[0xfee0100c, 1, 0xabcd, 65]]);
    expect(m.isPending(65)).toBe(false);
    expect(m.signal(65)).toBe('delivered');
    expect(sent.length).toBe(2);
  });

  it('the Function Mask holds every vector pending and releases them when cleared', () => {
    const { f, sent, m } = armed();
    f.configWrite(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MASTER);
    f.configWrite(0x52, 2, defs.PCI_MSIX_FLAGS_ENABLE | defs.PCI_MSIX_FLAGS_MASKALL);
    for (const v of [3, 4]) f.mmioWrite(0, v * 16 + 12, 4, 0);
    expect(m.signal(3)).toBe('pending');
    expect(m.signal(4)).toBe('pending');
    f.configWrite(0x52, 2, defs.PCI_MSIX_FLAGS_ENABLE);
    expect(sent.map((s) => s[3])).toEqual([3, 4]);
  });

  it('rejects accesses outside the table, misaligned or non-DWORD writes', () => {
    const { f, m } = armed();
    expectSrIovError(() => m.tableRead(70 * 16), 'out-of-range');
    expectSrIovError(() => m.tableWrite(2, 0), 'out-of-range');
    expectSrIovError(() => f.mmioWrite(0, 0, 2, 0), 'invalid-size');
    expectSrIovError(() => f.mmioRead(0, 0x4000, 4), 'out-of-range');
    expectSrIovError(() => f.mmioRead(1, 0, 4), 'invalid-argument', 1);
    expectSrIovError(() => m.signal(70), 'invalid-argument', 70);
    expect(f.mmioRead(0, 0x2000, 4)).toBe(0); // neither table nor PBA, no handler
  });

  it('hands the rest of the BAR to the device handler', () => {
    const f = fn();
    const log: string[] = [];
    f.setMmioHandler({ read: (b, o, s) => (log.push(`r${b}:${o}:${s}`), 0x1234), write: (b, o, s, v) => void log.push(`w${b}:${o}:${s}:${v}`) });
    expect(f.mmioRead(0, 0x2000, 2)).toBe(0x1234);
    f.mmioWrite(0, 0x2004, 4, 7);
    f.mmioWrite(0, 0x10, 4, 7); // MSI-X table, not the handler
    expect(log).toEqual(['r0:8192:2', 'w0:8196:4:7']);
  });

  it('refuses a table that does not fit its BAR', () => {
    expectSrIovError(
      () => PciFunction.create({ address: 0, vendorId: 1, deviceId: 1, classCode: 0, bars: [{ index: 0, kind: 'mem32', size: 0x100 }], msix: { vectors: 32, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x80 } }),
      'invalid-argument',
    );
  });
});

describe('PCI Express capability (§7.5.3)', () => {
  it('Device Status error bits are RW1C; Initiate FLR resets and reads 0', () => {
    const f = fn();
    f.express!.reportError(0b1010);
    expect(f.configRead(0x6a, 2)).toBe(0b1010);
    f.configWrite(0x6a, 2, 0b0010);
    expect(f.configRead(0x6a, 2)).toBe(0b1000);
    f.configWrite(defs.PCI_COMMAND, 2, 0x6);
    f.configWrite(0x68, 2, 0x2810 | 0x0020);
    f.configWrite(0x69, 1, 0x80); // byte write of Initiate FLR
    expect(f.configRead(defs.PCI_COMMAND, 2)).toBe(0);
    expect(f.configRead(0x68, 2)).toBe(0x2810);
    expect(f.configRead(0x6a, 2)).toBe(0);
  });
});

describe('AER and Device Serial Number (registered extended capabilities)', () => {
  it('decode as the 82599 preset lays them out', () => {
    const pf = intel82599LikePf();
    expect(pf.config.findExtendedCapability(defs.PCI_EXT_CAP_ID_ERR)).toBe(0x100);
    expect(pf.configRead(0x10c, 4)).toBe(0x00062030);
    expect(pf.configRead(0x144, 4)).toBe(0xfe000000);
    expect(pf.configRead(0x148, 4)).toBe(0x001b21ff);
    const f = PciFunction.create({ address: 0, vendorId: 1, deviceId: 1, classCode: 0 });
    const aer = f.config.addExtendedCapability(aerCapability, {});
    aer.log(1 << 20, 1 << 6);
    f.configWrite(0x104, 4, 1 << 20);
    expect(f.configRead(0x104, 4)).toBe(0);
    expect(f.configRead(0x110, 4)).toBe(1 << 6);
    expectSrIovError(() => f.config.addExtendedCapability(serialNumberCapability, { serial: -1n }), 'invalid-argument');
  });
});
