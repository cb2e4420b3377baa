import { MessageChannel, Worker } from 'node:worker_threads';
import { GuestMemory } from '@ioplane/guest-memory';
import { DmaFault, VIRTIO_IOMMU_FAULT_R_MAPPING } from '@ioplane/viommu';
import { Doorbell } from '@ioplane/virtqueue';
import { describe, expect, it } from 'vitest';
import { DirectTransport, VirtioIommuDevice, VirtioIommuDriver, serveTransport, type VirtioError } from '../src/index.js';
import type { IommuGuestMessage, IommuGuestSetup } from './iommu-guest-worker.js';

describe('virtio-iommu with the guest driver in another thread (requestIrq)', () => {
  it('maps and unmaps across threads in each mode, with the device side seeing each change when the call returns; a request never answered times out', async () => {
    const sab = new SharedArrayBuffer(4 << 20);
    const mem = new GuestMemory([{ gpa: 0, backing: sab }]);
    const bells = new Int32Array(new SharedArrayBuffer(4 * 5));
    const kicks = [new Doorbell(bells, 0), new Doorbell(bells, 1)];
    const irqs = [new Doorbell(bells, 2), new Doorbell(bells, 3)];
    const gate = new Doorbell(bells, 4);
    const errors: VirtioError[] = [];
    const dev = new VirtioIommuDevice({ mem, interrupts: { queue: (q) => irqs[q]?.ring(), config: () => undefined }, onGuestError: (e) => errors.push(e) });
    const steps: IommuGuestSetup['steps'] = [
      { mode: 'strict', endpoint: 8, gpa: 0x20_0000 },
      { mode: 'deferred', endpoint: 16, gpa: 0x21_0000 },
      { mode: 'optimistic', endpoint: 24, gpa: 0x22_0000 },
    ];
    for (const s of steps) dev.iommu.addEndpoint(s.endpoint);
    dev.iommu.addEndpoint(9);
    const { port1, port2 } = new MessageChannel();
    const served = serveTransport(dev, port1, kicks);
    const setup: Omit<IommuGuestSetup, 'port'> & { __entry: string } = { sab, bells, area: 0x10000, steps, __entry: new URL('./iommu-guest-worker.ts', import.meta.url).href };
    const worker = new Worker(new URL('./ts-worker.mjs', import.meta.url), { execArgv: ['--conditions=@ioplane/source'], workerData: { ...setup, port: port2 }, transferList: [port2] });
    const seen: string[] = [];
    const faulted: string[] = [];
    let stopped = false;
    try {
      const done = await new Promise<Extract<IommuGuestMessage, { type: 'done' }>>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`the guest did not finish within 30 s (saw ${seen.join(', ')})`)), 30_000);
        worker.on('error', (e) => {
          clearTimeout(timer);
          reject(e);
        });
        worker.on('message', (m: IommuGuestMessage) => {
          void (async () => {
            seen.push(m.type);
            if (m.type === 'error') throw new Error(`guest: ${m.message}`);
            if (m.type === 'done') {
              clearTimeout(timer);
              resolve(m);
              return;
            }
            const dma = dev.iommu.dmaMemory(m.endpoint, mem);
            const s = steps.find((x) => x.endpoint === m.endpoint)!;
            if (m.type === 'mapped') {
              mem.writeU8(s.gpa + 7, 0x5a);
              // The MAP was answered before map() returned on the other thread: the device reaches the buffer.
              expect(dma.readU8(m.iova + 7)).toBe(0x5a);
              dma.writeU8(m.iova + 8, 0xa5);
              expect(mem.readU8(s.gpa + 8)).toBe(0xa5);
            } else {
              // Strict: revoked when unmap() returned; deferred and optimistic: when flush() returned.
              expect(() => dma.readU8(m.iova + 7)).toThrow(DmaFault);
              faulted.push(`0x${(m.iova + 7).toString(16)}`);
              if (m.endpoint === steps[steps.length - 1]!.endpoint) {
                // Stop serving kicks: the guest's next request is never answered.
                await served.stop();
                stopped = true;
              }
            }
            gate.ring();
          })().catch((e: unknown) => {
            clearTimeout(timer);
            reject(e instanceof Error ? e : new Error(String(e)));
          });
        });
      });
      expect(seen).toEqual(['mapped', 'unmapped', 'mapped', 'unmapped', 'mapped', 'unmapped', 'done']);
      expect(done.lateError).toMatch(/not answered within 200 ms/);
      // ATTACH, MAP and UNMAP for each mode, all answered through the used ring across threads.
      expect(done.requests).toBeGreaterThanOrEqual(9);
      // Each access after an unmap was reported on the event queue and reached the guest's listener.
      expect(done.faults.map((f) => f.endpoint)).toEqual(steps.map((s) => s.endpoint));
      expect(done.faults.map((f) => f.address)).toEqual(faulted);
      for (const f of done.faults) expect(f.reason).toBe(VIRTIO_IOMMU_FAULT_R_MAPPING);
      expect(errors).toEqual([]);
    } finally {
      await worker.terminate();
      if (!stopped) await served.stop();
    }
  });

  it('throws once after answerTimeoutMs when the device never answers, and refuses every later request', async () => {
    const mem = GuestMemory.create(4 << 20);
    const dev = new VirtioIommuDevice({ mem, interrupts: { queue: () => undefined, config: () => undefined } });
    dev.iommu.addEndpoint(8);
    const direct = new DirectTransport(dev);
    // Control goes through; the request queue's kicks are dropped after set-up.
    let deaf = false;
    const transport = new Proxy(direct, {
      get(t, k, r) {
        if (k === 'notify') return (q: number) => (deaf && q === 0 ? undefined : t.notify(q));
        const v: unknown = Reflect.get(t, k, r);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
      },
    });
    let now = 0;
    const irq = new Doorbell();
    const drv = await VirtioIommuDriver.create({ transport, mem, area: { addr: 0x10000, len: VirtioIommuDriver.areaSize() }, requestIrq: irq, answerSpinUs: 0, answerTimeoutMs: 20, clock: () => now });
    const domain = drv.iommu.attach(8, { mode: 'strict' });
    deaf = true;
    now = 5;
    // The clock stands still: the doorbell's own timed wait ends it (20 ms of real time).
    expect(() => domain.map(0x20_0000, 4096, 'to-device')).toThrow(/1 of 1 virtio-iommu request\(s\) not answered within 20 ms/);
    deaf = false;
    // The unanswered MAP may still be answered later: nothing after it is trusted.
    expect(() => domain.map(0x21_0000, 4096, 'to-device')).toThrow(/not answered within 20 ms/);
    expect(dev.iommu.stats.requests).toBeGreaterThan(0);
  });
});
