import { type Bar, type BarSpec, installBar, readBarAddress, readBarAddressNumber, resizeBar, validateBars } from '../bar.js';
import type { AccessSize, ConfigSpace, ExtendedCapabilityType } from '../config-space.js';
import {
  PCI_EXT_CAP_ID_SRIOV,
  PCI_SRIOV_BAR,
  PCI_SRIOV_CAP,
  PCI_SRIOV_CAP_ARI_PRESERVED,
  PCI_SRIOV_CAP_VFM,
  PCI_SRIOV_CTRL,
  PCI_SRIOV_CTRL_ARI,
  PCI_SRIOV_CTRL_INTR,
  PCI_SRIOV_CTRL_MSE,
  PCI_SRIOV_CTRL_VFE,
  PCI_SRIOV_CTRL_VFM,
  PCI_SRIOV_FUNC_LINK,
  PCI_SRIOV_INITIAL_VF,
  PCI_SRIOV_NUM_VF,
  PCI_SRIOV_SIZEOF,
  PCI_SRIOV_STATUS,
  PCI_SRIOV_STATUS_VFM,
  PCI_SRIOV_SUP_PGSIZE,
  PCI_SRIOV_SUP_PGSIZE_MINREQ,
  PCI_SRIOV_SYS_PGSIZE,
  PCI_SRIOV_TOTAL_VF,
  PCI_SRIOV_VF_DID,
  PCI_SRIOV_VF_OFFSET,
  PCI_SRIOV_VF_STRIDE,
  PCI_SRIOV_VFM,
} from '../defs.js';
import { SrIovError, hex } from '../errors.js';

/** Where the VFs go: RID(VF n) = RID(PF) + firstVfOffset + n × vfStride (§9.3.3.9, §9.3.3.10). */
export interface VfLayout {
  readonly firstVfOffset: number;
  readonly vfStride: number;
}

/**
 * First VF Offset and VF Stride "may change" when NumVFs or ARI Capable
 * Hierarchy is written (§9.3.3.9-10); a device whose layout depends on them
 * gives a function. It is called with every NumVFs in 0..TotalVFs and both
 * ARI settings when the capability is built, so a bad layout fails early.
 */
export type VfLayoutFn = (numVfs: number, ariCapableHierarchy: boolean) => VfLayout;

/** A VF BAR: memory only (VFs do not decode I/O, §9.3.4.1.3); `size` is the aperture of ONE VF. */
export interface VfBarSpec extends BarSpec {
  readonly kind: 'mem32' | 'mem64';
}

export interface SriovParams {
  /** TotalVFs (§9.3.3.6): 1..65535. */
  readonly totalVfs: number;
  /** InitialVFs (§9.3.3.5): defaults to TotalVFs. */
  readonly initialVfs?: number;
  /** VF Device ID (§9.3.3.11): the Device ID every VF of this PF has. */
  readonly vfDeviceId: number;
  /** Function Dependency Link (§9.3.3.8): defaults to the PF's own function number. */
  readonly functionDependencyLink?: number;
  readonly layout: VfLayout | VfLayoutFn;
  /** Supported Page Sizes (§9.3.3.12): must include 553h (4K, 8K, 64K, 256K, 1M, 4M). */
  readonly supportedPageSizes?: number;
  readonly vfBars?: readonly VfBarSpec[];
  /**
   * ARI Capable Hierarchy is RW only in the lowest-numbered PF of the device
   * with an SR-IOV capability, and RO 0 in the others (§9.3.3.3.5).
   */
  readonly ariCapableHierarchyWritable?: boolean;
  /** ARI Capable Hierarchy Preserved (§9.3.3.2.2). */
  readonly ariPreserved?: boolean;
  /** VF Migration Capable (§9.3.3.2.1): makes VF Migration Enable/Interrupt Enable RW and VF Migration Status RW1C. */
  readonly migrationCapable?: boolean;
  /** VF Migration Interrupt Message Number (§9.3.3.2, bits 31:21). */
  readonly migrationInterruptMessage?: number;
  /** VF Migration State Array Offset (§9.3.3.15): BIR and QWORD-aligned offset. */
  readonly migrationStateArray?: { readonly bir: number; readonly offset: number };
  /** Function number of the PF, for the Function Dependency Link default. */
  readonly pfFunction?: number;
}

