import { BlockError, hex } from './errors.js';

/**
 * A vectored buffer: the bytes of one request, in order, spread over several
 * arrays. Guest buffers are passed as they are (zero-copy views into guest
 * memory), so no bounce copy is made.
 */
export type Segments = readonly Uint8Array[];

/** How a range of the device reads, as `blockStatus` reports it. */
export type ExtentKind =
  /** Stored in this layer; `hostOffset` says where, when the layer has a host file. */
  | 'data'
  /** Reads as zeros, known without reading (a qcow2 zero cluster, a file hole, a sparse memory chunk). */
  | 'zero'
  /** Not stored in this layer: reads come from the backing file, or zeros without one. */
  | 'unallocated';

export interface Extent {
  offset: number;
  length: number;
  kind: ExtentKind;
  /** Where the data lives in the host file (qcow2 and raw), for `map`. */
  hostOffset?: number;
  /** The data is a compressed qcow2 cluster. */
  compressed?: boolean;
}

/**
 * A block device's storage, independent of the device model in front of it
 * (the back-end half of seed 001's split). Every method is asynchronous and
 * may be called again before earlier calls settle: many requests are in flight
 * at once, completing in any order. Offsets and lengths are bytes and must be
 * multiples of `logicalBlockSize`; every request is checked before any I/O
 * and a violation rejects with a `BlockError` (`unaligned`, `out-of-range`,
 * `read-only`, `closed`).
 */
export interface BlockBackend {
  /** Capacity in bytes (a multiple of `logicalBlockSize`). */
  readonly size: number;
  /** The unit of addressing (512 for every back-end here unless O_DIRECT asks for more). */
  readonly logicalBlockSize: number;
  /** The unit the back-end writes without read-modify-write (qcow2: the cluster size). */
  readonly physicalBlockSize: number;
  readonly readOnly: boolean;
  /** Fill `segments` (in order) with the bytes at `offset`. */
  read(offset: number, segments: Segments): Promise<void>;
  /** Store `segments` (in order) at `offset`. Durable only after a later `flush` completes. */
  write(offset: number, segments: Segments): Promise<void>;
  /** Everything completed before this call is on stable storage when it resolves. */
  flush(): Promise<void>;
  /**
   * The range reads as zeros afterwards and the back-end frees the space it
   * can (holes in a file, unallocated qcow2 clusters). Stronger than a bare
   * hint, so a discarded range is deterministic.
   */
  discard(offset: number, length: number): Promise<void>;
  /**
   * The range reads as zeros afterwards. With `mayUnmap` the back-end may free
   * the space; without it the space stays allocated (no later ENOSPC).
   */
  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void>;
  /** How [offset, offset+length) reads, as sorted, adjacent extents covering exactly that range. */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  /** Waits for requests in flight, writes what is cached, releases the file. Idempotent. */
  close(): Promise<void>;
}

export type Operation = 'read' | 'write' | 'discard' | 'write-zeroes' | 'block-status';

/**
 * The one promise a back-end returns for a request it completed before
 * returning (the sync engine's reads, a memory back-end): already fulfilled,
 * shared by every such call. A caller may test a result for identity with it
 * and treat the request as done at once, skipping a reaction and a microtask
 * per request; awaiting it works as for any other promise.
 */
export const COMPLETED: Promise<void> = Promise.resolve();

/** Total byte length of a segment list. */
export function segmentsLength(segments: Segments): number {
  let n = 0;
  for (let i = 0; i < segments.length; i++) n += segments[i]!.byteLength;
  return n;
}

/**
 * The one check every back-end runs before any I/O: a non-negative safe-integer
 * offset and length, both multiples of the logical block size, inside the
 * device, and no modification of a read-only device.
 */
export function checkRequest(
  dev: { readonly size: number; readonly logicalBlockSize: number; readonly readOnly: boolean },
  op: Operation,
  offset: number,
  length: number,
  closed: boolean,
): void {
  if (closed) throw new BlockError('closed', `${op} on a closed block back-end`, { op });
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new BlockError('invalid-argument', `${op}: offset ${offset} and length ${length} must be non-negative safe integers`, { op, offset, length });
  }
  const bs = dev.logicalBlockSize;
  if (offset % bs !== 0 || length % bs !== 0) {
    throw new BlockError('unaligned', `${op} of ${length} byte(s) at ${hex(offset)} is not aligned to the ${bs}-byte logical block size`, { op, offset, length, blockSize: bs });
  }
  if (offset + length > dev.size) {
    throw new BlockError('out-of-range', `${op} of ${length} byte(s) at ${hex(offset)} passes the end of the ${dev.size}-byte device`, { op, offset, length, size: dev.size });
  }
  if (dev.readOnly && op !== 'read' && op !== 'block-status') {
    throw new BlockError('read-only', `${op} on a read-only block back-end`, { op, offset, length });
  }
}

