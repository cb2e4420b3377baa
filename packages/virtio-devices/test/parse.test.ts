import { GuestMemory } from '@ioplane/guest-memory';
import { DescriptorChain } from '@ioplane/virtqueue';
import { describe, expect, it } from 'vitest';
import {
  BlkRequest,
  type BlkLimits,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  parseBlkRequest,
} from '../src/index.js';

const mem = GuestMemory.create(1 << 20);
const HDR = 0x1000;
const DATA = 0x10000;
const STATUS = 0x2000;
const TABLE = 0x3000;

const limits = (over: Partial<BlkLimits> = {}): BlkLimits => ({
  capacitySectors: 2048,
  logicalBlockSize: 512,
  readOnly: false,
  flush: true,
  discard: true,
  writeZeroes: true,
  segMax: 8,
  maxDiscardSectors: 1024,
  maxDiscardSeg: 4,
  maxWriteZeroesSectors: 1024,
  maxWriteZeroesSeg: 4,
  writeZeroesMayUnmap: true,
  ...over,
});

function header(type: number, sector: number | bigint): void {
  mem.writeU32(HDR, type);
  mem.writeU32(HDR + 4, 0);
  mem.writeU64(HDR + 8, BigInt(sector));
}

/** A chain: header (16 readable), then `mid` segments, then a 1-byte writable status. */
function chain(type: number, sector: number | bigint, mid: [number, number, boolean][] = [], status = true, hdrLen = 16): DescriptorChain {
  header(type, sector);
  const c = new DescriptorChain();
  if (hdrLen > 0) c.push(HDR, hdrLen, false);
  for (const [a, l, w] of mid) c.push(a, l, w);
  if (status) c.push(STATUS, 1, true);
  return c;
}

function parse(c: DescriptorChain, l = limits()): BlkRequest {
  return parseBlkRequest(c, mem, l, new BlkRequest(8));
}

function expectInvalid(r: BlkRequest, status: number, error: string): void {
  expect({ kind: r.kind, status: r.status, error: r.error }).toEqual({ kind: 'invalid', status, error });
  expect(r.segments).toHaveLength(0);
}

function range(i: number, sector: number | bigint, count: number, flags: number): void {
  mem.writeU64(TABLE + i * 16, BigInt(sector));
  mem.writeU32(TABLE + i * 16 + 8, count);
  mem.writeU32(TABLE + i * 16 + 12, flags);
}

describe('parseBlkRequest: well-formed requests (§5.2.6)', () => {
  it('a read: data in the writable part, zero-copy views of guest memory', () => {
    const r = parse(chain(VIRTIO_BLK_T_IN, 10, [[DATA, 1024, true], [DATA + 4096, 512, true]]));
    expect(r.kind).toBe('read');
    expect(r.offset).toBe(10 * 512);
    expect(r.length).toBe(1536);
    expect(r.statusAddr).toBe(STATUS);
    expect(r.segments.map((s) => s.byteLength)).toEqual([1024, 512]);
    r.segments[0]![0] = 0x5a;
    expect(mem.readU8(DATA)).toBe(0x5a);
  });

  it('a write whose header, data and status share descriptors (no framing assumed, §2.6.4)', () => {
    header(VIRTIO_BLK_T_OUT, 4);
    // Header bytes 0..8 in one descriptor, 8..16 + data in the next; status at the end of a writable one.
    mem.writeFrom(DATA - 8, mem.view(HDR + 8, 8, 'read').slice());
    const c = new DescriptorChain();
    c.push(HDR, 8, false).push(DATA - 8, 8 + 512, false).push(STATUS - 3, 4, true);
    const r = parse(c);
    // The writable part holds 3 bytes before the status byte: data in the wrong direction for a write.
    expectInvalid(r, VIRTIO_BLK_S_IOERR, 'data-wrong-direction');
    const c2 = new DescriptorChain();
    c2.push(HDR, 8, false).push(DATA - 8, 8 + 512, false).push(STATUS, 1, true);
    const w = parse(c2);
    expect(w.kind).toBe('write');
    expect(w.offset).toBe(2048);
    expect(w.segments.map((s) => s.byteLength)).toEqual([512]);
  });

  it('flush, get-id, discard and write-zeroes', () => {
    expect(parse(chain(VIRTIO_BLK_T_FLUSH, 0)).kind).toBe('flush');
    const id = parse(chain(VIRTIO_BLK_T_GET_ID, 0, [[DATA, 20, true]]));
    expect([id.kind, id.length]).toEqual(['get-id', 20]);
    range(0, 8, 16, 0);
    range(1, 100, 8, 0);
    const d = parse(chain(VIRTIO_BLK_T_DISCARD, 0, [[TABLE, 32, false]]));
    expect(d.kind).toBe('discard');
    expect([d.rangeCount, d.rangeOffset[1], d.rangeLength[1]]).toEqual([2, 51200, 4096]);
    range(0, 8, 16, 1);
    const z = parse(chain(VIRTIO_BLK_T_WRITE_ZEROES, 0, [[TABLE, 16, false]]));
    expect([z.kind, z.rangeUnmap[0]]).toEqual(['write-zeroes', 1]);
    const z2 = parse(chain(VIRTIO_BLK_T_WRITE_ZEROES, 0, [[TABLE, 16, false]]), limits({ writeZeroesMayUnmap: false }));
    expect(z2.rangeUnmap[0]).toBe(0);
  });

  it('a request that ends exactly at capacity is in range', () => {
    expect(parse(chain(VIRTIO_BLK_T_IN, 2047, [[DATA, 512, true]])).kind).toBe('read');
    expect(parse(chain(VIRTIO_BLK_T_IN, 2048, [])).kind).toBe('read'); // empty read at the end
  });
});

