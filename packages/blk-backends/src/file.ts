import { constants, fdatasyncSync, fstatSync, ftruncateSync, promises as fsp, readSync, readv as fsReadv, readvSync, writevSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { COMPLETED, zeroFill } from './backend.js';
import { BlockError, ioError } from './errors.js';
import { ENXIO, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, native, SEEK_DATA, SEEK_HOLE } from './native.js';

const ZEROS = new Uint8Array(1 << 20);
const NO_BUFFERS: readonly Uint8Array[] = [];

/**
 * How a `HostFile` performs its I/O.
 * - `'threadpool'` (default): each call is a job on libuv's threadpool; many
 *   calls overlap, the calling thread never blocks. Right for a thread shared
 *   with other work, and for slow storage where concurrency matters.
 * - `'sync'`: each call is a system call on the calling thread
 *   (preadv/pwritev/fdatasync), finished before the call returns; the returned
 *   promise is already settled (`COMPLETED` for a read that succeeded). No threadpool hand-off and no wake-up per I/O,
 *   as Firecracker's `Sync` block engine does on its device thread. Right for a
 *   dedicated I/O thread over fast storage or a warm page cache; wrong for a
 *   thread that must stay responsive, since a slow disk blocks it.
 */
export type IoEngine = 'threadpool' | 'sync';

/**
 * A position in a list of buffers (buffer `i`, `skip` bytes into it), for
 * resuming a vectored call after a short read or write. Empty buffers are
 * stepped over, so `i < buffers.length` means bytes are left.
 */
class IovCursor {
  i = 0;
  skip = 0;

  start(b: readonly Uint8Array[]): void {
    this.i = 0;
    this.skip = 0;
    this.stepOverEmpty(b);
  }

  done(b: readonly Uint8Array[]): boolean {
    return this.i >= b.length;
  }

  /** Moves past `n` bytes just transferred. */
  advance(b: readonly Uint8Array[], n: number): void {
    while (this.i < b.length && n > 0) {
      const left = b[this.i]!.byteLength - this.skip;
      if (n >= left) {
        n -= left;
        this.i++;
        this.skip = 0;
      } else {
        this.skip += n;
        n = 0;
      }
    }
    this.stepOverEmpty(b);
  }

  /** The bytes left, as a buffer list (the list itself when nothing was transferred yet). */
  rest(b: readonly Uint8Array[]): Uint8Array[] {
    return (this.skip === 0 && this.i === 0 ? b : [b[this.i]!.subarray(this.skip), ...b.slice(this.i + 1)]) as Uint8Array[];
  }

  /** Zero-fills the bytes left (a read that met the end of the file). */
  zeroRest(b: readonly Uint8Array[]): void {
    for (let j = this.i; j < b.length; j++) zeroFill(b[j]!, j === this.i ? this.skip : 0);
    this.i = b.length;
  }

  private stepOverEmpty(b: readonly Uint8Array[]): void {
    while (this.i < b.length && b[this.i]!.byteLength === 0) this.i++;
  }
}

/**
 * One positional vectored read in flight, reused from a pool: the callback-style
 * `fs.readv` with pre-bound callbacks, so a read costs one Promise (the caller's)
 * and libuv's own request object, not the several promises, closures and result
 * objects of `FileHandle.readv`.
 */
class ReadReq {
  buffers: readonly Uint8Array[] = NO_BUFFERS;
  /** File position of the next byte to read. */
  at = 0;
  /** Next buffer to fill, and bytes of it already filled. */
  readonly pos = new IovCursor();
  resolve: (() => void) | undefined = undefined;
  reject: ((e: Error) => void) | undefined = undefined;
  readonly executor = (resolve: () => void, reject: (e: Error) => void): void => {
    this.resolve = resolve;
    this.reject = reject;
  };
  readonly cb = (err: NodeJS.ErrnoException | null, n: number): void => this.file.readDone(this, err, n);
  constructor(readonly file: HostFile) {}
}

/**
 * Byte-granular positional I/O on a host file (no alignment rules): what the
 * raw back-end and the qcow2 driver are built on. Short reads past the end of
 * the file read zeros, as a sparse file would.
 */
export class HostFile {
  #size: number;
  readonly #readPool: ReadReq[] = [];
  /** Callback-style reads in flight (close waits for them: they use the fd, not the FileHandle). */
  #pending = 0;
  #idle: (() => void) | undefined;
  readonly #sync: boolean;
  /** The sync engine's reads run one at a time, so they share one cursor. */
  readonly #syncCursor = new IovCursor();
  private constructor(
    readonly path: string,
    readonly handle: FileHandle,
    readonly readOnly: boolean,
    size: number,
    readonly engine: IoEngine,
  ) {
    this.#size = size;
    this.#sync = engine === 'sync';
  }

  static async open(path: string, opts: { readOnly?: boolean; create?: boolean; direct?: boolean; engine?: IoEngine } = {}): Promise<HostFile> {
    const engine = opts.engine ?? 'threadpool';
    if (engine !== 'threadpool' && engine !== 'sync') {
      throw new BlockError('invalid-argument', `I/O engine '${String(engine)}' is not one of 'threadpool', 'sync'`, { engine });
    }
    const readOnly = opts.readOnly ?? false;
    let flags = readOnly ? constants.O_RDONLY : constants.O_RDWR;
    if (opts.create) flags |= constants.O_CREAT | constants.O_TRUNC;
    if (opts.direct) flags |= constants.O_DIRECT;
    let handle: FileHandle;
    try {
      handle = await fsp.open(path, flags, 0o644);
    } catch (e) {
      throw ioError(`cannot open ${path}`, e);
    }
    try {
      const st = await handle.stat();
      if (st.isDirectory()) throw new BlockError('invalid-argument', `${path} is a directory`, { path });
      return new HostFile(path, handle, readOnly, st.size, engine);
    } catch (e) {
      await handle.close().catch(() => undefined);
      throw e instanceof BlockError ? e : ioError(`cannot stat ${path}`, e);
    }
  }

  /** The file's length as last seen or extended by this object. */
  get size(): number {
    return this.#size;
  }

  get fd(): number {
    return this.handle.fd;
  }

  async refreshSize(): Promise<number> {
    this.#size = this.#sync ? fstatSync(this.handle.fd).size : (await this.handle.stat()).size;
    return this.#size;
  }

  /**
   * Fill `buffers` from `pos`; bytes past the end of the file read as zeros.
   * One preadv on libuv's threadpool (more only after a short read).
   */
  readv(buffers: readonly Uint8Array[], pos: number): Promise<void> {
    if (this.#sync) return this.readvSync(buffers, pos);
    const r = this.#readPool.pop() ?? new ReadReq(this);
    r.buffers = buffers;
    r.at = pos;
    r.pos.start(buffers);
    const p = new Promise<void>(r.executor);
    if (r.pos.done(buffers)) {
      this.readFinish(r, undefined);
      return p;
    }
    this.#pending++;
    this.readIssue(r);
    return p;
  }

  /** The sync engine's readv: preadv on this thread until every buffer is full or the file ends. */
  private readvSync(buffers: readonly Uint8Array[], pos: number): Promise<void> {
    const c = this.#syncCursor;
    let at = pos;
    try {
      // Bounded: each round reads ≥1 byte, or zero-fills the rest and stops.
      for (c.start(buffers); !c.done(buffers); ) {
        const n = readvSync(this.handle.fd, c.rest(buffers), at);
        if (n === 0) c.zeroRest(buffers);
        at += n;
        c.advance(buffers, n);
      }
    } catch (e) {
      return Promise.reject(ioError(`read of ${this.path} at ${at}`, e));
    }
    return COMPLETED;
  }

  private readIssue(r: ReadReq): void {
    try {
      fsReadv(this.handle.fd, r.pos.rest(r.buffers), r.at, r.cb);
    } catch (e) {
      this.readSettled(r, ioError(`read of ${this.path} at ${r.at}`, e));
    }
  }

  /** Internal: a preadv of `r` finished. Bounded: each round reads ≥1 byte or zero-fills the rest and stops. */
  readDone(r: ReadReq, err: NodeJS.ErrnoException | null, n: number): void {
    if (err !== null) {
      this.readSettled(r, ioError(`read of ${this.path} at ${r.at}`, err));
      return;
    }
    const b = r.buffers;
    if (n === 0) {
      r.pos.zeroRest(b);
      this.readSettled(r, undefined);
      return;
    }
    r.at += n;
    r.pos.advance(b, n);
    if (!r.pos.done(b)) this.readIssue(r);
    else this.readSettled(r, undefined);
  }

  private readSettled(r: ReadReq, e: Error | undefined): void {
    this.readFinish(r, e);
    if (--this.#pending === 0 && this.#idle !== undefined) {
      const idle = this.#idle;
      this.#idle = undefined;
      idle();
    }
  }

  private readFinish(r: ReadReq, e: Error | undefined): void {
    const resolve = r.resolve!;
    const reject = r.reject!;
    r.resolve = r.reject = undefined;
    r.buffers = NO_BUFFERS;
    if (this.#readPool.length < 1024) this.#readPool.push(r);
    if (e === undefined) resolve();
    else reject(e);
  }

  async read(buf: Uint8Array, pos: number): Promise<void> {
    let done = 0;
    while (done < buf.byteLength) {
      let n: number;
      try {
        n = this.#sync ? readSync(this.handle.fd, buf, done, buf.byteLength - done, pos + done) : (await this.handle.read(buf, done, buf.byteLength - done, pos + done)).bytesRead;
      } catch (e) {
        throw ioError(`read of ${this.path} at ${pos + done}`, e);
      }
      if (n === 0) {
        zeroFill(buf, done);
        return;
      }
      done += n;
    }
  }

  async writev(buffers: readonly Uint8Array[], pos: number): Promise<void> {
    const c = new IovCursor();
    let at = pos;
    let total = 0;
    for (const b of buffers) total += b.byteLength;
    // Bounded: each round writes ≥1 byte or throws.
    for (c.start(buffers); !c.done(buffers); ) {
      let n: number;
      try {
        n = this.#sync ? writevSync(this.handle.fd, c.rest(buffers), at) : (await this.handle.writev(c.rest(buffers), at)).bytesWritten;
      } catch (e) {
        throw ioError(`write of ${this.path} at ${at}`, e);
      }
      if (n === 0) throw new BlockError('io', `write of ${this.path} at ${at} made no progress`, { pos: at });
      at += n;
      c.advance(buffers, n);
    }
    if (pos + total > this.#size) this.#size = pos + total;
  }

  write(buf: Uint8Array, pos: number): Promise<void> {
    return this.writev([buf], pos);
  }

  async datasync(): Promise<void> {
    try {
      if (this.#sync) fdatasyncSync(this.handle.fd);
      else await this.handle.datasync();
    } catch (e) {
      throw ioError(`fdatasync of ${this.path}`, e);
    }
  }

  async truncate(size: number): Promise<void> {
    try {
      if (this.#sync) ftruncateSync(this.handle.fd, size);
      else await this.handle.truncate(size);
    } catch (e) {
      throw ioError(`truncate of ${this.path} to ${size}`, e);
    }
    this.#size = size;
  }

  /**
   * Make [pos, pos+len) read as zeros. With `unmap`, punch a hole
   * (fallocate PUNCH_HOLE|KEEP_SIZE: the file system frees the blocks); without,
   * FALLOC_FL_ZERO_RANGE keeps them allocated. Where fallocate is unavailable
   * or refused (EOPNOTSUPP), zeros are written. Returns true if space was freed.
   */
  async zeroRange(pos: number, len: number, unmap: boolean): Promise<boolean> {
    if (len <= 0) return false;
    const end = Math.min(pos + len, this.#size);
    if (pos >= end) return false; // Past EOF already reads zeros.
    const n = native();
    if (n !== undefined) {
      const mode = unmap ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
      // On koffi's worker thread; any failure (EOPNOTSUPP, an old kernel) falls back to writing zeros.
      const r = this.#sync ? n.fallocate(this.handle.fd, mode, pos, end - pos) : await n.fallocateAsync(this.handle.fd, mode, pos, end - pos);
      if (r === 0) return unmap;
    }
    for (let at = pos; at < end; at += ZEROS.byteLength) {
      await this.write(ZEROS.subarray(0, Math.min(ZEROS.byteLength, end - at)), at);
    }
    return false;
  }

  /**
   * SEEK_DATA/SEEK_HOLE: is `pos` in data or in a hole, and where does that run
   * end (≤ limit)? Without lseek support everything is data.
   */
  dataAt(pos: number, limit: number): { data: boolean; end: number } {
    const n = native();
    if (n === undefined || pos >= this.#size) return { data: pos < this.#size, end: pos >= this.#size ? limit : Math.min(limit, this.#size) };
    const d = n.lseek(this.handle.fd, pos, SEEK_DATA);
    if (d === -ENXIO) return { data: false, end: limit };
    if (d < 0) return { data: true, end: Math.min(limit, this.#size) };
    if (d > pos) return { data: false, end: Math.min(limit, d) };
    const h = n.lseek(this.handle.fd, pos, SEEK_HOLE);
    if (h <= pos) return { data: true, end: Math.min(limit, this.#size) };
    return { data: true, end: Math.min(limit, h) };
  }

  /** Waits for reads in flight, then closes the file. */
  async close(): Promise<void> {
    if (this.#pending > 0) await new Promise<void>((resolve) => (this.#idle = resolve));
    await this.handle.close();
  }
}
