import type { Bar } from './bar.js';
import { type Ari, ariCapability } from './capabilities/ari.js';
import type { ExpressParams } from './capabilities/express.js';
import type { MsixParams } from './capabilities/msix.js';
import type { PowerManagementParams } from './capabilities/power-management.js';
import { PCI_SUBSYSTEM_ID, PCI_SUBSYSTEM_VENDOR_ID } from './defs.js';
import { PciFunction, type Placed } from './pci-function.js';
import type { PhysicalFunction } from './physical-function.js';
import { DEFAULT_VF_CONFIG, type VfConfig } from './vf-settings.js';

/** What every VF of a PF looks like (the PF's device defines it). */
export interface VfTemplate {
  readonly revisionId?: number;
  /** Defaults to the PF's Class Code. */
  readonly classCode?: number;
  /** Subsystem Vendor ID is the PF's (§9.3.4.1.13); the Subsystem ID may differ. */
  readonly subsystemId?: number;
  readonly name?: string;
  /** The VF's own MSI-X: table and PBA in VF BARs (`tableBar`/`pbaBar` name VF BAR indices). */
  readonly msix?: Placed<MsixParams>;
  readonly powerManagement?: Placed<PowerManagementParams> | false;
  /** The VF's PCI Express capability; Function Level Reset is on unless `flr: false`. */
  readonly express?: Placed<Omit<ExpressParams, 'virtualFunction' | 'onFlr'>>;
  /** Where the VF's ARI capability goes (VFs of an ARI device carry one, Next Function 0). */
  readonly ariAt?: number;
  /** Adds more capabilities to each new VF (any `CapabilityType`/`ExtendedCapabilityType`). */
  readonly extend?: (vf: VirtualFunction) => void;
}

/**
 * A Virtual Function: its own configuration space (Vendor and Device ID read
 * FFFFh, §9.3.4.1.1-2), own MSI-X, and BARs carved from the PF's VF BAR
 * windows: VF n's BAR i = VF BAR i + n × (VF BAR i aperture) (§9.3.3.14).
 */
export class VirtualFunction extends PciFunction {
  override readonly kind = 'vf' as const;
  readonly ari: Ari | undefined;
  private cfg: VfConfig = DEFAULT_VF_CONFIG;
  private gone = false;

  /** @internal Created by the PF when VF Enable is set. */
  constructor(
    readonly pf: PhysicalFunction,
    /** VF number, 0-based (the kernel's `virtfnN`). */
    readonly index: number,
    rid: number,
    template: VfTemplate,
  ) {
    super(
      {
        address: rid,
        domain: pf.domain,
        vendorId: pf.vendorId,
        deviceId: pf.sriov.vfDeviceId,
        revisionId: template.revisionId ?? 0,
        classCode: template.classCode ?? pf.classCode,
        subsystemVendorId: pf.config.getU16(PCI_SUBSYSTEM_VENDOR_ID),
        subsystemId: template.subsystemId ?? pf.config.getU16(PCI_SUBSYSTEM_ID),
        name: template.name ?? `${pf.name} Virtual Function`,
        powerManagement: template.powerManagement ?? false,
        ...(template.msix ? { msix: template.msix } : {}),
        express: { flr: true, ...template.express },
      },
      'vf',
      true,
    );
    this.ari = pf.ari ? this.config.addExtendedCapability(ariCapability, { nextFunction: 0 }, template.ariAt) : undefined;
    template.extend?.(this);
    this.config.captureResetState();
  }

  /** The Vendor ID the OS shows for this VF (the PF's; the register reads FFFFh). */
  get osVendorId(): number {
    return this.pf.vendorId;
  }
  /** The Device ID the OS shows (the PF's VF Device ID; the register reads FFFFh). */
  get osDeviceId(): number {
    return this.pf.sriov.vfDeviceId;
  }

  /** The per-VF settings the PF driver holds for this VF. */
  get settings(): VfConfig {
    return this.cfg;
  }

  /** @internal */
  applySettings(next: VfConfig): void {
    this.cfg = Object.freeze({ ...next });
  }

  /** True once VF Enable was cleared (or the PF reset): the object no longer answers on the bus. */
  get removed(): boolean {
    return this.gone;
  }

  /** @internal */
  markRemoved(): void {
    this.gone = true;
  }

  override implementedBars(): readonly Bar[] {
    return this.pf.sriov.vfBars;
  }

  /** VF BAR i base + index × aperture (§9.3.3.14). */
  override barAddress(index: number): bigint {
    this.bar(index);
    return this.pf.sriov.vfBarAddress(index) + BigInt(this.index) * this.pf.sriov.vfBarSize(index);
  }

  override barAddressNumber(index: number): number {
    this.bar(index);
    const base = this.pf.sriov.vfBarAddressNumber(index);
    if (base < 0) return -1;
    const a = base + this.index * this.pf.sriov.vfBarSizeNumber(index);
    return Number.isSafeInteger(a) ? a : -1;
  }

  override barSizeNumber(index: number): number {
    this.bar(index);
    return this.pf.sriov.vfBarSizeNumber(index);
  }

  override barSize(index: number): bigint {
    this.bar(index);
    return this.pf.sriov.vfBarSize(index);
  }

  /** VFs decode memory when the PF's VF MSE is set (§9.3.3.3.4); their own Command.MSE is RsvdP. */
  override get memoryEnabled(): boolean {
    return !this.gone && this.pf.sriov.vfMemoryEnabled;
  }
}
