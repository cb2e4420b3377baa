import { GuestMemory } from '@ioplane/guest-memory';
import {
  CONFIG_BYPASS,
  CONFIG_PROBE_SIZE,
  VIRTIO_ID_IOMMU,
  VIRTIO_IOMMU_FAULT_F_ADDRESS,
  VIRTIO_IOMMU_FAULT_F_READ,
  VIRTIO_IOMMU_FAULT_F_WRITE,
  VIRTIO_IOMMU_FAULT_R_MAPPING,
  VIRTIO_IOMMU_MAP_F_READ,
  VIRTIO_IOMMU_S_INVAL,
  VIRTIO_IOMMU_S_IOERR,
  VIRTIO_IOMMU_S_NOENT,
  VIRTIO_IOMMU_S_OK,
  VIRTIO_IOMMU_S_RANGE,
  IommuRequest,
  attachRequest,
  mapRequest,
  unmapRequest,
} from '@ioplane/viommu';
import { afterEach, describe, expect, it } from 'vitest';
import { DirectTransport, IOMMU_EVENT_QUEUE, type VirtioError, VirtioIommuDevice, VirtioIommuDriver } from '../src/index.js';
import { pattern } from './harness.js';
import { BLK_ENDPOINT, type IommuHarness, iommuHarness } from './iommu-harness.js';

const WINDOW = 0x800000; // guest-physical window the guest maps for the disk
const WIN_LEN = 0x10000;
const CANARY_LO = WINDOW - 0x10000;
const CANARY_HI = WINDOW + 2 * WIN_LEN;

let h: IommuHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

function fillCanary(mem: GuestMemory): Uint8Array {
  const c = pattern(CANARY_HI - CANARY_LO, 7);
  mem.writeFrom(CANARY_LO, c);
  return c;
}

function snapshot(mem: GuestMemory): Uint8Array {
  return mem.view(CANARY_LO, CANARY_HI - CANARY_LO, 'read').slice();
}

async function seedDisk(x: IommuHarness): Promise<Uint8Array> {
  const data = pattern(64 << 10, 3);
  await x.backend.write(0, [data]);
  return data;
}

