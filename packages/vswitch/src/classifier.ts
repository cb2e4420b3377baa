import { TUPLE_MASK } from '@ioplane/packet';
import { INGRESS_WORDS, KEY_WORDS } from './constants.js';
import type { CompiledMatch } from './match.js';
import type { CInstructions, Instruction } from './actions.js';
import type { Match } from './match.js';

/** A flow entry (OpenFlow 1.3.5 §5.2): match, priority, counters, instructions, timeouts, cookie, flags. */
export interface FlowRule {
  readonly tableId: number;
  readonly priority: number;
  readonly match: Match;
  readonly compiled: CompiledMatch;
  cookie: bigint;
  instructions: Instruction[];
  ins: CInstructions;
  readonly idleTimeout: number;
  readonly hardTimeout: number;
  flags: FlowFlags;
  /** Insertion order: breaks priority ties deterministically (earlier wins). */
  readonly seq: number;
  installedAt: number;
  lastUsed: number;
  packetCount: number;
  byteCount: number;
  removed: boolean;
}

export interface FlowFlags {
  /** OFPFF_SEND_FLOW_REM: report removal to the controller. */
  sendFlowRem?: boolean;
  /** OFPFF_CHECK_OVERLAP: refuse an add overlapping a same-priority entry. */
  checkOverlap?: boolean;
  /** OFPFF_RESET_COUNTS: a modify clears the counters. */
  resetCounts?: boolean;
}

/**
 * A hash of selected words of `key & mask`: one multiply per word (FNV-like) and
 * a final avalanche. The result only picks a bucket; equality is always checked.
 */
export function hashWords(key: Uint32Array, mask: Uint32Array, words: Int32Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!;
    h = Math.imul(h ^ (key[w]! & mask[w]!), 0x01000193);
    h ^= h >>> 15;
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  // 30 bits: a small integer (Smi) to V8, so Map lookups hash it without boxing.
  return h & 0x3fffffff;
}

const TUPLE_WORDS = maskWords(TUPLE_MASK.words);

/**
 * The flow hash SELECT groups, balance-tcp bonds and VXLAN source ports use: the
 * Ethernet addresses, EtherType, IP protocol and addresses and L4 ports of a key.
 */
export function tupleHash(key: Uint32Array): number {
  return hashWords(key, TUPLE_MASK.words, TUPLE_WORDS);
}

/** The word indices where a mask is not zero. */
export function maskWords(mask: Uint32Array, limit = mask.length): Int32Array {
  const idx: number[] = [];
  for (let i = 0; i < limit; i++) if (mask[i] !== 0) idx.push(i);
  return Int32Array.from(idx);
}

function maskId(mask: Uint32Array): string {
  return Array.from(mask, (w) => w.toString(16)).join(',');
}

/** One tuple of the tuple space: every rule with this mask, hashed by masked value. */
class Subtable {
  readonly words: Int32Array;
  /** Mask words that are part of the ingress key (what a megaflow must keep). */
  readonly wcWords: Int32Array;
  readonly buckets = new Map<number, FlowRule[]>();
  maxPriority = -1;
  count = 0;
  constructor(readonly id: string, readonly mask: Uint32Array) {
    this.words = maskWords(mask);
    this.wcWords = maskWords(mask, INGRESS_WORDS);
  }

  recomputeMax(): void {
    let m = -1;
    for (const b of this.buckets.values()) if (b[0]!.priority > m) m = b[0]!.priority;
    this.maxPriority = m;
  }
}

function better(a: FlowRule, b: FlowRule): boolean {
  return a.priority > b.priority || (a.priority === b.priority && a.seq < b.seq);
}

/**
 * A flow table as Open vSwitch's classifier: tuple-space search (one hash table per
 * distinct mask), subtables visited in order of their highest priority, stopping
 * as soon as no remaining subtable can beat the best match. Each visited
 * subtable's mask is ORed into the caller's wildcards: those are the bits the
 * decision depended on, so a megaflow keyed on them cannot be wrong.
 */
