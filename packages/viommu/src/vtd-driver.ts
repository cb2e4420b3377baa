import type { DmaMemory } from '@ioplane/guest-memory';
import { DmaMapper, type DmaDomainOptions, type MapperHost } from './dma-mapper.js';
import { ViommuError } from './errors.js';
import { PageMap } from './page-map.js';

/*
 * The guest side of the VT-d unit (legacy mode, second-level tables), for
 * simulated guests and tests: it builds the root, context and paging tables
 * in guest memory and hands out DMA mappers with the same API and the same
 * three invalidation modes as virtio-iommu's `DmaDomain`.
 *
 * The difference is where the cost lies. Over virtio-iommu every map is a
 * request the device must parse and apply. Here a map is an entry the guest
 * writes in its own page table, and no notification at all: the unit never
 * caches a not-present entry (CAP.CM = 0, VT-d §6.1), so a new entry needs no
 * invalidation. Only unmaps reach the unit, as IOTLB invalidations: one
 * page-selective invalidation per strict unmap, one domain-selective one per
 * deferred or optimistic batch (what Linux's intel-iommu flush queue sends).
 * That is the setting of the vIOMMU paper, whose emulated IOMMU is Intel's.
 */

const PAGE = 4096;
const TWO_21 = 2 ** 21;
const TWO_32 = 0x1_0000_0000;
/** The interrupt address range (0xFEEx_xxxx): DMA there is an interrupt, so no IOVA is handed out in it (Linux reserves it too). */
const INTERRUPT_RANGE = { start: 0xfee0_0000, end: 0xfef0_0000 };
/** Emptied level-1 tables kept linked for reuse (see `VtdDmaDomain.emptied`). */
const EMPTY_KEEP = 4;
/** Strict unmaps of more runs than this in one call go as one domain-selective invalidation. */
const PSI_LIMIT = 16;
/** A batch whose runs take more aligned blocks than this goes as one domain-selective invalidation. */
const BATCH_PSI_LIMIT = 32;
/** A page-selective invalidation covering more than 2^PSI_MAX_AM pages goes as domain-selective. */
const PSI_MAX_AM = 9;

/** What the guest reaches of the unit: table pointer and invalidation (register-based or queued; VT-d §6.5). */
export interface VtdInvalidator {
  setRootTable(gpa: number): void;
  invalidateContextDevice(sourceId: number): void;
  invalidateIotlbDomain(domainId: number): void;
  /** Page-selective: the 2^am pages aligned on their size around `addr`; `ih`: only leaf entries changed. */
  invalidateIotlbPages(domainId: number, addr: number, am: number, ih?: boolean): void;
  /**
   * Optional (a queued unit): a domain-selective invalidation sent without
   * waiting for it; returns a ticket for `retired`. A deferred or optimistic
   * batch goes this way, so the guest does not stall on the unit.
   */
  postIotlbDomain?(domainId: number): number;
  /**
   * Optional (a queued unit): `count` page-selective invalidations (the
   * 2^ams[i] pages aligned around addrs[i]) sent without waiting, as
   * `postIotlbDomain`; returns a ticket for `retired`.
   */
  postIotlbPages?(domainId: number, addrs: readonly number[], ams: readonly number[], count: number, ih: boolean): number;
  /** With `postIotlbDomain`: whether what was posted up to `ticket` is done; with `wait`, waits (bounded) until it is. */
  retired?(ticket: number, wait: boolean): boolean;
}

export interface VtdGuestDriverOptions {
  /** The unit (a `VtdRemapper`, or anything forwarding to one). */
  unit: VtdInvalidator;
  /** Guest-physical memory, where the tables are written (the unit reads them from the same memory). */
  mem: DmaMemory;
  /** Guest-physical area for the tables: 4 KiB-aligned, at least 3 pages. */
  area: { addr: number; len: number };
  /** Paging levels of every domain: 4 (48-bit IOVAs) or 3 (39-bit). Default 4. */
  levels?: 3 | 4;
  /** Host address width: mappings must target addresses below 2^haw. Default 48 (the unit's default). */
  haw?: number;
  /** Milliseconds, monotonic: the guest's clock (injected so tests are deterministic). */
  now?: () => number;
  /**
   * A one-shot timer on the guest's thread (`(cb, ms) => void setTimeout(cb, ms)`): deferred and
   * optimistic teardown by age then runs from it, and maps read no clock (see `MapperHost.schedule`).
   */
  schedule?: (callback: () => void, delayMs: number) => void;
}

