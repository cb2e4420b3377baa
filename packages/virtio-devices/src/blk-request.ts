import type { DmaMemory } from '@ioplane/guest-memory';
import type { DescriptorChain } from '@ioplane/virtqueue';
import {
  BLK_DWZ_FLAGS,
  BLK_DWZ_NUM_SECTORS,
  BLK_DWZ_SECTOR,
  BLK_DWZ_SEGMENT_SIZE,
  BLK_REQ_HEADER_SIZE,
  BLK_REQ_SECTOR,
  BLK_REQ_TYPE,
  SECTOR_SIZE,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from './defs.js';

/** What a virtio-blk request asks for, once parsed. */
export type BlkRequestKind = 'read' | 'write' | 'flush' | 'get-id' | 'discard' | 'write-zeroes' | 'invalid';

/** Why `parseBlkRequest` refused a request (it never reaches the back-end). */
export type BlkParseError =
  /** No device-writable byte at the end of the chain: the status cannot be written (§5.2.6). */
  | 'no-status-byte'
  /** Fewer than 16 device-readable bytes: no complete struct virtio_blk_req header. */
  | 'header-too-short'
  /** Data where the request type has none, or in the other direction (a read with readable data, a write with writable data). */
  | 'data-wrong-direction'
  /** Data length not a multiple of 512 bytes (§5.2.6.1). */
  | 'unaligned-length'
  /** Offset or length not a multiple of the back-end's logical block size (blk_size). */
  | 'unaligned-sector'
  /** A sector number at or past 2^53 / 512: arithmetic would overflow. */
  | 'sector-overflow'
  /** Some sector of the request lies past capacity. */
  | 'out-of-range'
  /** More data segments than seg_max, or discard/write-zeroes segments than max_*_seg. */
  | 'too-many-segments'
  /** num_sectors above max_discard_sectors / max_write_zeroes_sectors. */
  | 'too-many-sectors'
  /** The discard / write-zeroes payload is not a non-empty whole number of 16-byte segments. */
  | 'bad-segment-table'
  /** A write, discard or write-zeroes on a read-only device (§5.2.6.2). */
  | 'read-only'
  /** A flags bit other than UNMAP (§5.2.6.2: UNSUPP). */
  | 'unknown-flags'
  /** UNMAP on a discard (§5.2.6.2: UNSUPP). */
  | 'discard-unmap'
  /** FLUSH, DISCARD or WRITE_ZEROES without the feature negotiated. */
  | 'not-negotiated'
  /** A request type this device does not implement (§5.2.6.2: UNSUPP). */
  | 'unknown-type'
  /** Guest memory the chain named became inaccessible (a vIOMMU unmap). */
  | 'memory';

/** What the parser checks a request against: the negotiated features and the config space. */
export interface BlkLimits {
  capacitySectors: number;
  /** The back-end's logical block size (blk_size); offsets and lengths are multiples of it. */
  logicalBlockSize: number;
  readOnly: boolean;
  flush: boolean;
  discard: boolean;
  writeZeroes: boolean;
  /** Most data segments per request (seg_max); 0 = no limit. */
  segMax: number;
  maxDiscardSectors: number;
  maxDiscardSeg: number;
  maxWriteZeroesSectors: number;
  maxWriteZeroesSeg: number;
  writeZeroesMayUnmap: boolean;
}

/**
 * A parsed virtio-blk request (VirtIO 1.2 §5.2.6), pooled: `parseBlkRequest`
 * fills one in place. Data segments are zero-copy views of the guest's
 * buffers, in order, ready to hand to a `BlockBackend`.
 */
export class BlkRequest {
  kind: BlkRequestKind = 'invalid';
  /** The raw `type` field. */
  type = 0;
  /** Byte offset on the device (read, write). */
  offset = 0;
  /** Data bytes (read, write, get-id). */
  length = 0;
  /** For `invalid`: the status to answer with; `-1` when there is no status byte to write. */
  status = VIRTIO_BLK_S_OK;
  error: BlkParseError | undefined = undefined;
  /** Guest address of the status byte, or -1. */
  statusAddr = -1;
  /** The chain segment holding the status byte and its offset there (for `writeBlkStatus`), or -1. */
  statusSeg = -1;
  statusOff = 0;
  /** Data views (read: device-writable, write: device-readable). */
  readonly segments: Uint8Array[] = [];
  /** Discard / write-zeroes ranges, in bytes. */
  rangeCount = 0;
  rangeOffset: Float64Array;
  rangeLength: Float64Array;
  rangeUnmap: Uint8Array;

  constructor(maxRanges = 1) {
    this.rangeOffset = new Float64Array(Math.max(1, maxRanges));
    this.rangeLength = new Float64Array(Math.max(1, maxRanges));
    this.rangeUnmap = new Uint8Array(Math.max(1, maxRanges));
  }

  clear(): void {
    this.kind = 'invalid';
    this.type = 0;
    this.offset = 0;
    this.length = 0;
    this.status = VIRTIO_BLK_S_OK;
    this.error = undefined;
    this.statusAddr = -1;
    this.statusSeg = -1;
    this.statusOff = 0;
    // Popped, not `length = 0`: that is a runtime call in V8, and this runs for every request (one segment, usually).
    const segs = this.segments;
    while (segs.length > 0) segs.pop();
    this.rangeCount = 0;
  }

  private fail(status: number, error: BlkParseError): BlkRequest {
    this.kind = 'invalid';
    this.status = this.statusAddr < 0 ? -1 : status;
    this.error = error;
    this.segments.length = 0;
    return this;
  }

  /** Internal to `parseBlkRequest`. */
  ioerr(error: BlkParseError): BlkRequest {
    return this.fail(VIRTIO_BLK_S_IOERR, error);
  }

  unsupp(error: BlkParseError): BlkRequest {
    return this.fail(VIRTIO_BLK_S_UNSUPP, error);
  }
}

const scratch = new Uint8Array(BLK_REQ_HEADER_SIZE);
const scratchView = new DataView(scratch.buffer);
/** 2^53 / 512: sectors at or above it overflow byte arithmetic. */
const MAX_SECTOR_HI = 2 ** (53 - 9 - 32);

/** A le64 sector from its two halves; -1 if it cannot be a byte offset. */
function sectorOf(lo: number, hi: number): number {
  if (hi >= MAX_SECTOR_HI) return -1;
  return hi * 0x1_0000_0000 + lo;
}

/** Reads a le64 sector at `off` of the scratch buffer; -1 if it cannot be a byte offset. */
function sectorAt(off: number): number {
  return sectorOf(scratchView.getUint32(off, true), scratchView.getUint32(off + 4, true));
}

/** The header fields `readHeader` read: type and the sector's two halves. */
let hdrType = 0;
let hdrSectorLo = 0;
let hdrSectorHi = 0;

/**
 * Reads the request header into `hdrType` / `hdrSector*`. When the first
 * descriptor holds all 16 bytes (as every driver lays it out) the fields are
 * read where they are — through the translation the chain carried, or from
 * untranslated memory — with no copy; else the header is gathered into the
 * scratch buffer across descriptors (§2.6.4: any split is allowed). Each
 * field is read once. Throws what guest memory throws.
 */
function readHeader(chain: DescriptorChain, mem: DmaMemory): void {
  if (chain.len(0) >= BLK_REQ_HEADER_SIZE) {
    const g = chain.carried(mem, 0);
    if (g >= 0 || chain.via === undefined) {
      const m = g >= 0 ? chain.via!.physical : mem;
      const a = g >= 0 ? g : chain.addr(0);
      hdrType = m.readU32(a + BLK_REQ_TYPE);
      hdrSectorLo = m.readU32(a + BLK_REQ_SECTOR);
      hdrSectorHi = m.readU32(a + BLK_REQ_SECTOR + 4);
      return;
    }
  }
  chain.readInto(mem, 0, scratch);
  hdrType = scratchView.getUint32(BLK_REQ_TYPE, true);
  hdrSectorLo = scratchView.getUint32(BLK_REQ_SECTOR, true);
  hdrSectorHi = scratchView.getUint32(BLK_REQ_SECTOR + 4, true);
}

/**
 * Pushes zero-copy views of `len` bytes of the chain's readable (or
 * writable) part, `skip` bytes in, onto `out`. Returns the number of
 * descriptors touched, or -1 if memory became inaccessible.
 */
function collect(chain: DescriptorChain, mem: DmaMemory, writable: boolean, skip: number, len: number, out: Uint8Array[]): number {
  const start = writable ? chain.readableCount : 0;
  const end = writable ? chain.count : chain.readableCount;
  let pieces = 0;
  for (let i = start; i < end && len > 0; i++) {
    const dl = chain.len(i);
    if (skip >= dl) {
      skip -= dl;
      continue;
    }
    const n = Math.min(dl - skip, len);
    const access = writable ? 'write' : 'read';
    // Translated once when the queue popped the chain and still valid: a view of guest RAM, no second walk.
    const g = chain.carried(mem, i);
    try {
      if (g >= 0) chain.via!.physical.slices(g + skip, n, access, out);
      else mem.slices(chain.addr(i) + skip, n, access, out);
    } catch {
      return -1;
    }
    len -= n;
    skip = 0;
    pieces++;
  }
  return pieces;
}

/**
 * One request from one descriptor chain (STYLE.md 7; VirtIO 1.2 §5.2.6):
 * the header in the first 16 readable bytes (wherever the descriptors split
 * them, §2.6.4), data after it or in the writable part per type, the status
 * byte last. Every rule is checked here; a request that breaks one comes back
 * `invalid` with the status to answer (IOERR or UNSUPP) and never reaches
 * the back-end. Allocates nothing beyond the views of guest memory.
 */
export function parseBlkRequest(chain: DescriptorChain, mem: DmaMemory, limits: BlkLimits, out: BlkRequest): BlkRequest {
  out.clear();
  // The status byte: the last device-writable byte (§5.2.6 struct virtio_blk_req, u8 status last).
  for (let i = chain.count - 1; i >= chain.readableCount; i--) {
    const l = chain.len(i);
    if (l > 0) {
      out.statusAddr = chain.addr(i) + l - 1;
      out.statusSeg = i;
      out.statusOff = l - 1;
      break;
    }
  }
  if (out.statusAddr < 0) return out.ioerr('no-status-byte');
  if (chain.readableBytes < BLK_REQ_HEADER_SIZE) return out.ioerr('header-too-short');
  try {
    readHeader(chain, mem);
  } catch {
    return out.ioerr('memory');
  }
  const type = hdrType;
  out.type = type;
  const readData = chain.readableBytes - BLK_REQ_HEADER_SIZE;
  const writeData = chain.writableBytes - 1;
  switch (type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT: {
      const isRead = type === VIRTIO_BLK_T_IN;
      // A read carries no readable data; a write no writable data besides the status.
      if (isRead ? readData !== 0 : writeData !== 0) return out.ioerr('data-wrong-direction');
      if (!isRead && limits.readOnly) return out.ioerr('read-only');
      const len = isRead ? writeData : readData;
      if (len % SECTOR_SIZE !== 0) return out.ioerr('unaligned-length');
      const sector = sectorOf(hdrSectorLo, hdrSectorHi);
      if (sector < 0) return out.ioerr('sector-overflow');
      const nsect = len / SECTOR_SIZE;
      if (sector > limits.capacitySectors || nsect > limits.capacitySectors - sector) return out.ioerr('out-of-range');
      const offset = sector * SECTOR_SIZE;
      if (offset % limits.logicalBlockSize !== 0 || len % limits.logicalBlockSize !== 0) return out.ioerr('unaligned-sector');
      const pieces = collect(chain, mem, isRead, isRead ? 0 : BLK_REQ_HEADER_SIZE, len, out.segments);
      if (pieces < 0) return out.ioerr('memory');
      if (limits.segMax > 0 && pieces > limits.segMax) return out.ioerr('too-many-segments');
      out.kind = isRead ? 'read' : 'write';
      out.offset = offset;
      out.length = len;
      return out;
    }
    case VIRTIO_BLK_T_FLUSH:
      if (!limits.flush) return out.unsupp('not-negotiated');
      if (readData !== 0 || writeData !== 0) return out.ioerr('data-wrong-direction');
      out.kind = 'flush';
      return out;
    case VIRTIO_BLK_T_GET_ID:
      if (readData !== 0) return out.ioerr('data-wrong-direction');
      out.kind = 'get-id';
      out.length = writeData;
      return out;
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
      return parseRanges(chain, mem, limits, out, type === VIRTIO_BLK_T_DISCARD, readData, writeData);
    default:
      // GET_LIFETIME, SECURE_ERASE and anything unknown (§5.2.6.2).
      return out.unsupp('unknown-type');
  }
}

/**
 * Writes the status byte of a parsed request (its last device-writable
 * byte) through the translation the queue carried for its segment when that
 * still holds — so a request costs no second translation at completion —
 * else through `mem`, which translates again and faults as before (a
 * strict-mode UNMAP of the status buffer while the request was in flight).
 * Throws what `mem.writeU8` throws.
 */
export function writeBlkStatus(chain: DescriptorChain, mem: DmaMemory, req: BlkRequest, status: number): void {
  const i = req.statusSeg;
  if (i >= 0) {
    const g = chain.carried(mem, i);
    if (g >= 0) {
      chain.via!.physical.writeU8(g + req.statusOff, status);
      return;
    }
  }
  mem.writeU8(req.statusAddr, status);
}

function parseRanges(chain: DescriptorChain, mem: DmaMemory, limits: BlkLimits, out: BlkRequest, discard: boolean, readData: number, writeData: number): BlkRequest {
  if (!(discard ? limits.discard : limits.writeZeroes)) return out.unsupp('not-negotiated');
  if (writeData !== 0) return out.ioerr('data-wrong-direction');
  if (limits.readOnly) return out.ioerr('read-only');
  if (readData === 0 || readData % BLK_DWZ_SEGMENT_SIZE !== 0) return out.ioerr('bad-segment-table');
  const n = readData / BLK_DWZ_SEGMENT_SIZE;
  const maxSeg = discard ? limits.maxDiscardSeg : limits.maxWriteZeroesSeg;
  const maxSectors = discard ? limits.maxDiscardSectors : limits.maxWriteZeroesSectors;
  if (n > maxSeg || n > out.rangeOffset.length) return out.ioerr('too-many-segments');
  for (let i = 0; i < n; i++) {
    try {
      if (chain.readInto(mem, BLK_REQ_HEADER_SIZE + i * BLK_DWZ_SEGMENT_SIZE, scratch) !== BLK_DWZ_SEGMENT_SIZE) return out.ioerr('bad-segment-table');
    } catch {
      return out.ioerr('memory');
    }
    const flags = scratchView.getUint32(BLK_DWZ_FLAGS, true);
    // §5.2.6.2: unknown flags, and UNMAP on a discard, are UNSUPP.
    if ((flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0) return out.unsupp('unknown-flags');
    if (discard && flags !== 0) return out.unsupp('discard-unmap');
    const nsect = scratchView.getUint32(BLK_DWZ_NUM_SECTORS, true);
    if (nsect > maxSectors) return out.ioerr('too-many-sectors');
    const sector = sectorAt(BLK_DWZ_SECTOR);
    if (sector < 0) return out.ioerr('sector-overflow');
    if (sector > limits.capacitySectors || nsect > limits.capacitySectors - sector) return out.ioerr('out-of-range');
    const offset = sector * SECTOR_SIZE;
    const length = nsect * SECTOR_SIZE;
    if (offset % limits.logicalBlockSize !== 0 || length % limits.logicalBlockSize !== 0) return out.ioerr('unaligned-sector');
    out.rangeOffset[i] = offset;
    out.rangeLength[i] = length;
    out.rangeUnmap[i] = !discard && (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0 && limits.writeZeroesMayUnmap ? 1 : 0;
  }
  out.rangeCount = n;
  out.kind = discard ? 'discard' : 'write-zeroes';
  return out;
}
