/**
 * `ioplane-img`: an image tool shaped like qemu-img (and qemu-io for `io`),
 * over this package's back-ends. `main()` takes argv and output streams and
 * returns the exit status, so it runs in-process in tests.
 */
import { stat } from 'node:fs/promises';
import type { BlockBackend } from './backend.js';
import { BlockError } from './errors.js';
import { createImage, openImage, probeFormat, type CreateImageOptions } from './open.js';
import { Qcow2Backend, type Qcow2CheckResult } from './qcow2/qcow2.js';
import { parseSize } from './size.js';

export interface Output {
  write(s: string): unknown;
}

const USAGE = `usage: ioplane-img <command> [options]
  create -f qcow2|raw [-o cluster_size=…,backing_file=…,backing_fmt=…,lazy_refcounts=on,compat=0.10|1.1,refcount_bits=…,extended_l2=on] [-b BACKING] [-F BACKING_FMT] FILE [SIZE]
  info [-f FMT] [--output=human|json] FILE
  check [-f FMT] [-r leaks|all] [--output=human|json] FILE   (exit 0 clean, 2 errors, 3 leaks)
  map [-f FMT] [--output=human|json] FILE
  convert [-c] [-f FMT] -O FMT [-o OPTIONS] SRC DST
  compare [-f FMT] [-F FMT] [-s] A B                          (exit 0 identical, 1 different)
  io [-f FMT] [-r] FILE -c 'write [-P PAT] [-z [-u]] OFF LEN' -c 'read [-P PAT] OFF LEN' -c flush -c 'discard OFF LEN'
Sizes take k, M, G, T suffixes (powers of 1024).`;

class UsageError extends Error {}

interface Parsed {
  flags: Map<string, string | true>;
  multi: Map<string, string[]>;
  args: string[];
}

/** Minimal getopt: `valued` options take an argument (`-f raw`, `--output=json`, `-fraw`). */
function parseArgs(argv: string[], valued: string[], repeatable: string[] = []): Parsed {
  const flags = new Map<string, string | true>();
  const multi = new Map<string, string[]>();
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      args.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq < 0 ? a.slice(2) : a.slice(2, eq);
      let value: string | true = eq < 0 ? true : a.slice(eq + 1);
      if (value === true && valued.includes(`--${name}`)) {
        if (i + 1 >= argv.length) throw new UsageError(`option --${name} needs a value`);
        value = argv[++i]!;
      }
      flags.set(`--${name}`, value);
    } else if (a.startsWith('-') && a.length > 1) {
      const name = a.slice(0, 2);
      if (valued.includes(name)) {
        const v = a.length > 2 ? a.slice(2) : argv[++i];
        if (v === undefined) throw new UsageError(`option ${name} needs a value`);
        if (repeatable.includes(name)) multi.set(name, [...(multi.get(name) ?? []), v]);
        else flags.set(name, v);
      } else {
        for (const ch of a.slice(1)) flags.set(`-${ch}`, true);
      }
    } else args.push(a);
  }
  return { flags, multi, args };
}

function str(p: Parsed, name: string): string | undefined {
  const v = p.flags.get(name);
  return typeof v === 'string' ? v : undefined;
}

function needArgs(p: Parsed, n: number, what: string): string[] {
  if (p.args.length < n) throw new UsageError(`expected ${what}`);
  return p.args;
}

/** `-o key=value,key=value` as qemu-img takes it (a doubled comma escapes a comma). */
function parseOptions(text: string | undefined): Map<string, string> {
  const m = new Map<string, string>();
  if (text === undefined) return m;
  const ESC = '\u0000';
  for (const part of text.split(',,').join(ESC).split(',')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const k = (eq < 0 ? part : part.slice(0, eq)).trim();
    const v = (eq < 0 ? 'on' : part.slice(eq + 1)).split(ESC).join(',');
    m.set(k, v);
  }
  return m;
}

function onOff(v: string | undefined, name: string): boolean | undefined {
  if (v === undefined) return undefined;
  if (v === 'on' || v === 'true' || v === 'yes') return true;
  if (v === 'off' || v === 'false' || v === 'no') return false;
  throw new UsageError(`option ${name} takes on or off, not '${v}'`);
}

