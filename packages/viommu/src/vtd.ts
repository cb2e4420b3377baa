import { type Access, type DmaMemory, GuestMemory } from '@ioplane/guest-memory';
import { InvalidationLog } from './domain.js';
import { FaultCode, type FaultRecord, type FaultSink, ViommuError } from './errors.js';
import { Iotlb } from './iotlb.js';
import { TranslatingMemory, type TranslationOut, type TranslationSource } from './translating-memory.js';

/*
 * A VT-d-style DMA remapping unit, second-level translation in legacy mode
 * (Intel VT-d spec §3.4–3.6, §9.1–9.3; QEMU hw/i386/intel_iommu.c checked
 * for behaviour). The tables live in guest memory and are read through a
 * `DmaMemory` of guest-physical addresses:
 *
 *  root table (4 KiB, 256 × 16-byte root entries, indexed by bus)
 *    root entry lo: bit 0 P; bits 11:1 reserved; bits HAW-1:12 context-table pointer. hi: reserved.
 *  context table (4 KiB, 256 × 16-byte context entries, indexed by devfn)
 *    lo: bit 0 P; bit 1 FPD; bits 3:2 TT (0 translate, 1 translate + device-TLB, 2 pass-through,
 *        3 reserved); bits 11:4 reserved; bits HAW-1:12 second-level page-table pointer.
 *    hi: bits 2:0 AW (1 = 39-bit/3-level, 2 = 48-bit/4-level); bits 6:3 ignored; bit 7 reserved;
 *        bits 23:8 domain ID; bits 63:24 reserved.
 *  second-level entries (8 bytes, 512 per 4 KiB table; index = IOVA bits 12+9(l−1) … 20+9(l−1)):
 *    bit 0 R; bit 1 W; bit 2 X (ignored here); bits 6:3 EMT/IPAT (leaves); bit 7 PS (a 1 GiB leaf at
 *    level 3, a 2 MiB leaf at level 2; reserved at level 4); bit 11 SNP (reserved: no snoop control);
 *    bits HAW-1:12 address; bits 61:52 and 63 ignored; bit 62 TM (leaves only).
 *
 * A present entry has R or W set; access rights are the AND over every level
 * (§3.6: "the effective access rights"). Reserved bits are checked in every
 * present entry. Faults carry the VT-d fault reason codes (§7.1.3).
 *
 * Caching follows the architecture: valid context entries are cached per
 * source-id, leaf translations per domain ID (the IOTLB), and the non-leaf
 * part of the walk per domain ID and 2 MiB frame (the paging-structure cache,
 * `PdeCache`); a guest that edits its tables must invalidate (context-cache:
 * global, domain, device; IOTLB: global, domain-selective, page-selective
 * with the invalidation hint) before the change is guaranteed to be seen, as
 * on hardware. Not-present entries are never cached (CM = 0).
 *
 * Every invalidation bumps `translationGeneration` and records in an
 * `InvalidationLog` what it revoked (a PSI: its domain and aligned range; a
 * DSI: its domain; a domain- or device-selective context-cache
 * invalidation: the devices it covered, kept per source-id; anything else:
 * everything), so that translations carried above the IOTLB (a
 * `TranslatingMemory`'s runs and checked ranges, a popped chain's buffers)
 * survive the invalidation of other pages, domains and devices.
 */

const U32 = 0x1_0000_0000;
const PAGE = 4096;
/** The span one page-directory entry maps (and the key of the paging-structure cache). */
const TWO_M = 0x20_0000;
/** The span one level-3 (PDPT) entry maps (and the key of its paging-structure cache). */
const TWO_G = 0x4000_0000;
/** Domain of a query that no PSI or DSI can match: only "everything" entries revoke it. */
const NO_DOMAIN = -2;
/** Log domain of a context-cache invalidation of some devices: it revokes no range of any domain (each source checks its own device, `contextInvalidatedSince`). */
const CONTEXTS_ONLY = -3;
/** The IOVA span an entry at each level maps (index = level): 2^(12 + 9(level − 1)). Constants, not `2 ** shift`, on the walk. */
const SPAN = [1, 2 ** 12, 2 ** 21, 2 ** 30, 2 ** 39] as const;
/**
 * Reserved bits in the low half of a present entry, by level (VT-d §9.3):
 * SNP (bit 11) always, PS (bit 7) at level 4; under a 2 MiB / 1 GiB leaf also
 * bits 20:12 / 29:12. The high half's reserved bits depend on HAW
 * (`hiAboveHaw` / `hiAboveHawLeaf`).
 */
const RESERVED_LO = [0, 0x800, 0x800, 0x800, 0x880] as const;
const RESERVED_LO_LEAF = [0, 0x800, 0x1f_f800, 0x3fff_f800, 0x880] as const;

/**
 * The second-level paging-structure cache of one domain ID: for a 2 MiB IOVA
 * frame, the page table its page-directory entry points to and the rights
 * ANDed over every level above the leaf — so an IOTLB miss under a cached
 * PDE reads one 8-byte leaf entry instead of 3–4. Direct-mapped by frame
 * (IOVA / 2^21, below 2^27 for a 48-bit AGAW), typed arrays sized once: a
 * fill or a hit allocates nothing. Only present non-leaf PDEs reached
 * through present, reserved-bit-clean upper entries are cached; leaves never
 * (they go to the IOTLB), and the upper levels (PML4E, PDPTE) only as their
 * contribution to the frame's entry.
 *
 * Tagged by domain ID only, as hardware tags it: software that gives two
 * contexts one DID promises they share tables (VT-d §9.3, DID).
 */
