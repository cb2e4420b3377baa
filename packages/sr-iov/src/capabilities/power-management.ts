import type { CapabilityType, ConfigSpace } from '../config-space.js';
import {
  PCI_CAP_ID_PM,
  PCI_PM_CTRL,
  PCI_PM_CTRL_NO_SOFT_RESET,
  PCI_PM_CTRL_PME_ENABLE,
  PCI_PM_CTRL_PME_STATUS,
  PCI_PM_CTRL_STATE_MASK,
  PCI_PM_PMC,
  PCI_PM_SIZEOF,
} from '../defs.js';
import { SrIovError } from '../errors.js';

export interface PowerManagementParams {
  /** PMC Version: 3 for PCI PM 1.2 (the value PCIe requires, §7.5.2.1). */
  readonly version?: number;
  readonly d1?: boolean;
  readonly d2?: boolean;
  /** PME_Support bits 15:11 of PMC: D0, D1, D2, D3hot, D3cold as bits 0..4. */
  readonly pmeSupport?: number;
  /** Aux_Current encoding 0..7. */
  readonly auxCurrent?: number;
  readonly dsi?: boolean;
  /** No_Soft_Reset: a D3hot→D0 transition keeps the function's state. */
  readonly noSoftReset?: boolean;
}

export type PowerState = 0 | 1 | 2 | 3;

export interface PowerManagement {
  readonly offset: number;
  /** The PowerState field of PMCSR: 0 = D0 … 3 = D3hot. */
  powerState(): PowerState;
  /** The device signals PME: sets PME_Status (RW1C) when PME generation is possible from the current state. */
  raisePme(): boolean;
}

/** The PCI Power Management capability (PCIe Base 6.0 §7.5.2). */
export const powerManagementCapability: CapabilityType<PowerManagementParams, PowerManagement> = {
  id: PCI_CAP_ID_PM,
  name: 'Power Management',
  size: () => PCI_PM_SIZEOF,
  init(space: ConfigSpace, offset: number, p: PowerManagementParams): PowerManagement {
    const version = p.version ?? 3;
    const pme = p.pmeSupport ?? 0;
    const aux = p.auxCurrent ?? 0;
    if (!Number.isInteger(version) || version < 1 || version > 7) throw new SrIovError('invalid-argument', `PM version ${version} is not 1..7`, version);
    if (!Number.isInteger(pme) || pme < 0 || pme > 0x1f) throw new SrIovError('invalid-argument', `PME_Support ${pme} is not a 5-bit mask`, pme);
    if (!Number.isInteger(aux) || aux < 0 || aux > 7) throw new SrIovError('invalid-argument', `Aux_Current ${aux} is not 0..7`, aux);
    // PMC (§7.5.2.1): read-only. PME Clock is 0 for PCIe.
    space.setU16(offset + PCI_PM_PMC, version | (p.dsi ? 1 << 5 : 0) | (aux << 6) | (p.d1 ? 1 << 9 : 0) | (p.d2 ? 1 << 10 : 0) | (pme << 11));
    // PMCSR (§7.5.2.2): PowerState RW, No_Soft_Reset RO, PME_En RW and PME_Status RW1C only
    // when PME is supported from some state, Data_Select RO 0 (no Data register).
    const ctrl = offset + PCI_PM_CTRL;
    space.setU16(ctrl, p.noSoftReset ? PCI_PM_CTRL_NO_SOFT_RESET : 0);
    space.setWritable(ctrl, 2, PCI_PM_CTRL_STATE_MASK | (pme ? PCI_PM_CTRL_PME_ENABLE : 0));
    space.setWriteOneToClear(ctrl, 2, pme ? PCI_PM_CTRL_PME_STATUS : 0);
    // §7.5.2.2: "If software attempts to write an unsupported, optional state to this
    // field, the write operation must complete normally; however, the data is
    // discarded and no state change occurs."
    space.onWrite(ctrl, 4, (at, _size, previous) => {
      // Only a write that starts at PMCSR carries the PowerState bits.
      if (at !== ctrl) return;
      const state = space.getU16(ctrl) & PCI_PM_CTRL_STATE_MASK;
      if ((state === 1 && !p.d1) || (state === 2 && !p.d2)) {
        space.setU16(ctrl, (space.getU16(ctrl) & ~PCI_PM_CTRL_STATE_MASK) | (previous & PCI_PM_CTRL_STATE_MASK));
      }
    });
    return {
      offset,
      powerState: () => (space.getU16(ctrl) & PCI_PM_CTRL_STATE_MASK) as PowerState,
      raisePme() {
        const state = space.getU16(ctrl) & PCI_PM_CTRL_STATE_MASK;
        if (!(pme & (1 << state))) return false;
        space.setU16(ctrl, space.getU16(ctrl) | PCI_PM_CTRL_PME_STATUS);
        return true;
      },
    };
  },
};