function createOptions(o: Map<string, string>): CreateImageOptions {
  const known = new Set(['cluster_size', 'backing_file', 'backing_fmt', 'lazy_refcounts', 'compat', 'refcount_bits', 'extended_l2', 'size', 'preallocation']);
  for (const k of o.keys()) if (!known.has(k)) throw new UsageError(`unknown option '${k}'`);
  const opts: CreateImageOptions = {};
  const cs = o.get('cluster_size');
  if (cs !== undefined) opts.clusterSize = parseSize(cs);
  const bf = o.get('backing_file');
  if (bf !== undefined) opts.backingFile = bf;
  const bfmt = o.get('backing_fmt');
  if (bfmt !== undefined) opts.backingFormat = bfmt;
  const lazy = onOff(o.get('lazy_refcounts'), 'lazy_refcounts');
  if (lazy !== undefined) opts.lazyRefcounts = lazy;
  const compat = o.get('compat');
  if (compat !== undefined) {
    if (compat === '0.10' || compat === 'v2') opts.version = 2;
    else if (compat === '1.1' || compat === 'v3') opts.version = 3;
    else throw new UsageError(`compat '${compat}' is not 0.10 or 1.1`);
  }
  const rb = o.get('refcount_bits');
  if (rb !== undefined) opts.refcountBits = Number(rb);
  const ext = onOff(o.get('extended_l2'), 'extended_l2');
  if (ext !== undefined) opts.extendedL2 = ext;
  const size = o.get('size');
  if (size !== undefined) opts.size = parseSize(size);
  const pre = o.get('preallocation');
  if (pre !== undefined && pre !== 'off') throw new UsageError(`preallocation=${pre} is not supported (only off)`);
  return opts;
}

export async function main(argv: string[], out: Output = process.stdout, err: Output = process.stderr): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'create':
        return await create(rest, out);
      case 'info':
        return await info(rest, out);
      case 'check':
        return await check(rest, out);
      case 'map':
        return await map(rest, out);
      case 'convert':
        return await convert(rest);
      case 'compare':
        return await compare(rest, out);
      case 'io':
        return await io(rest, out, err);
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        out.write(`${USAGE}\n`);
        return cmd === undefined ? 1 : 0;
      default:
        throw new UsageError(`unknown command '${cmd}'`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      err.write(`ioplane-img: ${e.message}\n${USAGE}\n`);
      return 1;
    }
    if (e instanceof BlockError) {
      err.write(`ioplane-img: ${e.message}\n`);
      return 1;
    }
    err.write(`ioplane-img: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}

async function create(argv: string[], out: Output): Promise<number> {
  const p = parseArgs(argv, ['-f', '-o', '-b', '-F'], ['-o']);
  const fmt = str(p, '-f') ?? 'raw';
  const o = new Map<string, string>();
  for (const t of p.multi.get('-o') ?? []) for (const [k, v] of parseOptions(t)) o.set(k, v);
  const opts = createOptions(o);
  const b = str(p, '-b');
  if (b !== undefined) opts.backingFile = b;
  const bf = str(p, '-F');
  if (bf !== undefined) opts.backingFormat = bf;
  const [file, size] = needArgs(p, 1, 'FILE [SIZE]');
  if (size !== undefined) opts.size = parseSize(size);
  if (opts.size === undefined && opts.backingFile === undefined) throw new UsageError('image size needed (or a backing file)');
  await createImage(file!, fmt, opts);
  const parts = [`fmt=${fmt}`];
  if (fmt === 'qcow2') parts.push(`cluster_size=${opts.clusterSize ?? 65536}`, `compression_type=zlib`);
  if (opts.size !== undefined) parts.push(`size=${opts.size}`);
  if (opts.backingFile !== undefined) parts.push(`backing_file=${opts.backingFile}`);
  if (opts.backingFormat !== undefined) parts.push(`backing_fmt=${opts.backingFormat}`);
  if (opts.lazyRefcounts) parts.push('lazy_refcounts=on');
  out.write(`Formatting '${file}', ${parts.join(' ')}\n`);
  return 0;
}

async function info(argv: string[], out: Output): Promise<number> {
  const p = parseArgs(argv, ['-f', '--output']);
  const [file] = needArgs(p, 1, 'FILE');
  const fmt = str(p, '-f') ?? (await probeFormat(file!));
  const b = await openImage(file!, { format: fmt, readOnly: true, noBacking: true });
  try {
    const st = await stat(file!);
    const j: Record<string, unknown> = { 'virtual-size': b.size, filename: file, format: fmt, 'actual-size': st.blocks * 512 };
    if (b instanceof Qcow2Backend) {
      const h = b.header;
      j['cluster-size'] = b.clusterSize;
      if (h.backingFile !== undefined) {
        j['backing-filename'] = h.backingFile;
        if (h.backingFormat !== undefined) j['backing-filename-format'] = h.backingFormat;
      }
      j['format-specific'] = {
        type: 'qcow2',
        data:
          b.version === 3
            ? {
                compat: '1.1',
                'compression-type': h.compressionType === 1 ? 'zstd' : 'zlib',
                'lazy-refcounts': b.lazyRefcounts,
                'refcount-bits': b.refcountBits,
                corrupt: b.corruptBit,
                'extended-l2': b.extendedL2,
              }
            : { compat: '0.10', 'compression-type': 'zlib', 'refcount-bits': 16 },
      };
      j['dirty-flag'] = b.dirtyBit;
    }
    if (str(p, '--output') === 'json') out.write(`${JSON.stringify(j, null, 4)}\n`);
    else {
      out.write(`image: ${file}\nfile format: ${fmt}\nvirtual size: ${human(b.size)} (${b.size} bytes)\ndisk size: ${human(st.blocks * 512)}\n`);
      if (b instanceof Qcow2Backend) {
        out.write(`cluster_size: ${b.clusterSize}\n`);
        const h = b.header;
        if (h.backingFile !== undefined) out.write(`backing file: ${h.backingFile}\n${h.backingFormat ? `backing file format: ${h.backingFormat}\n` : ''}`);
        const d = (j['format-specific'] as { data: Record<string, unknown> }).data;
        out.write('Format specific information:\n');
        for (const [k, v] of Object.entries(d)) out.write(`    ${k}: ${String(v)}\n`);
      }
    }
    return 0;
  } finally {
    await b.close();
  }
}

function human(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${Number.isInteger(v) ? v : v.toFixed(3).replace(/0+$/, '')} ${units[u]}`;
}

