/**
 * The qcow2 back-end: QEMU's image format, versions 2 and 3, as
 * docs/interop/qcow2.txt describes it. Section names in comments are that
 * document's.
 */
import { realpath } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { promisify } from 'node:util';
import { deflateRaw as deflateRawCb, inflateRaw as inflateRawCb } from 'node:zlib';
import { Decompress as ZstdDecompress } from 'fzstd';
import {
  checkRequest,
  pushExtent,
segmentsLength,
  rejectWith,
  sliceSegments,
  zeroSegments,
  gatherInto,
  scatterFrom,
  type BlockBackend,
  type Extent,
  type Segments,
} from '../backend.js';
import { BlockError, corrupt, hex } from '../errors.js';
import { HostFile, type IoEngine } from '../file.js';
import { RwLock, TableCache, type Table } from './cache.js';
import {
  COMPAT_LAZY_REFCOUNTS,
  HI_COMPRESSED,
  HI_COPIED,
  HI_OFFSET_MASK,
  HI_RESERVED_STD,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  L1_HI_RESERVED,
  L1_LO_RESERVED,
  LO_OFFSET_MASK,
  LO_RESERVED_STD,
  LO_ZERO,
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MAX_OFFSET,
  MAX_REFTABLE_BYTES,
  MIN_CLUSTER_BITS,
  overlaps,
  parseHeader,
  serializeHeader,
  type Qcow2Header,
  H,
} from './format.js';

const inflateRaw = promisify(inflateRawCb);
const deflateRaw = promisify(deflateRawCb);
const TWO32 = 2 ** 32;
/** Longest backing chain followed; a deeper one is treated as a loop. */
export const MAX_BACKING_DEPTH = 64;
/** Most L1+L2 entries one check walks (2^30: a 64 TiB image of 64 KiB clusters, or 1 TiB with 64 snapshots). */
const CHECK_ENTRY_BUDGET = 2 ** 30;
/** How far past the end of the file a repair grows it to take in a refcount block the table names there (as QEMU's check does). */
const REPAIR_GROW_LIMIT = 2 ** 30;

/** Opens a backing file; `openImage` in this package by default. */
export type BackingOpener = (path: string, format: string | undefined, chain: readonly string[]) => Promise<BlockBackend>;

export interface Qcow2OpenOptions {
  readOnly?: boolean;
  /** How to open the backing file (default: `openImage`, read-only, format from the header or probed). */
  openBacking?: BackingOpener;
  /** Do not open the backing file at all (reads of unallocated clusters return zeros); for check/info/map of one layer. */
  noBacking?: boolean;
  /** L2 tables kept in memory (default: enough for 1 MiB, at least 16). */
  l2CacheTables?: number;
  /** Refcount blocks kept in memory (default: enough for 256 KiB, at least 8). */
  refcountCacheBlocks?: number;
  /** Real paths of the images above this one, for loop detection. */
  chain?: readonly string[];
  /** How the image file's I/O is done (default 'threadpool'; see `IoEngine`). The backing file is opened by `openBacking`. */
  engine?: IoEngine;
}

export interface Qcow2CreateOptions {
  /** Virtual size in bytes; defaults to the backing file's size. */
  size?: number;
  /** 512 B .. 2 MiB, a power of two (default 64 KiB). */
  clusterSize?: number;
  /** 2 (QEMU's compat=0.10) or 3 (compat=1.1, default). */
  version?: 2 | 3;
  backingFile?: string;
  backingFormat?: string;
  lazyRefcounts?: boolean;
  /** 1, 2, 4, 8, 16, 32 or 64 (default 16; only 16 for version 2). */
  refcountBits?: number;
  extendedL2?: boolean;
  /** How to open the backing file to learn its size. */
  openBacking?: BackingOpener;
}

export interface Qcow2CheckResult {
  /** Corruptions: refcounts lower than references, tables outside the file, bad flags. */
  corruptions: number;
  /** Clusters whose refcount is higher than their references. */
  leaks: number;
  messages: string[];
  /**
   * After a repair: what its first pass found, a line each, "Repairing …" for
   * what it fixed and "ERROR …" for what it could not (as `qemu-img check -r`
   * prints them); `messages` is then what the check after the repair found.
   */
  repairMessages?: string[];
  /** After `repair`: how many of each were fixed. */
  corruptionsFixed: number;
  leaksFixed: number;
  allocatedClusters: number;
  totalClusters: number;
  compressedClusters: number;
  fragmentedClusters: number;
  imageEndOffset: number;
}

interface Snapshot {
  l1Offset: number;
  l1Size: number;
}

/**
 * A qcow2 image. Reads and writes to clusters already allocated to this layer
 * run concurrently (a shared lock); allocation, discard and flush take an
 * exclusive lock. Metadata is cached write-back (L2 tables, refcount blocks)
 * and written in the order integrity needs at `flush`:
 *
 *  1. refcount blocks (then fdatasync, then the refcount table if it changed),
 *  2. fdatasync — data and refcounts are stable before anything points at them,
 *  3. L2 tables, fdatasync, then the L1 table, fdatasync,
 *  4. only then are freed clusters' refcounts decremented (a crash leaks, never
 *     double-allocates).
 *
 * With lazy refcounts (compatible bit 0) the dirty bit is set before the first
 * change and refcount blocks go out without their own fdatasync; an image found
 * dirty is repaired on a read-write open, as QEMU does. Data still reaches the
 * disk before the L2 entries that point at it, and L2 tables before the L1
 * entries that point at them.
 */
export class Qcow2Backend implements BlockBackend {
  readonly size: number;
  readonly logicalBlockSize = 512;
  readonly physicalBlockSize: number;
  readonly readOnly: boolean;
  readonly clusterSize: number;
  readonly clusterBits: number;
  readonly extendedL2: boolean;
  /** Entries in an L2 table. */
  readonly l2Entries: number;
  readonly refcountBits: number;
  /** Entries in a refcount block. */
  readonly refblockEntries: number;
  /** Bytes in one subcluster (extended L2), or the cluster size. */
  readonly subclusterSize: number;
  readonly backing: BlockBackend | undefined;
  readonly snapshots: readonly Snapshot[];

  readonly #file: HostFile;
  readonly #h: Qcow2Header;
  readonly #l1: Uint8Array;
  readonly #l1dv: DataView;
  #l1DirtyLo = Infinity;
  #l1DirtyHi = -1;
  #reftable: Float64Array;
  #reftableOffset: number;
  #reftableDirty = false;
  readonly #l2: TableCache;
  readonly #rc: TableCache;
  readonly #lock = new RwLock();
  readonly #entryBytes: number;
  /** Clusters to decrement once the L2 tables that stopped using them are on disk. */
  #pendingFree: number[] = [];
  #freeHint = 0;
  /** One past the highest cluster allocated in this session (some may not be written yet). */
  #highWater = 0;
  /**
   * Clusters `#allocClusters` has found free and is recording one by one: a refcount block
   * (or a bigger refcount table) allocated while it does must not be placed among them.
   */
  #reservedStart = 0;
  #reservedEnd = 0;
  #dataDirty = false;
  #closed = false;
  #scratch: Uint8Array;
  #compressedCursor: { offset: number; used: number } | undefined;
  #lastCompressed: { key: string; data: Uint8Array } | undefined;
  /**
   * Compressed writes so far. The cache above is keyed by the L2 descriptor, and a compressed
   * write into space freed since can produce the very same descriptor for other data: each one
   * empties the cache, and a read that decompressed across one does not fill it.
   */
  #compressedWrites = 0;
  /** Refcount repair in progress: allocate only past every referenced cluster. */
  #allocFloor = 0;
  /** Guest clusters whose allocating write is in flight outside the lock (data first, then the L2 entry). */
  readonly #reserved = new Map<number, { wait: Promise<void>; release: () => void }>();
  /** Host clusters allocated by those writes, referenced by no table yet. */
  readonly #reservedHost = new Set<number>();
  /** Mutating requests not yet settled; close waits for them. */
  #opsInflight = 0;
  #opsIdle: (() => void)[] = [];

  private constructor(file: HostFile, h: Qcow2Header, l1: Uint8Array, reftable: Float64Array, backing: BlockBackend | undefined, snapshots: Snapshot[], opts: Qcow2OpenOptions) {
    this.#file = file;
    this.#h = h;
    this.readOnly = file.readOnly;
    this.size = h.size;
    this.clusterBits = h.clusterBits;
    this.clusterSize = 2 ** h.clusterBits;
    this.physicalBlockSize = Math.min(this.clusterSize, 4096);
    this.extendedL2 = (h.incompatible & INCOMPAT_EXTL2) !== 0n;
    this.#entryBytes = this.extendedL2 ? 16 : 8;
    this.l2Entries = this.clusterSize / this.#entryBytes;
    this.subclusterSize = this.extendedL2 ? this.clusterSize / 32 : this.clusterSize;
    this.refcountBits = 2 ** h.refcountOrder;
    this.refblockEntries = (this.clusterSize * 8) / this.refcountBits;
    this.#l1 = l1;
    this.#l1dv = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    this.#reftable = reftable;
    this.#reftableOffset = h.refcountTableOffset;
    this.backing = backing;
    this.snapshots = snapshots;
    const cs = this.clusterSize;
    this.#l2 = new TableCache(file, cs, opts.l2CacheTables ?? Math.max(16, (1 << 20) / cs), (off) => this.#checkTableOffset('L2 table', off));
    this.#rc = new TableCache(file, cs, opts.refcountCacheBlocks ?? Math.max(8, (1 << 18) / cs), (off) => this.#checkTableOffset('refcount block', off));
    this.#scratch = new Uint8Array(cs);
  }