/** Builds the translation tables of a VT-d unit in guest memory and attaches devices to domains. */
export class VtdGuestDriver implements MapperHost {
  readonly granule = PAGE;
  readonly unit: VtdInvalidator;
  readonly mem: DmaMemory;
  readonly levels: 3 | 4;
  readonly haw: number;
  readonly now: () => number;
  readonly schedule: ((callback: () => void, delayMs: number) => void) | undefined;
  readonly rootTable: number;
  private bump: number;
  private readonly areaEnd: number;
  private readonly freePages: number[] = [];
  private nextDomain = 1;
  private inUse = 0;

  constructor(options: VtdGuestDriverOptions) {
    const { addr, len } = options.area;
    if (!Number.isSafeInteger(addr) || addr < 0 || addr % PAGE !== 0 || !Number.isSafeInteger(len) || len < 3 * PAGE) {
      throw new ViommuError('invalid-option', `table area 0x${String(addr.toString(16))}+${String(len)} must be 4 KiB-aligned and at least 3 pages`, addr);
    }
    this.unit = options.unit;
    this.mem = options.mem;
    this.levels = options.levels ?? 4;
    if (this.levels !== 3 && this.levels !== 4) throw new ViommuError('invalid-option', `page-table depth ${String(this.levels)} is not 3 or 4`, this.levels);
    this.haw = options.haw ?? 48;
    this.now = options.now ?? (() => 0);
    this.schedule = options.schedule;
    this.bump = addr;
    this.areaEnd = addr + len - (len % PAGE);
    this.rootTable = this.allocPage();
    this.unit.setRootTable(this.rootTable);
  }

  /** A zeroed table page from the area. */
  allocPage(): number {
    let page = this.freePages.pop();
    if (page === undefined) {
      if (this.bump + PAGE > this.areaEnd) throw new ViommuError('driver-state', `VT-d table area exhausted (${(this.areaEnd - this.bump) / PAGE} pages left)`, this.bump);
      page = this.bump;
      this.bump += PAGE;
    }
    this.mem.fill(page, PAGE, 0);
    this.inUse++;
    return page;
  }

  freePage(page: number): void {
    this.inUse--;
    this.freePages.push(page);
  }

  /** Table pages handed out and not freed. */
  get pagesInUse(): number {
    return this.inUse;
  }

  /** Reads a 64-bit entry as a number (addresses below 2^53). */
  readEntry(at: number): number {
    return this.mem.readU32(at + 4) * TWO_32 + this.mem.readU32(at);
  }

  /** Writes a 64-bit entry, high half first: the present bits in the low half appear last. */
  writeEntry(at: number, value: number): void {
    this.mem.writeU32(at + 4, Math.floor(value / TWO_32));
    this.mem.writeU32(at, value >>> 0);
  }

  private contextEntry(sid: number, create: boolean): number {
    const root = this.rootTable + (sid >>> 8) * 16;
    let ctable = this.readEntry(root);
    if ((ctable & 1) === 0) {
      if (!create) return -1;
      const page = this.allocPage();
      this.writeEntry(root, page + 1);
      ctable = page + 1;
    }
    return ctable - (ctable % PAGE) + (sid & 0xff) * 16;
  }

