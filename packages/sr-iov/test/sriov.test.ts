import { describe, expect, it } from 'vitest';
import {
  PciSegment,
  PhysicalFunction,
  type PhysicalFunctionOptions,
  type SriovConfigErrorKind,
  VirtualFunction,
  defs,
  intel82599LikePf,
  intelE810LikePf,
} from '../src/index.js';
import { expectSrIovError } from './helpers.js';

const S = 0x160; // SR-IOV capability offset in the presets

function pfWith(sriov: Partial<PhysicalFunctionOptions['sriov']> = {}, extra: Partial<PhysicalFunctionOptions> = {}): PhysicalFunction {
  return new PhysicalFunction({
    address: '05:00.0',
    vendorId: 0x1234,
    deviceId: 0x0001,
    classCode: 0x020000,
    bars: [{ index: 0, kind: 'mem64', size: 0x10000, address: 0xd0000000 }],
    msix: { vectors: 8, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800 },
    ari: {},
    sriov: {
      totalVfs: 16,
      vfDeviceId: 0x0002,
      layout: { firstVfOffset: 1, vfStride: 1 },
      vfBars: [{ index: 0, kind: 'mem64', size: 0x2000, prefetchable: true, address: 0xc0000000 }],
      ...sriov,
    },
    vf: { msix: { vectors: 2, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x1000 } },
    ...extra,
  });
}

function errors(pf: PhysicalFunction): [SriovConfigErrorKind, number][] {
  const seen: [SriovConfigErrorKind, number][] = [];
  pf.on('config-error', (k, v) => seen.push([k, v]));
  return seen;
}

describe('SR-IOV capability layout (§9.3.3)', () => {
  it('every field at its offset', () => {
    const pf = intel82599LikePf();
    const r = (o: number, s: 1 | 2 | 4) => pf.configRead(S + o, s);
    expect(r(0x00, 4)).toBe(0x00010010); // ID 0010h, version 1, last in the list
    expect(pf.config.findExtendedCapability(0x0010)).toBe(S);
    expect(r(defs.PCI_SRIOV_CAP, 4)).toBe(0);
    expect(r(defs.PCI_SRIOV_CTRL, 2)).toBe(0);
    expect(r(defs.PCI_SRIOV_STATUS, 2)).toBe(0);
    expect(r(defs.PCI_SRIOV_INITIAL_VF, 2)).toBe(64);
    expect(r(defs.PCI_SRIOV_TOTAL_VF, 2)).toBe(64);
    expect(r(defs.PCI_SRIOV_NUM_VF, 2)).toBe(0);
    expect(r(defs.PCI_SRIOV_FUNC_LINK, 1)).toBe(0);
    expect(r(defs.PCI_SRIOV_VF_OFFSET, 2)).toBe(128);
    expect(r(defs.PCI_SRIOV_VF_STRIDE, 2)).toBe(2);
    expect(r(0x18, 2)).toBe(0); // RsvdP
    expect(r(defs.PCI_SRIOV_VF_DID, 2)).toBe(0x10ed);
    expect(r(defs.PCI_SRIOV_SUP_PGSIZE, 4)).toBe(0x553);
    expect(r(defs.PCI_SRIOV_SYS_PGSIZE, 4)).toBe(1);
    expect(r(defs.PCI_SRIOV_BAR, 4)).toBe(0xe000000c);
    expect(r(defs.PCI_SRIOV_BAR + 4, 4)).toBe(0);
    expect(r(defs.PCI_SRIOV_BAR + 12, 4)).toBe(0xe010000c);
    expect(r(defs.PCI_SRIOV_VFM, 4)).toBe(0);
  });

  it('read-only fields ignore writes', () => {
    const pf = intel82599LikePf();
    for (const o of [0x04, 0x0c, 0x14, 0x18, 0x1c, 0x3c]) pf.configWrite(S + o, 4, 0xffffffff);
    pf.configWrite(S + 0x12, 1, 0xff);
    expect(pf.configRead(S + 0x0c, 4)).toBe(0x00400040);
    expect(pf.configRead(S + 0x14, 4)).toBe(0x00020080);
    expect(pf.configRead(S + 0x1c, 4)).toBe(0x553);
    expect(pf.configRead(S + 0x12, 1)).toBe(0);
  });

  it('VF BAR sizing: all ones reads back the per-VF aperture; it grows with System Page Size', () => {
    const pf = intel82599LikePf();
    const bar0 = S + defs.PCI_SRIOV_BAR;
    pf.configWrite(bar0, 4, 0xffffffff);
    pf.configWrite(bar0 + 4, 4, 0xffffffff);
    expect(pf.configRead(bar0, 4)).toBe(0xffffc00c);
    expect(pf.configRead(bar0 + 4, 4)).toBe(0xffffffff);
    pf.configWrite(S + defs.PCI_SRIOV_SYS_PGSIZE, 4, 1 << 4); // 64 KiB pages
    expect(pf.sriov.systemPageSize).toBe(65536);
    pf.configWrite(bar0, 4, 0xffffffff);
    expect(pf.configRead(bar0, 4)).toBe(0xffff000c);
    expect(pf.sriov.vfBarSize(0)).toBe(0x10000n);
  });

  it('System Page Size takes exactly one supported size; others are discarded (§9.3.3.13)', () => {
    const pf = intel82599LikePf();
    const errs = errors(pf);
    const at = S + defs.PCI_SRIOV_SYS_PGSIZE;
    pf.configWrite(at, 4, 0x3);
    expect(pf.configRead(at, 4)).toBe(1);
    pf.configWrite(at, 4, 0x4); // 16K is not in 553h
    expect(pf.configRead(at, 4)).toBe(1);
    pf.configWrite(at, 4, 0x2);
    expect(pf.configRead(at, 4)).toBe(2);
    expect(errs.map((e) => e[0])).toEqual(['invalid-page-size', 'invalid-page-size']);
  });
});

