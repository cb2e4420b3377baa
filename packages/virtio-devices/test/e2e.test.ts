import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MessageChannel, Worker } from 'node:worker_threads';
import { MemoryBackend, RawFileBackend, createImage, openImage } from '@ioplane/blk-backends';
import { GuestMemory } from '@ioplane/guest-memory';
import { Doorbell } from '@ioplane/virtqueue';
import { afterEach, describe, expect, it } from 'vitest';
import { type HaltPollStats, VirtioBlkDevice, serveTransport, type VirtioError } from '../src/index.js';
import type { E2eGuestSetup } from './guest-worker.js';
import { pattern } from './harness.js';

const INSTALL = 'apt-get install -y --no-install-recommends qemu-utils';

function requireQemuImg(): void {
  const r = spawnSync('qemu-img', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`qemu-img is not installed; the end-to-end test needs it: ${INSTALL}`);
}

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

interface GuestDone {
  type: 'done';
  image: Uint8Array;
  id: string;
  info: { capacitySectors: number; numQueues: number };
  haltPoll?: HaltPollStats;
}

async function runGuest<T = GuestDone>(setup: Omit<E2eGuestSetup, 'port'>, device: VirtioBlkDevice, kicks: Doorbell[]): Promise<T> {
  const { port1, port2 } = new MessageChannel();
  const served = serveTransport(device, port1, kicks);
  const worker = new Worker(new URL('./ts-worker.mjs', import.meta.url), {
    execArgv: ['--conditions=@ioplane/source'],
    workerData: { ...setup, port: port2, __entry: new URL('./guest-worker.ts', import.meta.url).href },
    transferList: [port2],
  });
  try {
    return await new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the guest did not finish within 60 s')), 60_000);
      worker.on('message', (m: { type: string; message?: string }) => {
        clearTimeout(timer);
        if (m.type === 'error') reject(new Error(`guest: ${m.message}`));
        else resolve(m as T);
      });
      worker.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  } finally {
    await worker.terminate();
    await served.stop();
  }
}

describe('end to end: guest driver in a worker, virtio-blk in this thread, qcow2 back-end', () => {
  for (const packed of [false, true]) {
    // The packed case's guest halt-polls, one governor for both queues (the benchmark's guest does).
    it(`${packed ? 'packed' : 'split'} rings, 2 queues${packed ? ', a halt-polling guest' : ''}: write a pattern, flush, read back, qemu-img compare`, async () => {
      requireQemuImg();
      const dir = mkdtempSync(join(tmpdir(), 'ioplane-e2e-'));
      dirs.push(dir);
      const SIZE = 16 << 20;
      const img = join(dir, 'disk.qcow2');
      await createImage(img, 'qcow2', { size: SIZE, clusterSize: 65536 });
      const backend = await openImage(img);
      const numQueues = 2;
      const sab = new SharedArrayBuffer(16 << 20);
      const mem = new GuestMemory([{ gpa: 0, backing: sab }]);
      const bells = new Int32Array(new SharedArrayBuffer(4 * (numQueues * 2 + 1)));
      const kicks = Array.from({ length: numQueues }, (_, q) => new Doorbell(bells, q));
      const irqs = Array.from({ length: numQueues }, (_, q) => new Doorbell(bells, numQueues + q));
      const errors: VirtioError[] = [];
      const device = new VirtioBlkDevice({
        mem,
        backend,
        numQueues,
        serial: 'ioplane-e2e',
        interrupts: { queue: (q) => irqs[q]!.ring(), config: () => {} },
        onGuestError: (e) => errors.push(e),
      });
      // The expected content, built from the same plan as the guest's.
      const expected = new Uint8Array(SIZE);
      const writes: [number, number, number][] = [];
      let x = 12345;
      const rnd = (n: number): number => {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        return (x >>> 8) % n;
      };
      for (let i = 0; i < 120; i++) {
        const len = (1 + rnd(128)) * 512;
        const sector = rnd((SIZE - len) / 512);
        writes.push([sector, len, i + 1]);
      }
      for (const [sector, len, seed] of writes) expected.set(pattern(len, seed), sector * 512);
      const zeroes: [number, number, boolean][] = [
        [2048, 256, false],
        [8192, 128, true],
      ];
      for (const [sector, count] of zeroes) expected.fill(0, sector * 512, (sector + count) * 512);
      try {
        const done = await runGuest({ sab, bells, numQueues, writes, zeroes, packed, depth: 8, haltPoll: packed }, device, kicks);
        if (packed) {
          const st = done.haltPoll!;
          expect(st.idle).toBeGreaterThan(0);
          expect(st.caught + st.slept).toBe(st.idle);
        } else expect(done.haltPoll).toBeUndefined();
        expect(done.id).toBe('ioplane-e2e');
        expect(done.info.numQueues).toBe(2);
        expect(done.info.capacitySectors).toBe(SIZE / 512);
        expect(Buffer.from(done.image).equals(Buffer.from(expected))).toBe(true);
        expect(errors.map((e) => e.message)).toEqual([]);
        expect(device.blkStats.requests).toBeGreaterThan(writes.length);
      } finally {
        await backend.close();
      }
      const raw = join(dir, 'expected.raw');
      writeFileSync(raw, expected);
      const cmp = spawnSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', img, raw], { encoding: 'utf8', timeout: 60_000 });
      expect(cmp.stdout + cmp.stderr).toContain('Images are identical');
      expect(cmp.status).toBe(0);
      const chk = spawnSync('qemu-img', ['check', '-f', 'qcow2', img], { encoding: 'utf8', timeout: 60_000 });
      expect(chk.status, chk.stdout + chk.stderr).toBe(0);
    });
  }
});