  /**
   * Creates a domain, points the context entry of source-id `sid` (bus << 8 |
   * devfn) at its (empty) page table, and returns its DMA mapper. The device
   * reaches nothing until something is mapped.
   */
  attach(sid: number, options: DmaDomainOptions = {}): VtdDmaDomain {
    if (!Number.isInteger(sid) || sid < 0 || sid > 0xffff) throw new ViommuError('endpoint', `source-id ${String(sid)} is not a 16-bit bus/devfn`, sid);
    if (options.bypass === true) throw new ViommuError('invalid-option', 'bypass is a virtio-iommu attach flag; a VT-d context uses pass-through (TT = 2) instead', sid);
    const ctx = this.contextEntry(sid, true);
    if ((this.mem.readU32(ctx) & 1) !== 0) throw new ViommuError('driver-state', `source-id 0x${sid.toString(16)} is already attached`, sid);
    if (this.nextDomain > 0xffff) throw new ViommuError('driver-state', 'VT-d domain IDs exhausted', this.nextDomain);
    const did = this.nextDomain++;
    const top = this.allocPage();
    // Context hi: AW (levels − 2) and DID; lo: the table pointer, TT = 0 (translate), P.
    this.writeEntry(ctx + 8, (this.levels - 2) + did * 256);
    this.writeEntry(ctx, top + 1);
    // Not-present entries are not cached (CM = 0), but Linux invalidates here anyway; so do we.
    this.unit.invalidateContextDevice(sid);
    return new VtdDmaDomain(this, did, sid, top, options);
  }

  /** Clears the context entry of `sid` and invalidates it: the device reaches nothing. */
  detach(sid: number): void {
    const ctx = this.contextEntry(sid, false);
    if (ctx < 0) return;
    this.writeEntry(ctx, 0);
    this.writeEntry(ctx + 8, 0);
    this.unit.invalidateContextDevice(sid);
  }
}

/** A VT-d domain's DMA-mapping API: maps are page-table entries, unmaps are cleared entries plus IOTLB invalidations. */
export class VtdDmaDomain extends DmaMapper {
  /**
   * The level-1 tables in use, one slot each, found by IOVA / 2 MiB (small
   * integers up to 2^48 of IOVA). Per slot: the table's address, a view of
   * its page (entries are written straight into guest RAM), its count of
   * present entries (an emptied table is freed) and the address of the
   * level-2 entry pointing at it.
   */
  private readonly slotOf = new PageMap<number>();
  private readonly slotTable: number[] = [];
  private readonly slotView: (DataView | undefined)[] = [];
  private readonly slotCount: number[] = [];
  private readonly slotPde: number[] = [];
  /** The key each slot was filled for (a slot is reused for other keys). */
  private readonly slotKey: number[] = [];
  private readonly freeSlots: number[] = [];
  /**
   * Slots whose table emptied, oldest first (a slot may have been refilled
   * since, or reused: checked when it comes out). An emptied table is kept
   * linked until more than `EMPTY_KEEP` are: a guest with one buffer in
   * flight empties its table at every unmap, and freeing it each time would
   * cost a table, a PDE write and a paging-structure flush per request —
   * Linux likewise frees page tables only when an unmap covers them whole.
   */
  private readonly emptied: number[] = [];
  /** The last slot looked up and its key: consecutive IOVAs mostly share a table. */
  private lastKey = -1;
  private lastSlot = -1;
  /** Level-1 tables unlinked by the staged unmaps: given back only after the invalidation. */
  private readonly unlinked: number[] = [];
  /**
   * The 2 MiB frame (IOVA / 2^21) each of `unlinked` mapped. A table is
   * unlinked when a later one empties, so its frame may lie outside every
   * staged run: the commit invalidates it too, with IH = 0, or the unit's
   * PDE cache could still lead into the page once it is reused.
   */
  private readonly unlinkedFrame: number[] = [];
  /**
   * Unlinked tables of posted batches, oldest first, and each one's ticket:
   * a page goes back to the driver when the unit reports its batch done
   * (`unmapsRetired`), as the batch's IOVAs do.
   */
  private readonly heldPages: number[] = [];
  private readonly heldPageTickets: number[] = [];
  /** Table pages above level 1 (freed by `destroy`). */
  private readonly upperPages: number[] = [];
  /** Staged unmap runs, [start, end). */
  private readonly runStart: number[] = [];
  private readonly runEnd: number[] = [];
  /** A batch's runs as aligned blocks of pages: address and address mask of each (`batchBlocks`). */
  private readonly blockAddr: number[] = [];
  private readonly blockAm: number[] = [];
  private readonly levels: number;
  private readonly mem: DmaMemory;
  private readonly gpaLimit: number;
  private destroyed = false;

