import { aerCapability } from './capabilities/aer.js';
import { serialNumberCapability } from './capabilities/serial-number.js';
import { PhysicalFunction } from './physical-function.js';
import { ridFunction, toRid } from './routing-id.js';

export interface PresetOptions {
  /** `[dddd:]bb:dd.f` of the PF. */
  readonly address?: string;
  /** Highest bus number the bridge above forwards (default 255). */
  readonly subordinateBus?: number;
  /** Override the ARI Forwarding assumption of the OS (see `PhysicalFunctionOptions.ariForwarding`). */
  readonly ariForwarding?: boolean;
  /** Base of VF BAR0 (and VF BAR3 follows all VFs' BAR0 apertures); `0n` leaves them unassigned. */
  readonly vfBarBase?: bigint;
}

/**
 * A PF modelled on the Intel 82599ES (10fb): dual port, TotalVFs 64, First VF
 * Offset 128, VF Stride 2, VF Device ID 10ed; VF BAR0 and BAR3 64-bit
 * prefetchable 16 KiB each; VFs with 3 MSI-X vectors in BAR3.
 */
export function intel82599LikePf(options: PresetOptions = {}): PhysicalFunction {
  const address = options.address ?? '03:00.0';
  const fn = ridFunction(toRid(address).rid);
  const vfBase = options.vfBarBase ?? 0xe0000000n + BigInt(fn) * 0x200000n;
  const pf = new PhysicalFunction({
    address,
    extendedCapabilities: (c) => {
      c.addExtendedCapability(aerCapability, {}, 0x100);
      c.addExtendedCapability(serialNumberCapability, { serial: 0x001b21fffe000000n | BigInt(fn) }, 0x140);
    },
    name: 'Intel Corporation 82599ES 10-Gigabit SFI/SFP+ Network Connection',
    vendorId: 0x8086,
    deviceId: 0x10fb,
    revisionId: 0x01,
    classCode: 0x020000,
    subsystemVendorId: 0x8086,
    subsystemId: 0x000c,
    multiFunction: true,
    interruptPin: fn === 0 ? 1 : 2,
    bars: [
      { index: 0, kind: 'mem64', size: 0x80000, address: 0xf0000000 + fn * 0x100000 },
      { index: 2, kind: 'io', size: 32, address: 0xe000 + fn * 0x20 },
      { index: 4, kind: 'mem64', size: 0x4000, address: 0xf0080000 + fn * 0x100000 },
    ],
    powerManagement: { at: 0x40, pmeSupport: 0b11001, dsi: true, noSoftReset: true },
    msix: { at: 0x70, vectors: 64, tableBar: 4, tableOffset: 0, pbaBar: 4, pbaOffset: 0x2000 },
    express: { at: 0xa0, maxPayload: 512, flr: true, linkSpeed: 2, linkWidth: 8 },
    ari: { at: 0x150, nextFunction: fn === 0 ? 1 : 0 },
    ariForwarding: options.ariForwarding ?? false,
    ...(options.subordinateBus === undefined ? {} : { subordinateBus: options.subordinateBus }),
    sriov: {
      at: 0x160,
      totalVfs: 64,
      initialVfs: 64,
      vfDeviceId: 0x10ed,
      layout: { firstVfOffset: 128, vfStride: 2 },
      ariCapableHierarchyWritable: fn === 0,
      vfBars: [
        { index: 0, kind: 'mem64', prefetchable: true, size: 0x4000, address: vfBase },
        { index: 3, kind: 'mem64', prefetchable: true, size: 0x4000, address: vfBase === 0n ? 0n : vfBase + 0x100000n },
      ],
    },
    vf: {
      name: 'Intel Corporation 82599 Ethernet Controller Virtual Function',
      revisionId: 0x01,
      msix: { at: 0x70, vectors: 3, tableBar: 3, tableOffset: 0, pbaBar: 3, pbaOffset: 0x2000 },
      express: { at: 0xa0, maxPayload: 512, linkSpeed: 2, linkWidth: 8 },
      ariAt: 0x100,
    },
  });
  return pf;
}

/**
 * A PF modelled on the Intel E810-C (1592) with ARI: TotalVFs 256; with ARI
 * Capable Hierarchy First VF Offset 8 and VF Stride 1 (so the VFs spill onto
 * the next bus), without it offset 128; VF Device ID 1889; VF BAR0 128 KiB
 * and VF BAR3 16 KiB, 64-bit prefetchable, above 4 GiB; VFs with 17 MSI-X vectors.
 */
export function intelE810LikePf(options: PresetOptions = {}): PhysicalFunction {
  const address = options.address ?? '17:00.0';
  const fn = ridFunction(toRid(address).rid);
  const vfBase = options.vfBarBase ?? 0x3800000000n + BigInt(fn) * 0x4000000n;
  const pf = new PhysicalFunction({
    address,
    extendedCapabilities: (c) => {
      c.addExtendedCapability(aerCapability, {}, 0x100);
      c.addExtendedCapability(serialNumberCapability, { serial: 0xb49691fffe000000n | BigInt(fn) }, 0x140);
    },
    name: 'Intel Corporation Ethernet Controller E810-C for QSFP',
    vendorId: 0x8086,
    deviceId: 0x1592,
    revisionId: 0x02,
    classCode: 0x020000,
    subsystemVendorId: 0x8086,
    subsystemId: 0x0002,
    interruptPin: 1,
    bars: [
      { index: 0, kind: 'mem64', prefetchable: true, size: 0x2000000, address: 0x3000000000n },
      { index: 3, kind: 'mem64', prefetchable: true, size: 0x10000, address: 0x3002000000n },
    ],
    powerManagement: { at: 0x40, pmeSupport: 0b11001, dsi: true, noSoftReset: true },
    msix: { at: 0x70, vectors: 1024, tableBar: 3, tableOffset: 0, pbaBar: 3, pbaOffset: 0x8000 },
    express: { at: 0xa0, maxPayload: 512, flr: true, extendedTag: true, linkSpeed: 4, linkWidth: 16 },
    ari: { at: 0x150, nextFunction: 0 },
    ...(options.ariForwarding === undefined ? {} : { ariForwarding: options.ariForwarding }),
    ...(options.subordinateBus === undefined ? {} : { subordinateBus: options.subordinateBus }),
    linkSpeedMbps: 100000,
    sriov: {
      at: 0x160,
      totalVfs: 256,
      initialVfs: 256,
      vfDeviceId: 0x1889,
      layout: (_n, ari) => (ari ? { firstVfOffset: 8, vfStride: 1 } : { firstVfOffset: 128, vfStride: 1 }),
      ariCapableHierarchyWritable: fn === 0,
      ariPreserved: true,
      vfBars: [
        { index: 0, kind: 'mem64', prefetchable: true, size: 0x20000, address: vfBase },
        { index: 3, kind: 'mem64', prefetchable: true, size: 0x4000, address: vfBase === 0n ? 0n : vfBase + 0x2000000n },
      ],
    },
    vf: {
      name: 'Intel Corporation Ethernet Adaptive Virtual Function',
      revisionId: 0x02,
      subsystemId: 0x0000,
      msix: { at: 0x70, vectors: 17, tableBar: 3, tableOffset: 0, pbaBar: 3, pbaOffset: 0x2000 },
      express: { at: 0xa0, maxPayload: 512, extendedTag: true, linkSpeed: 4, linkWidth: 16 },
      ariAt: 0x100,
    },
  });
  return pf;
}