class PdeCache {
  readonly mask: number;
  /** The frame each slot holds, −1 for none. */
  readonly frame: Float64Array;
  /** The page table's guest-physical address, low and high 32 bits. */
  readonly tableLo: Uint32Array;
  readonly tableHi: Uint32Array;
  /** Rights (1 R, 2 W) ANDed over the levels above the leaf. */
  readonly rights: Uint8Array;

  constructor(size: number) {
    this.mask = size - 1;
    this.frame = new Float64Array(size).fill(-1);
    this.tableLo = new Uint32Array(size);
    this.tableHi = new Uint32Array(size);
    this.rights = new Uint8Array(size);
  }

  flush(): void {
    this.frame.fill(-1);
  }

  /**
   * Drops the PDEs of the 2 MiB frames [first, last]: each frame has one
   * slot (`frame & mask`), so looking there is exact. A range of more frames
   * than slots empties the cache.
   */
  flushFrames(first: number, last: number): void {
    if (last - first >= this.mask) {
      this.flush();
      return;
    }
    for (let f = first; f <= last; f++) {
      const slot = f & this.mask;
      if (this.frame[slot] === f) this.frame[slot] = -1;
    }
  }
}

export interface VtdOptions {
  /** Guest-physical memory holding the tables (and, usually, the DMA targets). */
  memory: DmaMemory;
  /** Host address width in bits (CAP.MGAW + 1): table pointers and page addresses must be below 2^haw. Default 48. */
  haw?: number;
  /** Supported adjusted guest address widths in levels (CAP.SAGAW). Default [3, 4]. */
  levels?: readonly (3 | 4)[];
  /** 2 MiB and 1 GiB second-level leaves (CAP.SLLPS bits 34, 35). Default both true. */
  largePages2M?: boolean;
  largePages1G?: boolean;
  /** Pass-through contexts (ECAP.PT). Default true. */
  passThrough?: boolean;
  /** IOTLB entries per domain ID (a power of two), 0 to disable. Default 512. */
  iotlbEntries?: number;
  /** Paging-structure (PDE) cache entries per domain ID, each covering 2 MiB (a power of two), 0 to disable. Default 256. */
  pdeCacheEntries?: number;
  /**
   * Paging-structure cache entries for level-3 (PDPT) entries per domain ID,
   * each covering 1 GiB (a power of two), 0 to disable: a walk that misses
   * the PDE cache starts at the page directory. Default 16.
   */
  pdpteCacheEntries?: number;
  /**
   * Most 4 KiB leaves a walk joins into one run for the caller's own cache
   * (`TranslatingMemory`), when they follow one another in a table, map the
   * next guest pages and give the same rights; 1 returns the leaf alone.
   * The IOTLB holds leaves either way. Default 64.
   */
  runPages?: number;
  /**
   * On a walk that ends at a 4 KiB leaf mapping a single page (no run),
   * also cache in the IOTLB the present leaves that follow it in its 64-byte
   * line of the table (one cache line, eight entries). VT-d lets a unit
   * cache any present entry at any time, and software must invalidate after
   * changing a present entry anyway, so this changes no guarantee; it saves a
   * walk for each of the next IOVAs a next-fit allocator hands out, whose
   * leaves share the line. Default true.
   */
  iotlbPrefetch?: boolean;
  /**
   * How many 64-byte lines of leaves the prefetch reads: the walked leaf's
   * and the ones after it in the same table, 1 to 8. Default 3: a device
   * with 32 requests in flight finds the next two dozen leaves written, and
   * a walk every 24 fresh IOVAs instead of every 8 halved the device's
   * walks in `bench:iommu-threads` (deferred, QD 32: 0.07 walks a request
   * against 0.14). Lines past the table's end are not read.
   */
  iotlbPrefetchLines?: number;
  /** Fault records kept (the fault recording registers of a real unit hold a few). Default 256. */
  maxFaults?: number;
  onFault?: (fault: FaultRecord) => void;
}

/** A decoded, valid context entry. */
interface Context {
  domainId: number;
  passThrough: boolean;
  fpd: boolean;
  levels: number;
  /** Input addresses must be below 2^agaw. */
  limit: number;
  tableLo: number;
  tableHi: number;
  tlb: Iotlb | undefined;
  pde: PdeCache | undefined;
  pdpte: PdeCache | undefined;
}

export class VtdRemapper implements FaultSink {
  readonly memory: DmaMemory;
  readonly haw: number;
  private rootTable = 0;
  private enabled = false;
  /** Bumped on every context-cache invalidation; endpoints re-read their context when it moves. */
  generation = 0;
  /**
   * Bumped on every invalidation of any kind (and SRTP, TE); what each bump
   * revoked is in `log` (`unchangedSince`), so a translation made under an
   * older generation is void only if a later bump touched its domain and range.
   */
  translationGeneration = 0;
  private readonly log = new InvalidationLog();
  private readonly contexts = new Map<number, Context>();
  private readonly tlbs = new Map<number, Iotlb>();
  private readonly pdes = new Map<number, PdeCache>();
  private readonly pdptes = new Map<number, PdeCache>();
  /** `memory` when it is a `GuestMemory`: entries are then read from its region views directly (`readEntry`). */
  private readonly ram: GuestMemory | undefined;
  private readonly levels: ReadonlySet<number>;
  private readonly lp2m: boolean;
  private readonly lp1g: boolean;
  private readonly pt: boolean;
  private readonly iotlbEntries: number;
  private readonly runPages: number;
  private readonly prefetch: boolean;
  /** Leaves a prefetch may read after the walked one's line starts: 8 × iotlbPrefetchLines − 1. */
  private readonly prefetchSpan: number;
  private readonly pdeEntries: number;
  private readonly pdpteEntries: number;
  private readonly maxFaults: number;
  private readonly onFault: ((f: FaultRecord) => void) | undefined;
  /** Bits above HAW in the high half of an entry (address bits 32..63), minus the ignored bits 52..61 and 63. */
  private readonly hiAboveHaw: number;
  private readonly hiAboveHawLeaf: number;
  private readonly hawHiMask: number;
  readonly faults: FaultRecord[] = [];
  readonly stats = { walks: 0, readAheads: 0, prefetched: 0, pdeHits: 0, pdeMisses: 0, pdpteHits: 0, pdpteMisses: 0, faults: 0, suppressedFaults: 0, contextInvalidations: 0, iotlbInvalidations: 0 };

