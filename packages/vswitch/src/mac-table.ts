/** A learned station: where a MAC was last seen in a VLAN. */
export interface MacEntry {
  port: number;
  lastSeen: number;
}

/** What `learn` did. */
export const Learn = { REFRESHED: 0, NEW: 1, MOVED: 2, FULL: 3 } as const;

/**
 * The MAC learning table of NORMAL (Open vSwitch's mac-learning.c): per VLAN, MAC →
 * port, aged out after `agingMs`, bounded; when full, the oldest entry is evicted.
 */
export class MacTable {
  private readonly vlans: (Map<number, MacEntry> | undefined)[] = new Array<Map<number, MacEntry> | undefined>(4096);
  size = 0;
  moves = 0;
  evictions = 0;
  /** Insertion order for eviction: [vlan, mac] pairs. */
  private readonly fifo: number[] = [];
  private fifoHead = 0;

  constructor(readonly agingMs: number, readonly limit: number) {}

  /** The port of `mac` in `vlan`, or -1 when unknown or aged. */
  lookup(vlan: number, mac: number, now: number): number {
    const m = this.vlans[vlan];
    if (m === undefined) return -1;
    const e = m.get(mac);
    if (e === undefined) return -1;
    if (now - e.lastSeen >= this.agingMs) {
      m.delete(mac);
      this.size--;
      return -1;
    }
    return e.port;
  }

  learn(vlan: number, mac: number, port: number, now: number): number {
    let m = this.vlans[vlan];
    if (m === undefined) m = this.vlans[vlan] = new Map();
    const e = m.get(mac);
    if (e !== undefined) {
      e.lastSeen = now;
      if (e.port === port) return Learn.REFRESHED;
      // A station move: the MAC now appears behind another port.
      e.port = port;
      this.moves++;
      return Learn.MOVED;
    }
    if (this.size >= this.limit && !this.evictOne(now)) return Learn.FULL;
    m.set(mac, { port, lastSeen: now });
    this.size++;
    this.fifo.push(vlan, mac);
    return Learn.NEW;
  }

  private evictOne(now: number): boolean {
    while (this.fifoHead < this.fifo.length) {
      const vlan = this.fifo[this.fifoHead++]!;
      const mac = this.fifo[this.fifoHead++]!;
      if (this.fifoHead > 4096 && this.fifoHead * 2 > this.fifo.length) {
        this.fifo.splice(0, this.fifoHead);
        this.fifoHead = 0;
      }
      const m = this.vlans[vlan];
      if (m?.delete(mac)) {
        this.size--;
        this.evictions++;
        void now;
        return true;
      }
    }
    return false;
  }

  /** Forgets every entry on `port` (the port went away or down). */
  flushPort(port: number): void {
    for (const m of this.vlans) {
      if (!m) continue;
      for (const [mac, e] of m) if (e.port === port) {
        m.delete(mac);
        this.size--;
      }
    }
  }

  /** Removes aged entries; returns how many. */
  age(now: number): number {
    let n = 0;
    for (const m of this.vlans) {
      if (!m) continue;
      for (const [mac, e] of m) if (now - e.lastSeen >= this.agingMs) {
        m.delete(mac);
        this.size--;
        n++;
      }
    }
    return n;
  }

  entries(): { vlan: number; mac: number; port: number; lastSeen: number }[] {
    const out: { vlan: number; mac: number; port: number; lastSeen: number }[] = [];
    this.vlans.forEach((m, vlan) => {
      if (m) for (const [mac, e] of m) out.push({ vlan, mac, port: e.port, lastSeen: e.lastSeen });
    });
    return out;
  }
}
