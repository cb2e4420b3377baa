import { Worker } from 'node:worker_threads';
import { GuestMemory } from '@ioplane/guest-memory';
import { describe, expect, it } from 'vitest';
import { QI_REG, VtdInvalidationQueue, VtdQiRegisters, VtdRemapper } from '../src/index.js';
import { fault } from './vtd-helpers.js';

const BOOT = new URL('./fixtures/ts-worker.mjs', import.meta.url);
const ENTRY = new URL('./fixtures/qi-guest.ts', import.meta.url).href;
// The worker runs TypeScript source: tsx as a loader, and our source condition.
const EXEC_ARGV = ['--conditions=@ioplane/source'];
const PAGE = 4096;
const SID = 0x0108;
const DATA = 0x10000;
const RAM = 0x100000;
/** Every wait in this file is bounded by this. */
const BOUND_MS = 20_000;

type Message = { type: string; iova?: number; iovas?: number[]; head?: number; waits?: number };

/** The worker's messages, in order; `next(type)` waits (bounded) for the next one of that type. */
function inbox(worker: Worker) {
  const got: Message[] = [];
  let wake: (() => void) | undefined;
  let failure: Error | undefined;
  worker.on('message', (m: Message) => {
    got.push(m);
    wake?.();
  });
  worker.on('error', (e: Error) => {
    failure = e;
    wake?.();
  });
  worker.on('exit', (code) => {
    failure ??= new Error(`the guest worker exited (code ${code})`);
    wake?.();
  });
  return {
    seen: (type: string) => got.some((m) => m.type === type),
    async next(type: string): Promise<Message> {
      const deadline = Date.now() + BOUND_MS;
      for (;;) {
        const i = got.findIndex((m) => m.type === type);
        if (i >= 0) return got.splice(i, 1)[0]!;
        if (failure !== undefined) throw failure;
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no "${type}" message from the guest worker within ${BOUND_MS} ms`);
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, Math.min(left, 100));
          wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
        wake = undefined;
      }
    },
  };
}


describe('VT-d queued invalidation across two threads', () => {
  it('a strict unmap in the guest worker returns only after the device thread processed it; then the device faults; a deferred batch is posted without waiting and takes effect when the unit runs', async () => {
    const ram = GuestMemory.create(RAM);
    for (let i = 0; i < 0x10000; i += 4) ram.writeU32(DATA + i, (DATA + i) >>> 0);
    const vtd = new VtdRemapper({ memory: ram });
    const regs = VtdQiRegisters.create();
    const q = new VtdInvalidationQueue(vtd, ram, regs);
    const dma = vtd.dmaMemory(SID, ram);
    q.serve(5);
    const worker = new Worker(BOOT, {
      execArgv: EXEC_ARGV,
      workerData: { __entry: ENTRY, sab: ram.regions[0]!.bytes.buffer, regs: regs.array, sid: SID, data: DATA, tables: { addr: 0x80000, len: 0x40000 }, queue: 0xc0000, status: 0xc2000 },
    });
    const box = inbox(worker);
    try {
      const { iova } = await box.next('mapped');
      // The guest enabled the queue and set the root table through the registers; the device reads the buffer (now in its IOTLB).
      expect(q.queueEnabled).toBe(true);
      expect(vtd.translationEnabled).toBe(true);
      expect(dma.readU32(iova!)).toBe(DATA);

      // The device thread stops serving: the guest's unmap must now wait for us.
      await q.stop();
      const bell = regs.bell;
      const processed = q.stats.descriptors;
      worker.postMessage({ type: 'unmap' });
      const deadline = Date.now() + BOUND_MS;
      while (regs.bell === bell && Date.now() < deadline) {
        const w = Atomics.waitAsync(regs.array, QI_REG.BELL, bell, 100);
        if (w.async) await w.value;
      }
      expect(regs.bell).not.toBe(bell);
      // Give a guest that did not wait every chance to report back early.
      await new Promise((r) => setTimeout(r, 50));
      expect(box.seen('unmapped')).toBe(false);
      // Past its spin it sleeps on the status dword, counted in SLEEPERS (its slices are 20 s long:
      // only the unit's wake brings it back within the bound below).
      while (Atomics.load(regs.array, QI_REG.SLEEPERS) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      expect(Atomics.load(regs.array, QI_REG.SLEEPERS)).toBe(1);
      // The leaf entry is cleared in guest memory, but nothing was invalidated: the IOTLB still serves the IOVA.
      expect(dma.readU32(iova!)).toBe(DATA);
      expect(q.stats.descriptors).toBe(processed);

      // Process the PSI and the wait: the guest's call returns, and the device faults.
      expect(q.process()).toBe(2);
      const woken = Date.now();
      const done = await box.next('unmapped');
      expect(Date.now() - woken).toBeLessThan(10_000);
      expect(Atomics.load(regs.array, QI_REG.SLEEPERS)).toBe(0);
      expect(done.head).toBe(regs.head);
      expect(fault(() => dma.readU32(iova!))).toBe('vtd-read');

      // Deferred: unmaps are batched; the batch's invalidations cross when it is full.
      q.serve(5);
      worker.postMessage({ type: 'deferred', count: 4 });
      const { iovas } = await box.next('deferred-mapped');
      for (let i = 0; i < 4; i++) expect(dma.readU32(iovas![i]!)).toBe(DATA + i * PAGE);
      const before = { inv: vtd.stats.iotlbInvalidations, waits: q.stats.waits };
      worker.postMessage({ type: 'unmap-some', count: 3 });
      await box.next('unmapped-some');
      // Within the deferred bound: nothing was sent, the device still reaches all four.
      expect(vtd.stats.iotlbInvalidations).toBe(before.inv);
      expect(q.stats.waits).toBe(before.waits);
      for (let i = 0; i < 4; i++) expect(dma.readU32(iovas![i]!)).toBe(DATA + i * PAGE);
      // The fourth unmap fills the batch, which is posted, not waited for: it returns with the unit stopped.
      await q.stop();
      worker.postMessage({ type: 'unmap-some', count: 1 });
      await box.next('unmapped-some');
      expect(q.stats.waits).toBe(before.waits);
      for (let i = 0; i < 4; i++) expect(dma.readU32(iovas![i]!)).toBe(DATA + i * PAGE);
      // Once the unit takes up the page-selective invalidations of the batch's run (the aligned
      // blocks that cover it exactly) and their wait, the device faults.
      const taken = q.process();
      expect(taken).toBeGreaterThanOrEqual(2);
      expect(vtd.stats.iotlbInvalidations).toBe(before.inv + taken - 1);
      expect(q.stats.waits).toBe(before.waits + 1);
      for (let i = 0; i < 4; i++) expect(fault(() => dma.readU32(iovas![i]!))).toBe('vtd-read');
      expect(q.error).toBeUndefined();
    } finally {
      await q.stop();
      await worker.terminate();
    }
  });
});
