import { ViommuError } from './errors.js';
import { IovaAllocator } from './iova-allocator.js';
import { PageMap } from './page-map.js';

/**
 * The guest's DMA-mapping API (map before a device touches a buffer, unmap
 * after), with the three invalidation strategies of the vIOMMU paper (Amit,
 * Ben-Yehuda, Tsafrir, Schuster, USENIX ATC 2011). What a mode promises is
 * the same whichever IOMMU carries it out; how a mapping reaches the IOMMU is
 * the subclass's: MAP and UNMAP requests on the virtio-iommu request queue
 * (`DmaDomain`), or entries written in page tables followed by IOTLB
 * invalidations (`VtdDmaDomain`).
 */

/** Which way a DMA buffer goes, as in the Linux DMA API. */
export type DmaDirection = 'to-device' | 'from-device' | 'bidirectional';

/**
 * Invalidation strategies (vIOMMU paper §3–4):
 * - `strict`: every unmap is complete on return: the device cannot reach the buffer.
 * - `deferred`: unmaps are queued and carried out in batches (one notification or invalidation) when
 *   `batchSize` are pending or the oldest is `flushDelayMs` old; IOVAs are reused only after that. A unit
 *   that can take an invalidation without being waited for (VT-d's queue) gets the batch that way: its
 *   IOVAs come back when the unit reports it done, and `flush()` still waits.
 * - `optimistic`: unmapped mappings stay live in the IOMMU for reuse by a later map of the same pages
 *   and direction; they are torn down (in a batch) beyond `quota` or after `timeoutMs`.
 */
export type InvalidationMode = 'strict' | 'deferred' | 'optimistic';

export interface DmaDomainOptions {
  mode?: InvalidationMode;
  /** deferred: unmaps per batch (Linux's flush queue holds 256). Default 256. */
  batchSize?: number;
  /** deferred: the longest an unmapped buffer stays reachable (Linux: 10 ms). Default 10. */
  flushDelayMs?: number;
  /** optimistic: cached mappings kept at most. Default 256. */
  quota?: number;
  /** optimistic: how long a cached mapping may stay live after its unmap. Default 10. */
  timeoutMs?: number;
  /** virtio-iommu only: attach with VIRTIO_IOMMU_ATTACH_F_BYPASS (needs BYPASS_CONFIG). */
  bypass?: boolean;
}

export interface DriverStats {
  maps: number;
  unmaps: number;
  /** virtio-iommu: MAP and UNMAP requests sent. VT-d: invalidations issued. */
  requests: number;
  /** Batches submitted (one notification, or one invalidation wait, each). */
  batches: number;
  /** optimistic: maps served from the cache without touching the IOMMU. */
  reused: number;
}

/** Permission bits of a mapping: the same values as VIRTIO_IOMMU_MAP_F_READ/WRITE and VT-d's R/W. */
export const PERM_READ = 1;
export const PERM_WRITE = 2;

export interface LiveMapping {
  iova: number;
  size: number;
  gpaPage: number;
  /** PERM_READ | PERM_WRITE: what the device may do. */
  flags: number;
  /** Time of unmap (deferred/optimistic). */
  at: number;
  /** Made by `mapAt`: never reused by optimistic teardown. */
  fixed: boolean;
  /** Neighbours in the pending list (unmapped, not yet torn down), oldest first. */
  prev: LiveMapping | undefined;
  next: LiveMapping | undefined;
  /** optimistic: the next older cached mapping of the same guest page. */
  older: LiveMapping | undefined;
}

/** What a mapper needs from its driver: the IOMMU's granule, the guest's clock and, optionally, a timer. */
export interface MapperHost {
  readonly granule: number;
  /** Milliseconds, monotonic. */
  now(): number;
  /**
   * A one-shot timer: calls `callback` once, about `delayMs` from now, on the
   * mapper's thread (`setTimeout`). With it, deferred and optimistic
   * teardown by age runs from the timer, as Linux's flush queue does from
   * its timer, and `map`/`syncMaps` read no clock; without it every
   * `map`/`syncMaps` reads the clock.
   */
  readonly schedule?: ((callback: () => void, delayMs: number) => void) | undefined;
}

