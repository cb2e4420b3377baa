import { GuestMemory } from '@ioplane/guest-memory';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DmaFault, type TranslatingMemory, type TranslationOut, VtdRemapper } from '../src/index.js';

/*
 * The VT-d unit behind `dmaMemory` (IOTLB, PDE cache, invalidation log, and
 * the translations a `TranslatingMemory` carries: its runs, its checked
 * ranges, and translations kept by `stillValid` as a popped chain keeps
 * them) against the architecture's rule, checked with a naive walker:
 *
 *   a translation may come from the tables as they are now, or from an
 *   earlier state of a present entry that no invalidation covering it (its
 *   domain and page; IH = 0 for non-leaf entries) has retired since.
 *
 * Not-present entries are never cached (CM = 0), so an old "not present"
 * never excuses a fault. The guest plays by the rules for non-leaf entries:
 * replacing a page-directory entry that pointed to a page table is followed
 * at once by a PSI with IH = 0 touching its 2 MiB (or a DSI, or a global
 * invalidation); leaf edits are invalidated at once, later, with either IH,
 * or never.
 */

const PAGE = 4096;
const TWO_M = 0x20_0000;
const PS = 0x80;
/** Source-ids: 0x08 and 0x18 share domain 1 (one set of tables), 0x10 is domain 2. */
const SIDS = [0x08, 0x18, 0x10] as const;
const DOMAIN_OF_SID = [1, 1, 2] as const;
const DIDS = [1, 2] as const;
/** IOVA 2 MiB regions 0..2 of each domain, and the probed 4 KiB pages 0..7 of each (few: edits and probes must meet). */
const REGIONS = 3;
const PAGES = 8;
const ROOT = 0x40_0000;
const CTX = ROOT + PAGE;

interface Outcome {
  gpa: number;
  perm: number;
}

class Guest {
  readonly ram = GuestMemory.create(6 << 20);
  private next = CTX + PAGE;
  /** Per domain index: the page directory covering IOVA 0..1 GiB. */
  readonly pd: number[] = [];
  readonly pml4: number[] = [];
  /** Stale outcomes per (domain index, region, page): keys of `Outcome`s. */
  readonly stale = new Map<string, Set<string>>();

  constructor() {
    this.ram.writeU53(ROOT, CTX + 1);
    for (let d = 0; d < DIDS.length; d++) {
      const pml4 = this.alloc();
      const pdpt = this.alloc();
      const pd = this.alloc();
      this.ram.writeU53(pml4, pdpt + 3);
      this.ram.writeU53(pdpt, pd + 3);
      this.pml4.push(pml4);
      this.pd.push(pd);
    }
    SIDS.forEach((sid, i) => {
      const d = DIDS.indexOf(DOMAIN_OF_SID[i]!);
      this.ram.writeU53(CTX + sid * 16, this.pml4[d]! + 1);
      this.ram.writeU53(CTX + sid * 16 + 8, 2 + DIDS[d]! * 256); // AW = 2 (4-level), DID
    });
  }

  alloc(): number {
    const a = this.next;
    this.next += PAGE;
    return a;
  }

  pdeAt(d: number, r: number): number {
    return this.pd[d]! + r * 8;
  }

  /** The naive walk (4 levels, rights ANDed, 2 MiB leaves), from the tables as they are now. */
  walk(d: number, iova: number): Outcome | undefined {
    let t = this.pml4[d]!;
    let rights = 3;
    for (let l = 4; l >= 1; l--) {
      const span = 2 ** (12 + 9 * (l - 1));
      const e = this.ram.readU53(t + (Math.floor(iova / span) % 512) * 8);
      if ((e & 3) === 0) return undefined;
      rights &= e & 3;
      const base = e - (e % PAGE);
      if (l === 1 || (l === 2 && (e & PS) !== 0)) return { gpa: base + (iova % span) - (iova % PAGE), perm: rights };
      t = base;
    }
    return undefined;
  }

  private key(d: number, r: number, k: number): string {
    return `${d}:${r}:${k}`;
  }

