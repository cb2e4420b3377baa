/**
 * The qcow2 on-disk format, as QEMU's docs/interop/qcow2.txt describes it.
 * All numbers are big-endian (qcow2.txt "General"). Section names in the
 * comments are that document's.
 */
import { BlockError, corrupt, hex } from '../errors.js';

/** "QFI\xfb" (Header, bytes 0-3). */
export const QCOW_MAGIC = 0x514649fb;
export const V2_HEADER_LENGTH = 72;
export const V3_HEADER_LENGTH = 104;
/** Header field offsets (Header). */
export const H = {
  magic: 0,
  version: 4,
  backingFileOffset: 8,
  backingFileSize: 16,
  clusterBits: 20,
  size: 24,
  cryptMethod: 32,
  l1Size: 36,
  l1TableOffset: 40,
  refcountTableOffset: 48,
  refcountTableClusters: 56,
  nbSnapshots: 60,
  snapshotsOffset: 64,
  incompatibleFeatures: 72,
  compatibleFeatures: 80,
  autoclearFeatures: 88,
  refcountOrder: 96,
  headerLength: 100,
  compressionType: 104,
} as const;

/** incompatible_features bits (Header, bytes 72-79). */
export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
export const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
/** compatible_features bit 0 (Header, bytes 80-87). */
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;
/** autoclear_features bit 0 / 1 (Header, bytes 88-95). */
export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;

/** Header extension types (Header extensions). */
export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

/** L1/L2 entry flags, in the high 32-bit word (Cluster mapping). */
export const HI_COPIED = 0x80000000;
export const HI_COMPRESSED = 0x40000000;
/** Bits 56-61 of a standard descriptor, reserved. */
export const HI_RESERVED_STD = 0x3f000000;
/** Bits 0-23 of the high word hold offset bits 32-55. */
export const HI_OFFSET_MASK = 0x00ffffff;
/** Bits 9-31 of the low word hold offset bits 9-31. */
export const LO_OFFSET_MASK = 0xfffffe00;
/** Bit 0: reads as zeros (v3, not extended L2). Bits 1-8 reserved. */
export const LO_ZERO = 0x1;
export const LO_RESERVED_STD = 0x1fe;
/** L1 entry bits 1-8 (bits 0-8 reserved) and 56-62 reserved. */
export const L1_LO_RESERVED = 0x1ff;
export const L1_HI_RESERVED = 0x7f000000;

/** QEMU's limits: 32 MiB of L1 table, 8 MiB of refcount table, 2 MiB clusters. */
export const MAX_L1_BYTES = 32 * 1024 * 1024;
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
/** Offsets are 56 bits in the format; ours must also be exact JavaScript numbers. */
export const MAX_OFFSET = 2 ** 53;
export const MAX_BACKING_NAME = 1023;
export const MAX_SNAPSHOTS = 65536;

export interface FeatureName {
  type: 0 | 1 | 2;
  bit: number;
  name: string;
}

export interface UnknownExtension {
  type: number;
  data: Uint8Array;
}

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatible: bigint;
  compatible: bigint;
  autoclear: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  /** Header bytes past the fields we know (header_length > 112), kept when rewriting. */
  extraHeader: Uint8Array;
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
  featureNames: FeatureName[];
  bitmapsExt?: { nbBitmaps: number; directorySize: number; directoryOffset: number };
  cryptoExt?: { offset: number; length: number };
  /** Extensions we do not interpret, kept as they are when the header is rewritten. */
  unknownExtensions: UnknownExtension[];
}

function u64(dv: DataView, at: number, field: string): number {
  const v = dv.getBigUint64(at, false);
  if (v >= BigInt(MAX_OFFSET)) throw corrupt(`qcow2 header field ${field} = ${hex(v)} is larger than 2^53`, { field, value: v });
  return Number(v);
}

const decoder = new TextDecoder('utf-8', { fatal: false });

/** Names of the bits of `bits` in feature table `type`, from the image's feature name table where it has them. */
export function featureNamesOf(h: Pick<Qcow2Header, 'featureNames'>, type: 0 | 1 | 2, bits: bigint): string[] {
  const out: string[] = [];
  for (let b = 0; b < 64; b++) {
    if ((bits >> BigInt(b)) & 1n) {
      const n = h.featureNames.find((f) => f.type === type && f.bit === b);
      out.push(n ? `bit ${b} (${n.name})` : `bit ${b}`);
    }
  }
  return out;
}

