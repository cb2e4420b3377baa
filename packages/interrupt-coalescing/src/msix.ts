import { CoalescingError, checkInt } from './errors.js';

/**
 * MSI-X, as PCI Local Bus 3.0 §6.8.2 and PCI Express Base §7.7.2 lay it out.
 *
 * Capability structure in configuration space (12 bytes):
 *   +0  Capability ID (0x11), +1 Next Pointer,
 *   +2  Message Control: bits 10:0 Table Size (N−1, read-only), bit 14 Function Mask, bit 15 MSI-X Enable,
 *   +4  Table Offset/Table BIR: bits 2:0 BIR, bits 31:3 QWORD-aligned offset into that BAR,
 *   +8  PBA Offset/PBA BIR: the same for the Pending Bit Array.
 * Table entry i at table offset 16·i: +0 Message Address (bits 1:0 zero), +4 Message Upper Address,
 *   +8 Message Data, +12 Vector Control (bit 0 Mask Bit, set at reset; bits 31:1 reserved).
 * PBA: ⌈N/64⌉ QWORDs, pending bit for vector i at bit i%64 of QWORD i/64; read-only.
 */
export const PCI_CAP_ID_MSIX = 0x11;
export const MSIX_CAP_SIZE = 12;
export const MSIX_ENTRY_SIZE = 16;
export const MSIX_ENTRY_ADDR_LO = 0;
export const MSIX_ENTRY_ADDR_HI = 4;
export const MSIX_ENTRY_DATA = 8;
export const MSIX_ENTRY_VECTOR_CTRL = 12;
export const MSIX_VECTOR_CTRL_MASK = 0x1;
export const MSIX_CTRL_TABLE_SIZE_MASK = 0x07ff;
export const MSIX_CTRL_FUNCTION_MASK = 0x4000;
export const MSIX_CTRL_ENABLE = 0x8000;
/** Maximum table size: the 11-bit field holds N−1. */
export const MSIX_MAX_VECTORS = 2048;
/** VirtIO's "no vector" (VirtIO 1.2 §4.1.4.3: VIRTIO_MSI_NO_VECTOR). */
export const NO_VECTOR = 0xffff;

export interface MsixOptions {
  /** Number of vectors, 1..2048. */
  vectors: number;
  /** BAR holding the table (0..5). Default 1, as QEMU's virtio-pci. */
  tableBir?: number;
  /** Offset of the table in its BAR, 8-aligned. Default 0. */
  tableOffset?: number;
  /** BAR holding the PBA (0..5). Default = tableBir. */
  pbaBir?: number;
  /** Offset of the PBA in its BAR, 8-aligned. Default: the table's end rounded up to 2 KiB (0x800 for ≤ 128 vectors, QEMU's layout). */
  pbaOffset?: number;
  /**
   * Sends an MSI-X message: a DWORD write of `data` to the 64-bit address
   * `addressHi:addressLo`. The hypervisor turns it into a guest interrupt.
   */
  send: (vector: number, addressLo: number, addressHi: number, data: number) => void;
}

/**
 * What became of a signalled vector: `Sent`; `Pending` (masked, per vector or
 * function: the pending bit is set and the message goes on unmask);
 * `Disabled` (MSI-X Enable is clear: no message may be sent, the function
 * uses INTx; see `onIntx`).
 */
export const MsixSignal = Object.freeze({ Sent: 0, Pending: 1, Disabled: 2 } as const);
export type MsixSignal = (typeof MsixSignal)[keyof typeof MsixSignal];

/**
 * An MSI-X table and PBA with PCI semantics: a vector signalled while masked
 * (its Mask Bit or the Function Mask) sets its pending bit instead, and the
 * message is sent once, with the entry's address/data at that time, when the
 * vector becomes unmasked; several signals while masked still make one
 * message. `tableBytes`/`pbaBytes` hold the exact byte layout for a PCI model
 * to map into its BAR; guest accesses go through `read`/`write` so that side
 * effects happen.
 */