describe('SR-IOV write rules', () => {
  it('NumVFs is writable while VF Enable is clear, frozen while it is set (§9.3.3.7)', () => {
    const pf = intel82599LikePf();
    const errs = errors(pf);
    const num = S + defs.PCI_SRIOV_NUM_VF;
    const ctrl = S + defs.PCI_SRIOV_CTRL;
    pf.configWrite(num, 2, 7);
    expect(pf.configRead(num, 2)).toBe(7);
    pf.configWrite(ctrl, 2, defs.PCI_SRIOV_CTRL_VFE | defs.PCI_SRIOV_CTRL_MSE);
    expect(pf.vfs.length).toBe(7);
    pf.configWrite(num, 2, 3);
    expect(pf.configRead(num, 2)).toBe(7);
    expect(pf.vfs.length).toBe(7);
    expect(errs).toEqual([['num-vfs-while-enabled', 3]]);
    pf.configWrite(ctrl, 2, 0);
    expect(pf.vfs.length).toBe(0);
    pf.configWrite(num, 2, 3);
    expect(pf.configRead(num, 2)).toBe(3);
  });

  it('NumVFs above TotalVFs is discarded', () => {
    const pf = intel82599LikePf();
    const errs = errors(pf);
    pf.configWrite(S + defs.PCI_SRIOV_NUM_VF, 2, 65);
    expect(pf.configRead(S + defs.PCI_SRIOV_NUM_VF, 2)).toBe(0);
    expect(errs).toEqual([['num-vfs-above-total', 65]]);
  });

  it('First VF Offset and VF Stride follow NumVFs and ARI Capable Hierarchy (§9.3.3.9-10)', () => {
    const pf = pfWith({ layout: (n, ari) => ({ firstVfOffset: ari ? 1 : 8 + n, vfStride: ari ? 1 : 2 }) });
    expect(pf.sriovOffset).toBe(8);
    pf.configWrite(S0(pf) + defs.PCI_SRIOV_NUM_VF, 2, 5);
    expect([pf.sriovOffset, pf.sriovStride]).toEqual([13, 2]);
    pf.configWrite(S0(pf) + defs.PCI_SRIOV_CTRL, 2, defs.PCI_SRIOV_CTRL_ARI);
    expect([pf.sriovOffset, pf.sriovStride]).toEqual([1, 1]);
    pf.configWrite(S0(pf) + defs.PCI_SRIOV_CTRL, 2, defs.PCI_SRIOV_CTRL_ARI | defs.PCI_SRIOV_CTRL_VFE);
    expect(pf.vfs.map((v) => v.address)).toEqual(['05:00.1', '05:00.2', '05:00.3', '05:00.4', '05:00.5']);
  });

  it('ARI Capable Hierarchy cannot change while VF Enable is set, and is RO 0 in a PF that is not the lowest', () => {
    const pf = pfWith();
    const errs = errors(pf);
    const ctrl = S0(pf) + defs.PCI_SRIOV_CTRL;
    pf.configWrite(S0(pf) + defs.PCI_SRIOV_NUM_VF, 2, 2);
    pf.configWrite(ctrl, 2, defs.PCI_SRIOV_CTRL_VFE);
    pf.configWrite(ctrl, 2, defs.PCI_SRIOV_CTRL_VFE | defs.PCI_SRIOV_CTRL_ARI);
    expect(pf.sriov.ariCapableHierarchy).toBe(false);
    expect(errs).toEqual([['ari-while-enabled', 1]]);
    const pf1 = intel82599LikePf({ address: '03:00.1' });
    pf1.configWrite(S + defs.PCI_SRIOV_CTRL, 2, 0xffff);
    expect(pf1.configRead(S + defs.PCI_SRIOV_CTRL, 2)).toBe(defs.PCI_SRIOV_CTRL_VFE | defs.PCI_SRIOV_CTRL_MSE);
  });

  it('VF Migration bits are RO 0 unless the PF is migration capable', () => {
    const pf = pfWith({ migrationCapable: true, migrationInterruptMessage: 5 });
    const ctrl = S0(pf) + defs.PCI_SRIOV_CTRL;
    pf.configWrite(ctrl, 2, 0x6);
    expect(pf.configRead(ctrl, 2)).toBe(0x6);
    expect(pf.configRead(S0(pf) + defs.PCI_SRIOV_CAP, 4)).toBe(1 | (5 << 21));
    pf.config.setU16(S0(pf) + defs.PCI_SRIOV_STATUS, 1);
    pf.configWrite(S0(pf) + defs.PCI_SRIOV_STATUS, 2, 1);
    expect(pf.configRead(S0(pf) + defs.PCI_SRIOV_STATUS, 2)).toBe(0);
    const plain = pfWith();
    plain.configWrite(S0(plain) + defs.PCI_SRIOV_CTRL, 2, 0x6);
    expect(plain.configRead(S0(plain) + defs.PCI_SRIOV_CTRL, 2)).toBe(0);
  });

  it('a layout that gives colliding routing IDs is refused at build time', () => {
    expectSrIovError(() => pfWith({ layout: { firstVfOffset: 1, vfStride: 0 } }), 'invalid-argument');
    expectSrIovError(() => pfWith({ layout: { firstVfOffset: 0, vfStride: 1 } }), 'invalid-argument');
    expectSrIovError(() => pfWith({ supportedPageSizes: 0x1 }), 'invalid-argument');
    expectSrIovError(() => pfWith({ totalVfs: 0 }), 'invalid-argument');
  });
});