/**
 * Parse and validate the header cluster: every field that later code trusts
 * is checked here (Header; Header extensions). `fileSize` bounds table offsets.
 */
export function parseHeader(buf: Uint8Array, fileSize: number): Qcow2Header {
  if (buf.byteLength < V2_HEADER_LENGTH) throw corrupt(`file of ${buf.byteLength} bytes is too short for a qcow2 header`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const magic = dv.getUint32(H.magic, false);
  if (magic !== QCOW_MAGIC) throw corrupt(`bad qcow2 magic ${hex(magic)} (expected 0x514649fb, "QFI\\xfb")`, { field: 'magic', value: magic });
  const version = dv.getUint32(H.version, false);
  if (version !== 2 && version !== 3) throw new BlockError('unsupported', `qcow2 version ${version} is not supported (2 and 3 are)`, { field: 'version', value: version });
  const clusterBits = dv.getUint32(H.clusterBits, false);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw corrupt(`cluster_bits ${clusterBits} is outside 9..21 (512 B to 2 MiB clusters)`, { field: 'cluster_bits', value: clusterBits });
  }
  const cs = 2 ** clusterBits;
  const h: Qcow2Header = {
    version,
    backingFileOffset: u64(dv, H.backingFileOffset, 'backing_file_offset'),
    backingFileSize: dv.getUint32(H.backingFileSize, false),
    clusterBits,
    size: u64(dv, H.size, 'size'),
    cryptMethod: dv.getUint32(H.cryptMethod, false),
    l1Size: dv.getUint32(H.l1Size, false),
    l1TableOffset: u64(dv, H.l1TableOffset, 'l1_table_offset'),
    refcountTableOffset: u64(dv, H.refcountTableOffset, 'refcount_table_offset'),
    refcountTableClusters: dv.getUint32(H.refcountTableClusters, false),
    nbSnapshots: dv.getUint32(H.nbSnapshots, false),
    snapshotsOffset: u64(dv, H.snapshotsOffset, 'snapshots_offset'),
    incompatible: 0n,
    compatible: 0n,
    autoclear: 0n,
    refcountOrder: 4,
    headerLength: V2_HEADER_LENGTH,
    compressionType: 0,
    extraHeader: new Uint8Array(0),
    featureNames: [],
    unknownExtensions: [],
  };
  if (version === 3) {
    if (buf.byteLength < V3_HEADER_LENGTH) throw corrupt('file is too short for a version 3 qcow2 header');
    h.incompatible = dv.getBigUint64(H.incompatibleFeatures, false);
    h.compatible = dv.getBigUint64(H.compatibleFeatures, false);
    h.autoclear = dv.getBigUint64(H.autoclearFeatures, false);
    h.refcountOrder = dv.getUint32(H.refcountOrder, false);
    h.headerLength = dv.getUint32(H.headerLength, false);
    if (h.headerLength < V3_HEADER_LENGTH || h.headerLength % 8 !== 0 || h.headerLength > Math.min(cs, buf.byteLength)) {
      throw corrupt(`header_length ${h.headerLength} must be ≥ 104, a multiple of 8 and inside the first cluster`, { field: 'header_length', value: h.headerLength });
    }
    if (h.headerLength > H.compressionType) h.compressionType = buf[H.compressionType]!;
    if (h.headerLength > 112) h.extraHeader = buf.slice(112, h.headerLength);
  }
  if (h.refcountOrder > 6) throw corrupt(`refcount_order ${h.refcountOrder} is larger than 6 (64-bit refcounts)`, { field: 'refcount_order', value: h.refcountOrder });
  if (h.size % 512 !== 0) throw corrupt(`virtual size ${h.size} is not a multiple of 512`, { field: 'size', value: h.size });

  // Header extensions: directly after the header, each 8-aligned, in the first cluster; the loop ends
  // at the end-of-area marker or at the cluster's end, so it runs at most cs/8 times.
  let at = h.headerLength;
  const limit = Math.min(cs, buf.byteLength);
  const seen = new Set<number>();
  while (at + 8 <= limit) {
    const type = dv.getUint32(at, false);
    const len = dv.getUint32(at + 4, false);
    if (type === EXT_END) break;
    const dataAt = at + 8;
    if (len > limit - dataAt) throw corrupt(`header extension ${hex(type)} at ${at} of ${len} bytes runs past the first cluster`, { extension: type, offset: at, length: len });
    const data = buf.subarray(dataAt, dataAt + len);
    if (type !== EXT_FEATURE_TABLE && seen.has(type)) throw corrupt(`header extension ${hex(type)} appears twice`, { extension: type });
    seen.add(type);
    switch (type) {
      case EXT_BACKING_FORMAT:
        h.backingFormat = decoder.decode(data);
        break;
      case EXT_DATA_FILE:
        h.dataFile = decoder.decode(data);
        break;
      case EXT_FEATURE_TABLE:
        for (let i = 0; i + 48 <= len; i += 48) {
          const t = data[i]!;
          const nameBytes = data.subarray(i + 2, i + 48);
          const z = nameBytes.indexOf(0);
          if (t <= 2) h.featureNames.push({ type: t as 0 | 1 | 2, bit: data[i + 1]!, name: decoder.decode(z < 0 ? nameBytes : nameBytes.subarray(0, z)) });
        }
        break;
      case EXT_BITMAPS: {
        if (len < 24) throw corrupt(`bitmaps extension is ${len} bytes, expected 24`, { extension: type });
        const e = new DataView(data.buffer, data.byteOffset, len);
        h.bitmapsExt = {
          nbBitmaps: e.getUint32(0, false),
          directorySize: Number(e.getBigUint64(8, false) & 0xffffffffffffn),
          directoryOffset: Number(e.getBigUint64(16, false) & 0x1fffffffffffffn),
        };
        break;
      }
      case EXT_CRYPTO: {
        if (len < 16) throw corrupt(`crypto header extension is ${len} bytes, expected 16`, { extension: type });
        const e = new DataView(data.buffer, data.byteOffset, len);
        h.cryptoExt = { offset: Number(e.getBigUint64(0, false) & 0x1fffffffffffffn), length: Number(e.getBigUint64(8, false) & 0x1fffffffffffffn) };
        break;
      }
      default:
        h.unknownExtensions.push({ type, data: data.slice() });
    }
    at = dataAt + Math.ceil(len / 8) * 8;
  }

  // Incompatible features: unknown bits refuse the image, naming them (Header, bytes 72-79).
  const unknown = h.incompatible & ~INCOMPAT_KNOWN;
  if (unknown !== 0n) {
    throw new BlockError('unsupported', `qcow2 image uses unknown incompatible feature(s): ${featureNamesOf(h, 0, unknown).join(', ')}`, { field: 'incompatible_features', bits: unknown });
  }
  if (h.incompatible & INCOMPAT_DATA_FILE) {
    throw new BlockError('unsupported', `qcow2 external data files (incompatible bit 2${h.dataFile ? `, ${h.dataFile}` : ''}) are not supported`, { field: 'incompatible_features', bits: INCOMPAT_DATA_FILE });
  }
  if (h.incompatible & INCOMPAT_COMPRESSION) {
    if (h.compressionType === 0) throw corrupt('compression type bit is set but compression_type is 0 (zlib)', { field: 'compression_type' });
    if (h.compressionType !== 1) throw new BlockError('unsupported', `compression_type ${h.compressionType} is unknown (0 zlib, 1 zstd)`, { field: 'compression_type', value: h.compressionType });
  } else if (h.compressionType !== 0) {
    throw corrupt(`compression_type ${h.compressionType} without the compression type incompatible bit`, { field: 'compression_type', value: h.compressionType });
  }
  if (h.incompatible & INCOMPAT_EXTL2 && clusterBits < 14) {
    throw corrupt(`extended L2 entries need clusters of at least 16 KiB, cluster_bits is ${clusterBits}`, { field: 'cluster_bits', value: clusterBits });
  }
  if (h.cryptMethod !== 0) {
    throw new BlockError('unsupported', `encrypted qcow2 images (crypt_method ${h.cryptMethod}: ${h.cryptMethod === 1 ? 'AES' : h.cryptMethod === 2 ? 'LUKS' : 'unknown'}) are not supported`, { field: 'crypt_method', value: h.cryptMethod });
  }

  // Backing file name: ≤ 1023 bytes, in the first cluster (Header, bytes 8-19).
  if (h.backingFileOffset !== 0) {
    if (h.backingFileSize > MAX_BACKING_NAME || h.backingFileSize === 0 || h.backingFileOffset + h.backingFileSize > limit) {
      throw corrupt(`backing file name of ${h.backingFileSize} bytes at ${h.backingFileOffset} is empty, longer than 1023 bytes or outside the first cluster`, { field: 'backing_file_size', value: h.backingFileSize });
    }
    h.backingFile = decoder.decode(buf.subarray(h.backingFileOffset, h.backingFileOffset + h.backingFileSize));
  }

  // Tables: cluster-aligned, inside the file, QEMU's size limits, no overlap with the header or each other.
  const l2Entries = cs / (h.incompatible & INCOMPAT_EXTL2 ? 16 : 8);
  const needL1 = Math.ceil(h.size / (cs * l2Entries));
  if (h.l1Size < needL1) throw corrupt(`L1 table of ${h.l1Size} entries is too small for a ${h.size}-byte disk (needs ${needL1})`, { field: 'l1_size', value: h.l1Size });
  if (h.l1Size * 8 > MAX_L1_BYTES) throw corrupt(`L1 table of ${h.l1Size} entries is larger than 32 MiB`, { field: 'l1_size', value: h.l1Size });
  checkTable('L1 table', 'l1_table_offset', h.l1TableOffset, h.l1Size * 8, cs, fileSize);
  if (h.refcountTableClusters === 0) throw corrupt('refcount_table_clusters is 0', { field: 'refcount_table_clusters' });
  if (h.refcountTableClusters * cs > MAX_REFTABLE_BYTES) {
    throw corrupt(`refcount table of ${h.refcountTableClusters} clusters is larger than 8 MiB`, { field: 'refcount_table_clusters', value: h.refcountTableClusters });
  }
  checkTable('refcount table', 'refcount_table_offset', h.refcountTableOffset, h.refcountTableClusters * cs, cs, fileSize);
  if (overlaps(h.l1TableOffset, h.l1Size * 8, h.refcountTableOffset, h.refcountTableClusters * cs)) {
    throw corrupt(`L1 table at ${hex(h.l1TableOffset)} overlaps the refcount table at ${hex(h.refcountTableOffset)}`, { field: 'l1_table_offset' });
  }
  if (h.nbSnapshots > MAX_SNAPSHOTS) throw corrupt(`${h.nbSnapshots} snapshots is more than 65536`, { field: 'nb_snapshots', value: h.nbSnapshots });
  if (h.nbSnapshots > 0) checkTable('snapshot table', 'snapshots_offset', h.snapshotsOffset, h.nbSnapshots * 40, cs, fileSize);
  return h;
}