export class MsixTable {
  readonly vectors: number;
  readonly tableBir: number;
  readonly tableOffset: number;
  readonly pbaBir: number;
  readonly pbaOffset: number;
  /** The table, 16 bytes per entry, little-endian as on the bus. */
  readonly tableBytes: Uint8Array;
  /** The PBA, ⌈N/64⌉·8 bytes. */
  readonly pbaBytes: Uint8Array;
  private readonly table: DataView;
  private readonly pba: DataView;
  private control = 0;
  private readonly send: MsixOptions['send'];
  /** Called when a vector is signalled while MSI-X is disabled (a PCI model raises INTx there). */
  onIntx: ((vector: number) => void) | undefined;
  /** Messages sent, and guest accesses ignored as outside the table/PBA. */
  sent = 0;
  ignoredAccesses = 0;

  constructor(options: MsixOptions) {
    this.vectors = checkInt('vectors', options.vectors, 1, MSIX_MAX_VECTORS);
    this.tableBir = checkInt('tableBir', options.tableBir ?? 1, 0, 5);
    this.tableOffset = checkInt('tableOffset', options.tableOffset ?? 0, 0, 0xffff_fff8);
    this.pbaBir = checkInt('pbaBir', options.pbaBir ?? this.tableBir, 0, 5);
    const tableLen = this.vectors * MSIX_ENTRY_SIZE;
    const pbaLen = Math.ceil(this.vectors / 64) * 8;
    const defaultPba = this.pbaBir === this.tableBir ? Math.ceil((this.tableOffset + tableLen) / 0x800) * 0x800 : 0;
    this.pbaOffset = checkInt('pbaOffset', options.pbaOffset ?? defaultPba, 0, 0xffff_fff8);
    if (this.tableOffset % 8 !== 0) throw new CoalescingError('invalid-config', 'tableOffset must be QWORD (8) aligned: its low 3 bits hold the BIR', 'tableOffset', this.tableOffset);
    if (this.pbaOffset % 8 !== 0) throw new CoalescingError('invalid-config', 'pbaOffset must be QWORD (8) aligned: its low 3 bits hold the BIR', 'pbaOffset', this.pbaOffset);
    if (
      this.pbaBir === this.tableBir &&
      this.pbaOffset < this.tableOffset + tableLen &&
      this.tableOffset < this.pbaOffset + pbaLen
    ) {
      throw new CoalescingError('invalid-config', 'the MSI-X table and PBA overlap in the same BAR', 'pbaOffset', this.pbaOffset);
    }
    if (typeof options.send !== 'function') throw new CoalescingError('invalid-config', 'send must be a function', 'send', options.send);
    this.send = options.send;
    this.tableBytes = new Uint8Array(tableLen);
    this.pbaBytes = new Uint8Array(pbaLen);
    this.table = new DataView(this.tableBytes.buffer);
    this.pba = new DataView(this.pbaBytes.buffer);
    this.reset();
  }

  /** Function reset: every vector masked, address/data zero, nothing pending, MSI-X disabled. */
  reset(): void {
    this.tableBytes.fill(0);
    this.pbaBytes.fill(0);
    for (let v = 0; v < this.vectors; v++) this.table.setUint32(v * MSIX_ENTRY_SIZE + MSIX_ENTRY_VECTOR_CTRL, MSIX_VECTOR_CTRL_MASK, true);
    this.control = 0;
  }

  // ---- Capability structure ------------------------------------------------

  /** Message Control as the guest reads it. */
  get messageControl(): number {
    return (this.control & (MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK)) | ((this.vectors - 1) & MSIX_CTRL_TABLE_SIZE_MASK);
  }

  get enabled(): boolean {
    return (this.control & MSIX_CTRL_ENABLE) !== 0;
  }

  get functionMasked(): boolean {
    return (this.control & MSIX_CTRL_FUNCTION_MASK) !== 0;
  }

  /** A guest write of Message Control: only Enable and Function Mask are writable. Unmasking sends pending messages. */
  writeMessageControl(value: number): void {
    this.control = value & (MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK);
    this.deliverPending();
  }

  /** Writes the 12-byte capability at `offset` of a config-space view, pointing to `next`. */
  writeCapability(config: DataView, offset: number, next: number): void {
    checkInt('next', next, 0, 0xff);
    config.setUint8(offset, PCI_CAP_ID_MSIX);
    config.setUint8(offset + 1, next);
    config.setUint16(offset + 2, this.messageControl, true);
    config.setUint32(offset + 4, (this.tableOffset | this.tableBir) >>> 0, true);
    config.setUint32(offset + 8, (this.pbaOffset | this.pbaBir) >>> 0, true);
  }

