import { type Ari, type AriParams, ariCapability } from './capabilities/ari.js';
import { type Sriov, type SriovConfigErrorKind, type SriovParams, sriovCapability } from './capabilities/sriov.js';
import {
  PCI_SRIOV_CTRL,
  PCI_SRIOV_CTRL_ARI,
  PCI_SRIOV_CTRL_MSE,
  PCI_SRIOV_CTRL_VFE,
  PCI_SRIOV_NUM_VF,
} from './defs.js';
import { Emitter } from './events.js';
import { SrIovError, type SrIovErrorKind, hex } from './errors.js';
import { PciFunction, type PciFunctionOptions, type Placed } from './pci-function.js';
import { formatRid, ridBus, ridFunction } from './routing-id.js';
import { VirtualFunction, type VfTemplate } from './virtual-function.js';
import { type VfConfig, type VfLinkState, checkRate, checkVlan, parseMac } from './vf-settings.js';

export interface PhysicalFunctionOptions extends PciFunctionOptions {
  /** The SR-IOV capability (its `pfFunction` is filled in from the address). */
  readonly sriov: Placed<SriovParams>;
  /** An ARI capability (§7.8.7); needed for more than 8 functions below a port. */
  readonly ari?: Placed<AriParams> | false;
  readonly vf?: VfTemplate;
  /**
   * The highest bus number the bridge above the PF forwards (its Subordinate
   * Bus Number). VFs past it cannot be reached: `setSriovNumVfs` answers
   * `no-bus-numbers` as Linux's `sriov_enable` does. Default 255.
   */
  readonly subordinateBus?: number;
  /**
   * The bridge above has ARI Forwarding Enable set; the OS then sets ARI Capable
   * Hierarchy before it reads First VF Offset and VF Stride, as Linux's
   * `sriov_init` does. Default: the PF has an ARI capability.
   */
  readonly ariForwarding?: boolean;
  /** Link speed in Mbit/s, the bound for `max_tx_rate`. Default 10000. */
  readonly linkSpeedMbps?: number;
}

export interface PhysicalFunctionEvents {
  /** A VF came into existence (VF Enable set); in VF order. */
  'vf-added': (vf: VirtualFunction) => void;
  /** A VF went away (VF Enable cleared, or the PF reset); last VF first, as Linux removes them. */
  'vf-removed': (vf: VirtualFunction) => void;
  /** A per-VF setting changed. */
  'vf-config': (vf: VirtualFunction, setting: keyof VfConfig) => void;
  /** A requester wrote something the device discarded (the spec calls it undefined). */
  'config-error': (kind: SriovConfigErrorKind, value: number) => void;
}

/** What the PCI segment tells a PF: whether a routing ID is taken by another function. */
export interface RidRegistry {
  isTaken(rid: number, except: PhysicalFunction): boolean;
}

/** The sysfs attributes of an SR-IOV PF (Documentation/ABI/testing/sysfs-bus-pci). */
export type SriovSysfsAttribute = 'sriov_totalvfs' | 'sriov_numvfs' | 'sriov_offset' | 'sriov_stride' | 'sriov_vf_device';

/**
 * A Physical Function with the SR-IOV capability: VF Enable creates its VFs
 * at RID(PF) + First VF Offset + n × VF Stride, and the Linux-shaped API on
 * top drives the same registers as the kernel's `drivers/pci/iov.c`.
 */
export class PhysicalFunction extends PciFunction {
  override readonly kind = 'pf' as const;
  readonly sriov: Sriov;
  readonly ari: Ari | undefined;
  readonly subordinateBus: number;
  readonly linkSpeedMbps: number;
  private readonly events = new Emitter<PhysicalFunctionEvents>();
  private readonly template: VfTemplate;
  private readonly ariForwarding: boolean;
  private vfList: VirtualFunction[] = [];
  private driverMaxVfs: number;
  private registry: RidRegistry | undefined;
  private refusal: { kind: SrIovErrorKind; message: string; rid: number } | undefined;