  constructor(
    readonly driver: VtdGuestDriver,
    id: number,
    /** Source-id of the attached device. */
    readonly sourceId: number,
    /** The top-level table (the context entry's SLPTPTR). */
    readonly topTable: number,
    options: DmaDomainOptions,
  ) {
    // IOVA 0 is left out so a zero address is never a valid DMA address.
    super(driver, id, PAGE, 2 ** (12 + 9 * driver.levels), [INTERRUPT_RANGE], options);
    this.levels = driver.levels;
    this.mem = driver.mem;
    this.gpaLimit = 2 ** driver.haw;
    this.upperPages.push(topTable);
  }

  /** The slot of the level-1 table for `iova`, or −1. */
  private slot(key: number): number {
    if (key === this.lastKey) return this.lastSlot;
    const s = this.slotOf.get(key);
    if (s === undefined) return -1;
    this.lastKey = key;
    this.lastSlot = s;
    return s;
  }

  /** The slot of the level-1 table for `iova`, building it and the tables above it as needed. */
  private leafSlot(iova: number): number {
    const key = Math.floor(iova / TWO_21);
    const found = this.slot(key);
    if (found >= 0) return found;
    let pt = this.topTable;
    let at = 0;
    for (let level = this.levels; level >= 2; level--) {
      at = pt + (Math.floor(iova / 2 ** (12 + 9 * (level - 1))) % 512) * 8;
      const e = this.driver.readEntry(at);
      if (e % 4 === 0) {
        const page = this.driver.allocPage();
        if (level > 2) this.upperPages.push(page);
        // Upper levels grant read and write: the leaf alone decides (rights are ANDed over the walk).
        this.driver.writeEntry(at, page + 3);
        pt = page;
      } else pt = e - (e % PAGE);
    }
    const s = this.freeSlots.pop() ?? this.slotTable.length;
    const bytes = this.mem.tryView(pt, PAGE, 'write');
    this.slotTable[s] = pt;
    this.slotView[s] = bytes === undefined ? undefined : new DataView(bytes.buffer, bytes.byteOffset, PAGE);
    this.slotCount[s] = 0;
    this.slotPde[s] = at;
    this.slotKey[s] = key;
    this.slotOf.set(key, s);
    this.lastKey = key;
    this.lastSlot = s;
    return s;
  }

  /** Writes the leaf entry of `iova` in slot `s`'s table: 0 clears it. */
  private setLeaf(s: number, iova: number, value: number): void {
    // ToUint32 keeps bits 31:0 of any address below 2^53; bits 20:12 index the table (no float modulo).
    const off = ((iova >>> 12) & 511) * 8;
    const v = this.slotView[s];
    // High half first: the present bits in the low half appear last (and go first when clearing).
    if (v !== undefined) {
      if (value === 0) v.setUint32(off, 0, true);
      v.setUint32(off + 4, Math.floor(value / TWO_32), true);
      v.setUint32(off, value >>> 0, true);
    } else this.driver.writeEntry(this.slotTable[s]! + off, value);
  }

  protected stageMap(_k: number, iova: number, size: number, gpaPage: number, flags: number): void {
    if (this.destroyed) throw new ViommuError('driver-state', `domain ${this.id} was destroyed`, this.id);
    if (gpaPage + size > this.gpaLimit) throw new ViommuError('driver-state', `GPA 0x${gpaPage.toString(16)}+0x${size.toString(16)} is not below 2^${this.driver.haw}`, gpaPage);
    let off = 0;
    try {
      for (; off < size; off += PAGE) {
        const a = iova + off;
        const s = this.leafSlot(a);
        this.setLeaf(s, a, gpaPage + off + flags);
        this.slotCount[s]!++;
      }
    } catch (e) {
      // Out of table pages part-way: take back what was written, so nothing stays reachable.
      // Tables stay linked: no invalidation follows, so none may be freed.
      this.clearEntries(iova, iova + off, false);
      throw e;
    }
  }

  /** New entries need no invalidation: the unit caches no not-present entry (CM = 0). */
  protected commitMaps(): boolean {
    return true;
  }