describe('virtio-blk behind virtio-iommu, end to end', () => {
  it('a read into the mapped window succeeds; one outside fails with IOERR, a fault event, and no byte touched', async () => {
    h = await iommuHarness();
    const disk = await seedDisk(h);
    const canary = fillCanary(h.mem);
    const iova = h.domain.map(WINDOW, WIN_LEN, 'from-device');

    // Inside the window: the device writes 4 KiB at the window's second page.
    await h.blk.read(0, iova + 0x1000, 4096);
    const after = snapshot(h.mem);
    const off = WINDOW - CANARY_LO + 0x1000;
    expect(after.subarray(off, off + 4096)).toEqual(disk.subarray(0, 4096));
    expect(after.subarray(0, off)).toEqual(canary.subarray(0, off));
    expect(after.subarray(off + 4096)).toEqual(canary.subarray(off + 4096));
    expect(h.iommu.events).toHaveLength(0);

    // Outside: the page after the window is not mapped.
    const before = snapshot(h.mem);
    const outside = iova + WIN_LEN;
    await expect(h.blk.read(8, outside, 4096)).rejects.toMatchObject({ kind: 'io-error' });
    expect(snapshot(h.mem)).toEqual(before);
    expect(h.iommu.events).toEqual([
      { reason: VIRTIO_IOMMU_FAULT_R_MAPPING, flags: VIRTIO_IOMMU_FAULT_F_WRITE | VIRTIO_IOMMU_FAULT_F_ADDRESS, endpoint: BLK_ENDPOINT, address: BigInt(outside) },
    ]);
    expect(h.iommuDev.queueStats.events).toBe(1);
    // Every guest-physical byte outside the window kept its canary.
    expect(snapshot(h.mem).subarray(0, WINDOW - CANARY_LO)).toEqual(canary.subarray(0, WINDOW - CANARY_LO));
    expect(snapshot(h.mem).subarray(WINDOW - CANARY_LO + WIN_LEN)).toEqual(canary.subarray(WINDOW - CANARY_LO + WIN_LEN));
  });

  it('a request straddling the window edge fails whole: not even its mapped part is written', async () => {
    h = await iommuHarness();
    await seedDisk(h);
    fillCanary(h.mem);
    const iova = h.domain.map(WINDOW, WIN_LEN, 'from-device');
    const before = snapshot(h.mem);
    await expect(h.blk.read(0, iova + WIN_LEN - 2048, 4096)).rejects.toMatchObject({ kind: 'io-error' });
    expect(snapshot(h.mem)).toEqual(before);
    expect(h.iommu.events).toHaveLength(1);
    expect(h.iommu.events[0]!.address).toBe(BigInt(iova + WIN_LEN));
  });

  it('a mapping used in the wrong direction, or a write from outside the window, never moves a byte', async () => {
    h = await iommuHarness();
    const disk = await seedDisk(h);
    const ro = h.domain.map(WINDOW, WIN_LEN, 'to-device'); // device may read it
    h.mem.writeFrom(WINDOW, pattern(4096, 9));
    // A read request would make the device write into a read-only mapping.
    await expect(h.blk.read(0, ro, 4096)).rejects.toMatchObject({ kind: 'io-error' });
    expect(h.iommu.events[0]!.flags).toBe(VIRTIO_IOMMU_FAULT_F_WRITE | VIRTIO_IOMMU_FAULT_F_ADDRESS);
    // A write request from unmapped memory: the device would read it.
    await expect(h.blk.write(0, ro + WIN_LEN, 4096)).rejects.toMatchObject({ kind: 'io-error' });
    expect(h.iommu.events[1]).toMatchObject({ flags: VIRTIO_IOMMU_FAULT_F_READ | VIRTIO_IOMMU_FAULT_F_ADDRESS, address: BigInt(ro + WIN_LEN) });
    const back = new Uint8Array(4096);
    await h.backend.read(0, [back]);
    expect(back).toEqual(disk.subarray(0, 4096));
    // The same write from the mapped window reaches the disk.
    await h.blk.write(0, ro, 4096);
    await h.backend.read(0, [back]);
    expect(back).toEqual(pattern(4096, 9));
  });

  it('strict: after unmap returns, the buffer is unreachable; deferred: until the flush', async () => {
    h = await iommuHarness();
    await seedDisk(h);
    const iova = h.domain.map(WINDOW, 4096, 'from-device');
    await h.blk.read(0, iova, 4096);
    h.domain.unmap(iova);
    await expect(h.blk.read(0, iova, 4096)).rejects.toMatchObject({ kind: 'io-error' });
    await h.close();

    let now = 0;
    h = await iommuHarness({ domain: { mode: 'deferred', flushDelayMs: 10 }, now: () => now });
    await seedDisk(h);
    const d = h.domain.map(WINDOW, 4096, 'from-device');
    h.domain.unmap(d);
    // Deferred: the UNMAP is not sent yet, the device can still reach the buffer (the mode's documented window).
    await h.blk.read(0, d, 4096);
    now = 10;
    h.domain.expire();
    await expect(h.blk.read(0, d, 4096)).rejects.toMatchObject({ kind: 'io-error' });
  });

  it('a burst: the MAPs of 16 requests go in one submission, the reads succeed, and after the deferred flush none is reachable', async () => {
    h = await iommuHarness({ domain: { mode: 'deferred', batchSize: 64, flushDelayMs: 1e9 } });
    const data = await seedDisk(h);
    const batches = h.iommu.stats.batches;
    const requests = h.iommu.stats.requests;
    const iovas = Array.from({ length: 16 }, (_, i) => h!.domain.queueMap(WINDOW + i * 4096, 4096, 'from-device'));
    // Before the sync the device has none of them: a read faults (IOERR), nothing is written.
    const before = snapshot(h.mem);
    await expect(h.blk.read(0, iovas[0]!, 4096)).rejects.toMatchObject({ kind: 'io-error' });
    expect(snapshot(h.mem)).toEqual(before);
    h.domain.syncMaps();
    expect(h.iommu.stats.batches).toBe(batches + 1); // one notification of the request queue
    expect(h.iommu.stats.requests).toBe(requests + 16);
    await Promise.all(iovas.map((iova, i) => h!.blk.read(i * 8, iova, 4096)));
    for (let i = 0; i < 16; i++) expect(h.mem.view(WINDOW + i * 4096, 4096, 'read')).toEqual(data.subarray(i * 4096, (i + 1) * 4096));
    for (const iova of iovas) h.domain.unmap(iova);
    await h.blk.read(0, iovas[3]!, 4096); // unmapped, not flushed: still reachable, as the mode documents
    h.domain.flush();
    expect(h.iommu.stats.batches).toBe(batches + 2); // one UNMAP submission for the sixteen
    for (const iova of [iovas[0]!, iovas[3]!, iovas[15]!]) await expect(h.blk.read(0, iova, 4096)).rejects.toMatchObject({ kind: 'io-error' });
  });

  it('optimistic: a re-map of the same buffer reuses the IOVA with no request on the queue', async () => {
    h = await iommuHarness({ domain: { mode: 'optimistic' } });
    await seedDisk(h);
    const a = h.domain.map(WINDOW, 4096, 'from-device');
    await h.blk.read(0, a, 4096);
    h.domain.unmap(a);
    const sent = h.iommu.stats.requests;
    const b = h.domain.map(WINDOW, 4096, 'from-device');
    expect(b).toBe(a);
    expect(h.iommu.stats.requests).toBe(sent);
    await h.blk.read(0, b, 4096);
  });

  it('the blk driver area is reachable only because the guest identity-mapped it', async () => {
    h = await iommuHarness();
    // Without the ring mapping the blk device cannot even read the available ring: it needs a reset.
    h.domain.unmap(0x100000);
    const p = h.blk.read(0, WINDOW, 512);
    await expect(p).rejects.toMatchObject({ kind: 'device-needs-reset' });
    expect(h.iommuDev.iommu.stats.faults).toBeGreaterThan(0);
  });
});

