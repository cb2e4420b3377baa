// The guest half of bench/qi.ts: strict map + unmap pairs whose invalidations cross to the device thread.
import { parentPort, workerData } from 'node:worker_threads';
import { GuestMemory } from '@ioplane/guest-memory';
import { VtdGuestDriver, VtdQiRegisters, VtdQueuedInvalidator } from '../src/index.js';

interface Input {
  sab: SharedArrayBuffer;
  regs: Int32Array;
  flag: Int32Array;
  ops: number;
}

const { sab, regs, flag, ops } = workerData as Input;
const mem = new GuestMemory([{ gpa: 0, backing: sab }]);
const inv = new VtdQueuedInvalidator({ mem, regs: new VtdQiRegisters(regs), queue: { addr: 0xc0000 }, status: 0xc2000, timeoutMs: 30_000 });
const driver = new VtdGuestDriver({ unit: inv, mem, area: { addr: 0x80000, len: 0x40000 } });
const dom = driver.attach(0x0108, { mode: 'strict' });
const keep = dom.map(0x10000, 4096, 'bidirectional');
parentPort!.postMessage({ type: 'ready', keep });
parentPort!.once('message', () => {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < ops; i++) dom.unmap(dom.map(0x10000 + (i & 63) * 4096, 4096, 'bidirectional'));
  const ns = Number(process.hrtime.bigint() - t0) / ops;
  Atomics.store(flag, 0, 1);
  Atomics.notify(flag, 0);
  parentPort!.postMessage({ type: 'done', ns });
});
