import { type Access, type DmaMemory, GuestMemory, GuestMemoryError } from '@ioplane/guest-memory';
import { DmaFault, FAULT_REASONS, FaultCode, type FaultRecord, type FaultSink, VTD_FAULT_CODES } from './errors.js';

/** Where a successful translation is written (preallocated by the caller: no object per access). */
export interface TranslationOut {
  /** The guest-physical address `addr` translates to. */
  gpa: number;
  /** Start of the run holding `addr` (≤ addr): [start, end) all translate with the same offset and permission. */
  start: number;
  /** One past the last bus address contiguous with `addr` under the same translation and permission (> addr). */
  end: number;
  /**
   * Optional, for a source that reads ahead (a VT-d walk that reads the
   * leaves after the one it walked to): room for the translations of the
   * 4 KiB pages that follow, one number per page — entry k for the page at
   * `aheadStart + k × 4096`, k < `aheadCount` (which the caller zeroes
   * before asking). An entry is 0 for a page not translated, else `delta +
   * rights`: delta the guest-physical address minus the page's bus address
   * (a multiple of 4096), rights 1 read, 2 write, 3 both in its low bits
   * (`entry & 3`). A source may hand these to the caller instead of caching
   * them itself; they are translations it could cache under the same
   * generation, and a caller may cache them as it caches `[start, end)`.
   */
  ahead?: Float64Array;
  aheadStart?: number;
  aheadCount?: number;
}

/** The rights of an `ahead` entry (its low bits: ToInt32 keeps them for any safe integer). */
export function aheadRights(entry: number): number {
  return entry & 3;
}

/**
 * Something that turns bus addresses (IOVAs) of one endpoint into
 * guest-physical addresses: a virtio-iommu endpoint, a VT-d context.
 */
export interface TranslationSource {
  /** The endpoint ID faults are reported against. */
  readonly endpoint: number;
  /**
   * Changes whenever a translation this source returned may have stopped
   * being valid (an unmap, a detach, an invalidation). A caller may keep a
   * translation only while the generation it was made under is current.
   */
  readonly generation: number;
  /**
   * Translates `addr` (a non-negative safe integer) for `access`. Returns 0 and
   * fills `out`, or returns a nonzero `FaultCode` and leaves `out` alone.
   */
  translate(addr: number, access: Access, out: TranslationOut): number;
  /**
   * Optional: whether a translation of [start, end) made under generation
   * `since` still holds (nothing since revoked anything in the range). Lets
   * translations survive a bump that concerned other addresses. May answer
   * false when unsure; must never answer true for a revoked range. Without
   * it, only the current generation is trusted.
   */
  unchangedSince?(since: number, start: number, end: number): boolean;
  /**
   * Optional, for a source that reads ahead: reads the translations of the
   * 4 KiB page holding `addr` and of the pages after it into `out.ahead`
   * (entry 0 for that page; `aheadStart`, `aheadCount` set as a read-ahead
   * sets them) from the paging structures the source has cached — no walk,
   * nothing cached by the source. False when it cannot (nothing cached for
   * `addr`, translation off, no room): the caller translates as usual.
   * What it reads is current: a caller that missed its read-ahead on a page
   * the driver had not mapped yet when it was read asks for it again this way.
   */
  readAhead?(addr: number, out: TranslationOut): boolean;
}

const TWO_53 = 2 ** 53;
/** Runs longer than this are not verified against the inner memory when cached (a bypass identity run reaches 2^53). */
const MAX_VERIFY = 2 ** 40;
/** Entries per direction of the checked-range table (`translateRange`), indexed by 4 KiB page of the address. */
const RANGE_BITS = 7;
const RANGE_SLOTS = 1 << RANGE_BITS;
const RANGE_PAGE = 4096;
/** Room for read-ahead translations (`TranslationOut.ahead`): a VT-d prefetch of eight 64-byte lines, less the walked leaf. */
const AHEAD = 63;
/** `fromWindow`: the page is in the window's reach but not usable there (read again with `readAhead`). */
const WINDOW_STALE = -2;
/** Pages past the window's end still in its reach (one 64-byte line of leaves). */
const WINDOW_REACH = 8;

/**
 * The checked-range slot of `addr`: the low 32 bits of its page number
 * (ToUint32 keeps them for any address below 2^53), folded into RANGE_BITS by
 * XOR. RANGE_SLOTS pages at a power-of-two stride (one page, or 64 KiB
 * buffers) from an aligned start take distinct slots: the index bits land in
 * one chunk or split over two without overlapping. A multiplicative
 * (Fibonacci) hash does not: at a 16-page stride its top bits took only 8 of
 * 64 slots, and 32 buffers 64 KiB apart missed at nearly every request.
 */
