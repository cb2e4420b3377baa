import { type Bar, type BarSpec, installBar, readBarAddress, readBarAddressNumber, validateBars } from './bar.js';
import { type AccessSize, ConfigSpace, checkAccess } from './config-space.js';
import { type Express, type ExpressParams, expressCapability } from './capabilities/express.js';
import { type Msix, type MsixParams, msixCapability } from './capabilities/msix.js';
import { type PowerManagement, type PowerManagementParams, powerManagementCapability } from './capabilities/power-management.js';
import {
  PCI_BASE_ADDRESS_0,
  PCI_CACHE_LINE_SIZE,
  PCI_CLASS_PROG,
  PCI_COMMAND,
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_IO,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_COMMAND_PARITY,
  PCI_COMMAND_SERR,
  PCI_DEVICE_ID,
  PCI_HEADER_TYPE,
  PCI_INTERRUPT_LINE,
  PCI_INTERRUPT_PIN,
  PCI_REVISION_ID,
  PCI_ROM_ADDRESS,
  PCI_ROM_ADDRESS_ENABLE,
  PCI_STATUS,
  PCI_STATUS_RW1C,
  PCI_SUBSYSTEM_ID,
  PCI_SUBSYSTEM_VENDOR_ID,
  PCI_VENDOR_ID,
} from './defs.js';
import { SrIovError, hex } from './errors.js';
import { type PciAddressInput, type RoutingId, formatRid, toRid } from './routing-id.js';

/** What identifies a function in its header (PCIe Base 6.0 §7.5.1.1, §7.5.1.2). */
export interface FunctionIdentity {
  readonly vendorId: number;
  readonly deviceId: number;
  readonly revisionId?: number;
  /** Class Code, 24 bits: base class, sub-class, programming interface (0x020000 = Ethernet). */
  readonly classCode: number;
  readonly subsystemVendorId?: number;
  readonly subsystemId?: number;
}

/** A capability placed at a chosen offset (or the first free one). */
export type Placed<P> = P & { readonly at?: number };

export interface PciFunctionOptions extends FunctionIdentity {
  /** `[dddd:]bb:dd.f`, or a routing ID. */
  readonly address: PciAddressInput;
  /** The PCI segment (domain) when `address` is a routing ID. */
  readonly domain?: number;
  readonly bars?: readonly BarSpec[];
  /** Expansion ROM size in bytes (a power of two ≥ 2 KiB), if the function has one. */
  readonly romSize?: number;
  /** Interrupt Pin: 0 none, 1..4 INTA..INTD. */
  readonly interruptPin?: number;
  /** Header Type bit 7: the device has more than one function (§7.5.1.1.9). */
  readonly multiFunction?: boolean;
  /** Text for lspci-style listings ("82599ES 10-Gigabit SFI/SFP+ Network Connection"). */
  readonly name?: string;
  readonly powerManagement?: Placed<PowerManagementParams> | false;
  readonly msix?: Placed<MsixParams>;
  readonly express?: Placed<ExpressParams>;
  /**
   * Adds extended capabilities before the function's own (ARI, SR-IOV): any
   * `ExtendedCapabilityType` goes here, e.g. AER, which must be first at 100h.
   */
  readonly extendedCapabilities?: (config: ConfigSpace) => void;
}

/** Memory or I/O access handler for the parts of a BAR the MSI-X table does not claim. */
export interface MmioHandler {
  read(bar: number, offset: number, size: AccessSize): number;
  write(bar: number, offset: number, size: AccessSize, value: number): void;
}

export type FunctionKind = 'function' | 'pf' | 'vf';

/**
 * One PCI Express function: its 4 KiB configuration space, BARs and the
 * capabilities every ioplane function carries (Power Management, MSI-X,
 * PCI Express). PFs and VFs are subclasses.
 */
export class PciFunction {
  readonly config = new ConfigSpace();
  readonly kind: FunctionKind = 'function';
  readonly domain: number;
  readonly name: string;
  readonly pm: PowerManagement | undefined;
  readonly msix: Msix | undefined;
  readonly express: Express | undefined;
  protected readonly bars: readonly Bar[];
  protected ridValue: RoutingId;
  private mmio: MmioHandler | undefined;

  /** A plain (non-SR-IOV) function. */
  static create(options: PciFunctionOptions): PciFunction {
    return new PciFunction(options, 'function');
  }

