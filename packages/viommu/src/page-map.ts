/**
 * A map from page numbers (non-negative integers below 2^53) to values, for
 * the DMA API's per-request bookkeeping. A JS `Map` costs 100–200 ns per
 * set + get + delete on the machines this runs on, a large share of a
 * map/unmap pair; this open-addressing table on a typed array of keys costs
 * a few loads. Linear probing, deletion by backward shift (no tombstones),
 * grows at half full. Keys are mostly consecutive (next-fit IOVAs, guest
 * buffers): with the low bits as the hash they would fill one long cluster,
 * and every delete would shift along all of it, so the home slot comes from
 * a Fibonacci hash of the low 32 bits instead.
 */
export class PageMap<T> {
  private keys: Float64Array;
  private vals: (T | undefined)[];
  private mask: number;
  /** 32 − log2(capacity): the home slot is the top bits of the product. */
  private shift: number;
  private count = 0;

  constructor(capacity = 64) {
    let cap = 16;
    while (cap < capacity) cap *= 2;
    this.keys = new Float64Array(cap).fill(-1);
    this.vals = new Array<T | undefined>(cap).fill(undefined);
    this.mask = cap - 1;
    this.shift = 32 - Math.log2(cap);
  }

  /** ToInt32 keeps the low 32 bits of any key below 2^53. */
  private home(key: number): number {
    return Math.imul(key | 0, 0x9e37_79b1) >>> this.shift;
  }

  get size(): number {
    return this.count;
  }

  /** The slot holding `key`, or −1. */
  private find(key: number): number {
    const keys = this.keys;
    const mask = this.mask;
    let i = this.home(key);
    for (;;) {
      const k = keys[i]!;
      if (k === key) return i;
      if (k === -1) return -1;
      i = (i + 1) & mask;
    }
  }

  get(key: number): T | undefined {
    const i = this.find(key);
    return i < 0 ? undefined : this.vals[i];
  }

  has(key: number): boolean {
    return this.find(key) >= 0;
  }

  set(key: number, value: T): void {
    const keys = this.keys;
    const mask = this.mask;
    let i = this.home(key);
    for (;;) {
      const k = keys[i]!;
      if (k === key) {
        this.vals[i] = value;
        return;
      }
      if (k === -1) break;
      i = (i + 1) & mask;
    }
    keys[i] = key;
    this.vals[i] = value;
    if (++this.count * 2 > keys.length) this.grow();
  }

  delete(key: number): boolean {
    const i = this.find(key);
    if (i < 0) return false;
    this.removeAt(i);
    return true;
  }

  /** Removes `key` and returns its value (undefined if absent): one probe where `get` then `delete` take two. */
  take(key: number): T | undefined {
    const i = this.find(key);
    if (i < 0) return undefined;
    const v = this.vals[i];
    this.removeAt(i);
    return v;
  }

  private removeAt(at: number): void {
    let i = at;
    const keys = this.keys;
    const vals = this.vals;
    const mask = this.mask;
    // Backward shift: move later entries of the probe run into the hole when their home allows.
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      const k = keys[j]!;
      if (k === -1) break;
      const home = this.home(k);
      // The entry at j may move to i if its home is not cyclically in (i, j].
      if (i <= j ? home <= i || home > j : home <= i && home > j) {
        keys[i] = k;
        vals[i] = vals[j];
        i = j;
      }
    }
    keys[i] = -1;
    vals[i] = undefined;
    this.count--;
  }

  clear(): void {
    this.keys.fill(-1);
    this.vals.fill(undefined);
    this.count = 0;
  }

  /** Every value, in slot order (not insertion order). */
  *values(): IterableIterator<T> {
    for (let i = 0; i < this.keys.length; i++) if (this.keys[i] !== -1) yield this.vals[i]!;
  }

  private grow(): void {
    const oldKeys = this.keys;
    const oldVals = this.vals;
    const cap = oldKeys.length * 2;
    this.keys = new Float64Array(cap).fill(-1);
    this.vals = new Array<T | undefined>(cap).fill(undefined);
    this.mask = cap - 1;
    this.shift = 32 - Math.log2(cap);
    this.count = 0;
    for (let i = 0; i < oldKeys.length; i++) if (oldKeys[i] !== -1) this.set(oldKeys[i]!, oldVals[i]!);
  }
}
