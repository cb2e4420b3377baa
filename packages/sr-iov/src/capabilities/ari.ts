import type { ConfigSpace, ExtendedCapabilityType } from '../config-space.js';
import { PCI_ARI_CAP, PCI_ARI_CTRL, PCI_ARI_SIZEOF, PCI_EXT_CAP_ID_ARI } from '../defs.js';
import { SrIovError } from '../errors.js';

export interface AriParams {
  /** Next Function Number: the next PF of the device in ARI numbering, 0 for the last (§7.8.7.2). VFs report 0. */
  readonly nextFunction?: number;
  readonly mfvcFunctionGroups?: boolean;
  readonly acsFunctionGroups?: boolean;
}

export interface Ari {
  readonly offset: number;
  readonly nextFunction: number;
}

/** Alternative Routing-ID Interpretation (PCIe Base 6.0 §7.8.7, extended capability 000Eh). */
export const ariCapability: ExtendedCapabilityType<AriParams, Ari> = {
  id: PCI_EXT_CAP_ID_ARI,
  version: 1,
  name: 'ARI',
  size: () => PCI_ARI_SIZEOF,
  init(space: ConfigSpace, offset: number, p: AriParams): Ari {
    const next = p.nextFunction ?? 0;
    if (!Number.isInteger(next) || next < 0 || next > 0xff) throw new SrIovError('invalid-argument', `ARI Next Function Number ${next} is not 0..255`, next);
    // ARI Capability (§7.8.7.2): read-only.
    space.setU16(offset + PCI_ARI_CAP, (p.mfvcFunctionGroups ? 1 : 0) | (p.acsFunctionGroups ? 2 : 0) | (next << 8));
    // ARI Control (§7.8.7.3): the enables are RW only when the matching capability is;
    // Function Group (6:4) is RW when either is, RO 0 otherwise.
    const groups = p.mfvcFunctionGroups || p.acsFunctionGroups;
    space.setWritable(offset + PCI_ARI_CTRL, 2, (p.mfvcFunctionGroups ? 1 : 0) | (p.acsFunctionGroups ? 2 : 0) | (groups ? 0x70 : 0));
    return { offset, nextFunction: next };
  },
};
