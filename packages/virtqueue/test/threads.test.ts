import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '@ioplane/guest-memory';
import { Doorbell, type QueueConfig, type RingFeatures, createDeviceQueue } from '../src/index.js';

const BOOT = new URL('./fixtures/ts-worker.mjs', import.meta.url);
const ENTRY = new URL('./fixtures/driver-worker.ts', import.meta.url).href;
// The worker runs TypeScript source: tsx as a loader, and our source condition.
const EXEC_ARGV = ['--conditions=@ioplane/source'];

async function exchange(features: RingFeatures, size: number, count: number): Promise<{ done: number; bad: number; kicks: number; irqs: number }> {
  const sab = new SharedArrayBuffer(1 << 20);
  const mem = new GuestMemory([{ gpa: 0, backing: sab }]);
  const kick = new Doorbell();
  const irq = new Doorbell();
  const worker = new Worker(BOOT, {
    execArgv: EXEC_ARGV,
    workerData: { __entry: ENTRY, sab, features, size, count, kick: kick.array, irq: irq.array, dataBase: 0x40000 },
  });
  try {
    const ready = await new Promise<QueueConfig>((resolve, reject) => {
      worker.once('message', (m: { config: QueueConfig }) => resolve(m.config));
      worker.once('error', reject);
    });
    const result = new Promise<{ done: number; bad: number; kicks: number }>((resolve, reject) => {
      worker.on('message', (m: { type: string; done: number; bad: number; kicks: number }) => {
        if (m.type === 'done') resolve(m);
      });
      worker.once('error', reject);
    });
    let finished = false;
    void result.then(() => {
      finished = true;
    });
    const dev = createDeviceQueue(mem, ready, features);
    const chain = dev.createChain();
    const word = new Uint8Array(4);
    const reply = new Uint8Array(8);
    const replyView = new DataView(reply.buffer);
    let irqs = 0;
    const deadline = Date.now() + 20_000;
    while (!finished && Date.now() < deadline) {
      const seen = kick.count;
      let n = 0;
      dev.disableNotifications();
      while (dev.pop(chain)) {
        chain.readInto(mem, 0, word);
        const seq = new DataView(word.buffer).getUint32(0, true);
        replyView.setUint32(0, seq * 2, true);
        replyView.setUint32(4, 0xc0ffee, true);
        chain.writeFrom(mem, 0, reply);
        dev.pushUsed(chain, 8);
        n++;
      }
      if (n > 0) {
        dev.publishUsed();
        if (dev.needsInterrupt()) {
          irq.ring();
          irqs++;
        }
      } else if (!dev.enableNotifications()) {
        await kick.waitAsync(seen, 50);
      }
    }
    const r = await result;
    return { ...r, irqs };
  } finally {
    await worker.terminate();
  }
}

describe('driver and device in two threads over one SharedArrayBuffer', () => {
  for (const packed of [false, true]) {
    for (const eventIdx of [false, true]) {
      it(`moves 20000 chains intact (${packed ? 'packed' : 'split'}${eventIdx ? ', EVENT_IDX' : ''})`, async () => {
        const r = await exchange({ packed, eventIdx, indirect: true, inOrder: false }, 64, 20_000);
        expect(r.bad).toBe(0);
        expect(r.done).toBe(20_000);
      });
    }
  }
});