function S0(pf: PhysicalFunction): number {
  return pf.sriov.offset;
}

describe('virtual functions', () => {
  it('VF Enable creates NumVFs VFs at PF + offset + n × stride; clearing it removes them', () => {
    const pf = intel82599LikePf();
    const added: string[] = [];
    const removed: string[] = [];
    pf.on('vf-added', (vf) => added.push(vf.address));
    pf.on('vf-removed', (vf) => removed.push(vf.address));
    pf.setSriovNumVfs(3);
    expect(added).toEqual(['03:10.0', '03:10.2', '03:10.4']);
    const vfs = [...pf.vfs];
    pf.setSriovNumVfs(0);
    expect(removed).toEqual(['03:10.4', '03:10.2', '03:10.0']);
    expect(vfs.every((v) => v.removed)).toBe(true);
    expect(pf.configRead(S + defs.PCI_SRIOV_CTRL, 2)).toBe(0);
    expect(pf.configRead(S + defs.PCI_SRIOV_NUM_VF, 2)).toBe(0);
  });

  it('a VF header: IDs read FFFFh, the OS IDs come from the PF, BARs and ROM are RO 0, no INTx', () => {
    const pf = intel82599LikePf();
    pf.setSriovNumVfs(1);
    const vf = pf.vf(0);
    expect(vf).toBeInstanceOf(VirtualFunction);
    expect(vf.configRead(0, 4)).toBe(0xffffffff);
    expect([vf.osVendorId, vf.osDeviceId]).toEqual([0x8086, 0x10ed]);
    for (const o of [0x10, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x28, 0x30]) {
      vf.configWrite(o, 4, 0xffffffff);
      expect(vf.configRead(o, 4)).toBe(0);
    }
    expect(vf.configRead(defs.PCI_INTERRUPT_PIN, 1)).toBe(0);
    expect(vf.configRead(0x2c, 2)).toBe(0x8086); // Subsystem Vendor ID = PF's
    expect(vf.configRead(0x08, 4) >>> 8).toBe(0x020000); // class code = PF's
    // Command: only Bus Master Enable (§9.3.4.1.3).
    vf.configWrite(defs.PCI_COMMAND, 2, 0xffff);
    expect(vf.configRead(defs.PCI_COMMAND, 2)).toBe(defs.PCI_COMMAND_MASTER);
    expect(vf.config.findExtendedCapability(defs.PCI_EXT_CAP_ID_ARI)).toBe(0x100);
  });

  it('VF BARs are carved from the VF BAR windows and decode only with VF MSE', () => {
    const pf = intel82599LikePf();
    pf.setSriovNumVfs(4);
    const vf2 = pf.vf(2);
    expect(vf2.barAddress(0)).toBe(0xe0000000n + 2n * 0x4000n);
    expect(vf2.barAddress(3)).toBe(0xe0100000n + 2n * 0x4000n);
    expect(vf2.barSize(0)).toBe(0x4000n);
    expect(vf2.decodeMemory(0xe0008010)).toBe(0);
    expect(pf.vf(1).decodeMemory(0xe0008010)).toBe(-1);
    pf.configWrite(S + defs.PCI_SRIOV_CTRL, 2, defs.PCI_SRIOV_CTRL_VFE);
    expect(vf2.memoryEnabled).toBe(false);
    expect(vf2.decodeMemory(0xe0008010)).toBe(-1);
    // Relocating the VF BAR window moves every VF.
    pf.configWrite(S + defs.PCI_SRIOV_BAR, 4, 0xd0000000);
    expect(vf2.barAddress(0)).toBe(0xd0008000n);
  });

  it('each VF has its own MSI-X table in its BAR', () => {
    const pf = intel82599LikePf();
    pf.setSriovNumVfs(2);
    const sent: number[][] = [];
    const [a, b] = [pf.vf(0), pf.vf(1)];
    a.msix!.setDeliver((lo, hi, data, v) => sent.push([0, lo, hi, data, v]));
    b.msix!.setDeliver((lo, hi, data, v) => sent.push([1, lo, hi, data, v]));
    for (const vf of [a, b]) {
      vf.configWrite(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MASTER);
      vf.configWrite(0x72, 2, defs.PCI_MSIX_FLAGS_ENABLE);
    }
    a.mmioWrite(3, 0x10, 4, 0xfee00000);
    a.mmioWrite(3, 0x18, 4, 0x4041);
    a.mmioWrite(3, 0x1c, 4, 0);
    expect(a.msix!.signal(1)).toBe('delivered');
    expect(b.msix!.signal(1)).toBe('pending'); // b's entry is still masked
    expect(b.mmioRead(3, 0x2000, 4)).toBe(0b10);
    expect(a.mmioRead(3, 0x2000, 4)).toBe(0);
    b.mmioWrite(3, 0x1c, 4, 0);
    expect(sent).toEqual([[0, 0xfee00000, 0, 0x4041, 1], [1, 0, 0, 0, 1]]);
    expect(b.msix!.isPending(1)).toBe(false);
  });

  it('a VF FLR resets its registers and MSI-X table; a PF FLR removes every VF', () => {
    const pf = intel82599LikePf();
    pf.setSriovNumVfs(2);
    const vf = pf.vf(1);
    vf.configWrite(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MASTER);
    vf.mmioWrite(3, 0xc, 4, 0);
    expect(vf.msix!.isMasked(0)).toBe(false);
    vf.configWrite(0xa8, 2, defs.PCI_EXP_DEVCTL_BCR_FLR);
    expect(vf.configRead(defs.PCI_COMMAND, 2)).toBe(0);
    expect(vf.msix!.isMasked(0)).toBe(true);
    expect(vf.configRead(0xa8, 2)).toBe(0);
    expect(pf.vfs.length).toBe(2);
    pf.configWrite(0xa8, 2, defs.PCI_EXP_DEVCTL_BCR_FLR);
    expect(pf.vfs.length).toBe(0);
    expect(pf.sriov.vfEnabled).toBe(false);
    expect(pf.sriovNumVfs).toBe(0);
    pf.setSriovNumVfs(2); // and it can be enabled again
    expect(pf.vfs.length).toBe(2);
  });
});

