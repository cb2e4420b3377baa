// The simulated guest of the cross-thread virtio-iommu test: a virtio-iommu
// driver in its own thread, the device in another, guest memory shared. Every
// DMA-API call blocks this thread until the device has answered (`requestIrq`),
// as a guest CPU waits on a synchronous IOMMU command. Between steps the test
// looks at the device's side: the guest posts what it did and waits on a gate.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { GuestMemory } from '@ioplane/guest-memory';
import type { InvalidationMode } from '@ioplane/viommu';
import { Doorbell } from '@ioplane/virtqueue';
import { MessagePortTransport, VirtioIommuDriver } from '../src/index.js';

export interface IommuGuestSetup {
  sab: SharedArrayBuffer;
  /** kick 0, kick 1, interrupt 0, interrupt 1, the test's gate. */
  bells: Int32Array;
  port: MessagePort;
  area: number;
  /** One endpoint per mode, in order. */
  steps: { mode: InvalidationMode; endpoint: number; gpa: number }[];
}

export type IommuGuestMessage =
  | { type: 'mapped'; mode: InvalidationMode; endpoint: number; iova: number; gpa: number }
  | { type: 'unmapped'; mode: InvalidationMode; endpoint: number; iova: number; flushed: boolean }
  | { type: 'done'; requests: number; batches: number; lateError: string; faults: { endpoint: number; address: string; reason: number }[] }
  | { type: 'error'; message: string };

const setup = workerData as IommuGuestSetup;
const mem = new GuestMemory([{ gpa: 0, backing: setup.sab }]);
const kicks = [new Doorbell(setup.bells, 0), new Doorbell(setup.bells, 1)];
const gate = new Doorbell(setup.bells, 4);
const post = (m: IommuGuestMessage): void => parentPort!.postMessage(m);

/** Posts `m`, then blocks until the test has checked the device's side and opened the gate. */
function step(m: IommuGuestMessage): void {
  const seen = gate.count;
  post(m);
  if (gate.wait(seen, 10_000) === 'timed-out') throw new Error(`the test did not open the gate after ${m.type}`);
}

async function main(): Promise<void> {
  const iommu = await VirtioIommuDriver.create({
    transport: new MessagePortTransport(setup.port, kicks),
    mem,
    area: { addr: setup.area, len: VirtioIommuDriver.areaSize() },
    requestIrq: new Doorbell(setup.bells, 2),
    answerTimeoutMs: 200,
  });
  // Fault reports (the device's accesses after each unmap) come in on the event queue's doorbell.
  const listening = iommu.listen(new Doorbell(setup.bells, 3), { pollMs: 20 });
  for (const s of setup.steps) {
    const domain = iommu.iommu.attach(s.endpoint, { mode: s.mode });
    const iova = domain.map(s.gpa, 4096, 'bidirectional');
    step({ type: 'mapped', mode: s.mode, endpoint: s.endpoint, iova, gpa: s.gpa });
    domain.unmap(iova);
    // Strict: revoked on return. The others: revoked by the next flush at the latest.
    const flushed = s.mode !== 'strict';
    if (flushed) domain.flush();
    step({ type: 'unmapped', mode: s.mode, endpoint: s.endpoint, iova, flushed });
    // Let the listener run: the report of the test's faulting access is on its way.
    for (let i = 0; i < 500 && !iommu.events.some((e) => e.endpoint === s.endpoint); i++) await new Promise((r) => setTimeout(r, 2));
  }
  iommu.close();
  await listening;
  // The test stopped serving the device's kicks: the next request is never answered.
  let lateError = '';
  try {
    iommu.iommu.attach(setup.steps[0]!.endpoint + 1, { mode: 'strict' }).map(setup.steps[0]!.gpa, 4096, 'to-device');
  } catch (e) {
    lateError = e instanceof Error ? e.message : String(e);
  }
  const faults = iommu.events.map((e) => ({ endpoint: e.endpoint, address: `0x${(e.address ?? -1n).toString(16)}`, reason: e.reason }));
  post({ type: 'done', requests: iommu.stats.requests, batches: iommu.stats.batches, lateError, faults });
}

main().catch((e: unknown) => post({ type: 'error', message: e instanceof Error ? (e.stack ?? e.message) : String(e) }));
