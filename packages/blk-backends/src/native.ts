/**
 * The few Linux calls Node's `fs` lacks, through koffi (an FFI whose npm
 * package ships prebuilt binaries): fallocate(2) to punch holes and zero
 * ranges, lseek(2) SEEK_DATA/SEEK_HOLE to find them, aligned_alloc(3) for
 * O_DIRECT buffers. Loaded on first use; when koffi cannot load (another OS,
 * a stripped install), `native()` returns undefined and callers fall back to
 * writing zeros and reporting every byte as data.
 */
import { createRequire } from 'node:module';

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
export const ENXIO = 6;

export interface Native {
  /** fallocate(2); returns 0 or -errno. */
  fallocate(fd: number, mode: number, offset: number, length: number): number;
  /** fallocate(2) on koffi's worker thread, so a large hole punch does not block the event loop; resolves to the return value (0 or -1). */
  fallocateAsync(fd: number, mode: number, offset: number, length: number): Promise<number>;
  /** lseek(2); returns the offset or -errno. */
  lseek(fd: number, offset: number, whence: number): number;
  /** A page-aligned ArrayBuffer that is never freed (for a fixed pool). */
  alignedBuffer(alignment: number, size: number): ArrayBuffer;
}

interface KoffiFn {
  (...args: unknown[]): unknown;
  async(...args: unknown[]): void;
}
interface Koffi {
  load(name: string): { func(sig: string): KoffiFn };
  errno(): number;
  view(ptr: unknown, len: number): ArrayBuffer;
}

let cached: Native | null | undefined;

export function native(): Native | undefined {
  if (cached !== undefined) return cached ?? undefined;
  cached = null;
  if (process.platform !== 'linux') return undefined;
  try {
    const require = createRequire(import.meta.url);
    const koffi = require('koffi') as Koffi;
    const libc = koffi.load('libc.so.6');
    const fallocate = libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)');
    const lseek = libc.func('int64_t lseek(int fd, int64_t offset, int whence)');
    const alignedAlloc = libc.func('void *aligned_alloc(size_t alignment, size_t size)');
    cached = {
      fallocate(fd, mode, offset, length) {
        const r = fallocate(fd, mode, offset, length) as number;
        return r === 0 ? 0 : -koffi.errno();
      },
      fallocateAsync(fd, mode, offset, length) {
        return new Promise((resolve) => {
          fallocate.async(fd, mode, offset, length, (err: unknown, r: number) => resolve(err ? -1 : r));
        });
      },
      lseek(fd, offset, whence) {
        const r = Number(lseek(fd, offset, whence));
        return r >= 0 ? r : -koffi.errno();
      },
      alignedBuffer(alignment, size) {
        const p = alignedAlloc(alignment, size);
        if (p === null) throw new Error(`aligned_alloc(${alignment}, ${size}) failed`);
        return koffi.view(p, size);
      },
    };
  } catch {
    cached = null;
  }
  return cached ?? undefined;
}