/** Something a requester wrote that the device discarded (the spec calls the result undefined). */
export type SriovConfigErrorKind =
  /** NumVFs above TotalVFs (§9.3.3.7): the write is discarded. */
  | 'num-vfs-above-total'
  /** NumVFs written while VF Enable is Set (§9.3.3.7): discarded. */
  | 'num-vfs-while-enabled'
  /** System Page Size with no bit, several bits, or an unsupported size (§9.3.3.13): discarded. */
  | 'invalid-page-size'
  /** System Page Size written while VF Enable is Set (§9.3.3.13): discarded. */
  | 'page-size-while-enabled'
  /** ARI Capable Hierarchy changed while VF Enable is Set (§9.3.3.3.5): discarded. */
  | 'ari-while-enabled'
  /** VF Enable set but the VFs cannot exist (routing IDs past the bus range, or taken): VF Enable stays clear. */
  | 'vf-enable-refused';

/** The device model that owns the capability (the PF) creates and removes the VFs. */
export interface SriovHost {
  /** VF Enable went 0→1: create `numVfs` VFs. Return false to refuse; VF Enable then reads back 0. */
  enableVfs(numVfs: number): boolean;
  /** VF Enable went 1→0 (or the PF was reset): remove every VF. */
  disableVfs(): void;
  configError(kind: SriovConfigErrorKind, value: number): void;
}

export interface SriovInit extends SriovParams {
  readonly host: SriovHost;
}

/**
 * The SR-IOV Extended Capability (ID 0010h, PCIe Base 6.0 §9.3.3) of a PF:
 * every field at its offset, and the write rules.
 */
export class Sriov {
  readonly totalVfs: number;
  readonly initialVfs: number;
  readonly vfDeviceId: number;
  readonly supportedPageSizes: number;
  readonly vfBars: readonly Bar[];
  private readonly layoutFn: VfLayoutFn;
  private ctrl = 0;
  private num = 0;
  private pageSize = 1;
  private enabled = false;