  protected constructor(options: PciFunctionOptions, kind: FunctionKind, virtualFunction = false) {
    this.kind = kind;
    const { domain, rid } = toRid(options.address);
    const dom = typeof options.address === 'number' ? (options.domain ?? 0) : domain;
    if (!Number.isInteger(dom) || dom < 0 || dom > 0xffff) throw new SrIovError('invalid-argument', `PCI domain ${String(dom)} is not 0..ffff`, dom);
    this.domain = dom;
    this.ridValue = rid;
    this.name = options.name ?? 'Device';
    const c = this.config;
    const u16 = (v: number | undefined, what: string, dflt: number): number => {
      const x = v ?? dflt;
      if (!Number.isInteger(x) || x < 0 || x > 0xffff) throw new SrIovError('invalid-argument', `${what} ${String(x)} is not 16-bit`, x);
      return x;
    };
    const vendor = u16(options.vendorId, 'Vendor ID', 0);
    if (vendor === 0xffff) throw new SrIovError('invalid-argument', 'Vendor ID FFFFh is what an absent function returns (§7.5.1.1.1)', vendor);
    const device = u16(options.deviceId, 'Device ID', 0);
    const rev = options.revisionId ?? 0;
    if (!Number.isInteger(rev) || rev < 0 || rev > 0xff) throw new SrIovError('invalid-argument', `Revision ID ${rev} is not 8-bit`, rev);
    if (!Number.isInteger(options.classCode) || options.classCode < 0 || options.classCode > 0xffffff) throw new SrIovError('invalid-argument', `Class Code ${String(options.classCode)} is not 24-bit`, options.classCode);
    const pin = options.interruptPin ?? 0;
    if (!Number.isInteger(pin) || pin < 0 || pin > 4 || (virtualFunction && pin !== 0)) throw new SrIovError('invalid-argument', `Interrupt Pin ${pin} is not ${virtualFunction ? '0 for a VF (no INTx, §9.3.4.1.14)' : '0..4'}`, pin);
    this.bars = validateBars(options.bars ?? [], virtualFunction ? 'VF' : 'function', !virtualFunction);
    if (virtualFunction && this.bars.length) throw new SrIovError('invalid-argument', 'VF BARs come from the PF\'s VF BAR windows (§9.3.4.1.11)', this.bars.length);

    // Vendor ID and Device ID (§7.5.1.1.1-2); VFs read FFFFh for both (§9.3.4.1.1-2).
    c.setU16(PCI_VENDOR_ID, virtualFunction ? 0xffff : vendor);
    c.setU16(PCI_DEVICE_ID, virtualFunction ? 0xffff : device);
    c.setU8(PCI_REVISION_ID, rev);
    c.setU8(PCI_CLASS_PROG, options.classCode & 0xff);
    c.setU16(PCI_CLASS_PROG + 1, options.classCode >>> 8);
    c.setU8(PCI_HEADER_TYPE, options.multiFunction && !virtualFunction ? 0x80 : 0x00);
    c.setU16(PCI_SUBSYSTEM_VENDOR_ID, u16(options.subsystemVendorId, 'Subsystem Vendor ID', 0));
    c.setU16(PCI_SUBSYSTEM_ID, u16(options.subsystemId, 'Subsystem ID', 0));
    c.setU8(PCI_INTERRUPT_PIN, pin);

    // Command (§7.5.1.1.3). I/O and Memory Space Enable are RW only if a BAR of that
    // kind exists; PCIe hardwires Special Cycles, MWI, VGA snoop, IDSEL, fast B2B to 0.
    // A VF implements only Bus Master Enable (§9.3.4.1.3); VF MSE lives in the PF.
    const hasIo = this.bars.some((b) => b.kind === 'io');
    const hasMem = this.bars.some((b) => b.kind !== 'io') || options.romSize !== undefined;
    const command = virtualFunction
      ? PCI_COMMAND_MASTER
      : (hasIo ? PCI_COMMAND_IO : 0) | (hasMem ? PCI_COMMAND_MEMORY : 0) | PCI_COMMAND_MASTER | PCI_COMMAND_PARITY | PCI_COMMAND_SERR | (pin ? PCI_COMMAND_INTX_DISABLE : 0);
    c.setWritable(PCI_COMMAND, 2, command);
    // Status (§7.5.1.1.4; §9.3.4.1.4 for VFs): error bits RW1C, the rest RO.
    c.setWriteOneToClear(PCI_STATUS, 2, PCI_STATUS_RW1C);
    if (!virtualFunction) {
      // Cache Line Size is RW with no effect on PCIe (§7.5.1.1.7); RsvdP in VFs.
      c.setWritable(PCI_CACHE_LINE_SIZE, 1, 0xff);
      // Interrupt Line (§7.5.1.1.13) is a scratch register for software.
      c.setWritable(PCI_INTERRUPT_LINE, 1, 0xff);
    }
    for (const bar of this.bars) {
      const spec = options.bars?.find((b) => b.index === bar.index);
      installBar(c, PCI_BASE_ADDRESS_0 + 4 * bar.index, bar, bar.size, spec?.address);
    }
    if (options.romSize !== undefined) {
      const rom = options.romSize;
      if (virtualFunction || !Number.isInteger(rom) || rom < 2048 || rom > 2 ** 24 || (rom & (rom - 1)) !== 0) {
        throw new SrIovError('invalid-argument', `Expansion ROM size ${rom} is not a power of two in 2 KiB..16 MiB${virtualFunction ? ' (VFs have none, §9.3.4.1.12)' : ''}`, rom);
      }
      // Expansion ROM BAR (§7.5.1.2.4): Enable bit and address bits above the size.
      c.setWritable(PCI_ROM_ADDRESS, 4, (~(rom - 1) & 0xfffff800) | PCI_ROM_ADDRESS_ENABLE);
    }
    this.pm = options.powerManagement ? c.addCapability(powerManagementCapability, options.powerManagement, options.powerManagement.at) : undefined;
    if (options.msix) {
      const m = options.msix;
      this.msix = c.addCapability(msixCapability, m, m.at);
      if (!virtualFunction) {
        this.checkMsixBar(m.tableBar, m.tableOffset + this.msix.tableBytes);
        this.checkMsixBar(m.pbaBar, m.pbaOffset + this.msix.pbaBytes);
      }
    }
    const ex = options.express ?? {};
    this.express = c.addCapability(
      expressCapability,
      { ...ex, virtualFunction, onFlr: () => this.functionLevelReset() },
      ex.at,
    );
    options.extendedCapabilities?.(c);
    c.captureResetState();
  }