  /** The parsed header (a copy). */
  get header(): Readonly<Qcow2Header> {
    return { ...this.#h };
  }

  get hostFile(): HostFile {
    return this.#file;
  }

  get version(): 2 | 3 {
    return this.#h.version;
  }

  get lazyRefcounts(): boolean {
    return (this.#h.compatible & COMPAT_LAZY_REFCOUNTS) !== 0n;
  }

  get dirtyBit(): boolean {
    return (this.#h.incompatible & INCOMPAT_DIRTY) !== 0n;
  }

  get corruptBit(): boolean {
    return (this.#h.incompatible & INCOMPAT_CORRUPT) !== 0n;
  }

  static async open(path: string, opts: Qcow2OpenOptions = {}): Promise<Qcow2Backend> {
    const readOnly = opts.readOnly ?? false;
    const file = await HostFile.open(path, { readOnly, engine: opts.engine ?? 'threadpool' });
    try {
      const head = new Uint8Array(Math.min(2 ** MAX_CLUSTER_BITS, Math.max(file.size, 512)));
      await file.read(head.subarray(0, Math.min(head.byteLength, 4096)), 0);
      const bits = new DataView(head.buffer).getUint32(H.clusterBits, false);
      if (bits >= MIN_CLUSTER_BITS && bits <= MAX_CLUSTER_BITS && 2 ** bits > 4096) await file.read(head.subarray(0, Math.min(head.byteLength, 2 ** bits)), 0);
      const h = parseHeader(head.subarray(0, Math.min(head.byteLength, 2 ** Math.min(Math.max(bits, MIN_CLUSTER_BITS), MAX_CLUSTER_BITS))), file.size);
      if (!readOnly) {
        if (h.incompatible & INCOMPAT_CORRUPT) {
          throw new BlockError('corrupt', `${path} is marked corrupt (incompatible bit 1); open it read-only, or repair it with 'ioplane-img check -r all'`, { field: 'incompatible_features', bits: INCOMPAT_CORRUPT });
        }
        if (h.nbSnapshots > 0) throw new BlockError('unsupported', `${path} has ${h.nbSnapshots} internal snapshot(s): writing such images is not supported; open it read-only`, { field: 'nb_snapshots' });
      }
      const cs = 2 ** h.clusterBits;
      const l1 = new Uint8Array(h.l1Size * 8);
      await file.read(l1, h.l1TableOffset);
      const rtBytes = h.refcountTableClusters * cs;
      const rtRaw = new Uint8Array(rtBytes);
      await file.read(rtRaw, h.refcountTableOffset);
      const rdv = new DataView(rtRaw.buffer);
      const reftable = new Float64Array(rtBytes / 8);
      for (let i = 0; i < reftable.length; i++) {
        const hi = rdv.getUint32(i * 8, false);
        const lo = rdv.getUint32(i * 8 + 4, false);
        reftable[i] = (hi & HI_OFFSET_MASK) * TWO32 + ((lo & LO_OFFSET_MASK) >>> 0);
        if (hi >>> 24 !== 0) throw corrupt(`refcount table entry ${i} has reserved bits set (${hex(hi)}${lo.toString(16).padStart(8, '0')})`, { field: 'refcount_table', index: i });
      }
      const snapshots = await readSnapshots(file, h);
      let backing: BlockBackend | undefined;
      if (h.backingFile !== undefined && !opts.noBacking) {
        backing = await openBackingOf(path, h.backingFile, h.backingFormat, opts.chain ?? [], opts.openBacking);
      }
      const q = new Qcow2Backend(file, h, l1, reftable, backing, snapshots, opts);
      try {
        await q.#afterOpen(path);
      } catch (e) {
        await backing?.close();
        throw e;
      }
      return q;
    } catch (e) {
      await file.close().catch(() => undefined);
      throw e;
    }
  }

  async #afterOpen(path: string): Promise<void> {
    if (this.readOnly) return;
    let rewrite = false;
    // "An implementation may only write to an image with unknown auto-clear features if it clears the
    // respective bits from this field first" (Header, bytes 88-95). We keep no bitmaps, so all go.
    if (this.#h.autoclear !== 0n) {
      this.#h.autoclear = 0n;
      rewrite = true;
    }
    if (this.dirtyBit) {
      // Dirty bit: refcounts may be inconsistent; repair before writing (Header, bytes 72-79, bit 0).
      const r = await this.check(true);
      if (r.corruptions - r.corruptionsFixed > 0) {
        throw corrupt(`${path} was left dirty and its refcounts could not be repaired: ${r.messages.slice(0, 3).join('; ')}`);
      }
      this.#h.incompatible &= ~INCOMPAT_DIRTY;
      rewrite = true;
    }
    if (rewrite) await this.#writeHeader();
  }

  async #writeHeader(): Promise<void> {
    // The whole first cluster, as QEMU writes it: it holds only the header, its extensions and
    // the backing file name (Header extensions), so no stale extension bytes survive a rewrite.
    await this.#file.write(serializeHeader(this.#h), 0);
    await this.#file.datasync();
  }

  // ---------------------------------------------------------------- validation

  #checkTableOffset(what: string, off: number): void {
    const cs = this.clusterSize;
    if (off % cs !== 0) this.#fail(`${what} offset ${hex(off)} is not aligned to the ${cs}-byte cluster`, { offset: off });
    if (off + cs > this.#file.size) this.#fail(`${what} at ${hex(off)} lies outside the ${this.#file.size}-byte file`, { offset: off });
    if (this.#overlapsFixedMetadata(off, cs)) this.#fail(`${what} at ${hex(off)} overlaps the header, the L1 table or the refcount table`, { offset: off });
  }

  /** Whether the refcount block at `off` (0: none) can be read: aligned, inside the file, clear of the fixed metadata. */
  #usableRefblock(off: number): boolean {
    const cs = this.clusterSize;
    return off !== 0 && off % cs === 0 && off + cs <= this.#file.size && !this.#overlapsFixedMetadata(off, cs);
  }

  #overlapsFixedMetadata(off: number, len: number): boolean {
    const cs = this.clusterSize;
    return (
      overlaps(off, len, 0, cs) ||
      overlaps(off, len, this.#h.l1TableOffset, this.#h.l1Size * 8) ||
      overlaps(off, len, this.#reftableOffset, this.#reftable.length * 8)
    );
  }

  /** Metadata corruption found while the image is in use: QEMU sets the corrupt bit on writable images (Header bit 1). */
  #fail(message: string, detail: Record<string, unknown>): never {
    if (!this.readOnly && !this.#closed && !this.corruptBit) {
      this.#h.incompatible |= INCOMPAT_CORRUPT;
      void this.#writeHeader().catch(() => undefined);
    }
    throw corrupt(message, detail);
  }

  // ---------------------------------------------------------------- L1 / L2

  #l1Entry(i: number): { off: number; copied: boolean } {
    const hi = this.#l1dv.getUint32(i * 8, false);
    const lo = this.#l1dv.getUint32(i * 8 + 4, false);
    return { off: (hi & HI_OFFSET_MASK) * TWO32 + ((lo & LO_OFFSET_MASK) >>> 0), copied: (hi & HI_COPIED) !== 0 };
  }

  #setL1(i: number, off: number): void {
    this.#l1dv.setUint32(i * 8, (HI_COPIED | Math.floor(off / TWO32)) >>> 0, false);
    this.#l1dv.setUint32(i * 8 + 4, off % TWO32, false);
    this.#l1DirtyLo = Math.min(this.#l1DirtyLo, i);
    this.#l1DirtyHi = Math.max(this.#l1DirtyHi, i);
  }

