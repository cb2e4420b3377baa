import { type DmaMemory, GuestMemoryError } from '@ioplane/guest-memory';
import type { DescriptorChain } from './chain.js';
import { DESC_SIZE, MAX_QUEUE_SIZE } from './defs.js';
import { VirtqueueError } from './errors.js';
import { type TranslatingDma, isTranslatingDma } from './translating.js';

const TWO_32 = 0x1_0000_0000;
const MAX_HI_53 = 0x1f_ffff;
const MAX_CHAIN_BYTES = 0xffff_ffff;

/**
 * The checks every descriptor of a chain goes through, whichever the ring
 * format (VirtIO 1.2 §2.7.5, §2.7.4.2, §2.8.17): the address fits, the
 * buffer is in guest memory in the direction it is used, readable segments
 * come first, and the chain's total stays below 2^32 bytes.
 */
function addressTooLarge(head: number, desc: number, lo: number, hi: number): VirtqueueError {
  const value = (BigInt(hi) << 32n) | BigInt(lo);
  return new VirtqueueError('address-too-large', `descriptor ${desc} of chain ${head}: address 0x${value.toString(16)} is outside guest memory`, { head, desc, value });
}

export class SegmentChecker {
  private scratch = new Uint8Array(DESC_SIZE * 64);
  private readonly views = new WeakMap<ArrayBufferLike, DataView>();
  /** After `indirectTable()`: the view holding the table, and the table's offset in it. */
  tableView: DataView = new DataView(new ArrayBuffer(0));
  tableBase = 0;

  /** The queue's memory when it can translate a range once (see `TranslatingDma`). */
  readonly via: TranslatingDma | undefined;
  /** After `single` / `check`: the range's translation (-1: none) and the generation it was made under. */
  gpa = -1;
  gen = 0;

  constructor(private readonly mem: DmaMemory) {
    this.via = isTranslatingDma(mem) ? mem : undefined;
  }

  /**
   * `checkRange` of the buffer, or — behind a translating memory — its one
   * translation, kept in `gpa` / `gen` for the chain to carry. Throws what
   * `checkRange` throws (and, like it, records no fault).
   */
  private check(addr: number, len: number, access: 'read' | 'write'): void {
    const via = this.via;
    this.gpa = -1;
    if (via === undefined) {
      this.mem.checkRange(addr, len, access);
      return;
    }
    // Read before translating: a translation is good under the generation it began in.
    const gen = via.translationGeneration;
    this.gpa = via.translateRange(addr, len, access);
    this.gen = gen;
  }

  /**
   * A chain of one descriptor: its address if the checks of `push` that can
   * apply to it pass, else -1 (the caller then takes the general path, which
   * throws the error). Never throws.
   */
  single(lo: number, hi: number, len: number, writable: boolean): number {
    if (hi > MAX_HI_53) return -1;
    const addr = hi * TWO_32 + lo;
    try {
      this.check(addr, len, writable ? 'write' : 'read');
    } catch (e) {
      // An IOMMU translation fault does not break the ring (see `inMemory`).
      if (!(e instanceof GuestMemoryError && e.kind === 'fault' && 'fault' in e)) return -1;
    }
    return addr;
  }

  push(chain: DescriptorChain, lo: number, hi: number, len: number, writable: boolean, desc: number): void {
    const head = chain.head;
    if (hi > MAX_HI_53) throw addressTooLarge(head, desc, lo, hi);
    const addr = hi * TWO_32 + lo;
    if (!writable && chain.writableBytes > 0) {
      throw new VirtqueueError('readable-after-writable', `descriptor ${desc} of chain ${head}: a device-readable buffer follows a device-writable one (VirtIO 1.2 §2.7.4.2)`, { head, desc });
    }
    this.inMemory(head, desc, addr, len, writable);
    if (chain.readableBytes + chain.writableBytes + len > MAX_CHAIN_BYTES) {
      throw new VirtqueueError('chain-too-large', `chain ${head} is longer than 2^32 bytes in total (VirtIO 1.2 §2.7.5.1)`, { head, desc });
    }
    chain.via = this.via;
    chain.push(addr, len, writable, this.gpa, this.gen);
  }