async function check(argv: string[], out: Output): Promise<number> {
  const p = parseArgs(argv, ['-f', '-r', '--output']);
  const [file] = needArgs(p, 1, 'FILE');
  const repair = str(p, '-r');
  if (repair !== undefined && repair !== 'leaks' && repair !== 'all') throw new UsageError(`-r takes leaks or all, not '${repair}'`);
  const fmt = str(p, '-f') ?? (await probeFormat(file!));
  if (fmt !== 'qcow2') {
    out.write(`This image format does not support checks\n`);
    return 63;
  }
  let q: Qcow2Backend;
  try {
    q = await Qcow2Backend.open(file!, { readOnly: repair === undefined, noBacking: true });
  } catch (e) {
    if (e instanceof BlockError && e.kind === 'corrupt' && repair === 'all' && /marked corrupt/.test(e.message)) {
      // Repair of an image marked corrupt: open read-only to check, then clear the bit if it is clean.
      q = await openCorruptForRepair(file!);
    } else throw e;
  }
  let r: Qcow2CheckResult;
  try {
    r = await q.check(repair === undefined ? false : repair);
  } finally {
    await q.close();
  }
  if (str(p, '--output') === 'json') {
    const j: Record<string, unknown> = { 'image-end-offset': r.imageEndOffset, 'total-clusters': r.totalClusters, 'check-errors': 0, 'allocated-clusters': r.allocatedClusters, filename: file, format: 'qcow2' };
    if (r.corruptions > 0) j.corruptions = r.corruptions;
    if (r.leaks > 0) j.leaks = r.leaks;
    if (r.leaksFixed > 0) j['leaks-fixed'] = r.leaksFixed;
    if (r.corruptionsFixed > 0) j['corruptions-fixed'] = r.corruptionsFixed;
    out.write(`${JSON.stringify(j, null, 4)}\n`);
  } else {
    if (r.repairMessages !== undefined) {
      // As qemu-img check -r: what the repair did, its totals, then the check of the result.
      for (const m of r.repairMessages) out.write(`${m}\n`);
      out.write(`The following inconsistencies were found and repaired:\n\n    ${r.leaksFixed} leaked clusters\n    ${r.corruptionsFixed} corruptions\n\nDouble checking the fixed image now...\n`);
    }
    for (const m of r.messages) out.write(`${m}\n`);
    if (r.corruptions === 0 && r.leaks === 0) out.write('No errors were found on the image.\n');
    else {
      if (r.corruptions > 0) out.write(`\n${r.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`);
      if (r.leaks > 0) out.write(`\n${r.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`);
    }
    const pct = (a: number, of: number): string => (of ? ((100 * a) / of).toFixed(2) : '0.00');
    const al = r.allocatedClusters + r.compressedClusters;
    out.write(`${al}/${r.totalClusters} = ${pct(al, r.totalClusters)}% allocated, ${pct(r.fragmentedClusters, al)}% fragmented, ${pct(r.compressedClusters, al)}% compressed clusters\n`);
    out.write(`Image end offset: ${r.imageEndOffset}\n`);
  }
  return r.corruptions > 0 ? 2 : r.leaks > 0 ? 3 : 0;
}