  constructor(options: VtdOptions) {
    this.memory = options.memory;
    this.ram = options.memory instanceof GuestMemory ? options.memory : undefined;
    this.haw = options.haw ?? 48;
    if (!Number.isInteger(this.haw) || this.haw < 32 || this.haw > 52) throw new ViommuError('invalid-option', `haw ${String(this.haw)} is not between 32 and 52 bits`, this.haw);
    this.levels = new Set(options.levels ?? [3, 4]);
    for (const l of this.levels) if (l !== 3 && l !== 4) throw new ViommuError('invalid-option', `page-table depth ${String(l)} is not 3 or 4`, l);
    this.lp2m = options.largePages2M ?? true;
    this.lp1g = options.largePages1G ?? true;
    this.pt = options.passThrough ?? true;
    this.iotlbEntries = options.iotlbEntries ?? 512;
    if (this.iotlbEntries !== 0) new Iotlb(this.iotlbEntries);
    this.runPages = options.runPages ?? 64;
    if (!Number.isInteger(this.runPages) || this.runPages < 1 || this.runPages > 512) {
      throw new ViommuError('invalid-option', `runPages ${String(this.runPages)} is not between 1 and 512`, this.runPages);
    }
    this.prefetch = options.iotlbPrefetch ?? true;
    const lines = options.iotlbPrefetchLines ?? 3;
    if (!Number.isInteger(lines) || lines < 1 || lines > 8) throw new ViommuError('invalid-option', `iotlbPrefetchLines ${String(lines)} is not between 1 and 8`, lines);
    this.prefetchSpan = 8 * lines - 1;
    this.pdeEntries = options.pdeCacheEntries ?? 256;
    this.pdpteEntries = options.pdpteCacheEntries ?? 16;
    for (const [name, n] of [['PDE', this.pdeEntries], ['PDPTE', this.pdpteEntries]] as const) {
      if (!Number.isInteger(n) || n < 0 || n > 1 << 20 || (n & (n - 1)) !== 0) {
        throw new ViommuError('invalid-option', `${name} cache size ${String(n)} is not 0 or a power of two up to 2^20`, n);
      }
    }
    this.maxFaults = options.maxFaults ?? 256;
    this.onFault = options.onFault;
    // High-half bits: address bits HAW-1..32 valid; bits 52..61 and 63 ignored; bit 62 TM (handled per level).
    this.hawHiMask = (2 ** (this.haw - 32) - 1) >>> 0;
    const ignored = 0xbff0_0000; // bits 63 and 61:52 of the entry, in the high half
    this.hiAboveHaw = (~(this.hawHiMask | ignored)) >>> 0;
    this.hiAboveHawLeaf = (this.hiAboveHaw & ~0x4000_0000) >>> 0;
  }

  /** Sets the root-table address (GCMD.SRTP) and enables translation (GCMD.TE). Invalidates every cache. */
  setRootTable(gpa: number): void {
    if (!Number.isSafeInteger(gpa) || gpa < 0 || gpa % PAGE !== 0 || gpa >= 2 ** this.haw) {
      throw new ViommuError('invalid-option', `root table address ${String(gpa)} is not a 4 KiB-aligned address below 2^${this.haw}`, gpa);
    }
    this.rootTable = gpa;
    this.enabled = true;
    this.invalidateContextGlobal();
    this.invalidateIotlbGlobal();
  }

  /** Turns translation off (GCMD.TE = 0): every request passes untranslated. */
  disable(): void {
    this.bump(-1, 0, Infinity);
    this.enabled = false;
  }

  get translationEnabled(): boolean {
    return this.enabled;
  }

  // --- invalidation (VT-d §6.5: register-based and queued invalidation) ---

  /** Moves `translationGeneration` and logs what the new generation revoked: [start, end) of `domain`, or everything (−1). */
  private bump(domain: number, start: number, end: number): void {
    const g = ++this.translationGeneration;
    this.log.record(g, domain, start, end);
  }

  /**
   * Whether nothing invalidated since generation `since` touched [start,
   * end) of domain `domain` (`NO_DOMAIN`: whether no global invalidation
   * happened). False when unsure (older than the log).
   */
  unchangedSince(since: number, domain: number, start: number, end: number): boolean {
    return this.log.unchangedSince(this.translationGeneration, since, domain, start, end);
  }

