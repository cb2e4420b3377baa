import type { AtomicMemory, DmaMemory } from './dma.js';
import { type Access, GuestMemoryError, hex, outOfBounds } from './errors.js';
import { MAX_GUEST_ADDRESS, Region, type RegionSpec } from './region.js';

const TWO_32 = 0x1_0000_0000;
/** The high word of a u64 whose value still fits in 53 bits. */
const MAX_HI_53 = 0x1f_ffff;
/** Entries in the cache of views `slices` hands out (a power of two). */
const VIEW_CACHE = 256;

/**
 * The view-cache entry of (addr, len): the 512-byte block number's low 32 bits
 * (ToUint32 keeps them below 2^53) folded into 8 bits by XOR, then XORed with
 * the length's. For one length, 256 buffers at any power-of-two stride of 512
 * bytes or more from an aligned start take distinct entries; a multiplicative
 * hash put 32 buffers 4 KiB apart in 29 entries, 68 KiB apart in 21.
 */
export function viewSlot(addr: number, len: number): number {
  const p = (addr / 512) >>> 0;
  const l = len >>> 9;
  return (p ^ (p >>> 8) ^ (p >>> 16) ^ (p >>> 24) ^ l ^ (l >>> 8)) & (VIEW_CACHE - 1);
}

/**
 * Guest physical memory: a sorted set of non-overlapping regions. Holes
 * between regions are not memory; an access that touches one fails whole.
 *
 * Addresses and lengths are checked before anything is read or written, so a
 * failed access has no effect. Range ends are compared as `len <= end - addr`,
 * never as `addr + len <= end`: a region may end at 2^53, and there the sum
 * can round down (2^53 - 1 + 2 is 2^53 in doubles) and let a range one byte
 * past the top through. The difference of two safe integers is exact.
 */
export class GuestMemory implements DmaMemory, AtomicMemory {
  readonly regions: readonly Region[];
  private last: Region;
  private readonly scratch = new DataView(new ArrayBuffer(8));
  private readonly scratchBytes = new Uint8Array(this.scratch.buffer);
  /**
   * The views `slices` and `tryView` made last, direct-mapped by (address, length): a device
   * that reads into the same guest buffers again (a guest's I/O buffers and
   * page cache pages come round again) gets the same view back instead of a
   * new one per request. Views are windows on regions that never change, so
   * one stays right for as long as the memory lives.
   */
  private readonly viewAddr = new Float64Array(VIEW_CACHE).fill(-1);
  private readonly viewLen = new Uint32Array(VIEW_CACHE);
  private readonly views: (Uint8Array | undefined)[] = new Array<Uint8Array | undefined>(VIEW_CACHE).fill(undefined);

  constructor(specs: readonly RegionSpec[]) {
    if (specs.length === 0) {
      throw new GuestMemoryError('invalid-region', 0, 0, 'guest memory needs at least one region');
    }
    const regions = specs.map((s) => new Region(s)).sort((a, b) => a.gpa - b.gpa);
    for (let i = 1; i < regions.length; i++) {
      const prev = regions[i - 1]!;
      const cur = regions[i]!;
      if (cur.gpa < prev.end) {
        throw new GuestMemoryError('invalid-region', cur.gpa, cur.size, `region at ${hex(cur.gpa)} overlaps the region at ${hex(prev.gpa)}`);
      }
    }
    this.regions = regions;
    this.last = regions[0]!;
  }

  /** One region of `size` bytes at guest-physical 0, over a new SharedArrayBuffer. */
  static create(size: number): GuestMemory {
    return new GuestMemory([{ gpa: 0, size }]);
  }

  /** The total number of bytes of memory (holes excluded). */
  get size(): number {
    let n = 0;
    for (const r of this.regions) n += r.size;
    return n;
  }