  /** The routing ID (bus << 8 | devfn). */
  get rid(): RoutingId {
    return this.ridValue;
  }

  /** `bb:dd.f` (with the domain when it is not 0). */
  get address(): string {
    return formatRid(this.ridValue, this.domain);
  }

  get vendorId(): number {
    return this.config.getU16(PCI_VENDOR_ID);
  }
  get deviceId(): number {
    return this.config.getU16(PCI_DEVICE_ID);
  }
  get classCode(): number {
    return this.config.getU32(PCI_REVISION_ID) >>> 8;
  }

  /** Configuration read as a requester does it (checked; typed errors). */
  configRead(offset: number, size: AccessSize): number {
    return this.config.read(offset, size);
  }

  /** Configuration write as a requester does it: masks, then side effects. */
  configWrite(offset: number, size: AccessSize, value: number): void {
    this.config.write(offset, size, value);
  }

  /** The BARs the function implements (for a VF, the PF's VF BARs). */
  implementedBars(): readonly Bar[] {
    return this.bars;
  }

  /** The address BAR `index` holds, bigint. */
  barAddress(index: number): bigint {
    return readBarAddress(this.config, PCI_BASE_ADDRESS_0 + 4 * index, this.bar(index));
  }

  /** The size BAR `index` decodes. */
  barSize(index: number): bigint {
    return this.bar(index).size;
  }

  /** As `barSize`, as a number (no allocation; exact below 2^53). */
  barSizeNumber(index: number): number {
    return Number(this.bar(index).size);
  }

  /** Whether the function decodes memory now (Command.MSE; for a VF, the PF's VF MSE). */
  get memoryEnabled(): boolean {
    return (this.config.getU16(PCI_COMMAND) & PCI_COMMAND_MEMORY) !== 0;
  }

