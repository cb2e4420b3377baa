/**
 * The virtio-blk path's own cost, without threads: guest driver, virtqueue,
 * device and a raw file on the sync engine all in this thread
 * (DirectTransport, interrupts as calls), against the same reads issued
 * directly on the back-end, 4 KiB random at queue depth 32, interleaved
 * round by round. What the two-thread benchmark cannot show: the
 * microseconds per request the driver and the device add to a read, with no
 * wake-up and no cache line crossing cores.
 *   pnpm --filter @ioplane/virtio-devices bench:one-thread   (ROUNDS=11 OPS=200000; split rings, PACKED=1 for packed;
 *   NULL_BACKEND=1: both paths read from a back-end that returns COMPLETED at once and moves no
 *   data, so the figures are the JavaScript alone: the virtio path's against one back-end call's)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { COMPLETED, RawFileBackend, checkRequest, openImage, segmentsLength, type BlockBackend } from '@ioplane/blk-backends';
import { GuestMemory } from '@ioplane/guest-memory';
import { DirectTransport, VirtioBlkDevice, VirtioBlkDriver } from '../src/index.js';
import { rng } from './common.js';

const ROUNDS = Number(process.env.ROUNDS ?? 11);
const OPS = Number(process.env.OPS ?? 200_000);
const SIZE = 64 << 20;
const QD = 32;
const ONLY = process.env.ONLY;
/** Split rings unless PACKED=1, as in the two-thread benchmark (the driver would otherwise take packed when offered). */
const PACKED = process.env.PACKED === '1';
const NULL_BACKEND = process.env.NULL_BACKEND === '1';

const median = (v: number[]): number => [...v].sort((a, b) => a - b)[v.length >> 1]!;

const dir = mkdtempSync(join(tmpdir(), 'ioplane-blk-one-'));
try {
  const path = join(dir, 'disk.raw');
  await RawFileBackend.create(path, SIZE);
  const b = await openImage(path, { engine: 'sync' });
  const fill = new Uint8Array(1 << 20).fill(0xa5);
  for (let off = 0; off < SIZE; off += fill.length) await b.write(off, [fill]);
  const mem = new GuestMemory([{ gpa: 0, backing: new SharedArrayBuffer(16 << 20) }]);
  const ref: { drv?: VirtioBlkDriver } = {};
  // NULL_BACKEND: every read done at once, no system call, no bytes moved (the checks of a real back-end kept).
  const nul: BlockBackend = {
    size: b.size,
    logicalBlockSize: b.logicalBlockSize,
    physicalBlockSize: b.physicalBlockSize,
    readOnly: b.readOnly,
    read: (offset, segments) => {
      checkRequest(b, 'read', offset, segmentsLength(segments), false);
      return COMPLETED;
    },
    write: () => Promise.reject(new Error('read-only benchmark')),
    flush: () => COMPLETED,
    discard: () => Promise.reject(new Error('read-only benchmark')),
    writeZeroes: () => Promise.reject(new Error('read-only benchmark')),
    blockStatus: () => Promise.resolve([]),
    close: () => COMPLETED,
  };
  const be = NULL_BACKEND ? nul : b;
  const dev = new VirtioBlkDevice({ mem, backend: be, queueSize: 256, interrupts: { queue: () => ref.drv?.handleInterrupt(0), config: () => {} } });
  const drv = await VirtioBlkDriver.create({ transport: new DirectTransport(dev), mem, area: { addr: 0x10000, len: 4 << 20 }, ring: { packed: PACKED } });
  ref.drv = drv;
  const blocks = SIZE / 4096;
  const bufs = Array.from({ length: QD }, () => [new Uint8Array(new SharedArrayBuffer(4096))]);
  const virtio = async (seed: number): Promise<number> => {
    if (ONLY === 'direct') return 1;
    const next = rng(seed);
    let issued = 0;
    const t = performance.now();
    await Promise.all(Array.from({ length: QD }, async (_, s) => {
      while (issued++ < OPS) await drv.read((next() % blocks) * 8, (8 << 20) + s * 65536, 4096);
    }));
    return ((performance.now() - t) * 1000) / OPS;
  };
  const direct = async (seed: number): Promise<number> => {
    if (ONLY === 'virtio') return 1;
    const next = rng(seed);
    let issued = 0;
    const t = performance.now();
    await Promise.all(Array.from({ length: QD }, async (_, s) => {
      while (issued++ < OPS) await be.read((next() % blocks) * 4096, bufs[s]!);
    }));
    return ((performance.now() - t) * 1000) / OPS;
  };
  const v: number[] = [];
  const d: number[] = [];
  for (let r = 0; r <= ROUNDS; r++) {
    let x: number;
    let y: number;
    if (r % 2 === 0) {
      x = await virtio(r + 1);
      y = await direct(r + 1);
    } else {
      y = await direct(r + 1);
      x = await virtio(r + 1);
    }
    if (r === 0) continue; // warm-up
    v.push(x);
    d.push(y);
  }
  const ratios = v.map((x, i) => d[i]! / x);
  console.log(`one thread, 4 KiB random reads at QD ${QD}, ${NULL_BACKEND ? 'null back-end (no I/O)' : 'raw file on the sync engine'}, ${PACKED ? 'packed' : 'split'} rings, ${ROUNDS} rounds, medians (node ${process.version})`);
  // The fastest round too: on a shared machine load only ever adds time, so it is the steadier figure of pure CPU work.
  console.log(`  direct on the back-end  ${median(d).toFixed(2)} µs/read  (fastest round ${Math.min(...d).toFixed(2)})`);
  console.log(`  through virtio-blk      ${median(v).toFixed(2)} µs/read  (fastest round ${Math.min(...v).toFixed(2)}; driver + virtqueue + device: ${(median(v) - median(d)).toFixed(2)} µs)`);
  console.log(`  virtio / direct (IOPS)  ${median(ratios).toFixed(2)} (min–max ${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)})`);
  await drv.close();
  await b.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
