import { copyFileSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { BlockError, createImage, MemoryBackend, parseSize, Qcow2Backend, RawFileBackend } from '../src/index.js';
import { tempDir } from './helpers.js';
import { requireQemu, run } from './qemu.js';

let tmp: ReturnType<typeof tempDir> | undefined;
afterEach(() => {
  tmp?.remove();
  tmp = undefined;
});

function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (seed * 31 + i * 7 + (i >> 9)) & 0xff;
  return b;
}

describe('qcow2 metadata growth and caches', () => {
  it('grows the refcount table (512 B clusters, 64-bit refcounts) and stays consistent for qemu-img', async () => {
    requireQemu();
    tmp = tempDir();
    const f = tmp.path('g.qcow2');
    await createImage(f, 'qcow2', { size: 16 << 20, clusterSize: 512, refcountBits: 64 });
    const q = (await Qcow2Backend.open(f, { l2CacheTables: 16, refcountCacheBlocks: 8 }));
    const before = q.header.refcountTableOffset;
    const data = pattern(6 << 20, 3);
    // Scattered 4 KiB writes, then a big sequential one: many L2 tables and refcount blocks.
    for (let i = 0; i < 256; i++) await q.write(((i * 97) % 4096) * 4096, [data.subarray(i * 4096, (i + 1) * 4096)]);
    await q.write(8 << 20, [data]);
    await q.flush();
    const after = q.header.refcountTableOffset;
    expect(after).not.toBe(before);
    const back = new Uint8Array(6 << 20);
    await q.read(8 << 20, [back]);
    expect(Buffer.compare(back, data)).toBe(0);
    const r = await q.check();
    expect([r.corruptions, r.leaks, r.messages]).toEqual([0, 0, []]);
    await q.close();
    const chk = run('qemu-img', ['check', f]);
    expect(chk.stdout).toContain('No errors were found');
  });
});

describe('concurrent allocating writes', () => {
  it('256 writes in flight into shared clusters over a backing file, with discards and flushes, all land', async () => {
    requireQemu();
    tmp = tempDir();
    const base = tmp.path('base.raw');
    const f = tmp.path('top.qcow2');
    await createImage(base, 'raw', { size: 8 << 20 });
    const b0 = await RawFileBackend.open(base);
    await b0.write(0, [new Uint8Array(8 << 20).fill(0xbb)]);
    await b0.close();
    await createImage(f, 'qcow2', { backingFile: 'base.raw', backingFormat: 'raw' });
    const q = await Qcow2Backend.open(f);
    const model = new MemoryBackend({ size: 8 << 20 });
    await model.write(0, [new Uint8Array(8 << 20).fill(0xbb)]);
    const ops: Promise<void>[] = [];
    for (let i = 0; i < 256; i++) {
      // 4 KiB blocks in a shuffled order: 16 writers per 64 KiB cluster, each partial.
      const blk = (i * 167) % 512;
      const d = pattern(4096, i);
      ops.push(q.write(blk * 4096, [d]));
      await model.write(blk * 4096, [d]);
      if (i % 32 === 31) ops.push(q.flush());
    }
    // Discards on clusters nobody writes, and a big multi-cluster write, in flight with the rest.
    ops.push(q.discard(6 << 20, 1 << 20));
    await model.discard(6 << 20, 1 << 20);
    const big = pattern(3 * 65536 + 8192, 999);
    ops.push(q.write((4 << 20) + 4096, [big]));
    await model.write((4 << 20) + 4096, [big]);
    await Promise.all(ops);
    const got = new Uint8Array(8 << 20);
    const want = new Uint8Array(8 << 20);
    await q.read(0, [got]);
    await model.read(0, [want]);
    expect(Buffer.compare(got, want)).toBe(0);
    await q.close();
    expect(run('qemu-img', ['check', f]).status).toBe(0);
    writeFileSync(tmp.path('want.raw'), want);
    expect(run('qemu-img', ['compare', '-F', 'raw', f, tmp.path('want.raw')]).stdout).toContain('Images are identical');
  });
});

