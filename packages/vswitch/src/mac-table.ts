/** What `learn` did. */
export const Learn = { REFRESHED: 0, NEW: 1, MOVED: 2, FULL: 3 } as const;

const EMPTY = 0;
const USED = 1;
const TOMB = 2;
/** Slots examined to find a victim when the table is full (bounded work per new MAC). */
const EVICT_WINDOW = 64;

/**
 * The MAC learning table of NORMAL (as Open vSwitch's mac-learning.c): (VLAN, MAC) →
 * port, aged out after `agingMs`, bounded by `limit`. Open addressing over typed
 * arrays, so a lookup or a refresh allocates nothing (a 48-bit MAC as a JS number
 * would be boxed). When full, the least recently seen entry of a bounded window
 * goes, so a flood of new MACs costs bounded work each.
 */
export class MacTable {
  private cap: number;
  private keyHi!: Uint32Array; // vlan << 16 | MAC bytes 0–1
  private keyLo!: Uint32Array; // MAC bytes 2–5
  private ports!: Uint32Array;
  private seen!: Float64Array;
  private state!: Uint8Array;
  private tombs = 0;
  size = 0;
  moves = 0;
  evictions = 0;
  /** The current time (ms), set by the owner before each batch: passing a double per call would box it. */
  now = 0;

  constructor(readonly agingMs: number, readonly limit: number) {
    let c = 16;
    while (c < limit * 2) c *= 2;
    this.cap = c;
    this.alloc();
  }

  private alloc(): void {
    const c = this.cap;
    this.keyHi = new Uint32Array(c);
    this.keyLo = new Uint32Array(c);
    this.ports = new Uint32Array(c);
    this.seen = new Float64Array(c);
    this.state = new Uint8Array(c);
    this.tombs = 0;
  }

  private slot(hi: number, lo: number): number {
    let h = Math.imul(hi ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(lo, 0xc2b2ae35);
    h ^= h >>> 15;
    h = Math.imul(h, 0x27d4eb2f);
    h ^= h >>> 13;
    return h & (this.cap - 1);
  }

  /** Index of (hi, lo), or -1. */
  private find(hi: number, lo: number): number {
    const mask = this.cap - 1;
    for (let i = this.slot(hi, lo), n = 0; n < this.cap; i = (i + 1) & mask, n++) {
      const s = this.state[i]!;
      if (s === EMPTY) return -1;
      if (s === USED && this.keyHi[i] === hi && this.keyLo[i] === lo) return i;
    }
    return -1;
  }

  private remove(i: number): void {
    this.state[i] = TOMB;
    this.size--;
    this.tombs++;
  }

  /** The port of MAC bytes (a, b, c as 16-bit pieces) in `vlan`, or -1 when unknown or aged. */
  lookup(vlan: number, a: number, b: number, c: number): number {
    const i = this.find(((vlan << 16) | a) >>> 0, ((b << 16) | c) >>> 0);
    if (i < 0) return -1;
    if (this.now - this.seen[i]! >= this.agingMs) {
      this.remove(i);
      return -1;
    }
    return this.ports[i]!;
  }

  /** Learns MAC bytes (a, b, c as 16-bit pieces, all small integers) behind `port` in `vlan`. */
  learn(vlan: number, a: number, b: number, c: number, port: number): number {
    const now = this.now;
    const hi = ((vlan << 16) | a) >>> 0;
    const lo = ((b << 16) | c) >>> 0;
    const i = this.find(hi, lo);
    if (i >= 0) {
      this.seen[i] = now;
      if (this.ports[i] === port) return Learn.REFRESHED;
      // A station move: the MAC now appears behind another port.
      this.ports[i] = port;
      this.moves++;
      return Learn.MOVED;
    }
    if (this.size >= this.limit && !this.evict(hi, lo, now)) return Learn.FULL;
    if (this.size + this.tombs + 1 > (this.cap * 3) >> 2) this.rehash();
    const mask = this.cap - 1;
    let j = this.slot(hi, lo);
    while (this.state[j] === USED) j = (j + 1) & mask;
    if (this.state[j] === TOMB) this.tombs--;
    this.state[j] = USED;
    this.keyHi[j] = hi;
    this.keyLo[j] = lo;
    this.ports[j] = port;
    this.seen[j] = now;
    this.size++;
    return Learn.NEW;
  }

  private evict(hi: number, lo: number, now: number): boolean {
    const mask = this.cap - 1;
    let victim = -1;
    let oldest = Infinity;
    for (let i = this.slot(hi, lo), n = 0; n < EVICT_WINDOW; i = (i + 1) & mask, n++) {
      if (this.state[i] === USED && this.seen[i]! < oldest) {
        oldest = this.seen[i]!;
        victim = i;
      }
    }
    if (victim < 0) {
      // Nothing near: age the whole table once, else take the first entry found.
      if (this.age(now) > 0) return true;
      victim = this.state.indexOf(USED);
      if (victim < 0) return false;
    }
    this.remove(victim);
    this.evictions++;
    return true;
  }

  private rehash(): void {
    const { keyHi, keyLo, ports, seen, state } = this;
    if (this.size * 2 > this.cap && this.cap < 1 << 24) this.cap *= 2;
    this.alloc();
    const mask = this.cap - 1;
    for (let i = 0; i < state.length; i++) {
      if (state[i] !== USED) continue;
      let j = this.slot(keyHi[i]!, keyLo[i]!);
      while (this.state[j] === USED) j = (j + 1) & mask;
      this.state[j] = USED;
      this.keyHi[j] = keyHi[i]!;
      this.keyLo[j] = keyLo[i]!;
      this.ports[j] = ports[i]!;
      this.seen[j] = seen[i]!;
    }
  }

  /** Forgets every entry on `port` (the port went away or down). */
  flushPort(port: number): void {
    for (let i = 0; i < this.cap; i++) if (this.state[i] === USED && this.ports[i] === port) this.remove(i);
  }

  /** Removes aged entries; returns how many. */
  age(now: number): number {
    let n = 0;
    for (let i = 0; i < this.cap; i++) {
      if (this.state[i] === USED && now - this.seen[i]! >= this.agingMs) {
        this.remove(i);
        n++;
      }
    }
    return n;
  }

  entries(): { vlan: number; mac: string; port: number; lastSeen: number }[] {
    const out: { vlan: number; mac: string; port: number; lastSeen: number }[] = [];
    for (let i = 0; i < this.cap; i++) {
      if (this.state[i] !== USED) continue;
      const hi = this.keyHi[i]!;
      const lo = this.keyLo[i]!;
      const b = [(hi >>> 8) & 0xff, hi & 0xff, lo >>> 24, (lo >>> 16) & 0xff, (lo >>> 8) & 0xff, lo & 0xff];
      out.push({ vlan: hi >>> 16, mac: b.map((x) => x.toString(16).padStart(2, '0')).join(':'), port: this.ports[i]!, lastSeen: this.seen[i]! });
    }
    return out;
  }
}