  constructor(options: PhysicalFunctionOptions) {
    super(options, 'pf');
    const sub = options.subordinateBus ?? 255;
    if (!Number.isInteger(sub) || sub < ridBus(this.rid) || sub > 255) throw new SrIovError('invalid-argument', `subordinate bus ${String(sub)} is not ${ridBus(this.rid)}..255`, sub);
    this.subordinateBus = sub;
    const speed = options.linkSpeedMbps ?? 10000;
    if (!Number.isInteger(speed) || speed <= 0) throw new SrIovError('invalid-argument', `link speed ${String(speed)} Mbit/s is not a positive integer`, speed);
    this.linkSpeedMbps = speed;
    this.template = options.vf ?? {};
    this.ari = options.ari ? this.config.addExtendedCapability(ariCapability, options.ari, options.ari.at) : undefined;
    this.ariForwarding = options.ariForwarding ?? this.ari !== undefined;
    this.sriov = this.config.addExtendedCapability(
      sriovCapability,
      {
        pfFunction: ridFunction(this.rid),
        ...options.sriov,
        host: {
          enableVfs: (n) => this.createVfs(n),
          disableVfs: () => this.removeVfs(),
          configError: (kind, value) => this.events.emit('config-error', kind, value),
        },
      },
      options.sriov.at,
    );
    this.driverMaxVfs = this.sriov.totalVfs;
    const m = this.template.msix;
    if (m) {
      for (const [bar, end] of [[m.tableBar, m.tableOffset + m.vectors * 16], [m.pbaBar, m.pbaOffset + Math.ceil(m.vectors / 64) * 8]] as const) {
        const vfBar = this.sriov.vfBars.find((b) => b.index === bar);
        if (!vfBar || BigInt(end) > vfBar.size) throw new SrIovError('invalid-argument', `the VF MSI-X table/PBA needs ${hex(end)} bytes of VF BAR ${bar}, which is missing or smaller`, bar);
      }
    }
    this.config.captureResetState();
  }

  on<K extends keyof PhysicalFunctionEvents>(event: K, listener: PhysicalFunctionEvents[K]): () => void {
    return this.events.on(event, listener);
  }

  /** The VFs that exist now, by VF number. */
  get vfs(): readonly VirtualFunction[] {
    return this.vfList;
  }

  /** VF `index`, or a typed error (`invalid-vf`) naming the count. */
  vf(index: number): VirtualFunction {
    const vf = Number.isInteger(index) ? this.vfList[index] : undefined;
    if (!vf) throw new SrIovError('invalid-vf', `VF ${String(index)} does not exist: ${this.address} has ${this.vfList.length} VF(s)`, index, this.vfList.length);
    return vf;
  }

  /** The routing ID VF `index` has (or would have) with the registers as they are now. */
  vfRid(index: number): number {
    return this.rid + this.sriov.firstVfOffset + index * this.sriov.vfStride;
  }

  /** @internal The segment this PF sits on. */
  attachRegistry(registry: RidRegistry | undefined): void {
    this.registry = registry;
  }

  // ── Linux-shaped API (drivers/pci/iov.c, pci-sysfs) ──────────────────────

  /** `sriov_totalvfs`: TotalVFs, or the lower limit the driver set. */
  get sriovTotalVfs(): number {
    return this.driverMaxVfs;
  }

  /** `pci_sriov_set_totalvfs`: a driver limits how many VFs may be enabled (0 restores TotalVFs). */
  sriovSetTotalVfs(n: number): void {
    if (!Number.isInteger(n) || n < 0 || n > this.sriov.totalVfs) throw new SrIovError('range', `driver limit ${String(n)} is above TotalVFs ${this.sriov.totalVfs}`, n, this.sriov.totalVfs);
    if (this.vfList.length) throw new SrIovError('busy', `cannot change the VF limit while ${this.vfList.length} VFs are enabled`, n);
    this.driverMaxVfs = n === 0 ? this.sriov.totalVfs : n;
  }

  /** `sriov_numvfs`: how many VFs are enabled now. */
  get sriovNumVfs(): number {
    return this.sriov.vfEnabled ? this.vfList.length : 0;
  }

  /** `sriov_offset`, `sriov_stride`, `sriov_vf_device`: the registers as they read now. */
  get sriovOffset(): number {
    return this.sriov.firstVfOffset;
  }
  get sriovStride(): number {
    return this.sriov.vfStride;
  }
  get sriovVfDevice(): number {
    return this.sriov.vfDeviceId;
  }