  // ---- Device side ---------------------------------------------------------

  isMasked(vector: number): boolean {
    this.checkVector(vector);
    return this.functionMasked || (this.table.getUint32(vector * MSIX_ENTRY_SIZE + MSIX_ENTRY_VECTOR_CTRL, true) & MSIX_VECTOR_CTRL_MASK) !== 0;
  }

  isPending(vector: number): boolean {
    this.checkVector(vector);
    return (this.pbaBytes[vector >>> 3]! & (1 << (vector & 7))) !== 0;
  }

  /** The device raises `vector`. */
  signal(vector: number): MsixSignal {
    this.checkVector(vector);
    if (!this.enabled) {
      this.onIntx?.(vector);
      return MsixSignal.Disabled;
    }
    if (this.isMasked(vector)) {
      this.pbaBytes[vector >>> 3]! |= 1 << (vector & 7);
      return MsixSignal.Pending;
    }
    this.fire(vector);
    return MsixSignal.Sent;
  }

  private fire(vector: number): void {
    const e = vector * MSIX_ENTRY_SIZE;
    this.sent++;
    this.send(vector, this.table.getUint32(e + MSIX_ENTRY_ADDR_LO, true), this.table.getUint32(e + MSIX_ENTRY_ADDR_HI, true), this.table.getUint32(e + MSIX_ENTRY_DATA, true));
  }

  /** Sends every pending vector that is no longer masked, clearing its pending bit first. */
  private deliverPending(): void {
    if (!this.enabled || this.functionMasked) return;
    for (let byte = 0; byte < this.pbaBytes.length; byte++) {
      if (this.pbaBytes[byte] === 0) continue;
      for (let bit = 0; bit < 8; bit++) {
        const v = byte * 8 + bit;
        if (v >= this.vectors || (this.pbaBytes[byte]! & (1 << bit)) === 0) continue;
        if ((this.table.getUint32(v * MSIX_ENTRY_SIZE + MSIX_ENTRY_VECTOR_CTRL, true) & MSIX_VECTOR_CTRL_MASK) !== 0) continue;
        this.pbaBytes[byte]! &= ~(1 << bit);
        this.fire(v);
      }
    }
  }