/** Append an extent, merging it with the previous one when they are contiguous and alike. */
export function pushExtent(out: Extent[], e: Extent): void {
  if (e.length === 0) return;
  const last = out[out.length - 1];
  if (
    last !== undefined &&
    last.kind === e.kind &&
    last.offset + last.length === e.offset &&
    last.compressed === e.compressed &&
    (last.hostOffset === undefined) === (e.hostOffset === undefined) &&
    (last.hostOffset === undefined || (last.hostOffset + last.length === e.hostOffset && !e.compressed))
  ) {
    last.length += e.length;
    return;
  }
  out.push(e);
}

/**
 * Visit the pieces of a segment list that fall in byte range [from, from+len)
 * of the request, calling `fn(segment, segStart, requestOffset, n)`.
 */
export function forEachSegmentPiece(
  segments: Segments,
  from: number,
  len: number,
  fn: (seg: Uint8Array, segStart: number, reqOffset: number, n: number) => void,
): void {
  let pos = 0;
  const end = from + len;
  for (let i = 0; i < segments.length && pos < end; i++) {
    const seg = segments[i]!;
    const segEnd = pos + seg.byteLength;
    if (segEnd > from) {
      const a = Math.max(from, pos);
      const b = Math.min(end, segEnd);
      if (b > a) fn(seg, a - pos, a, b - a);
    }
    pos = segEnd;
  }
}

/** Sub-views of `segments` covering request bytes [from, from+len) (no copy). */
export function sliceSegments(segments: Segments, from: number, len: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  forEachSegmentPiece(segments, from, len, (seg, s, _r, n) => out.push(seg.subarray(s, s + n)));
  return out;
}

/** Copy request bytes [from, from+len) of `segments` into `dst` at `dstOff`. */
export function gatherInto(segments: Segments, from: number, len: number, dst: Uint8Array, dstOff: number): void {
  forEachSegmentPiece(segments, from, len, (seg, s, r, n) => dst.set(seg.subarray(s, s + n), dstOff + (r - from)));
}

/** Copy `src` bytes into request bytes [from, from+src.length) of `segments`. */
export function scatterFrom(segments: Segments, from: number, src: Uint8Array): void {
  forEachSegmentPiece(segments, from, src.byteLength, (seg, s, r, n) => seg.set(src.subarray(r - from, r - from + n), s));
}

/** Zero request bytes [from, from+len) of `segments`. */
export function zeroSegments(segments: Segments, from: number, len: number): void {
  forEachSegmentPiece(segments, from, len, zeroPiece);
}

const zeroPiece = (seg: Uint8Array, s: number, _r: number, n: number): void => zeroFill(seg, s, s + n);

/**
 * Zeroes buf[start, end). A request's segments are usually views of guest RAM, a
 * SharedArrayBuffer when the guest runs on another thread, and V8 fills a typed
 * array over a shared buffer element by element with relaxed atomic stores
 * (~19× a memset: 4 KiB 1.6 µs against 85 ns); copying from a zero page is a
 * plain copy (0.25 µs).
 */
export function zeroFill(buf: Uint8Array, start = 0, end: number = buf.length): void {
  if (end - start < ZERO_MIN || !(buf.buffer instanceof SharedArrayBuffer)) {
    buf.fill(0, start, end);
    return;
  }
  let at = start;
  while (end - at >= ZERO_PAGE.length) {
    buf.set(ZERO_PAGE, at);
    at += ZERO_PAGE.length;
  }
  if (end - at >= ZERO_MIN) buf.set(ZERO_PAGE.subarray(0, end - at), at);
  else buf.fill(0, at, end);
}

const ZERO_PAGE = new Uint8Array(4096);
/** Below this a fill is as quick as a copy, and takes no subarray. */
const ZERO_MIN = 256;

/** A rejected promise for a caught value (always an Error). */
export function rejectWith(e: unknown): Promise<never> {
  return Promise.reject(e instanceof Error ? e : new Error(String(e)));
}