  /**
   * Writes `sriov_numvfs` with the kernel's rules (`sriov_numvfs_store`): above
   * `sriov_totalvfs` → `range` (ERANGE); the current count → nothing; 0 → disable;
   * another non-zero count while VFs exist → `busy` (EBUSY). Enabling drives
   * the registers as `sriov_enable` does: ARI Capable Hierarchy if the bridge
   * forwards ARI, NumVFs, then VF Enable | VF MSE; it fails with
   * `no-resources` if a VF BAR is unassigned, `no-bus-numbers` if the last VF is
   * past the subordinate bus, `rid-collision` if a RID is taken.
   */
  setSriovNumVfs(n: number): void {
    if (!Number.isInteger(n) || n < 0 || n > 0xffff) throw new SrIovError('invalid-input', `sriov_numvfs ${String(n)} is not a u16`, n);
    if (n > this.driverMaxVfs) throw new SrIovError('range', `${this.address}: ${n} VFs requested, sriov_totalvfs is ${this.driverMaxVfs}`, n, this.driverMaxVfs);
    const current = this.sriovNumVfs;
    if (n === current) return;
    const ctrlAt = this.sriov.offset + PCI_SRIOV_CTRL;
    if (n === 0) {
      this.config.write(ctrlAt, 2, this.config.getU16(ctrlAt) & ~(PCI_SRIOV_CTRL_VFE | PCI_SRIOV_CTRL_MSE));
      this.config.write(this.sriov.offset + PCI_SRIOV_NUM_VF, 2, 0);
      return;
    }
    if (current !== 0) throw new SrIovError('busy', `${this.address}: ${current} VFs already enabled; disable before enabling ${n}`, n, current);
    if (this.ariForwarding && !this.sriov.ariCapableHierarchy) {
      this.config.write(ctrlAt, 2, this.config.getU16(ctrlAt) | PCI_SRIOV_CTRL_ARI);
    }
    this.config.write(this.sriov.offset + PCI_SRIOV_NUM_VF, 2, n);
    for (const bar of this.sriov.vfBars) {
      const base = this.sriov.vfBarAddress(bar.index);
      const end = base + BigInt(n) * this.sriov.vfBarSize(bar.index);
      if (base === 0n || end > (bar.kind === 'mem64' ? 1n << 64n : 1n << 32n)) {
        this.config.write(this.sriov.offset + PCI_SRIOV_NUM_VF, 2, 0);
        throw new SrIovError('no-resources', `${this.address}: VF BAR ${bar.index} is ${base === 0n ? 'not assigned' : 'too small'} for ${n} VFs`, bar.index);
      }
    }
    const lastBus = ridBus(this.vfRid(n - 1));
    if (this.vfRid(n - 1) > 0xffff || lastBus > this.subordinateBus) {
      this.config.write(this.sriov.offset + PCI_SRIOV_NUM_VF, 2, 0);
      throw new SrIovError('no-bus-numbers', `${this.address}: can't enable ${n} VFs (bus ${hex(lastBus, 2)} out of range of ${hex(ridBus(this.rid), 2)}..${hex(this.subordinateBus, 2)})`, lastBus, this.subordinateBus);
    }
    this.refusal = undefined;
    this.config.write(ctrlAt, 2, this.config.getU16(ctrlAt) | PCI_SRIOV_CTRL_VFE | PCI_SRIOV_CTRL_MSE);
    if (!this.sriov.vfEnabled) {
      const r = this.refusal as { kind: SrIovErrorKind; message: string; rid: number } | undefined;
      this.config.write(ctrlAt, 2, this.config.getU16(ctrlAt) & ~PCI_SRIOV_CTRL_MSE);
      this.config.write(this.sriov.offset + PCI_SRIOV_NUM_VF, 2, 0);
      throw new SrIovError(r?.kind ?? 'no-bus-numbers', r?.message ?? `${this.address}: VF Enable refused`, r?.rid ?? n);
    }
  }

  /** Reads a sysfs attribute as text, as `cat /sys/bus/pci/devices/…/<attr>` prints it. */
  sysfsRead(attr: SriovSysfsAttribute): string {
    switch (attr) {
      case 'sriov_totalvfs':
        return `${this.sriovTotalVfs}\n`;
      case 'sriov_numvfs':
        return `${this.sriovNumVfs}\n`;
      case 'sriov_offset':
        return `${this.sriovOffset}\n`;
      case 'sriov_stride':
        return `${this.sriovStride}\n`;
      case 'sriov_vf_device':
        return `${this.sriovVfDevice.toString(16)}\n`;
      default:
        throw new SrIovError('invalid-input', `no sysfs attribute ${JSON.stringify(attr)}`, String(attr));
    }
  }