  /*
   * A context-cache invalidation revokes what the devices it covers
   * translated (their decoded contexts — domain, tables, pass-through — may
   * have changed), and nothing of the others: a global one counts as
   * "everything" in the log; a domain- or device-selective one is logged as
   * touching no range, and the devices it covered are stamped in
   * `contextInvalidatedAt`, which their sources check. (A device whose
   * context is not cached has carried nothing since it last left the cache,
   * which only an invalidation does.) The IOTLB and PDE caches are left
   * alone, as on hardware: software follows a context change with a
   * domain-selective or global IOTLB invalidation (VT-d §6.5, guidance to
   * software for invalidations).
   */
  invalidateContextGlobal(): void {
    this.bump(-1, 0, Infinity);
    this.contexts.clear();
    this.generation++;
    this.stats.contextInvalidations++;
  }

  invalidateContextDomain(domainId: number): void {
    this.bump(CONTEXTS_ONLY, 0, 0);
    for (const [sid, c] of this.contexts) {
      if (c.domainId !== domainId) continue;
      this.contexts.delete(sid);
      this.contextInvalidatedAt.set(sid, this.translationGeneration);
    }
    this.generation++;
    this.stats.contextInvalidations++;
  }

  invalidateContextDevice(sourceId: number): void {
    this.bump(CONTEXTS_ONLY, 0, 0);
    this.contexts.delete(sourceId);
    this.contextInvalidatedAt.set(sourceId, this.translationGeneration);
    this.generation++;
    this.stats.contextInvalidations++;
  }

  /** Whether a domain- or device-selective context-cache invalidation after generation `since` covered source-id `sid`. */
  contextInvalidatedSince(sid: number, since: number): boolean {
    return (this.contextInvalidatedAt.get(sid) ?? -1) > since;
  }

  /** Global IOTLB invalidation: every domain's leaves and paging-structure entries. */
  invalidateIotlbGlobal(): void {
    this.bump(-1, 0, Infinity);
    for (const t of this.tlbs.values()) t.flush();
    for (const p of this.pdes.values()) p.flush();
    for (const p of this.pdptes.values()) p.flush();
    this.stats.iotlbInvalidations++;
  }

  /** Domain-selective IOTLB invalidation (DSI): the domain's leaves and paging-structure entries. */
  invalidateIotlbDomain(domainId: number): void {
    this.bump(domainId, 0, Infinity);
    this.tlbs.get(domainId)?.flush();
    this.pdes.get(domainId)?.flush();
    this.pdptes.get(domainId)?.flush();
    this.stats.iotlbInvalidations++;
  }

  /**
   * Page-selective IOTLB invalidation (PSI): the 2^am pages of 4 KiB aligned
   * on their size around `addr` (IVA/ADDR with address mask AM). Any cached
   * leaf overlapping them (a 2 MiB or 1 GiB one too) is dropped.
   *
   * `ih` is the invalidation hint (IVA_REG bit 6; bit 70 of the queued IOTLB
   * invalidate descriptor, VT-d §6.5.2.3, and the IVA_REG register
   * description, §10.4.8.2 in rev. 2.x): IH = 0 says software may have modified leaf and non-leaf entries
   * of the range, so the cached non-leaf entries for it must go too; IH = 1
   * says only leaves changed, and hardware may keep its paging-structure
   * caches (VT-d §6.2, caching of second-level paging structures). Linux's
   * intel-iommu sets IH for ordinary unmaps that free no page table. With
   * IH = 0 this drops all of the domain's PDE cache — invalidating more
   * than asked is always allowed, and it is what Intel's own units do
   * ("a domain-level invalidation on non-leaf entries", Xeon E7 v2
   * datasheet, IOTLBINV.ih) — a 256-entry fill, cheaper than a range scan.
   */
  invalidateIotlbPages(domainId: number, addr: number, am: number, ih = false): void {
    if (!Number.isInteger(am) || am < 0 || am > 52) throw new ViommuError('invalid-option', `address mask ${String(am)} is not between 0 and 52`, am);
    if (!Number.isSafeInteger(addr) || addr < 0) throw new ViommuError('invalid-option', `invalidation address ${String(addr)} is not a non-negative safe integer`, addr);
    // 2^am pages aligned around addr: shifts and masks while the block fits in 31 bits (a float `%`
    // and `**` are runtime calls in V8, and a deferred batch sends several of these).
    const size = am <= 19 ? PAGE << am : PAGE * 2 ** am;
    const start = am <= 19 ? addr - ((addr >>> 0) & (size - 1)) : addr - (addr % size);
    // The IOTLB's entries of the range go when next found (`translateIn` checks the log): a
    // deferred batch's invalidations then touch no IOTLB line, which a device thread's copies
    // have long pushed out of its caches. An entry older than the log is dropped when found.
    this.bump(domainId, start, start + size);
    // IH = 0: the paging-structure entries used for the range may have changed too (§6.5.2.3):
    // the PDEs of the 2 MiB frames the range touches, and no others.
    if (!ih) {
      this.pdes.get(domainId)?.flushFrames(Math.floor(start / TWO_M), Math.floor((start + size - 1) / TWO_M));
      this.pdptes.get(domainId)?.flushFrames(Math.floor(start / TWO_G), Math.floor((start + size - 1) / TWO_G));
    }
    this.stats.iotlbInvalidations++;
  }

