import type { CapabilityType, ConfigSpace } from '../config-space.js';
import {
  PCI_CAP_ID_MSIX,
  PCI_COMMAND,
  PCI_COMMAND_MASTER,
  PCI_MSIX_ENTRY_CTRL_MASKBIT,
  PCI_MSIX_ENTRY_SIZE,
  PCI_MSIX_FLAGS,
  PCI_MSIX_FLAGS_ENABLE,
  PCI_MSIX_FLAGS_MASKALL,
  PCI_MSIX_MAX_VECTORS,
  PCI_MSIX_PBA,
  PCI_MSIX_SIZEOF,
  PCI_MSIX_TABLE,
} from '../defs.js';
import { SrIovError, hex } from '../errors.js';

export interface MsixParams {
  /** Number of table entries, 1..2048 (Table Size is N−1 encoded, §7.7.2.2). */
  readonly vectors: number;
  /** BAR (BIR) and QWORD-aligned offset of the MSI-X Table. */
  readonly tableBar: number;
  readonly tableOffset: number;
  /** BAR and QWORD-aligned offset of the Pending Bit Array. */
  readonly pbaBar: number;
  readonly pbaOffset: number;
}

/** Sends one MSI-X message: a DWORD memory write of `data` to `addressHi:addressLo`. */
export type MsixDeliver = (addressLo: number, addressHi: number, data: number, vector: number) => void;

/**
 * What `signal` did: `delivered` (the message was written), `pending` (masked:
 * the Pending Bit is set and the message goes out when unmasked), `disabled`
 * (MSI-X Enable is clear), `blocked` (Bus Master Enable is clear, so the
 * function may not write memory, §7.5.1.1.3).
 */
export type MsixSignal = 'delivered' | 'pending' | 'disabled' | 'blocked';

/**
 * An MSI-X capability and its table and PBA (PCI Local Bus 3.0 §6.8.2, PCIe
 * Base 6.0 §7.7.2). The table and PBA live in a BAR: the function routes
 * memory accesses in those ranges to `tableRead/tableWrite/pbaRead`.
 */
export class Msix {
  readonly tableBytes: number;
  readonly pbaBytes: number;
  private readonly table: Uint32Array;
  private readonly pba: Uint32Array;
  private deliverFn: MsixDeliver | undefined;

  constructor(
    private readonly space: ConfigSpace,
    readonly offset: number,
    readonly vectors: number,
    readonly tableBar: number,
    readonly tableOffset: number,
    readonly pbaBar: number,
    readonly pbaOffset: number,
  ) {
    this.tableBytes = vectors * PCI_MSIX_ENTRY_SIZE;
    this.pbaBytes = Math.ceil(vectors / 64) * 8;
    this.table = new Uint32Array(vectors * 4);
    this.pba = new Uint32Array(this.pbaBytes / 4);
    this.resetTable();
  }

  /** Where messages go; without one, `signal` still updates state and answers `delivered`. */
  setDeliver(fn: MsixDeliver | undefined): void {
    this.deliverFn = fn;
  }

  get enabled(): boolean {
    return (this.space.getU16(this.offset + PCI_MSIX_FLAGS) & PCI_MSIX_FLAGS_ENABLE) !== 0;
  }

  get functionMasked(): boolean {
    return (this.space.getU16(this.offset + PCI_MSIX_FLAGS) & PCI_MSIX_FLAGS_MASKALL) !== 0;
  }

  isMasked(vector: number): boolean {
    this.checkVector(vector);
    return (this.table[vector * 4 + 3]! & PCI_MSIX_ENTRY_CTRL_MASKBIT) !== 0;
  }

  isPending(vector: number): boolean {
    this.checkVector(vector);
    return ((this.pba[vector >>> 5]! >>> (vector & 31)) & 1) !== 0;
  }

  /** The device raises `vector` (§6.8.2.9: masked → pending, unmasked → message). No allocation. */
  signal(vector: number): MsixSignal {
    this.checkVector(vector);
    if (!this.enabled) return 'disabled';
    if (!(this.space.getU16(PCI_COMMAND) & PCI_COMMAND_MASTER)) return 'blocked';
    if (this.functionMasked || this.table[vector * 4 + 3]! & PCI_MSIX_ENTRY_CTRL_MASKBIT) {
      this.pba[vector >>> 5]! |= 1 << (vector & 31);
      return 'pending';
    }
    this.send(vector);
    return 'delivered';
  }

  /** A DWORD read of the table at `offset` within it (§6.8.2: DWORD or QWORD aligned accesses). */
  tableRead(offset: number): number {
    this.checkTableAccess(offset);
    return this.table[offset >>> 2]!;
  }

  /** A DWORD write to the table; clearing a Mask Bit sends a pending message (§6.8.2.9). */
  tableWrite(offset: number, value: number): void {
    this.checkTableAccess(offset);
    const word = offset >>> 2;
    switch (word & 3) {
      case 0: // Message Address: DWORD aligned, bits 1:0 read 0.
        this.table[word] = value & ~3;
        break;
      case 3: {
        // Vector Control: only the Mask Bit is defined; the rest is reserved (RO 0 here).
        this.table[word] = value & PCI_MSIX_ENTRY_CTRL_MASKBIT;
        const vector = word >>> 2;
        if (!(value & PCI_MSIX_ENTRY_CTRL_MASKBIT)) this.flush(vector, vector + 1);
        break;
      }
      default:
        this.table[word] = value >>> 0;
    }
  }