  constructor(
    private readonly space: ConfigSpace,
    readonly offset: number,
    private readonly p: SriovInit,
  ) {
    const total = p.totalVfs;
    if (!Number.isInteger(total) || total < 1 || total > 0xffff) throw new SrIovError('invalid-argument', `TotalVFs ${String(total)} is not 1..65535`, total);
    const initial = p.initialVfs ?? total;
    if (!Number.isInteger(initial) || initial < 0 || initial > total) throw new SrIovError('invalid-argument', `InitialVFs ${String(initial)} is not 0..TotalVFs (${total})`, initial, total);
    // §9.3.3.5: without VF Migration, InitialVFs must equal TotalVFs.
    if (!p.migrationCapable && initial !== total) throw new SrIovError('invalid-argument', `InitialVFs ${initial} must equal TotalVFs ${total} when VF Migration is not supported`, initial, total);
    if (!Number.isInteger(p.vfDeviceId) || p.vfDeviceId < 0 || p.vfDeviceId > 0xffff) throw new SrIovError('invalid-argument', `VF Device ID ${String(p.vfDeviceId)} is not 16-bit`, p.vfDeviceId);
    const sup = p.supportedPageSizes ?? PCI_SRIOV_SUP_PGSIZE_MINREQ;
    if (!Number.isInteger(sup) || sup < 0 || sup > 0xffffffff || (sup & PCI_SRIOV_SUP_PGSIZE_MINREQ) !== PCI_SRIOV_SUP_PGSIZE_MINREQ) {
      throw new SrIovError('invalid-argument', `Supported Page Sizes ${hex(sup)} must include 553h (§9.3.3.12)`, sup);
    }
    const fdl = p.functionDependencyLink ?? p.pfFunction ?? 0;
    if (!Number.isInteger(fdl) || fdl < 0 || fdl > 0xff) throw new SrIovError('invalid-argument', `Function Dependency Link ${String(fdl)} is not 8-bit`, fdl);
    const imn = p.migrationInterruptMessage ?? 0;
    if (!Number.isInteger(imn) || imn < 0 || imn > 0x7ff) throw new SrIovError('invalid-argument', `VF Migration Interrupt Message Number ${String(imn)} is not 11-bit`, imn);
    this.totalVfs = total;
    this.initialVfs = initial;
    this.vfDeviceId = p.vfDeviceId;
    this.supportedPageSizes = sup >>> 0;
    this.vfBars = validateBars(p.vfBars ?? [], 'VF', false);
    const layout = p.layout;
    this.layoutFn = typeof layout === 'function' ? layout : () => layout;
    for (let n = 0; n <= total; n++) {
      this.checkLayout(n, false);
      if (p.ariCapableHierarchyWritable !== false) this.checkLayout(n, true);
    }

    const at = (r: number) => offset + r;
    const migr = p.migrationCapable === true;
    // SR-IOV Capabilities (§9.3.3.2): RO.
    space.setU32(at(PCI_SRIOV_CAP), (migr ? PCI_SRIOV_CAP_VFM : 0) | (p.ariPreserved ? PCI_SRIOV_CAP_ARI_PRESERVED : 0) | (imn << 21));
    // SR-IOV Control (§9.3.3.3).
    space.setWritable(at(PCI_SRIOV_CTRL), 2, this.ctrlMask(false));
    // SR-IOV Status (§9.3.3.4): VF Migration Status is RW1C.
    space.setWriteOneToClear(at(PCI_SRIOV_STATUS), 2, migr ? PCI_SRIOV_STATUS_VFM : 0);
    space.setU16(at(PCI_SRIOV_INITIAL_VF), initial);
    space.setU16(at(PCI_SRIOV_TOTAL_VF), total);
    // NumVFs (§9.3.3.7): RW while VF Enable is clear.
    space.setU16(at(PCI_SRIOV_NUM_VF), 0);
    space.setWritable(at(PCI_SRIOV_NUM_VF), 2, 0xffff);
    space.setU8(at(PCI_SRIOV_FUNC_LINK), fdl);
    space.setU16(at(PCI_SRIOV_VF_DID), p.vfDeviceId);
    space.setU32(at(PCI_SRIOV_SUP_PGSIZE), this.supportedPageSizes);
    // System Page Size (§9.3.3.13): 4 KiB (bit 0) at reset.
    space.setU32(at(PCI_SRIOV_SYS_PGSIZE), 1);
    space.setWritable(at(PCI_SRIOV_SYS_PGSIZE), 4, this.supportedPageSizes);
    for (const bar of this.vfBars) {
      const spec = p.vfBars?.find((b) => b.index === bar.index);
      installBar(space, at(PCI_SRIOV_BAR + 4 * bar.index), bar, bar.size > 4096n ? bar.size : 4096n, spec?.address);
    }
    const msa = p.migrationStateArray;
    if (msa) {
      if (!Number.isInteger(msa.bir) || msa.bir < 0 || msa.bir > 5 || !Number.isInteger(msa.offset) || msa.offset & 7 || msa.offset < 0 || msa.offset > 0xfffffff8) {
        throw new SrIovError('invalid-argument', `VF Migration State Array BIR ${msa.bir} / offset ${hex(msa.offset)} is not valid`, msa.offset);
      }
      space.setU32(at(PCI_SRIOV_VFM), msa.offset | msa.bir);
    }
    this.updateLayout();
    space.onWrite(offset, PCI_SRIOV_SIZEOF, (o, size, _prev, written) => this.onWrite(o - offset, size, written));
    space.onReset(() => this.afterReset());
  }

  // ── What the registers hold now ──────────────────────────────────────────

  get vfEnabled(): boolean {
    return this.enabled;
  }
  /** VF MSE (§9.3.3.3.4): the VFs decode their memory BARs. */
  get vfMemoryEnabled(): boolean {
    return (this.space.getU16(this.offset + PCI_SRIOV_CTRL) & PCI_SRIOV_CTRL_MSE) !== 0;
  }
  get ariCapableHierarchy(): boolean {
    return (this.space.getU16(this.offset + PCI_SRIOV_CTRL) & PCI_SRIOV_CTRL_ARI) !== 0;
  }
  get numVfs(): number {
    return this.space.getU16(this.offset + PCI_SRIOV_NUM_VF);
  }
  get firstVfOffset(): number {
    return this.space.getU16(this.offset + PCI_SRIOV_VF_OFFSET);
  }
  get vfStride(): number {
    return this.space.getU16(this.offset + PCI_SRIOV_VF_STRIDE);
  }
  /** The System Page Size in bytes: 2^(n+12) for the bit n that is set. */
  get systemPageSize(): number {
    return 2 ** (31 - Math.clz32(this.space.getU32(this.offset + PCI_SRIOV_SYS_PGSIZE)) + 12);
  }