  /** Before an edit of the entries behind pages `ks` of region r: their present outcomes stay allowed until invalidated. */
  remember(d: number, r: number, ks: readonly number[]): void {
    for (const k of ks) {
      const o = this.walk(d, r * TWO_M + k * PAGE);
      if (o === undefined) continue; // CM = 0: not-present is never cached
      const key = this.key(d, r, k);
      let s = this.stale.get(key);
      if (s === undefined) this.stale.set(key, (s = new Set()));
      s.add(`${o.gpa}:${o.perm}`);
    }
  }

  /** An invalidation retired [start, end) of domain index d (undefined: every domain). */
  retire(d: number | undefined, start: number, end: number): void {
    for (let dd = 0; dd < DIDS.length; dd++) {
      if (d !== undefined && dd !== d) continue;
      for (let r = 0; r < REGIONS; r++) {
        for (let k = 0; k < PAGES; k++) {
          const a = r * TWO_M + k * PAGE;
          if (a >= start && a < end) this.stale.delete(this.key(dd, r, k));
        }
      }
    }
  }

  /** Whether `result` (a GPA, or 'fault') is allowed for an access at `iova` of domain index d now. */
  allows(d: number, iova: number, write: boolean, result: number | 'fault'): boolean {
    const need = write ? 2 : 1;
    const r = Math.floor(iova / TWO_M);
    const k = Math.floor((iova % TWO_M) / PAGE);
    const outcomes: (Outcome | undefined)[] = [this.walk(d, iova)];
    for (const s of this.stale.get(this.key(d, r, k)) ?? []) {
      const [gpa, perm] = s.split(':').map(Number);
      outcomes.push({ gpa: gpa!, perm: perm! });
    }
    return outcomes.some((o) => (result === 'fault' ? o === undefined || (o.perm & need) === 0 : o !== undefined && (o.perm & need) !== 0 && o.gpa + (iova % PAGE) === result));
  }
}

type Inval =
  | { t: 'none' }
  | { t: 'psi'; k: number; am: number; ih: boolean }
  | { t: 'dsi' }
  | { t: 'global' }
  | { t: 'ctx'; g: number };

type Op =
  | { t: 'leaf'; d: number; r: number; k: number; gpa: number; perm: number; inval: Inval }
  | { t: 'pde'; d: number; r: number; kind: 'np' | 'large' | 'table'; frame: number; perm: number; k: number; gpa: number; inval: Inval; strict: Inval }
  | { t: 'inval'; d: number; r: number; inval: Inval }
  | { t: 'probe'; s: number; r: number; k: number; off: number; len: number; write: boolean; via: 'range' | 'view' | 'unit' }
  /** Source-id index s now uses domain index d (its context entry rewritten), with or without the device-selective context invalidation that must follow. */
  | { t: 'move'; s: number; d: number; inval: boolean }
  /** Probe a page edited earlier (the j-th from the end): where a missed invalidation shows. */
  | { t: 'reprobe'; j: number; off: number; len: number; write: boolean; via: 'range' | 'view' | 'unit'; other: boolean }
  | { t: 'carried' }
  /** Probe pages k, k+1, … of a region in order through translateRange, as a device consumes next-fit IOVAs (its read-ahead window serves them). */
  | { t: 'scan'; s: number; r: number; k: number; n: number; write: boolean }
  /** Map every page of a region read-write, 2 pages apart in guest memory (scattered leaves, as next-fit IOVAs of separate buffers), invalidating nothing. */
  | { t: 'fill'; d: number; r: number; gpa: number };