  /** A DWORD read of the Pending Bit Array (read-only, §6.8.2.10). */
  pbaRead(offset: number): number {
    if (!Number.isInteger(offset) || offset < 0 || offset + 4 > this.pbaBytes || offset & 3) {
      throw new SrIovError('out-of-range', `MSI-X PBA read at ${String(offset)}: outside the ${this.pbaBytes}-byte PBA or not DWORD aligned`, offset, this.pbaBytes);
    }
    return this.pba[offset >>> 2]!;
  }

  /** Power-on state of the table: every vector masked, nothing pending (§6.8.2.9). */
  resetTable(): void {
    this.table.fill(0);
    for (let v = 0; v < this.vectors; v++) this.table[v * 4 + 3] = PCI_MSIX_ENTRY_CTRL_MASKBIT;
    this.pba.fill(0);
  }

  /** Sends every pending, unmasked vector in [from, to) when the function may send. */
  flush(from = 0, to = this.vectors): void {
    if (!this.enabled || this.functionMasked) return;
    if (!(this.space.getU16(PCI_COMMAND) & PCI_COMMAND_MASTER)) return;
    for (let v = from; v < to; v++) {
      if ((this.pba[v >>> 5]! >>> (v & 31)) & 1 && !(this.table[v * 4 + 3]! & PCI_MSIX_ENTRY_CTRL_MASKBIT)) this.send(v);
    }
  }

  private send(vector: number): void {
    this.pba[vector >>> 5]! &= ~(1 << (vector & 31));
    const e = vector * 4;
    this.deliverFn?.(this.table[e]!, this.table[e + 1]!, this.table[e + 2]!, vector);
  }

  private checkVector(vector: number): void {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.vectors) {
      throw new SrIovError('invalid-argument', `MSI-X vector ${String(vector)} is not 0..${this.vectors - 1}`, vector, this.vectors);
    }
  }

  private checkTableAccess(offset: number): void {
    if (!Number.isInteger(offset) || offset < 0 || offset + 4 > this.tableBytes || offset & 3) {
      throw new SrIovError('out-of-range', `MSI-X table access at ${String(offset)}: outside the ${this.tableBytes}-byte table or not DWORD aligned`, offset, this.tableBytes);
    }
  }
}

/** The MSI-X capability (PCIe Base 6.0 §7.7.2). */
export const msixCapability: CapabilityType<MsixParams, Msix> = {
  id: PCI_CAP_ID_MSIX,
  name: 'MSI-X',
  size: () => PCI_MSIX_SIZEOF,
  init(space: ConfigSpace, offset: number, p: MsixParams): Msix {
    if (!Number.isInteger(p.vectors) || p.vectors < 1 || p.vectors > PCI_MSIX_MAX_VECTORS) {
      throw new SrIovError('invalid-argument', `MSI-X table size ${String(p.vectors)} is not 1..${PCI_MSIX_MAX_VECTORS}`, p.vectors, PCI_MSIX_MAX_VECTORS);
    }
    for (const [what, bar, off] of [['table', p.tableBar, p.tableOffset], ['PBA', p.pbaBar, p.pbaOffset]] as const) {
      if (!Number.isInteger(bar) || bar < 0 || bar > 5) throw new SrIovError('invalid-argument', `MSI-X ${what} BIR ${bar} is not 0..5`, bar);
      if (!Number.isInteger(off) || off < 0 || off > 0xfffffff8 || off & 7) throw new SrIovError('invalid-argument', `MSI-X ${what} offset ${hex(off)} is not QWORD aligned`, off);
    }
    const msix = new Msix(space, offset, p.vectors, p.tableBar, p.tableOffset, p.pbaBar, p.pbaOffset);
    if (p.tableBar === p.pbaBar) {
      const tEnd = p.tableOffset + msix.tableBytes;
      const pEnd = p.pbaOffset + msix.pbaBytes;
      if (p.tableOffset < pEnd && p.pbaOffset < tEnd) throw new SrIovError('invalid-argument', `MSI-X table and PBA overlap in BAR ${p.tableBar}`, p.pbaOffset);
    }
    // Message Control (§7.7.2.2): Table Size RO, Function Mask and MSI-X Enable RW.
    space.setU16(offset + PCI_MSIX_FLAGS, p.vectors - 1);
    space.setWritable(offset + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_MASKALL | PCI_MSIX_FLAGS_ENABLE);
    // Table Offset/BIR and PBA Offset/BIR (§7.7.2.3, §7.7.2.4): RO.
    space.setU32(offset + PCI_MSIX_TABLE, p.tableOffset | p.tableBar);
    space.setU32(offset + PCI_MSIX_PBA, p.pbaOffset | p.pbaBar);
    // Unmasking the function (or enabling MSI-X) sends what is pending and unmasked.
    space.onWrite(offset, 4, () => msix.flush());
    space.onReset(() => msix.resetTable());
    return msix;
  },
};
