import { closeSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, extname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { MIN_FRAME, receiveFrames, type FrameHandler, type FramesOptions, type NetBackend, type NetStats } from './backend.js';
import { NetBackendError } from './errors.js';

/** LINKTYPE_ETHERNET (tcpdump.org link-layer header types). */
const LINKTYPE_ETHERNET = 1;
/** pcap file header magic: microsecond and nanosecond timestamps (pcap-savefile(5)). */
const PCAP_MAGIC_US = 0xa1b2c3d4;
const PCAP_MAGIC_NS = 0xa1b23c4d;
const PCAP_FILE_HEADER = 24;
const PCAP_RECORD_HEADER = 16;
/** pcapng (draft-ietf-opsawg-pcapng) block types and option codes. */
const SHB_TYPE = 0x0a0d0d0a;
const BYTE_ORDER_MAGIC = 0x1a2b3c4d;
const IDB_TYPE = 0x00000001;
const EPB_TYPE = 0x00000006;
const OPT_ENDOFOPT = 0;
const SHB_USERAPPL = 4;
const IF_NAME = 2;
const IF_TSRESOL = 9;
const EPB_FLAGS = 2;
/** EPB header (28) + flags option (8) + end of options (4) + trailing length (4). */
const EPB_OVERHEAD = 28 + 8 + 4 + 4;
/** epb_flags bits 0-1: 01 inbound, 10 outbound. */
const DIR_IN = 1;
const DIR_OUT = 2;

export type CaptureDirection = 'in' | 'out';

/** A capture timestamp; a clock fills it (no allocation per frame). */
export interface CaptureTime {
  sec: number;
  nsec: number;
}

export interface CaptureOptions {
  /** The capture file. With rotation, later files are `name.1.ext`, `name.2.ext`, … */
  path: string;
  /** Default `pcapng`. */
  format?: 'pcap' | 'pcapng';
  /** Timestamp resolution written to the file (default `us`). */
  timestampResolution?: 'us' | 'ns';
  /** Bytes of each frame kept (default 65535). */
  snaplen?: number;
  /** Start a new file when the next record would make the current one larger than this. */
  maxFileBytes?: number;
  /** Keep at most this many files, deleting the oldest (a ring of files, as `tcpdump -C -W`). */
  maxFiles?: number;
  /** Fills the wall-clock time (injected for tests). */
  clock?: (out: CaptureTime) => void;
  /** pcapng interface name (default the back-end's kind). */
  interfaceName?: string;
  /** Write buffer size (default 64 KiB); `flush()` forces it out. */
  bufferBytes?: number;
}

export interface CaptureStats {
  packets: number;
  bytes: number;
  files: number;
  /** Records lost because writing failed (the capture then stops). */
  errors: number;
}

function systemClock(out: CaptureTime): void {
  const ms = performance.timeOrigin + performance.now();
  const sec = Math.floor(ms / 1000);
  out.sec = sec;
  out.nsec = Math.min(999_999_999, Math.round((ms - sec * 1000) * 1e6));
}

const SPLIT = { hi: 0, lo: 0 };

/**
 * `sec * units + frac` as two u32 words, exactly, without BigInt (the product passes
 * 2^53): 16-bit limbs. `sec` < 2^32, `units` < 2^30, `frac` < units.
 */
export function timestampUnits(sec: number, units: number, frac: number, out: { hi: number; lo: number }): void {
  const sH = Math.floor(sec / 65536);
  const sL = sec % 65536;
  const uH = Math.floor(units / 65536);
  const uL = units % 65536;
  const mid = sH * uL + sL * uH;
  const t = sL * uL + (mid % 65536) * 65536 + frac;
  out.lo = t % 0x1_0000_0000;
  out.hi = (sH * uH + Math.floor(mid / 65536) + Math.floor(t / 0x1_0000_0000)) >>> 0;
}

function pad4(n: number): number {
  return (n + 3) & ~3;
}

/**
 * Writes frames to pcap or pcapng files, buffered, with size-based rotation. Used by
 * {@link CaptureBackend}; usable alone.
 */
export class CaptureWriter {
  readonly stats: CaptureStats = { packets: 0, bytes: 0, files: 0, errors: 0 };
  /** Every file still on disk, oldest first; the last is being written. */
  readonly files: string[] = [];
  /** Why capturing stopped, if it did. */
  failure: Error | undefined;
  private readonly format: 'pcap' | 'pcapng';
  private readonly ns: boolean;
  private readonly snaplen: number;
  private readonly maxFileBytes: number;
  private readonly maxFiles: number;
  private readonly clock: (out: CaptureTime) => void;
  private readonly ifName: string;
  private readonly buf: Buffer;
  private used = 0;
  private fd = -1;
  private fileBytes = 0;
  private fileRecords = 0;
  private index = 0;
  private readonly t: CaptureTime = { sec: 0, nsec: 0 };
  private closed = false;

  constructor(
    private readonly options: CaptureOptions,
    interfaceName = 'ioplane',
  ) {
    const o = options;
    if (typeof o.path !== 'string' || o.path === '') throw new NetBackendError('invalid-config', 'capture path is empty', 'path', o.path);
    this.format = o.format ?? 'pcapng';
    if (this.format !== 'pcap' && this.format !== 'pcapng') throw new NetBackendError('invalid-config', `capture format ${String(this.format)} is neither pcap nor pcapng`, 'format', this.format);
    const res = o.timestampResolution ?? 'us';
    if (res !== 'us' && res !== 'ns') throw new NetBackendError('invalid-config', `timestampResolution ${String(res)} is neither us nor ns`, 'timestampResolution', res);
    this.ns = res === 'ns';
    this.snaplen = o.snaplen ?? 65535;
    if (!Number.isInteger(this.snaplen) || this.snaplen < MIN_FRAME || this.snaplen > 262144) throw new NetBackendError('invalid-config', `snaplen ${this.snaplen} is outside 14..262144`, 'snaplen', this.snaplen);
    this.maxFileBytes = o.maxFileBytes ?? Number.POSITIVE_INFINITY;
    const minFile = 1024 + this.snaplen + EPB_OVERHEAD;
    if (!(this.maxFileBytes >= minFile)) throw new NetBackendError('invalid-config', `maxFileBytes ${this.maxFileBytes} is below ${minFile} (headers and one full record)`, 'maxFileBytes', this.maxFileBytes);
    this.maxFiles = o.maxFiles ?? Number.POSITIVE_INFINITY;
    if (!(this.maxFiles >= 1) || (Number.isFinite(this.maxFiles) && !Number.isInteger(this.maxFiles))) throw new NetBackendError('invalid-config', `maxFiles ${this.maxFiles} is not a positive integer`, 'maxFiles', this.maxFiles);
    this.clock = o.clock ?? systemClock;
    this.ifName = o.interfaceName ?? interfaceName;
    const bufferBytes = o.bufferBytes ?? 65536;
    if (!Number.isInteger(bufferBytes) || bufferBytes < 4096) throw new NetBackendError('invalid-config', `bufferBytes ${bufferBytes} is below 4096`, 'bufferBytes', bufferBytes);
    this.buf = Buffer.alloc(bufferBytes);
    this.openNext();
  }

  private fileName(i: number): string {
    const p = this.options.path;
    if (i === 0) return p;
    const ext = extname(p);
    return join(dirname(p), `${basename(p, ext)}.${i}${ext}`);
  }

  private openNext(): void {
    if (this.fd >= 0) {
      this.flush();
      closeSync(this.fd);
      this.fd = -1;
    }
    const name = this.fileName(this.index++);
    this.fd = openSync(name, 'w');
    this.files.push(name);
    this.stats.files++;
    while (this.files.length > this.maxFiles) {
      const old = this.files.shift()!;
      try {
        unlinkSync(old);
      } catch {
        // Already removed by someone else.
      }
    }
    this.fileBytes = 0;
    this.fileRecords = 0;
    if (this.format === 'pcap') this.writePcapHeader();
    else this.writePcapngHeaders();
  }

  private room(n: number): number {
    if (this.used + n > this.buf.length) this.flush();
    const at = this.used;
    this.used += n;
    this.fileBytes += n;
    return at;
  }

  private writePcapHeader(): void {
    // pcap-savefile(5): magic, version 2.4, thiszone 0, sigfigs 0, snaplen, network.
    const b = this.buf;
    const o = this.room(PCAP_FILE_HEADER);
    b.writeUInt32LE(this.ns ? PCAP_MAGIC_NS : PCAP_MAGIC_US, o);
    b.writeUInt16LE(2, o + 4);
    b.writeUInt16LE(4, o + 6);
    b.writeInt32LE(0, o + 8);
    b.writeUInt32LE(0, o + 12);
    b.writeUInt32LE(this.snaplen, o + 16);
    b.writeUInt32LE(LINKTYPE_ETHERNET, o + 20);
  }

  private writePcapngHeaders(): void {
    const b = this.buf;
    const appl = Buffer.from('ioplane @ioplane/net-backends');
    const shbLen = 24 + 4 + pad4(appl.length) + 4 + 4;
    let o = this.room(shbLen);
    b.writeUInt32LE(SHB_TYPE, o);
    b.writeUInt32LE(shbLen, o + 4);
    b.writeUInt32LE(BYTE_ORDER_MAGIC, o + 8);
    b.writeUInt16LE(1, o + 12);
    b.writeUInt16LE(0, o + 14);
    // Section length unknown: -1.
    b.writeInt32LE(-1, o + 16);
    b.writeInt32LE(-1, o + 20);
    let p = o + 24;
    p = this.option(p, SHB_USERAPPL, appl);
    p = this.option(p, OPT_ENDOFOPT, undefined);
    b.writeUInt32LE(shbLen, p);
    const name = Buffer.from(this.ifName);
    const idbLen = 16 + 4 + pad4(name.length) + 4 + 4 + 4 + 4;
    o = this.room(idbLen);
    b.writeUInt32LE(IDB_TYPE, o);
    b.writeUInt32LE(idbLen, o + 4);
    b.writeUInt16LE(LINKTYPE_ETHERNET, o + 8);
    b.writeUInt16LE(0, o + 10);
    b.writeUInt32LE(this.snaplen, o + 12);
    p = o + 16;
    p = this.option(p, IF_NAME, name);
    p = this.option(p, IF_TSRESOL, Buffer.from([this.ns ? 9 : 6]));
    p = this.option(p, OPT_ENDOFOPT, undefined);
    b.writeUInt32LE(idbLen, p);
  }

  private option(p: number, code: number, value: Uint8Array | undefined): number {
    const b = this.buf;
    const len = value?.length ?? 0;
    b.writeUInt16LE(code, p);
    b.writeUInt16LE(len, p + 2);
    if (value) {
      b.set(value, p + 4);
      b.fill(0, p + 4 + len, p + 4 + pad4(len));
    }
    return p + 4 + pad4(len);
  }

  /** Appends one frame. Never throws: a failed write is counted and stops the capture. */
  record(frame: Uint8Array, direction: CaptureDirection): void {
    if (this.closed || this.failure) return;
    try {
      this.recordUnchecked(frame, direction);
    } catch (e) {
      this.failure = e as Error;
      this.stats.errors++;
    }
  }

  private recordUnchecked(frame: Uint8Array, direction: CaptureDirection): void {
    const cap = frame.length < this.snaplen ? frame.length : this.snaplen;
    const recLen = this.format === 'pcap' ? PCAP_RECORD_HEADER + cap : EPB_OVERHEAD + pad4(cap);
    if (this.fileRecords > 0 && this.fileBytes + recLen > this.maxFileBytes) this.openNext();
    this.clock(this.t);
    const sec = this.t.sec;
    const frac = this.ns ? this.t.nsec : Math.floor(this.t.nsec / 1000);
    if (recLen > this.buf.length) this.flush();
    const b = this.buf;
    const big = recLen > b.length;
    const o = big ? 0 : this.room(recLen);
    const hdr = big ? Buffer.alloc(recLen) : b;
    if (this.format === 'pcap') {
      hdr.writeUInt32LE(sec >>> 0, o);
      hdr.writeUInt32LE(frac, o + 4);
      hdr.writeUInt32LE(cap, o + 8);
      hdr.writeUInt32LE(frame.length, o + 12);
      hdr.set(cap === frame.length ? frame : frame.subarray(0, cap), o + 16);
    } else {
      // EPB timestamp: 64-bit count of if_tsresol units since the epoch, high word first.
      timestampUnits(sec, this.ns ? 1e9 : 1e6, frac, SPLIT);
      hdr.writeUInt32LE(EPB_TYPE, o);
      hdr.writeUInt32LE(recLen, o + 4);
      hdr.writeUInt32LE(0, o + 8);
      hdr.writeUInt32LE(SPLIT.hi, o + 12);
      hdr.writeUInt32LE(SPLIT.lo, o + 16);
      hdr.writeUInt32LE(cap, o + 20);
      hdr.writeUInt32LE(frame.length, o + 24);
      hdr.set(cap === frame.length ? frame : frame.subarray(0, cap), o + 28);
      let p = o + 28 + cap;
      const padded = o + 28 + pad4(cap);
      hdr.fill(0, p, padded);
      p = padded;
      hdr.writeUInt16LE(EPB_FLAGS, p);
      hdr.writeUInt16LE(4, p + 2);
      hdr.writeUInt32LE(direction === 'in' ? DIR_IN : DIR_OUT, p + 4);
      hdr.writeUInt32LE(0, p + 8);
      hdr.writeUInt32LE(recLen, p + 12);
    }
    if (big) {
      writeSync(this.fd, hdr, 0, recLen);
      this.fileBytes += recLen;
    }
    this.fileRecords++;
    this.stats.packets++;
    this.stats.bytes += frame.length;
  }

  /** Writes the buffer out. */
  flush(): void {
    if (this.used === 0 || this.fd < 0) return;
    let off = 0;
    while (off < this.used) off += writeSync(this.fd, this.buf, off, this.used - off);
    this.used = 0;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.flush();
    } catch (e) {
      this.failure ??= e as Error;
      this.stats.errors++;
    }
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

/**
 * Wraps any back-end and records every frame it sends and receives (pcap or
 * pcapng; pcapng marks the direction with epb_flags). Everything else is the
 * inner back-end's: stats, MTU, link, back-pressure.
 */
export class CaptureBackend implements NetBackend {
  readonly kind: string;
  readonly writer: CaptureWriter;
  private handler: FrameHandler | null = null;
  private readonly rx = (f: Uint8Array): void => {
    this.writer.record(f, 'in');
    this.handler?.(f);
  };

  constructor(
    readonly inner: NetBackend,
    options: CaptureOptions,
  ) {
    this.kind = `capture(${inner.kind})`;
    this.writer = new CaptureWriter(options, inner.kind);
  }

  get mtu(): number {
    return this.inner.mtu;
  }
  get maxFrameSize(): number {
    return this.inner.maxFrameSize;
  }
  get linkUp(): boolean {
    return this.inner.linkUp;
  }
  get closed(): boolean {
    return this.inner.closed;
  }
  get stats(): Readonly<NetStats> {
    return this.inner.stats;
  }
  get paused(): boolean {
    return this.inner.paused;
  }

  send(frames: readonly Uint8Array[], count = frames.length): number {
    const up = this.inner.linkUp;
    const k = this.inner.send(frames, count);
    if (up) {
      const max = this.inner.maxFrameSize;
      for (let i = 0; i < k; i++) {
        const f = frames[i]!;
        if (f.length >= MIN_FRAME && f.length <= max) this.writer.record(f, 'out');
      }
    }
    return k;
  }

  writable(): Promise<void> {
    return this.inner.writable();
  }

  onReceive(handler: FrameHandler | null): void {
    this.handler = handler;
    this.inner.onReceive(handler ? this.rx : null);
  }

  pause(): void {
    this.inner.pause();
  }

  resume(): void {
    this.inner.resume();
  }

  frames(options?: FramesOptions): AsyncIterableIterator<Uint8Array> {
    return receiveFrames(this, options);
  }

  onLinkChange(listener: (up: boolean) => void): () => void {
    return this.inner.onLinkChange(listener);
  }

  /** Writes buffered records to the file. */
  flush(): void {
    this.writer.flush();
  }

  async close(): Promise<void> {
    await this.inner.close();
    this.writer.close();
  }
}

/** Wraps `backend` in a capture (see {@link CaptureBackend}). */
export function capture(backend: NetBackend, options: CaptureOptions): CaptureBackend {
  return new CaptureBackend(backend, options);
}
