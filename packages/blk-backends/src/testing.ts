/**
 * `testBlockBackend()`: the conformance suite every back-end and every layer
 * in front of one runs (STYLE.md 15), framework-agnostic: pass the `describe`
 * and `it` of vitest, node:test or mocha.
 */
import type { BlockBackend, Extent } from './backend.js';
import { BlockError } from './errors.js';

export interface TestApi {
  describe(name: string, fn: () => void): unknown;
  it(name: string, fn: () => Promise<void>): unknown;
}

export interface BackendFactory {
  /** A fresh, writable back-end of `size` bytes that reads as zeros. */
  create(size: number): Promise<BlockBackend>;
  /** Close `backend` and open the same storage again (read-only if asked); for persistence tests. */
  reopen?(backend: BlockBackend, readOnly: boolean): Promise<BlockBackend>;
  /** Called after each test, even when it failed. */
  cleanup?(): Promise<void>;
}

function fail(msg: string): never {
  throw new Error(`testBlockBackend: ${msg}`);
}

function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  let x = seed * 2654435761 + 1;
  for (let i = 0; i < len; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

function assertEqual(a: Uint8Array, b: Uint8Array, what: string): void {
  if (a.byteLength !== b.byteLength) fail(`${what}: length ${a.byteLength} != ${b.byteLength}`);
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) fail(`${what}: byte ${i} is ${a[i]}, expected ${b[i]}`);
}

function assertZero(a: Uint8Array, what: string): void {
  const i = a.findIndex((v) => v !== 0);
  if (i >= 0) fail(`${what}: byte ${i} is ${a[i]}, expected 0`);
}

async function expectBlockError(p: Promise<unknown>, kind: string, what: string): Promise<void> {
  try {
    await p;
  } catch (e) {
    if (!(e instanceof BlockError)) fail(`${what}: rejected with ${String(e)}, not a BlockError`);
    if (e.kind !== kind) fail(`${what}: BlockError kind '${e.kind}', expected '${kind}' (${e.message})`);
    return;
  }
  fail(`${what}: resolved, expected a '${kind}' BlockError`);
}

async function readAll(b: BlockBackend, off: number, len: number): Promise<Uint8Array> {
  const buf = new Uint8Array(len);
  await b.read(off, [buf]);
  return buf;
}

function checkExtents(ext: Extent[], off: number, len: number, what: string): void {
  let pos = off;
  for (const e of ext) {
    if (e.offset !== pos) fail(`${what}: extent at ${e.offset}, expected ${pos} (extents must be sorted and adjacent)`);
    if (e.length <= 0) fail(`${what}: empty extent at ${e.offset}`);
    pos += e.length;
  }
  if (pos !== off + len) fail(`${what}: extents end at ${pos}, expected ${off + len}`);
}

const SIZE = 4 * 1024 * 1024;