export abstract class DmaMapper {
  readonly mode: InvalidationMode;
  readonly stats: DriverStats = { maps: 0, unmaps: 0, requests: 0, batches: 0, reused: 0 };
  protected readonly granule: number;
  private readonly iovas: IovaAllocator;
  /** Live mappings by IOVA page number (iova / granule). */
  private readonly live = new PageMap<LiveMapping>();
  /**
   * deferred: unmapped, not yet torn down. optimistic: unmapped, still live
   * in the IOMMU. Oldest first, as an intrusive list: an optimistic reuse
   * takes a mapping out of the middle in O(1).
   */
  private pHead: LiveMapping | undefined;
  private pTail: LiveMapping | undefined;
  private pLen = 0;
  /** Scratch for `teardownOldest`: the batch taken off the pending list. */
  private readonly batchScratch: LiveMapping[] = [];
  /** optimistic: unmapped mappings still live in the IOMMU, by guest page number (then matched on size and flags). */
  private readonly cache = new PageMap<LiveMapping>();
  /** Records of mappings fully torn down, reused by the next map (no object per request in steady state). */
  private readonly spare: LiveMapping[] = [];
  /** Maps staged by `queueMap`, not yet committed (their records, in staging order). */
  private readonly queued: LiveMapping[] = [];
  /** Scratch for `tearDown`: the batch in IOVA order. */
  private readonly sortScratch: LiveMapping[] = [];
  /** Scratch for `tearDown`: where each run of adjacent mappings starts. */
  private readonly runStarts: number[] = [];
  /**
   * IOVA runs of batches whose invalidation the IOMMU took but has not yet
   * reported done (`unmapsInFlight`), oldest first from `heldHead`: released
   * to the allocator only when it has. The device may still reach them.
   */
  private readonly heldTicket: number[] = [];
  private readonly heldStart: number[] = [];
  private readonly heldSize: number[] = [];
  private readonly heldCount: number[] = [];
  private heldHead = 0;
  private heldMappings = 0;
  private readonly batchSize: number;
  private readonly flushDelay: number;
  private readonly quota: number;
  private readonly timeout: number;

  /**
   * @param iovaStart, iovaEnd the IOVA space handed out, [start, end), granule-aligned
   * @param holes IOVA ranges never handed out (reserved regions), [start, end)
   */
  constructor(
    protected readonly host: MapperHost,
    readonly id: number,
    iovaStart: number,
    iovaEnd: number,
    holes: readonly { start: number; end: number }[],
    options: DmaDomainOptions,
  ) {
    this.mode = options.mode ?? 'strict';
    this.batchSize = options.batchSize ?? 256;
    this.flushDelay = options.flushDelayMs ?? 10;
    this.quota = options.quota ?? 256;
    this.timeout = options.timeoutMs ?? 10;
    this.granule = host.granule;
    this.iovas = new IovaAllocator(iovaStart, iovaEnd, holes);
    this.schedule = this.mode === 'strict' ? undefined : host.schedule;
  }

  // --- what a subclass does to the IOMMU ---

  /**
   * Prepares map number `k` of the next commit: [iova, iova+size) → gpaPage
   * with `flags`. May already make it reachable (page tables); must not
   * throw unless it changed nothing.
   */
  protected abstract stageMap(k: number, iova: number, size: number, gpaPage: number, flags: number): void;
  /** Makes the first `n` staged maps reachable; true if all succeeded (else `mapError(k)` names each failure). */
  protected abstract commitMaps(n: number): boolean;
  protected abstract mapError(k: number): Error | undefined;
  /** Prepares unmap number `r` of the next commit: every mapping wholly inside [start, end), and nothing else. */
  protected abstract stageUnmap(r: number, start: number, end: number): void;
  /**
   * Carries out the first `n` staged unmaps; on return the device can reach
   * none of them (IOTLB included). True if all succeeded, else `unmapError(r)`
   * names each failure. `batch` is true for a deferred or optimistic teardown,
   * false for a strict unmap.
   */
  protected abstract commitUnmaps(n: number, batch: boolean): boolean;
  protected abstract unmapError(r: number): Error | undefined;

  /**
   * Right after a batch's `commitUnmaps` returned true: a ticket (≥ 0) when
   * the IOMMU has taken the invalidation but not yet reported it done — the
   * batch's IOVAs are then held until `unmapsRetired(ticket)` — or -1 when
   * it is complete. Tickets retire in the order they were handed out.
   */
  protected unmapsInFlight(): number {
    return -1;
  }

