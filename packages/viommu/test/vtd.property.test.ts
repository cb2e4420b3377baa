import { GuestMemory } from '@ioplane/guest-memory';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FAULT_REASONS, type TranslationOut, VtdRemapper } from '../src/index.js';

const PAGE = 4096;
const TWO_M = 0x20_0000;
const SID = 0x08;
const DID = 3;

/**
 * Builds 4-level second-level tables in guest memory the way a guest driver
 * would, and keeps a naive model next to them: 4 KiB leaves by IOVA page and
 * 2 MiB leaves by IOVA 2 MiB frame (in a separate part of the IOVA space, so
 * the two never share a page directory entry).
 */
class Tables {
  readonly ram = GuestMemory.create(8 << 20);
  private next = 0x10_0000;
  readonly pml4: number;
  readonly small = new Map<number, { gpa: number; perm: number }>();
  readonly large = new Map<number, { gpa: number; perm: number }>();

  constructor() {
    this.pml4 = this.alloc();
    this.ram.writeU64(0x1000, 0x2000n | 1n);
    this.ram.writeU64(0x2000 + SID * 16, BigInt(this.pml4) | 1n);
    this.ram.writeU64(0x2000 + SID * 16 + 8, 2n | (BigInt(DID) << 8n));
  }

  private alloc(): number {
    const a = this.next;
    this.next += PAGE;
    return a;
  }

  /** The table at `level` (1 = page table) holding `iova`, made on the way down. */
  private table(iova: number, level: number): number {
    let t = this.pml4;
    for (let l = 4; l > level; l--) {
      const at = t + (Math.floor(iova / 2 ** (12 + 9 * (l - 1))) % 512) * 8;
      let e = this.ram.readU53(at);
      if ((e & 3) === 0) {
        e = this.alloc() + 3;
        this.ram.writeU53(at, e);
      }
      t = e - (e % PAGE);
    }
    return t;
  }

  setSmall(page: number, gpaPage: number, perm: number): void {
    const iova = page * PAGE;
    this.ram.writeU53(this.table(iova, 1) + (page % 512) * 8, gpaPage * PAGE + perm);
    if (perm === 0) this.small.delete(page);
    else this.small.set(page, { gpa: gpaPage * PAGE, perm });
  }

  setLarge(frame: number, gpaFrame: number, perm: number): void {
    const iova = frame * TWO_M;
    this.ram.writeU53(this.table(iova, 2) + (frame % 512) * 8, gpaFrame * TWO_M + 0x80 + perm);
    if (perm === 0) this.large.delete(frame);
    else this.large.set(frame, { gpa: gpaFrame * TWO_M, perm });
  }

  expect(addr: number, need: number): number | 'fault' {
    const s = this.small.get(Math.floor(addr / PAGE));
    if (s !== undefined) return (s.perm & need) !== 0 ? s.gpa + (addr % PAGE) : 'fault';
    const l = this.large.get(Math.floor(addr / TWO_M));
    if (l !== undefined) return (l.perm & need) !== 0 ? l.gpa + (addr % TWO_M) : 'fault';
    return 'fault';
  }
}

const LARGE_BASE = 512; // 2 MiB frames from 1 GiB up

type Op =
  | { t: 'small'; page: number; gpa: number; perm: number; inval: 'page' | 'domain' | 'global'; am: number }
  | { t: 'large'; frame: number; gpa: number; perm: number; inval: 'page' | 'domain' | 'global'; am: number }
  | { t: 'probe'; large: boolean; n: number; off: number; write: boolean }
  /** Probe inside the k-th edited leaf: where a missed invalidation would show. */
  | { t: 'reprobe'; k: number; off: number; write: boolean }
  /** Edit the k-th edited leaf again: its old translation may be cached by a probe since. */
  | { t: 'reedit'; k: number; gpa: number; perm: number; inval: 'page' | 'domain' | 'global'; am: number };

