import { INGRESS_WORDS } from './constants.js';
import { hashWords, maskWords } from './classifier.js';

const W = INGRESS_WORDS;

/** A cached translation: the ingress bits it depends on and what to do. */
export class MegaflowEntry<D> {
  readonly key = new Uint32Array(W);
  next: MegaflowEntry<D> | null = null;
  dead = false;
  hits = 0;
  /** Traffic through this entry (the datapath flow's stats, as Open vSwitch keeps them). */
  bytes = 0;
  used = 0;
  /** How much of it was already credited to the flow entries it stands for. */
  pushedHits = 0;
  pushedBytes = 0;
  constructor(
    readonly sub: MegaSubtable<D>,
    readonly hash: number,
    readonly data: D,
  ) {}
}

class MegaSubtable<D> {
  readonly words: Int32Array;
  readonly map = new Map<number, MegaflowEntry<D>>();
  count = 0;
  hits = 0;
  constructor(readonly id: string, readonly mask: Uint32Array) {
    this.words = maskWords(mask);
  }
}

export interface CacheStats {
  hits: number;
  misses: number;
  /** Entries pushed out because the cache was full (microflow: a slot reused by another flow). */
  evictions: number;
  entries: number;
  /** Megaflow only: distinct masks (subtables). */
  masks: number;
  /** Megaflow only: times the cache was emptied because flows, groups, meters or ports changed. */
  flushes: number;
}

/**
 * The megaflow cache (Open vSwitch's dpcls): wildcarded entries, one hash table per
 * distinct mask (tuple-space search). An entry holds only the ingress bits the
 * classifier consulted, so one entry serves every packet that would have been
 * translated the same way. Entries never overlap in effect: any match is a
 * correct one. Bounded: when full, the oldest entry goes.
 */
export class MegaflowCache<D> {
  private readonly subs = new Map<string, MegaSubtable<D>>();
  private list: MegaSubtable<D>[] = [];
  private readonly fifo: (MegaflowEntry<D> | null)[];
  private fifoHead = 0;
  private fifoTail = 0;
  size = 0;
  readonly stats: CacheStats = { hits: 0, misses: 0, evictions: 0, entries: 0, masks: 0, flushes: 0 };
  private lookups = 0;

  /** `onRemove` sees every live entry before it is evicted or flushed (to push its statistics). */
  constructor(readonly limit: number, private readonly onRemove: (e: MegaflowEntry<D>) => void = () => {}) {
    this.fifo = new Array<MegaflowEntry<D> | null>(limit).fill(null);
  }

  lookup(key: Uint32Array): MegaflowEntry<D> | null {
    const list = this.list;
    for (let s = 0; s < list.length; s++) {
      const st = list[s]!;
      const mask = st.mask;
      const words = st.words;
      let e = st.map.get(hashWords(key, mask, words)) ?? null;
      while (e !== null) {
        const k = e.key;
        let ok = true;
        for (let i = 0; i < words.length; i++) {
          const w = words[i]!;
          if (((key[w]! & mask[w]!) >>> 0) !== k[w]) {
            ok = false;
            break;
          }
        }
        if (ok) {
          st.hits++;
          this.stats.hits++;
          if ((++this.lookups & 0xffff) === 0) this.sortSubtables();
          return e;
        }
        e = e.next;
      }
    }
    this.stats.misses++;
    return null;
  }

  /** Visits the busiest masks first, as Open vSwitch's pvector does. */
  private sortSubtables(): void {
    this.list.sort((a, b) => b.hits - a.hits);
    for (const st of this.list) st.hits >>>= 1;
  }

  insert(key: Uint32Array, mask: Uint32Array, data: D): MegaflowEntry<D> {
    if (this.limit === 0) {
      const st = new MegaSubtable<D>('', mask);
      const e = new MegaflowEntry(st, 0, data);
      e.dead = true;
      return e;
    }
    if (this.size >= this.limit) this.evictOldest();
    let id = '';
    for (let i = 0; i < W; i++) id += mask[i]!.toString(36) + ',';
    let st = this.subs.get(id);
    if (!st) {
      st = new MegaSubtable<D>(id, mask.slice(0, W));
      this.subs.set(id, st);
      this.list.push(st);
      this.stats.masks = this.subs.size;
    }
    const h = hashWords(key, st.mask, st.words);
    const e = new MegaflowEntry(st, h, data);
    for (let i = 0; i < W; i++) e.key[i] = (key[i]! & st.mask[i]!) >>> 0;
    e.next = st.map.get(h) ?? null;
    st.map.set(h, e);
    st.count++;
    this.size++;
    this.stats.entries = this.size;
    this.fifo[this.fifoTail] = e;
    this.fifoTail = (this.fifoTail + 1) % this.limit;
    return e;
  }