const d = fc.nat(DIDS.length - 1);
const r = fc.nat(REGIONS - 1);
const k = fc.nat(PAGES - 1);
const anyInval: fc.Arbitrary<Inval> = fc.oneof(
  { weight: 3, arbitrary: fc.constant({ t: 'none' as const }) },
  { weight: 6, arbitrary: fc.record({ t: fc.constant('psi' as const), k, am: fc.constantFrom(0, 0, 1, 2, 3, 9, 10), ih: fc.boolean() }) },
  { weight: 1, arbitrary: fc.constant({ t: 'dsi' as const }) },
  { weight: 1, arbitrary: fc.constant({ t: 'global' as const }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('ctx' as const), g: fc.nat(2) }) },
);
/** What a guest must send after replacing a non-leaf entry. */
const nonLeafInval: fc.Arbitrary<Inval> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ t: fc.constant('psi' as const), k, am: fc.constantFrom(0, 2, 9, 10), ih: fc.constant(false) }) },
  { weight: 1, arbitrary: fc.constant({ t: 'dsi' as const }) },
  { weight: 1, arbitrary: fc.constant({ t: 'global' as const }) },
);
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ t: fc.constant('leaf' as const), d, r, k, gpa: fc.nat(1023), perm: fc.nat(3), inval: anyInval }) },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant('pde' as const),
      d,
      r,
      kind: fc.constantFrom('np' as const, 'large' as const, 'table' as const, 'table' as const),
      frame: fc.nat(1),
      perm: fc.integer({ min: 1, max: 3 }),
      k,
      gpa: fc.nat(1023),
      inval: anyInval,
      strict: nonLeafInval,
    }),
  },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('inval' as const), d, r, inval: anyInval }) },
  {
    weight: 12,
    arbitrary: fc.record({
      t: fc.constant('probe' as const),
      s: fc.nat(SIDS.length - 1),
      r,
      k,
      off: fc.nat(PAGE - 64),
      len: fc.integer({ min: 1, max: 64 }),
      write: fc.boolean(),
      via: fc.constantFrom('range' as const, 'range' as const, 'view' as const, 'unit' as const),
    }),
  },
  {
    weight: 8,
    arbitrary: fc.record({
      t: fc.constant('reprobe' as const),
      j: fc.nat(7),
      off: fc.nat(PAGE - 64),
      len: fc.integer({ min: 1, max: 64 }),
      write: fc.boolean(),
      via: fc.constantFrom('range' as const, 'range' as const, 'view' as const, 'unit' as const),
      other: fc.boolean(),
    }),
  },
  { weight: 3, arbitrary: fc.constant({ t: 'carried' as const }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('fill' as const), d, r, gpa: fc.nat(1023) }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('scan' as const), s: fc.nat(SIDS.length - 1), r, k, n: fc.integer({ min: 2, max: PAGES }), write: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('move' as const), s: fc.nat(SIDS.length - 1), d, inval: fc.boolean() }) },
);

interface Carried {
  s: number;
  iova: number;
  len: number;
  write: boolean;
  gpa: number;
  gen: number;
}

/** Checked-range misses the devices' read-ahead windows served, over a property's runs (the path is exercised). */
let windowHits = 0;
/** Windows read again (`readAhead`, through a cached PDE) for a page in their reach they could not serve. */
let rereads = 0;