// Mostly page-selective: a domain or global flush in between would hide a missed page invalidation.
const inval = fc.oneof(
  { weight: 8, arbitrary: fc.constant('page' as const) },
  { weight: 1, arbitrary: fc.constant('domain' as const) },
  { weight: 1, arbitrary: fc.constant('global' as const) },
);
const op: fc.Arbitrary<Op> = fc.oneof(
  // A page-selective invalidation of any aligned block (2^am pages) holding the edited leaf: the unit
  // must drop every page of the block, not just its first.
  fc.record({ t: fc.constant('small' as const), page: fc.nat(80), gpa: fc.nat(2047), perm: fc.nat(3), inval, am: fc.nat(10) }),
  fc.record({ t: fc.constant('large' as const), frame: fc.nat(3), gpa: fc.nat(4000), perm: fc.nat(3), inval, am: fc.integer({ min: 9, max: 10 }) }),
  fc.record({ t: fc.constant('probe' as const), large: fc.boolean(), n: fc.nat(1100), off: fc.nat(TWO_M - 1), write: fc.boolean() }),
  fc.record({ t: fc.constant('reprobe' as const), k: fc.nat(), off: fc.nat(TWO_M - 1), write: fc.boolean() }),
  fc.record({ t: fc.constant('reprobe' as const), k: fc.nat(), off: fc.nat(TWO_M - 1), write: fc.boolean() }),
  // am 0-3 mostly: the edited page is then often the first of its block, where an invalidation
  // that skips the block's first page would leave it stale.
  fc.record({ t: fc.constant('reedit' as const), k: fc.nat(), gpa: fc.nat(2047), perm: fc.nat(3), inval, am: fc.oneof(fc.nat(3), fc.nat(10)) }),
);

describe('VT-d walker agrees with a naive page map after each invalidation (property)', () => {
  for (const entries of [0, 1, 64]) {
    it(`random 4 KiB / 2 MiB leaf edits, each followed by its invalidation, IOTLB of ${entries}`, () => {
      let reedits = 0;
      fc.assert(
        fc.property(fc.array(op, { minLength: 1, maxLength: 80, size: 'max' }), (ops) => {
          const tb = new Tables();
          const vtd = new VtdRemapper({ memory: tb.ram, iotlbEntries: entries });
          vtd.setRootTable(0x1000);
          const out: TranslationOut = { gpa: 0, start: 0, end: 0 };
          const edited: [number, number][] = []; // [iova, size]
          for (const raw of ops) {
            let o = raw;
            if (o.t === 'reprobe') {
              if (edited.length === 0) continue;
              const [base, size] = edited[o.k % edited.length]!;
              const addr = base + (o.off % size);
              o = size === PAGE ? { t: 'probe', large: false, n: addr / PAGE, off: o.off % PAGE, write: o.write } : { t: 'probe', large: true, n: addr / TWO_M - LARGE_BASE, off: o.off, write: o.write };
            }
            if (o.t === 'reedit') {
              if (edited.length === 0) continue;
              const [base, size] = edited[o.k % edited.length]!;
              o = size === PAGE
                ? { t: 'small', page: base / PAGE, gpa: o.gpa, perm: o.perm, inval: o.inval, am: o.am }
                : { t: 'large', frame: base / TWO_M - LARGE_BASE, gpa: o.gpa % 4001, perm: o.perm, inval: o.inval, am: Math.max(9, o.am) };
              reedits++;
            }
            if (o.t === 'small' || o.t === 'large') {
              const iova = o.t === 'small' ? o.page * PAGE : (LARGE_BASE + o.frame) * TWO_M;
              edited.push([iova, o.t === 'small' ? PAGE : TWO_M]);
              if (o.t === 'small') tb.setSmall(o.page, o.gpa, o.perm);
              else tb.setLarge(LARGE_BASE + o.frame, o.gpa, o.perm);
              if (o.inval === 'page') vtd.invalidateIotlbPages(DID, iova, o.am);
              else if (o.inval === 'domain') vtd.invalidateIotlbDomain(DID);
              else vtd.invalidateIotlbGlobal();
            } else if (o.t === 'probe') {
              const addr = o.large ? (LARGE_BASE + (o.n % 9)) * TWO_M + o.off : o.n * PAGE + (o.off % PAGE);
              const need = o.write ? 2 : 1;
              const code = vtd.translate(SID, addr, o.write ? 'write' : 'read', out);
              const want = tb.expect(addr, need);
              if (want === 'fault') expect(FAULT_REASONS[code]).toBe(o.write ? 'vtd-write' : 'vtd-read');
              else {
                expect(code).toBe(0);
                expect(out.gpa).toBe(want);
                expect(out.end).toBeGreaterThan(addr);
              }
            }
          }
        }),
        { numRuns: 200 },
      );
      // 1,045-1,182 a run over nine runs.
      expect(reedits).toBeGreaterThan(500);
    });
  }
});