  /** The aperture one VF decodes through VF BAR `index`: the BAR's size, at least System Page Size. */
  vfBarSize(index: number): bigint {
    const bar = this.vfBar(index);
    const page = BigInt(this.systemPageSize);
    return bar.size > page ? bar.size : page;
  }

  /** The VF BAR `index` base address (VF 0's aperture), as programmed. */
  vfBarAddress(index: number): bigint {
    return readBarAddress(this.space, this.offset + PCI_SRIOV_BAR + 4 * index, this.vfBar(index));
  }

  /** As `vfBarAddress`, as a number; -1 above 2^53. */
  vfBarAddressNumber(index: number): number {
    return readBarAddressNumber(this.space, this.offset + PCI_SRIOV_BAR + 4 * index, this.vfBar(index));
  }

  vfBar(index: number): Bar {
    for (const bar of this.vfBars) if (bar.index === index) return bar;
    throw new SrIovError('invalid-argument', `VF BAR ${String(index)} is not implemented`, index);
  }

  /** As `vfBarSize`, as a number (no allocation; exact below 2^53). */
  vfBarSizeNumber(index: number): number {
    const size = Number(this.vfBar(index).size);
    const page = this.systemPageSize;
    return size > page ? size : page;
  }

  /** The layout the device reports for `numVfs` and an ARI setting (what the registers will show). */
  layoutFor(numVfs: number, ari: boolean): VfLayout {
    return this.layoutFn(numVfs, ari);
  }

  // ── Write rules ──────────────────────────────────────────────────────────

  private onWrite(rel: number, size: AccessSize, written: number): void {
    const regs = this.offset;
    if (touches(rel, size, PCI_SRIOV_NUM_VF, 2)) {
      const wanted = field(rel, written, PCI_SRIOV_NUM_VF, 2);
      if (this.enabled) {
        if (rel === PCI_SRIOV_NUM_VF && size >= 2 && wanted !== this.num) this.p.host.configError('num-vfs-while-enabled', wanted);
      } else {
        const v = this.space.getU16(regs + PCI_SRIOV_NUM_VF);
        if (v > this.totalVfs) {
          this.space.setU16(regs + PCI_SRIOV_NUM_VF, this.num);
          this.p.host.configError('num-vfs-above-total', v);
        } else if (v !== this.num) {
          this.num = v;
          this.updateLayout();
        }
      }
    }
    if (touches(rel, size, PCI_SRIOV_SYS_PGSIZE, 4)) {
      const v = this.space.getU32(regs + PCI_SRIOV_SYS_PGSIZE);
      if (this.enabled) {
        const wanted = field(rel, written, PCI_SRIOV_SYS_PGSIZE, 4);
        if (size === 4 && wanted !== this.pageSize) this.p.host.configError('page-size-while-enabled', wanted);
      } else if (v === 0 || (v & (v - 1)) !== 0 || (v & this.supportedPageSizes) !== v) {
        this.space.setU32(regs + PCI_SRIOV_SYS_PGSIZE, this.pageSize);
        this.p.host.configError('invalid-page-size', size === 4 ? written : v);
      } else if (v !== this.pageSize) {
        this.pageSize = v;
        for (const bar of this.vfBars) resizeBar(this.space, regs + PCI_SRIOV_BAR + 4 * bar.index, bar, this.vfBarSize(bar.index));
      }
    }
    if (touches(rel, size, PCI_SRIOV_CTRL, 1)) this.onControl(field(rel, written, PCI_SRIOV_CTRL, 1));
  }