function run(ops: readonly Op[], entries: { iotlb: number; pde: number }): void {
  const g = new Guest();
  const vtd = new VtdRemapper({ memory: g.ram, iotlbEntries: entries.iotlb, pdeCacheEntries: entries.pde, maxFaults: 4 });
  vtd.setRootTable(ROOT);
  const dmas: TranslatingMemory[] = SIDS.map((sid) => vtd.dmaMemory(sid, g.ram));
  const out: TranslationOut = { gpa: 0, start: 0, end: 0 };
  let carried: Carried[] = [];
  // Per source-id index: the domain index its context entry names now, and the ones it named
  // before that no context-cache invalidation covering it has retired (the unit may still use them).
  const domainOf = SIDS.map((_, i) => DIDS.indexOf(DOMAIN_OF_SID[i]!));
  const ctxStale = SIDS.map(() => new Set<number>());
  const allowed = (si: number, iova: number, write: boolean, result: number | 'fault'): boolean =>
    [domainOf[si]!, ...ctxStale[si]!].some((dd) => g.allows(dd, iova, write, result));

  const invalidate = (di: number, region: number, inv: Inval): void => {
    const did = DIDS[di]!;
    switch (inv.t) {
      case 'none':
        return;
      case 'psi': {
        const addr = region * TWO_M + inv.k * PAGE;
        const size = PAGE * 2 ** inv.am;
        const start = addr - (addr % size);
        // Through the queued descriptor half the time: type 2, granularity 3, DID; hi: ADDR | IH << 6 | AM.
        if (inv.k % 2 === 0) vtd.invalidateIotlbPages(did, addr, inv.am, inv.ih);
        else vtd.invalidateDescriptor(2n | (3n << 4n) | (BigInt(did) << 16n), BigInt(addr) | (inv.ih ? 0x40n : 0n) | BigInt(inv.am));
        g.retire(di, start, start + size);
        return;
      }
      case 'dsi':
        vtd.invalidateIotlbDomain(did);
        g.retire(di, 0, Infinity);
        return;
      case 'global':
        vtd.invalidateIotlbGlobal();
        g.retire(undefined, 0, Infinity);
        return;
      case 'ctx':
        // Context-cache invalidation retires nothing of the IOTLB (software follows with an IOTLB one).
        // A domain-selective one drops the contexts cached with that domain: a device's older context naming it.
        if (inv.g === 0) {
          vtd.invalidateContextGlobal();
          for (const st of ctxStale) st.clear();
        } else if (inv.g === 1) {
          vtd.invalidateContextDomain(did);
          for (const st of ctxStale) st.delete(di);
        } else {
          const si = di === 0 ? 0 : 2;
          vtd.invalidateContextDevice(SIDS[si]);
          ctxStale[si]!.clear();
        }
        return;
    }
  };

  const allPages = Array.from({ length: PAGES }, (_, i) => i);
  const edited: [number, number, number][] = []; // [domain index, region, page]
  const expanded = ops.flatMap((o): Op[] =>
    o.t === 'scan'
      ? Array.from({ length: Math.min(o.n, PAGES - o.k) }, (_, i) => ({ t: 'probe' as const, s: o.s, r: o.r, k: o.k + i, off: 0, len: 64, write: o.write, via: 'range' as const }))
      : o.t === 'fill'
        ? Array.from({ length: PAGES }, (_, i) => ({ t: 'leaf' as const, d: o.d, r: o.r, k: i, gpa: (o.gpa + 2 * i) % 1024, perm: 3, inval: { t: 'none' as const } }))
        : [o],
  );
  for (const raw of expanded) {
    let o = raw;
    if (o.t === 'reprobe') {
      if (edited.length === 0) continue;
      const [ed, er, ek] = edited[Math.max(0, edited.length - 1 - o.j)]!;
      // Domain 1 has two source-ids; `other` picks the second.
      const s = ed === 0 ? (o.other ? 1 : 0) : 2;
      o = { t: 'probe', s, r: er, k: ek, off: o.off, len: o.len, write: o.write, via: o.via };
    }
    if (o.t === 'move') {
      if (domainOf[o.s] !== o.d) {
        ctxStale[o.s]!.add(domainOf[o.s]!);
        g.ram.writeU53(CTX + SIDS[o.s]! * 16 + 8, 2 + DIDS[o.d]! * 256);
        g.ram.writeU53(CTX + SIDS[o.s]! * 16, g.pml4[o.d]! + 1);
        domainOf[o.s] = o.d;
      }
      if (o.inval) {
        vtd.invalidateContextDevice(SIDS[o.s]!);
        ctxStale[o.s]!.clear();
      }
    } else if (o.t === 'leaf') {
      edited.push([o.d, o.r, o.k]);
      const pde = g.pdeAt(o.d, o.r);
      let e = g.ram.readU53(pde);
      if ((e & 3) === 0 || (e & PS) !== 0) {
        // Not a page table yet: give the region one (replacing a leaf or nothing needs no IH = 0).
        g.remember(o.d, o.r, allPages);
        e = g.alloc() + 3;
        g.ram.fill(e - 3, PAGE, 0);
        g.ram.writeU53(pde, e);
      }
      g.remember(o.d, o.r, [o.k]);
      g.ram.writeU53(e - (e % PAGE) + o.k * 8, o.gpa * PAGE + o.perm);
      invalidate(o.d, o.r, o.inval);
    } else if (o.t === 'pde') {
      edited.push([o.d, o.r, o.k]);
      const at = g.pdeAt(o.d, o.r);
      const old = g.ram.readU53(at);
      const wasTable = (old & 3) !== 0 && (old & PS) === 0;
      g.remember(o.d, o.r, allPages);
      let e = 0;
      if (o.kind === 'large') e = o.frame * TWO_M + PS + o.perm;
      else if (o.kind === 'table') {
        // A new page table: a copy of the old one (if any) with one leaf changed.
        const t = g.alloc();
        g.ram.fill(t, PAGE, 0);
        if (wasTable) for (let i = 0; i < PAGES; i++) g.ram.writeU53(t + i * 8, g.ram.readU53(old - (old % PAGE) + i * 8));
        g.ram.writeU53(t + o.k * 8, o.gpa * PAGE + 3);
        e = t + o.perm;
      }
      g.ram.writeU53(at, e);
      invalidate(o.d, o.r, wasTable ? o.strict : o.inval);
    } else if (o.t === 'inval') {
      invalidate(o.d, o.r, o.inval);
    } else if (o.t === 'probe') {
      const dma = dmas[o.s]!;
      const iova = o.r * TWO_M + o.k * PAGE + o.off;
      const access = o.write ? 'write' : 'read';
      let result: number | 'fault';
      const gen = dma.translationGeneration;
      if (o.via === 'unit') {
        const code = vtd.translate(SIDS[o.s]!, iova, access, out);
        result = code === 0 ? out.gpa : 'fault';
      } else {
        try {
          if (o.via === 'range') {
            result = dma.translateRange(iova, o.len, access);
            expect(result).toBeGreaterThanOrEqual(0); // one page: always one run
          } else {
            result = dma.tryView(iova, o.len, access)!.byteOffset;
          }
        } catch (e) {
          if (!(e instanceof DmaFault)) throw e;
          result = 'fault';
        }
      }
      expect(allowed(o.s, iova, o.write, result), `${o.via} ${access} of sid ${SIDS[o.s]} at 0x${iova.toString(16)} gave ${String(result)}`).toBe(true);
      if (o.via === 'range' && result !== 'fault') {
        carried.push({ s: o.s, iova, len: o.len, write: o.write, gpa: result, gen });
        if (carried.length > 24) carried.shift();
      }
    } else {
      // A popped chain re-checks the translations it carries (virtqueue chain.ts: stillValid).
      carried = carried.filter((c) => {
        if (!dmas[c.s]!.stillValid(c.iova, c.len, c.gen)) return false;
        expect(allowed(c.s, c.iova, c.write, c.gpa), `carried ${c.write ? 'write' : 'read'} of sid ${SIDS[c.s]} at 0x${c.iova.toString(16)} → 0x${c.gpa.toString(16)}`).toBe(true);
        return true;
      });
    }
  }
  for (const dma of dmas) {
    windowHits += dma.windowStats.hits;
    rereads += dma.windowStats.reread;
  }
}