function emptyRanges(slots: number): Float64Array {
  const r = new Float64Array(4 * slots);
  for (let i = 0; i < slots; i++) r[4 * i] = 1;
  return r;
}

export function rangeSlot(addr: number): number {
  const p = (addr / RANGE_PAGE) >>> 0;
  return (p ^ (p >>> 7) ^ (p >>> 14) ^ (p >>> 21) ^ (p >>> 28)) & (RANGE_SLOTS - 1);
}

/**
 * A `DmaMemory` that translates every address through a `TranslationSource`
 * before touching the inner (guest-physical) memory: the vIOMMU as a wrapper
 * of guest memory, as rust-vmm `vm-memory`'s `IommuMemory` is.
 *
 * Every access is translated whole before a byte moves: the range is split
 * into guest-physical chunks (adjacent chunks merged), every chunk is checked
 * against the inner memory, and only then is anything read or written. A
 * range may span several mappings as long as each permits the access. A
 * failure reports one `FaultRecord` to the sink and throws a `DmaFault` (a
 * `GuestMemoryError` of kind `fault`) naming the IOVA, with no effect.
 *
 * Allocation: scalar accesses and single-chunk ranges allocate nothing; a
 * range that translates to several chunks makes one `subarray` view per chunk
 * (the `DmaMemory` interface takes whole arrays).
 */
export class TranslatingMemory implements DmaMemory {
  /** `ahead` room: as many leaves as a VT-d prefetch reads after the walked one (eight lines of eight, less that one). */
  private readonly out: TranslationOut = { gpa: 0, start: 0, end: 0, ahead: new Float64Array(AHEAD), aheadStart: 0, aheadCount: 0 };
  /**
   * The read-ahead window: the translations the source read ahead with its
   * last one (`out.ahead`, whose array is taken over, not copied: the spare
   * goes back to `out`), for the pages [winStart, winStart + winCount ×
   * 4096), made under generation `winGen`. A miss of the checked-range table
   * inside it is served from it — the next requests' fresh IOVAs of a
   * next-fit allocator — after the page is checked against RAM (not recorded
   * in the table: the window serves it again). A generation change keeps the window when nothing since
   * touched it (`unchangedSince`), else keeps each page nothing touched.
   */
  private winBuf: Float64Array = new Float64Array(AHEAD);
  private winSpare: Float64Array = new Float64Array(AHEAD);
  private winStart = 0;
  private winCount = 0;
  private winGen = -1;
  /**
   * Checked-range table misses served from the read-ahead window; read-aheads
   * taken as the window; of those, the ones asked for again (`readAhead`) on
   * a page in the window's reach it could not serve (tests, benchmarks).
   */
  readonly windowStats = { hits: 0, adopted: 0, reread: 0 };
  /**
   * The last two runs translated for each direction (a small TLB in front of
   * the source's IOTLB: a request's accesses alternate between the ring area
   * — header, status byte — and its data buffer, so two entries per
   * direction serve all but the first touch of each). Entry 0 is [r0Start,
   * r0End) → +r0Delta, entry 1 likewise; `rNext` is the one to replace. All
   * are valid only while the source's generation is `rGen` (`wGen` for
   * writes), the one they were filled under, so they are never stale either:
   * the first access after a generation change empties the direction.
   */
  private rGen = -1;
  private r0Start = 1;
  private r0End = 0;
  private r0Delta = 0;
  /** 0: not checked against RAM yet, 1: wholly accessible, 2: not (checked lazily, by `runChecked`). */
  private r0Ok = 0;
  private r1Start = 1;
  private r1End = 0;
  private r1Delta = 0;
  /** 0: not checked against RAM yet, 1: wholly accessible, 2: not (checked lazily, by `runChecked`). */
  private r1Ok = 0;
  private rNext = 0;
  private wGen = -1;
  private w0Start = 1;
  private w0End = 0;
  private w0Delta = 0;
  /** 0: not checked against RAM yet, 1: wholly accessible, 2: not (checked lazily, by `runChecked`). */
  private w0Ok = 0;
  private w1Start = 1;
  private w1End = 0;
  private w1Delta = 0;
  /** 0: not checked against RAM yet, 1: wholly accessible, 2: not (checked lazily, by `runChecked`). */
  private w1Ok = 0;
  private wNext = 0;
  /** After a `translateOne`: which cached run served it (0 r0, 1 r1, 2 w0, 3 w1), or −1. */
  private hit = -1;
  private readonly stableInner: boolean;
  /**
   * The checked-range table behind `translateRange`: per direction
   * (reads at [0, RANGE_SLOTS), writes after), direct-mapped by a hash of the 4 KiB page
   * of the address it was filled for, one translated run each — [start, end)
   * → +delta, verified against guest RAM for that direction, made under
   * generation `rangeGen`. A queue translates the same few ranges over and
   * over (the ring area's header and status bytes, the data buffers of
   * static mappings or of a reused pool): a hit is a compare, no source call
   * and no RAM check. Entries survive a generation change that did not touch
   * their run (`source.unchangedSince`).
   */
  /** Slot i at [4i, 4i+4): start, end, delta, generation — one cache line per lookup, not four. */
  private readonly range = emptyRanges(2 * RANGE_SLOTS);
  /** Hit/miss counters of the checked-range table (tests, benchmarks). */
  readonly rangeStats = { hits: 0, misses: 0, revalidated: 0 };
  private gpas = new Float64Array(8);
  private lens = new Float64Array(8);
  private count = 0;
  private readonly scratch = new DataView(new ArrayBuffer(8));
  private readonly scratchBytes = new Uint8Array(this.scratch.buffer);