  private inMemory(head: number, desc: number, addr: number, len: number, writable: boolean): void {
    try {
      this.check(addr, len, writable ? 'write' : 'read');
    } catch (e) {
      // Behind an IOMMU the address is an IOVA: one the IOMMU refuses (a translation
      // fault, kind 'fault' with its `fault` record, as @ioplane/viommu's DmaFault)
      // fails that request's DMA — the device answers it with its own I/O error and
      // the IOMMU records the fault when the device touches the buffer; the ring is
      // not broken. Anything else (outside RAM, read-only RAM) still is.
      if (e instanceof GuestMemoryError && !(e.kind === 'fault' && 'fault' in e)) {
        throw new VirtqueueError('buffer-out-of-memory', `descriptor ${desc} of chain ${head}: ${len} byte(s) at 0x${addr.toString(16)} are not ${writable ? 'writable' : 'readable'} guest memory (${e.kind})`, { head, desc, value: addr, cause: e });
      }
      if (!(e instanceof GuestMemoryError)) throw e;
    }
  }

  /**
   * The bytes of an indirect table, checked: a non-zero multiple of 16 long,
   * at most 32768 entries, wholly in readable guest memory. A table that
   * spans two regions is copied into a scratch buffer reused across calls.
   */
  indirectTable(head: number, desc: number, lo: number, hi: number, len: number): void {
    if (len === 0 || len % DESC_SIZE !== 0) {
      throw new VirtqueueError('indirect-table-length', `descriptor ${desc} of chain ${head}: indirect table length ${len} is not a non-zero multiple of 16 (VirtIO 1.2 §2.7.5.3)`, { head, desc, value: len });
    }
    if (len / DESC_SIZE > MAX_QUEUE_SIZE) {
      throw new VirtqueueError('indirect-table-length', `descriptor ${desc} of chain ${head}: indirect table of ${len / DESC_SIZE} entries is larger than any queue`, { head, desc, value: len });
    }
    if (hi > MAX_HI_53) {
      const value = (BigInt(hi) << 32n) | BigInt(lo);
      throw new VirtqueueError('address-too-large', `descriptor ${desc} of chain ${head}: indirect table address 0x${value.toString(16)} is outside guest memory`, { head, desc, value });
    }
    const addr = hi * TWO_32 + lo;
    try {
      // Behind a translating memory, the table's one translation (a table that faults, or is not
      // one run, takes the translating path below, which records the fault as before).
      const g = this.via === undefined ? -1 : this.tableGpa(addr, len);
      const view = g >= 0 ? this.via!.physical.tryView(g, len, 'read') : this.mem.tryView(addr, len, 'read');
      if (view !== undefined) {
        this.tableView = this.viewOf(view.buffer);
        this.tableBase = view.byteOffset;
        return;
      }
      if (this.scratch.byteLength < len) this.scratch = new Uint8Array(Math.max(len, this.scratch.byteLength * 2));
      this.mem.readInto(addr, this.scratch.subarray(0, len));
      this.tableView = this.viewOf(this.scratch.buffer);
      this.tableBase = 0;
    } catch (e) {
      if (e instanceof GuestMemoryError) {
        throw new VirtqueueError('buffer-out-of-memory', `descriptor ${desc} of chain ${head}: indirect table (${len} bytes at 0x${addr.toString(16)}) is not in guest memory (${e.kind})`, { head, desc, value: addr, cause: e });
      }
      throw e;
    }
  }

  /** The indirect table's guest-physical address through `via`, or -1 (fault, several runs): never throws. */
  private tableGpa(addr: number, len: number): number {
    try {
      return this.via!.translateRange(addr, len, 'read');
    } catch {
      return -1;
    }
  }

  private viewOf(buffer: ArrayBufferLike): DataView {
    let dv = this.views.get(buffer);
    if (dv === undefined) {
      dv = new DataView(buffer);
      this.views.set(buffer, dv);
    }
    return dv;
  }
}