  /** The region holding `addr`, or undefined in a hole. */
  findRegion(addr: number): Region | undefined {
    const last = this.last;
    if (addr >= last.gpa && addr < last.end) return last;
    const rs = this.regions;
    let lo = 0;
    let hi = rs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = rs[mid]!;
      if (addr < r.gpa) hi = mid - 1;
      else if (addr >= r.end) lo = mid + 1;
      else {
        this.last = r;
        return r;
      }
    }
    return undefined;
  }

  checkRange(addr: number, len: number, access: Access): void {
    // Fast path, every buffer of every descriptor comes here: wholly inside
    // the region last found. Inside a region an integer address is safe.
    const last = this.last;
    if (addr >= last.gpa && len > 0 && len <= last.end - addr && Number.isInteger(addr) && Number.isInteger(len) && (access === 'read' || (access === 'write' && !last.readonly))) return;
    validate(addr, len, access);
    if (len === 0) return;
    let a = addr;
    const end = addr + len;
    while (a < end) {
      const r = this.findRegion(a);
      if (r === undefined) throw outOfBounds(addr, len, access);
      if (access === 'write' && r.readonly) throw readOnly(addr, len);
      a = r.end;
    }
  }

  /** The region wholly containing [addr, addr+len), for a small scalar access. */
  private scalarRegion(addr: number, len: number, access: Access): Region | undefined {
    // Fast path, as in `checkRange`: wholly inside the region last found (an
    // integer address there is safe), no validation or search. NaN fails the
    // comparisons and takes the full path.
    const last = this.last;
    if (addr >= last.gpa && len <= last.end - addr && Number.isInteger(addr) && (access === 'read' || !last.readonly)) return last;
    validate(addr, len, access);
    const r = this.findRegion(addr);
    if (r !== undefined && addr + len <= r.end) {
      if (access === 'write' && r.readonly) throw readOnly(addr, len);
      return r;
    }
    // Straddles two regions (or a hole): take the slow path through scratch.
    this.checkRange(addr, len, access);
    return undefined;
  }

  readU8(addr: number): number {
    const r = this.scalarRegion(addr, 1, 'read');
    if (r === undefined) throw outOfBounds(addr, 1, 'read');
    return r.bytes[addr - r.gpa]!;
  }

  readU16(addr: number): number {
    const r = this.scalarRegion(addr, 2, 'read');
    if (r !== undefined) return r.view.getUint16(addr - r.gpa, true);
    this.readInto(addr, this.scratchBytes.subarray(0, 2));
    return this.scratch.getUint16(0, true);
  }

  readU32(addr: number): number {
    const r = this.scalarRegion(addr, 4, 'read');
    if (r !== undefined) return r.view.getUint32(addr - r.gpa, true);
    this.readInto(addr, this.scratchBytes.subarray(0, 4));
    return this.scratch.getUint32(0, true);
  }

  readU64(addr: number): bigint {
    const r = this.scalarRegion(addr, 8, 'read');
    if (r !== undefined) return r.view.getBigUint64(addr - r.gpa, true);
    this.readInto(addr, this.scratchBytes);
    return this.scratch.getBigUint64(0, true);
  }

  readU53(addr: number): number {
    const r = this.scalarRegion(addr, 8, 'read');
    let lo: number;
    let hi: number;
    if (r !== undefined) {
      lo = r.view.getUint32(addr - r.gpa, true);
      hi = r.view.getUint32(addr - r.gpa + 4, true);
    } else {
      this.readInto(addr, this.scratchBytes);
      lo = this.scratch.getUint32(0, true);
      hi = this.scratch.getUint32(4, true);
    }
    if (hi > MAX_HI_53) {
      const value = (BigInt(hi) << 32n) | BigInt(lo);
      throw new GuestMemoryError('too-large', addr, 8, `u64 at ${hex(addr)} holds ${hex(value)}, which does not fit in 53 bits`, 'read');
    }
    return hi * TWO_32 + lo;
  }

  writeU8(addr: number, value: number): void {
    const r = this.scalarRegion(addr, 1, 'write');
    if (r === undefined) throw outOfBounds(addr, 1, 'write');
    r.bytes[addr - r.gpa] = value;
  }

  writeU16(addr: number, value: number): void {
    const r = this.scalarRegion(addr, 2, 'write');
    if (r !== undefined) return r.view.setUint16(addr - r.gpa, value, true);
    this.scratch.setUint16(0, value, true);
    this.writeFrom(addr, this.scratchBytes.subarray(0, 2));
  }

  writeU32(addr: number, value: number): void {
    const r = this.scalarRegion(addr, 4, 'write');
    if (r !== undefined) return r.view.setUint32(addr - r.gpa, value, true);
    this.scratch.setUint32(0, value, true);
    this.writeFrom(addr, this.scratchBytes.subarray(0, 4));
  }

  writeU64(addr: number, value: bigint): void {
    const r = this.scalarRegion(addr, 8, 'write');
    if (r !== undefined) return r.view.setBigUint64(addr - r.gpa, BigInt.asUintN(64, value), true);
    this.scratch.setBigUint64(0, BigInt.asUintN(64, value), true);
    this.writeFrom(addr, this.scratchBytes);
  }

  writeU53(addr: number, value: number): void {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new GuestMemoryError('too-large', addr, 8, `value ${String(value)} written at ${hex(addr)} is not a non-negative safe integer`, 'write');
    }
    const lo = value >>> 0;
    const hi = Math.floor(value / TWO_32);
    const r = this.scalarRegion(addr, 8, 'write');
    if (r !== undefined) {
      r.view.setUint32(addr - r.gpa, lo, true);
      r.view.setUint32(addr - r.gpa + 4, hi, true);
      return;
    }
    this.scratch.setUint32(0, lo, true);
    this.scratch.setUint32(4, hi, true);
    this.writeFrom(addr, this.scratchBytes);
  }

  readInto(addr: number, dest: Uint8Array): void {
    const len = dest.byteLength;
    validate(addr, len, 'read');
    const r = this.findRegion(addr);
    if (r !== undefined && addr + len <= r.end) {
      const off = addr - r.gpa;
      dest.set(r.bytes.subarray(off, off + len));
      return;
    }
    this.checkRange(addr, len, 'read');
    let a = addr;
    let done = 0;
    while (done < len) {
      const reg = this.findRegion(a)!;
      const n = Math.min(len - done, reg.end - a);
      const off = a - reg.gpa;
      dest.set(reg.bytes.subarray(off, off + n), done);
      done += n;
      a += n;
    }
  }

  writeFrom(addr: number, src: Uint8Array): void {
    const len = src.byteLength;
    validate(addr, len, 'write');
    const r = this.findRegion(addr);
    if (r !== undefined && addr + len <= r.end && !r.readonly) {
      r.bytes.set(src, addr - r.gpa);
      return;
    }
    this.checkRange(addr, len, 'write');
    let a = addr;
    let done = 0;
    while (done < len) {
      const reg = this.findRegion(a)!;
      const n = Math.min(len - done, reg.end - a);
      reg.bytes.set(src.subarray(done, done + n), a - reg.gpa);
      done += n;
      a += n;
    }
  }

  fill(addr: number, len: number, value: number): void {
    this.checkRange(addr, len, 'write');
    let a = addr;
    const end = addr + len;
    while (a < end) {
      const reg = this.findRegion(a)!;
      const n = Math.min(end - a, reg.end - a);
      const off = a - reg.gpa;
      if (reg.shared && (value & 0xff) === 0 && n >= ZERO_MIN) zeroShared(reg.bytes, off, n);
      else reg.bytes.fill(value, off, off + n);
      a += n;
    }
  }

  tryView(addr: number, len: number, access: Access): Uint8Array | undefined {
    validate(addr, len, access);
    const r = this.findRegion(addr);
    if (r !== undefined && addr + len <= r.end && !(access === 'write' && r.readonly)) return this.cachedView(r, addr, len);
    this.checkRange(addr, len, access);
    if (len === 0) return new Uint8Array(0);
    return undefined;
  }

  /** Like `tryView`, but a range that spans regions is an error. */
  view(addr: number, len: number, access: Access): Uint8Array {
    const v = this.tryView(addr, len, access);
    if (v === undefined) {
      throw new GuestMemoryError('not-contiguous', addr, len, `${len} byte(s) at ${hex(addr)} span more than one memory region`, access);
    }
    return v;
  }

  slices(addr: number, len: number, access: Access, out: Uint8Array[] = []): Uint8Array[] {
    this.checkRange(addr, len, access);
    const r = this.findRegion(addr);
    if (r !== undefined && addr + len <= r.end && len > 0) {
      out.push(this.cachedView(r, addr, len));
      return out;
    }
    let a = addr;
    const end = addr + len;
    while (a < end) {
      const reg = this.findRegion(a)!;
      const n = Math.min(end - a, reg.end - a);
      const off = a - reg.gpa;
      out.push(reg.bytes.subarray(off, off + n));
      a += n;
    }
    return out;
  }

  /** The view of [addr, addr+len), wholly inside `r`, from the cache or made and cached. */
  private cachedView(r: Region, addr: number, len: number): Uint8Array {
    const i = viewSlot(addr, len);
    let v = this.views[i];
    if (v === undefined || this.viewAddr[i] !== addr || this.viewLen[i] !== len) {
      const off = addr - r.gpa;
      v = r.bytes.subarray(off, off + len);
      this.views[i] = v;
      this.viewAddr[i] = addr;
      this.viewLen[i] = len;
    }
    return v;
  }

  /** The region and host index for an aligned atomic access of `size` bytes. */
  private atomicIndex(addr: number, size: 2 | 4, access: Access): { r: Region; index: number } {
    validate(addr, size, access);
    const r = this.findRegion(addr);
    if (r === undefined || addr + size > r.end) throw outOfBounds(addr, size, access);
    if (access === 'write' && r.readonly) throw readOnly(addr, size);
    const host = r.hostOffset + (addr - r.gpa);
    if (host % size !== 0) {
      throw new GuestMemoryError('misaligned', addr, size, `atomic ${size}-byte ${access} at ${hex(addr)} is not ${size}-byte aligned`, access);
    }
    return { r, index: host / size };
  }

  loadU16Acquire(addr: number): number {
    const { r, index } = this.atomicIndex(addr, 2, 'read');
    return Atomics.load(r.u16, index);
  }

  storeU16Release(addr: number, value: number): void {
    const { r, index } = this.atomicIndex(addr, 2, 'write');
    Atomics.store(r.u16, index, value);
  }

  loadU32Acquire(addr: number): number {
    const { r, index } = this.atomicIndex(addr, 4, 'read');
    return Atomics.load(r.u32, index);
  }

  storeU32Release(addr: number, value: number): void {
    const { r, index } = this.atomicIndex(addr, 4, 'write');
    Atomics.store(r.u32, index, value);
  }

  fence(): void {
    // A sequentially consistent read-modify-write is a full barrier in the JS memory model.
    Atomics.add(this.regions[0]!.i32, 0, 0);
  }

  /**
   * The Int32Array and index for the aligned 32-bit word at `addr`, for
   * `Atomics.wait`/`notify` across threads (the region must be shared).
   */
  int32At(addr: number): { array: Int32Array; index: number } {
    const { r, index } = this.atomicIndex(addr, 4, 'read');
    return { array: r.i32, index };
  }
}

