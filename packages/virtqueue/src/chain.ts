import type { DmaMemory } from '@ioplane/guest-memory';
import type { TranslatingDma } from './translating.js';

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
  /**
   * Per segment: the guest-physical address the walk translated it to, or -1
   * (not translated: plain memory, a fault, a range that is not one run).
   * Meaningful only with `via` (the memory that translated it), and only
   * through `carried`, which checks the generation.
   */
  gpas: Float64Array;
  /** Per segment: `via.translationGeneration` when `gpas` was filled. */
  gens: Float64Array;
  /** The translating memory the segments were translated through, if any. */
  via: TranslatingDma | undefined = undefined;

  constructor(capacity = 8) {
    this.addrs = new Float64Array(capacity);
    this.lens = new Uint32Array(capacity);
    this.writable = new Uint8Array(capacity);
    this.gpas = new Float64Array(capacity);
    this.gens = new Float64Array(capacity);
  }

  clear(): this {
    this.count = 0;
    this.readableCount = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
    this.via = undefined;
    return this;
  }

  /**
   * Appends a segment. Readable segments must all come before writable ones.
   * `gpa` / `gen`: its translation and the generation it was made under
   * (-1: none; see `gpas`).
   */
  push(addr: number, len: number, writable: boolean, gpa = -1, gen = 0): this {
    if (this.count === this.addrs.length) this.grow();
    const i = this.count++;
    this.addrs[i] = addr;
    this.lens[i] = len;
    this.writable[i] = writable ? 1 : 0;
    this.gpas[i] = gpa;
    this.gens[i] = gen;
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

  /**
   * The guest-physical address of segment `i` as the walk translated it, if
   * `mem` is the memory that translated it and the translation still holds;
   * else -1, and the caller goes through `mem`, which translates again — and
   * faults, recording the fault, exactly as it would have without the carried
   * translation (a strict-mode UNMAP between pop and use is caught here: the
   * generation moved and `stillValid` refuses a range the UNMAP touched).
   * Address `gpa + k` is then byte `k` of the segment in `via.physical`.
   */
  carried(mem: DmaMemory, i: number): number {
    const via = this.via;
    if (via === undefined || via !== mem) return -1;
    const g = this.gpas[i]!;
    if (g < 0) return -1;
    const now = via.translationGeneration;
    const gen = this.gens[i]!;
    if (gen === now) return g;
    if (via.stillValid(this.addrs[i]!, this.lens[i]!, gen)) {
      this.gens[i] = now;
      return g;
    }
    // Revoked (or unsure): never use it again; the translating path decides.
    this.gpas[i] = -1;
    return -1;
  }

  private grow(): void {
    const n = this.addrs.length * 2;
    const a = new Float64Array(n);
    a.set(this.addrs);
    const l = new Uint32Array(n);
    l.set(this.lens);
    const w = new Uint8Array(n);
    w.set(this.writable);
    const g = new Float64Array(n);
    g.set(this.gpas);
    const e = new Float64Array(n);
    e.set(this.gens);
    this.addrs = a;
    this.lens = l;
    this.writable = w;
    this.gpas = g;
    this.gens = e;
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

  /**
   * Makes this a chain of one checked descriptor (what a queue's fast path
   * pops); `via` / `gpa` / `gen` as for `push`.
   */
  setSingle(head: number, addr: number, len: number, writable: boolean, via?: TranslatingDma, gpa = -1, gen = 0): void {
    this.head = head;
    this.descCount = 1;
    this.count = 1;
    this.addrs[0] = addr;
    this.lens[0] = len;
    this.via = via;
    this.gpas[0] = gpa;
    this.gens[0] = gen;
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
      const g = this.carried(mem, i);
      if (g >= 0) {
        // Translated once at pop and still valid: straight to guest RAM.
        const phys = this.via!.physical;
        if (writable) phys.writeFrom(g + skip, bytes.subarray(done, done + n));
        else phys.readInto(g + skip, bytes.subarray(done, done + n));
      } else {
        const addr = this.addrs[i]! + skip;
        if (writable) mem.writeFrom(addr, bytes.subarray(done, done + n));
        else mem.readInto(addr, bytes.subarray(done, done + n));
      }
      done += n;
      skip = 0;
    }
    return done;
  }
}
