import type { DmaMemory } from '@ioplane/guest-memory';

/**
 * A list of guest buffers: device-readable segments first, then
 * device-writable ones. Storage is typed arrays that grow by doubling, so a
 * pooled list allocates nothing once it has seen its largest chain.
 */
export class BufferList {
  count = 0;
  /** Number of leading device-readable segments. */
  readableCount = 0;
  readableBytes = 0;
  writableBytes = 0;
  addrs: Float64Array;
  lens: Uint32Array;
  writable: Uint8Array;

  constructor(capacity = 8) {
    this.addrs = new Float64Array(capacity);
    this.lens = new Uint32Array(capacity);
    this.writable = new Uint8Array(capacity);
  }

  clear(): this {
    this.count = 0;
    this.readableCount = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
    return this;
  }

  /** Appends a segment. Readable segments must all come before writable ones. */
  push(addr: number, len: number, writable: boolean): this {
    if (this.count === this.addrs.length) this.grow();
    const i = this.count++;
    this.addrs[i] = addr;
    this.lens[i] = len;
    this.writable[i] = writable ? 1 : 0;
    if (writable) this.writableBytes += len;
    else {
      this.readableCount++;
      this.readableBytes += len;
    }
    return this;
  }

  addr(i: number): number {
    return this.addrs[i]!;
  }

  len(i: number): number {
    return this.lens[i]!;
  }

  isWritable(i: number): boolean {
    return this.writable[i] === 1;
  }

  private grow(): void {
    const n = this.addrs.length * 2;
    const a = new Float64Array(n);
    a.set(this.addrs);
    const l = new Uint32Array(n);
    l.set(this.lens);
    const w = new Uint8Array(n);
    w.set(this.writable);
    this.addrs = a;
    this.lens = l;
    this.writable = w;
  }
}

/**
 * A descriptor chain popped by a device: its validated segments, and what
 * the queue needs to return it. Reuse one per request slot (pool them); a
 * queue never keeps a reference to it.
 */
export class DescriptorChain extends BufferList {
  /** Split: head descriptor index. Packed: Buffer ID. Both go back in the used entry. */
  head = 0;
  /** Ring descriptors this chain occupied (packed: how far the used pointer skips). */
  descCount = 0;

  /** Makes this a chain of one checked descriptor (what a queue's fast path pops). */
  setSingle(head: number, addr: number, len: number, writable: boolean): void {
    this.head = head;
    this.descCount = 1;
    this.count = 1;
    this.addrs[0] = addr;
    this.lens[0] = len;
    if (writable) {
      this.writable[0] = 1;
      this.readableCount = 0;
      this.readableBytes = 0;
      this.writableBytes = len;
    } else {
      this.writable[0] = 0;
      this.readableCount = 1;
      this.readableBytes = len;
      this.writableBytes = 0;
    }
  }

  /**
   * Copies up to `dest.length` device-readable bytes, starting `offset` bytes
   * into the readable part, through `mem`. Returns the number copied.
   */
  readInto(mem: DmaMemory, offset: number, dest: Uint8Array): number {
    return this.copy(mem, false, offset, dest);
  }

  /**
   * Copies `src` into the device-writable part starting `offset` bytes into
   * it, through `mem`. Returns the number of bytes written (less than
   * `src.length` if the writable part is shorter).
   */
  writeFrom(mem: DmaMemory, offset: number, src: Uint8Array): number {
    return this.copy(mem, true, offset, src);
  }

  private copy(mem: DmaMemory, writable: boolean, offset: number, bytes: Uint8Array): number {
    let skip = offset;
    let done = 0;
    const start = writable ? this.readableCount : 0;
    const end = writable ? this.count : this.readableCount;
    for (let i = start; i < end && done < bytes.length; i++) {
      const len = this.lens[i]!;
      if (skip >= len) {
        skip -= len;
        continue;
      }
      const n = Math.min(len - skip, bytes.length - done);
      const addr = this.addrs[i]! + skip;
      if (writable) mem.writeFrom(addr, bytes.subarray(done, done + n));
      else mem.readInto(addr, bytes.subarray(done, done + n));
      done += n;
      skip = 0;
    }
    return done;
  }
}
