import type { ConfigSpace, ExtendedCapabilityType } from '../config-space.js';
import { PCI_EXT_CAP_ID_ERR } from '../defs.js';

/** Uncorrectable error bits an endpoint implements (§7.8.4.2): DLP, SDES, Poisoned TLP, FCP, Completion Timeout, Completer Abort, Unexpected Completion, Receiver Overflow, Malformed TLP, ECRC, Unsupported Request, ACS Violation. */
const UNCOR = 0x003ff030;
/** Correctable error bits (§7.8.4.5): Receiver Error, Bad TLP, Bad DLLP, REPLAY_NUM Rollover, Replay Timer Timeout, Advisory Non-Fatal. */
const COR = 0x000031c1;

export interface Aer {
  readonly offset: number;
  /** Sets Uncorrectable (`uncorrectable`) or Correctable Error Status bits, as the device logs an error. */
  log(uncorrectable: number, correctable: number): void;
}

/** Advanced Error Reporting for an endpoint (PCIe Base 6.0 §7.8.4, extended capability 0001h), through the Header Log. */
export const aerCapability: ExtendedCapabilityType<Record<string, never>, Aer> = {
  id: PCI_EXT_CAP_ID_ERR,
  version: 2,
  name: 'Advanced Error Reporting',
  size: () => 0x2c,
  init(space: ConfigSpace, offset: number): Aer {
    // Uncorrectable Error Status RW1CS, Mask RWS, Severity RWS with the spec's defaults.
    space.setWriteOneToClear(offset + 0x04, 4, UNCOR);
    space.setWritable(offset + 0x08, 4, UNCOR);
    space.setU32(offset + 0x0c, 0x00062030);
    space.setWritable(offset + 0x0c, 4, UNCOR);
    // Correctable Error Status RW1CS, Mask RWS (Advisory Non-Fatal masked by default).
    space.setWriteOneToClear(offset + 0x10, 4, COR);
    space.setU32(offset + 0x14, 0x00002000);
    space.setWritable(offset + 0x14, 4, COR);
    // Advanced Error Capabilities and Control: no ECRC, First Error Pointer RO; Header Log RO.
    return {
      offset,
      log(uncorrectable, correctable) {
        space.setU32(offset + 0x04, (space.getU32(offset + 0x04) | (uncorrectable & UNCOR)) >>> 0);
        space.setU32(offset + 0x10, (space.getU32(offset + 0x10) | (correctable & COR)) >>> 0);
      },
    };
  },
};
