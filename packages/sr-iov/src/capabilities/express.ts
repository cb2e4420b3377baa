import type { CapabilityType, ConfigSpace } from '../config-space.js';
import {
  PCI_CAP_ID_EXP,
  PCI_EXP_DEVCAP,
  PCI_EXP_DEVCAP2,
  PCI_EXP_DEVCAP_FLR,
  PCI_EXP_DEVCTL,
  PCI_EXP_DEVCTL2,
  PCI_EXP_DEVCTL_BCR_FLR,
  PCI_EXP_DEVSTA,
  PCI_EXP_DEVSTA_RW1C,
  PCI_EXP_FLAGS,
  PCI_EXP_LNKCAP,
  PCI_EXP_LNKCAP2,
  PCI_EXP_LNKCTL,
  PCI_EXP_LNKCTL2,
  PCI_EXP_LNKSTA,
  PCI_EXP_SIZEOF_V2,
  PCI_EXP_TYPE_ENDPOINT,
  PCI_EXP_TYPE_RC_END,
} from '../defs.js';
import { SrIovError } from '../errors.js';

export interface ExpressParams {
  /** Device/Port Type: a PCI Express Endpoint (0h) or a Root Complex Integrated Endpoint (9h). */
  readonly deviceType?: 'endpoint' | 'rc-endpoint';
  /** Max_Payload_Size Supported in bytes: 128..4096. */
  readonly maxPayload?: number;
  readonly extendedTag?: boolean;
  /** Function Level Reset Capability (§7.5.3.3); `onFlr` runs when software sets Initiate FLR. */
  readonly flr?: boolean;
  /** Link: Max Link Speed 1..6 (2.5, 5, 8, 16, 32, 64 GT/s) and Maximum Link Width 1..32. */
  readonly linkSpeed?: number;
  readonly linkWidth?: number;
  /**
   * The rules for a VF (§9.3.5): Device Control, Link Control and Device
   * Control 2 are RsvdP (the PF's settings apply), except Initiate FLR.
   */
  readonly virtualFunction?: boolean;
  readonly onFlr?: () => void;
}

export interface Express {
  readonly offset: number;
  /** Sets Device Status error bits (RW1C; §7.5.3.5): 1 correctable, 2 non-fatal, 4 fatal, 8 unsupported request. */
  reportError(bits: number): void;
}

const MPS = [128, 256, 512, 1024, 2048, 4096];

/** The PCI Express Capability, version 2, for endpoints (PCIe Base 6.0 §7.5.3). */
export const expressCapability: CapabilityType<ExpressParams, Express> = {
  id: PCI_CAP_ID_EXP,
  name: 'PCI Express',
  size: () => PCI_EXP_SIZEOF_V2,
  init(space: ConfigSpace, offset: number, p: ExpressParams): Express {
    const type = p.deviceType === 'rc-endpoint' ? PCI_EXP_TYPE_RC_END : PCI_EXP_TYPE_ENDPOINT;
    const mps = MPS.indexOf(p.maxPayload ?? 256);
    const speed = p.linkSpeed ?? 3;
    const width = p.linkWidth ?? 8;
    const vf = p.virtualFunction === true;
    if (mps < 0) throw new SrIovError('invalid-argument', `Max_Payload_Size ${String(p.maxPayload)} is not one of ${MPS.join(', ')}`, String(p.maxPayload));
    if (!Number.isInteger(speed) || speed < 1 || speed > 6) throw new SrIovError('invalid-argument', `link speed ${speed} is not 1..6`, speed);
    if (![1, 2, 4, 8, 12, 16, 32].includes(width)) throw new SrIovError('invalid-argument', `link width x${width} is not a PCIe width`, width);
    // PCI Express Capabilities (§7.5.3.2): version 2, device type.
    space.setU16(offset + PCI_EXP_FLAGS, 2 | (type << 4));
    // Device Capabilities (§7.5.3.3): Role-Based Error Reporting (bit 15) is required;
    // endpoint L0s/L1 acceptable latencies "no limit" (7).
    space.setU32(offset + PCI_EXP_DEVCAP, mps | (p.extendedTag ? 1 << 5 : 0) | (7 << 6) | (7 << 9) | (1 << 15) | (p.flr ? PCI_EXP_DEVCAP_FLR : 0));
    // Device Control (§7.5.3.4): defaults Relaxed Ordering and No Snoop enabled,
    // Max_Read_Request_Size 512 bytes. Phantom Functions and Aux Power are RO 0 (unsupported).
    const devctl = offset + PCI_EXP_DEVCTL;
    const flrBit = p.flr ? PCI_EXP_DEVCTL_BCR_FLR : 0;
    if (vf) {
      space.setU16(devctl, 0);
      space.setWritable(devctl, 2, flrBit);
    } else {
      space.setU16(devctl, (1 << 4) | (1 << 11) | (2 << 12));
      space.setWritable(devctl, 2, 0x000f | 0x0010 | 0x00e0 | (p.extendedTag ? 0x0100 : 0) | 0x0800 | 0x7000 | flrBit);
    }
    // Device Status (§7.5.3.5): the four error-detected bits are RW1C.
    space.setWriteOneToClear(offset + PCI_EXP_DEVSTA, 2, PCI_EXP_DEVSTA_RW1C);
    // Link Capabilities / Control / Status (§7.5.3.6-8): no ASPM, port 0.
    space.setU32(offset + PCI_EXP_LNKCAP, speed | (width << 4));
    space.setWritable(offset + PCI_EXP_LNKCTL, 2, vf ? 0 : 0x0003 | 0x0040 | 0x0080);
    space.setU16(offset + PCI_EXP_LNKSTA, speed | (width << 4) | (1 << 12));
    // Device Capabilities 2 (§7.5.3.15): Completion Timeout ranges A-D and disable supported.
    space.setU32(offset + PCI_EXP_DEVCAP2, 0x1f);
    space.setWritable(offset + PCI_EXP_DEVCTL2, 2, vf ? 0 : 0x001f);
    // Link Capabilities 2 (§7.5.3.18): Supported Link Speeds vector, bits 7:1.
    space.setU32(offset + PCI_EXP_LNKCAP2, ((1 << speed) - 1) << 1);
    // Link Control 2 (§7.5.3.19): Target Link Speed, defaulting to the maximum.
    space.setU16(offset + PCI_EXP_LNKCTL2, vf ? 0 : speed);
    space.setWritable(offset + PCI_EXP_LNKCTL2, 2, vf ? 0 : 0x000f);
    if (p.flr) {
      // Initiate FLR (§7.5.3.4 bit 15) always reads 0; setting it resets the function (§6.6.2).
      space.onWrite(devctl, 4, (at, size, _previous, written) => {
        if (at > devctl + 1 || at + size <= devctl + 1) return;
        const shift = 8 * (devctl + 1 - at);
        space.setU16(devctl, space.getU16(devctl) & ~PCI_EXP_DEVCTL_BCR_FLR);
        if ((written >>> shift) & 0x80) p.onFlr?.();
      });
    }
    return {
      offset,
      reportError(bits) {
        space.setU16(offset + PCI_EXP_DEVSTA, space.getU16(offset + PCI_EXP_DEVSTA) | (bits & PCI_EXP_DEVSTA_RW1C));
      },
    };
  },
};
