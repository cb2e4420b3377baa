import {
  COMPLETED,
  checkRequest,
  forEachSegmentPiece,
  pushExtent,
segmentsLength,
  rejectWith,
  type BlockBackend,
  type Extent,
  type Segments,
  zeroFill,
} from './backend.js';
import { BlockError } from './errors.js';

export interface MemoryBackendOptions {
  /** Capacity in bytes, a multiple of `logicalBlockSize`. */
  size: number;
  /** Allocation unit of the sparse store (power of two, ≥ logicalBlockSize). Default 64 KiB. */
  chunkSize?: number;
  logicalBlockSize?: number;
  readOnly?: boolean;
}

/**
 * A sparse in-memory disk: chunks are allocated on first write, so a 1 TiB
 * device costs nothing until written. Discarded chunks are freed. Reads and
 * writes complete before they return (they return `COMPLETED`).
 */
export class MemoryBackend implements BlockBackend {
  readonly size: number;
  readonly logicalBlockSize: number;
  readonly physicalBlockSize: number;
  readonly readOnly: boolean;
  readonly chunkSize: number;
  readonly #chunks = new Map<number, Uint8Array>();
  #closed = false;

  constructor(opts: MemoryBackendOptions) {
    const bs = opts.logicalBlockSize ?? 512;
    const cs = opts.chunkSize ?? 65536;
    if (!Number.isInteger(bs) || bs < 512 || (bs & (bs - 1)) !== 0) {
      throw new BlockError('invalid-argument', `logicalBlockSize ${bs} must be a power of two ≥ 512`, { logicalBlockSize: bs });
    }
    if (!Number.isInteger(cs) || cs < bs || (cs & (cs - 1)) !== 0 || cs > 1 << 30) {
      throw new BlockError('invalid-argument', `chunkSize ${cs} must be a power of two between the block size and 1 GiB`, { chunkSize: cs });
    }
    if (!Number.isSafeInteger(opts.size) || opts.size < 0 || opts.size % bs !== 0) {
      throw new BlockError('invalid-argument', `size ${opts.size} must be a non-negative multiple of ${bs}`, { size: opts.size });
    }
    this.size = opts.size;
    this.logicalBlockSize = bs;
    this.physicalBlockSize = bs;
    this.chunkSize = cs;
    this.readOnly = opts.readOnly ?? false;
  }

  /** Number of chunks currently allocated (for tests of sparseness). */
  get allocatedChunks(): number {
    return this.#chunks.size;
  }

  read(offset: number, segments: Segments): Promise<void> {
    try {
      const len = segmentsLength(segments);
      checkRequest(this, 'read', offset, len, this.#closed);
      this.#copy(offset, segments, len, false);
      return COMPLETED;
    } catch (e) {
      return rejectWith(e);
    }
  }

  write(offset: number, segments: Segments): Promise<void> {
    try {
      const len = segmentsLength(segments);
      checkRequest(this, 'write', offset, len, this.#closed);
      this.#copy(offset, segments, len, true);
      return COMPLETED;
    } catch (e) {
      return rejectWith(e);
    }
  }

  #copy(offset: number, segments: Segments, len: number, write: boolean): void {
    const cs = this.chunkSize;
    forEachSegmentPiece(segments, 0, len, (seg, segStart, reqOff, n) => {
      let dev = offset + reqOff;
      let s = segStart;
      let left = n;
      while (left > 0) {
        const ci = Math.floor(dev / cs);
        const co = dev - ci * cs;
        const k = Math.min(left, cs - co);
        let chunk = this.#chunks.get(ci);
        if (write) {
          if (chunk === undefined) {
            chunk = new Uint8Array(cs);
            this.#chunks.set(ci, chunk);
          }
          chunk.set(seg.subarray(s, s + k), co);
        } else if (chunk === undefined) zeroFill(seg, s, s + k);
        else seg.set(chunk.subarray(co, co + k), s);
        dev += k;
        s += k;
        left -= k;
      }
    });
  }

  flush(): Promise<void> {
    if (this.#closed) return Promise.reject(new BlockError('closed', 'flush on a closed block back-end'));
    return Promise.resolve();
  }

  discard(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length, true, 'discard');
  }

  writeZeroes(offset: number, length: number, mayUnmap: boolean, op: 'discard' | 'write-zeroes' = 'write-zeroes'): Promise<void> {
    try {
      checkRequest(this, op, offset, length, this.#closed);
      const cs = this.chunkSize;
      let dev = offset;
      const end = offset + length;
      while (dev < end) {
        const ci = Math.floor(dev / cs);
        const co = dev - ci * cs;
        const k = Math.min(end - dev, cs - co);
        const chunk = this.#chunks.get(ci);
        if (k === cs && mayUnmap) this.#chunks.delete(ci);
        else if (chunk !== undefined) chunk.fill(0, co, co + k);
        else if (!mayUnmap) this.#chunks.set(ci, new Uint8Array(cs));
        dev += k;
      }
      return Promise.resolve();
    } catch (e) {
      return rejectWith(e);
    }
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    try {
      checkRequest(this, 'block-status', offset, length, this.#closed);
      const out: Extent[] = [];
      const cs = this.chunkSize;
      let dev = offset;
      const end = offset + length;
      while (dev < end) {
        const ci = Math.floor(dev / cs);
        const k = Math.min(end - dev, (ci + 1) * cs - dev);
        pushExtent(out, { offset: dev, length: k, kind: this.#chunks.has(ci) ? 'data' : 'unallocated' });
        dev += k;
      }
      return Promise.resolve(out);
    } catch (e) {
      return rejectWith(e);
    }
  }

  close(): Promise<void> {
    this.#closed = true;
    this.#chunks.clear();
    return Promise.resolve();
  }
}