describe('end to end: the sync engine under a polling device', () => {
  it('raw file on the sync engine, device polling (pollNs) in passes of 4 (maxBatch): write, zero, flush, read back; the file holds exactly the plan', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ioplane-e2e-sync-'));
    dirs.push(dir);
    const SIZE = 8 << 20;
    const img = join(dir, 'disk.raw');
    await RawFileBackend.create(img, SIZE);
    const backend = await RawFileBackend.open(img, { engine: 'sync' });
    const sab = new SharedArrayBuffer(16 << 20);
    const mem = new GuestMemory([{ gpa: 0, backing: sab }]);
    const bells = new Int32Array(new SharedArrayBuffer(4 * 3));
    const kicks = [new Doorbell(bells, 0)];
    const irq = new Doorbell(bells, 1);
    const errors: VirtioError[] = [];
    // A 20 ms budget: long enough that the guest's next requests usually land while the device polls.
    const device = new VirtioBlkDevice({ mem, backend, pollNs: 20_000_000, maxBatch: 4, interrupts: { queue: () => irq.ring(), config: () => {} }, onGuestError: (e) => errors.push(e) });
    const expected = new Uint8Array(SIZE);
    const writes: [number, number, number][] = [];
    let x = 777;
    const rnd = (n: number): number => {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      return (x >>> 8) % n;
    };
    for (let i = 0; i < 150; i++) {
      const len = (1 + rnd(64)) * 512;
      const sector = rnd((SIZE - len) / 512);
      writes.push([sector, len, i + 1]);
    }
    for (const [sector, len, seed] of writes) expected.set(pattern(len, seed), sector * 512);
    const zeroes: [number, number, boolean][] = [[4096, 64, true]];
    for (const [sector, count] of zeroes) expected.fill(0, sector * 512, (sector + count) * 512);
    try {
      const done = await runGuest({ sab, bells, numQueues: 1, writes, zeroes, packed: false, depth: 8 }, device, kicks);
      expect(Buffer.from(done.image).equals(Buffer.from(expected))).toBe(true);
      expect(errors.map((e) => e.message)).toEqual([]);
      // The device did poll (whether each poll found work depends on the guest thread's timing).
      expect(device.blkStats.pollHits + device.blkStats.pollMisses).toBeGreaterThan(0);
    } finally {
      await backend.close();
    }
    expect(Buffer.from(readFileSync(img)).equals(Buffer.from(expected))).toBe(true);
  });
});

describe('end to end: a hostile guest breaks its ring', () => {
  it('the device sets DEVICE_NEEDS_RESET, its config interrupt crosses threads, the driver fails its requests', async () => {
    const mem = GuestMemory.create(16 << 20);
    const sab = mem.regions[0]!.bytes.buffer as SharedArrayBuffer;
    const bells = new Int32Array(new SharedArrayBuffer(4 * 3));
    const kicks = [new Doorbell(bells, 0)];
    const irq = new Doorbell(bells, 1);
    const cfg = new Doorbell(bells, 2);
    const errors: VirtioError[] = [];
    const backend = new MemoryBackend({ size: 1 << 20 });
    const device = new VirtioBlkDevice({ mem, backend, interrupts: { queue: () => irq.ring(), config: () => cfg.ring() }, onGuestError: (e) => errors.push(e) });
    const done = await runGuest<{ outcome: string }>({ sab, bells, numQueues: 1, writes: [], zeroes: [], packed: false, depth: 1, mode: 'corrupt' }, device, kicks);
    expect(done.outcome).toBe('device-needs-reset');
    expect(errors.some((e) => e.kind === 'queue-broken' && e.details.virtqueueKind === 'avail-index-ahead')).toBe(true);
    expect(device.stats.configInterrupts).toBe(1);
  });
});