export class FlowTable {
  private readonly subtables = new Map<string, Subtable>();
  /** Subtables by descending max priority (rebuilt on change). */
  private order: Subtable[] = [];
  private dirty = false;
  count = 0;
  lookupCount = 0;
  matchedCount = 0;
  /** What to do with a packet no entry matches (§5.4; the default is drop). */
  miss: 'drop' | 'controller' = 'drop';

  constructor(readonly id: number) {}

  get subtableCount(): number {
    return this.subtables.size;
  }

  insert(rule: FlowRule): void {
    const id = maskId(rule.compiled.mask);
    let st = this.subtables.get(id);
    if (!st) {
      st = new Subtable(id, rule.compiled.mask);
      this.subtables.set(id, st);
    }
    const h = hashWords(rule.compiled.value, st.mask, st.words);
    let b = st.buckets.get(h);
    if (!b) {
      b = [];
      st.buckets.set(h, b);
    }
    let i = 0;
    while (i < b.length && !better(rule, b[i]!)) i++;
    b.splice(i, 0, rule);
    st.count++;
    this.count++;
    if (rule.priority > st.maxPriority) st.maxPriority = rule.priority;
    this.dirty = true;
  }

  remove(rule: FlowRule): boolean {
    const st = this.subtables.get(maskId(rule.compiled.mask));
    if (!st) return false;
    const h = hashWords(rule.compiled.value, st.mask, st.words);
    const b = st.buckets.get(h);
    const i = b ? b.indexOf(rule) : -1;
    if (!b || i < 0) return false;
    b.splice(i, 1);
    if (b.length === 0) st.buckets.delete(h);
    st.count--;
    this.count--;
    if (st.count === 0) this.subtables.delete(st.id);
    else st.recomputeMax();
    this.dirty = true;
    return true;
  }

  /** Every rule, in no particular order. */
  *rules(): IterableIterator<FlowRule> {
    for (const st of this.subtables.values()) for (const b of st.buckets.values()) yield* b;
  }

  /** The rule with this exact match and priority (§6.4 strict), if any. */
  findStrict(compiled: CompiledMatch, priority: number): FlowRule | undefined {
    const st = this.subtables.get(maskId(compiled.mask));
    if (!st) return undefined;
    const b = st.buckets.get(hashWords(compiled.value, st.mask, st.words));
    if (!b) return undefined;
    outer: for (const r of b) {
      if (r.priority !== priority) continue;
      for (let i = 0; i < KEY_WORDS; i++) if (r.compiled.value[i] !== compiled.value[i]) continue outer;
      return r;
    }
    return undefined;
  }

  /**
   * The highest-priority rule matching `key`, or null. ORs into `wc` the ingress
   * words of every subtable consulted.
   */
  lookup(key: Uint32Array, wc: Uint32Array): FlowRule | null {
    if (this.dirty) {
      this.order = [...this.subtables.values()].sort((a, b) => b.maxPriority - a.maxPriority);
      this.dirty = false;
    }
    let best: FlowRule | null = null;
    const order = this.order;
    for (let s = 0; s < order.length; s++) {
      const st = order[s]!;
      if (best !== null && st.maxPriority < best.priority) break;
      const mask = st.mask;
      const ww = st.wcWords;
      for (let i = 0; i < ww.length; i++) {
        const w = ww[i]!;
        wc[w] = (wc[w]! | mask[w]!) >>> 0;
      }
      const b = st.buckets.get(hashWords(key, mask, st.words));
      if (b === undefined) continue;
      const words = st.words;
      for (let j = 0; j < b.length; j++) {
        const r = b[j]!;
        const v = r.compiled.value;
        let ok = true;
        for (let i = 0; i < words.length; i++) {
          const w = words[i]!;
          if (((key[w]! & mask[w]!) >>> 0) !== v[w]) {
            ok = false;
            break;
          }
        }
        if (ok) {
          if (best === null || better(r, best)) best = r;
          break;
        }
      }
    }
    return best;
  }
}