  /** The L2 table covering guest cluster `vc`, or null if the L1 entry is empty. */
  #l2Table(vc: number): Table | null | Promise<Table> {
    const i = Math.floor(vc / this.l2Entries);
    const hi = this.#l1dv.getUint32(i * 8, false);
    const lo = this.#l1dv.getUint32(i * 8 + 4, false);
    const off = (hi & HI_OFFSET_MASK) * TWO32 + ((lo & LO_OFFSET_MASK) >>> 0);
    if (off === 0) return null;
    return this.#l2.get(off);
  }

  /** For writing: the L2 table of `vc`, allocating it if the L1 entry is empty (exclusive lock held). */
  async #l2TableForWrite(vc: number): Promise<Table> {
    const i = Math.floor(vc / this.l2Entries);
    const e = this.#l1Entry(i);
    if (e.off !== 0) {
      const t = await this.#l2.get(e.off);
      if (!e.copied) {
        const rc = await this.#getRefcount(e.off / this.clusterSize);
        if (rc !== 1) throw new BlockError('unsupported', `L2 table at ${hex(e.off)} is shared (refcount ${rc}); writing it needs snapshot support`, { offset: e.off });
        this.#setL1(i, e.off);
      }
      return t;
    }
    const off = await this.#allocClusters(1);
    const t = this.#l2.create(off);
    this.#setL1(i, off);
    return t;
  }

  // ---------------------------------------------------------------- read

  read(offset: number, segments: Segments): Promise<void> {
    let len: number;
    try {
      len = segmentsLength(segments);
      checkRequest(this, 'read', offset, len, this.#closed);
    } catch (e) {
      return rejectWith(e);
    }
    if (len === 0) return Promise.resolve();
    const w = this.#lock.shared();
    return w === undefined ? this.#readLocked(offset, len, segments) : w.then(() => this.#readLocked(offset, len, segments));
  }

  /** A read holding the shared lock (released here). */
  async #readLocked(offset: number, len: number, segments: Segments): Promise<void> {
    try {
      if (this.#closed) throw new BlockError('closed', 'read on a closed block back-end');
      await this.#readRange(offset, len, segments, 0);
    } finally {
      this.#lock.releaseShared();
    }
  }

  async #shared<T>(fn: () => Promise<T>): Promise<T> {
    const w = this.#lock.shared();
    if (w !== undefined) await w;
    try {
      if (this.#closed) throw new BlockError('closed', 'request on a closed block back-end');
      return await fn();
    } finally {
      this.#lock.releaseShared();
    }
  }

  async #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const w = this.#lock.exclusive();
    if (w !== undefined) await w;
    try {
      if (this.#closed) throw new BlockError('closed', 'request on a closed block back-end');
      const r = await fn();
      if (this.#l2.overCapacity || this.#rc.overCapacity) await this.#writeback();
      return r;
    } finally {
      this.#lock.releaseExclusive();
    }
  }

  /** Guest bytes [off, off+len) into request bytes [at, at+len) of `segs`. No lock taken. */
  async #readRange(off: number, len: number, segs: Segments, at: number): Promise<void> {
    const cs = this.clusterSize;
    // Fast path: the whole request in one standard data cluster (a 4 KiB guest read): one preadv
    // straight into the caller's segments, nothing allocated here.
    if (at === 0 && !this.extendedL2) {
      const vc = Math.floor(off / cs);
      const inC = off - vc * cs;
      if (inC + len <= cs) {
        let t = this.#l2Table(vc);
        if (t instanceof Promise) t = await t;
        if (t !== null) {
          const ei = (vc % this.l2Entries) * 8;
          const hi = t.dv.getUint32(ei, false);
          const lo = t.dv.getUint32(ei + 4, false);
          if (!(hi & HI_COMPRESSED) && !(lo & LO_ZERO && this.#h.version === 3)) {
            const host = this.#dataOffset(hi, lo, vc);
            if (host !== 0) return this.#file.readv(segs, host + inC);
          }
        }
      }
    }
    const ios: Promise<void>[] = [];
    let runHost = -1;
    let runAt = 0;
    let runLen = 0;
    const flushRun = (): void => {
      if (runLen > 0) ios.push(this.#file.readv(sliceSegments(segs, runAt, runLen), runHost));
      runLen = 0;
    };
    const end = off + len;
    let pos = off;
    try {
      while (pos < end) {
        const vc = Math.floor(pos / cs);
        const inC = pos - vc * cs;
        const n = Math.min(end - pos, cs - inC);
        const reqAt = at + (pos - off);
        let t = this.#l2Table(vc);
        if (t instanceof Promise) t = await t;
        if (t === null) {
          flushRun();
          ios.push(this.#readLower(pos, n, segs, reqAt));
          pos += n;
          continue;
        }
        const ei = (vc % this.l2Entries) * this.#entryBytes;
        const hi = t.dv.getUint32(ei, false);
        const lo = t.dv.getUint32(ei + 4, false);
        if (hi & HI_COMPRESSED) {
          flushRun();
          ios.push(this.#readCompressed(hi, lo).then((data) => scatterFrom(segs, reqAt, data.subarray(inC, inC + n))));
          pos += n;
          continue;
        }
        const host = this.#dataOffset(hi, lo, vc);
        if (this.extendedL2) {
          flushRun();
          const zeroBits = t.dv.getUint32(ei + 8, false);
          const allocBits = t.dv.getUint32(ei + 12, false);
          this.#checkBitmap(vc, host, allocBits, zeroBits);
          const ss = this.subclusterSize;
          let p = inC;
          const stop = inC + n;
          while (p < stop) {
            const sc = Math.floor(p / ss);
            const bit = 1 << sc;
            let q = (sc + 1) * ss;
            // Extend over following subclusters of the same state.
            const state = allocBits & bit ? 1 : zeroBits & bit ? 2 : 0;
            for (let s2 = sc + 1; s2 < 32 && q < stop; s2++) {
              const b2 = 1 << s2;
              const st2 = allocBits & b2 ? 1 : zeroBits & b2 ? 2 : 0;
              if (st2 !== state) break;
              q += ss;
            }
            q = Math.min(q, stop);
            const ra = reqAt + (p - inC);
            if (state === 1) ios.push(this.#file.readv(sliceSegments(segs, ra, q - p), host + p));
            else if (state === 2) zeroSegments(segs, ra, q - p);
            else ios.push(this.#readLower(vc * cs + p, q - p, segs, ra));
            p = q;
          }
          pos += n;
          continue;
        }
        if (lo & LO_ZERO && this.#h.version === 3) {
          flushRun();
          zeroSegments(segs, reqAt, n);
        } else if (host === 0) {
          flushRun();
          ios.push(this.#readLower(pos, n, segs, reqAt));
        } else {
          if (runLen > 0 && runHost + runLen === host + inC) runLen += n;
          else {
            flushRun();
            runHost = host + inC;
            runAt = reqAt;
            runLen = n;
          }
        }
        pos += n;
      }
      flushRun();
    } catch (e) {
      // A corrupt entry further on: the reads started for earlier clusters still run into the
      // caller's buffers and may fail too. Let them finish, unobserved, before the error goes up.
      await settled(ios);
      throw e;
    }
    if (ios.length === 1) await ios[0];
    else if (ios.length > 1) await settled(ios);
  }

  /** Host offset of a standard cluster descriptor, validated (Standard Cluster Descriptor). */
  #dataOffset(hi: number, lo: number, vc: number): number {
    const host = (hi & HI_OFFSET_MASK) * TWO32 + ((lo & LO_OFFSET_MASK) >>> 0);
    if (host === 0) return 0;
    if (host % this.clusterSize !== 0) this.#fail(`L2 entry of guest cluster ${vc} points at unaligned host offset ${hex(host)}`, { cluster: vc, offset: host });
    if (host + this.clusterSize > this.#file.size + this.clusterSize) this.#fail(`L2 entry of guest cluster ${vc} points at ${hex(host)}, past the end of the ${this.#file.size}-byte file`, { cluster: vc, offset: host });
    if (overlaps(host, this.clusterSize, 0, this.clusterSize)) this.#fail(`L2 entry of guest cluster ${vc} points into the header cluster`, { cluster: vc, offset: host });
    return host;
  }

  #checkBitmap(vc: number, host: number, alloc: number, zero: number): void {
    // Extended L2 Entries: a subcluster is not both allocated and zero; allocated needs a host offset.
    if ((alloc & zero) !== 0) this.#fail(`extended L2 entry of guest cluster ${vc} marks subclusters ${hex((alloc & zero) >>> 0)} both allocated and zero`, { cluster: vc });
    if (alloc !== 0 && host === 0) this.#fail(`extended L2 entry of guest cluster ${vc} has allocated subclusters but no host offset`, { cluster: vc });
  }

  /** Read guest bytes that this layer does not hold: from the backing file, or zeros past it. */
  #readLower(pos: number, n: number, segs: Segments, at: number): Promise<void> {
    const b = this.backing;
    if (b === undefined || pos >= b.size) {
      zeroSegments(segs, at, n);
      return Promise.resolve();
    }
    const inB = Math.min(n, b.size - pos);
    if (inB < n) zeroSegments(segs, at + inB, n - inB);
    return b.read(pos, sliceSegments(segs, at, inB));
  }

  /** Compressed Clusters Descriptor: offset in bits 0..x-1, extra sectors in x..61, x = 62 - (cluster_bits - 8). */
  #compressedLocation(hi: number, lo: number): { offset: number; sectors: number } {
    const x = 62 - (this.clusterBits - 8);
    const e = (BigInt(hi) << 32n) | BigInt(lo >>> 0);
    const offset = Number(e & ((1n << BigInt(x)) - 1n));
    const sectors = Number((e >> BigInt(x)) & ((1n << BigInt(62 - x)) - 1n)) + 1;
    return { offset, sectors };
  }

  async #readCompressed(hi: number, lo: number): Promise<Uint8Array> {
    const key = `${hi}:${lo}`;
    if (this.#lastCompressed?.key === key) return this.#lastCompressed.data;
    const writes = this.#compressedWrites;
    const { offset, sectors } = this.#compressedLocation(hi, lo);
    if (offset >= this.#file.size || offset < this.clusterSize) {
      this.#fail(`compressed cluster at ${hex(offset)} lies outside the ${this.#file.size}-byte file or in the header`, { offset });
    }
    const csize = sectors * 512 - (offset & 511);
    const raw = new Uint8Array(Math.min(csize, this.#file.size - offset));
    await this.#file.read(raw, offset);
    let data: Uint8Array;
    try {
      if (this.#h.compressionType === 1) {
        data = zstdCluster(raw, this.clusterSize);
      } else {
        data = await inflateRaw(raw, { maxOutputLength: this.clusterSize, finishFlush: 2 /* Z_SYNC_FLUSH */ });
      }
    } catch (e) {
      throw corrupt(`compressed cluster at ${hex(offset)} (${csize} bytes) does not decompress: ${(e as Error).message}`, { offset });
    }
    if (data.byteLength !== this.clusterSize) {
      throw corrupt(`compressed cluster at ${hex(offset)} decompresses to ${data.byteLength} bytes, not ${this.clusterSize}`, { offset });
    }
    if (writes === this.#compressedWrites) this.#lastCompressed = { key, data };
    return data;
  }

  // ---------------------------------------------------------------- write

  write(offset: number, segments: Segments): Promise<void> {
    let len: number;
    try {
      len = segmentsLength(segments);
      checkRequest(this, 'write', offset, len, this.#closed);
    } catch (e) {
      return rejectWith(e);
    }
    if (len === 0) return Promise.resolve();
    return this.#trackOp(this.#write(offset, len, segments));
  }

  async #trackOp<T>(p: Promise<T>): Promise<T> {
    this.#opsInflight++;
    try {
      return await p;
    } finally {
      if (--this.#opsInflight === 0) for (const w of this.#opsIdle.splice(0)) w();
    }
  }

  /**
   * A write: in place under the shared lock when every cluster is this layer's own; otherwise
   * under the exclusive lock, where clusters that are plainly unallocated get new host clusters
   * reserved and the data goes out with the lock released (so allocating writes overlap), the L2
   * entries being set after the data is written. A cluster another request is allocating is
   * waited for, then the write starts over (writes are idempotent).
   */
  async #write(offset: number, len: number, segs: Segments): Promise<void> {
    for (;;) {
      if (await this.#shared(() => this.#writeInPlace(offset, len, segs))) return;
      const r = await this.#exclusive(() => this.#planWrite(offset, len, segs));
      if (r === undefined) return;
      if (r instanceof Retry) {
        await r.wait;
        continue;
      }
      await this.#runPlan(r, offset, len, segs);
      return;
    }
  }

  /** Exclusive lock held: reserve and allocate for the unlocked path, or do the write here. */
  async #planWrite(off: number, len: number, segs: Segments): Promise<Plan | Retry | undefined> {
    const cs = this.clusterSize;
    const vc0 = Math.floor(off / cs);
    const vc1 = Math.floor((off + len - 1) / cs);
    for (let vc = vc0; vc <= vc1; vc++) {
      const r = this.#reserved.get(vc);
      if (r !== undefined) return new Retry(r.wait);
    }
    await this.#beginMetadataChange();
    if (!this.extendedL2) {
      const seen: number[] = [];
      let plain = true;
      for (let vc = vc0; vc <= vc1 && plain; vc++) {
        const t = await this.#l2TableForWrite(vc);
        const ei = (vc % this.l2Entries) * 8;
        const hi = t.dv.getUint32(ei, false);
        const lo = t.dv.getUint32(ei + 4, false);
        if (hi & HI_COMPRESSED || this.#dataOffset(hi, lo, vc) !== 0) plain = false;
        seen.push(hi, lo);
      }
      if (plain) {
        const k = vc1 - vc0 + 1;
        const host = await this.#allocClusters(k);
        this.#checkDataTarget(host, k * cs);
        for (let i = 0; i < k; i++) {
          let release!: () => void;
          const wait = new Promise<void>((resolve) => (release = resolve));
          this.#reserved.set(vc0 + i, { wait, release });
          this.#reservedHost.add(host / cs + i);
        }
        return { vc0, k, host, seen };
      }
    }
    await this.#writeAllocating(off, len, segs);
    return undefined;
  }

  /** The unlocked part of an allocating write: lower layer around partial clusters, one pwritev, then the L2 entries. */
  async #runPlan(plan: Plan, off: number, len: number, segs: Segments): Promise<void> {
    const cs = this.clusterSize;
    const { vc0, k, host } = plan;
    const end = off + len;
    let committed = false;
    try {
      const iov: Uint8Array[] = [];
      const partial = async (vc: number, i: number): Promise<Uint8Array> => {
        const buf = new Uint8Array(cs);
        const lo = plan.seen[i * 2 + 1]!;
        const csz = Math.min(cs, this.size - vc * cs);
        // Zero flag: the cluster reads as zeros; otherwise what lies below (backing file or zeros).
        if (!(lo & LO_ZERO && this.#h.version === 3)) await this.#readLower(vc * cs, csz, [buf.subarray(0, csz)], 0);
        const a = Math.max(off, vc * cs);
        const b = Math.min(end, (vc + 1) * cs);
        gatherInto(segs, a - off, b - a, buf, a - vc * cs);
        return buf;
      };
      const headPartial = off % cs !== 0 || (k === 1 && end < Math.min((vc0 + 1) * cs, this.size));
      const vcLast = vc0 + k - 1;
      const tailPartial = k > 1 && end % cs !== 0 && end < this.size;
      const midStart = headPartial ? (vc0 + 1) * cs : off;
      const midEnd = tailPartial ? vcLast * cs : end;
      if (headPartial) iov.push(await partial(vc0, 0));
      if (midEnd > midStart) iov.push(...sliceSegments(segs, midStart - off, midEnd - midStart));
      if (tailPartial) iov.push(await partial(vcLast, k - 1));
      await this.#file.writev(iov, host + (headPartial ? 0 : off - vc0 * cs));
      this.#dataDirty = true;
      await this.#exclusive(async () => {
        for (let i = 0; i < k; i++) {
          const vc = vc0 + i;
          const t = await this.#l2TableForWrite(vc);
          const ei = (vc % this.l2Entries) * 8;
          const hi = t.dv.getUint32(ei, false);
          const lo = t.dv.getUint32(ei + 4, false);
          if (hi !== plan.seen[i * 2] || lo !== plan.seen[i * 2 + 1]) this.#releaseEntry(hi, lo);
          this.#setL2(t, vc, host + i * cs, false);
        }
        committed = true;
      });
    } finally {
      if (!committed) {
        // The data write failed: nothing points at the reserved clusters; give them back.
        await this.#exclusive(async () => {
          for (let i = 0; i < k; i++) await this.#setRefcount(host / cs + i, 0);
          this.#freeHint = Math.min(this.#freeHint, host / cs);
        }).catch(() => undefined);
      }
      for (let i = 0; i < k; i++) {
        this.#reserved.get(vc0 + i)?.release();
        this.#reserved.delete(vc0 + i);
        this.#reservedHost.delete(host / cs + i);
      }
    }
  }

  /** Run `fn` under the exclusive lock, waiting out and retrying on clusters being allocated. */
  async #exclusiveRetry(fn: () => Promise<void>): Promise<void> {
    for (;;) {
      try {
        return await this.#exclusive(fn);
      } catch (e) {
        if (!(e instanceof Retry)) throw e;
        await e.wait;
      }
    }
  }

  /** The fast path: every cluster touched is this layer's own (COPIED, no zero flag). Returns false to take the slow path. */
  async #writeInPlace(off: number, len: number, segs: Segments): Promise<boolean> {
    const cs = this.clusterSize;
    const end = off + len;
    // Fast path: one standard cluster of this layer, written in place from the caller's segments.
    if (!this.extendedL2 && Math.floor(off / cs) === Math.floor((end - 1) / cs)) {
      const vc = Math.floor(off / cs);
      let t = this.#l2Table(vc);
      if (t instanceof Promise) t = await t;
      if (t === null) return false;
      const ei = (vc % this.l2Entries) * 8;
      const hi = t.dv.getUint32(ei, false);
      const lo = t.dv.getUint32(ei + 4, false);
      if (!(hi & HI_COPIED) || hi & HI_COMPRESSED || lo & LO_ZERO) return false;
      const host = this.#dataOffset(hi, lo, vc);
      if (host === 0) return false;
      this.#dataDirty = true;
      await this.#file.writev(segs, host + (off - vc * cs));
      return true;
    }
    // First pass: resolve every host offset (no I/O issued until all are known).
    const hosts: number[] = [];
    for (let pos = off; pos < end; ) {
      const vc = Math.floor(pos / cs);
      const inC = pos - vc * cs;
      const n = Math.min(end - pos, cs - inC);
      let t = this.#l2Table(vc);
      if (t instanceof Promise) t = await t;
      if (t === null) return false;
      const ei = (vc % this.l2Entries) * this.#entryBytes;
      const hi = t.dv.getUint32(ei, false);
      const lo = t.dv.getUint32(ei + 4, false);
      if (!(hi & HI_COPIED) || hi & HI_COMPRESSED) return false;
      if (this.extendedL2) {
        const alloc = t.dv.getUint32(ei + 12, false);
        const ss = this.subclusterSize;
        for (let sc = Math.floor(inC / ss); sc * ss < inC + n; sc++) if (!(alloc & (1 << sc))) return false;
      } else if (lo & LO_ZERO) return false;
      const host = this.#dataOffset(hi, lo, vc);
      if (host === 0) return false;
      hosts.push(host + inC, n);
      pos += n;
    }
    const ios: Promise<void>[] = [];
    let at = 0;
    for (let i = 0; i < hosts.length; ) {
      const start = hosts[i]!;
      let n = hosts[i + 1]!;
      i += 2;
      while (i < hosts.length && hosts[i] === start + n) {
        n += hosts[i + 1]!;
        i += 2;
      }
      ios.push(this.#file.writev(sliceSegments(segs, at, n), start));
      at += n;
    }
    this.#dataDirty = true;
    await settled(ios);
    return true;
  }

  /** The slow path (exclusive lock held): allocation, copy-on-write, zero clusters. `segs` null writes zeros. */
  async #writeAllocating(off: number, len: number, segs: Segments | null): Promise<void> {
    await this.#beginMetadataChange();
    const cs = this.clusterSize;
    const end = off + len;
    for (let vc = Math.floor(off / cs); vc <= Math.floor((end - 1) / cs); vc++) {
      const r = this.#reserved.get(vc);
      if (r !== undefined) throw new Retry(r.wait);
    }
    let pos = off;
    while (pos < end) {
      const vc = Math.floor(pos / cs);
      const inC = pos - vc * cs;
      const n = Math.min(end - pos, cs - inC);
      const t = await this.#l2TableForWrite(vc);
      const ei = (vc % this.l2Entries) * this.#entryBytes;
      const hi = t.dv.getUint32(ei, false);
      const lo = t.dv.getUint32(ei + 4, false);
      const compressed = (hi & HI_COMPRESSED) !== 0;
      const host = compressed ? 0 : this.#dataOffset(hi, lo, vc);
      const own = !compressed && host !== 0 && (hi & HI_COPIED) !== 0;
      let inPlace = own;
      if (own && this.extendedL2) {
        const alloc = t.dv.getUint32(ei + 12, false);
        const ss = this.subclusterSize;
        for (let sc = Math.floor(inC / ss); sc * ss < inC + n; sc++) if (!(alloc & (1 << sc))) inPlace = false;
      } else if (own && lo & LO_ZERO) inPlace = false;
      const reqAt = pos - off;
      if (inPlace) {
        if (segs === null) await this.#file.zeroRange(host + inC, n, false);
        else await this.#file.writev(sliceSegments(segs, reqAt, n), host + inC);
        this.#dataDirty = true;
        pos += n;
        continue;
      }
      // Run of whole unallocated clusters: one contiguous allocation, one vectored write.
      if (segs !== null && inC === 0 && n === cs && !own && !compressed && host === 0) {
        let k = 1;
        while (pos + (k + 1) * cs <= end && vc + k < (Math.floor(vc / this.l2Entries) + 1) * this.l2Entries) {
          const ej = ((vc + k) % this.l2Entries) * this.#entryBytes;
          const hj = t.dv.getUint32(ej, false);
          const lj = t.dv.getUint32(ej + 4, false);
          if (hj !== 0 || (lj & ~LO_ZERO) !== 0) break;
          k++;
        }
        const newHost = await this.#allocClusters(k);
        this.#checkDataTarget(newHost, k * cs);
        await this.#file.writev(sliceSegments(segs, reqAt, k * cs), newHost);
        for (let j = 0; j < k; j++) this.#setL2(t, vc + j, newHost + j * cs, false);
        this.#dataDirty = true;
        pos += k * cs;
        continue;
      }
      // Extended L2 (Extended L2 Entries): allocate by subcluster, as QEMU does — only the touched
      // subclusters become allocated, the partial ones first filled from below; the others keep
      // reading from the backing file or as zeros.
      if (this.extendedL2 && !compressed && (own || host === 0)) {
        const ss = this.subclusterSize;
        const s0 = Math.floor(inC / ss);
        const s1 = Math.floor((inC + n - 1) / ss);
        let alloc = own ? t.dv.getUint32(ei + 12, false) : 0;
        let zero = t.dv.getUint32(ei + 8, false);
        const buf = this.#scratch;
        for (const sc of s0 === s1 ? [s0] : [s0, s1]) {
          const a = sc * ss;
          const covered = inC <= a && inC + n >= a + ss;
          if (!covered && !(alloc & (1 << sc))) {
            const lim = Math.min(ss, this.size - (vc * cs + a));
            buf.fill(0, a, a + ss);
            if (lim > 0) await this.#readRange(vc * cs + a, lim, [buf.subarray(a, a + lim)], 0);
          } else if (!covered) {
            await this.#file.read(buf.subarray(a, a + ss), host + a);
          }
        }
        if (segs === null) buf.fill(0, inC, inC + n);
        else gatherInto(segs, reqAt, n, buf, inC);
        const target = own ? host : await this.#allocClusters(1);
        if (!own) this.#checkDataTarget(target, cs);
        await this.#file.write(buf.subarray(s0 * ss, (s1 + 1) * ss), target + s0 * ss);
        this.#dataDirty = true;
        const mask = s1 - s0 === 31 ? 0xffffffff : (((1 << (s1 - s0 + 1)) - 1) << s0) >>> 0;
        alloc = (alloc | mask) >>> 0;
        zero = (zero & ~mask) >>> 0;
        this.#setExtL2(t, vc, target, alloc, zero);
        pos += n;
        continue;
      }
      // Copy-on-write of one cluster: the guest's current view, then the new bytes over it.
      const buf = this.#scratch;
      if (n < cs) {
        const csz = Math.min(cs, this.size - vc * cs);
        buf.fill(0, csz);
        await this.#readRange(vc * cs, csz, [buf.subarray(0, csz)], 0);
      }
      if (segs === null) buf.fill(0, inC, inC + n);
      else gatherInto(segs, reqAt, n, buf, inC);
      const target = own ? host : await this.#allocClusters(1);
      if (!own) this.#checkDataTarget(target, cs);
      await this.#file.write(buf, target);
      this.#dataDirty = true;
      if (!own) this.#releaseEntry(hi, lo);
      this.#setL2(t, vc, target, false);
      pos += n;
    }
  }

  #checkDataTarget(off: number, len: number): void {
    if (this.#overlapsFixedMetadata(off, len) || this.#overlapsCachedTables(off, len)) {
      this.#fail(`allocation of ${len} bytes at ${hex(off)} would overwrite metadata: refcounts are inconsistent`, { offset: off });
    }
  }

  #overlapsCachedTables(off: number, len: number): boolean {
    const cs = this.clusterSize;
    for (let c = off; c < off + len; c += cs) if (this.#l2.has(c) || this.#rc.has(c)) return true;
    return false;
  }

  /** Point guest cluster `vc` at `host` (0 = unallocated) with the zero flag / zero bitmap as asked. */
  #setL2(t: Table, vc: number, host: number, zero: boolean): void {
    const ei = (vc % this.l2Entries) * this.#entryBytes;
    const copied = host !== 0 ? HI_COPIED : 0;
    t.dv.setUint32(ei, (copied | Math.floor(host / TWO32)) >>> 0, false);
    if (this.extendedL2) {
      t.dv.setUint32(ei + 4, host % TWO32, false);
      t.dv.setUint32(ei + 8, zero ? 0xffffffff : 0, false);
      t.dv.setUint32(ei + 12, zero || host === 0 ? 0 : 0xffffffff, false);
    } else {
      t.dv.setUint32(ei + 4, (host % TWO32) + (zero ? LO_ZERO : 0), false);
    }
    this.#l2.markDirty(t);
  }

  /** An extended L2 entry: host cluster (COPIED when set) and its two subcluster bitmaps. */
  #setExtL2(t: Table, vc: number, host: number, alloc: number, zero: number): void {
    const ei = (vc % this.l2Entries) * 16;
    t.dv.setUint32(ei, ((host !== 0 ? HI_COPIED : 0) | Math.floor(host / TWO32)) >>> 0, false);
    t.dv.setUint32(ei + 4, host % TWO32, false);
    t.dv.setUint32(ei + 8, zero >>> 0, false);
    t.dv.setUint32(ei + 12, alloc >>> 0, false);
    this.#l2.markDirty(t);
  }

  /** The cluster(s) an L2 entry stops using: their refcounts drop after the L2 table is on disk. */
  #releaseEntry(hi: number, lo: number): void {
    if (hi & HI_COMPRESSED) {
      const { offset, sectors } = this.#compressedLocation(hi, lo);
      const start = offset - (offset % 512);
      const cs = this.clusterSize;
      for (let c = Math.floor(start / cs); c <= Math.floor((start + sectors * 512 - 1) / cs); c++) this.#pendingFree.push(c);
      return;
    }
    const host = (hi & HI_OFFSET_MASK) * TWO32 + ((lo & LO_OFFSET_MASK) >>> 0);
    if (host !== 0) this.#pendingFree.push(host / this.clusterSize);
  }

  /** Lazy refcounts: set the dirty bit, durably, before the first metadata change (Header, incompatible bit 0). */
  async #beginMetadataChange(): Promise<void> {
    if (this.lazyRefcounts && !this.dirtyBit) {
      this.#h.incompatible |= INCOMPAT_DIRTY;
      await this.#writeHeader();
    }
  }

  // ---------------------------------------------------------------- compressed writes

  /**
   * Store one whole guest cluster compressed (zlib raw deflate, 4 KiB window, as QEMU writes it),
   * or uncompressed when it does not shrink. For `convert -c`; the cluster must be unallocated.
   */
  writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    const cs = this.clusterSize;
    try {
      checkRequest(this, 'write', offset, Math.min(cs, this.size - offset), this.#closed);
      if (offset % cs !== 0 || data.byteLength !== cs) {
        throw new BlockError('invalid-argument', `a compressed write is one whole ${cs}-byte cluster at a cluster boundary`, { offset, length: data.byteLength });
      }
      if (this.#h.compressionType !== 0) throw new BlockError('unsupported', 'writing zstd-compressed clusters is not supported');
    } catch (e) {
      return rejectWith(e);
    }
    const z0 = deflateRaw(data, { windowBits: 12, memLevel: 9 });
    return this.#trackOp(this.#exclusiveRetry(async () => {
      const z = await z0;
      const held = this.#reserved.get(offset / cs);
      if (held !== undefined) throw new Retry(held.wait);
      if (z.byteLength >= cs - 512) return this.#writeAllocating(offset, Math.min(cs, this.size - offset), [data.subarray(0, Math.min(cs, this.size - offset))]);
      await this.#beginMetadataChange();
      const vc = offset / cs;
      const t = await this.#l2TableForWrite(vc);
      const ei = (vc % this.l2Entries) * this.#entryBytes;
      const hi = t.dv.getUint32(ei, false);
      const lo = t.dv.getUint32(ei + 4, false);
      const start = await this.#allocBytes(z.byteLength);
      this.#compressedWrites++;
      this.#lastCompressed = undefined;
      await this.#file.write(z, start);
      this.#dataDirty = true;
      const x = 62 - (this.clusterBits - 8);
      const nb = Math.ceil(((start % 512) + z.byteLength) / 512);
      const e = (1n << 62n) | (BigInt(nb - 1) << BigInt(x)) | BigInt(start);
      this.#releaseEntry(hi, lo);
      t.dv.setBigUint64(ei, e, false);
      if (this.extendedL2) t.dv.setBigUint64(ei + 8, 0n, false);
      this.#l2.markDirty(t);
    }));
  }

  /** Byte-granular allocation for compressed data; each host cluster touched gains one reference. */
  async #allocBytes(len: number): Promise<number> {
    const cs = this.clusterSize;
    const cur = this.#compressedCursor;
    const maxRc = this.refcountBits === 64 ? MAX_OFFSET : 2 ** this.refcountBits - 1;
    // Share the current cluster only while its refcount can take one more reference (1-bit refcounts cannot).
    if (cur !== undefined && cur.used < cs && (await this.#getRefcount(cur.offset / cs)) < maxRc) {
      const start = cur.offset + cur.used;
      const lastNeeded = Math.floor((start - (start % 512) + Math.ceil(((start % 512) + len) / 512) * 512 - 1) / cs);
      const first = cur.offset / cs;
      let ok = true;
      for (let c = first + 1; c <= lastNeeded; c++) if ((await this.#getRefcount(c)) !== 0 || c < this.#allocFloor) ok = false;
      if (ok) {
        await this.#addRefcount(first, 1);
        for (let c = first + 1; c <= lastNeeded; c++) await this.#addRefcount(c, 1);
        this.#freeHint = Math.max(this.#freeHint, lastNeeded + 1);
        this.#highWater = Math.max(this.#highWater, lastNeeded + 1);
        this.#compressedCursor = { offset: lastNeeded * cs, used: start + len - lastNeeded * cs };
        return start;
      }
    }
    const clusters = Math.ceil((len + 511) / cs);
    const off = await this.#allocClusters(clusters);
    this.#compressedCursor = { offset: off + (clusters - 1) * cs, used: len - (clusters - 1) * cs };
    return off;
  }

  // ---------------------------------------------------------------- refcounts

  #refblockOffset(ti: number): number {
    return ti < this.#reftable.length ? this.#reftable[ti]! : 0;
  }

  #readRc(t: Table, i: number): number {
    const bits = this.refcountBits;
    switch (bits) {
      case 8:
        return t.buf[i]!;
      case 16:
        return t.dv.getUint16(i * 2, false);
      case 32:
        return t.dv.getUint32(i * 4, false);
      case 64:
        return t.dv.getUint32(i * 8, false) * TWO32 + t.dv.getUint32(i * 8 + 4, false);
      default: {
        // Sub-byte widths: bit 0 is the least significant bit (Host cluster management).
        const bit = i * bits;
        return (t.buf[bit >> 3]! >> (bit & 7)) & ((1 << bits) - 1);
      }
    }
  }

  #writeRc(t: Table, i: number, v: number): void {
    const bits = this.refcountBits;
    switch (bits) {
      case 8:
        t.buf[i] = v;
        break;
      case 16:
        t.dv.setUint16(i * 2, v, false);
        break;
      case 32:
        t.dv.setUint32(i * 4, v, false);
        break;
      case 64:
        t.dv.setUint32(i * 8, Math.floor(v / TWO32), false);
        t.dv.setUint32(i * 8 + 4, v % TWO32, false);
        break;
      default: {
        const bit = i * bits;
        const mask = ((1 << bits) - 1) << (bit & 7);
        t.buf[bit >> 3] = (t.buf[bit >> 3]! & ~mask) | ((v << (bit & 7)) & mask);
      }
    }
    this.#rc.markDirty(t);
  }

  async #getRefcount(cluster: number): Promise<number> {
    const ti = Math.floor(cluster / this.refblockEntries);
    const off = this.#refblockOffset(ti);
    if (off === 0) return 0;
    let t = this.#rc.get(off);
    if (t instanceof Promise) t = await t;
    return this.#readRc(t, cluster % this.refblockEntries);
  }

  async #addRefcount(cluster: number, delta: number): Promise<void> {
    const ti = Math.floor(cluster / this.refblockEntries);
    const t = await this.#ensureRefblock(ti);
    const i = cluster % this.refblockEntries;
    const v = this.#readRc(t, i) + delta;
    const max = this.refcountBits === 64 ? MAX_OFFSET : 2 ** this.refcountBits - 1;
    if (v < 0) this.#fail(`refcount of cluster ${cluster} would drop below zero`, { cluster });
    if (v > max) throw new BlockError('unsupported', `refcount of cluster ${cluster} would overflow ${this.refcountBits}-bit refcounts`, { cluster });
    this.#writeRc(t, i, v);
  }

  async #setRefcount(cluster: number, v: number): Promise<void> {
    const t = await this.#ensureRefblock(Math.floor(cluster / this.refblockEntries));
    this.#writeRc(t, cluster % this.refblockEntries, v);
  }

  /** The refcount block of table index `ti`, allocating it (and growing the table) if missing. */
  async #ensureRefblock(ti: number, depth = 0): Promise<Table> {
    if (depth > 8) throw corrupt('refcount block allocation does not converge');
    const off = this.#refblockOffset(ti);
    if (off !== 0) return this.#rc.get(off);
    if (ti >= this.#reftable.length) {
      await this.#growReftable(ti);
      // Growing may itself have created this block (for the new table's own refcounts).
      const now = this.#refblockOffset(ti);
      if (now !== 0) return this.#rc.get(now);
    }
    const c = await this.#findFree(1);
    // The new block's own refcount: in itself when it covers itself, else in another block.
    const cti = Math.floor(c / this.refblockEntries);
    if (cti !== ti && this.#refblockOffset(cti) === 0) {
      // That other block does not exist yet: make it first, then start over. Making it may grow
      // the refcount table, which puts the table on disk and switches the header to it; had
      // this block been in the table by then with its own refcount still unrecorded, a crash
      // there would leave a referenced cluster with refcount 0 (an error, not a leak).
      await this.#ensureRefblock(cti, depth + 1);
      return this.#ensureRefblock(ti, depth + 1);
    }
    this.#freeHint = c + 1;
    this.#highWater = Math.max(this.#highWater, c + 1);
    const t = this.#rc.create(c * this.clusterSize);
    if (cti === ti) this.#writeRc(t, c % this.refblockEntries, 1);
    else {
      let other = this.#rc.get(this.#refblockOffset(cti));
      if (other instanceof Promise) other = await other;
      this.#writeRc(other, c % this.refblockEntries, 1);
    }
    this.#reftable[ti] = c * this.clusterSize;
    this.#reftableDirty = true;
    return t;
  }

  /** A bigger refcount table at the end of the file; the header switches to it after it is on disk. */
  async #growReftable(needIndex: number): Promise<void> {
    const cs = this.clusterSize;
    let entries = Math.max(needIndex + 1, this.#reftable.length * 2);
    let start = 0;
    let clusters = 0;
    for (let round = 0; round < 8; round++) {
      clusters = Math.ceil((entries * 8) / cs);
      start = await this.#findFree(clusters);
      const need = Math.floor((start + clusters * 3 + 16) / this.refblockEntries) + 1;
      if (need <= entries) break;
      entries = need;
    }
    entries = (clusters * cs) / 8;
    if (entries * 8 > MAX_REFTABLE_BYTES) throw new BlockError('unsupported', `the refcount table would exceed 8 MiB (${entries} entries)`);
    const oldOffset = this.#reftableOffset;
    const oldClusters = Math.ceil((this.#reftable.length * 8) / cs);
    const table = new Float64Array(entries);
    table.set(this.#reftable);
    this.#reftable = table;
    this.#reftableOffset = start * cs;
    this.#freeHint = start + clusters;
    this.#highWater = Math.max(this.#highWater, start + clusters);
    for (let c = start; c < start + clusters; c++) await this.#setRefcount(c, 1);
    // Order: refcount blocks, then the new table, then the header that points at it, then free the old.
    await this.#rc.writeBack();
    await this.#file.datasync();
    await this.#writeReftable();
    await this.#file.datasync();
    this.#h.refcountTableOffset = this.#reftableOffset;
    this.#h.refcountTableClusters = clusters;
    await this.#writeHeader();
    for (let c = oldOffset / cs; c < oldOffset / cs + oldClusters; c++) await this.#addRefcount(c, -1);
    this.#freeHint = Math.min(this.#freeHint, oldOffset / cs);
  }

  async #writeReftable(): Promise<void> {
    const buf = new Uint8Array(this.#reftable.length * 8);
    const dv = new DataView(buf.buffer);
    for (let i = 0; i < this.#reftable.length; i++) {
      const v = this.#reftable[i]!;
      dv.setUint32(i * 8, Math.floor(v / TWO32), false);
      dv.setUint32(i * 8 + 4, v % TWO32, false);
    }
    await this.#file.write(buf, this.#reftableOffset);
    this.#reftableDirty = false;
  }

  /** First run of `n` free clusters at or after the free hint (bounded by the 2^53 offset limit). */
  async #findFree(n: number): Promise<number> {
    const rbe = this.refblockEntries;
    let start = Math.max(this.#freeHint, this.#allocFloor);
    let run = 0;
    let c = start;
    const limit = MAX_OFFSET / this.clusterSize;
    // Past the end of the file and of everything allocated in this session nothing can be in use,
    // whatever stale refcounts say: stop scanning there, so a hostile refcount table (every entry
    // naming one block full of ones) cannot make this loop run for hours.
    const beyond = Math.max(Math.ceil(this.#file.size / this.clusterSize), this.#highWater);
    while (run < n) {
      if (c >= limit) throw new BlockError('unsupported', 'the image has no free cluster below 2^53 bytes');
      if (c >= this.#reservedStart && c < this.#reservedEnd) {
        run = 0;
        c = start = this.#reservedEnd;
        continue;
      }
      if (c >= beyond) {
        if (run === 0) start = c;
        return start;
      }
      const ti = Math.floor(c / rbe);
      const off = this.#refblockOffset(ti);
      // Up to the end of this block's range, or to the reservation if it starts before then.
      const blockEnd = c < this.#reservedStart ? Math.min((ti + 1) * rbe, this.#reservedStart) : (ti + 1) * rbe;
      if (off === 0) {
        // A whole block range with no refcount block: all free.
        const take = Math.min(n - run, blockEnd - c);
        run += take;
        c += take;
        continue;
      }
      let t = this.#rc.get(off);
      if (t instanceof Promise) t = await t;
      while (c < blockEnd && run < n) {
        if (this.#readRc(t, c % rbe) === 0) run++;
        else {
          run = 0;
          start = c + 1;
        }
        c++;
      }
    }
    return start;
  }

  /** Allocate `n` contiguous clusters (refcount 1 each); returns the byte offset. */
  async #allocClusters(n: number): Promise<number> {
    const start = await this.#findFree(n);
    this.#freeHint = start + n;
    this.#highWater = Math.max(this.#highWater, start + n);
    this.#reservedStart = start;
    this.#reservedEnd = start + n;
    try {
      for (let c = start; c < start + n; c++) await this.#setRefcount(c, 1);
    } finally {
      this.#reservedStart = this.#reservedEnd = 0;
    }
    return start * this.clusterSize;
  }

  // ---------------------------------------------------------------- flush / metadata order

  /** Write cached metadata in integrity order (see the class comment). Exclusive lock held. */
  async #writeback(): Promise<void> {
    const l1Dirty = this.#l1DirtyHi >= 0;
    const anyMeta = this.#rc.dirtyCount > 0 || this.#reftableDirty || this.#l2.dirtyCount > 0 || l1Dirty;
    if (!anyMeta && this.#pendingFree.length === 0) {
      if (this.#dataDirty) await this.#file.datasync();
      this.#dataDirty = false;
      return;
    }
    const lazy = this.lazyRefcounts && this.dirtyBit;
    if (this.#rc.dirtyCount > 0 || this.#reftableDirty) {
      await this.#rc.writeBack();
      if (this.#reftableDirty) {
        // Lazy or not, new refcount blocks reach the disk before the table entries that name
        // them: an entry naming a block past the end of the file makes the image fail
        // `qemu-img check` until a repair grows the file (the table changes only when a block is
        // added, so this costs little).
        await this.#file.datasync();
        await this.#writeReftable();
      }
    }
    if (this.#l2.dirtyCount > 0 || l1Dirty) {
      // Lazy refcounts excuse the refcount order only: data still reaches the disk before an
      // L2 entry points at it, or a crash leaves entries naming clusters that hold nothing
      // (compressed data past the end of the file reads as an I/O error).
      if (!lazy || this.#dataDirty) await this.#file.datasync();
      await this.#l2.writeBack();
      if (l1Dirty) {
        // New L2 tables reach the disk before the L1 entries that point at them, lazy or not
        // (as QEMU flushes its L2 cache before writing an L1 entry).
        await this.#file.datasync();
        const lo = this.#l1DirtyLo;
        const hi = this.#l1DirtyHi;
        await this.#file.write(this.#l1.subarray(lo * 8, (hi + 1) * 8), this.#h.l1TableOffset + lo * 8);
        this.#l1DirtyLo = Infinity;
        this.#l1DirtyHi = -1;
      }
    }
    await this.#file.datasync();
    this.#dataDirty = false;
    // Nothing on disk points at these clusters any more: now they may be freed.
    const freed = this.#pendingFree;
    this.#pendingFree = [];
    const cs = this.clusterSize;
    for (const c of freed) {
      await this.#addRefcount(c, -1);
      if ((await this.#getRefcount(c)) === 0) {
        this.#freeHint = Math.min(this.#freeHint, c);
        if (this.#compressedCursor !== undefined && this.#compressedCursor.offset === c * cs) this.#compressedCursor = undefined;
        // Give the space back to the file system (discard passthrough).
        if (c * cs < this.#file.size) await this.#file.zeroRange(c * cs, cs, true);
      }
    }
  }

  flush(): Promise<void> {
    if (this.#closed) return Promise.reject(new BlockError('closed', 'flush on a closed block back-end'));
    if (this.readOnly) return Promise.resolve();
    return this.#exclusive(async () => {
      await this.#writeback();
      // Frees applied above are themselves metadata; write them so a clean image stays clean.
      if (this.#rc.dirtyCount > 0) await this.#writeback();
    });
  }

  // ---------------------------------------------------------------- discard / write zeroes

  discard(offset: number, length: number): Promise<void> {
    try {
      checkRequest(this, 'discard', offset, length, this.#closed);
    } catch (e) {
      return rejectWith(e);
    }
    return this.#trackOp(this.#exclusiveRetry(() => this.#zero(offset, length, true, true)));
  }

  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    try {
      checkRequest(this, 'write-zeroes', offset, length, this.#closed);
    } catch (e) {
      return rejectWith(e);
    }
    return this.#trackOp(this.#exclusiveRetry(() => this.#zero(offset, length, mayUnmap, false)));
  }

  async #zero(off: number, len: number, unmap: boolean, discard: boolean): Promise<void> {
    if (len === 0) return;
    const cs = this.clusterSize;
    for (let vc = Math.floor(off / cs); vc <= Math.floor((off + len - 1) / cs); vc++) {
      const r = this.#reserved.get(vc);
      if (r !== undefined) throw new Retry(r.wait);
    }
    await this.#beginMetadataChange();
    const end = off + len;
    let pos = off;
    const v3 = this.#h.version === 3;
    const backed = this.backing !== undefined || this.#h.backingFile !== undefined;
    while (pos < end) {
      const vc = Math.floor(pos / cs);
      const inC = pos - vc * cs;
      const n = Math.min(end - pos, cs - inC);
      if (!backed) {
        // Without a backing file, what is not stored here reads as zeros already: skip it
        // (a whole missing L2 table in one step), allocating nothing.
        const t0 = this.#l2Table(vc);
        const t1 = t0 instanceof Promise ? await t0 : t0;
        if (t1 === null) {
          pos = Math.min(end, (Math.floor(vc / this.l2Entries) + 1) * this.l2Entries * cs);
          continue;
        }
        const ej = (vc % this.l2Entries) * this.#entryBytes;
        const hj = t1.dv.getUint32(ej, false);
        const lj = t1.dv.getUint32(ej + 4, false);
        const unstored = !(hj & HI_COMPRESSED) && (this.extendedL2 ? t1.dv.getUint32(ej + 12, false) === 0 : (hj & HI_OFFSET_MASK) === 0 && (lj & LO_OFFSET_MASK) === 0);
        if (unstored) {
          pos += n;
          continue;
        }
      }
      const whole = inC === 0 && (n === cs || vc * cs + n === this.size);
      if (!whole && this.extendedL2 && n >= this.subclusterSize) {
        await this.#zeroSubclusters(vc, inC, n, unmap, discard, backed);
        pos += n;
        continue;
      }
      if (!whole || (!v3 && backed && !this.extendedL2)) {
        // Part of a cluster (or v2 over a backing file, which has no zero flag): write zeros.
        await this.#writeAllocating(pos, n, null);
        pos += n;
        continue;
      }
      const t = await this.#l2TableForWrite(vc);
      const ei = (vc % this.l2Entries) * this.#entryBytes;
      const hi = t.dv.getUint32(ei, false);
      const lo = t.dv.getUint32(ei + 4, false);
      const compressed = (hi & HI_COMPRESSED) !== 0;
      const host = compressed ? 0 : this.#dataOffset(hi, lo, vc);
      const own = host !== 0 && (hi & HI_COPIED) !== 0;
      if (own && !unmap && !v3) {
        await this.#writeAllocating(pos, n, null); // Version 2 has no zero flag: zeros in place.
      } else if (own && !unmap) {
        this.#setL2(t, vc, host, true); // Preallocated zero cluster: keeps its space.
      } else {
        this.#releaseEntry(hi, lo);
        if (discard && !backed) this.#setL2(t, vc, 0, false);
        else if (v3) this.#setL2(t, vc, 0, true);
        else this.#setL2(t, vc, 0, false);
      }
      pos += n;
    }
  }

  /**
   * Zero part of a cluster of an extended-L2 image: whole subclusters by their bitmap bits (zero, or
   * unallocated when discarding without a backing file), the partial ends by writing zeros.
   */
  async #zeroSubclusters(vc: number, inC: number, n: number, unmap: boolean, discard: boolean, backed: boolean): Promise<void> {
    const cs = this.clusterSize;
    const ss = this.subclusterSize;
    const first = Math.ceil(inC / ss);
    const last = Math.floor((inC + n) / ss); // exclusive
    if (inC < first * ss) await this.#writeAllocating(vc * cs + inC, first * ss - inC, null);
    if (last * ss < inC + n) await this.#writeAllocating(vc * cs + last * ss, inC + n - last * ss, null);
    if (last <= first) return;
    const t0 = this.#l2Table(vc);
    const existing = t0 instanceof Promise ? await t0 : t0;
    if (existing === null && !backed) return;
    const t = await this.#l2TableForWrite(vc);
    const ei = (vc % this.l2Entries) * 16;
    const hi = t.dv.getUint32(ei, false);
    const lo = t.dv.getUint32(ei + 4, false);
    if (hi & HI_COMPRESSED) {
      // Compressed clusters have no subclusters: materialize, then zero.
      await this.#writeAllocating(vc * cs + first * ss, (last - first) * ss, null);
      return;
    }
    const host = this.#dataOffset(hi, lo, vc);
    if (host !== 0 && !(hi & HI_COPIED)) {
      await this.#writeAllocating(vc * cs + first * ss, (last - first) * ss, null);
      return;
    }
    const mask = last - first === 32 ? 0xffffffff : (((1 << (last - first)) - 1) << first) >>> 0;
    let alloc = t.dv.getUint32(ei + 12, false);
    let zero = t.dv.getUint32(ei + 8, false);
    alloc = (alloc & ~mask) >>> 0;
    zero = discard && !backed ? (zero & ~mask) >>> 0 : (zero | mask) >>> 0;
    void unmap; // The host cluster stays: other subclusters may still use it.
    this.#setExtL2(t, vc, host, alloc, zero);
  }

  // ---------------------------------------------------------------- block status

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    try {
      checkRequest(this, 'block-status', offset, length, this.#closed);
    } catch (e) {
      return rejectWith(e);
    }
    return this.#shared(async () => {
      const out: Extent[] = [];
      const cs = this.clusterSize;
      const end = offset + length;
      let pos = offset;
      while (pos < end) {
        const vc = Math.floor(pos / cs);
        const inC = pos - vc * cs;
        const n = Math.min(end - pos, cs - inC);
        let t = this.#l2Table(vc);
        if (t instanceof Promise) t = await t;
        if (t === null) {
          // No L2 table: the whole range it would cover is unallocated (one step, not one per cluster).
          const l2End = (Math.floor(vc / this.l2Entries) + 1) * this.l2Entries * cs;
          const k = Math.min(end, l2End) - pos;
          pushExtent(out, { offset: pos, length: k, kind: 'unallocated' });
          pos += k;
          continue;
        }
        const ei = (vc % this.l2Entries) * this.#entryBytes;
        const hi = t.dv.getUint32(ei, false);
        const lo = t.dv.getUint32(ei + 4, false);
        if (hi & HI_COMPRESSED) {
          pushExtent(out, { offset: pos, length: n, kind: 'data', compressed: true });
        } else if (this.extendedL2) {
          const host = this.#dataOffset(hi, lo, vc);
          const zeroBits = t.dv.getUint32(ei + 8, false);
          const allocBits = t.dv.getUint32(ei + 12, false);
          this.#checkBitmap(vc, host, allocBits, zeroBits);
          const ss = this.subclusterSize;
          for (let p = inC; p < inC + n; ) {
            const sc = Math.floor(p / ss);
            const q = Math.min((sc + 1) * ss, inC + n);
            const bit = 1 << sc;
            if (allocBits & bit) pushExtent(out, { offset: vc * cs + p, length: q - p, kind: 'data', hostOffset: host + p });
            else if (zeroBits & bit) pushExtent(out, host ? { offset: vc * cs + p, length: q - p, kind: 'zero', hostOffset: host + p } : { offset: vc * cs + p, length: q - p, kind: 'zero' });
            // QEMU's map reports the host offset of an unallocated subcluster in an allocated cluster; so do we.
            else pushExtent(out, host ? { offset: vc * cs + p, length: q - p, kind: 'unallocated', hostOffset: host + p } : { offset: vc * cs + p, length: q - p, kind: 'unallocated' });
            p = q;
          }
        } else {
          const host = this.#dataOffset(hi, lo, vc);
          if (v3Zero(this.#h.version, lo)) pushExtent(out, host ? { offset: pos, length: n, kind: 'zero', hostOffset: host + inC } : { offset: pos, length: n, kind: 'zero' });
          else if (host === 0) pushExtent(out, { offset: pos, length: n, kind: 'unallocated' });
          else pushExtent(out, { offset: pos, length: n, kind: 'data', hostOffset: host + inC });
        }
        pos += n;
      }
      return out;
    });
  }

  // ---------------------------------------------------------------- close

  async close(): Promise<void> {
    if (this.#closed) return;
    if (this.#opsInflight > 0) await new Promise<void>((resolve) => this.#opsIdle.push(resolve));
    if (this.#closed) return;
    if (!this.readOnly) {
      await this.#exclusive(async () => {
        await this.#writeback();
        if (this.#rc.dirtyCount > 0 || this.#pendingFree.length > 0) await this.#writeback();
        if (this.dirtyBit) {
          this.#h.incompatible &= ~INCOMPAT_DIRTY;
          await this.#writeHeader();
        }
      }).catch(async (e: unknown) => {
        this.#closed = true;
        await this.#file.close().catch(() => undefined);
        await this.backing?.close();
        throw e;
      });
    }
    const w = this.#lock.exclusive();
    if (w !== undefined) await w;
    this.#closed = true;
    this.#lock.releaseExclusive();
    await this.#file.close();
    await this.backing?.close();
  }

  // ---------------------------------------------------------------- check / repair

  /**
   * Walk every structure, count references per host cluster and compare with
   * the stored refcounts, as `qemu-img check` does. `repair` as `qemu-img
   * check -r`: 'leaks' lowers the refcounts of leaked clusters only; 'all'
   * (or true) also raises refcounts below their references, fixes
   * OFLAG_COPIED flags and grows the file over a refcount block named past its
   * end. Broken tables are reported, not rebuilt.
   */
  check(repair: boolean | 'leaks' | 'all' = false): Promise<Qcow2CheckResult> {
    if (repair !== true && repair !== false && repair !== 'leaks' && repair !== 'all') {
      return Promise.reject(new BlockError('invalid-argument', `check repair mode ${String(repair)} is not one of false, true, 'leaks', 'all'`));
    }
    const mode = repair === true ? 'all' : repair === false ? undefined : repair;
    const fixable = (r: Qcow2CheckResult): number => r.leaks + (mode === 'all' ? r.corruptions : 0);
    const run = async (): Promise<Qcow2CheckResult> => {
      if (!this.readOnly) await this.#writeback();
      const first = await this.#checkOnce(mode);
      if (mode === undefined || fixable(first) === 0) return first;
      let r = first;
      // Repair can allocate refcount blocks, which changes what is referenced: re-check, bounded.
      for (let round = 0; round < 4; round++) {
        await this.#writeback();
        if (this.#rc.dirtyCount > 0) await this.#writeback();
        r = await this.#checkOnce(undefined);
        if (fixable(r) === 0) break;
        await this.#checkOnce(mode);
      }
      r.leaksFixed = Math.max(0, first.leaks - r.leaks);
      r.corruptionsFixed = Math.max(0, first.corruptions - r.corruptions);
      r.repairMessages = first.messages;
      return r;
    };
    if (mode !== undefined && this.readOnly) return Promise.reject(new BlockError('read-only', 'repair needs the image opened read-write'));
    return this.readOnly ? this.#shared(run) : this.#exclusive(run);
  }

  async #checkOnce(repair: 'leaks' | 'all' | undefined): Promise<Qcow2CheckResult> {
    const cs = this.clusterSize;
    const messages: string[] = [];
    let corruptions = 0;
    const fixErrors = repair === 'all';
    if (fixErrors) {
      // A refcount block the table names past the end of the file (a crash kept the table but not
      // the block): grow the file over it, as QEMU's check does; the block reads as zeros and the
      // comparison below gives every cluster it covers its refcount. Not for offsets absurdly far.
      let growTo = 0;
      for (let ti = 0; ti < this.#reftable.length; ti++) {
        const off = this.#reftable[ti]!;
        if (off === 0 || off % cs !== 0 || off + cs <= this.#file.size || off + cs > this.#file.size + REPAIR_GROW_LIMIT) continue;
        if (this.#overlapsFixedMetadata(off, cs)) continue;
        messages.push(`Repairing refcount block ${ti} is outside the image`);
        corruptions++;
        growTo = Math.max(growTo, off + cs);
      }
      if (growTo > 0) await this.#file.truncate(growTo);
    }
    const fileClusters = Math.ceil(this.#file.size / cs);
    const refs = new Uint32Array(fileClusters);
    let compressed = 0;
    let allocatedData = 0;
    let fragmented = 0;
    let lastHost = -1;
    /** A corruption; `repairing` when this pass fixes it (qemu-img check -r prints those as "Repairing"). */
    const err = (m: string, repairing = false): void => {
      corruptions++;
      if (messages.length < 1000) messages.push(`${repairing ? 'Repairing' : 'ERROR'} ${m}`);
    };
    const inc = (off: number, len: number, what: string): boolean => {
      if (len <= 0) return true;
      const first = Math.floor(off / cs);
      const last = Math.floor((off + len - 1) / cs);
      if (last >= fileClusters) {
        err(`${what} at ${hex(off)} is outside the image (${this.#file.size} bytes)`);
        return false;
      }
      for (let c = first; c <= last; c++) refs[c]!++;
      return true;
    };
    inc(0, cs, 'header');
    const copiedChecks: { kind: 'l1' | 'l2'; table?: Table; index: number; host: number; copied: boolean }[] = [];
    // Work budget: a hostile image can point every L1 entry of every snapshot at one big L2 table.
    let budget = CHECK_ENTRY_BUDGET;
    const walkL1 = async (l1: DataView, n: number, active: boolean): Promise<void> => {
      for (let i = 0; i < n; i++) {
        const hi0 = l1.getUint32(i * 8, false);
        const lo0 = l1.getUint32(i * 8 + 4, false);
        budget -= hi0 === 0 && lo0 === 0 ? 1 : 1 + this.l2Entries;
        if (budget < 0) {
          err(`the L1/L2 tables reference more than ${CHECK_ENTRY_BUDGET} entries; check stopped`);
          return;
        }
        const hi = l1.getUint32(i * 8, false);
        const lo = l1.getUint32(i * 8 + 4, false);
        const off = (hi & HI_OFFSET_MASK) * TWO32 + ((lo & LO_OFFSET_MASK) >>> 0);
        if (hi & L1_HI_RESERVED || lo & L1_LO_RESERVED) err(`L1 entry ${i} has reserved bits set`);
        if (off === 0) continue;
        if (off % cs !== 0) {
          err(`L2 table offset ${hex(off)} (L1 index ${i}) is not cluster aligned`);
          continue;
        }
        if (!inc(off, cs, `L2 table (L1 index ${i})`)) continue;
        if (active) copiedChecks.push({ kind: 'l1', index: i, host: off, copied: (hi & HI_COPIED) !== 0 });
        const t = active ? await this.#l2.get(off) : await readTable(this.#file, off, cs);
        for (let j = 0; j < this.l2Entries; j++) {
          const ei = j * this.#entryBytes;
          const ehi = t.dv.getUint32(ei, false);
          const elo = t.dv.getUint32(ei + 4, false);
          if (ehi & HI_COMPRESSED) {
            const { offset, sectors } = this.#compressedLocation(ehi, elo);
            if (ehi & HI_COPIED) err(`compressed cluster L2 entry (L1 ${i}, L2 ${j}) has OFLAG_COPIED set`);
            if (this.extendedL2 && t.dv.getBigUint64(ei + 8, false) !== 0n) err(`compressed cluster L2 entry (L1 ${i}, L2 ${j}) has a non-zero subcluster bitmap`);
            const s = offset - (offset % 512);
            if (inc(s, sectors * 512, `compressed cluster (L1 ${i}, L2 ${j})`)) compressed++;
            continue;
          }
          const host = (ehi & HI_OFFSET_MASK) * TWO32 + ((elo & LO_OFFSET_MASK) >>> 0);
          if (ehi & HI_RESERVED_STD || elo & LO_RESERVED_STD) err(`L2 entry (L1 ${i}, L2 ${j}) has reserved bits set`);
          if (elo & LO_ZERO && (this.#h.version === 2 || this.extendedL2)) err(`L2 entry (L1 ${i}, L2 ${j}) sets the zero flag, which ${this.extendedL2 ? 'extended L2' : 'version 2'} images do not have`);
          if (this.extendedL2) {
            const zb = t.dv.getUint32(ei + 8, false);
            const ab = t.dv.getUint32(ei + 12, false);
            if (ab & zb) err(`extended L2 entry (L1 ${i}, L2 ${j}) marks subclusters both allocated and zero`);
            if (ab && !host) err(`extended L2 entry (L1 ${i}, L2 ${j}) has allocated subclusters but no host offset`);
          }
          if (host === 0) continue;
          if (host % cs !== 0) {
            err(`data cluster offset ${hex(host)} (L1 ${i}, L2 ${j}) is not cluster aligned`);
            continue;
          }
          if (inc(host, cs, `data cluster (L1 ${i}, L2 ${j})`)) {
            allocatedData++;
            if (lastHost >= 0 && host !== lastHost + cs) fragmented++;
            lastHost = host;
            if (active) copiedChecks.push({ kind: 'l2', table: t, index: j, host, copied: (ehi & HI_COPIED) !== 0 });
          }
        }
      }
    };
    inc(this.#h.l1TableOffset, this.#h.l1Size * 8, 'L1 table');
    await walkL1(this.#l1dv, this.#h.l1Size, true);
    inc(this.#reftableOffset, this.#reftable.length * 8, 'refcount table');
    for (let ti = 0; ti < this.#reftable.length; ti++) {
      const off = this.#reftable[ti]!;
      if (off === 0) continue;
      if (off % cs !== 0) err(`refcount block ${ti} at ${hex(off)} is not cluster aligned`);
      else inc(off, cs, `refcount block ${ti}`);
    }
    if (this.#h.nbSnapshots > 0) {
      inc(this.#h.snapshotsOffset, await snapshotTableBytes(this.#file, this.#h), 'snapshot table');
      for (const s of this.snapshots) {
        if (s.l1Offset % cs !== 0 || !inc(s.l1Offset, s.l1Size * 8, 'snapshot L1 table')) continue;
        const raw = new Uint8Array(s.l1Size * 8);
        await this.#file.read(raw, s.l1Offset);
        await walkL1(new DataView(raw.buffer), s.l1Size, false);
      }
    }
    if (this.#h.bitmapsExt) await this.#countBitmaps(inc, err);
    if (this.#h.cryptoExt) inc(this.#h.cryptoExt.offset, this.#h.cryptoExt.length, 'encryption header');
    // Clusters of allocating writes in flight: referenced as soon as their data is written.
    for (const c of this.#reservedHost) if (c < fileClusters) refs[c]!++;

    // Compare with the stored refcounts.
    let leaks = 0;
    const rbe = this.refblockEntries;
    // Like qemu-img check: clusters of the file; refcounts past its end reference nothing and are ignored.
    const limit = fileClusters;
    const fixes: [number, number][] = [];
    for (let c = 0; c < limit; c++) {
      const want = c < fileClusters ? refs[c]! : 0;
      const off = this.#refblockOffset(Math.floor(c / rbe));
      // A block the table names but that cannot be read (its offset was reported above) counts
      // as refcounts of zero, as QEMU counts it; only a rebuild could mend those clusters.
      const usable = this.#usableRefblock(off);
      const have = usable ? await this.#getRefcount(c) : 0;
      if (have === want) continue;
      if (have < want) {
        const fixing = fixErrors && (usable || off === 0);
        err(`cluster ${c} refcount=${have} reference=${want}`, fixing);
        if (fixing) fixes.push([c, want]);
      } else {
        leaks++;
        if (messages.length < 1000) messages.push(`${repair !== undefined ? 'Repairing' : 'Leaked'} cluster ${c} refcount=${have} reference=${want}`);
        fixes.push([c, want]);
      }
    }
    // OFLAG_COPIED must be set exactly when the refcount is 1 (Cluster mapping, bit 63).
    for (const k of copiedChecks) {
      const c = k.host / cs;
      const rc = this.#usableRefblock(this.#refblockOffset(Math.floor(c / rbe))) ? await this.#getRefcount(c) : 0;
      // As QEMU checks it after the refcount repairs of this pass: against the refcount a repair
      // is about to give the cluster, or the one it has when nothing is repaired.
      const after = repair !== undefined ? (fixes.find((f) => f[0] === c)?.[1] ?? rc) : rc;
      const want = after === 1;
      if (want !== k.copied) {
        err(`OFLAG_COPIED ${k.kind === 'l1' ? 'L2' : 'data'} cluster: ${k.kind === 'l1' ? `l1_index=${k.index}` : `l2 index ${k.index}`} refcount=${rc}`, fixErrors);
        if (fixErrors) {
          if (k.kind === 'l1') {
            const hi = this.#l1dv.getUint32(k.index * 8, false);
            this.#l1dv.setUint32(k.index * 8, want ? (hi | HI_COPIED) >>> 0 : hi & ~HI_COPIED, false);
            this.#l1DirtyLo = Math.min(this.#l1DirtyLo, k.index);
            this.#l1DirtyHi = Math.max(this.#l1DirtyHi, k.index);
          } else if (k.table) {
            const ei = k.index * this.#entryBytes;
            const hi = k.table.dv.getUint32(ei, false);
            k.table.dv.setUint32(ei, want ? (hi | HI_COPIED) >>> 0 : hi & ~HI_COPIED, false);
            this.#l2.markDirty(k.table);
          }
        }
      }
    }
    if (repair !== undefined && fixes.length > 0) {
      // New refcount blocks go past everything referenced, so repair never overwrites live data.
      this.#allocFloor = Math.max(fileClusters, limit);
      try {
        for (const [c, want] of fixes) await this.#setRefcount(c, want);
      } finally {
        this.#allocFloor = 0;
      }
      this.#freeHint = 0;
    }
    let end = 0;
    for (let c = fileClusters - 1; c >= 0; c--) {
      if (refs[c]! > 0) {
        end = (c + 1) * cs;
        break;
      }
    }
    return {
      corruptions,
      leaks,
      messages,
      corruptionsFixed: 0,
      leaksFixed: 0,
      allocatedClusters: allocatedData,
      totalClusters: Math.ceil(this.size / cs),
      compressedClusters: compressed,
      fragmentedClusters: fragmented,
      imageEndOffset: Math.max(end, this.#file.size),
    };
  }

  async #countBitmaps(inc: (off: number, len: number, what: string) => boolean, err: (m: string) => void): Promise<void> {
    const ext = this.#h.bitmapsExt!;
    const cs = this.clusterSize;
    if (ext.directorySize > 64 * 1024 * 1024 || ext.directoryOffset % cs !== 0) {
      err(`bitmap directory at ${hex(ext.directoryOffset)} of ${ext.directorySize} bytes is unusable`);
      return;
    }
    if (!inc(ext.directoryOffset, ext.directorySize, 'bitmap directory')) return;
    const dir = new Uint8Array(ext.directorySize);
    await this.#file.read(dir, ext.directoryOffset);
    const dv = new DataView(dir.buffer);
    let at = 0;
    for (let i = 0; i < ext.nbBitmaps && at + 24 <= dir.byteLength; i++) {
      const tableOffset = Number(dv.getBigUint64(at, false));
      const tableSize = dv.getUint32(at + 8, false);
      const nameSize = dv.getUint16(at + 18, false);
      const extra = dv.getUint32(at + 20, false);
      if (tableOffset % cs === 0 && tableSize * 8 <= 64 * 1024 * 1024 && inc(tableOffset, tableSize * 8, `bitmap ${i} table`)) {
        const table = new Uint8Array(tableSize * 8);
        await this.#file.read(table, tableOffset);
        const tdv = new DataView(table.buffer);
        for (let j = 0; j < tableSize; j++) {
          const off = Number(tdv.getBigUint64(j * 8, false) & 0x00fffffffffffe00n);
          if (off !== 0) inc(off, cs, `bitmap ${i} data cluster`);
        }
      } else err(`bitmap ${i} table at ${hex(tableOffset)} is unusable`);
      at += Math.ceil((24 + extra + nameSize) / 8) * 8;
    }
  }

  // ---------------------------------------------------------------- create

  /** Create a new, empty qcow2 image (the layout QEMU uses: header, refcount table, refcount block(s), L1). */
  static async create(path: string, opts: Qcow2CreateOptions): Promise<void> {
    const cs = opts.clusterSize ?? 65536;
    const version = opts.version ?? 3;
    if (!Number.isInteger(cs) || cs < 512 || cs > 2 * 1024 * 1024 || (cs & (cs - 1)) !== 0) {
      throw new BlockError('invalid-argument', `cluster size ${cs} must be a power of two between 512 B and 2 MiB`, { clusterSize: cs });
    }
    const refcountBits = opts.refcountBits ?? 16;
    const order = Math.log2(refcountBits);
    if (!Number.isInteger(order) || order < 0 || order > 6) throw new BlockError('invalid-argument', `refcount bits ${refcountBits} must be 1, 2, 4, …, 64`, { refcountBits });
    if (version === 2 && (refcountBits !== 16 || opts.lazyRefcounts || opts.extendedL2)) {
      throw new BlockError('invalid-argument', 'version 2 (compat=0.10) images have 16-bit refcounts, no lazy refcounts and no extended L2');
    }
    if (opts.extendedL2 && cs < 16384) throw new BlockError('invalid-argument', `extended L2 entries need clusters of at least 16 KiB, not ${cs}`);
    let size = opts.size;
    let backingFormat = opts.backingFormat;
    if (opts.backingFile !== undefined) {
      const opener = opts.openBacking ?? (await defaultOpener());
      const resolved = isAbsolute(opts.backingFile) ? opts.backingFile : resolve(dirname(path), opts.backingFile);
      const b = await opener(resolved, backingFormat, []);
      try {
        size ??= b.size;
        backingFormat ??= b instanceof Qcow2Backend ? 'qcow2' : 'raw';
      } finally {
        await b.close();
      }
    }
    if (size === undefined || !Number.isSafeInteger(size) || size < 0) throw new BlockError('invalid-argument', `image size ${size} is not valid`, { size });
    size = Math.ceil(size / 512) * 512;
    const l2Entries = cs / (opts.extendedL2 ? 16 : 8);
    const l1Size = Math.max(1, Math.ceil(size / (cs * l2Entries)));
    if (l1Size * 8 > MAX_L1_BYTES) throw new BlockError('invalid-argument', `a ${size}-byte disk needs an L1 table larger than 32 MiB with ${cs}-byte clusters; use larger clusters`, { size });
    const l1Clusters = Math.ceil((l1Size * 8) / cs);
    const rbEntries = (cs * 8) / refcountBits;
    let rbCount = 1;
    let rtClusters = 1;
    for (let i = 0; i < 16; i++) {
      const total = 1 + rtClusters + rbCount + l1Clusters;
      const rb = Math.ceil(total / rbEntries);
      const rt = Math.max(1, Math.ceil((rb * 8) / cs));
      if (rb === rbCount && rt === rtClusters) break;
      rbCount = rb;
      rtClusters = rt;
    }
    const total = 1 + rtClusters + rbCount + l1Clusters;
    const h: Qcow2Header = {
      version,
      backingFileOffset: 0,
      backingFileSize: 0,
      clusterBits: Math.log2(cs),
      size,
      cryptMethod: 0,
      l1Size,
      l1TableOffset: (1 + rtClusters + rbCount) * cs,
      refcountTableOffset: cs,
      refcountTableClusters: rtClusters,
      nbSnapshots: 0,
      snapshotsOffset: 0,
      incompatible: opts.extendedL2 ? INCOMPAT_EXTL2 : 0n,
      compatible: opts.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n,
      autoclear: 0n,
      refcountOrder: order,
      headerLength: version === 3 ? 112 : 72,
      compressionType: 0,
      extraHeader: new Uint8Array(0),
      featureNames: [],
      unknownExtensions: [],
      ...(opts.backingFile !== undefined ? { backingFile: opts.backingFile, backingFormat } : {}),
    };
    const img = new Uint8Array(total * cs);
    img.set(serializeHeader(h), 0);
    const dv = new DataView(img.buffer);
    for (let b = 0; b < rbCount; b++) dv.setBigUint64(cs + b * 8, BigInt((1 + rtClusters + b) * cs), false);
    for (let c = 0; c < total; c++) {
      const blockAt = (1 + rtClusters + Math.floor(c / rbEntries)) * cs;
      const i = c % rbEntries;
      const bit = i * refcountBits;
      if (refcountBits >= 8) {
        const bytes = refcountBits / 8;
        img[blockAt + i * bytes + bytes - 1] = 1; // big-endian 1
      } else img[blockAt + (bit >> 3)]! |= 1 << (bit & 7);
    }
    const f = await HostFile.open(path, { create: true });
    try {
      await f.write(img, 0);
      await f.datasync();
    } finally {
      await f.close();
    }
  }
}

/**
 * One zstd-compressed cluster: a frame followed by sector padding or the next
 * cluster's bytes, so decoding stops once a cluster is out (as QEMU's does).
 */
/**
 * Waits for every one of `ios`, then throws the first failure. Unlike `Promise.all`, nothing is
 * still writing into a caller's buffers, or into host clusters a failed allocation gives back,
 * once the error is out.
 */
async function settled(ios: readonly Promise<void>[]): Promise<void> {
  const rs = await Promise.allSettled(ios);
  for (const r of rs) if (r.status === 'rejected') throw r.reason;
}

function zstdCluster(raw: Uint8Array, cs: number): Uint8Array {
  const out = new Uint8Array(cs);
  let n = 0;
  const d = new ZstdDecompress((chunk) => {
    const k = Math.min(chunk.byteLength, cs - n);
    out.set(chunk.subarray(0, k), n);
    n += k;
  });
  try {
    d.push(raw, false);
  } catch (e) {
    if (n < cs) throw e;
  }
  return n === cs ? out : out.subarray(0, n);
}

/** Thrown inside the exclusive lock when a guest cluster is being allocated by another request: wait, retry. */
class Retry extends Error {
  constructor(readonly wait: Promise<void>) {
    super('a guest cluster is being allocated by another request; retry after it');
  }
}

/** An allocating write planned under the lock: k guest clusters from vc0, new host clusters from `host`. */
interface Plan {
  vc0: number;
  k: number;
  host: number;
  /** The L2 entries (hi, lo pairs) seen when planning. */
  seen: number[];
}

function v3Zero(version: number, lo: number): boolean {
  return version === 3 && (lo & LO_ZERO) !== 0;
}

async function readTable(file: HostFile, off: number, cs: number): Promise<Table> {
  const { Table: T } = await import('./cache.js');
  const buf = new Uint8Array(cs);
  await file.read(buf, off);
  return new T(off, buf);
}

/** Snapshot table entries (Snapshots): L1 offset and size of each, bounded by nb_snapshots and the file. */
async function readSnapshots(file: HostFile, h: Qcow2Header): Promise<Snapshot[]> {
  const out: Snapshot[] = [];
  if (h.nbSnapshots === 0) return out;
  const bytes = await snapshotTableBytes(file, h);
  const buf = new Uint8Array(bytes);
  await file.read(buf, h.snapshotsOffset);
  const dv = new DataView(buf.buffer);
  let at = 0;
  for (let i = 0; i < h.nbSnapshots; i++) {
    const l1Offset = Number(dv.getBigUint64(at, false));
    const l1Size = dv.getUint32(at + 8, false);
    if (l1Size * 8 > MAX_L1_BYTES) throw corrupt(`snapshot ${i} has an L1 table of ${l1Size} entries, more than 32 MiB`, { snapshot: i });
    out.push({ l1Offset, l1Size });
    at += snapshotEntryLength(dv, at);
  }
  return out;
}

function snapshotEntryLength(dv: DataView, at: number): number {
  const idLen = dv.getUint16(at + 12, false);
  const nameLen = dv.getUint16(at + 14, false);
  const extra = dv.getUint32(at + 36, false);
  return Math.ceil((40 + extra + idLen + nameLen) / 8) * 8;
}

async function snapshotTableBytes(file: HostFile, h: Qcow2Header): Promise<number> {
  // Entries are variable-length: walk them, reading each fixed part, bounded by the file.
  let at = 0;
  const fixed = new Uint8Array(40);
  const dv = new DataView(fixed.buffer);
  for (let i = 0; i < h.nbSnapshots; i++) {
    if (h.snapshotsOffset + at + 40 > file.size) throw corrupt(`snapshot table entry ${i} lies outside the file`, { snapshot: i });
    await file.read(fixed, h.snapshotsOffset + at);
    const extra = dv.getUint32(36, false);
    if (extra > 1024 * 1024) throw corrupt(`snapshot ${i} has ${extra} bytes of extra data`, { snapshot: i });
    at += snapshotEntryLength(dv, 0);
  }
  if (h.snapshotsOffset + at > file.size) throw corrupt('snapshot table lies outside the file', { field: 'snapshots_offset' });
  return at;
}

async function defaultOpener(): Promise<BackingOpener> {
  const { openImage } = await import('../open.js');
  return (p, format, chain) => openImage(p, { format, readOnly: true, chain });
}

/** Open the backing file named in an image's header, relative to the image's directory, refusing loops. */
async function openBackingOf(path: string, name: string, format: string | undefined, chain: readonly string[], opener?: BackingOpener): Promise<BlockBackend> {
  const here = await realpath(path);
  const full = isAbsolute(name) ? name : resolve(dirname(path), name);
  let real: string;
  try {
    real = await realpath(full);
  } catch (e) {
    throw new BlockError('io', `backing file ${name} of ${path} cannot be opened: ${(e as Error).message}`, { backingFile: name }, { cause: e });
  }
  const next = [...chain, here];
  if (next.includes(real)) throw new BlockError('backing-loop', `backing chain loops: ${[...next, real].join(' -> ')}`, { chain: [...next, real] });
  if (next.length >= MAX_BACKING_DEPTH) throw new BlockError('backing-loop', `backing chain is deeper than ${MAX_BACKING_DEPTH} images`, { chain: next });
  const open = opener ?? (await defaultOpener());
  return open(full, format, next);
}