export function overlaps(a: number, alen: number, b: number, blen: number): boolean {
  return alen > 0 && blen > 0 && a < b + blen && b < a + alen;
}

function checkTable(what: string, field: string, offset: number, len: number, cs: number, fileSize: number): void {
  if (len === 0) return;
  if (offset % cs !== 0) throw corrupt(`${what} offset ${hex(offset)} is not aligned to the ${cs}-byte cluster`, { field, value: offset });
  if (offset < cs) throw corrupt(`${what} at ${hex(offset)} overlaps the header cluster`, { field, value: offset });
  if (offset + len > fileSize) throw corrupt(`${what} at ${hex(offset)} (${len} bytes) lies outside the ${fileSize}-byte file`, { field, value: offset });
}

/** Serialize the header and its extensions into a fresh first-cluster buffer (Header; Header extensions). */
export function serializeHeader(h: Qcow2Header): Uint8Array {
  const cs = 2 ** h.clusterBits;
  const buf = new Uint8Array(cs);
  const dv = new DataView(buf.buffer);
  dv.setUint32(H.magic, QCOW_MAGIC, false);
  dv.setUint32(H.version, h.version, false);
  dv.setUint32(H.clusterBits, h.clusterBits, false);
  dv.setBigUint64(H.size, BigInt(h.size), false);
  dv.setUint32(H.cryptMethod, h.cryptMethod, false);
  dv.setUint32(H.l1Size, h.l1Size, false);
  dv.setBigUint64(H.l1TableOffset, BigInt(h.l1TableOffset), false);
  dv.setBigUint64(H.refcountTableOffset, BigInt(h.refcountTableOffset), false);
  dv.setUint32(H.refcountTableClusters, h.refcountTableClusters, false);
  dv.setUint32(H.nbSnapshots, h.nbSnapshots, false);
  dv.setBigUint64(H.snapshotsOffset, BigInt(h.snapshotsOffset), false);
  let at = V2_HEADER_LENGTH;
  if (h.version === 3) {
    const hl = Math.max(112, h.headerLength, 112 + h.extraHeader.byteLength);
    dv.setBigUint64(H.incompatibleFeatures, h.incompatible, false);
    dv.setBigUint64(H.compatibleFeatures, h.compatible, false);
    dv.setBigUint64(H.autoclearFeatures, h.autoclear, false);
    dv.setUint32(H.refcountOrder, h.refcountOrder, false);
    dv.setUint32(H.headerLength, hl, false);
    buf[H.compressionType] = h.compressionType;
    buf.set(h.extraHeader, 112);
    at = hl;
  }
  const enc = new TextEncoder();
  const ext = (type: number, data: Uint8Array): void => {
    const padded = Math.ceil(data.byteLength / 8) * 8;
    if (at + 8 + padded + 8 > cs) throw new BlockError('invalid-argument', `header extensions do not fit in a ${cs}-byte cluster`);
    dv.setUint32(at, type, false);
    dv.setUint32(at + 4, data.byteLength, false);
    buf.set(data, at + 8);
    at += 8 + padded;
  };
  if (h.backingFormat !== undefined) ext(EXT_BACKING_FORMAT, enc.encode(h.backingFormat));
  // The feature name table is optional: like QEMU, leave it out when it would not fit (small clusters).
  const backingLen = h.backingFile !== undefined ? enc.encode(h.backingFile).byteLength : 0;
  const tableCount = (h.featureNames.length > 0 ? h.featureNames : DEFAULT_FEATURE_NAMES).length;
  const others =
    (h.backingFormat !== undefined ? 8 + Math.ceil(enc.encode(h.backingFormat).byteLength / 8) * 8 : 0) +
    (h.bitmapsExt ? 32 : 0) +
    h.unknownExtensions.reduce((n, u) => n + 8 + Math.ceil(u.data.byteLength / 8) * 8, 0);
  const withTable = at + others + 8 + tableCount * 48 + 8 + backingLen <= cs;
  if (h.version === 3 && withTable) {
    const table = h.featureNames.length > 0 ? h.featureNames : DEFAULT_FEATURE_NAMES;
    const t = new Uint8Array(table.length * 48);
    table.forEach((f, i) => {
      t[i * 48] = f.type;
      t[i * 48 + 1] = f.bit;
      t.set(enc.encode(f.name).subarray(0, 46), i * 48 + 2);
    });
    ext(EXT_FEATURE_TABLE, t);
  }
  if (h.bitmapsExt) {
    const d = new Uint8Array(24);
    const e = new DataView(d.buffer);
    e.setUint32(0, h.bitmapsExt.nbBitmaps, false);
    e.setBigUint64(8, BigInt(h.bitmapsExt.directorySize), false);
    e.setBigUint64(16, BigInt(h.bitmapsExt.directoryOffset), false);
    ext(EXT_BITMAPS, d);
  }
  for (const u of h.unknownExtensions) ext(u.type, u.data);
  at += 8; // End of the header extension area (type 0, length 0).
  if (h.backingFile !== undefined) {
    const name = enc.encode(h.backingFile);
    if (name.byteLength > MAX_BACKING_NAME || at + name.byteLength > cs) {
      throw new BlockError('invalid-argument', `backing file name of ${name.byteLength} bytes does not fit (≤ 1023 bytes, in the first cluster)`);
    }
    buf.set(name, at);
    dv.setBigUint64(H.backingFileOffset, BigInt(at), false);
    dv.setUint32(H.backingFileSize, name.byteLength, false);
    h.backingFileOffset = at;
    h.backingFileSize = name.byteLength;
  } else {
    h.backingFileOffset = 0;
    h.backingFileSize = 0;
  }
  return buf;
}

/** The names QEMU writes in its feature name table (Feature name table). */
export const DEFAULT_FEATURE_NAMES: FeatureName[] = [
  { type: 0, bit: 0, name: 'dirty bit' },
  { type: 0, bit: 1, name: 'corrupt bit' },
  { type: 0, bit: 2, name: 'external data file' },
  { type: 0, bit: 3, name: 'compression type' },
  { type: 0, bit: 4, name: 'extended L2 entries' },
  { type: 1, bit: 0, name: 'lazy refcounts' },
  { type: 2, bit: 0, name: 'bitmaps' },
  { type: 2, bit: 1, name: 'raw external data' },
];