  /** Whether the function may master memory writes (DMA, MSI-X), Command.BME (§7.5.1.1.3). */
  get busMasterEnabled(): boolean {
    return (this.config.getU16(PCI_COMMAND) & PCI_COMMAND_MASTER) !== 0;
  }

  /**
   * The memory BAR that claims `address` now, or -1 (memory decoding off, or
   * no BAR there). No allocation; the offset is `address - barAddressNumber(bar)`.
   */
  decodeMemory(address: number): number {
    if (!this.memoryEnabled) return -1;
    for (const bar of this.implementedBars()) {
      if (bar.kind === 'io') continue;
      const base = this.barAddressNumber(bar.index);
      if (base <= 0) continue;
      if (address >= base && address - base < this.barSizeNumber(bar.index)) return bar.index;
    }
    return -1;
  }

  /** BAR `index` address as a number (-1 above 2^53). */
  barAddressNumber(index: number): number {
    return readBarAddressNumber(this.config, PCI_BASE_ADDRESS_0 + 4 * index, this.bar(index));
  }

  /** Device logic behind the BARs, for what the MSI-X table and PBA do not claim. */
  setMmioHandler(handler: MmioHandler | undefined): void {
    this.mmio = handler;
  }

  /** A memory read at `offset` into BAR `bar`: the MSI-X table/PBA, else the handler, else 0. */
  mmioRead(bar: number, offset: number, size: AccessSize): number {
    this.checkMmio(bar, offset, size);
    const m = this.msix;
    if (m) {
      if (bar === m.tableBar && offset >= m.tableOffset && offset < m.tableOffset + m.tableBytes) return this.msixDword(offset - m.tableOffset, size, true);
      if (bar === m.pbaBar && offset >= m.pbaOffset && offset < m.pbaOffset + m.pbaBytes) return this.msixDword(offset - m.pbaOffset, size, false);
    }
    return this.mmio ? this.mmio.read(bar, offset, size) : 0;
  }

  /** A memory write at `offset` into BAR `bar`. */
  mmioWrite(bar: number, offset: number, size: AccessSize, value: number): void {
    this.checkMmio(bar, offset, size);
    const m = this.msix;
    if (m) {
      if (bar === m.tableBar && offset >= m.tableOffset && offset < m.tableOffset + m.tableBytes) {
        if (size !== 4) throw new SrIovError('invalid-size', `MSI-X table write of ${size} bytes: software must use DWORD accesses (PCI 3.0 §6.8.2)`, size);
        m.tableWrite(offset - m.tableOffset, value);
        return;
      }
      if (bar === m.pbaBar && offset >= m.pbaOffset && offset < m.pbaOffset + m.pbaBytes) return; // PBA is read-only
    }
    this.mmio?.write(bar, offset, size, value);
  }

  /** Function Level Reset (§6.6.2): the registers go back to their power-on values. */
  functionLevelReset(): void {
    this.config.reset();
  }

  protected bar(index: number): Bar {
    for (const bar of this.implementedBars()) if (bar.index === index) return bar;
    throw new SrIovError('invalid-argument', `BAR ${String(index)} is not implemented by ${this.address}`, index);
  }

  protected checkMsixBar(index: number, end: number): void {
    const bar = this.bar(index);
    if (bar.kind === 'io' || BigInt(end) > this.barSize(index)) {
      throw new SrIovError('invalid-argument', `the MSI-X table or PBA does not fit in memory BAR ${index} (needs ${hex(end)} bytes)`, end);
    }
  }

  private checkMmio(bar: number, offset: number, size: number): void {
    checkAccessSize(size);
    if (!Number.isInteger(offset) || offset < 0 || offset + size > this.barSizeNumber(bar) || offset & (size - 1)) {
      throw new SrIovError('out-of-range', `memory access of ${size} byte(s) at ${hex(offset)} is outside BAR ${bar} of ${this.address} or misaligned`, offset);
    }
  }

  private msixDword(rel: number, size: AccessSize, table: boolean): number {
    const m = this.msix!;
    const dword = table ? m.tableRead(rel & ~3) : m.pbaRead(rel & ~3);
    const shift = 8 * (rel & 3);
    return size === 4 ? dword : (dword >>> shift) & (size === 2 ? 0xffff : 0xff);
  }
}

function checkAccessSize(size: number): asserts size is AccessSize {
  checkAccess(0, size);
}