async function openCorruptForRepair(file: string): Promise<Qcow2Backend> {
  const ro = await Qcow2Backend.open(file, { readOnly: true, noBacking: true });
  const r = await ro.check(false);
  await ro.close();
  if (r.corruptions > 0) throw new BlockError('corrupt', `${file} is marked corrupt and has ${r.corruptions} error(s) a refcount repair cannot fix: ${r.messages.slice(0, 3).join('; ')}`);
  // The structures are sound: clear the corrupt bit (Header, incompatible bit 1) and continue read-write.
  const { HostFile } = await import('./file.js');
  const f = await HostFile.open(file);
  try {
    const b = new Uint8Array(8);
    await f.read(b, 72);
    b[7] = b[7]! & ~0x02;
    await f.write(b, 72);
    await f.datasync();
  } finally {
    await f.close();
  }
  return Qcow2Backend.open(file, { noBacking: true });
}

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  compressed?: boolean;
  offset?: number;
}

/** The allocation of the whole chain, as `qemu-img map --output=json` reports it. */
export async function mapImage(b: BlockBackend): Promise<MapEntry[]> {
  const out: MapEntry[] = [];
  await mapLayer(b, 0, b.size, 0, out);
  return out;
}

function pushMap(out: MapEntry[], e: MapEntry): void {
  const l = out[out.length - 1];
  if (
    l &&
    l.start + l.length === e.start &&
    l.depth === e.depth &&
    l.present === e.present &&
    l.zero === e.zero &&
    l.data === e.data &&
    l.compressed === e.compressed &&
    (l.offset === undefined) === (e.offset === undefined) &&
    (l.offset === undefined || l.offset + l.length === e.offset)
  ) {
    l.length += e.length;
    return;
  }
  out.push(e);
}

async function mapLayer(b: BlockBackend, off: number, len: number, depth: number, out: MapEntry[]): Promise<void> {
  const step = 1 << 30;
  for (let at = off; at < off + len; at += step) {
    const n = Math.min(step, off + len - at);
    for (const e of await b.blockStatus(at, n)) {
      const base = { start: e.offset, length: e.length, depth };
      if (e.kind === 'unallocated') {
        const back = b instanceof Qcow2Backend ? b.backing : undefined;
        if (back !== undefined && e.offset < back.size) {
          const inB = Math.min(e.length, back.size - e.offset);
          await mapLayer(back, e.offset, inB, depth + 1, out);
          if (inB < e.length) pushMap(out, { start: e.offset + inB, length: e.length - inB, depth: depth + 1, present: false, zero: true, data: false });
        } else pushMap(out, { ...base, present: false, zero: true, data: false, ...(e.hostOffset !== undefined && back === undefined ? { offset: e.hostOffset } : {}) });
      } else if (e.kind === 'zero') {
        pushMap(out, { ...base, present: true, zero: true, data: false, ...(e.hostOffset !== undefined ? { offset: e.hostOffset } : {}) });
      } else {
        pushMap(out, { ...base, present: true, zero: false, data: true, ...(e.compressed ? { compressed: true } : {}), ...(e.hostOffset !== undefined ? { offset: e.hostOffset } : {}) });
      }
    }
  }
}