  /** Writes a sysfs attribute (only `sriov_numvfs` is writable); text parsed as `kstrtou16` does. */
  sysfsWrite(attr: SriovSysfsAttribute, text: string): void {
    if (attr !== 'sriov_numvfs') throw new SrIovError('invalid-input', `sysfs attribute ${JSON.stringify(attr)} is read-only`, String(attr));
    const t = text.endsWith('\n') ? text.slice(0, -1) : text;
    if (!/^(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.test(t)) throw new SrIovError('invalid-input', `sriov_numvfs: ${JSON.stringify(text)} is not a number`, text);
    const n = t.startsWith('0x') || t.startsWith('0X') ? parseInt(t.slice(2), 16) : t.length > 1 && t.startsWith('0') ? parseInt(t, 8) : parseInt(t, 10);
    if (n > 0xffff) throw new SrIovError('range', `sriov_numvfs: ${t} does not fit in a u16`, n, 0xffff);
    this.setSriovNumVfs(n);
  }

  // ── Per-VF settings (ndo_set_vf_*, `ip link set PF vf N …`) ──────────────
  // The VF index is checked first (`invalid-vf`), then the value.

  /** `ip link set PF vf N mac M` (ndo_set_vf_mac). */
  setVfMac(index: number, mac: string | Uint8Array): void {
    const vf = this.vf(index);
    this.update(vf, 'mac', parseMac(mac));
  }

  /** `ip link set PF vf N vlan V qos Q proto P` (ndo_set_vf_vlan); VLAN 0 and QoS 0 clear it. */
  setVfVlan(index: number, vlan: number, qos = 0, proto: number = 0x8100): void {
    const vf = this.vf(index);
    checkVlan(vlan, qos, proto);
    this.set(vf, { ...vf.settings, vlan, qos, vlanProto: proto }, 'vlan');
  }

  /** `ip link set PF vf N min_tx_rate A max_tx_rate B` (ndo_set_vf_rate), Mbit/s. */
  setVfRate(index: number, minTxRate: number, maxTxRate: number): void {
    const vf = this.vf(index);
    checkRate(minTxRate, maxTxRate, this.linkSpeedMbps);
    this.set(vf, { ...vf.settings, minTxRate, maxTxRate }, 'maxTxRate');
  }

  /** `ip link set PF vf N spoofchk on|off` (ndo_set_vf_spoofchk). */
  setVfSpoofChk(index: number, on: boolean): void {
    const vf = this.vf(index);
    this.update(vf, 'spoofChk', bool(on, 'spoofchk'));
  }

  /** `ip link set PF vf N trust on|off` (ndo_set_vf_trust). */
  setVfTrust(index: number, on: boolean): void {
    const vf = this.vf(index);
    this.update(vf, 'trust', bool(on, 'trust'));
  }

  /** `ip link set PF vf N state auto|enable|disable` (ndo_set_vf_link_state). */
  setVfLinkState(index: number, state: VfLinkState): void {
    const vf = this.vf(index);
    if (state !== 'auto' && state !== 'enable' && state !== 'disable') throw new SrIovError('invalid-setting', `link state ${JSON.stringify(state)} is not auto, enable or disable`, String(state));
    this.update(vf, 'linkState', state);
  }

  /** `ndo_get_vf_config`: the settings of VF `index`. */
  getVfConfig(index: number): VfConfig {
    return this.vf(index).settings;
  }

  /** Whether VF `index`'s link is up given the PF's link (`auto` follows it). */
  vfLinkUp(index: number, pfLinkUp: boolean): boolean {
    const s = this.vf(index).settings.linkState;
    return s === 'enable' || (s === 'auto' && pfLinkUp);
  }

  // ── VF lifecycle (called by the SR-IOV capability) ───────────────────────

  private createVfs(n: number): boolean {
    const rids: number[] = [];
    for (let i = 0; i < n; i++) {
      const rid = this.vfRid(i);
      if (rid > 0xffff || ridBus(rid) > this.subordinateBus) {
        return this.refuse('no-bus-numbers', `VF ${i} would be at routing ID ${hex(rid)}, past bus ${hex(this.subordinateBus, 2)}`, rid);
      }
      if (this.registry?.isTaken(rid, this)) {
        return this.refuse('rid-collision', `VF ${i} would be at ${formatRid(rid, this.domain)}, where another function already is`, rid);
      }
      rids.push(rid);
    }
    this.vfList = rids.map((rid, i) => new VirtualFunction(this, i, rid, this.template));
    for (const vf of this.vfList) this.events.emit('vf-added', vf);
    return true;
  }

  private refuse(kind: SrIovErrorKind, message: string, rid: number): false {
    this.refusal = { kind, message: `${this.address}: ${message}`, rid };
    return false;
  }

  private removeVfs(): void {
    const gone = this.vfList;
    this.vfList = [];
    for (let i = gone.length - 1; i >= 0; i--) {
      gone[i]!.markRemoved();
      this.events.emit('vf-removed', gone[i]!);
    }
  }

  private update<K extends keyof VfConfig>(vf: VirtualFunction, key: K, value: VfConfig[K]): void {
    this.set(vf, { ...vf.settings, [key]: value }, key);
  }

  private set(vf: VirtualFunction, next: VfConfig, key: keyof VfConfig): void {
    vf.applySettings(next);
    this.events.emit('vf-config', vf, key);
  }
}

function bool(v: unknown, what: string): boolean {
  if (typeof v !== 'boolean') throw new SrIovError('invalid-setting', `${what} must be true or false, not ${String(v)}`, String(v));
  return v;
}