describe('the virtio-iommu device on its virtqueues', () => {
  async function plain(options: ConstructorParameters<typeof VirtioIommuDevice>[0] extends infer O ? Partial<O> : never = {}) {
    const mem = GuestMemory.create(4 << 20);
    const errors: VirtioError[] = [];
    const ref: { drv?: VirtioIommuDriver } = {};
    const dev = new VirtioIommuDevice({
      mem,
      interrupts: { queue: (q) => void ref.drv?.handleInterrupt(q), config: () => undefined },
      onGuestError: (e) => errors.push(e),
      ...options,
    });
    dev.iommu.addEndpoint(1);
    const transport = new DirectTransport(dev);
    const drv = await VirtioIommuDriver.create({ transport, mem, area: { addr: 0x10000, len: VirtioIommuDriver.areaSize() } });
    ref.drv = drv;
    return { mem, dev, drv, errors, transport };
  }

  it('the request queue raises no interrupts (the driver reaps it in submit); the event queue still does', async () => {
    const queues: number[] = [];
    const ref: { drv?: VirtioIommuDriver } = {};
    const { dev, drv } = await plain({
      interrupts: {
        queue: (q) => {
          queues.push(q);
          void ref.drv?.handleInterrupt(q);
        },
        config: () => undefined,
      },
    });
    ref.drv = drv;
    const dom = drv.iommu.attach(1, { mode: 'strict' });
    const iovas = [0, 1, 2, 3].map((i) => dom.queueMap(0x200000 + i * 4096, 4096, 'to-device'));
    dom.syncMaps();
    for (const a of iovas) dom.unmap(a);
    dom.unmapMany([dom.map(0x300000, 4096, 'to-device')]);
    expect(queues.filter((q) => q === 0)).toEqual([]);
    // A fault still reaches the driver through the event queue and its interrupt.
    expect(() => dev.iommu.dmaMemory(1, GuestMemory.create(1 << 20)).readU32(iovas[0]!)).toThrow();
    await new Promise<void>((r) => queueMicrotask(r));
    expect(queues).toContain(1);
    expect(drv.events.length).toBe(1);
  });

  it('is device 23 with a request queue and an event queue, the §5.13.4 config, and the features', async () => {
    const { dev, drv } = await plain({ probeSize: 256, domainRange: { start: 1, end: 100 } });
    expect(dev.deviceId).toBe(VIRTIO_ID_IOMMU);
    expect(VIRTIO_ID_IOMMU).toBe(23);
    expect(dev.numQueues).toBe(2);
    expect(dev.configSize).toBe(40);
    expect(drv.config.probeSize).toBe(256);
    expect(drv.config.domainRange).toEqual({ start: 1, end: 100 });
    expect(drv.config.pageSizeMask & 0xfffn).toBe(0n);
    expect(dev.readConfig(CONFIG_PROBE_SIZE, 4)).toBe(256);
    // INPUT_RANGE, DOMAIN_RANGE, MAP_UNMAP, PROBE, MMIO, BYPASS_CONFIG (bits 0,1,2,4,5,6), never BYPASS (3).
    expect(dev.readDeviceFeatures(0) & 0x7f).toBe(0b111_0111);
    expect(dev.iommu.negotiatedFeatures & 0x7fn).toBe(0b111_0111n);
  });

  it('answers malformed requests on the queue with the right status', async () => {
    const { drv } = await plain();
    const send = (r: IommuRequest): number => {
      drv.submit([r]);
      return r.status;
    };
    expect(send(attachRequest(5, 1))).toBe(VIRTIO_IOMMU_S_OK);
    expect(send(attachRequest(5, 99))).toBe(VIRTIO_IOMMU_S_NOENT); // unknown endpoint
    expect(send(mapRequest(6, 0x1000n, 0x1fffn, 0x1000n, VIRTIO_IOMMU_MAP_F_READ))).toBe(VIRTIO_IOMMU_S_NOENT); // unknown domain
    expect(send(mapRequest(5, 0x1800n, 0x27ffn, 0x1000n, VIRTIO_IOMMU_MAP_F_READ))).toBe(VIRTIO_IOMMU_S_RANGE); // not on the granule
    expect(send(mapRequest(5, 0x2000n, 0x1fffn, 0x1000n, VIRTIO_IOMMU_MAP_F_READ))).toBe(VIRTIO_IOMMU_S_INVAL); // end < start
    expect(send(mapRequest(5, 0x1000n, 0x1fffn, 0x1000n, 0x80))).toBe(VIRTIO_IOMMU_S_INVAL); // unknown flag
    expect(send(unmapRequest(5, 0x1000n, 0x1fffn))).toBe(VIRTIO_IOMMU_S_OK); // nothing mapped: OK (§5.13.6.4)
    // Unknown type: nothing written, used length 0, which the driver reads as IOERR.
    const unknown = new IommuRequest(new Uint8Array(8).fill(0).map((_, i) => (i === 0 ? 42 : 0)), new Uint8Array(4));
    expect(send(unknown)).toBe(VIRTIO_IOMMU_S_IOERR);
    expect(unknown.used).toBe(0);
    // Short: a head of 2 bytes.
    const short = new IommuRequest(new Uint8Array([3, 0]), new Uint8Array(4));
    expect(send(short)).toBe(VIRTIO_IOMMU_S_IOERR);
    // A MAP whose payload is cut short: INVAL.
    const cut = mapRequest(5, 0x1000n, 0x1fffn, 0x1000n, VIRTIO_IOMMU_MAP_F_READ);
    expect(send(new IommuRequest(cut.readable.subarray(0, 12), cut.writable))).toBe(VIRTIO_IOMMU_S_INVAL);
  });

  it('sends a batch larger than the ring in ring-sized chunks, all answered in order', async () => {
    const { drv, dev } = await plain();
    drv.submit([attachRequest(1, 1)]);
    const reqs = Array.from({ length: 100 }, (_, i) => mapRequest(1, BigInt(0x10000 + i * 0x1000), BigInt(0x10fff + i * 0x1000), BigInt(0x200000 + i * 0x1000), VIRTIO_IOMMU_MAP_F_READ));
    reqs.push(mapRequest(1, 0x10000n, 0x10fffn, 0n, VIRTIO_IOMMU_MAP_F_READ)); // overlaps the first: INVAL
    const before = drv.stats.batches;
    drv.submit(reqs);
    expect(reqs.slice(0, 100).every((r) => r.status === VIRTIO_IOMMU_S_OK)).toBe(true);
    expect(reqs[100]!.status).toBe(VIRTIO_IOMMU_S_INVAL);
    // 64 descriptors, 2 per request: 32 requests per notification.
    expect(drv.stats.batches - before).toBe(4);
    expect(dev.iommu.domain(1)!.mappings.size).toBe(100);
  });

  it('config bypass is writable with BYPASS_CONFIG; every other field is read-only', async () => {
    const { dev, drv, errors } = await plain();
    expect(dev.readConfig(CONFIG_BYPASS, 1)).toBe(0);
    await drv.setBypass(true);
    expect(dev.readConfig(CONFIG_BYPASS, 1)).toBe(1);
    expect(dev.iommu.bypass).toBe(true);
    dev.writeConfig(CONFIG_PROBE_SIZE, 4, 7);
    expect(dev.readConfig(CONFIG_PROBE_SIZE, 4)).toBe(512);
    expect(errors.some((e) => e.kind === 'ignored-access')).toBe(true);
  });

  it('holds fault reports while the event queue is empty and delivers them when buffers come; a short buffer is refused', async () => {
    const mem = GuestMemory.create(4 << 20);
    const errors: VirtioError[] = [];
    const ref: { drv?: VirtioIommuDriver } = {};
    const dev = new VirtioIommuDevice({ mem, interrupts: { queue: (q) => void ref.drv?.handleInterrupt(q), config: () => undefined }, onGuestError: (e) => errors.push(e) });
    dev.iommu.addEndpoint(1);
    const drv = await VirtioIommuDriver.create({ transport: new DirectTransport(dev), mem, area: { addr: 0x10000, len: VirtioIommuDriver.areaSize(64, 512, 2) }, eventBuffers: 2 });
    ref.drv = drv;
    const dma = dev.iommu.dmaMemory(1, mem);
    // Unattached endpoint, bypass off: every access faults. Three faults, two buffers.
    for (let i = 0; i < 3; i++) expect(() => dma.readU32(0x1000 * (i + 1))).toThrow();
    await Promise.resolve();
    // Buffers are re-posted as they are reaped, so all three arrive.
    expect(drv.events.map((e) => e.address)).toEqual([0x1000n, 0x2000n, 0x3000n]);
    expect(dev.iommu.pendingEvents).toBe(0);
    expect(dev.queueStats.events).toBe(3);
    expect(IOMMU_EVENT_QUEUE).toBe(1);
  });

  it('a device reset detaches every endpoint', async () => {
    const { dev, drv, mem, transport } = await plain();
    const dom = drv.iommu.attach(1);
    const iova = dom.map(0x300000, 4096, 'to-device');
    const dma = dev.iommu.dmaMemory(1, mem);
    expect(() => dma.readU32(iova)).not.toThrow();
    await transport.setStatus(0);
    expect(dev.status).toBe(0);
    expect(() => dma.readU32(iova)).toThrow();
    expect(dev.iommu.listDomains()).toHaveLength(0);
  });
});

