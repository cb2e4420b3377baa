// The simulated guest of the end-to-end test: a virtio-blk driver in its own
// thread over shared guest memory, reaching the device (in another thread)
// through a MessagePort for control and Doorbells for kicks and interrupts.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { GuestMemory } from '@ioplane/guest-memory';
import { Doorbell } from '@ioplane/virtqueue';
import { HaltPollGovernor, MessagePortTransport, VirtioBlkDriver } from '../src/index.js';

export interface E2eGuestSetup {
  sab: SharedArrayBuffer;
  bells: Int32Array;
  numQueues: number;
  port: MessagePort;
  /** Writes to issue: [sector, length in bytes, pattern seed]. */
  writes: [number, number, number][];
  /** Zeroed ranges: [sector, count, discard?] */
  zeroes: [number, number, boolean][];
  packed: boolean;
  depth: number;
  /** The guest thread halt-polls (one HaltPollGovernor for all its queues) instead of sleeping at once. */
  haltPoll?: boolean;
  /** 'corrupt': after set-up, break the available ring as a hostile guest would and report what the driver saw. */
  mode?: 'io' | 'corrupt';
}

const setup = workerData as E2eGuestSetup;
const mem = new GuestMemory([{ gpa: 0, backing: setup.sab }]);
const kicks = Array.from({ length: setup.numQueues }, (_, q) => new Doorbell(setup.bells, q));
const irqs = Array.from({ length: setup.numQueues }, (_, q) => new Doorbell(setup.bells, setup.numQueues + q));
const configBell = new Doorbell(setup.bells, 2 * setup.numQueues);
const transport = new MessagePortTransport(setup.port, kicks);
const AREA = { addr: 0x10000, len: 4 << 20 };
const DATA = 8 << 20;
const SLOT = 256 << 10;

function fillPattern(addr: number, len: number, seed: number): void {
  const v = mem.view(addr, len, 'write');
  let x = (seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < len; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    v[i] = x >>> 24;
  }
}

async function corrupt(): Promise<void> {
  const driver = await VirtioBlkDriver.create({ transport, mem, area: AREA, ring: { packed: false }, queueSize: 256 });
  const listening = driver.listen(irqs, { configBell });
  await driver.read(0, DATA, 512);
  // The split ring of queue 0 sits at the start of the driver's area: descriptors, then the
  // available ring (flags, idx). An index 1000 ahead breaks §2.7.6.
  const availIdx = AREA.addr + 16 * 256 + 2;
  mem.writeU16(availIdx, mem.readU16(availIdx) + 1000);
  transport.notify(0);
  // Let the device see it before the driver publishes again (which would rewrite the index).
  const deadline = Date.now() + 10_000;
  while (((await transport.status()) & 0x40) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
  const outcome = await Promise.race([
    driver.read(0, DATA, 512).then(
      () => 'completed',
      (e: unknown) => (e instanceof Error ? `${(e as { kind?: string }).kind}` : String(e)),
    ),
    new Promise<string>((r) => setTimeout(() => r('no answer in 10 s'), 10_000)),
  ]);
  await driver.close();
  await listening;
  transport.close();
  parentPort!.postMessage({ type: 'corrupt', outcome });
}

async function main(): Promise<void> {
  if (setup.mode === 'corrupt') return corrupt();
  const driver = await VirtioBlkDriver.create({ transport, mem, area: AREA, ring: { packed: setup.packed } });
  const haltPoll = setup.haltPoll === true ? new HaltPollGovernor() : undefined;
  const listening = driver.listen(irqs, { configBell, haltPoll });
  // Writes at queue depth `depth`, over every queue (round robin), out of order as the device completes them.
  let next = 0;
  const worker = async (slot: number): Promise<void> => {
    while (next < setup.writes.length) {
      const [sector, len, seed] = setup.writes[next++]!;
      const at = DATA + slot * SLOT;
      fillPattern(at, len, seed);
      // Two segments, to exercise scatter-gather.
      const half = Math.floor(len / 1024) * 512;
      await driver.writev(sector, half > 0 ? [{ addr: at, len: half }, { addr: at + half, len: len - half }] : [{ addr: at, len }]);
    }
  };
  await Promise.all(Array.from({ length: setup.depth }, (_, s) => worker(s)));
  for (const [sector, count, discard] of setup.zeroes) {
    if (discard) await driver.discard([{ sector, count }]);
    else await driver.writeZeroes([{ sector, count }], true);
  }
  await driver.flush();
  // Read everything written back and hand it to the test thread.
  const capacity = driver.info.capacitySectors * 512;
  const image = new Uint8Array(capacity);
  const CH = 128 << 10;
  const reads: Promise<void>[] = [];
  for (let off = 0, i = 0; off < capacity; off += CH, i++) {
    const at = DATA + (i % 32) * CH;
    if (i % 32 === 0) await Promise.all(reads.splice(0));
    reads.push(driver.read(off / 512, at, CH).then(() => image.set(mem.view(at, CH, 'read'), off)));
  }
  await Promise.all(reads);
  const id = await driver.getId();
  await driver.close();
  await listening;
  transport.close();
  parentPort!.postMessage({ type: 'done', image, id, info: { ...driver.info, features: driver.info.features.toString(16) }, haltPoll: haltPoll?.stats }, [image.buffer]);
}

main().catch((e: unknown) => {
  parentPort!.postMessage({ type: 'error', message: e instanceof Error ? `${e.name}: ${e.message}\n${e.stack}` : String(e) });
});