  /**
   * Executes one queued-invalidation descriptor (VT-d §6.5.2): type 1
   * context-cache (granularity bits 5:4 global/domain/device, DID 31:16,
   * SID 47:32) or type 2 IOTLB (granularity 5:4 global/domain/page, DID
   * 31:16; hi: ADDR 63:12, IH 6, AM 5:0). Returns false for other types (left to the caller).
   */
  invalidateDescriptor(lo: bigint, hi: bigint): boolean {
    const type = Number(lo & 0xfn);
    const g = Number((lo >> 4n) & 3n);
    const did = Number((lo >> 16n) & 0xffffn);
    if (type === 1) {
      if (g === 1) this.invalidateContextGlobal();
      else if (g === 2) this.invalidateContextDomain(did);
      else if (g === 3) this.invalidateContextDevice(Number((lo >> 32n) & 0xffffn));
      else return false;
      return true;
    }
    if (type === 2) {
      if (g === 1) this.invalidateIotlbGlobal();
      else if (g === 2) this.invalidateIotlbDomain(did);
      else if (g === 3) this.invalidateIotlbPages(did, Number(hi & ~0xfffn & ((1n << 53n) - 1n)), Number(hi & 0x3fn), (hi & 0x40n) !== 0n);
      else return false;
      return true;
    }
    return false;
  }

  // --- translation ---

  /** Per source-id, the translation generation of the last domain- or device-selective context-cache invalidation that covered it. */
  private readonly contextInvalidatedAt = new Map<number, number>();

  /** The halves of the last entry `readEntry` read (no object per read: the walk is a hot path). */
  private eLo = 0;
  private eHi = 0;

  /**
   * Reads the 64-bit entry at `addr` (8-byte aligned, below 2^52) into
   * eLo/eHi; false if it is not guest memory. Over a `GuestMemory`, from the
   * region's view (one region lookup, no exception on a miss); an entry
   * straddling two regions, or another `DmaMemory`, through `readU32`.
   */
  private readEntry(addr: number): boolean {
    const ram = this.ram;
    if (ram !== undefined) {
      const r = ram.findRegion(addr);
      if (r === undefined) return false;
      const off = addr - r.gpa;
      if (off + 8 <= r.size) {
        const v = r.view;
        this.eLo = v.getUint32(off, true);
        this.eHi = v.getUint32(off + 4, true);
        return true;
      }
    }
    try {
      this.eLo = this.memory.readU32(addr);
      this.eHi = this.memory.readU32(addr + 4);
      return true;
    } catch {
      return false;
    }
  }

  /** Context-path read (allocation is fine there: contexts are cached). */
  private readPair(addr: number): { lo: number; hi: number } | undefined {
    return this.readEntry(addr) ? { lo: this.eLo, hi: this.eHi } : undefined;
  }

  /** Reads, checks and caches the context of `sid`; returns it or a fault code. */
  context(sid: number): Context | number {
    const cached = this.contexts.get(sid);
    if (cached !== undefined) return cached;
    const bus = sid >>> 8;
    const devfn = sid & 0xff;
    const root = this.readPair(this.rootTable + bus * 16);
    const rootHi = this.readPair(this.rootTable + bus * 16 + 8);
    if (root === undefined || rootHi === undefined) return FaultCode.rootTableInvalid;
    if ((root.lo & 1) === 0) return FaultCode.rootNotPresent;
    if ((root.lo & 0xffe) !== 0 || (root.hi & ~this.hawHiMask) !== 0 || rootHi.lo !== 0 || rootHi.hi !== 0) return FaultCode.rootReserved;
    const ctp = (root.lo & 0xffff_f000) >>> 0;
    const ctable = root.hi * U32 + ctp;
    const lo = this.readPair(ctable + devfn * 16);
    const hi = this.readPair(ctable + devfn * 16 + 8);
    if (lo === undefined || hi === undefined) return FaultCode.contextTableInvalid;
    if ((lo.lo & 1) === 0) return FaultCode.contextNotPresent;
    if ((lo.lo & 0xff0) !== 0 || (lo.hi & ~this.hawHiMask) !== 0 || (hi.lo & 0xff00_0080) !== 0 || hi.hi !== 0) return FaultCode.contextReserved;
    const tt = (lo.lo >>> 2) & 3;
    const aw = hi.lo & 7;
    const domainId = (hi.lo >>> 8) & 0xffff;
    const fpd = (lo.lo & 2) !== 0;
    let ctx: Context;
    if (tt === 2) {
      if (!this.pt) return FaultCode.contextInvalid;
      ctx = { domainId, passThrough: true, fpd, levels: 0, limit: 2 ** this.haw, tableLo: 0, tableHi: 0, tlb: undefined, pde: undefined, pdpte: undefined };
    } else if (tt === 3) {
      return FaultCode.contextInvalid;
    } else {
      const levels = aw + 2;
      if ((aw !== 1 && aw !== 2) || !this.levels.has(levels)) return FaultCode.contextInvalid;
      let tlb: Iotlb | undefined;
      if (this.iotlbEntries > 0) {
        tlb = this.tlbs.get(domainId);
        if (tlb === undefined) this.tlbs.set(domainId, (tlb = new Iotlb(this.iotlbEntries)));
      }
      let pde: PdeCache | undefined;
      if (this.pdeEntries > 0) {
        pde = this.pdes.get(domainId);
        if (pde === undefined) this.pdes.set(domainId, (pde = new PdeCache(this.pdeEntries)));
      }
      let pdpte: PdeCache | undefined;
      if (this.pdpteEntries > 0) {
        pdpte = this.pdptes.get(domainId);
        if (pdpte === undefined) this.pdptes.set(domainId, (pdpte = new PdeCache(this.pdpteEntries)));
      }
      ctx = { domainId, passThrough: false, fpd, levels, limit: 2 ** (12 + 9 * levels), tableLo: (lo.lo & 0xffff_f000) >>> 0, tableHi: lo.hi, tlb, pde, pdpte };
    }
    this.contexts.set(sid, ctx);
    return ctx;
  }

