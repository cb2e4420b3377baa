// One side of a two-thread benchmark pair; told what to be by workerData.
import { parentPort, workerData } from 'node:worker_threads';
import { GuestMemory } from '@ioplane/guest-memory';
import { BufferList, Doorbell, type RingFeatures, type UsedBuffer, createDeviceQueue, createDriverQueue, layoutQueue } from '../src/index.js';
import { SpscRing, spscBytes } from './spsc.js';

interface Setup {
  role: 'driver' | 'device' | 'producer' | 'consumer';
  sab: SharedArrayBuffer;
  features: RingFeatures;
  size: number;
  bells: Int32Array; // [0] kick (to device / consumer), [1] irq (to driver / producer)
  /** Most buffers either side handles before it publishes (and maybe notifies). */
  batch: number;
}

const SPIN = 2000;
const { role, sab, features, size, bells, batch: BATCH } = workerData as Setup;
const kick = new Doorbell(bells, 0);
const irq = new Doorbell(bells, 1);
const port = parentPort!;
/** VQ_STATS=1 prints, per run and side, how often it published, slept, and overslept. */
const stats = { sleeps: 0, batches: 0, timeouts: 0 };

function runDriver(n: number): number {
  const mem = new GuestMemory([{ gpa: 0, backing: sab }]);
  const { config } = layoutQueue(features.packed, size, 0x1000);
  const drv = createDriverQueue<number>(mem, config, features);
  port.postMessage({ type: 'ring-ready' });
  const list = new BufferList().push(0x100000, 64, false);
  const out: UsedBuffer<number> = { token: undefined, len: 0 };
  const t0 = process.hrtime.bigint();
  let sent = 0;
  let done = 0;
  let idle = 0;
  drv.disableInterrupts();
  while (done < n) {
    let added = 0;
    while (added < BATCH && sent < n && drv.add(list, sent)) {
      sent++;
      added++;
    }
    if (added > 0) {
      drv.publish();
      stats.batches++;
      if (drv.needsNotify()) kick.ring();
    }
    let got = 0;
    while (drv.pollUsed(out)) got++;
    done += got;
    if (got === 0 && added === 0) {
      if (++idle < SPIN) continue;
      const seen = irq.count;
      if (!drv.enableInterrupts()) {
        stats.sleeps++;
        if (irq.wait(seen, 50) === 'timed-out') stats.timeouts++;
      }
      drv.disableInterrupts();
    }
    idle = 0;
  }
  return Number(process.hrtime.bigint() - t0);
}

function runDevice(n: number): void {
  const mem = new GuestMemory([{ gpa: 0, backing: sab }]);
  const { config } = layoutQueue(features.packed, size, 0x1000);
  const dev = createDeviceQueue(mem, config, features);
  const chain = dev.createChain();
  let done = 0;
  let idle = 0;
  dev.disableNotifications();
  while (done < n) {
    let k = 0;
    while (k < BATCH && dev.pop(chain)) {
      // IN_ORDER: one used entry stands for the whole batch (VirtIO 1.2 §2.7.9).
      if (features.inOrder) dev.pushUsedInOrder(chain);
      else dev.pushUsed(chain, 0);
      k++;
    }
    if (k > 0) {
      done += k;
      dev.publishUsed();
      stats.batches++;
      if (dev.needsInterrupt()) irq.ring();
      idle = 0;
      continue;
    }
    if (++idle < SPIN) continue;
    const seen = kick.count;
    if (!dev.enableNotifications()) {
      stats.sleeps++;
      if (kick.wait(seen, 50) === 'timed-out') stats.timeouts++;
    }
    dev.disableNotifications();
    idle = 0;
  }
}

// Bare rings: forward (producer → consumer) at 0, back (consumer → producer) after it.
function rings(): { fwd: SpscRing; back: SpscRing } {
  return { fwd: new SpscRing(sab, 0, size), back: new SpscRing(sab, spscBytes(size), size) };
}

function runProducer(n: number): number {
  const { fwd, back } = rings();
  const t0 = process.hrtime.bigint();
  let sent = 0;
  let done = 0;
  let idle = 0;
  while (done < n) {
    let added = 0;
    // At most a ring's worth in flight, as a virtqueue driver is limited by its ring.
    while (added < BATCH && sent < n && sent - done < size && fwd.push(sent)) {
      sent++;
      added++;
    }
    if (added > 0) {
      fwd.publish();
      if (fwd.consumerSleeping()) kick.ring();
    }
    let got = 0;
    while (back.pop() >= 0) got++;
    if (got > 0) back.release();
    done += got;
    if (got === 0 && added === 0) {
      if (++idle < SPIN) continue;
      const seen = irq.count;
      if (!back.prepareSleep()) irq.wait(seen, 50);
      back.wake();
    }
    idle = 0;
  }
  return Number(process.hrtime.bigint() - t0);
}

function runConsumer(n: number): void {
  const { fwd, back } = rings();
  let done = 0;
  let idle = 0;
  while (done < n) {
    let k = 0;
    let v: number;
    while (k < BATCH && (v = fwd.pop()) >= 0) {
      // The producer keeps at most `size` tokens in flight, so the back ring has room.
      back.push(v);
      k++;
    }
    if (k > 0) {
      fwd.release();
      back.publish();
      if (back.consumerSleeping()) irq.ring();
      done += k;
      idle = 0;
      continue;
    }
    if (++idle < SPIN) continue;
    const seen = kick.count;
    if (!fwd.prepareSleep()) kick.wait(seen, 50);
    fwd.wake();
    idle = 0;
  }
}

port.on('message', (m: { n: number }) => {
  if (process.env.VQ_STATS && stats.batches > 0) console.error(role, JSON.stringify(stats), 'bells', bells[0], bells[1]);
  stats.sleeps = 0;
  stats.batches = 0;
  stats.timeouts = 0;
  switch (role) {
    case 'driver':
      port.postMessage({ type: 'done', ns: runDriver(m.n) });
      break;
    case 'device':
      runDevice(m.n);
      port.postMessage({ type: 'done' });
      break;
    case 'producer':
      port.postMessage({ type: 'done', ns: runProducer(m.n) });
      break;
    case 'consumer':
      runConsumer(m.n);
      port.postMessage({ type: 'done' });
      break;
  }
});
port.postMessage({ type: 'up' });
