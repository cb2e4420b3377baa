import { GuestMemory } from '@ioplane/guest-memory';
import { Doorbell, type QueueConfig, type RingFeatures, VirtqueueError, createDeviceQueue } from '@ioplane/virtqueue';
import { type GuestReady, type GuestReport, MEMORY_BYTES, PAYLOAD_BYTES, fnv1a } from './protocol.js';
import { spawnWorker } from './spawn.js';

export interface DemoOptions {
  features: RingFeatures;
  queueSize: number;
  chains: number;
}

export interface DemoResult {
  format: 'split' | 'packed';
  chains: number;
  seconds: number;
  chainsPerSecond: number;
  mismatches: number;
  kicks: number;
  interrupts: number;
  guestSleeps: number;
  deviceSleeps: number;
  error?: string;
}

/**
 * One run of the demo: a guest (worker thread) sends checksum requests over
 * one virtqueue; this thread is the device: it pops each chain, computes
 * FNV-1a over the readable payload, writes it to the writable reply and
 * completes it, interrupting the guest only when it asks to be.
 */
export async function runDemo(opts: DemoOptions): Promise<DemoResult> {
  const sab = new SharedArrayBuffer(MEMORY_BYTES);
  const mem = new GuestMemory([{ gpa: 0, backing: sab }]);
  const bells = new Int32Array(new SharedArrayBuffer(8));
  const kick = new Doorbell(bells, 0);
  const irq = new Doorbell(bells, 1);
  const guest = spawnWorker('guest-worker', { workerData: { sab, features: opts.features, queueSize: opts.queueSize, chains: opts.chains, bells } });
  const format = opts.features.packed ? 'packed' : 'split';
  try {
    const messages: (GuestReady | GuestReport)[] = [];
    let wake: (() => void) | undefined;
    let failure: Error | undefined;
    guest.on('message', (m: GuestReady | GuestReport) => {
      messages.push(m);
      wake?.();
    });
    guest.on('error', (e: Error) => {
      failure = e;
      wake?.();
    });
    const nextMessage = async (): Promise<GuestReady | GuestReport> => {
      const deadline = Date.now() + 30_000;
      while (messages.length === 0) {
        if (failure) throw failure;
        if (Date.now() > deadline) throw new Error('the guest did not answer within 30 s');
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 100);
        });
      }
      return messages.shift()!;
    };
    const ready = (await nextMessage()) as GuestReady;
    const config: QueueConfig = ready.config;
    const device = createDeviceQueue(mem, config, opts.features);
    const chain = device.createChain();
    const payload = new Uint8Array(PAYLOAD_BYTES);
    const reply = new Uint8Array(4);
    const replyView = new DataView(reply.buffer);
    let interrupts = 0;
    let deviceSleeps = 0;
    let done = 0;
    let idle = 0;
    let error: string | undefined;
    device.disableNotifications();
    while (done < opts.chains && messages.length === 0 && !failure) {
      let n = 0;
      try {
        while (device.pop(chain)) {
          const len = Math.min(chain.readableBytes, PAYLOAD_BYTES);
          chain.readInto(mem, 0, payload.subarray(0, len));
          replyView.setUint32(0, fnv1a(payload.subarray(0, len)), true);
          device.pushUsed(chain, chain.writeFrom(mem, 0, reply));
          n++;
        }
      } catch (e) {
        // A malformed ring stops this queue (the device would set NEEDS_RESET); the demo reports it.
        if (!(e instanceof VirtqueueError)) throw e;
        error = `${e.kind}: ${e.message}`;
        break;
      }
      if (n > 0) {
        done += n;
        device.publishUsed();
        if (device.needsInterrupt()) {
          irq.ring();
          interrupts++;
        }
        idle = 0;
        continue;
      }
      if (++idle < 1000) continue;
      idle = 0;
      const seen = kick.count;
      if (!device.enableNotifications()) {
        deviceSleeps++;
        await kick.waitAsync(seen, 100);
      }
      device.disableNotifications();
    }
    const report = (await nextMessage()) as GuestReport;
    const seconds = report.ns / 1e9;
    return {
      format,
      chains: report.completed,
      seconds,
      chainsPerSecond: report.completed / seconds,
      mismatches: report.mismatches,
      kicks: report.kicks,
      interrupts,
      guestSleeps: report.sleeps,
      deviceSleeps,
      ...(error === undefined ? {} : { error }),
    };
  } finally {
    await guest.terminate();
  }
}