  /** Whether the invalidation of `ticket` is complete; with `wait`, blocks (bounded) until it is, or throws. */
  protected unmapsRetired(_ticket: number, _wait: boolean): boolean {
    return true;
  }

  // --- the DMA API ---

  /** Mappings whose IOVA a device may currently use (live, plus unmapped-but-not-yet-invalidated). */
  get reachable(): number {
    return this.live.size + this.pLen + this.heldMappings;
  }

  /**
   * Maps [gpa, gpa+len) for a device and returns the IOVA of `gpa`. The mapping
   * covers whole granules; the device may reach the rest of them too.
   */
  map(gpa: number, len: number, dir: DmaDirection): number {
    if (this.timerError !== undefined) this.throwTimerError();
    const iova = this.queueMap(gpa, len, dir);
    this.syncMaps();
    return iova;
  }

  /**
   * `map` without waiting: the IOVA is chosen and the mapping staged, but it
   * is committed only by the next `syncMaps()` (or `map`, `mapAt`, `unmap`,
   * `flush`, `destroy`), together with every other staged map — for
   * virtio-iommu in one submission, one notification for a burst of requests,
   * as Linux's driver adds each MAP to the request queue in `map_pages` and
   * kicks once in `iotlb_sync_map`. The caller MUST NOT hand the IOVA to a
   * device before `syncMaps()` returned. An optimistic reuse is usable at
   * once. It does not read the clock (`syncMaps` does).
   */
  queueMap(gpa: number, len: number, dir: DmaDirection): number {
    if (!Number.isSafeInteger(gpa) || gpa < 0 || !Number.isSafeInteger(len) || len <= 0) {
      throw new ViommuError('driver-state', `cannot map ${String(len)} byte(s) at GPA ${String(gpa)}`, gpa);
    }
    const g = this.granule;
    const gpaPage = roundDown(gpa, g);
    const size = roundUp(gpa + len, g) - gpaPage;
    const flags = dirFlags(dir);
    this.stats.maps++;
    if (this.mode === 'optimistic') {
      const hit = this.takeCached(gpaPage, size, flags);
      if (hit !== undefined) {
        this.unlinkPending(hit);
        this.live.set(hit.iova / g, hit);
        this.stats.reused++;
        return hit.iova + (gpa - gpaPage);
      }
    }
    let iova = this.iovas.alloc(size);
    if (iova === undefined && (this.pLen > 0 || this.heldMappings > 0)) {
      this.flush();
      iova = this.iovas.alloc(size);
    }
    if (iova === undefined) throw new ViommuError('driver-state', `IOVA space of domain ${this.id} exhausted (${size} bytes wanted)`, size);
    this.stage(iova, gpaPage, size, flags, false);
    return iova + (gpa - gpaPage);
  }

  /** Stages a map of an IOVA range the allocator already gave out; on failure gives it back. */
  private stage(iova: number, gpaPage: number, size: number, flags: number, fixed: boolean): void {
    try {
      this.stageMap(this.queued.length, iova, size, gpaPage, flags);
    } catch (e) {
      this.iovas.release(iova, size);
      throw e;
    }
    this.queued.push(this.record(iova, gpaPage, size, flags, fixed));
  }

  /**
   * Commits every staged map (for virtio-iommu: one submission, one
   * notification) and returns when the IOMMU has them all: from then on the
   * device may use their IOVAs. Throws the first failure after forgetting
   * every failed mapping (its IOVA returns to the allocator); the others stand.
   */
  syncMaps(): void {
    if (this.timerError !== undefined) this.throwTimerError();
    // With a timer, age is its business; only what the unit has finished is taken back here (no clock read).
    if (this.schedule === undefined) this.expire();
    else if (this.heldHead < this.heldTicket.length) this.releaseHeld(false);
    this.commitQueued();
  }

  /** The host's timer (deferred and optimistic only), and whether it is set. */
  private readonly schedule: ((callback: () => void, delayMs: number) => void) | undefined;
  private armed = false;
  private readonly onTimer = (): void => {
    this.armed = false;
    if (this.pLen === 0 && this.heldHead === this.heldTicket.length) return;
    try {
      this.expire();
    } catch (e) {
      // No caller to throw to (it would be an uncaught exception on the guest's thread): the next driver call throws it.
      this.timerError ??= e;
    }
    this.arm();
  };

