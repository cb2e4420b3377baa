import { INGRESS_WORDS } from './constants.js';
import { hashWords, maskWords } from './classifier.js';

const W = INGRESS_WORDS;

/** A cached translation: the ingress bits it depends on and what to do. */
export class MegaflowEntry<D> {
  readonly key = new Uint32Array(W);
  dead = false;
  /** Its slot in the subtable's open-addressed arrays (moves when the table grows). */
  slot = -1;
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

const EMPTY = -1;
const TOMB = -2;

/**
 * One mask's entries in flat, open-addressed arrays (linear probing): the stored hash and
 * the masked words of each entry sit side by side in typed arrays, so a lookup reads two
 * contiguous arrays and touches the entry object only on a hit. (A `Map` of entries, each
 * with its own key array, cost three dependent loads per probe and halved the hit rate at
 * 10 000 entries.)
 */
export class MegaSubtable<D> {
  readonly words: Int32Array;
  /** The mask's non-zero words, compacted (maskC[i] = mask[words[i]]). */
  readonly maskC: Uint32Array;
  readonly nw: number;
  cap = 0;
  hashes = new Int32Array(0);
  keys = new Uint32Array(0);
  ents: (MegaflowEntry<D> | null)[] = [];
  count = 0;
  /** Slots holding a tombstone (a removed entry; probes pass over it). */
  tombs = 0;
  hits = 0;
  constructor(readonly id: string, readonly mask: Uint32Array) {
    this.words = maskWords(mask);
    this.nw = this.words.length;
    this.maskC = new Uint32Array(this.nw);
    for (let i = 0; i < this.nw; i++) this.maskC[i] = mask[this.words[i]!]!;
    this.resize(16);
  }

  private resize(cap: number): void {
    const oh = this.hashes;
    const ok = this.keys;
    const oe = this.ents;
    const nw = this.nw;
    this.cap = cap;
    this.hashes = new Int32Array(cap).fill(EMPTY);
    this.keys = new Uint32Array(cap * nw);
    this.ents = new Array<MegaflowEntry<D> | null>(cap).fill(null);
    this.tombs = 0;
    for (let i = 0; i < oh.length; i++) {
      const e = oe[i];
      if (oh[i]! < 0 || !e) continue;
      let j = oh[i]! & (cap - 1);
      while (this.hashes[j] !== EMPTY) j = (j + 1) & (cap - 1);
      this.hashes[j] = oh[i]!;
      this.keys.set(ok.subarray(i * nw, i * nw + nw), j * nw);
      this.ents[j] = e;
      e.slot = j;
    }
  }

  /** The entry whose masked words equal the key's, or null. `h` = hashWords(key, mask, words). */
  find(key: Uint32Array, h: number): MegaflowEntry<D> | null {
    const hashes = this.hashes;
    const keys = this.keys;
    const words = this.words;
    const m = this.maskC;
    const nw = this.nw;
    const cm = this.cap - 1;
    let j = h & cm;
    for (;;) {
      const hs = hashes[j]!;
      if (hs === EMPTY) return null;
      if (hs === h) {
        const base = j * nw;
        let i = 0;
        while (i < nw && ((key[words[i]!]! & m[i]!) >>> 0) === keys[base + i]) i++;
        if (i === nw) return this.ents[j]!;
      }
      j = (j + 1) & cm;
    }
  }

  /** Whether the key matches the entry in slot `j` (the microflow cache's verification). */
  matchesAt(key: Uint32Array, j: number): boolean {
    const words = this.words;
    const m = this.maskC;
    const keys = this.keys;
    const nw = this.nw;
    const base = j * nw;
    for (let i = 0; i < nw; i++) if (((key[words[i]!]! & m[i]!) >>> 0) !== keys[base + i]) return false;
    return true;
  }

  add(e: MegaflowEntry<D>, key: Uint32Array): void {
    // Load factor at most 1/2 counting tombstones: probes stay short and always end.
    if ((this.count + this.tombs + 1) * 2 > this.cap) this.resize(this.count * 4 >= this.cap ? this.cap * 2 : this.cap);
    const cm = this.cap - 1;
    let j = e.hash & cm;
    while (this.hashes[j]! >= 0) j = (j + 1) & cm;
    if (this.hashes[j] === TOMB) this.tombs--;
    this.hashes[j] = e.hash;
    const base = j * this.nw;
    for (let i = 0; i < this.nw; i++) this.keys[base + i] = (key[this.words[i]!]! & this.maskC[i]!) >>> 0;
    this.ents[j] = e;
    e.slot = j;
    this.count++;
  }

  delete(e: MegaflowEntry<D>): void {
    const j = e.slot;
    if (j < 0 || this.ents[j] !== e) return;
    this.hashes[j] = TOMB;
    this.ents[j] = null;
    this.tombs++;
    this.count--;
    e.slot = -1;
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
      const e = st.find(key, hashWords(key, st.mask, st.words));
      if (e !== null) {
        st.hits++;
        this.stats.hits++;
        if ((++this.lookups & 0xffff) === 0) this.sortSubtables();
        return e;
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
    st.add(e, key);
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
    st.delete(e);
    e.dead = true;
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
    for (const st of this.subs.values()) for (const e of st.ents) if (e !== null && !e.dead) yield e;
  }
}

/**
 * The microflow cache, as Open vSwitch's signature match cache (SMC) rather than its
 * exact-match cache: direct-mapped by a hash of the full ingress key, each slot holding
 * that hash and a megaflow entry. A hit needs the same hash and the packet matching the
 * entry's own masked words (a few words, not the whole 24-word key): any megaflow entry
 * the packet matches is a correct translation, so a hash collision costs a miss, never a
 * wrong action. A dead megaflow entry makes its slots misses.
 */
export class MicroflowCache<D> {
  private readonly hashes: Int32Array;
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
    this.hashes = new Int32Array(size).fill(-1);
    this.slots = new Array<MegaflowEntry<D> | null>(size).fill(null);
    this.mask = size - 1;
  }

  lookup(key: Uint32Array, hash: number): MegaflowEntry<D> | null {
    if (this.size === 0) return null;
    const slot = hash & this.mask;
    const e = this.slots[slot]!;
    if (e !== null && this.hashes[slot] === hash && !e.dead && e.sub.matchesAt(key, e.slot)) {
      this.stats.hits++;
      return e;
    }
    this.stats.misses++;
    return null;
  }

  insert(_key: Uint32Array, hash: number, e: MegaflowEntry<D>): void {
    if (this.size === 0 || e.dead) return;
    if (this.insertInterval > 1 && ++this.missCount % this.insertInterval !== 0) return;
    const slot = hash & this.mask;
    const old = this.slots[slot];
    if (old && !old.dead) this.stats.evictions++;
    else this.stats.entries++;
    this.slots[slot] = e;
    this.hashes[slot] = hash;
  }

  flush(): void {
    this.slots.fill(null);
    this.hashes.fill(-1);
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