describe('the Linux-shaped API', () => {
  it('sriov_numvfs: above total → range, non-zero to other non-zero → busy, same → no-op, 0 disables', () => {
    const pf = intel82599LikePf();
    expect(pf.sriovTotalVfs).toBe(64);
    expect(expectSrIovError(() => pf.setSriovNumVfs(65), 'range', 65).errno).toBe('ERANGE');
    pf.setSriovNumVfs(4);
    const before = pf.vfs;
    pf.setSriovNumVfs(4);
    expect(pf.vfs).toBe(before);
    expect(expectSrIovError(() => pf.setSriovNumVfs(5), 'busy', 5).errno).toBe('EBUSY');
    expect(pf.sriovNumVfs).toBe(4);
    pf.setSriovNumVfs(0);
    expect(pf.sriovNumVfs).toBe(0);
    pf.setSriovNumVfs(5);
    expect(pf.sriovNumVfs).toBe(5);
    expectSrIovError(() => pf.setSriovNumVfs(-1), 'invalid-input');
    expectSrIovError(() => pf.setSriovNumVfs(1.5), 'invalid-input');
  });

  it('the sysfs text interface', () => {
    const pf = intel82599LikePf();
    expect(pf.sysfsRead('sriov_totalvfs')).toBe('64\n');
    expect(pf.sysfsRead('sriov_offset')).toBe('128\n');
    expect(pf.sysfsRead('sriov_stride')).toBe('2\n');
    expect(pf.sysfsRead('sriov_vf_device')).toBe('10ed\n');
    pf.sysfsWrite('sriov_numvfs', '8\n');
    expect(pf.sysfsRead('sriov_numvfs')).toBe('8\n');
    expectSrIovError(() => pf.sysfsWrite('sriov_numvfs', 'eight'), 'invalid-input');
    expectSrIovError(() => pf.sysfsWrite('sriov_numvfs', '70000'), 'range');
    expectSrIovError(() => pf.sysfsWrite('sriov_totalvfs', '1'), 'invalid-input');
    expectSrIovError(() => pf.sysfsRead('nope' as never), 'invalid-input');
  });

  it('a driver limit lowers sriov_totalvfs (pci_sriov_set_totalvfs)', () => {
    const pf = intel82599LikePf();
    pf.sriovSetTotalVfs(8);
    expect(pf.sriovTotalVfs).toBe(8);
    expectSrIovError(() => pf.setSriovNumVfs(9), 'range', 9);
    pf.setSriovNumVfs(8);
    expectSrIovError(() => pf.sriovSetTotalVfs(4), 'busy');
  });

  it('refuses unassigned VF BARs, VFs past the subordinate bus, and taken routing IDs', () => {
    const noBars = intel82599LikePf({ vfBarBase: 0n });
    expectSrIovError(() => noBars.setSriovNumVfs(1), 'no-resources', 0);
    expect(noBars.sriovNumVfs).toBe(0);
    const tight = intelE810LikePf({ subordinateBus: 0x17 });
    const e = expectSrIovError(() => tight.setSriovNumVfs(256), 'no-bus-numbers', 0x18);
    expect(e.errno).toBe('ENOMEM');
    tight.setSriovNumVfs(248); // 17:01.0 .. 17:1f.7 fit
    expect(tight.vfs.at(-1)!.address).toBe('17:1f.7');
    const seg = new PciSegment();
    const pf = intel82599LikePf();
    seg.add(pf);
    seg.add(new PhysicalFunction({ address: '03:10.4', vendorId: 1, deviceId: 2, classCode: 0, sriov: { totalVfs: 1, vfDeviceId: 3, layout: { firstVfOffset: 1, vfStride: 1 } } }));
    expectSrIovError(() => pf.setSriovNumVfs(4), 'rid-collision', 0x0384);
    expect(pf.sriovNumVfs).toBe(0);
    expect(pf.configRead(S + defs.PCI_SRIOV_CTRL, 2)).toBe(0);
    pf.setSriovNumVfs(2);
    expect(seg.functions().map((f) => f.address)).toEqual(['03:00.0', '03:10.0', '03:10.2', '03:10.4']);
  });

  it('a raw VF Enable the device cannot honour reads back clear and reports it', () => {
    const pf = intelE810LikePf({ subordinateBus: 0x17 });
    const errs = errors(pf);
    pf.configWrite(S + defs.PCI_SRIOV_CTRL, 2, defs.PCI_SRIOV_CTRL_ARI);
    pf.configWrite(S + defs.PCI_SRIOV_NUM_VF, 2, 256);
    pf.configWrite(S + defs.PCI_SRIOV_CTRL, 2, defs.PCI_SRIOV_CTRL_ARI | defs.PCI_SRIOV_CTRL_VFE);
    expect(pf.configRead(S + defs.PCI_SRIOV_CTRL, 2) & defs.PCI_SRIOV_CTRL_VFE).toBe(0);
    expect(pf.vfs.length).toBe(0);
    expect(errs).toEqual([['vf-enable-refused', 256]]);
  });
});