  /**
   * Walks the second-level tables for `addr` (below `ctx.limit`); fills `out`
   * and returns 0, or returns a fault code. Starts at the page table when the
   * domain's PDE cache holds the 2 MiB frame, and fills that cache when the
   * walk passes a present non-leaf PDE.
   */
  walk(ctx: Context, addr: number, access: Access, out: TranslationOut, cache: Iotlb | undefined): number {
    this.stats.walks++;
    const need = access === 'read' ? 1 : 2;
    let tableLo = ctx.tableLo;
    let tableHi = ctx.tableHi;
    let rights = 3;
    let level = ctx.levels;
    const pde = ctx.pde;
    const pdpte = ctx.pdpte;
    // addr < 2^48: the frames are below 2^27 and 2^18, so masking them is exact.
    const frame = Math.floor(addr / TWO_M);
    const slot = pde === undefined ? 0 : frame & pde.mask;
    const gframe = Math.floor(addr / TWO_G);
    const gslot = pdpte === undefined ? 0 : gframe & pdpte.mask;
    // Start below the deepest cached level: at the page table (a PDE) or the page directory (a PDPTE).
    let cached: PdeCache | undefined;
    let cslot = 0;
    if (pde !== undefined && pde.frame[slot] === frame) {
      this.stats.pdeHits++;
      cached = pde;
      cslot = slot;
      level = 1;
    } else {
      if (pde !== undefined) this.stats.pdeMisses++;
      if (pdpte !== undefined && pdpte.frame[gslot] === gframe) {
        this.stats.pdpteHits++;
        cached = pdpte;
        cslot = gslot;
        level = 2;
      } else if (pdpte !== undefined) this.stats.pdpteMisses++;
    }
    if (cached !== undefined) {
      rights = cached.rights[cslot]!;
      // The full walk faults at the upper level that took the right away: the same code, and no entry to read.
      if ((rights & need) === 0) return need === 1 ? FaultCode.vtdRead : FaultCode.vtdWrite;
      tableLo = cached.tableLo[cslot]!;
      tableHi = cached.tableHi[cslot]!;
    }
    for (; level >= 1; level--) {
      const span = SPAN[level]!;
      // ToInt32 keeps the low 32 bits of an integer below 2^53 exactly: `& 511` is the index even for a
      // 48-bit IOVA (unlike `addr >> shift`, which would truncate the address first). No float `%` (fmod).
      const index = Math.floor(addr / span) & 511;
      const table = tableHi * U32 + tableLo;
      if (!this.readEntry(table + index * 8)) return FaultCode.pagingEntryInvalid;
      const lo = this.eLo;
      const hi = this.eHi;
      const above = rights;
      rights &= lo & 3;
      if ((lo & 3) === 0 || (rights & need) === 0) return need === 1 ? FaultCode.vtdRead : FaultCode.vtdWrite;
      const ps = (lo & 0x80) !== 0 && level > 1;
      if (ps && ((level === 2 && !this.lp2m) || (level === 3 && !this.lp1g) || level === 4)) return FaultCode.pagingReserved;
      const leaf = level === 1 || ps;
      if ((lo & (leaf ? RESERVED_LO_LEAF[level]! : RESERVED_LO[level]!)) !== 0 || (hi & (leaf ? this.hiAboveHawLeaf : this.hiAboveHaw)) !== 0) return FaultCode.pagingReserved;
      tableLo = (lo & 0xffff_f000) >>> 0;
      tableHi = hi & this.hawHiMask;
      if (leaf) {
        const size = span;
        const pageStart = Math.floor(addr / size) * size;
        const base = tableHi * U32 + tableLo;
        const delta = base - pageStart;
        cache?.insert(addr, pageStart, pageStart + size, delta, rights, this.translationGeneration);
        out.gpa = addr + delta;
        out.start = pageStart;
        if (level === 1) {
          out.end = this.extendRun(table, index, base, above, rights, pageStart + size);
          // A leaf that starts a longer run is better found again by a walk (which returns the run) than by
          // an IOTLB hit on a neighbour (one page): prefetch only among scattered leaves.
          if (cache !== undefined && this.prefetch && out.end === pageStart + size) this.prefetchLine(table, index, pageStart, above, cache, out);
        } else {
          out.end = pageStart + size;
        }
        return 0;
      }
      if (level === 2 && pde !== undefined) {
        pde.frame[slot] = frame;
        pde.tableLo[slot] = tableLo;
        pde.tableHi[slot] = tableHi;
        pde.rights[slot] = rights;
      } else if (level === 3 && pdpte !== undefined) {
        pdpte.frame[gslot] = gframe;
        pdpte.tableLo[gslot] = tableLo;
        pdpte.tableHi[gslot] = tableHi;
        pdpte.rights[gslot] = rights;
      }
    }
    return FaultCode.pagingEntryInvalid;
  }