  constructor(
    readonly inner: DmaMemory,
    readonly source: TranslationSource,
    private readonly sink?: FaultSink,
    /** Keep the last runs per direction (false: every access asks the source). */
    private readonly micro = true,
  ) {
    this.stableInner = inner instanceof GuestMemory;
  }

  /** Whether the run [start, end) → start + delta is wholly inner memory accessible for `access` (fill time, never on a hit). */
  /**
   * After `inRun` returned true: whether the whole cached run that served it
   * is inner memory accessible in its direction — checked against RAM the
   * first time a range check needs it, then remembered with the run (so a
   * range inside it needs no inner check). Only for an inner `GuestMemory`,
   * whose regions never change; false for a run that was not cached.
   */
  private runChecked(): boolean {
    switch (this.hit) {
      case 0:
        if (this.r0Ok === 0) this.r0Ok = this.verify(this.r0Start, this.r0End, this.r0Delta, 'read') ? 1 : 2;
        return this.r0Ok === 1;
      case 1:
        if (this.r1Ok === 0) this.r1Ok = this.verify(this.r1Start, this.r1End, this.r1Delta, 'read') ? 1 : 2;
        return this.r1Ok === 1;
      case 2:
        if (this.w0Ok === 0) this.w0Ok = this.verify(this.w0Start, this.w0End, this.w0Delta, 'write') ? 1 : 2;
        return this.w0Ok === 1;
      case 3:
        if (this.w1Ok === 0) this.w1Ok = this.verify(this.w1Start, this.w1End, this.w1Delta, 'write') ? 1 : 2;
        return this.w1Ok === 1;
      default:
        return false;
    }
  }