describe('parseBlkRequest: every malformed request is answered, none reaches the back-end', () => {
  it('no writable status byte → nothing can be answered (status -1)', () => {
    const r = parse(chain(VIRTIO_BLK_T_IN, 0, [[DATA, 512, false]], false));
    expectInvalid(r, -1, 'no-status-byte');
    const z = new DescriptorChain();
    z.push(HDR, 16, false).push(STATUS, 0, true);
    expectInvalid(parse(z), -1, 'no-status-byte');
  });

  it('a header shorter than 16 bytes → IOERR', () => {
    expectInvalid(parse(chain(VIRTIO_BLK_T_IN, 0, [], true, 15)), VIRTIO_BLK_S_IOERR, 'header-too-short');
    expectInvalid(parse(chain(VIRTIO_BLK_T_IN, 0, [], true, 0)), VIRTIO_BLK_S_IOERR, 'header-too-short');
  });

  it('data in the wrong direction → IOERR', () => {
    expectInvalid(parse(chain(VIRTIO_BLK_T_IN, 0, [[DATA, 512, false]])), VIRTIO_BLK_S_IOERR, 'data-wrong-direction');
    expectInvalid(parse(chain(VIRTIO_BLK_T_OUT, 0, [[DATA, 512, true]])), VIRTIO_BLK_S_IOERR, 'data-wrong-direction');
    expectInvalid(parse(chain(VIRTIO_BLK_T_FLUSH, 0, [[DATA, 512, true]])), VIRTIO_BLK_S_IOERR, 'data-wrong-direction');
    expectInvalid(parse(chain(VIRTIO_BLK_T_GET_ID, 0, [[DATA, 512, false], [DATA + 512, 20, true]])), VIRTIO_BLK_S_IOERR, 'data-wrong-direction');
    expectInvalid(parse(chain(VIRTIO_BLK_T_DISCARD, 0, [[DATA, 512, true]])), VIRTIO_BLK_S_IOERR, 'data-wrong-direction');
  });

  it('a length that is not a multiple of 512 → IOERR', () => {
    expectInvalid(parse(chain(VIRTIO_BLK_T_IN, 0, [[DATA, 511, true]])), VIRTIO_BLK_S_IOERR, 'unaligned-length');
    expectInvalid(parse(chain(VIRTIO_BLK_T_OUT, 0, [[DATA, 1000, false]])), VIRTIO_BLK_S_IOERR, 'unaligned-length');
  });

  it('sector arithmetic past capacity or overflowing → IOERR', () => {
    expectInvalid(parse(chain(VIRTIO_BLK_T_IN, 2048, [[DATA, 512, true]])), VIRTIO_BLK_S_IOERR, 'out-of-range');
    expectInvalid(parse(chain(VIRTIO_BLK_T_IN, 2047, [[DATA, 1024, true]])), VIRTIO_BLK_S_IOERR, 'out-of-range');
    expectInvalid(parse(chain(VIRTIO_BLK_T_OUT, 2 ** 40, [[DATA, 512, false]])), VIRTIO_BLK_S_IOERR, 'out-of-range');
    expectInvalid(parse(chain(VIRTIO_BLK_T_IN, 0xffff_ffff_ffff_ffffn, [[DATA, 512, true]])), VIRTIO_BLK_S_IOERR, 'sector-overflow');
    expectInvalid(parse(chain(VIRTIO_BLK_T_IN, 1n << 44n, [[DATA, 512, true]])), VIRTIO_BLK_S_IOERR, 'sector-overflow');
    range(0, 0xffff_ffff_ffff_fff0n, 32, 0);
    expectInvalid(parse(chain(VIRTIO_BLK_T_DISCARD, 0, [[TABLE, 16, false]])), VIRTIO_BLK_S_IOERR, 'sector-overflow');
    range(0, 2040, 16, 0);
    expectInvalid(parse(chain(VIRTIO_BLK_T_WRITE_ZEROES, 0, [[TABLE, 16, false]])), VIRTIO_BLK_S_IOERR, 'out-of-range');
  });

  it('offsets not aligned to the back-end block size → IOERR', () => {
    expectInvalid(parse(chain(VIRTIO_BLK_T_IN, 1, [[DATA, 4096, true]]), limits({ logicalBlockSize: 4096 })), VIRTIO_BLK_S_IOERR, 'unaligned-sector');
    expectInvalid(parse(chain(VIRTIO_BLK_T_IN, 8, [[DATA, 512, true]]), limits({ logicalBlockSize: 4096 })), VIRTIO_BLK_S_IOERR, 'unaligned-sector');
  });

  it('an unknown type, GET_LIFETIME, SECURE_ERASE → UNSUPP', () => {
    for (const t of [2, 3, 10, 14, 0xffff_ffff]) expectInvalid(parse(chain(t, 0, [[DATA, 512, true]])), VIRTIO_BLK_S_UNSUPP, 'unknown-type');
  });

  it('flush, discard, write-zeroes not negotiated → UNSUPP', () => {
    expectInvalid(parse(chain(VIRTIO_BLK_T_FLUSH, 0), limits({ flush: false })), VIRTIO_BLK_S_UNSUPP, 'not-negotiated');
    range(0, 0, 8, 0);
    expectInvalid(parse(chain(VIRTIO_BLK_T_DISCARD, 0, [[TABLE, 16, false]]), limits({ discard: false })), VIRTIO_BLK_S_UNSUPP, 'not-negotiated');
    expectInvalid(parse(chain(VIRTIO_BLK_T_WRITE_ZEROES, 0, [[TABLE, 16, false]]), limits({ writeZeroes: false })), VIRTIO_BLK_S_UNSUPP, 'not-negotiated');
  });

  it('writes, discards and write-zeroes on a read-only device → IOERR', () => {
    const ro = limits({ readOnly: true });
    expectInvalid(parse(chain(VIRTIO_BLK_T_OUT, 0, [[DATA, 512, false]]), ro), VIRTIO_BLK_S_IOERR, 'read-only');
    range(0, 0, 8, 0);
    expectInvalid(parse(chain(VIRTIO_BLK_T_DISCARD, 0, [[TABLE, 16, false]]), ro), VIRTIO_BLK_S_IOERR, 'read-only');
    expect(parse(chain(VIRTIO_BLK_T_IN, 0, [[DATA, 512, true]]), ro).kind).toBe('read');
  });

  it('more data segments than seg_max → IOERR', () => {
    const segs: [number, number, boolean][] = Array.from({ length: 9 }, (_, i) => [DATA + i * 512, 512, true]);
    expectInvalid(parse(chain(VIRTIO_BLK_T_IN, 0, segs)), VIRTIO_BLK_S_IOERR, 'too-many-segments');
    expect(parse(chain(VIRTIO_BLK_T_IN, 0, segs.slice(0, 8))).kind).toBe('read');
  });

  it('discard / write-zeroes tables: shape, segment count, sector count, flags', () => {
    range(0, 0, 8, 0);
    expectInvalid(parse(chain(VIRTIO_BLK_T_DISCARD, 0, [])), VIRTIO_BLK_S_IOERR, 'bad-segment-table');
    expectInvalid(parse(chain(VIRTIO_BLK_T_DISCARD, 0, [[TABLE, 24, false]])), VIRTIO_BLK_S_IOERR, 'bad-segment-table');
    for (let i = 0; i < 5; i++) range(i, i * 8, 8, 0);
    expectInvalid(parse(chain(VIRTIO_BLK_T_DISCARD, 0, [[TABLE, 80, false]])), VIRTIO_BLK_S_IOERR, 'too-many-segments');
    range(0, 0, 1025, 0);
    expectInvalid(parse(chain(VIRTIO_BLK_T_WRITE_ZEROES, 0, [[TABLE, 16, false]])), VIRTIO_BLK_S_IOERR, 'too-many-sectors');
    range(0, 0, 8, 2);
    expectInvalid(parse(chain(VIRTIO_BLK_T_WRITE_ZEROES, 0, [[TABLE, 16, false]])), VIRTIO_BLK_S_UNSUPP, 'unknown-flags');
    range(0, 0, 8, 1);
    expectInvalid(parse(chain(VIRTIO_BLK_T_DISCARD, 0, [[TABLE, 16, false]])), VIRTIO_BLK_S_UNSUPP, 'discard-unmap');
  });

  it('a pooled request object is reset between parses', () => {
    const out = new BlkRequest(2);
    parseBlkRequest(chain(VIRTIO_BLK_T_IN, 0, [[DATA, 512, true]]), mem, limits(), out);
    expect(out.segments).toHaveLength(1);
    parseBlkRequest(chain(99, 0, [[DATA, 512, true]]), mem, limits(), out);
    expect(out.segments).toHaveLength(0);
    expect(out.error).toBe('unknown-type');
  });
});

describe('parseBlkRequest: guest memory that goes away (a vIOMMU unmap between pop and parse)', () => {
  it('answers IOERR (memory) and hands nothing on', () => {
    const c = chain(VIRTIO_BLK_T_IN, 0, [[DATA, 512, true]]);
    const gone = new Proxy(mem, {
      get(target, prop, receiver) {
        if (prop === 'slices') return () => {
          throw new Error('unmapped');
        };
        const v: unknown = Reflect.get(target, prop, receiver);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const r = parseBlkRequest(c, gone, limits(), new BlkRequest());
    expectInvalid(r, VIRTIO_BLK_S_IOERR, 'memory');
  });
});