  /**
   * How far the 4 KiB leaf at `index` of the level-1 table at `table`
   * extends as one run: the following entries of the same table, up to
   * `runPages`, that are present, well-formed, give the same effective
   * rights and map the next guest pages. The run goes to the caller's own
   * cache (`TranslatingMemory`'s run caches: a ring area identity-mapped in
   * 4 KiB leaves is one run, not one per page); the IOTLB still holds the
   * leaf alone. Entries read now are translations the unit may cache
   * (VT-d lets a unit cache any present entry); an invalidation of any page
   * of the run is in the log and drops the run (`unchangedSince`).
   */
  private extendRun(table: number, index: number, base: number, above: number, rights: number, end: number): number {
    let gpa = base + PAGE;
    const last = Math.min(511, index + this.runPages - 1);
    for (let i = index + 1; i <= last; i++) {
      if (!this.readEntry(table + i * 8)) break;
      const lo = this.eLo;
      const hi = this.eHi;
      if ((above & lo & 3) !== rights || (lo & RESERVED_LO_LEAF[1]) !== 0 || (hi & this.hiAboveHawLeaf) !== 0) break;
      if ((hi & this.hawHiMask) * U32 + ((lo & 0xffff_f000) >>> 0) !== gpa) break;
      gpa += PAGE;
      end += PAGE;
    }
    return end;
  }

  /**
   * Reads the present, well-formed 4 KiB leaves that follow entry `index`
   * in its 64-byte line of the level-1 table at `table` (the leaf of the
   * page at `pageStart`) and in the `iotlbPrefetchLines` − 1 lines after it,
   * with the rights of the levels above (`above`): the IOVAs a next-fit
   * allocator hands out next. They go to the caller when it has room for
   * them (`out.ahead`, one entry per page: a device's TranslatingMemory
   * keeps them as its read-ahead window), else each to the IOTLB as a
   * one-page entry. The walk has just brought the first line in; the
   * entries are read whole (low half, then high half, as the walk reads
   * them; the guest driver writes the high half first), and one that is not
   * present or has a reserved bit set is skipped, never cached.
   */
  private prefetchLine(table: number, index: number, pageStart: number, above: number, cache: Iotlb, out: TranslationOut): void {
    // To the end of the walked leaf's line, and whole lines after it (never past the table).
    const last = Math.min(511, (index & ~7) + this.prefetchSpan);
    const ahead = out.ahead;
    // Handed to the caller, one entry per page after the walked one, as far as its room goes; the rest to the IOTLB.
    const room = ahead === undefined ? 0 : Math.min(ahead.length, last - index);
    this.stats.prefetched += this.readLeaves(table, index + 1, last, pageStart + PAGE, above, ahead, room, cache);
    if (room > 0) {
      out.aheadStart = pageStart + PAGE;
      out.aheadCount = room;
    }
  }

  /**
   * Reads leaves `first`..`last` of the level-1 table at `table` (the leaf
   * of the page at `firstPage` first) with the rights of the levels above
   * (`above`): the first `room` into `ahead` (0 for one that is not present
   * or has a reserved bit set: never cached), the rest present into `cache`
   * as one-page entries. Returns how many were present. The entries are read
   * whole (low half, then high half, as the walk reads them; the guest
   * driver writes the high half first).
   */
  private readLeaves(table: number, first: number, last: number, firstPage: number, above: number, ahead: Float64Array | undefined, room: number, cache: Iotlb | undefined): number {
    // The table is a 4 KiB page of RAM: one region lookup for all of it.
    const r = this.ram?.findRegion(table);
    const view = r !== undefined && table + PAGE <= r.end ? r.view : undefined;
    const base = r === undefined ? 0 : table - r.gpa;
    const reservedHi = this.hiAboveHawLeaf;
    const hawHi = this.hawHiMask;
    let found = 0;
    for (let i = first; i <= last; i++) {
      const k = i - first;
      let lo: number;
      let hi: number;
      if (view !== undefined) {
        lo = view.getUint32(base + i * 8, true);
        hi = view.getUint32(base + i * 8 + 4, true);
      } else if (this.readEntry(table + i * 8)) {
        lo = this.eLo;
        hi = this.eHi;
      } else {
        lo = 0;
        hi = 0;
      }
      const rights = above & lo & 3;
      if (rights === 0 || (lo & RESERVED_LO_LEAF[1]) !== 0 || (hi & reservedHi) !== 0) {
        if (k < room) ahead![k] = 0;
        continue;
      }
      const page = firstPage + k * PAGE;
      const delta = (hi & hawHi) * U32 + ((lo & 0xffff_f000) >>> 0) - page;
      found++;
      // The caller caches them (TranslatingMemory's read-ahead window): the same translations, under the same generation.
      if (k < room) ahead![k] = delta + rights;
      else cache?.insert(page, page, page + PAGE, delta, rights, this.translationGeneration);
    }
    return found;
  }

  /**
   * `TranslationSource.readAhead` for a context: when the domain's
   * paging-structure cache holds the 2 MiB frame of `addr` (a present PDE
   * the unit may keep using until an invalidation with IH = 0, a
   * domain-selective or a global one drops it — VT-d §6.2.4), reads the
   * leaves from the one of `addr`'s page to the end of the read-ahead span
   * (`iotlbPrefetchLines` lines from its line) into `out.ahead`, as the
   * walk's prefetch would: the same leaves a walk through that cached PDE
   * reads, without the walk. False otherwise (no cached PDE, pass-through,
   * translation off, no room).
   */
  readAhead(ctx: Context, addr: number, out: TranslationOut): boolean {
    const pde = ctx.pde;
    const ahead = out.ahead;
    if (!this.enabled || ctx.passThrough || pde === undefined || ahead === undefined || !(addr >= 0 && addr < ctx.limit)) return false;
    const frame = Math.floor(addr / TWO_M);
    const slot = frame & pde.mask;
    if (pde.frame[slot] !== frame) return false;
    const above = pde.rights[slot]!;
    if (above === 0) return false;
    const table = pde.tableHi[slot]! * U32 + pde.tableLo[slot]!;
    const index = Math.floor(addr / PAGE) & 511;
    const last = Math.min(511, (index & ~7) + this.prefetchSpan);
    const room = Math.min(ahead.length, last - index + 1);
    const page = Math.floor(addr / PAGE) * PAGE;
    this.stats.readAheads++;
    this.stats.prefetched += this.readLeaves(table, index, index + room - 1, page, above, ahead, room, undefined);
    out.aheadStart = page;
    out.aheadCount = room;
    return true;
  }