describe('virtio-iommu: hostile event buffers', () => {
  it('returns event buffers that are too short or device-readable with used length 0, and keeps the report for a good one', async () => {
    const { BufferList, createDriverQueue, layoutQueue } = await import('@ioplane/virtqueue');
    const mem = GuestMemory.create(4 << 20);
    const errors: VirtioError[] = [];
    const dev = new VirtioIommuDevice({ mem, interrupts: { queue: () => undefined, config: () => undefined }, onGuestError: (e) => errors.push(e), schedule: (f) => f() });
    dev.iommu.addEndpoint(1);
    dev.setStatus(1);
    dev.setStatus(3);
    dev.writeDriverFeatures(0, dev.readDeviceFeatures(0));
    dev.writeDriverFeatures(1, dev.readDeviceFeatures(1));
    dev.setStatus(11);
    const rf = { indirect: false, eventIdx: false, packed: false, inOrder: false };
    const queues = [0, 1].map((q) => {
      const { config } = layoutQueue(false, 8, 0x10000 + q * 0x4000);
      dev.setQueueSize(q, 8);
      dev.setQueueAddresses(q, config.descAddr, config.driverAddr, config.deviceAddr);
      dev.enableQueue(q);
      return createDriverQueue<number>(mem, config, rf);
    });
    dev.setStatus(15);
    const evq = queues[1]!;
    const list = new BufferList(2);
    evq.add(list.clear().push(0x30000, 8, true), 1); // too short for a 24-byte report
    evq.add(list.clear().push(0x30100, 16, false).push(0x30200, 24, true), 2); // has a device-readable part
    evq.add(list.clear().push(0x30300, 24, true), 3); // good
    evq.publish();
    dev.notify(1); // no fault pending: nothing consumed
    expect(evq.pollUsed({ token: undefined, len: 0 })).toBe(false);
    expect(() => dev.iommu.dmaMemory(1, mem).readU8(0x5000)).toThrow(); // unattached: a fault
    const used: { token: number | undefined; len: number }[] = [];
    const u = { token: undefined as number | undefined, len: 0 };
    while (evq.pollUsed(u)) used.push({ ...u });
    expect(used).toEqual([
      { token: 1, len: 0 },
      { token: 2, len: 0 },
      { token: 3, len: 24 },
    ]);
    expect(dev.queueStats.badEventBuffers).toBe(2);
    expect(errors.filter((e) => e.kind === 'bad-request')).toHaveLength(2);
    expect(mem.readU32(0x30300 + 8)).toBe(1); // endpoint field of struct virtio_iommu_fault
  });
});