function validate(addr: number, len: number, access: Access | undefined): void {
  if (!Number.isSafeInteger(addr) || addr < 0 || !Number.isSafeInteger(len) || len < 0) {
    throw new GuestMemoryError('invalid-address', addr, len, `guest memory access of ${String(len)} byte(s) at ${String(addr)} is not a valid address range`, access);
  }
  if (len > MAX_GUEST_ADDRESS + 1 - addr) {
    throw outOfBounds(addr, len, access);
  }
}

function readOnly(addr: number, len: number): GuestMemoryError {
  return new GuestMemoryError('read-only', addr, len, `write of ${len} byte(s) at ${hex(addr)} hits read-only memory`, 'write');
}

/**
 * Zeroes come from this page by `set`, a plain copy. V8 fills a typed array over a
 * SharedArrayBuffer element by element with relaxed atomic stores: 4 KiB took 1.6 µs that way
 * against 0.25 µs copied (and 85 ns filled over a plain ArrayBuffer), and zeroing a table page
 * was 5.5 µs on a VT-d guest driver's map path.
 */
const ZERO = new Uint8Array(4096);
/** Below this, `fill` is as quick as a copy (and takes no subarray). */
const ZERO_MIN = 256;

function zeroShared(bytes: Uint8Array, off: number, n: number): void {
  while (n >= ZERO.length) {
    bytes.set(ZERO, off);
    off += ZERO.length;
    n -= ZERO.length;
  }
  if (n >= ZERO_MIN) bytes.set(ZERO.subarray(0, n), off);
  else if (n > 0) bytes.fill(0, off, off + n);
}