  private evictOldest(): void {
    for (let n = 0; n < this.limit; n++) {
      const e = this.fifo[this.fifoHead];
      this.fifo[this.fifoHead] = null;
      this.fifoHead = (this.fifoHead + 1) % this.limit;
      if (e && !e.dead) {
        this.onRemove(e);
        this.remove(e);
        this.stats.evictions++;
        return;
      }
    }
  }

  private remove(e: MegaflowEntry<D>): void {
    const st = e.sub;
    let p = st.map.get(e.hash) ?? null;
    if (p === e) {
      if (e.next) st.map.set(e.hash, e.next);
      else st.map.delete(e.hash);
    } else {
      while (p !== null && p.next !== e) p = p.next;
      if (p) p.next = e.next;
    }
    e.dead = true;
    st.count--;
    this.size--;
    this.stats.entries = this.size;
    if (st.count === 0) {
      this.subs.delete(st.id);
      this.list = this.list.filter((s) => s !== st);
      this.stats.masks = this.subs.size;
    }
  }

  /** Drops every entry (their `dead` flag tells the microflow cache). */
  flush(): void {
    if (this.size === 0) return;
    for (let i = 0; i < this.fifo.length; i++) {
      const e = this.fifo[i];
      if (e && !e.dead) {
        this.onRemove(e);
        e.dead = true;
      }
      this.fifo[i] = null;
    }
    this.fifoHead = this.fifoTail = 0;
    this.subs.clear();
    this.list = [];
    this.size = 0;
    this.stats.entries = 0;
    this.stats.masks = 0;
    this.stats.flushes++;
  }

  /** Every live entry (for dumps and tests). */
  *entries(): IterableIterator<MegaflowEntry<D>> {
    for (const st of this.subs.values()) for (let e of st.map.values()) {
      for (; e; e = e.next!) {
        yield e;
        if (!e.next) break;
      }
    }
  }
}

/**
 * The microflow cache (Open vSwitch's EMC): the full ingress key, exact match,
 * direct-mapped by hash, pointing at a megaflow entry. A dead megaflow entry
 * makes its microflow slots misses.
 */
export class MicroflowCache<D> {
  private readonly keys: Uint32Array;
  private readonly slots: (MegaflowEntry<D> | null)[];
  private readonly mask: number;
  readonly stats: CacheStats = { hits: 0, misses: 0, evictions: 0, entries: 0, masks: 0, flushes: 0 };
  private missCount = 0;

  /**
   * `insertInterval`: insert one microflow per this many misses (Open vSwitch's
   * emc-insert-inv-prob, deterministic here): with more flows than slots, inserting
   * every miss only evicts entries that were about to hit.
   */
  constructor(readonly size: number, readonly insertInterval = 1) {
    this.keys = new Uint32Array(size * W);
    this.slots = new Array<MegaflowEntry<D> | null>(size).fill(null);
    this.mask = size - 1;
  }

  lookup(key: Uint32Array, hash: number): MegaflowEntry<D> | null {
    if (this.size === 0) return null;
    const slot = hash & this.mask;
    const e = this.slots[slot]!;
    if (e !== null && !e.dead) {
      const keys = this.keys;
      const base = slot * W;
      let i = 0;
      while (i < W && keys[base + i] === key[i]) i++;
      if (i === W) {
        this.stats.hits++;
        return e;
      }
    }
    this.stats.misses++;
    return null;
  }

  insert(key: Uint32Array, hash: number, e: MegaflowEntry<D>): void {
    if (this.size === 0 || e.dead) return;
    if (this.insertInterval > 1 && ++this.missCount % this.insertInterval !== 0) return;
    const slot = hash & this.mask;
    const old = this.slots[slot];
    if (old && !old.dead) this.stats.evictions++;
    else this.stats.entries++;
    this.slots[slot] = e;
    this.keys.set(key.subarray(0, W), slot * W);
  }

  flush(): void {
    this.slots.fill(null);
    this.stats.entries = 0;
    this.stats.flushes++;
  }
}

/** The microflow hash over the full ingress key: one multiply per word, then an avalanche. */
export function keyHash(key: Uint32Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < W; i++) {
    h = Math.imul(h ^ key[i]!, 0x01000193);
    h ^= h >>> 15;
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  // 30 bits: a small integer (Smi) to V8, so returning it boxes nothing.
  return h & 0x3fffffff;
}
