import type { ConfigSpace, ExtendedCapabilityType } from '../config-space.js';
import { PCI_DSN_SIZEOF, PCI_EXT_CAP_ID_DSN } from '../defs.js';
import { SrIovError } from '../errors.js';

export interface SerialNumberParams {
  /** The 64-bit IEEE EUI-64 serial number. */
  readonly serial: bigint;
}

/** Device Serial Number (PCIe Base 6.0 §7.9.3, extended capability 0003h): read-only. */
export const serialNumberCapability: ExtendedCapabilityType<SerialNumberParams, { readonly offset: number }> = {
  id: PCI_EXT_CAP_ID_DSN,
  version: 1,
  name: 'Device Serial Number',
  size: () => PCI_DSN_SIZEOF,
  init(space: ConfigSpace, offset: number, p: SerialNumberParams) {
    if (typeof p.serial !== 'bigint' || p.serial < 0n || p.serial >> 64n) throw new SrIovError('invalid-argument', `serial number ${String(p.serial)} is not a u64`, String(p.serial));
    space.setU32(offset + 4, Number(p.serial & 0xffffffffn));
    space.setU32(offset + 8, Number(p.serial >> 32n));
    return { offset };
  },
};