  /**
   * A failure of a teardown the timer ran (an UNMAP refused, a unit that
   * reported a queue error): thrown once, before it does anything, by the
   * next `map`, `syncMaps`, `unmap`, `unmapMany` or `flush`.
   */
  private timerError: unknown = undefined;

  private throwTimerError(): void {
    const e = this.timerError;
    this.timerError = undefined;
    throw e;
  }

  /** Sets the timer for when the oldest pending unmap comes due (`this.clock` is fresh). */
  private arm(): void {
    const head = this.pHead;
    if (this.armed || head === undefined || this.schedule === undefined) return;
    this.armed = true;
    const delay = (this.mode === 'deferred' ? this.flushDelay : this.timeout) - (this.clock - head.at);
    this.schedule(this.onTimer, delay > 0 ? delay : 0);
  }

  /** `syncMaps` without applying the clock. */
  private commitQueued(): void {
    const q = this.queued;
    const n = q.length;
    if (n === 0) return;
    this.stats.batches++;
    let ok: boolean;
    try {
      ok = this.commitMaps(n);
    } catch (e) {
      // The commit failed as a whole: nothing is known to be mapped.
      for (const m of q) this.forget(m);
      q.length = 0;
      throw e;
    }
    let failed: Error | undefined;
    if (!ok) {
      for (let i = 0; i < n; i++) {
        const err = this.mapError(i);
        if (err === undefined) continue;
        failed ??= err;
        this.forget(q[i]!);
      }
    }
    clear(q);
    if (failed !== undefined) throw failed;
  }

  /** A mapping whose map did not succeed: not live, IOVA free again. */
  private forget(m: LiveMapping): void {
    this.live.delete(m.iova / this.granule);
    this.iovas.release(m.iova, m.size);
  }

  /**
   * Maps [gpa, gpa+len) at a fixed IOVA (whole granules): `mapAt(gpa, gpa, …)`
   * is an identity ("direct") mapping, as a guest sets up for memory a device
   * must reach at its physical address — e.g. virtqueue rings a driver placed
   * before it knew of the IOMMU. Fails if any part of the IOVA range is in use
   * or outside the domain's IOVA space (reserved regions included). Undone by
   * `unmap(iova)`, in the domain's mode; never reused by optimistic teardown.
   */
  mapAt(iova: number, gpa: number, len: number, dir: DmaDirection): number {
    this.syncMaps();
    const g = this.granule;
    if (!Number.isSafeInteger(gpa) || gpa < 0 || !Number.isSafeInteger(iova) || iova < 0 || !Number.isSafeInteger(len) || len <= 0 || iova % g !== gpa % g) {
      throw new ViommuError('driver-state', `cannot map ${String(len)} byte(s) at GPA ${String(gpa)} to IOVA ${String(iova)} (offsets within a ${g}-byte granule must agree)`, gpa);
    }
    const gpaPage = roundDown(gpa, g);
    const iovaPage = roundDown(iova, g);
    const size = roundUp(gpa + len, g) - gpaPage;
    if (!this.iovas.take(iovaPage, size)) {
      if (this.pLen > 0 || this.heldMappings > 0) this.flush();
      if (!this.iovas.take(iovaPage, size)) throw new ViommuError('driver-state', `IOVA range 0x${iovaPage.toString(16)}+0x${size.toString(16)} of domain ${this.id} is in use, reserved or outside the input range`, iovaPage);
    }
    this.stats.maps++;
    // Fixed mappings never enter the optimistic cache.
    this.stage(iovaPage, gpaPage, size, dirFlags(dir), true);
    this.commitQueued();
    return iova;
  }

  /**
   * optimistic: the most recently unmapped cached mapping of exactly these
   * pages and flags, removed from the cache. The cache maps a guest page to
   * its newest cached mapping, older ones chained behind it (`older`): no
   * array per page, so a reuse allocates nothing.
   */
  private takeCached(gpaPage: number, size: number, flags: number): LiveMapping | undefined {
    for (let m = this.cache.get(gpaPage / this.granule); m !== undefined; m = m.older) {
      if (m.size === size && m.flags === flags) {
        this.uncache(m);
        return m;
      }
    }
    return undefined;
  }

  /** Takes `m` out of its page's chain. */
  private uncache(m: LiveMapping): void {
    const key = m.gpaPage / this.granule;
    const head = this.cache.get(key)!;
    if (head === m) {
      if (m.older === undefined) this.cache.delete(key);
      else this.cache.set(key, m.older);
    } else {
      let p = head;
      while (p.older !== m) p = p.older!;
      p.older = m.older;
    }
    m.older = undefined;
  }