async function map(argv: string[], out: Output): Promise<number> {
  const p = parseArgs(argv, ['-f', '--output']);
  const [file] = needArgs(p, 1, 'FILE');
  const b = await openImage(file!, { ...(str(p, '-f') ? { format: str(p, '-f') } : {}), readOnly: true });
  try {
    const entries = await mapImage(b);
    if (str(p, '--output') === 'json') {
      const lines = entries.map((e) => {
        const parts = [`"start": ${e.start}`, `"length": ${e.length}`, `"depth": ${e.depth}`, `"present": ${e.present}`, `"zero": ${e.zero}`, `"data": ${e.data}`];
        if (e.compressed) parts.push('"compressed": true');
        if (e.offset !== undefined) parts.push(`"offset": ${e.offset}`);
        return `{ ${parts.join(', ')}}`;
      });
      out.write(`[${lines.join(',\n')}]\n`);
    } else {
      out.write(`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`);
      for (const e of entries) {
        if (!e.data || e.offset === undefined) continue;
        out.write(`${`0x${e.start.toString(16)}`.padEnd(16)}${`0x${e.length.toString(16)}`.padEnd(16)}${`0x${e.offset.toString(16)}`.padEnd(16)}${file}\n`);
      }
    }
    return 0;
  } finally {
    await b.close();
  }
}

async function convert(argv: string[]): Promise<number> {
  const p = parseArgs(argv, ['-f', '-O', '-o'], ['-o']);
  const [src, dst] = needArgs(p, 2, 'SRC DST');
  const outFmt = str(p, '-O') ?? 'raw';
  const compress = p.flags.get('-c') === true;
  if (compress && outFmt !== 'qcow2') throw new UsageError('-c needs -O qcow2');
  const o = new Map<string, string>();
  for (const t of p.multi.get('-o') ?? []) for (const [k, v] of parseOptions(t)) o.set(k, v);
  const opts = createOptions(o);
  const s = await openImage(src!, { ...(str(p, '-f') ? { format: str(p, '-f') } : {}), readOnly: true });
  try {
    await createImage(dst!, outFmt, { ...opts, size: s.size });
    const d = await openImage(dst!, { format: outFmt });
    try {
      await copyImage(s, d, compress);
      await d.flush();
    } finally {
      await d.close();
    }
  } finally {
    await s.close();
  }
  return 0;
}

/** Copy every allocated, non-zero byte of `s` into a fresh `d` (which reads as zeros). */
export async function copyImage(s: BlockBackend, d: BlockBackend, compress = false): Promise<void> {
  const unit = d instanceof Qcow2Backend ? d.clusterSize : 1 << 20;
  const chunk = Math.max(unit, 1 << 20);
  const buf = new Uint8Array(chunk);
  for (const e of await mapImage(s)) {
    if (!e.data) continue;
    // Whole units around the data extent, so compressed clusters are written whole.
    const first = Math.floor(e.start / unit) * unit;
    const end = Math.min(s.size, Math.ceil((e.start + e.length) / unit) * unit);
    for (let at = first; at < end; at += chunk) {
      const n = Math.min(chunk, end - at);
      const b = buf.subarray(0, n);
      await s.read(at, [b]);
      for (let u = 0; u < n; u += unit) {
        const part = b.subarray(u, Math.min(n, u + unit));
        if (isZero(part)) continue;
        if (compress && d instanceof Qcow2Backend) {
          const whole = part.byteLength === unit ? part : padded(part, unit);
          await d.writeCompressed(at + u, whole);
        } else await d.write(at + u, [part]);
      }
    }
  }
}

function padded(part: Uint8Array, unit: number): Uint8Array {
  const w = new Uint8Array(unit);
  w.set(part);
  return w;
}

function isZero(b: Uint8Array): boolean {
  const words = b.byteLength % 8 === 0 && b.byteOffset % 8 === 0 ? new BigUint64Array(b.buffer, b.byteOffset, b.byteLength / 8) : undefined;
  if (words) {
    for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
    return true;
  }
  for (let i = 0; i < b.byteLength; i++) if (b[i] !== 0) return false;
  return true;
}