describe('per-VF settings', () => {
  it('MAC, VLAN/QoS/proto, rates, spoofchk, trust, link state; each change is an event', () => {
    const pf = intelE810LikePf();
    pf.setSriovNumVfs(2);
    const changes: string[] = [];
    pf.on('vf-config', (vf, key) => changes.push(`${vf.index}:${key}`));
    expect(pf.getVfConfig(1)).toEqual({ mac: '00:00:00:00:00:00', vlan: 0, qos: 0, vlanProto: 0x8100, minTxRate: 0, maxTxRate: 0, spoofChk: true, trust: false, linkState: 'auto' });
    pf.setVfMac(1, '52:54:00:AB:cd:01');
    pf.setVfVlan(1, 100, 5, 0x88a8);
    pf.setVfRate(1, 1000, 25000);
    pf.setVfSpoofChk(1, false);
    pf.setVfTrust(1, true);
    pf.setVfLinkState(1, 'disable');
    expect(pf.getVfConfig(1)).toEqual({ mac: '52:54:00:ab:cd:01', vlan: 100, qos: 5, vlanProto: 0x88a8, minTxRate: 1000, maxTxRate: 25000, spoofChk: false, trust: true, linkState: 'disable' });
    expect(pf.getVfConfig(0).mac).toBe('00:00:00:00:00:00');
    expect(changes).toEqual(['1:mac', '1:vlan', '1:maxTxRate', '1:spoofChk', '1:trust', '1:linkState']);
    expect(pf.vfLinkUp(1, true)).toBe(false);
    expect(pf.vfLinkUp(0, true)).toBe(true);
    expect(pf.vfLinkUp(0, false)).toBe(false);
    pf.setVfLinkState(0, 'enable');
    expect(pf.vfLinkUp(0, false)).toBe(true);
    pf.setVfMac(0, Uint8Array.of(2, 0, 0, 0, 0, 1));
    expect(pf.getVfConfig(0).mac).toBe('02:00:00:00:00:01');
  });

  it('refuses what rtnetlink and drivers refuse', () => {
    const pf = intelE810LikePf();
    pf.setSriovNumVfs(1);
    expectSrIovError(() => pf.setVfMac(0, '01:00:5e:00:00:01'), 'invalid-setting');
    expectSrIovError(() => pf.setVfMac(0, '52:54:00:ab:cd'), 'invalid-setting');
    expectSrIovError(() => pf.setVfVlan(0, 4096), 'invalid-setting', 4096);
    expectSrIovError(() => pf.setVfVlan(0, 10, 8), 'invalid-setting', 8);
    expect(expectSrIovError(() => pf.setVfVlan(0, 10, 0, 0x9100), 'unsupported-protocol').errno).toBe('EPROTONOSUPPORT');
    expectSrIovError(() => pf.setVfRate(0, 500, 100), 'invalid-setting', 500);
    expectSrIovError(() => pf.setVfRate(0, 0, 100001), 'invalid-setting', 100001);
    expectSrIovError(() => pf.setVfLinkState(0, 'up' as never), 'invalid-setting');
    expectSrIovError(() => pf.setVfTrust(0, 1 as never), 'invalid-setting');
    expect(expectSrIovError(() => pf.setVfMac(1, '02:00:00:00:00:01'), 'invalid-vf', 1).errno).toBe('EINVAL');
    expect(pf.getVfConfig(0).vlan).toBe(0);
  });

  it('settings go with the VFs when they are disabled (the PF driver frees them)', () => {
    const pf = intelE810LikePf();
    pf.setSriovNumVfs(1);
    pf.setVfTrust(0, true);
    pf.setSriovNumVfs(0);
    expectSrIovError(() => pf.getVfConfig(0), 'invalid-vf');
    pf.setSriovNumVfs(1);
    expect(pf.getVfConfig(0).trust).toBe(false);
  });
});

