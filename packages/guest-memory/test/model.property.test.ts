import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { GuestMemory, GuestMemoryError } from '../src/index.js';

/**
 * The reference model: a map from address to byte, holding only mapped
 * addresses. An access succeeds iff every byte it touches is in the map.
 */
class ModelMemory {
  readonly bytes = new Map<number, number>();
  constructor(regions: { gpa: number; size: number }[]) {
    for (const r of regions) for (let i = 0; i < r.size; i++) this.bytes.set(r.gpa + i, 0);
  }
  mapped(addr: number, len: number): boolean {
    for (let i = 0; i < len; i++) if (!this.bytes.has(addr + i)) return false;
    return true;
  }
  write(addr: number, data: number[]): boolean {
    if (!this.mapped(addr, data.length)) return false;
    data.forEach((b, i) => this.bytes.set(addr + i, b));
    return true;
  }
  read(addr: number, len: number): number[] | undefined {
    if (!this.mapped(addr, len)) return undefined;
    return Array.from({ length: len }, (_, i) => this.bytes.get(addr + i)!);
  }
}

const layout = fc
  .array(fc.record({ gap: fc.integer({ min: 0, max: 24 }), size: fc.integer({ min: 1, max: 40 }) }), { minLength: 1, maxLength: 4 })
  .map((parts) => {
    let at = 0;
    return parts.map(({ gap, size }) => {
      const gpa = at + gap;
      at = gpa + size;
      return { gpa, size };
    });
  });

type Op =
  | { t: 'write'; addr: number; data: number[] }
  | { t: 'read'; addr: number; len: number }
  | { t: 'u16'; addr: number; value: number }
  | { t: 'u32'; addr: number; value: number }
  | { t: 'u64'; addr: number; value: bigint }
  | { t: 'slices'; addr: number; len: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ t: fc.constant('write' as const), addr: fc.nat(200), data: fc.array(fc.nat(255), { maxLength: 24 }) }),
  fc.record({ t: fc.constant('read' as const), addr: fc.nat(200), len: fc.nat(24) }),
  fc.record({ t: fc.constant('u16' as const), addr: fc.nat(200), value: fc.nat(0xffff) }),
  fc.record({ t: fc.constant('u32' as const), addr: fc.nat(200), value: fc.nat(0xffffffff) }),
  fc.record({ t: fc.constant('u64' as const), addr: fc.nat(200), value: fc.bigInt(0n, (1n << 64n) - 1n) }),
  fc.record({ t: fc.constant('slices' as const), addr: fc.nat(200), len: fc.nat(40) }),
);

function le(value: bigint, n: number): number[] {
  return Array.from({ length: n }, (_, i) => Number((value >> BigInt(8 * i)) & 0xffn));
}

function attempt<T>(fn: () => T): T | 'error' {
  try {
    return fn();
  } catch (e) {
    if (e instanceof GuestMemoryError) return 'error';
    throw e;
  }
}

describe('GuestMemory against a byte-map model', () => {
  it('agrees on every access, success or failure, and failures change nothing', () => {
    fc.assert(
      fc.property(layout, fc.array(op, { maxLength: 40 }), (regions, ops) => {
        const m = new GuestMemory(regions);
        const model = new ModelMemory(regions);
        for (const o of ops) {
          switch (o.t) {
            case 'write': {
              const ok = model.write(o.addr, o.data);
              const r = attempt(() => m.writeFrom(o.addr, Uint8Array.from(o.data)));
              expect(r !== 'error').toBe(ok);
              break;
            }
            case 'read': {
              const want = model.read(o.addr, o.len);
              const got = attempt(() => {
                const d = new Uint8Array(o.len);
                m.readInto(o.addr, d);
                return [...d];
              });
              expect(got).toEqual(want ?? 'error');
              break;
            }
            case 'u16':
            case 'u32':
            case 'u64': {
              const n = o.t === 'u16' ? 2 : o.t === 'u32' ? 4 : 8;
              const ok = model.write(o.addr, le(BigInt(o.value), n));
              const w = attempt(() => {
                if (o.t === 'u16') m.writeU16(o.addr, o.value);
                else if (o.t === 'u32') m.writeU32(o.addr, o.value);
                else m.writeU64(o.addr, o.value);
              });
              expect(w !== 'error').toBe(ok);
              const back = attempt(() => (o.t === 'u16' ? BigInt(m.readU16(o.addr)) : o.t === 'u32' ? BigInt(m.readU32(o.addr)) : m.readU64(o.addr)));
              expect(back).toEqual(ok ? BigInt(o.value) : 'error');
              break;
            }
            case 'slices': {
              const ok = model.mapped(o.addr, o.len);
              const s = attempt(() => m.slices(o.addr, o.len, 'read'));
              if (!ok) expect(s).toBe('error');
              else {
                expect(s).not.toBe('error');
                const flat = (s as Uint8Array[]).flatMap((x) => [...x]);
                expect(flat).toEqual(model.read(o.addr, o.len));
              }
              break;
            }
          }
        }
      }),
      { numRuns: 300 },
    );
  });
});