  private verify(start: number, end: number, delta: number, access: Access): boolean {
    if (!this.stableInner || end - start > MAX_VERIFY) return false;
    try {
      this.inner.checkRange(start + delta, end - start, access);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * The generation moved since the read runs were filled: keep each run the
   * source vouches for (nothing since revoked any of it — a strict UNMAP of
   * another buffer leaves the ring area's run alone), drop the others.
   */
  private refreshReads(gen: number): void {
    const src = this.source;
    const old = this.rGen;
    if (!(old >= 0 && src.unchangedSince !== undefined && this.r0Start < this.r0End && src.unchangedSince(old, this.r0Start, this.r0End))) {
      this.r0Start = 1;
      this.r0End = 0;
    }
    if (!(old >= 0 && src.unchangedSince !== undefined && this.r1Start < this.r1End && src.unchangedSince(old, this.r1Start, this.r1End))) {
      this.r1Start = 1;
      this.r1End = 0;
    }
    this.rGen = gen;
  }

  /** `refreshReads` for the write runs. */
  private refreshWrites(gen: number): void {
    const src = this.source;
    const old = this.wGen;
    if (!(old >= 0 && src.unchangedSince !== undefined && this.w0Start < this.w0End && src.unchangedSince(old, this.w0Start, this.w0End))) {
      this.w0Start = 1;
      this.w0End = 0;
    }
    if (!(old >= 0 && src.unchangedSince !== undefined && this.w1Start < this.w1End && src.unchangedSince(old, this.w1Start, this.w1End))) {
      this.w1Start = 1;
      this.w1End = 0;
    }
    this.wGen = gen;
  }

  /** Translates `addr` into `this.out` through the run cache, then the source; returns 0 or a fault code. */
  private translateOne(addr: number, access: Access): number {
    const out = this.out;
    const gen = this.source.generation;
    if (access === 'read') {
      if (gen !== this.rGen) this.refreshReads(gen);
      if (addr >= this.r0Start && addr < this.r0End) {
        out.gpa = addr + this.r0Delta;
        out.start = this.r0Start;
        out.end = this.r0End;
        this.hit = 0;
        this.rNext = 1;
        return 0;
      }
      if (addr >= this.r1Start && addr < this.r1End) {
        out.gpa = addr + this.r1Delta;
        out.start = this.r1Start;
        out.end = this.r1End;
        this.hit = 1;
        this.rNext = 0;
        return 0;
      }
    } else {
      if (gen !== this.wGen) this.refreshWrites(gen);
      if (addr >= this.w0Start && addr < this.w0End) {
        out.gpa = addr + this.w0Delta;
        out.start = this.w0Start;
        out.end = this.w0End;
        this.hit = 2;
        this.wNext = 1;
        return 0;
      }
      if (addr >= this.w1Start && addr < this.w1End) {
        out.gpa = addr + this.w1Delta;
        out.start = this.w1Start;
        out.end = this.w1End;
        this.hit = 3;
        this.wNext = 0;
        return 0;
      }
    }
    this.hit = -1;
    const code = this.source.translate(addr, access, out);
    if (code === 0 && this.micro) {
      // Filled under the generation read before the translation: if translating changed it, the entry is dropped at the next access.
      const delta = out.gpa - addr;
      const ok = 0; // checked against RAM lazily (runChecked)
      if (access === 'read') {
        this.rGen = gen;
        if (this.rNext === 0) {
          this.r0Start = out.start;
          this.r0End = out.end;
          this.r0Delta = delta;
          this.r0Ok = ok;
          this.hit = 0;
          this.rNext = 1;
        } else {
          this.r1Start = out.start;
          this.r1End = out.end;
          this.r1Delta = delta;
          this.r1Ok = ok;
          this.hit = 1;
          this.rNext = 0;
        }
      } else {
        this.wGen = gen;
        if (this.wNext === 0) {
          this.w0Start = out.start;
          this.w0End = out.end;
          this.w0Delta = delta;
          this.w0Ok = ok;
          this.hit = 2;
          this.wNext = 1;
        } else {
          this.w1Start = out.start;
          this.w1End = out.end;
          this.w1Delta = delta;
          this.w1Ok = ok;
          this.hit = 3;
          this.wNext = 0;
        }
      }
    }
    return code;
  }

  /** Translates a scalar access of `len` bytes; returns its guest-physical address, or -1 if it crosses a translation boundary. */
  private scalar(addr: number, len: number, access: Access): number {
    if (!Number.isSafeInteger(addr) || addr < 0 || addr + len > TWO_53) throw invalid(addr, len, access);
    const code = this.translateOne(addr, access);
    if (code !== 0) throw this.fault(code, addr, addr, len, access);
    if (this.out.end >= addr + len) return this.out.gpa;
    return -1;
  }

  /**
   * Resolves [addr, addr+len) into `count` guest-physical chunks, or throws.
   * With `checkInner`, also checks every chunk against the inner memory.
   */
  private resolve(addr: number, len: number, access: Access, checkInner: boolean): void {
    if (!Number.isSafeInteger(addr) || addr < 0 || !Number.isSafeInteger(len) || len < 0 || addr + len > TWO_53) {
      throw invalid(addr, len, access);
    }
    this.count = 0;
    const end = addr + len;
    const out = this.out;
    let a = addr;
    // Each round advances `a` by at least one byte (out.end > a), and in
    // practice by a whole mapping or leaf page.
    while (a < end) {
      const code = this.translateOne(a, access);
      if (code !== 0) throw this.fault(code, a, addr, len, access);
      const stop = out.end < end ? out.end : end;
      // A source must make progress (end > addr); one that does not is refused rather than looped on.
      if (!(stop > a)) throw this.fault(FaultCode.badTarget, a, addr, len, access);
      this.push(out.gpa, stop - a);
      a = stop;
    }
    if (checkInner) {
      for (let i = 0; i < this.count; i++) {
        try {
          this.inner.checkRange(this.gpas[i]!, this.lens[i]!, access);
        } catch (e) {
          throw this.badChunk(e, addr, len, access, i);
        }
      }
    }
  }

  private push(gpa: number, n: number): void {
    const c = this.count;
    if (c > 0 && this.gpas[c - 1]! + this.lens[c - 1]! === gpa) {
      this.lens[c - 1] = this.lens[c - 1]! + n;
      return;
    }
    if (c === this.gpas.length) {
      const g = new Float64Array(c * 2);
      g.set(this.gpas);
      this.gpas = g;
      const l = new Float64Array(c * 2);
      l.set(this.lens);
      this.lens = l;
    }
    this.gpas[c] = gpa;
    this.lens[c] = n;
    this.count = c + 1;
  }

  /** The IOVA where chunk `index` begins. */
  private chunkIova(addr: number, index: number): number {
    let a = addr;
    for (let i = 0; i < index; i++) a += this.lens[i]!;
    return a;
  }

  private fault(code: number, at: number, addr: number, len: number, access: Access): DmaFault {
    const vtd = VTD_FAULT_CODES[code];
    const record: FaultRecord = {
      endpoint: this.source.endpoint,
      address: at,
      accessStart: addr,
      accessLength: len,
      access,
      reason: FAULT_REASONS[code] ?? 'bad-target',
      ...(vtd === undefined ? {} : { vtdReason: vtd }),
    };
    // A probe (`checkRange`) is not an access: it fails the same way but records nothing.
    if (!this.probing) this.sink?.report(record);
    return new DmaFault(record);
  }

  /**
   * The translation worked but the guest-physical target is not (writable)
   * guest memory: a fault at the first IOVA whose target fails, found by
   * bisecting the chunk with `checkRange` (fault path only).
   */
  private badTarget(e: unknown, addr: number, len: number, access: Access, iova: number, gpa: number, n: number): unknown {
    if (!(e instanceof GuestMemoryError)) return e;
    let ok = 0; // [gpa, gpa+ok) is accessible
    let bad = n; // [gpa, gpa+bad) is not
    while (bad - ok > 1) {
      const mid = ok + Math.floor((bad - ok) / 2);
      try {
        this.inner.checkRange(gpa, mid, access);
        ok = mid;
      } catch {
        bad = mid;
      }
    }
    return this.fault(FaultCode.badTarget, iova + ok, addr, len, access);
  }

  private badChunk(e: unknown, addr: number, len: number, access: Access, chunk: number): unknown {
    return this.badTarget(e, addr, len, access, this.chunkIova(addr, chunk), this.gpas[chunk]!, this.lens[chunk]!);
  }

  /**
   * Throws the `DmaFault` an access to [addr, addr+len) would, without
   * recording a fault: a check is not a DMA (a virtqueue checks descriptor
   * buffers when it pops a chain; the device's access that follows is what
   * faults, once).
   */
  checkRange(addr: number, len: number, access: Access): void {
    if (len === 0 && Number.isSafeInteger(addr) && addr >= 0) return;
    // One cached run that covers the range and was verified against RAM: nothing can fail.
    if (this.inRun(addr, len, access) && this.runChecked()) return;
    this.probing = true;
    try {
      this.resolve(addr, len, access, true);
    } finally {
      this.probing = false;
    }
  }

  // ── TranslatingDma (@ioplane/virtqueue): translate a descriptor's buffer once ──

  /** The guest-physical memory behind the translation (what `translateRange` addresses name). */
  get physical(): DmaMemory {
    return this.inner;
  }

  /** The source's generation: a translation made under it is current. */
  get translationGeneration(): number {
    return this.source.generation;
  }

  /**
   * Whether a translation of [addr, addr+len) made under generation
   * `generation` still holds: the generation is current, or the source
   * vouches that nothing since revoked any of the range. Conservative when
   * the source keeps no record (VT-d: only the current generation counts).
   */
  stillValid(addr: number, len: number, generation: number): boolean {
    const src = this.source;
    if (src.generation === generation) return true;
    return src.unchangedSince !== undefined && generation >= 0 && src.unchangedSince(generation, addr, addr + len);
  }

  /**
   * `checkRange` of [addr, addr+len) — the same errors, nothing recorded —
   * that also returns the range's guest-physical address when it is one run
   * verified accessible in guest RAM for `access` (else -1: the caller goes
   * through this memory as before). Only over a `GuestMemory` (whose regions
   * never change) is anything returned: a verified range stays verified.
   * Served from the checked-range table when it holds a run covering the
   * range under the current generation (or one the source says is
   * unchanged); otherwise from the read-ahead window (read again through the
   * source's `readAhead` when it falls short; not recorded), or translated,
   * verified and recorded there.
   */
  translateRange(addr: number, len: number, access: Access): number {
    if (!this.stableInner || !(len > 0) || !Number.isSafeInteger(addr) || addr < 0 || !Number.isSafeInteger(len) || addr + len > TWO_53) {
      this.checkRange(addr, len, access);
      return -1;
    }
    const gen = this.source.generation;
    const i = (rangeSlot(addr) + (access === 'read' ? 0 : RANGE_SLOTS)) << 2;
    const r = this.range;
    const start = r[i]!;
    const end = r[i + 1]!;
    if (addr >= start && addr + len <= end) {
      const eg = r[i + 3]!;
      if (eg === gen) {
        this.rangeStats.hits++;
        return addr + r[i + 2]!;
      }
      const src = this.source;
      if (src.unchangedSince !== undefined && src.unchangedSince(eg, start, end)) {
        r[i + 3] = gen;
        this.rangeStats.revalidated++;
        return addr + r[i + 2]!;
      }
    }
    this.rangeStats.misses++;
    // The slot's run, if it held this range, was revoked: it goes. Another range's run stays.
    if (addr >= start && addr + len <= end) {
      r[i] = 1;
      r[i + 1] = 0;
    }
    const out = this.out;
    if (this.winCount > 0) {
      let g = this.fromWindow(addr, len, access, gen);
      if (g >= 0) return g;
      // Near the window but not in it as a usable leaf: most often a page the driver mapped after
      // the window was read. Read the window again from that page, through the source's cached
      // paging structures, before anything costlier (a walk).
      if (g === WINDOW_STALE && this.source.readAhead !== undefined) {
        out.aheadCount = 0;
        if (this.source.readAhead(addr, out) && out.aheadCount > 0) {
          this.adoptWindow(gen);
          this.windowStats.reread++;
          g = this.fromWindow(addr, len, access, gen);
          if (g >= 0) return g;
        }
      }
    }
    out.aheadCount = 0;
    // One translation, through the run cache and the source; records nothing.
    const code = this.translateOne(addr, access);
    if (out.aheadCount > 0) this.adoptWindow(gen);
    if (code === 0 && out.end >= addr + len) {
      const gpa = out.gpa;
      if (this.runChecked()) {
        // The whole run is RAM for this direction: record all of it.
        r[i] = out.start;
        r[i + 1] = out.end;
        r[i + 2] = gpa - addr;
        r[i + 3] = gen;
        return gpa;
      }
      // The run could not be verified whole (a bypass run reaching 2^53, or one partly outside RAM):
      // check just the range, the way checkRange does, and record only it.
      this.checkRange(addr, len, access);
      r[i] = addr;
      r[i + 1] = addr + len;
      r[i + 2] = gpa - addr;
      r[i + 3] = gen;
      return gpa;
    }
    // A fault (thrown here, as checkRange throws it) or a range over several runs (not carried).
    this.checkRange(addr, len, access);
    return -1;
  }

  /**
   * Takes the source's read-ahead (`out.ahead`, made under generation `gen`,
   * read before asking) as the window; the window's old array becomes the
   * room for the next.
   */
  private adoptWindow(gen: number): void {
    const out = this.out;
    const buf = out.ahead!;
    out.ahead = this.winSpare;
    this.winSpare = this.winBuf;
    this.winBuf = buf;
    this.winStart = out.aheadStart!;
    this.winCount = Math.min(out.aheadCount!, buf.length);
    this.winGen = gen;
    out.aheadCount = 0;
    this.windowStats.adopted++;
  }

  /**
   * A checked-range table miss at `addr` (generation `gen`) served from
   * the read-ahead window: the page's translation there permits `access`,
   * holds [addr, addr+len), has not been revoked since the window was read,
   * and lies in RAM accessible for `access` — then its guest-physical
   * address is returned. Else `WINDOW_STALE` when the page is in the window
   * without the rights, or just past its end (worth reading again), or −1.
   */
  private fromWindow(addr: number, len: number, access: Access, gen: number): number {
    const k = Math.floor((addr - this.winStart) / RANGE_PAGE);
    if (!(k >= 0 && k < this.winCount)) return k >= 0 && k < this.winCount + WINDOW_REACH ? WINDOW_STALE : -1;
    const entry = this.winBuf[k]!;
    const need = access === 'read' ? 1 : 2;
    if ((aheadRights(entry) & need) === 0) return WINDOW_STALE;
    const page = this.winStart + k * RANGE_PAGE;
    if (addr + len > page + RANGE_PAGE) return -1;
    if (gen !== this.winGen) {
      const src = this.source;
      if (src.unchangedSince === undefined) return -1;
      const end = this.winStart + this.winCount * RANGE_PAGE;
      if (src.unchangedSince(this.winGen, this.winStart, end)) this.winGen = gen;
      else if (!src.unchangedSince(this.winGen, page, page + RANGE_PAGE)) return -1;
    }
    const delta = entry - aheadRights(entry);
    // Checked against RAM as `verify` does, by one region lookup (translateRange gets here only over a GuestMemory).
    const g = page + delta;
    const reg = (this.inner as GuestMemory).findRegion(g);
    if (reg === undefined || g + RANGE_PAGE > reg.end || (reg.readonly && need === 2)) return -1;
    // Not recorded in the checked-range table: the window serves the page again as cheaply, and a
    // recording would take the slot of a page in constant use (a ring's) once per RANGE_SLOTS fresh IOVAs.
    this.windowStats.hits++;
    return addr + delta;
  }

  /**
   * Fast path: true when [addr, addr+len) is a valid range that one run
   * translates whole (then `out.gpa` is its guest-physical address). False
   * sends the caller down the general path, which redoes the translation
   * and reports whatever fails — so this never records a fault.
   */
  private inRun(addr: number, len: number, access: Access): boolean {
    if (!Number.isSafeInteger(addr) || addr < 0 || !Number.isSafeInteger(len) || len <= 0 || addr + len > TWO_53) return false;
    // translateOne records nothing: a fault is reported once, by the general path that follows.
    if (this.translateOne(addr, access) !== 0) return false;
    return this.out.end >= addr + len;
  }

  /** Inside `checkRange`: faults are thrown, not recorded. */
  private probing = false;

  readU8(addr: number): number {
    const g = this.scalar(addr, 1, 'read');
    try {
      return this.inner.readU8(g);
    } catch (e) {
      throw this.badTarget(e, addr, 1, 'read', addr, g, 1);
    }
  }

  readU16(addr: number): number {
    const g = this.scalar(addr, 2, 'read');
    if (g < 0) {
      this.readInto(addr, this.scratchBytes.subarray(0, 2));
      return this.scratch.getUint16(0, true);
    }
    try {
      return this.inner.readU16(g);
    } catch (e) {
      throw this.badTarget(e, addr, 2, 'read', addr, g, 2);
    }
  }

  readU32(addr: number): number {
    const g = this.scalar(addr, 4, 'read');
    if (g < 0) {
      this.readInto(addr, this.scratchBytes.subarray(0, 4));
      return this.scratch.getUint32(0, true);
    }
    try {
      return this.inner.readU32(g);
    } catch (e) {
      throw this.badTarget(e, addr, 4, 'read', addr, g, 4);
    }
  }

  readU64(addr: number): bigint {
    const g = this.scalar(addr, 8, 'read');
    if (g < 0) {
      this.readInto(addr, this.scratchBytes);
      return this.scratch.getBigUint64(0, true);
    }
    try {
      return this.inner.readU64(g);
    } catch (e) {
      throw this.badTarget(e, addr, 8, 'read', addr, g, 8);
    }
  }

  readU53(addr: number): number {
    const g = this.scalar(addr, 8, 'read');
    if (g < 0) {
      this.readInto(addr, this.scratchBytes);
      const lo = this.scratch.getUint32(0, true);
      const hi = this.scratch.getUint32(4, true);
      if (hi > 0x1f_ffff) {
        throw new GuestMemoryError('too-large', addr, 8, `u64 at IOVA 0x${addr.toString(16)} does not fit in 53 bits`, 'read');
      }
      return hi * 0x1_0000_0000 + lo;
    }
    try {
      return this.inner.readU53(g);
    } catch (e) {
      if (e instanceof GuestMemoryError && e.kind === 'too-large') {
        throw new GuestMemoryError('too-large', addr, 8, `u64 at IOVA 0x${addr.toString(16)} does not fit in 53 bits`, 'read');
      }
      throw this.badTarget(e, addr, 8, 'read', addr, g, 8);
    }
  }

  writeU8(addr: number, value: number): void {
    const g = this.scalar(addr, 1, 'write');
    try {
      this.inner.writeU8(g, value);
    } catch (e) {
      throw this.badTarget(e, addr, 1, 'write', addr, g, 1);
    }
  }

  writeU16(addr: number, value: number): void {
    const g = this.scalar(addr, 2, 'write');
    if (g < 0) {
      this.scratch.setUint16(0, value, true);
      this.writeFrom(addr, this.scratchBytes.subarray(0, 2));
      return;
    }
    try {
      this.inner.writeU16(g, value);
    } catch (e) {
      throw this.badTarget(e, addr, 2, 'write', addr, g, 2);
    }
  }

  writeU32(addr: number, value: number): void {
    const g = this.scalar(addr, 4, 'write');
    if (g < 0) {
      this.scratch.setUint32(0, value, true);
      this.writeFrom(addr, this.scratchBytes.subarray(0, 4));
      return;
    }
    try {
      this.inner.writeU32(g, value);
    } catch (e) {
      throw this.badTarget(e, addr, 4, 'write', addr, g, 4);
    }
  }

  writeU64(addr: number, value: bigint): void {
    const g = this.scalar(addr, 8, 'write');
    if (g < 0) {
      this.scratch.setBigUint64(0, BigInt.asUintN(64, value), true);
      this.writeFrom(addr, this.scratchBytes);
      return;
    }
    try {
      this.inner.writeU64(g, value);
    } catch (e) {
      throw this.badTarget(e, addr, 8, 'write', addr, g, 8);
    }
  }

  writeU53(addr: number, value: number): void {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new GuestMemoryError('too-large', addr, 8, `value ${String(value)} written at IOVA ${String(addr)} is not a non-negative safe integer`, 'write');
    }
    const g = this.scalar(addr, 8, 'write');
    if (g < 0) {
      this.scratch.setUint32(0, value >>> 0, true);
      this.scratch.setUint32(4, Math.floor(value / 0x1_0000_0000), true);
      this.writeFrom(addr, this.scratchBytes);
      return;
    }
    try {
      this.inner.writeU53(g, value);
    } catch (e) {
      throw this.badTarget(e, addr, 8, 'write', addr, g, 8);
    }
  }

  readInto(addr: number, dest: Uint8Array): void {
    const len = dest.byteLength;
    if (len === 0) return;
    if (this.inRun(addr, len, 'read')) {
      const g = this.out.gpa;
      try {
        this.inner.readInto(g, dest);
      } catch (e) {
        throw this.badTarget(e, addr, len, 'read', addr, g, len);
      }
      return;
    }
    this.resolve(addr, len, 'read', false);
    if (this.count === 1) {
      try {
        this.inner.readInto(this.gpas[0]!, dest);
      } catch (e) {
        throw this.badChunk(e, addr, len, 'read', 0);
      }
      return;
    }
    this.checkChunks(addr, len, 'read');
    let off = 0;
    for (let i = 0; i < this.count; i++) {
      const n = this.lens[i]!;
      this.inner.readInto(this.gpas[i]!, dest.subarray(off, off + n));
      off += n;
    }
  }

  writeFrom(addr: number, src: Uint8Array): void {
    const len = src.byteLength;
    if (len === 0) return;
    if (this.inRun(addr, len, 'write')) {
      const g = this.out.gpa;
      try {
        this.inner.writeFrom(g, src);
      } catch (e) {
        throw this.badTarget(e, addr, len, 'write', addr, g, len);
      }
      return;
    }
    this.resolve(addr, len, 'write', false);
    if (this.count === 1) {
      try {
        this.inner.writeFrom(this.gpas[0]!, src);
      } catch (e) {
        throw this.badChunk(e, addr, len, 'write', 0);
      }
      return;
    }
    this.checkChunks(addr, len, 'write');
    let off = 0;
    for (let i = 0; i < this.count; i++) {
      const n = this.lens[i]!;
      this.inner.writeFrom(this.gpas[i]!, src.subarray(off, off + n));
      off += n;
    }
  }

  fill(addr: number, len: number, value: number): void {
    if (len === 0 && Number.isSafeInteger(addr) && addr >= 0) return;
    this.resolve(addr, len, 'write', true);
    for (let i = 0; i < this.count; i++) this.inner.fill(this.gpas[i]!, this.lens[i]!, value);
  }

  tryView(addr: number, len: number, access: Access): Uint8Array | undefined {
    if (len === 0 && Number.isSafeInteger(addr) && addr >= 0) return new Uint8Array(0);
    if (this.inRun(addr, len, access) && this.runChecked()) return this.inner.tryView(this.out.gpa, len, access);
    this.resolve(addr, len, access, true);
    if (this.count !== 1) return undefined;
    return this.inner.tryView(this.gpas[0]!, len, access);
  }

  slices(addr: number, len: number, access: Access, out: Uint8Array[] = []): Uint8Array[] {
    if (len === 0 && Number.isSafeInteger(addr) && addr >= 0) return out;
    if (this.inRun(addr, len, access) && this.runChecked()) return this.inner.slices(this.out.gpa, len, access, out);
    this.resolve(addr, len, access, true);
    for (let i = 0; i < this.count; i++) this.inner.slices(this.gpas[i]!, this.lens[i]!, access, out);
    return out;
  }

  private checkChunks(addr: number, len: number, access: Access): void {
    for (let i = 0; i < this.count; i++) {
      try {
        this.inner.checkRange(this.gpas[i]!, this.lens[i]!, access);
      } catch (e) {
        throw this.badChunk(e, addr, len, access, i);
      }
    }
  }
}

function invalid(addr: number, len: number, access: Access): GuestMemoryError {
  return new GuestMemoryError('invalid-address', addr, len, `DMA of ${String(len)} byte(s) at IOVA ${String(addr)} is not a valid address range`, access);
}