describe('PCI segment', () => {
  it('routes configuration reads by RID; absent functions read all ones', () => {
    const seg = new PciSegment();
    const pf = intelE810LikePf();
    seg.add(pf);
    expect(seg.configRead(0x1700, 0, 4)).toBe(0x15928086);
    expect(seg.configRead(0x1701, 0, 4)).toBe(0xffffffff);
    expect(seg.configRead(0x1701, 0, 2)).toBe(0xffff);
    pf.setSriovNumVfs(256);
    expect(seg.configRead(0x1808 - 1, 0, 4)).toBe(0xffffffff); // VF 255 at 18:00.7 = 0x1807 reads FFFF too (VF IDs)
    expect(seg.get('18:00.7')).toBe(pf.vf(255));
    seg.configWrite(0x1807, defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MASTER);
    expect(pf.vf(255).busMasterEnabled).toBe(true);
    seg.configWrite(0x1901, 0, 4, 0); // nothing there: dropped
    expect(seg.functions().length).toBe(257);
    pf.setSriovNumVfs(0);
    expect(seg.functions().map((f) => f.address)).toEqual(['17:00.0']);
    seg.remove(pf);
    expect(seg.functions()).toEqual([]);
    expectSrIovError(() => new PciSegment(1).add(intelE810LikePf()), 'invalid-argument');
  });

  it('decodes ECAM offsets: bus << 20 | device << 15 | function << 12 | register (§7.2.2)', () => {
    const seg = new PciSegment();
    const pf = intel82599LikePf();
    seg.add(pf);
    pf.setSriovNumVfs(2);
    expect(seg.ecamRead((0x03 << 20) | (0 << 15) | (0 << 12) | 0x00, 4)).toBe(0x10fb8086);
    expect(seg.ecamRead((0x03 << 20) | (0 << 15) | (0 << 12) | (S + 0x1a), 2)).toBe(0x10ed);
    const vf1 = (0x03 << 20) | (0x10 << 15) | (2 << 12);
    seg.ecamWrite(vf1 + defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MASTER);
    expect(pf.vf(1).busMasterEnabled).toBe(true);
    expect(seg.ecamRead((0x04 << 20) | 0x0, 4)).toBe(0xffffffff);
    expectSrIovError(() => seg.ecamRead(1 << 28, 4), 'out-of-range');
    expectSrIovError(() => seg.ecamRead(vf1 + 2, 4), 'misaligned');
  });
});