describe('crash consistency', () => {
  for (const [cs, lazy] of [
    [512, false],
    [65536, false],
    [4096, true],
  ] as const) {
    it(`every intermediate file state (${cs} B clusters${lazy ? ', lazy refcounts' : ''}) ${lazy ? 'is repaired to a clean image' : 'passes qemu-img check with leaks at most'}`, async () => {
      requireQemu();
      tmp = tempDir();
      const f = tmp.path('c.qcow2');
      await createImage(f, 'qcow2', { size: 4 << 20, clusterSize: cs, lazyRefcounts: lazy });
      const q = await Qcow2Backend.open(f);
      const file = q.hostFile;
      const snaps: string[] = [];
      const snap = (): void => {
        if (snaps.length >= 40) return;
        const s = tmp!.path(`snap-${snaps.length}.qcow2`);
        copyFileSync(f, s);
        snaps.push(s);
      };
      // A process crash right after any write the driver makes: copy the file as it is then.
      const origWrite = file.write.bind(file);
      const origWritev = file.writev.bind(file);
      file.write = async (buf, pos) => {
        await origWrite(buf, pos);
        snap();
      };
      file.writev = async (bufs, pos) => {
        await origWritev(bufs, pos);
        snap();
      };
      await q.write(0, [pattern(200 * 1024, 1)]);
      await q.flush();
      await q.write(1 << 20, [pattern(64 * 1024, 2)]);
      await q.discard(0, 128 * 1024);
      await q.write(3 << 20, [pattern(4096, 3)]);
      await q.flush();
      await q.writeZeroes(1 << 20, 64 * 1024, true);
      await q.write(64 * 1024, [pattern(8192, 4)]);
      await q.close();
      expect(snaps.length).toBeGreaterThan(5);
      for (const s of snaps) {
        if (lazy) {
          // Lazy refcounts: the dirty bit is set; a read-write open repairs, then the image is clean.
          const q2 = await Qcow2Backend.open(s);
          expect(q2.dirtyBit).toBe(false);
          await q2.close();
        }
        const r = run('qemu-img', ['check', s]);
        expect(lazy ? [0] : [0, 3], `${s}: ${r.stdout}${r.stderr}`).toContain(r.status);
      }
      expect(run('qemu-img', ['check', f]).status).toBe(0);
    });
  }
});

