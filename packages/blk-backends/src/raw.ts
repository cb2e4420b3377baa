import { COMPLETED, checkRequest, gatherInto, pushExtent, scatterFrom, segmentsLength,
  rejectWith, type BlockBackend, type Extent, type Segments } from './backend.js';
import { BlockError } from './errors.js';
import { HostFile, type IoEngine } from './file.js';
import { native } from './native.js';

export interface RawFileOptions {
  readOnly?: boolean;
  /**
   * Open with O_DIRECT (bypass the page cache). Requests go through a pool of
   * page-aligned bounce buffers, since a guest's buffers need not be aligned.
   */
  direct?: boolean;
  /** Default 512; with O_DIRECT use the file system's logical block size if it is larger. */
  logicalBlockSize?: number;
  /** 'threadpool' (default) or 'sync': see `IoEngine`. */
  engine?: IoEngine;
}

const BOUNCE_SIZE = 1 << 20;

/**
 * A raw image file: device byte N is file byte N. Positional vectored I/O
 * (preadv/pwritev through `FileHandle.readv/writev`, the guest's segments passed
 * as they are), flush = fdatasync, discard = fallocate(PUNCH_HOLE) so the file
 * system frees the blocks. A file whose length is not a multiple of 512 is seen
 * rounded up; the tail reads as zeros.
 */
export class RawFileBackend implements BlockBackend {
  readonly size: number;
  readonly logicalBlockSize: number;
  readonly physicalBlockSize: number;
  readonly readOnly: boolean;
  readonly direct: boolean;
  #closed = false;
  readonly #bounce: Uint8Array[] = [];

  private constructor(
    readonly file: HostFile,
    opts: RawFileOptions,
  ) {
    this.logicalBlockSize = opts.logicalBlockSize ?? 512;
    this.physicalBlockSize = Math.max(this.logicalBlockSize, 4096);
    this.readOnly = file.readOnly;
    this.direct = opts.direct ?? false;
    const bs = this.logicalBlockSize;
    this.size = Math.ceil(file.size / bs) * bs;
  }

  static async open(path: string, opts: RawFileOptions = {}): Promise<RawFileBackend> {
    const bs = opts.logicalBlockSize ?? 512;
    if (!Number.isInteger(bs) || bs < 512 || bs > 65536 || (bs & (bs - 1)) !== 0) {
      throw new BlockError('invalid-argument', `logicalBlockSize ${bs} must be a power of two in 512..65536`, { logicalBlockSize: bs });
    }
    if (opts.direct && native() === undefined) {
      throw new BlockError('unsupported', 'O_DIRECT needs aligned buffers, which need the koffi FFI (not loadable here)');
    }
    const file = await HostFile.open(path, { readOnly: opts.readOnly ?? false, direct: opts.direct ?? false, engine: opts.engine ?? 'threadpool' });
    return new RawFileBackend(file, opts);
  }

  /** Create (or truncate) a raw image of `size` bytes, sparse. */
  static async create(path: string, size: number): Promise<void> {
    if (!Number.isSafeInteger(size) || size < 0) throw new BlockError('invalid-argument', `size ${size} is not a valid image size`, { size });
    const f = await HostFile.open(path, { create: true });
    try {
      await f.truncate(size);
    } finally {
      await f.close();
    }
  }

  #inflight = 0;
  #idle: (() => void) | undefined;
  readonly #done = (): void => {
    if (--this.#inflight === 0) this.#idle?.();
  };

  /** Count a request in flight (close waits for them); no per-request allocation beyond the promise's own. */
  #track<T>(p: Promise<T>): Promise<T> {
    this.#inflight++;
    p.then(this.#done, this.#done);
    return p;
  }

  read(offset: number, segments: Segments): Promise<void> {
    try {
      const len = segmentsLength(segments);
      checkRequest(this, 'read', offset, len, this.#closed);
      if (len === 0) return COMPLETED;
      // Buffered reads are tracked by the HostFile itself (its close waits for them), without a promise per read here.
      return this.direct ? this.#track(this.#directIo(offset, segments, len, false)) : this.file.readv(segments, offset);
    } catch (e) {
      return rejectWith(e);
    }
  }

  write(offset: number, segments: Segments): Promise<void> {
    try {
      const len = segmentsLength(segments);
      checkRequest(this, 'write', offset, len, this.#closed);
      if (len === 0) return Promise.resolve();
      return this.#track(this.direct ? this.#directIo(offset, segments, len, true) : this.file.writev(segments, offset));
    } catch (e) {
      return rejectWith(e);
    }
  }

  async #directIo(offset: number, segments: Segments, len: number, write: boolean): Promise<void> {
    const buf = this.#bounce.pop() ?? new Uint8Array(native()!.alignedBuffer(4096, BOUNCE_SIZE));
    try {
      for (let done = 0; done < len; done += BOUNCE_SIZE) {
        const n = Math.min(BOUNCE_SIZE, len - done);
        const b = buf.subarray(0, n);
        if (write) {
          gatherInto(segments, done, n, b, 0);
          await this.file.write(b, offset + done);
        } else {
          await this.file.read(b, offset + done);
          scatterFrom(segments, done, b);
        }
      }
    } finally {
      if (this.#bounce.length < 64) this.#bounce.push(buf);
    }
  }

  flush(): Promise<void> {
    if (this.#closed) return Promise.reject(new BlockError('closed', 'flush on a closed block back-end'));
    return this.#track(this.file.datasync());
  }

  discard(offset: number, length: number): Promise<void> {
    try {
      checkRequest(this, 'discard', offset, length, this.#closed);
      return this.#track(this.file.zeroRange(offset, length, true).then(() => undefined));
    } catch (e) {
      return rejectWith(e);
    }
  }

  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    try {
      checkRequest(this, 'write-zeroes', offset, length, this.#closed);
      return this.#track(this.file.zeroRange(offset, length, mayUnmap).then(() => undefined));
    } catch (e) {
      return rejectWith(e);
    }
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    try {
      checkRequest(this, 'block-status', offset, length, this.#closed);
      const out: Extent[] = [];
      const end = offset + length;
      let pos = offset;
      // Bounded: each step advances pos by ≥1 byte (dataAt returns end > pos).
      while (pos < end) {
        const r = this.file.dataAt(pos, end);
        const stop = Math.max(r.end, pos + 1);
        pushExtent(out, r.data ? { offset: pos, length: stop - pos, kind: 'data', hostOffset: pos } : { offset: pos, length: stop - pos, kind: 'zero', hostOffset: pos });
        pos = stop;
      }
      return Promise.resolve(out);
    } catch (e) {
      return rejectWith(e);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#inflight > 0) await new Promise<void>((resolve) => (this.#idle = resolve));
    await this.file.close();
  }
}