  /** Translates one request of source-id `sid` (bus << 8 | devfn). */
  translate(sid: number, addr: number, access: Access, out: TranslationOut): number {
    if (!this.enabled) {
      out.gpa = addr;
      out.start = 0;
      out.end = 2 ** 53;
      return 0;
    }
    const ctx = this.context(sid);
    if (typeof ctx === 'number') return ctx;
    return this.translateIn(ctx, addr, access, out);
  }

  translateIn(ctx: Context, addr: number, access: Access, out: TranslationOut): number {
    if (ctx.passThrough) {
      out.gpa = addr;
      out.start = 0;
      out.end = ctx.limit;
      return addr < ctx.limit ? 0 : FaultCode.addressWidth;
    }
    if (addr >= ctx.limit) return FaultCode.addressWidth;
    const tlb = ctx.tlb;
    if (tlb !== undefined) {
      const i = tlb.find(addr);
      if (i >= 0) {
        const x = tlb.entries;
        // Filled under an older generation: still good unless a page-selective invalidation since
        // touched it (those are applied here, when an entry is next found, not at the invalidation).
        const gen = this.translationGeneration;
        const filled = tlb.tags[i >> 2]!;
        if (filled !== gen) {
          if (this.log.unchangedSince(gen, filled, ctx.domainId, x[i]!, x[i + 1]!)) tlb.tags[i >> 2] = gen;
          else {
            tlb.dropAt(i);
            return this.walk(ctx, addr, access, out, tlb);
          }
        }
        if ((x[i + 3]! & (access === 'read' ? 1 : 2)) === 0) return access === 'read' ? FaultCode.vtdRead : FaultCode.vtdWrite;
        out.gpa = addr + x[i + 2]!;
        out.start = x[i]!;
        out.end = x[i + 1]!;
        return 0;
      }
    }
    return this.walk(ctx, addr, access, out, tlb);
  }

  /** FaultSink: records the fault unless the context set FPD (fault processing disable). */
  report(fault: FaultRecord): void {
    const ctx = this.contexts.get(fault.endpoint);
    if (ctx?.fpd === true) {
      this.stats.suppressedFaults++;
      return;
    }
    this.stats.faults++;
    if (this.faults.length >= this.maxFaults) this.faults.shift();
    this.faults.push(fault);
    this.onFault?.(fault);
  }

  /** The `DmaMemory` through which the device with source-id `sid` reaches `ram`. */
  dmaMemory(sid: number, ram: DmaMemory): TranslatingMemory {
    if (!Number.isInteger(sid) || sid < 0 || sid > 0xffff) throw new ViommuError('endpoint', `source-id ${String(sid)} is not a 16-bit bus/devfn`, sid);
    return new TranslatingMemory(ram, new VtdSource(this, sid), this, this.iotlbEntries > 0);
  }
}

/** The translation source of one source-id; keeps its decoded context until a context-cache invalidation. */
export class VtdSource implements TranslationSource {
  private contextGeneration = -1;
  private ctx: ReturnType<VtdRemapper['context']> = 0;

  constructor(
    private readonly unit: VtdRemapper,
    readonly endpoint: number,
  ) {}

  get generation(): number {
    return this.unit.translationGeneration;
  }

  /**
   * Whether a translation of [start, end) this source made under generation
   * `since` still holds: no context-cache invalidation since covered this
   * device, and no IOTLB invalidation since touched its domain and range.
   * While no context invalidation covered it, the device's context is the
   * one the translation used (its domain is the one cached now). With
   * translation off, only global changes (SRTP, TE) count. No context (a
   * fault code): false.
   */
  unchangedSince(since: number, start: number, end: number): boolean {
    const unit = this.unit;
    if (!unit.translationEnabled) return unit.unchangedSince(since, NO_DOMAIN, start, end);
    if (unit.contextInvalidatedSince(this.endpoint, since)) return false;
    const ctx = this.context();
    if (typeof ctx === 'number') return false;
    return unit.unchangedSince(since, ctx.domainId, start, end);
  }

  translate(addr: number, access: Access, out: TranslationOut): number {
    const unit = this.unit;
    if (!unit.translationEnabled) return unit.translate(this.endpoint, addr, access, out);
    const ctx = this.context();
    if (typeof ctx === 'number') return ctx;
    return unit.translateIn(ctx, addr, access, out);
  }

  readAhead(addr: number, out: TranslationOut): boolean {
    const unit = this.unit;
    if (!unit.translationEnabled) return false;
    const ctx = this.context();
    return typeof ctx !== 'number' && unit.readAhead(ctx, addr, out);
  }

  /** The device's context, decoded again after any context-cache invalidation (the unit's cache makes that a lookup unless it covered this device). */
  private context(): Context | number {
    const unit = this.unit;
    if (this.contextGeneration !== unit.generation || typeof this.ctx === 'number') {
      this.ctx = unit.context(this.endpoint);
      this.contextGeneration = unit.generation;
    }
    return this.ctx;
  }
}