  protected mapError(): Error | undefined {
    return undefined;
  }

  /**
   * Clears the leaf entries of [start, end). With `unlink`, level-1 tables
   * left empty beyond the `EMPTY_KEEP` most recent are unlinked from their
   * level-2 entries and queued in `unlinked`: a page is reused only after an
   * invalidation that drops the paging-structure caches (IH = 0), so no
   * cached entry can lead to it.
   */
  private clearEntries(start: number, end: number, unlink: boolean): void {
    for (let a = start; a < end; a += PAGE) {
      const key = Math.floor(a / TWO_21);
      const s = this.slot(key);
      if (s < 0) continue;
      this.setLeaf(s, a, 0);
      if (--this.slotCount[s]! === 0 && unlink) this.emptied.push(s);
    }
    if (!unlink) return;
    const e = this.emptied;
    while (e.length > EMPTY_KEEP) {
      const s = e.shift()!;
      // Still empty, and still the table it was when it emptied (not freed and reused since)?
      const key = this.slotKey[s]!;
      if (this.slotCount[s] !== 0 || this.slotOf.get(key) !== s || e.includes(s)) continue;
      this.driver.writeEntry(this.slotPde[s]!, 0);
      this.unlinked.push(this.slotTable[s]!);
      this.unlinkedFrame.push(key);
      this.slotOf.delete(key);
      this.slotView[s] = undefined;
      this.freeSlots.push(s);
      if (this.lastKey === key) this.lastKey = -1;
    }
  }

  protected stageUnmap(r: number, start: number, end: number): void {
    this.clearEntries(start, end, true);
    this.runStart[r] = start;
    this.runEnd[r] = end;
  }

  /**
   * The cleared entries may still be cached: invalidate. A strict unmap of a
   * few runs: one page-selective invalidation each, with IH set when only
   * leaves changed (the paging-structure caches stay) and clear when a table
   * was unlinked. A batch, or many runs: one domain-selective invalidation.
   * Unlinked tables are free once it returns.
   */
  protected commitUnmaps(n: number, batch: boolean): boolean {
    const unit = this.driver.unit;
    const ih = this.unlinked.length === 0;
    if (batch) {
      // A deferred or optimistic batch: page-selective invalidations of exactly its runs when they
      // take few aligned blocks (a next-fit batch is mostly one run), so the rest of the domain's
      // cached translations — the rings, the buffers in flight, the IOVAs prefetched ahead — stay;
      // else one domain-selective invalidation, as Linux's flush queue always sends.
      const k = this.batchBlocks(n, this.unlinkedFrame);
      this.stats.requests += k > 0 ? k : 1;
      // A batch need not be waited for: its IOVAs, and the tables it unlinked, are held until the
      // unit is done (a table page reused earlier could be walked through a stale PDE-cache entry).
      // A unit that posts only domain-selective invalidations gets one (it covers the blocks).
      const posted = k > 0 && unit.postIotlbPages !== undefined ? unit.postIotlbPages(this.id, this.blockAddr, this.blockAm, k, ih) : unit.postIotlbDomain?.(this.id);
      if (posted !== undefined) {
        this.ticket = posted;
        const u = this.unlinked;
        while (u.length > 0) {
          this.heldPages.push(u.pop()!);
          this.heldPageTickets.push(posted);
        }
        this.unlinkedFrame.length = 0;
        return true;
      }
      if (k > 0) for (let i = 0; i < k; i++) unit.invalidateIotlbPages(this.id, this.blockAddr[i]!, this.blockAm[i]!, ih);
      else unit.invalidateIotlbDomain(this.id);
      this.freeUnlinked();
      return true;
    }
    if (n > PSI_LIMIT) {
      this.stats.requests++;
      unit.invalidateIotlbDomain(this.id);
      this.freeUnlinked();
      return true;
    }
    for (let r = 0; r < n; r++) {
      const first = Math.floor(this.runStart[r]! / PAGE);
      const last = Math.floor((this.runEnd[r]! - 1) / PAGE);
      // The smallest aligned block of 2^am pages holding [first, last].
      let am = 0;
      while (Math.floor(first / 2 ** am) !== Math.floor(last / 2 ** am)) am++;
      this.stats.requests++;
      if (am > PSI_MAX_AM) unit.invalidateIotlbDomain(this.id);
      else unit.invalidateIotlbPages(this.id, (first - (first % 2 ** am)) * PAGE, am, ih);
    }
    // The frames of the tables unlinked, whole, with IH = 0: their PDEs may be cached.
    for (const f of this.unlinkedFrame) {
      this.stats.requests++;
      unit.invalidateIotlbPages(this.id, f * TWO_21, PSI_MAX_AM, false);
    }
    this.freeUnlinked();
    return true;
  }

