import { writeFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { BlockError, COMPLETED, MemoryBackend, RawFileBackend } from '../src/index.js';
import { HostFile } from '../src/file.js';
import { tempDir } from './helpers.js';

function bytes(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

for (const engine of ['threadpool', 'sync'] as const)
describe(`HostFile.readv, ${engine} engine`, () => {
  let tmp: ReturnType<typeof tempDir> | undefined;
  afterEach(() => {
    tmp?.remove();
    tmp = undefined;
  });

  it('many reads in flight at once, over several segments (zero-length ones too, shared memory as well), each get their own bytes', async () => {
    tmp = tempDir();
    const content = bytes(1 << 20, 7);
    writeFileSync(tmp.path('f'), content);
    const f = await HostFile.open(tmp.path('f'), { readOnly: true, engine });
    try {
      const reads = Array.from({ length: 200 }, (_, i) => {
        const at = (i * 4099) % ((1 << 20) - 9000);
        const a = new Uint8Array(new SharedArrayBuffer(3000));
        const b = new Uint8Array(0);
        const c = new Uint8Array(5000);
        return f.readv([a, b, c], at).then(() => {
          expect(a).toEqual(content.subarray(at, at + 3000));
          expect(c).toEqual(content.subarray(at + 3000, at + 8000));
        });
      });
      await Promise.all(reads);
      // Nothing but empty segments: resolves without I/O.
      await f.readv([new Uint8Array(0)], 0);
      await f.readv([], 0);
    } finally {
      await f.close();
    }
  });

  it('bytes past the end of the file read as zeros, even after a short read in the middle of a segment', async () => {
    tmp = tempDir();
    const content = bytes(10_000, 3);
    writeFileSync(tmp.path('f'), content);
    const f = await HostFile.open(tmp.path('f'), { readOnly: true, engine });
    try {
      const a = new Uint8Array(4096).fill(0xee);
      const b = new Uint8Array(4096).fill(0xee);
      await f.readv([a, b], 8192 - 4096 + 1000); // 5096..13288: the file ends at 10000, inside b
      expect(a).toEqual(content.subarray(5096, 9192));
      expect(b.subarray(0, 808)).toEqual(content.subarray(9192, 10_000));
      expect(b.subarray(808).every((x) => x === 0)).toBe(true);
      const past = new Uint8Array(512).fill(0xee);
      await f.readv([past], 20_000);
      expect(past.every((x) => x === 0)).toBe(true);
    } finally {
      await f.close();
    }
  });

  it('close waits for the reads in flight (they use the descriptor, not the FileHandle)', async () => {
    tmp = tempDir();
    const content = bytes(256 << 10, 9);
    writeFileSync(tmp.path('f'), content);
    const f = await HostFile.open(tmp.path('f'), { readOnly: true, engine });
    const bufs = Array.from({ length: 64 }, () => new Uint8Array(4096));
    const reads = bufs.map((b, i) => f.readv([b], i * 4096));
    await f.close();
    await Promise.all(reads);
    bufs.forEach((b, i) => expect(b).toEqual(content.subarray(i * 4096, (i + 1) * 4096)));
  });

  it('a failing read rejects with an io BlockError naming the file and offset', async () => {
    // /proc/self/mem: reading an unmapped address (page 0) fails with EIO, on every Linux.
    const f = await HostFile.open('/proc/self/mem', { readOnly: true, engine });
    try {
      const e = await f.readv([new Uint8Array(512)], 4096).then(() => undefined, (x: unknown) => x);
      expect(e).toBeInstanceOf(BlockError);
      expect((e as BlockError).kind).toBe('io');
      expect((e as BlockError).message).toMatch(/read of \/proc\/self\/mem at 4096/);
      // The pooled request is reusable afterwards: nothing hangs, close does not wait forever.
      await expect(f.readv([new Uint8Array(512)], 0)).rejects.toBeInstanceOf(BlockError);
    } finally {
      await f.close();
    }
  });
});

describe('HostFile engines', () => {
  it('an unknown engine is refused by name before the file is opened', async () => {
    await expect(HostFile.open('/nonexistent/x', { engine: 'uring' as never })).rejects.toMatchObject({ kind: 'invalid-argument', message: expect.stringMatching(/engine 'uring'/) as unknown });
  });

  it('COMPLETED only for a request done before the call returned: never for the threadpool engine or a failed read', async () => {
    const tmp = tempDir();
    try {
      writeFileSync(tmp.path('f'), bytes(8192, 6));
      for (const engine of ['threadpool', 'sync'] as const) {
        const b = await RawFileBackend.open(tmp.path('f'), { engine });
        try {
          const p = b.read(0, [new Uint8Array(4096)]);
          expect(p === COMPLETED).toBe(engine === 'sync');
          await p;
          // Refused before any I/O (past the end): a rejection, not COMPLETED.
          const bad = b.read(8192, [new Uint8Array(512)]);
          expect(bad).not.toBe(COMPLETED);
          await expect(bad).rejects.toMatchObject({ kind: 'out-of-range' });
        } finally {
          await b.close();
        }
      }
      const f = await HostFile.open('/proc/self/mem', { readOnly: true, engine: 'sync' });
      try {
        const p = f.readv([new Uint8Array(512)], 4096);
        expect(p).not.toBe(COMPLETED);
        await expect(p).rejects.toBeInstanceOf(BlockError);
      } finally {
        await f.close();
      }
      const m = new MemoryBackend({ size: 1 << 16 });
      expect(m.read(0, [new Uint8Array(512)])).toBe(COMPLETED);
      expect(m.write(512, [new Uint8Array(512)])).toBe(COMPLETED);
      const bad = m.read(1 << 16, [new Uint8Array(512)]);
      expect(bad).not.toBe(COMPLETED);
      await expect(bad).rejects.toMatchObject({ kind: 'out-of-range' });
    } finally {
      tmp.remove();
    }
  });

  it('the sync engine has finished the read when readv returns', async () => {
    const tmp = tempDir();
    try {
      writeFileSync(tmp.path('f'), bytes(8192, 5));
      {
        const f = await HostFile.open(tmp.path('f'), { readOnly: true, engine: 'sync' });
        try {
          const b = new Uint8Array(4096);
          const p = f.readv([b], 4096);
          // (The threadpool engine's read may land at any moment, so only the sync engine can be asserted.)
          expect(b).toEqual(bytes(8192, 5).subarray(4096));
          // It says so: the shared settled promise a caller may complete on at once.
          expect(p).toBe(COMPLETED);
          await p;
          expect(b).toEqual(bytes(8192, 5).subarray(4096));
        } finally {
          await f.close();
        }
      }
    } finally {
      tmp.remove();
    }
  });
});