  private onControl(written: number): void {
    const reg = this.offset + PCI_SRIOV_CTRL;
    let v = this.space.getU16(reg);
    const was = this.enabled;
    if (was && (written & PCI_SRIOV_CTRL_VFE) && ((written ^ this.ctrl) & PCI_SRIOV_CTRL_ARI) && this.p.ariCapableHierarchyWritable !== false) {
      this.p.host.configError('ari-while-enabled', written & PCI_SRIOV_CTRL_ARI ? 1 : 0);
    }
    if (!was && (v ^ this.ctrl) & PCI_SRIOV_CTRL_ARI) {
      this.ctrl = (this.ctrl & ~PCI_SRIOV_CTRL_ARI) | (v & PCI_SRIOV_CTRL_ARI);
      this.updateLayout();
    }
    if (!was && v & PCI_SRIOV_CTRL_VFE) {
      // VF Enable 0→1 (§9.3.3.3.1): NumVFs VFs come into existence.
      this.ctrl = v;
      this.enabled = true;
      this.lock(true);
      if (!this.p.host.enableVfs(this.num)) {
        this.enabled = false;
        this.lock(false);
        v &= ~PCI_SRIOV_CTRL_VFE;
        this.space.setU16(reg, v);
        this.p.host.configError('vf-enable-refused', this.num);
      }
    } else if (was && !(v & PCI_SRIOV_CTRL_VFE)) {
      // VF Enable 1→0: the VFs are gone (§9.3.3.3.1).
      this.enabled = false;
      this.lock(false);
      this.ctrl = v;
      this.p.host.disableVfs();
    }
    this.ctrl = v;
  }

  /** While VF Enable is set, NumVFs, System Page Size and ARI Capable Hierarchy are frozen. */
  private lock(locked: boolean): void {
    const at = (r: number) => this.offset + r;
    this.space.setWritable(at(PCI_SRIOV_CTRL), 2, this.ctrlMask(locked));
    this.space.setWritable(at(PCI_SRIOV_NUM_VF), 2, locked ? 0 : 0xffff);
    this.space.setWritable(at(PCI_SRIOV_SYS_PGSIZE), 4, locked ? 0 : this.supportedPageSizes);
  }

  private ctrlMask(locked: boolean): number {
    const migr = this.p.migrationCapable === true;
    const ari = this.p.ariCapableHierarchyWritable !== false && !locked;
    return PCI_SRIOV_CTRL_VFE | PCI_SRIOV_CTRL_MSE | (migr ? PCI_SRIOV_CTRL_VFM | PCI_SRIOV_CTRL_INTR : 0) | (ari ? PCI_SRIOV_CTRL_ARI : 0);
  }

  private updateLayout(): void {
    const { firstVfOffset, vfStride } = this.checkLayout(this.num, (this.ctrl & PCI_SRIOV_CTRL_ARI) !== 0);
    this.space.setU16(this.offset + PCI_SRIOV_VF_OFFSET, firstVfOffset);
    this.space.setU16(this.offset + PCI_SRIOV_VF_STRIDE, vfStride);
  }

  private checkLayout(n: number, ari: boolean): VfLayout {
    const l = this.layoutFn(n, ari);
    const ok = (x: unknown): x is number => typeof x === 'number' && Number.isInteger(x) && x >= 0 && x <= 0xffff;
    if (!ok(l.firstVfOffset) || !ok(l.vfStride) || (n > 0 && l.firstVfOffset === 0) || (n > 1 && l.vfStride === 0)) {
      throw new SrIovError('invalid-argument', `VF layout for NumVFs ${n}${ari ? ' with ARI' : ''}: offset ${String(l.firstVfOffset)} / stride ${String(l.vfStride)} would not give distinct 16-bit routing IDs`, n);
    }
    return l;
  }

  private afterReset(): void {
    // An FLR of the PF clears VF Enable (§9.2.2.3): the VFs go away.
    const was = this.enabled;
    this.enabled = false;
    this.ctrl = 0;
    this.num = 0;
    this.pageSize = 1;
    this.updateLayout();
    if (was) this.p.host.disableVfs();
  }
}

/** Whether an access of `size` bytes at `rel` covers any byte of the register [reg, reg+len). */
function touches(rel: number, size: number, reg: number, len: number): boolean {
  return rel < reg + len && rel + size > reg;
}

/** The bytes of `written` (an access at `rel`) that land in the register at `reg`, shifted to bit 0. */
function field(rel: number, written: number, reg: number, len: number): number {
  const shift = 8 * (reg - rel);
  const v = shift >= 0 ? written >>> shift : (written << -shift) >>> 0;
  return len === 4 ? v >>> 0 : v & ((1 << (8 * len)) - 1);
}

/** The SR-IOV extended capability definition (ID 0010h, version 1). */
export const sriovCapability: ExtendedCapabilityType<SriovInit, Sriov> = {
  id: PCI_EXT_CAP_ID_SRIOV,
  version: 1,
  name: 'SR-IOV',
  size: () => PCI_SRIOV_SIZEOF,
  init: (space, offset, params) => new Sriov(space, offset, params),
};