describe('VT-d through dmaMemory never serves a translation the architecture forbids (property, naive walker model)', () => {
  for (const entries of [
    { iotlb: 64, pde: 256 },
    { iotlb: 1, pde: 1 },
    { iotlb: 0, pde: 0 },
    { iotlb: 512, pde: 0 },
  ]) {
    it(`random leaf and PDE edits, devices moved between domains, deferred or immediate invalidations (IH 0/1, context), probes and carried translations; IOTLB ${entries.iotlb}, PDE cache ${entries.pde}`, () => {
      const before = windowHits;
      const rereadBefore = rereads;
      fc.assert(
        fc.property(fc.array(op, { minLength: 1, maxLength: 120, size: 'max' }), (ops) => run(ops, entries)),
        { numRuns: 150 },
      );
      // The read-ahead window is exercised (~450-530 a property with the IOTLB's prefetch on; none without an IOTLB).
      if (entries.iotlb > 0) expect(windowHits - before).toBeGreaterThan(200);
      // So is reading it again through a cached PDE (~230 a property; never without a PDE cache).
      if (entries.iotlb > 0 && entries.pde > 0) expect(rereads - rereadBefore).toBeGreaterThan(80);
    });
  }

  it('example: an IH = 1 PSI keeps the PDE cache but still retires the page it names', () => {
    run(
      [
        { t: 'leaf', d: 0, r: 0, k: 1, gpa: 5, perm: 3, inval: { t: 'none' } },
        { t: 'probe', s: 0, r: 0, k: 2, off: 0, len: 4, write: false, via: 'range' },
        { t: 'leaf', d: 0, r: 0, k: 2, gpa: 6, perm: 1, inval: { t: 'psi', k: 2, am: 0, ih: true } },
        { t: 'probe', s: 1, r: 0, k: 2, off: 0, len: 4, write: true, via: 'view' },
        { t: 'carried' },
      ],
      { iotlb: 64, pde: 256 },
    );
  });
});
