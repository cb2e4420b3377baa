import { describe, expect, it } from 'vitest';
import { Mapping, MappingTable, U64_MAX } from '../src/index.js';

const m = (s: bigint, e: bigint, p = 0n) => new Mapping(s, e, p, 3);

describe('MappingTable', () => {
  it('keeps mappings sorted, refuses overlaps and finds by bigint and by number', () => {
    const t = new MappingTable(10);
    expect(t.insert(m(0x3000n, 0x3fffn))).toBeUndefined();
    expect(t.insert(m(0x1000n, 0x1fffn))).toBeUndefined();
    expect(t.insert(m(U64_MAX - 0xfffn, U64_MAX))).toBeUndefined();
    const clash = t.insert(m(0x1800n, 0x37ffn));
    expect(clash?.virtStart).toBe(0x1000n);
    expect(t.all().map((x) => x.virtStart)).toEqual([0x1000n, 0x3000n, U64_MAX - 0xfffn]);
    expect(t.find(0x1fffn)?.virtStart).toBe(0x1000n);
    expect(t.find(0x2000n)).toBeUndefined();
    expect(t.find(U64_MAX)?.virtEnd).toBe(U64_MAX);
    expect(t.findNum(0x3abc)?.virtStart).toBe(0x3000n);
    expect(t.findNum(0x2000)).toBeUndefined();
    expect(t.findNum(0)).toBeUndefined();
    expect(t.findNum(2 ** 53 - 1)).toBeUndefined(); // the top mapping rounds above every number address
    expect(t.firstOverlap(0x2000n, 0x2fffn)).toBeUndefined();
    expect(t.firstOverlap(0x2000n, 0x3000n)?.virtStart).toBe(0x3000n);
  });

  it('unmaps whole mappings only, reporting the one a range would split', () => {
    const t = new MappingTable(10);
    t.insert(m(0x1000n, 0x1fffn));
    t.insert(m(0x2000n, 0x3fffn));
    const r = t.unmap(0x1000n, 0x2fffn);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.splits.virtStart).toBe(0x2000n);
    expect(t.size).toBe(2);
    const ok = t.unmap(0n, U64_MAX);
    expect(ok.ok && ok.removed.length).toBe(2);
    expect(t.size).toBe(0);
    t.insert(m(0x5000n, 0x5fffn));
    expect(t.clear().length).toBe(1);
  });

  it('marks a physical start past 2^53 as unreachable by number', () => {
    expect(Number.isNaN(m(0n, 0xfffn, 1n << 60n).physNum)).toBe(true);
    expect(m(0n, 0xfffn, 0x5000n).physNum).toBe(0x5000);
  });
});