  /** A live-mapping record (recycled), entered in `live`. */
  private record(iova: number, gpaPage: number, size: number, flags: number, fixed: boolean): LiveMapping {
    const m = this.spare.pop() ?? { iova: 0, size: 0, gpaPage: 0, flags: 0, at: 0, fixed: false, prev: undefined, next: undefined, older: undefined };
    m.iova = iova;
    m.size = size;
    m.gpaPage = gpaPage;
    m.flags = flags;
    m.at = 0;
    m.fixed = fixed;
    this.live.set(iova / this.granule, m);
    return m;
  }

  /** Ends the device's use of the buffer mapped at `iova` (what it guarantees depends on the mode; see the README). */
  unmap(iova: number): void {
    if (this.timerError !== undefined) this.throwTimerError();
    // A map still staged goes first: the unmap must find what it removes.
    if (this.queued.length > 0) this.commitQueued();
    const m = this.takeLive(iova);
    this.stats.unmaps++;
    if (this.mode === 'strict') {
      const one = this.one;
      one[0] = m;
      this.tearDown(one, 1, false);
      return;
    }
    this.retire(m);
    this.expireAt(this.clock);
  }

  /**
   * `unmap` of the first `count` IOVAs of `iovas` in one call, as a DMA API
   * unmaps a scatter list or a completion batch. strict: every unmap is
   * carried out in one commit (for virtio-iommu one submission, mappings with
   * adjacent IOVA ranges in one range UNMAP) and on return the device can
   * reach none of the buffers, exactly as after `count` calls of `unmap`.
   * deferred / optimistic: the same as calling `unmap` for each. Throws, changing nothing, if an IOVA is not mapped (or is
   * named twice).
   */
  unmapMany(iovas: ArrayLike<number>, count: number = iovas.length): void {
    if (!Number.isSafeInteger(count) || count < 0 || count > iovas.length) throw new ViommuError('driver-state', `cannot unmap ${String(count)} of ${iovas.length} IOVAs`, count);
    if (count === 0) return;
    if (this.timerError !== undefined) this.throwTimerError();
    if (this.queued.length > 0) this.commitQueued();
    const batch = this.manyBatch;
    clear(batch);
    try {
      for (let i = 0; i < count; i++) batch.push(this.takeLive(iovas[i]!));
    } catch (e) {
      // Nothing changes: the mappings already taken are live again.
      for (const m of batch) this.live.set(m.iova / this.granule, m);
      clear(batch);
      throw e;
    }
    this.stats.unmaps += count;
    if (this.mode === 'strict') {
      try {
        this.tearDown(batch, count, false);
      } finally {
        clear(batch);
      }
      return;
    }
    for (let i = 0; i < count; i++) this.retire(batch[i]!);
    clear(batch);
    this.expireAt(this.clock);
  }

  /** Scratch for `unmapMany`: the records being unmapped. */
  private readonly manyBatch: LiveMapping[] = [];

  /** Removes and returns the live mapping holding `iova`'s granule; throws if there is none. */
  private takeLive(iova: number): LiveMapping {
    const m = this.live.take(Math.floor(iova / this.granule));
    if (m === undefined) {
      const name = typeof iova === 'number' && Number.isFinite(iova) ? `0x${iova.toString(16)}` : String(iova);
      throw new ViommuError('driver-state', `IOVA ${name} is not mapped in domain ${this.id}`, iova);
    }
    return m;
  }

  /** deferred / optimistic: `m` was unmapped now (stamped with the clock last read); queue it (and tear down what is due by count; the clock is applied by the caller). */
  private retire(m: LiveMapping): void {
    const starts = this.schedule !== undefined && this.pHead === undefined;
    // A batch starts: its stamp sets the timer, so it is read fresh (once per batch; maps read no clock).
    if (starts) this.clock = this.host.now();
    m.at = this.clock;
    this.appendPending(m);
    if (starts) this.arm();
    if (this.mode === 'optimistic') {
      if (!m.fixed) {
        const key = m.gpaPage / this.granule;
        m.older = this.cache.get(key);
        this.cache.set(key, m);
      }
      if (this.pLen > this.quota) this.teardownOldest(this.pLen - this.quota);
    } else if (this.pLen >= this.batchSize) {
      this.tearDownAll();
    }
  }

