// The simulated guest: a virtio driver in its own thread, over shared memory.
import { parentPort, workerData } from 'node:worker_threads';
import { GuestMemory } from '@ioplane/guest-memory';
import { BufferList, Doorbell, type UsedBuffer, createDriverQueue, layoutQueue } from '@ioplane/virtqueue';
import { DATA_BASE, type GuestSetup, INDIRECT_BASE, PAYLOAD_BYTES, RING_BASE, SLOT_BYTES, fnv1a } from './protocol.js';

const setup = workerData as GuestSetup;
const mem = new GuestMemory([{ gpa: 0, backing: setup.sab }]);
const { config } = layoutQueue(setup.features.packed, setup.queueSize, RING_BASE);
const driver = createDriverQueue<number>(mem, config, setup.features, { indirectArea: { addr: INDIRECT_BASE, maxIndirect: 4 } });
const kick = new Doorbell(setup.bells, 0);
const irq = new Doorbell(setup.bells, 1);
parentPort!.postMessage({ type: 'ready', config });

const list = new BufferList();
const used: UsedBuffer<number> = { token: undefined, len: 0 };
const reply = new Uint8Array(4);
let sent = 0;
let completed = 0;
let mismatches = 0;
let kicks = 0;
let sleeps = 0;
let idle = 0;
const expected = new Uint32Array(setup.queueSize);
const t0 = process.hrtime.bigint();
const deadline = Date.now() + 60_000;
driver.disableInterrupts();
while (completed < setup.chains && Date.now() < deadline) {
  let added = 0;
  while (sent < setup.chains && driver.inFlight < setup.queueSize) {
    const slot = sent % setup.queueSize;
    const at = DATA_BASE + slot * SLOT_BYTES;
    const payload = mem.view(at, PAYLOAD_BYTES, 'write');
    for (let i = 0; i < PAYLOAD_BYTES; i += 4) payload[i] = (sent + i) & 0xff;
    expected[slot] = fnv1a(payload);
    // A request: a readable payload in two segments, a writable 4-byte reply.
    list.clear().push(at, 64, false).push(at + 64, PAYLOAD_BYTES - 64, false).push(at + PAYLOAD_BYTES, 4, true);
    if (!driver.add(list, sent)) break;
    sent++;
    added++;
  }
  if (added > 0) {
    driver.publish();
    if (driver.needsNotify()) {
      kick.ring();
      kicks++;
    }
  }
  let got = 0;
  while (driver.pollUsed(used)) {
    const slot = used.token! % setup.queueSize;
    mem.readInto(DATA_BASE + slot * SLOT_BYTES + PAYLOAD_BYTES, reply);
    const sum = new DataView(reply.buffer).getUint32(0, true);
    if (used.len !== 4 || sum !== expected[slot]) mismatches++;
    completed++;
    got++;
  }
  if (got > 0 || added > 0) {
    idle = 0;
    continue;
  }
  if (++idle < 1000) continue;
  const seen = irq.count;
  if (!driver.enableInterrupts()) {
    sleeps++;
    irq.wait(seen, 100);
  }
  driver.disableInterrupts();
  idle = 0;
}
parentPort!.postMessage({ type: 'done', completed, mismatches, kicks, sleeps, ns: Number(process.hrtime.bigint() - t0) });