describe('I/O errors', () => {
  it('an EIO in the middle of a metadata write-back rejects with an io BlockError; a later flush completes the image', async () => {
    requireQemu();
    tmp = tempDir();
    const f = tmp.path('e.qcow2');
    await createImage(f, 'qcow2', { size: 4 << 20, clusterSize: 4096 });
    for (let failAt = 1; failAt <= 6; failAt++) {
      copyFileSync(f, tmp.path('clean.qcow2'));
      const q = await Qcow2Backend.open(tmp.path('clean.qcow2'));
      const handle = q.hostFile.handle;
      const orig = handle.writev.bind(handle);
      let calls = 0;
      let armed = false;
      handle.writev = ((bufs: NodeJS.ArrayBufferView[], pos?: number) => {
        if (armed && ++calls === failAt) return Promise.reject(Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' }));
        return orig(bufs, pos);
      }) as typeof handle.writev;
      for (let i = 0; i < 8; i++) await q.write(i * 300 * 1024, [pattern(8192, i)]);
      await q.discard(0, 4096);
      armed = true;
      const err = await q.flush().then(
        () => undefined,
        (e: unknown) => e,
      );
      if (calls >= failAt) {
        expect(err).toBeInstanceOf(BlockError);
        expect((err as BlockError).kind).toBe('io');
        expect((err as BlockError).detail.code).toBe('EIO');
        // What is on disk right now is what a crash would leave: leaks at most.
        expect([0, 3]).toContain(run('qemu-img', ['check', tmp.path('clean.qcow2')]).status);
      }
      armed = false;
      await q.flush();
      const got = new Uint8Array(8192);
      await q.read(300 * 1024, [got]);
      expect(Buffer.compare(got, pattern(8192, 1))).toBe(0);
      await q.close();
      expect(run('qemu-img', ['check', tmp.path('clean.qcow2')]).status).toBe(0);
    }
  });
});

describe('qcow2 specifics', () => {
  it('overwrites compressed clusters (copy-on-write out of the compressed data) and frees them', async () => {
    tmp = tempDir();
    const f = tmp.path('z.qcow2');
    await createImage(f, 'qcow2', { size: 1 << 20, clusterSize: 4096 });
    const q = await Qcow2Backend.open(f);
    const text = new Uint8Array(4096);
    for (let i = 0; i < 4096; i++) text[i] = 0x61 + (i % 5);
    for (let c = 0; c < 8; c++) await q.writeCompressed(c * 4096, text);
    const st = await q.blockStatus(0, 8 * 4096);
    expect(st.every((e) => e.kind === 'data' && e.compressed)).toBe(true);
    await q.write(4096 + 512, [new Uint8Array(512).fill(0xee)]);
    await q.discard(2 * 4096, 4096);
    const want = new Uint8Array(8 * 4096);
    for (let c = 0; c < 8; c++) want.set(text, c * 4096);
    want.fill(0xee, 4096 + 512, 4096 + 1024);
    want.fill(0, 2 * 4096, 3 * 4096);
    const got = new Uint8Array(8 * 4096);
    await q.read(0, [got]);
    expect(Buffer.compare(got, want)).toBe(0);
    await q.flush();
    const r = await q.check();
    expect([r.corruptions, r.leaks]).toEqual([0, 0]);
    expect(r.compressedClusters).toBe(6);
    await q.close();
  });

  it('a compressed write into freed space that yields the same L2 descriptor reads back its own data, not the cached old cluster', async () => {
    // Found by the model property: compressed data, overwritten in part (copy-on-write frees the
    // compressed cluster at the flush), then compressed data of the same size written again — it
    // lands where the first was and gets the same descriptor, which keyed the decompression cache.
    tmp = tempDir();
    const f = tmp.path('z.qcow2');
    await createImage(f, 'qcow2', { size: 1 << 20, clusterSize: 65536, version: 2 });
    const q = await Qcow2Backend.open(f);
    const cluster = (v: number) => {
      const d = new Uint8Array(65536);
      for (let i = 0; i < d.length; i++) d[i] = (v + (i >> 9)) & 0xff;
      return d;
    };
    await q.writeCompressed(0, cluster(1));
    await q.writeZeroes(0, 512, false);
    await q.flush();
    await q.writeCompressed(0, cluster(2));
    const got = new Uint8Array(65536);
    await q.read(0, [got]);
    expect(Buffer.compare(got, cluster(2))).toBe(0);
    await q.close();
  });

  it('discard frees host space: the freed clusters are punched out of the file after the flush', async () => {
    tmp = tempDir();
    const f = tmp.path('p.qcow2');
    await createImage(f, 'qcow2', { size: 16 << 20 });
    const q = await Qcow2Backend.open(f);
    await q.write(0, [pattern(8 << 20, 5)]);
    await q.flush();
    const full = statSync(f).blocks;
    await q.discard(1 << 20, 6 << 20);
    await q.flush();
    expect(full - statSync(f).blocks).toBeGreaterThanOrEqual(((6 << 20) / 512) * 0.9);
    // The freed clusters are reused by the next allocation: the file does not grow.
    const size = statSync(f).size;
    await q.write(10 << 20, [pattern(4 << 20, 6)]);
    await q.flush();
    expect(statSync(f).size).toBe(size);
    const r = await q.check();
    expect([r.corruptions, r.leaks]).toEqual([0, 0]);
    await q.close();
  });

  it('honours the corrupt bit (read-only only) and clears unknown autoclear bits before writing', async () => {
    tmp = tempDir();
    const f = tmp.path('b.qcow2');
    await createImage(f, 'qcow2', { size: 1 << 20 });
    const img = new Uint8Array(readFileSync(f));
    img[79] = img[79]! | 0x02;
    img[95] = img[95]! | 0x80; // unknown autoclear bit 7
    writeFileSync(f, img);
    await expect(Qcow2Backend.open(f)).rejects.toMatchObject({ kind: 'corrupt', message: expect.stringMatching(/marked corrupt/) as unknown });
    const ro = await Qcow2Backend.open(f, { readOnly: true });
    expect(ro.corruptBit).toBe(true);
    await ro.close();
    img[79] = img[79] & ~0x02;
    writeFileSync(f, img);
    const rw = await Qcow2Backend.open(f);
    expect(rw.header.autoclear).toBe(0n);
    await rw.close();
    expect(readFileSync(f)[95]).toBe(0);
  });

  it('a dirty image that is not lazy is repaired on a read-write open too', async () => {
    tmp = tempDir();
    const f = tmp.path('d.qcow2');
    await createImage(f, 'qcow2', { size: 1 << 20, clusterSize: 4096 });
    const q = await Qcow2Backend.open(f);
    await q.write(0, [pattern(64 * 1024, 9)]);
    await q.close();
    // Damage: zero every refcount of the data clusters, set the dirty bit.
    const img = new Uint8Array(readFileSync(f));
    const dv = new DataView(img.buffer);
    const rb = Number(dv.getBigUint64(4096, false));
    for (let c = 4; c < 64; c++) dv.setUint16(rb + c * 2, 0, false);
    img[79] = img[79]! | 0x01;
    writeFileSync(f, img);
    const ro = await Qcow2Backend.open(f, { readOnly: true });
    expect((await ro.check()).corruptions).toBeGreaterThan(0);
    await ro.close();
    const rw = await Qcow2Backend.open(f);
    expect(rw.dirtyBit).toBe(false);
    const r = await rw.check();
    expect([r.corruptions, r.leaks]).toEqual([0, 0]);
    const got = new Uint8Array(64 * 1024);
    await rw.read(0, [got]);
    expect(Buffer.compare(got, pattern(64 * 1024, 9))).toBe(0);
    await rw.close();
  });

  it('creates every cluster size and refcount width, and refuses bad options', async () => {
    tmp = tempDir();
    for (const cs of [512, 1024, 4096, 65536, 2 << 20]) {
      for (const bits of [1, 2, 4, 8, 16, 32, 64]) {
        const f = tmp.path(`c-${cs}-${bits}.qcow2`);
        await createImage(f, 'qcow2', { size: Math.max(3 << 20, 3 * cs), clusterSize: cs, refcountBits: bits });
        const q = await Qcow2Backend.open(f);
        await q.write(cs, [pattern(cs, bits)]);
        await q.flush();
        const r = await q.check();
        expect([cs, bits, r.corruptions, r.leaks]).toEqual([cs, bits, 0, 0]);
        await q.close();
      }
    }
    await expect(createImage(tmp.path('x'), 'qcow2', { size: 1 << 20, clusterSize: 3000 })).rejects.toMatchObject({ kind: 'invalid-argument' });
    await expect(createImage(tmp.path('x'), 'qcow2', { size: 1 << 20, clusterSize: 4 << 20 })).rejects.toMatchObject({ kind: 'invalid-argument' });
    await expect(createImage(tmp.path('x'), 'qcow2', { size: 1 << 20, version: 2, lazyRefcounts: true })).rejects.toMatchObject({ kind: 'invalid-argument' });
    await expect(createImage(tmp.path('x'), 'qcow2', { size: 1 << 20, extendedL2: true, clusterSize: 4096 })).rejects.toMatchObject({ kind: 'invalid-argument' });
    await expect(createImage(tmp.path('x'), 'vmdk', { size: 1 << 20 })).rejects.toMatchObject({ kind: 'unsupported' });
  });

  it('refuses writes to images with internal snapshots but reads them', async () => {
    requireQemu();
    tmp = tempDir();
    const f = tmp.path('s.qcow2');
    expect(run('qemu-img', ['create', '-q', '-f', 'qcow2', f, '1M']).status).toBe(0);
    expect(run('qemu-io', ['-c', 'write -P 0x42 0 64k', f]).status).toBe(0);
    expect(run('qemu-img', ['snapshot', '-c', 'snap1', f]).status).toBe(0);
    expect(run('qemu-io', ['-c', 'write -P 0x43 0 4k', f]).status).toBe(0);
    await expect(Qcow2Backend.open(f)).rejects.toMatchObject({ kind: 'unsupported', message: expect.stringMatching(/1 internal snapshot/) as unknown });
    const ro = await Qcow2Backend.open(f, { readOnly: true });
    const got = new Uint8Array(8192);
    await ro.read(0, [got]);
    expect(got.subarray(0, 4096).every((v) => v === 0x43)).toBe(true);
    expect(got.subarray(4096).every((v) => v === 0x42)).toBe(true);
    const r = await ro.check();
    expect([r.corruptions, r.leaks]).toEqual([0, 0]);
    await ro.close();
  });
});

describe('memory and raw back-ends', () => {
  it('memory is sparse and frees discarded chunks', async () => {
    const m = new MemoryBackend({ size: 2 ** 40, chunkSize: 65536 });
    await m.write(2 ** 39, [new Uint8Array(4096).fill(1)]);
    expect(m.allocatedChunks).toBe(1);
    await m.discard(2 ** 39, 65536);
    expect(m.allocatedChunks).toBe(0);
    await m.writeZeroes(0, 65536, false);
    expect(m.allocatedChunks).toBe(1);
    expect(() => new MemoryBackend({ size: 1000 })).toThrow(BlockError);
  });

  it('raw discard punches holes (the file system frees the blocks) and block status sees them', async () => {
    tmp = tempDir();
    const f = tmp.path('r.raw');
    await RawFileBackend.create(f, 8 << 20);
    const r = await RawFileBackend.open(f);
    await r.write(0, [new Uint8Array(8 << 20).fill(0x11)]);
    await r.flush();
    const full = statSync(f).blocks;
    await r.discard(1 << 20, 4 << 20);
    await r.flush();
    const after = statSync(f).blocks;
    expect(full - after).toBeGreaterThanOrEqual(((4 << 20) / 512) * 0.9);
    const st = await r.blockStatus(0, 8 << 20);
    expect(st.map((e) => [e.offset, e.length, e.kind])).toEqual([
      [0, 1 << 20, 'data'],
      [1 << 20, 4 << 20, 'zero'],
      [5 << 20, 3 << 20, 'data'],
    ]);
    await r.close();
  });

  it('raw read-only refuses writes; a file of odd length reads its tail as zeros', async () => {
    tmp = tempDir();
    const f = tmp.path('odd.raw');
    writeFileSync(f, new Uint8Array(1000).fill(3));
    const r = await RawFileBackend.open(f, { readOnly: true });
    expect(r.size).toBe(1024);
    const got = new Uint8Array(1024);
    await r.read(0, [got]);
    expect(got.subarray(0, 1000).every((v) => v === 3) && got.subarray(1000).every((v) => v === 0)).toBe(true);
    await expect(r.write(0, [got])).rejects.toMatchObject({ kind: 'read-only' });
    await r.close();
  });

  it('parses qemu-img sizes', () => {
    expect(parseSize('512')).toBe(512);
    expect(parseSize('64k')).toBe(65536);
    expect(parseSize('1M')).toBe(1 << 20);
    expect(parseSize('2G')).toBe(2 * 1024 ** 3);
    expect(parseSize('1.5k')).toBe(1536);
    expect(() => parseSize('12x')).toThrow(BlockError);
    expect(() => parseSize('-1')).toThrow(BlockError);
  });
});