  /** Scratch batch of one (strict unmap). */
  private readonly one: LiveMapping[] = [];

  /**
   * The guest's time as last read (by `map`, `syncMaps`, `expire`). An unmap
   * stamps its mapping with it rather than reading the clock — a clock read
   * costs as much as the rest of a deferred unmap — as Linux's flush queue
   * stamps with jiffies. A stamp is never later than the true time, so a
   * batch is due no later than `flushDelayMs` after its oldest unmap; it is
   * noticed at the next `syncMaps` or `expire`.
   */
  private clock = 0;

  /** Reads the clock and applies it: tears down the deferred batch, or expired cached mappings, when due. */
  expire(): void {
    if (this.mode === 'strict') return;
    this.clock = this.host.now();
    if (this.heldHead < this.heldTicket.length) this.releaseHeld(false);
    if (this.pLen > 0) this.expireAt(this.clock);
  }

  private expireAt(now: number): void {
    const head = this.pHead;
    if (head === undefined) return;
    if (this.mode === 'deferred') {
      if (now - head.at >= this.flushDelay) this.tearDownAll();
    } else if (this.mode === 'optimistic') {
      let n = 0;
      for (let m: LiveMapping | undefined = head; m !== undefined && now - m.at >= this.timeout; m = m.next) n++;
      if (n > 0) this.teardownOldest(n);
    }
  }

  /**
   * Commits staged maps and tears down every pending unmap now (one batch),
   * and waits for every invalidation still in flight: afterwards no unmapped
   * buffer is reachable.
   */
  flush(): void {
    if (this.timerError !== undefined) this.throwTimerError();
    this.tearDownAll();
    if (this.heldHead < this.heldTicket.length) this.releaseHeld(true);
  }

  /** `flush` that need not wait: a unit that takes the batch's invalidation in flight holds its IOVAs back instead. */
  private tearDownAll(): void {
    this.commitQueued();
    if (this.pLen > 0) this.teardownOldest(this.pLen);
  }

  /** Gives the allocator the held runs whose invalidation is done (with `wait`, all of them). */
  private releaseHeld(wait: boolean): void {
    const t = this.heldTicket;
    let i = this.heldHead;
    while (i < t.length) {
      const ticket = t[i]!;
      if (!this.unmapsRetired(ticket, wait)) break;
      for (; i < t.length && t[i] === ticket; i++) {
        this.iovas.release(this.heldStart[i]!, this.heldSize[i]!);
        this.heldMappings -= this.heldCount[i]!;
      }
    }
    if (i < t.length) {
      this.heldHead = i;
      return;
    }
    this.heldHead = 0;
    clear(t);
    clear(this.heldStart);
    clear(this.heldSize);
    clear(this.heldCount);
  }

  private appendPending(m: LiveMapping): void {
    m.next = undefined;
    m.prev = this.pTail;
    if (this.pTail === undefined) this.pHead = m;
    else this.pTail.next = m;
    this.pTail = m;
    this.pLen++;
  }

  private unlinkPending(m: LiveMapping): void {
    if (m.prev === undefined) this.pHead = m.next;
    else m.prev.next = m.next;
    if (m.next === undefined) this.pTail = m.prev;
    else m.next.prev = m.prev;
    m.prev = undefined;
    m.next = undefined;
    this.pLen--;
  }

  /** Tears down the `n` oldest pending mappings in one batch. */
  private teardownOldest(n: number): void {
    // Written by index and never emptied: a batch-sized scratch array that shrank would grow again every batch.
    const batch = this.batchScratch;
    for (let i = 0; i < n; i++) {
      const m = this.pHead!;
      this.unlinkPending(m);
      batch[i] = m;
    }
    if (this.mode === 'optimistic') {
      for (let i = 0; i < n; i++) {
        const m = batch[i]!;
        if (m.fixed) continue;
        this.uncache(m);
      }
    }
    this.tearDown(batch, n, true);
  }