/** Register the conformance tests for one kind of back-end. */
export function testBlockBackend(api: TestApi, name: string, factory: BackendFactory): void {
  api.describe(`BlockBackend conformance: ${name}`, () => {
    const withBackend = (title: string, fn: (b: BlockBackend) => Promise<BlockBackend | void>): unknown =>
      api.it(title, async () => {
        let b = await factory.create(SIZE);
        try {
          const r = await fn(b);
          if (r) b = r;
        } finally {
          await b.close().catch(() => undefined);
          await factory.cleanup?.();
        }
      });

    withBackend('has a sane geometry', (b) => {
      if (b.size !== SIZE) fail(`size ${b.size}, expected ${SIZE}`);
      const bs = b.logicalBlockSize;
      if (bs < 512 || (bs & (bs - 1)) !== 0) fail(`logical block size ${bs} is not a power of two ≥ 512`);
      if (b.physicalBlockSize < bs || b.physicalBlockSize % bs !== 0) fail(`physical block size ${b.physicalBlockSize} is not a multiple of ${bs}`);
      if (b.size % bs !== 0) fail('size is not a multiple of the logical block size');
      if (b.readOnly) fail('a fresh back-end is read-only');
      return Promise.resolve();
    });

    withBackend('reads zeros when fresh, and a zero-length read succeeds', async (b) => {
      assertZero(await readAll(b, 0, 65536), 'fresh device');
      assertZero(await readAll(b, SIZE - 65536, 65536), 'fresh device tail');
      await b.read(0, []);
      await b.read(SIZE, [new Uint8Array(0)]);
    });

    withBackend('zeroes never-written bytes in segments over shared memory, around written ones', async (b) => {
      // Guest RAM is a SharedArrayBuffer when the guest runs on another thread: a back-end that
      // zero-fills holes must do it there too, every byte, whatever the segment boundaries.
      const data = pattern(8192, 9);
      await b.write(65536 + 4096, [data]);
      const len = 3 * 65536;
      const ram = new Uint8Array(new SharedArrayBuffer(len + 200)).fill(0xa5);
      const segs: Uint8Array[] = [];
      let last = 100;
      for (const c of [100 + 1, 100 + 300, 100 + 4096 + 7, 100 + 65536, 100 + 65536 + 8000, 100 + len]) {
        segs.push(ram.subarray(last, c));
        last = c;
      }
      await b.read(65536, segs);
      const want = new Uint8Array(len);
      want.set(data, 4096);
      assertEqual(ram.slice(100, 100 + len), want, 'read of written and never-written bytes into shared segments');
      if (ram[99] !== 0xa5 || ram[100 + len] !== 0xa5) fail('a read into shared segments wrote outside them');
    });

    withBackend('round-trips vectored writes with odd segment boundaries', async (b) => {
      const data = pattern(3 * 65536 + 4096, 1);
      const cuts = [1, 511, 513, 4096, 65535, 70000, 3 * 65536 + 4096];
      const segs: Uint8Array[] = [];
      let last = 0;
      for (const c of cuts) {
        segs.push(data.subarray(last, c));
        last = c;
      }
      const off = 65536 - 1024;
      await b.write(off, segs);
      assertEqual(await readAll(b, off, data.byteLength), data, 'read after vectored write');
      const out = new Uint8Array(data.byteLength);
      const rsegs: Uint8Array[] = [];
      last = 0;
      for (const c of [7, 100, 1000, 77777, data.byteLength]) {
        rsegs.push(out.subarray(last, c));
        last = c;
      }
      await b.read(off, rsegs);
      assertEqual(out, data, 'vectored read');
      assertZero(await readAll(b, off - 1024, 1024), 'bytes before the write');
      assertZero(await readAll(b, off + data.byteLength, 1024), 'bytes after the write');
    });

    withBackend('writes and reads the last block and refuses one past it', async (b) => {
      const bs = b.logicalBlockSize;
      const d = pattern(bs, 2);
      await b.write(SIZE - bs, [d]);
      assertEqual(await readAll(b, SIZE - bs, bs), d, 'last block');
      await expectBlockError(b.write(SIZE, [d]), 'out-of-range', 'write past the end');
      await expectBlockError(b.read(SIZE - bs, [new Uint8Array(2 * bs)]), 'out-of-range', 'read across the end');
      await expectBlockError(b.discard(SIZE - bs, 2 * bs), 'out-of-range', 'discard across the end');
      await expectBlockError(b.writeZeroes(SIZE, bs, false), 'out-of-range', 'write-zeroes past the end');
      await expectBlockError(b.blockStatus(SIZE - bs, 2 * bs), 'out-of-range', 'block-status across the end');
      assertEqual(await readAll(b, SIZE - bs, bs), d, 'last block after refused requests');
    });

    withBackend('refuses unaligned and invalid requests before any I/O', async (b) => {
      const bs = b.logicalBlockSize;
      const d = pattern(bs, 3);
      await b.write(0, [d]);
      await expectBlockError(b.write(1, [d]), 'unaligned', 'unaligned write offset');
      await expectBlockError(b.write(0, [new Uint8Array(bs + 1).fill(9)]), 'unaligned', 'unaligned write length');
      await expectBlockError(b.read(bs / 2, [new Uint8Array(bs)]), 'unaligned', 'unaligned read offset');
      await expectBlockError(b.discard(0, 100), 'unaligned', 'unaligned discard');
      await expectBlockError(b.writeZeroes(7, bs, true), 'unaligned', 'unaligned write-zeroes');
      await expectBlockError(b.write(-bs, [d]), 'invalid-argument', 'negative offset');
      await expectBlockError(b.read(0.5, [d]), 'invalid-argument', 'fractional offset');
      await expectBlockError(b.write(2 ** 60, [d]), 'invalid-argument', 'offset past 2^53');
      assertEqual(await readAll(b, 0, bs), d, 'first block after refused requests');
    });

    withBackend('keeps many requests in flight and completes them all', async (b) => {
      const n = 64;
      const bs = 4096;
      const writes: Promise<void>[] = [];
      for (let i = 0; i < n; i++) writes.push(b.write(((i * 37) % n) * 3 * bs, [pattern(bs, 100 + i)]));
      await Promise.all(writes);
      const reads = Array.from({ length: n }, (_, i) => readAll(b, ((i * 37) % n) * 3 * bs, bs));
      const got = await Promise.all(reads);
      got.forEach((g, i) => assertEqual(g, pattern(bs, 100 + i), `concurrent read ${i}`));
      // Mixed: writes, reads and a flush in flight together.
      const mixed: Promise<unknown>[] = [];
      for (let i = 0; i < n; i++) {
        mixed.push(b.write(SIZE / 2 + i * bs, [pattern(bs, 500 + i)]));
        if (i % 8 === 0) mixed.push(b.flush());
        mixed.push(readAll(b, ((i * 37) % n) * 3 * bs, bs));
      }
      await Promise.all(mixed);
      for (let i = 0; i < n; i++) assertEqual(await readAll(b, SIZE / 2 + i * bs, bs), pattern(bs, 500 + i), `mixed write ${i}`);
    });

    withBackend('discard and write-zeroes make ranges read as zeros and spare their neighbours', async (b) => {
      const d = pattern(1024 * 1024, 4);
      await b.write(0, [d]);
      await b.discard(65536, 131072);
      await b.discard(512 * 3, 512 * 5);
      await b.writeZeroes(300 * 1024, 200 * 1024, false);
      await b.writeZeroes(700 * 1024, 512, true);
      const got = await readAll(b, 0, d.byteLength);
      const want = d.slice();
      want.fill(0, 65536, 65536 + 131072);
      want.fill(0, 512 * 3, 512 * 8);
      want.fill(0, 300 * 1024, 500 * 1024);
      want.fill(0, 700 * 1024, 700 * 1024 + 512);
      assertEqual(got, want, 'after discard/write-zeroes');
      await b.flush();
      assertEqual(await readAll(b, 0, d.byteLength), want, 'after flush');
    });

    withBackend('block status covers the range exactly and agrees with the data', async (b) => {
      const all = await b.blockStatus(0, SIZE);
      checkExtents(all, 0, SIZE, 'fresh device');
      for (const e of all) if (e.kind === 'data') assertZero(await readAll(b, e.offset, Math.min(e.length, 65536)), 'data extent of a fresh device');
      const d = pattern(128 * 1024, 5);
      await b.write(1024 * 1024, [d]);
      await b.writeZeroes(2 * 1024 * 1024, 256 * 1024, true);
      const ext = await b.blockStatus(0, SIZE);
      checkExtents(ext, 0, SIZE, 'after writes');
      for (const e of ext) {
        if (e.kind !== 'data') assertZero(await readAll(b, e.offset, e.length), `${e.kind} extent at ${e.offset}`);
        const a = Math.max(e.offset, 1024 * 1024);
        const z = Math.min(e.offset + e.length, 1024 * 1024 + d.byteLength);
        if (a < z && e.kind !== 'data') fail(`written range [${a}, ${z}) reported as '${e.kind}'`);
      }
      const part = await b.blockStatus(1024 * 1024 + 4096, 8192);
      checkExtents(part, 1024 * 1024 + 4096, 8192, 'sub-range');
      await expectBlockError(b.blockStatus(1, 512), 'unaligned', 'unaligned block status');
    });

    withBackend('flush resolves, and close is idempotent and ends service', async (b) => {
      await b.write(0, [pattern(4096, 6)]);
      await b.flush();
      await b.close();
      await b.close();
      await expectBlockError(b.read(0, [new Uint8Array(512)]), 'closed', 'read after close');
      await expectBlockError(b.write(0, [new Uint8Array(512)]), 'closed', 'write after close');
      await expectBlockError(b.flush(), 'closed', 'flush after close');
    });

    if (factory.reopen) {
      const reopen = factory.reopen.bind(factory);
      withBackend('keeps flushed data across close and reopen; read-only refuses changes', async (b) => {
        const d = pattern(200 * 1024, 7);
        await b.write(4096, [d]);
        await b.discard(4096 + 65536, 65536);
        await b.flush();
        const ro = await reopen(b, true);
        const want = d.slice();
        want.fill(0, 65536, 131072);
        assertEqual(await readAll(ro, 4096, d.byteLength), want, 'after reopen');
        if (!ro.readOnly) fail('reopened read-only but readOnly is false');
        await expectBlockError(ro.write(0, [d.subarray(0, 512)]), 'read-only', 'write on read-only');
        await expectBlockError(ro.discard(0, 512), 'read-only', 'discard on read-only');
        await expectBlockError(ro.writeZeroes(0, 512, true), 'read-only', 'write-zeroes on read-only');
        assertEqual(await readAll(ro, 4096, d.byteLength), want, 'after refused writes');
        return ro;
      });
    }
  });
}