  /**
   * Splits the `n` staged runs into aligned blocks of 2^am pages (am ≤
   * PSI_MAX_AM) covering exactly them, then adds the 2 MiB frames `frames`
   * whole, into blockAddr / blockAm; returns how many, or 0 if that takes
   * more than BATCH_PSI_LIMIT.
   */
  private batchBlocks(n: number, frames: readonly number[]): number {
    let k = 0;
    for (let r = 0; r < n; r++) {
      let p = Math.floor(this.runStart[r]! / PAGE);
      const end = Math.ceil(this.runEnd[r]! / PAGE);
      while (p < end) {
        if (k === BATCH_PSI_LIMIT) return 0;
        // The largest block aligned at p that stays inside the run (ToUint32 keeps the low bits the
        // alignment test needs: no float modulo or power per step).
        let am = 0;
        while (am < PSI_MAX_AM && ((p >>> 0) & ((2 << am) - 1)) === 0 && p + (2 << am) <= end) am++;
        this.blockAddr[k] = p * PAGE;
        this.blockAm[k] = am;
        k++;
        p += 1 << am;
      }
    }
    for (const f of frames) {
      if (k === BATCH_PSI_LIMIT) return 0;
      this.blockAddr[k] = f * TWO_21;
      this.blockAm[k] = PSI_MAX_AM;
      k++;
    }
    return k;
  }

  /** The ticket of the batch invalidation just posted (-1: none). */
  private ticket = -1;

  protected override unmapsInFlight(): number {
    const t = this.ticket;
    this.ticket = -1;
    return t;
  }

  protected override unmapsRetired(ticket: number, wait: boolean): boolean {
    const unit = this.driver.unit;
    if (unit.retired !== undefined && !unit.retired(ticket, wait)) return false;
    // Batches retire in queue order: every table held by this batch or an earlier one is free.
    const pages = this.heldPages;
    const tickets = this.heldPageTickets;
    let n = 0;
    while (n < pages.length && (tickets[n] === ticket || unit.retired === undefined || unit.retired(tickets[n]!, false))) n++;
    for (let i = 0; i < n; i++) this.driver.freePage(pages[i]!);
    if (n > 0) {
      pages.splice(0, n);
      tickets.splice(0, n);
    }
    return true;
  }

  /** Table pages held until their batch's invalidation is done (tests). */
  get heldTablePages(): number {
    return this.heldPages.length;
  }

  private freeUnlinked(): void {
    const u = this.unlinked;
    while (u.length > 0) this.driver.freePage(u.pop()!);
    this.unlinkedFrame.length = 0;
  }

  /** Level-1 tables in use (each maps 2 MiB of IOVA space). */
  get leafTableCount(): number {
    return this.slotOf.size;
  }

  protected unmapError(): Error | undefined {
    return undefined;
  }

  /** Tears down pending unmaps, detaches the device, invalidates the domain and gives its table pages back. */
  destroy(): void {
    if (this.destroyed) return;
    this.flush();
    this.driver.detach(this.sourceId);
    this.driver.unit.invalidateIotlbDomain(this.id);
    this.destroyed = true;
    for (const p of this.upperPages) this.driver.freePage(p);
    for (const s of this.slotOf.values()) this.driver.freePage(this.slotTable[s]!);
    this.upperPages.length = 0;
    this.slotOf.clear();
    this.emptied.length = 0;
    this.lastKey = -1;
  }
}