async function compare(argv: string[], out: Output): Promise<number> {
  const p = parseArgs(argv, ['-f', '-F']);
  const [fa, fb] = needArgs(p, 2, 'A B');
  const strict = p.flags.get('-s') === true;
  const a = await openImage(fa!, { ...(str(p, '-f') ? { format: str(p, '-f') } : {}), readOnly: true });
  try {
    const b = await openImage(fb!, { ...(str(p, '-F') ? { format: str(p, '-F') } : {}), readOnly: true });
    try {
      if (a.size !== b.size) {
        if (strict) {
          out.write('Strict mode: Image size mismatch!\n');
          return 1;
        }
        out.write('Warning: Image size mismatch!\n');
      }
      const common = Math.min(a.size, b.size);
      const chunk = 1 << 20;
      const ba = new Uint8Array(chunk);
      const bb = new Uint8Array(chunk);
      for (let at = 0; at < common; at += chunk) {
        const n = Math.min(chunk, common - at);
        await Promise.all([a.read(at, [ba.subarray(0, n)]), b.read(at, [bb.subarray(0, n)])]);
        for (let i = 0; i < n; i++) {
          if (ba[i] !== bb[i]) {
            out.write(`Content mismatch at offset ${at + i - ((at + i) % 512)}!\n`);
            return 1;
          }
        }
      }
      const longer = a.size > b.size ? a : b;
      for (let at = common; at < longer.size; at += chunk) {
        const n = Math.min(chunk, longer.size - at);
        await longer.read(at, [ba.subarray(0, n)]);
        const i = ba.subarray(0, n).findIndex((v) => v !== 0);
        if (i >= 0) {
          out.write(`Content mismatch at offset ${at + i - ((at + i) % 512)}!\n`);
          return 1;
        }
      }
      out.write('Images are identical.\n');
      return 0;
    } finally {
      await b.close();
    }
  } finally {
    await a.close();
  }
}

/** Parse a qemu-io pattern: decimal or 0x hex, one byte. */
function parsePattern(t: string): number {
  const v = t.startsWith('0x') || t.startsWith('0X') ? Number.parseInt(t.slice(2), 16) : Number.parseInt(t, 10);
  if (!Number.isInteger(v) || v < 0 || v > 255) throw new UsageError(`pattern '${t}' is not a byte`);
  return v;
}

async function io(argv: string[], out: Output, err: Output): Promise<number> {
  const p = parseArgs(argv, ['-f', '-c'], ['-c']);
  const [file] = needArgs(p, 1, 'FILE');
  const readOnly = p.flags.get('-r') === true;
  const b = await openImage(file!, { ...(str(p, '-f') ? { format: str(p, '-f') } : {}), readOnly });
  let status = 0;
  try {
    for (const c of p.multi.get('-c') ?? []) {
      const words = c.trim().split(/\s+/);
      const op = words[0];
      const cp = parseArgs(words.slice(1), ['-P']);
      const t0 = performance.now();
      try {
        switch (op) {
          case 'write': {
            const [o, l] = needArgs(cp, 2, 'write OFF LEN');
            const off = parseSize(o!);
            const len = parseSize(l!);
            if (cp.flags.get('-z') === true) await b.writeZeroes(off, len, cp.flags.get('-u') === true);
            else {
              const pat = str(cp, '-P') !== undefined ? parsePattern(str(cp, '-P')!) : 0xcd;
              await b.write(off, [new Uint8Array(len).fill(pat)]);
            }
            out.write(`wrote ${len}/${len} bytes at offset ${off}\n${rate(len, performance.now() - t0)}`);
            break;
          }
          case 'read': {
            const [o, l] = needArgs(cp, 2, 'read OFF LEN');
            const off = parseSize(o!);
            const len = parseSize(l!);
            const buf = new Uint8Array(len);
            await b.read(off, [buf]);
            const ps = str(cp, '-P');
            if (ps !== undefined) {
              const pat = parsePattern(ps);
              const bad = buf.findIndex((v) => v !== pat);
              if (bad >= 0) {
                out.write(`Pattern verification failed at offset ${off}, ${len} bytes\n`);
                status = 1;
              }
            }
            out.write(`read ${len}/${len} bytes at offset ${off}\n${rate(len, performance.now() - t0)}`);
            break;
          }
          case 'flush':
            await b.flush();
            break;
          case 'discard': {
            const [o, l] = needArgs(cp, 2, 'discard OFF LEN');
            const off = parseSize(o!);
            const len = parseSize(l!);
            await b.discard(off, len);
            out.write(`discard ${len}/${len} bytes at offset ${off}\n${rate(len, performance.now() - t0)}`);
            break;
          }
          default:
            throw new UsageError(`unknown io command '${op}' (write, read, flush, discard)`);
        }
      } catch (e) {
        if (e instanceof UsageError) throw e;
        err.write(`${op} failed: ${e instanceof Error ? e.message : String(e)}\n`);
        status = 1;
      }
    }
  } finally {
    await b.close();
  }
  return status;
}

function rate(bytes: number, ms: number): string {
  const s = ms / 1000;
  return `${human(bytes)}, 1 ops; ${s.toFixed(4)} sec (${(bytes / 1048576 / Math.max(s, 1e-9)).toFixed(3)} MiB/sec and ${(1 / Math.max(s, 1e-9)).toFixed(4)} ops/sec)\n`;
}

