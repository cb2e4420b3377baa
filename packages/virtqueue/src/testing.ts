/**
 * A test kit that plays a hostile or careless driver (STYLE.md 8): raw
 * writers for every field of both ring formats, so tests can build chains
 * the real drivers never would. Not for production use.
 */
import { GuestMemory } from '@ioplane/guest-memory';
import {
  AVAIL_FLAGS,
  AVAIL_IDX,
  AVAIL_RING,
  DESC_SIZE,
  USED_ELEM_SIZE,
  USED_FLAGS,
  USED_IDX,
  USED_RING,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_USED,
  availUsedEventOffset,
  usedAvailEventOffset,
} from './defs.js';
import type { QueueConfig } from './layout.js';

const TWO_32 = 0x1_0000_0000;

export function writeDescriptor(mem: GuestMemory, at: number, addr: number | bigint, len: number, flags: number, last: number): void {
  const a = BigInt(addr);
  mem.writeU32(at, Number(a & 0xffffffffn));
  mem.writeU32(at + 4, Number((a >> 32n) & 0xffffffffn));
  mem.writeU32(at + 8, len);
  // split: flags then next; packed: id then flags — callers pass them in layout order.
  mem.writeU16(at + 12, flags);
  mem.writeU16(at + 14, last);
}

/** Raw access to a split ring in guest memory (VirtIO 1.2 §2.7). */
export class RawSplitRing {
  constructor(
    readonly mem: GuestMemory,
    readonly config: QueueConfig,
  ) {}

  /** Writes descriptor `i` of the table (le64 addr, le32 len, le16 flags, le16 next). */
  desc(i: number, addr: number | bigint, len: number, flags = 0, next = 0): this {
    writeDescriptor(this.mem, this.config.descAddr + i * DESC_SIZE, addr, len, flags, next);
    return this;
  }

  /** Writes entry `i` of an indirect table at `table`. */
  tableDesc(table: number, i: number, addr: number | bigint, len: number, flags = 0, next = 0): this {
    writeDescriptor(this.mem, table + i * DESC_SIZE, addr, len, flags, next);
    return this;
  }

  get availIdx(): number {
    return this.mem.readU16(this.config.driverAddr + AVAIL_IDX);
  }

  set availIdx(v: number) {
    this.mem.writeU16(this.config.driverAddr + AVAIL_IDX, v & 0xffff);
  }

  /** Puts `head` in the available ring at the current idx and bumps idx. */
  pushAvail(head: number): this {
    const idx = this.availIdx;
    this.mem.writeU16(this.config.driverAddr + AVAIL_RING + 2 * (idx % this.config.size), head);
    this.availIdx = idx + 1;
    return this;
  }

  set availFlags(v: number) {
    this.mem.writeU16(this.config.driverAddr + AVAIL_FLAGS, v);
  }

  set usedEvent(v: number) {
    this.mem.writeU16(this.config.driverAddr + availUsedEventOffset(this.config.size), v);
  }

  get usedIdx(): number {
    return this.mem.readU16(this.config.deviceAddr + USED_IDX);
  }

  get usedFlags(): number {
    return this.mem.readU16(this.config.deviceAddr + USED_FLAGS);
  }

  get availEvent(): number {
    return this.mem.readU16(this.config.deviceAddr + usedAvailEventOffset(this.config.size));
  }

  usedElem(i: number): { id: number; len: number } {
    const at = this.config.deviceAddr + USED_RING + (i % this.config.size) * USED_ELEM_SIZE;
    return { id: this.mem.readU32(at), len: this.mem.readU32(at + 4) };
  }
}

/** Raw access to a packed ring in guest memory (VirtIO 1.2 §2.8). */
export class RawPackedRing {
  constructor(
    readonly mem: GuestMemory,
    readonly config: QueueConfig,
  ) {}

  /** Writes descriptor `i` (le64 addr, le32 len, le16 id, le16 flags), flags as given. */
  desc(i: number, addr: number | bigint, len: number, id: number, flags: number): this {
    writeDescriptor(this.mem, this.config.descAddr + i * DESC_SIZE, addr, len, id, flags);
    return this;
  }

  /** Flags that make a descriptor available in lap `wrap` (AVAIL = wrap, USED = !wrap). */
  static availBits(wrap: number): number {
    return wrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
  }

  /** Writes entry `i` of a packed indirect table at `table`. */
  tableDesc(table: number, i: number, addr: number | bigint, len: number, flags: number): this {
    writeDescriptor(this.mem, table + i * DESC_SIZE, addr, len, 0, flags);
    return this;
  }

  read(i: number): { addr: bigint; len: number; id: number; flags: number } {
    const at = this.config.descAddr + i * DESC_SIZE;
    return { addr: this.mem.readU64(at), len: this.mem.readU32(at + 8), id: this.mem.readU16(at + 12), flags: this.mem.readU16(at + 14) };
  }

  driverEvent(offWrap: number, flags: number): this {
    this.mem.writeU16(this.config.driverAddr, offWrap);
    this.mem.writeU16(this.config.driverAddr + 2, flags);
    return this;
  }

  deviceEvent(): { offWrap: number; flags: number } {
    return { offWrap: this.mem.readU16(this.config.deviceAddr), flags: this.mem.readU16(this.config.deviceAddr + 2) };
  }
}

/** Guest memory for tests: one shared region of `size` bytes at `base`. */
export function testMemory(size = 1 << 20, base = 0): GuestMemory {
  return new GuestMemory([{ gpa: base, size }]);
}

export { TWO_32 };