  private checkVector(vector: number): void {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.vectors) {
      throw new CoalescingError('invalid-vector', `MSI-X vector ${vector} is not in [0, ${this.vectors})`, 'vector', vector);
    }
  }

  // ---- Guest (MMIO) side ---------------------------------------------------

  /**
   * A guest read of `size` bytes at `offset` into the table or the PBA region.
   * PCI requires aligned DWORD or QWORD accesses and leaves others undefined;
   * this model answers any size 1, 2 or 4 byte by byte, little-endian. Reads
   * outside the region return 0 and are counted in `ignoredAccesses`.
   */
  read(region: 'table' | 'pba', offset: number, size: 1 | 2 | 4): number {
    const bytes = region === 'table' ? this.tableBytes : this.pbaBytes;
    if (!this.inRange(bytes, offset, size)) return 0;
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + bytes[offset + i]!;
    return v;
  }

  /**
   * A guest write. Table writes keep bits 1:0 of Message Address and bits 31:1
   * of Vector Control at 0 (read-only here); clearing a Mask Bit sends that
   * vector's pending message. PBA writes are ignored ("software should never
   * write ... Pending Bits"), as are writes outside the regions.
   */
  write(region: 'table' | 'pba', offset: number, size: 1 | 2 | 4, value: number): void {
    if (region === 'pba') {
      this.ignoredAccesses++;
      return;
    }
    if (!this.inRange(this.tableBytes, offset, size)) return;
    let v = value >>> 0;
    for (let i = 0; i < size; i++) {
      const at = offset + i;
      let b = v & 0xff;
      v >>>= 8;
      const field = at % MSIX_ENTRY_SIZE;
      if (field === MSIX_ENTRY_ADDR_LO) b &= 0xfc;
      else if (field === MSIX_ENTRY_VECTOR_CTRL) b &= MSIX_VECTOR_CTRL_MASK;
      else if (field > MSIX_ENTRY_VECTOR_CTRL) b = 0;
      this.tableBytes[at] = b;
    }
    this.deliverPending();
  }

  /** A 64-bit guest access (two DWORDs, low first, as a QWORD transaction on the bus). */
  read64(region: 'table' | 'pba', offset: number): bigint {
    return (BigInt(this.read(region, offset + 4, 4)) << 32n) | BigInt(this.read(region, offset, 4));
  }

  write64(region: 'table' | 'pba', offset: number, value: bigint): void {
    this.write(region, offset, 4, Number(value & 0xffff_ffffn));
    this.write(region, offset + 4, 4, Number((value >> 32n) & 0xffff_ffffn));
  }

  private inRange(bytes: Uint8Array, offset: number, size: number): boolean {
    if (!Number.isInteger(offset) || offset < 0 || offset + size > bytes.length || (size !== 1 && size !== 2 && size !== 4)) {
      this.ignoredAccesses++;
      return false;
    }
    return true;
  }

  /** Test/PCI-model convenience: program entry `vector` as a guest driver would. */
  program(vector: number, addressLo: number, addressHi: number, data: number, masked = false): void {
    this.checkVector(vector);
    const e = vector * MSIX_ENTRY_SIZE;
    this.write('table', e + MSIX_ENTRY_ADDR_LO, 4, addressLo);
    this.write('table', e + MSIX_ENTRY_ADDR_HI, 4, addressHi);
    this.write('table', e + MSIX_ENTRY_DATA, 4, data);
    this.write('table', e + MSIX_ENTRY_VECTOR_CTRL, 4, masked ? 1 : 0);
  }
}

/**
 * Queue → vector mapping, as virtio-pci's `queue_msix_vector` (VirtIO 1.2
 * §4.1.4.3, §4.1.5.1.2 "MSI-X Vector Configuration"): writing a vector the
 * device cannot map leaves NO_VECTOR, which the driver reads back as the
 * failure. Reset maps every queue to NO_VECTOR.
 */
export class QueueVectors {
  private readonly map: Uint16Array;
  /** Queues mapped to each vector, so `shares` is O(1) on the interrupt path. */
  private readonly users: Uint32Array;
  /** The configuration-change vector (`config_msix_vector`). */
  config = NO_VECTOR;
  constructor(
    readonly queues: number,
    readonly tableSize: number,
  ) {
    checkInt('queues', queues, 1, 65536);
    checkInt('tableSize', tableSize, 1, MSIX_MAX_VECTORS);
    this.map = new Uint16Array(queues).fill(NO_VECTOR);
    this.users = new Uint32Array(tableSize);
  }
  /** Maps `queue` to `vector`; returns what the driver reads back: `vector`, or NO_VECTOR if it is out of the table. */
  set(queue: number, vector: number): number {
    this.checkQueue(queue);
    const v = Number.isInteger(vector) && vector >= 0 && vector < this.tableSize ? vector : NO_VECTOR;
    const old = this.map[queue]!;
    if (old !== NO_VECTOR) this.users[old]!--;
    if (v !== NO_VECTOR) this.users[v]!++;
    this.map[queue] = v;
    return v;
  }
  setConfig(vector: number): number {
    this.config = Number.isInteger(vector) && vector >= 0 && vector < this.tableSize ? vector : NO_VECTOR;
    return this.config;
  }
  get(queue: number): number {
    return this.map[queue]!;
  }
  /** Whether any other queue maps to the same vector as `queue`. */
  shares(queue: number): boolean {
    const v = this.map[queue]!;
    return v !== NO_VECTOR && this.users[v]! > 1;
  }
  reset(): void {
    this.map.fill(NO_VECTOR);
    this.users.fill(0);
    this.config = NO_VECTOR;
  }
  private checkQueue(queue: number): void {
    if (!Number.isInteger(queue) || queue < 0 || queue >= this.queues) {
      throw new CoalescingError('invalid-queue', `queue ${queue} is not in [0, ${this.queues})`, 'queue', queue);
    }
  }
}