  /**
   * Unmaps `batch` in one commit. Mappings whose IOVA ranges are adjacent go
   * as one range covering the run: an unmap removes every mapping wholly
   * inside its range (virtio-iommu §5.13.6.4), and nothing else can lie
   * between adjacent ranges, so no live mapping is touched and none is split.
   * A deferred batch, allocated next-fit, is mostly one run.
   */
  private tearDown(batch: LiveMapping[], count: number, isBatch: boolean): void {
    if (count === 0) return;
    let sorted = batch;
    if (count > 1) {
      // Sorted in a scratch array (no array or closure per batch; written by index, never emptied); usually already in order (next-fit).
      sorted = this.sortScratch;
      for (let i = 0; i < count; i++) sorted[i] = batch[i]!;
      sortByIova(sorted, count);
    }
    const runs = this.runStarts;
    let n = 0;
    for (let i = 0; i < count; i++) {
      if (i === 0 || sorted[i - 1]!.iova + sorted[i - 1]!.size !== sorted[i]!.iova) runs[n++] = i;
    }
    runs[n] = count;
    for (let r = 0; r < n; r++) {
      const first = sorted[runs[r]!]!;
      const last = sorted[runs[r + 1]! - 1]!;
      this.stageUnmap(r, first.iova, last.iova + last.size);
    }
    this.stats.batches++;
    const ok = this.commitUnmaps(n, isBatch);
    const ticket = ok && isBatch ? this.unmapsInFlight() : -1;
    let failed: Error | undefined;
    for (let r = 0; r < n; r++) {
      // A failed unmap leaves its IOVAs reachable: they are never reused.
      const err = ok ? undefined : this.unmapError(r);
      if (err === undefined) {
        const first = sorted[runs[r]!]!;
        const last = sorted[runs[r + 1]! - 1]!;
        if (ticket >= 0) {
          // Not reusable until the unit reports the invalidation done.
          this.heldTicket.push(ticket);
          this.heldStart.push(first.iova);
          this.heldSize.push(last.iova + last.size - first.iova);
          this.heldCount.push(runs[r + 1]! - runs[r]!);
          this.heldMappings += runs[r + 1]! - runs[r]!;
        } else this.iovas.release(first.iova, last.iova + last.size - first.iova);
        const spare = this.spare;
        for (let i = runs[r]!; i < runs[r + 1]! && spare.length < 1024; i++) spare.push(sorted[i]!);
      } else failed ??= err;
    }
    if (failed !== undefined) throw failed;
  }
}

/**
 * Empties a scratch array. Short ones are popped: an assignment to `length`
 * is a runtime call in V8, dearer than a few inlined pops.
 */
export function clear(a: unknown[]): void {
  if (a.length > 16) a.length = 0;
  else while (a.length > 0) a.pop();
}

/**
 * Sorts the first `count` by IOVA in place. A batch is nearly sorted — allocated next-fit,
 * unmapped in completion order, which strays from submission order by at
 * most the queue depth — so insertion sort does O(n + inversions) moves,
 * with no comparator calls; a batch far from sorted goes to `Array.sort`.
 */
function sortByIova(l: LiveMapping[], count: number): void {
  let moves = 0;
  const limit = 32 * count;
  for (let i = 1; i < count; i++) {
    const m = l[i]!;
    const key = m.iova;
    let j = i - 1;
    while (j >= 0 && l[j]!.iova > key) {
      l[j + 1] = l[j]!;
      j--;
    }
    l[j + 1] = m;
    moves += i - 1 - j;
    if (moves > limit) {
      // Rare: the first `count` only (what lies beyond is stale scratch).
      const head = l.slice(0, count).sort((a, b) => a.iova - b.iova);
      for (let k = 0; k < count; k++) l[k] = head[k]!;
      return;
    }
  }
}

export function dirFlags(dir: DmaDirection): number {
  return dir === 'to-device' ? PERM_READ : dir === 'from-device' ? PERM_WRITE : PERM_READ | PERM_WRITE;
}

/**
 * `v % g` for a non-negative integer `v` below 2^53 and a power of two `g`
 * up to 2^31: ToUint32 keeps the low 32 bits, and the mask the rest. A float
 * modulo is a runtime call in V8 once `v` passes 2^31.
 */
function lowBits(v: number, g: number): number {
  return g <= 0x8000_0000 ? ((v >>> 0) & (g - 1)) >>> 0 : v % g;
}

/** `v` rounded down to a multiple of the power of two `g`. */
export function roundDown(v: number, g: number): number {
  return v - lowBits(v, g);
}

/** `v` rounded up to a multiple of the power of two `g`. */
export function roundUp(v: number, g: number): number {
  const r = lowBits(v, g);
  return r === 0 ? v : v + (g - r);
}
