// The blk-backends conformance suite, run against the guest's view of a disk:
// every BlockBackend call goes through the guest driver, a virtqueue, the
// virtio-blk device and a real back-end (memory, qcow2) — the device as one
// more layer in front of a back-end (STYLE.md 15).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockError, MemoryBackend, checkRequest, createImage, openImage, type BlockBackend, type Extent, type Segments } from '@ioplane/blk-backends';
import { testBlockBackend } from '@ioplane/blk-backends/testing';
import { GuestMemory } from '@ioplane/guest-memory';
import { describe, it } from 'vitest';
import { DirectTransport, VirtioBlkDevice, VirtioBlkDriver, VirtioError } from '../src/index.js';

const SLOT = 1 << 20;
const SLOTS = 16;
const BOUNCE = 4 << 20;

/** A BlockBackend over a guest driver: host buffers are bounced through guest memory. */
class GuestDisk implements BlockBackend {
  readonly logicalBlockSize = 512;
  readonly physicalBlockSize = 4096;
  readonly readOnly = false;
  #closed = false;
  readonly #free = Array.from({ length: SLOTS }, (_, i) => BOUNCE + i * SLOT);
  readonly #waiting: ((slot: number) => void)[] = [];
  constructor(
    readonly driver: VirtioBlkDriver,
    readonly mem: GuestMemory,
    readonly device: VirtioBlkDevice,
  ) {}
  get size(): number {
    return this.driver.info.capacitySectors * 512;
  }
  private async slot(): Promise<number> {
    const s = this.#free.pop();
    if (s !== undefined) return s;
    return new Promise((r) => this.#waiting.push(r));
  }
  private release(s: number): void {
    const w = this.#waiting.shift();
    if (w) w(s);
    else this.#free.push(s);
  }
  private static readonly io = (e: unknown): never => {
    throw e instanceof VirtioError ? new BlockError('io', e.message, {}, { cause: e }) : e;
  };
  /** Runs `fn` on each ≤1 MiB chunk of the request with a guest bounce buffer. */
  private async chunks(offset: number, segments: Segments, fn: (sector: number, addr: number, from: number, len: number) => Promise<void>): Promise<void> {
    let total = 0;
    for (const s of segments) total += s.byteLength;
    const jobs: Promise<void>[] = [];
    for (let from = 0; from < total; from += SLOT) {
      const len = Math.min(SLOT, total - from);
      jobs.push(
        (async () => {
          const addr = await this.slot();
          try {
            await fn((offset + from) / 512, addr, from, len);
          } finally {
            this.release(addr);
          }
        })(),
      );
    }
    await Promise.all(jobs);
  }
  private copy(segments: Segments, from: number, len: number, addr: number, toGuest: boolean): void {
    let pos = 0;
    for (const s of segments) {
      const a = Math.max(from, pos);
      const b = Math.min(from + len, pos + s.byteLength);
      if (a < b) {
        const part = s.subarray(a - pos, b - pos);
        if (toGuest) this.mem.writeFrom(addr + (a - from), part);
        else this.mem.readInto(addr + (a - from), part);
      }
      pos += s.byteLength;
    }
  }
  async read(offset: number, segments: Segments): Promise<void> {
    let n = 0;
    for (const s of segments) n += s.byteLength;
    checkRequest(this, 'read', offset, n, this.#closed);
    await this.chunks(offset, segments, async (sector, addr, from, len) => {
      await this.driver.read(sector, addr, len).catch(GuestDisk.io);
      this.copy(segments, from, len, addr, false);
    });
  }
  async write(offset: number, segments: Segments): Promise<void> {
    let n = 0;
    for (const s of segments) n += s.byteLength;
    checkRequest(this, 'write', offset, n, this.#closed);
    await this.chunks(offset, segments, async (sector, addr, from, len) => {
      this.copy(segments, from, len, addr, true);
      await this.driver.write(sector, addr, len).catch(GuestDisk.io);
    });
  }
  async flush(): Promise<void> {
    if (this.#closed) throw new BlockError('closed', 'flush on a closed disk');
    await this.driver.flush().catch(GuestDisk.io);
  }
  private async ranges(op: 'discard' | 'write-zeroes', offset: number, length: number, unmap: boolean): Promise<void> {
    checkRequest(this, op, offset, length, this.#closed);
    const max = op === 'discard' ? this.driver.info.maxDiscardSectors : this.driver.info.maxWriteZeroesSectors;
    for (let s = offset / 512; s < (offset + length) / 512; s += max) {
      const count = Math.min(max, (offset + length) / 512 - s);
      const p = op === 'discard' ? this.driver.discard([{ sector: s, count }]) : this.driver.writeZeroes([{ sector: s, count }], unmap);
      await p.catch(GuestDisk.io);
    }
  }
  discard(offset: number, length: number): Promise<void> {
    return this.ranges('discard', offset, length, false);
  }
  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    return this.ranges('write-zeroes', offset, length, mayUnmap);
  }
  /** virtio-blk has no block-status request: a guest sees every byte as data. */
  blockStatus(offset: number, length: number): Promise<Extent[]> {
    try {
      checkRequest(this, 'block-status', offset, length, this.#closed);
    } catch (e) {
      return Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
    return Promise.resolve(length === 0 ? [] : [{ offset, length, kind: 'data' }]);
  }
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.driver.close();
    await this.device.backend.close();
  }
}

async function guestDisk(backend: BlockBackend, packed: boolean): Promise<GuestDisk> {
  const mem = GuestMemory.create(BOUNCE + SLOTS * SLOT);
  const ref: { driver?: VirtioBlkDriver } = {};
  const device = new VirtioBlkDevice({
    mem,
    backend,
    numQueues: 2,
    interrupts: { queue: (q) => ref.driver?.handleInterrupt(q), config: () => void ref.driver?.handleConfigChange() },
  });
  const driver = await VirtioBlkDriver.create({ transport: new DirectTransport(device), mem, area: { addr: 0x1000, len: BOUNCE - 0x1000 }, ring: { packed } });
  ref.driver = driver;
  return new GuestDisk(driver, mem, device);
}

const dirs: string[] = [];
testBlockBackend({ describe, it }, 'virtio-blk (split rings) over a memory back-end', {
  create: (size) => guestDisk(new MemoryBackend({ size }), false),
});
testBlockBackend({ describe, it }, 'virtio-blk (packed rings) over a qcow2 back-end', {
  create: async (size) => {
    const dir = mkdtempSync(join(tmpdir(), 'ioplane-vblk-conf-'));
    dirs.push(dir);
    const img = join(dir, 'disk.qcow2');
    await createImage(img, 'qcow2', { size });
    return guestDisk(await openImage(img), true);
  },
  cleanup: () => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
    return Promise.resolve();
  },
});
