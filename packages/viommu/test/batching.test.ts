import { GuestMemory } from '@ioplane/guest-memory';
import { describe, expect, it } from 'vitest';
import {
  DmaFault,
  U64_MAX,
  VIRTIO_IOMMU_S_INVAL,
  VIRTIO_IOMMU_S_NOMEM,
  VIRTIO_IOMMU_S_OK,
  VIRTIO_IOMMU_S_RANGE,
  VirtioIommu,
} from '../src/index.js';
import { RW, attach, driverRig, map, unmap } from './helpers.js';

const rig = (options: Parameters<typeof driverRig>[0] = {}) => driverRig(options);

/** Every way a device touches a buffer: each must fault on a revoked IOVA. */
function expectUnreachable(dma: ReturnType<typeof rig>['dma'], iova: number): void {
  expect(() => dma.checkRange(iova, 64, 'read')).toThrow(DmaFault);
  expect(() => dma.checkRange(iova, 64, 'write')).toThrow(DmaFault);
  expect(() => dma.readInto(iova, new Uint8Array(64))).toThrow(DmaFault);
  expect(() => dma.writeFrom(iova, new Uint8Array(64))).toThrow(DmaFault);
  expect(() => dma.slices(iova, 64, 'write')).toThrow(DmaFault);
  expect(() => dma.tryView(iova, 64, 'read')).toThrow(DmaFault);
  expect(() => dma.readU32(iova)).toThrow(DmaFault);
}

/** Touches the buffer every way, so the run cache and the IOTLB hold it (verified runs included). */
function warm(dma: ReturnType<typeof rig>['dma'], iova: number): void {
  dma.checkRange(iova, 64, 'read');
  dma.checkRange(iova, 64, 'write');
  dma.readInto(iova, new Uint8Array(64));
  dma.writeFrom(iova, new Uint8Array(64));
  dma.slices(iova, 64, 'write');
  expect(dma.tryView(iova, 64, 'read')).toBeDefined();
}

describe('queueMap / syncMaps: MAPs of a burst in one submission', () => {
  it('sends k queued MAPs with one notification; before the sync the device reaches nothing', () => {
    const { dev, dma, ram, driver, transport } = rig();
    const dom = driver.attach(1, { mode: 'deferred' });
    ram.writeU32(0x20000 + 5 * 4096, 0xfeed);
    const iovas = Array.from({ length: 8 }, (_, i) => dom.queueMap(0x20000 + i * 4096, 4096, 'bidirectional'));
    // Not yet sent: the IOVAs are not mapped in the device, an access faults (and is recorded).
    const faults = dev.stats.faults;
    expect(() => dma.readU32(iovas[5]!)).toThrow(DmaFault);
    expect(dev.stats.faults).toBe(faults + 1);
    expect(dev.domain(dom.id)!.mappings.size).toBe(0);
    const kicks = transport.kicks;
    dom.syncMaps();
    expect(transport.kicks).toBe(kicks + 1);
    expect(dev.domain(dom.id)!.mappings.size).toBe(8);
    expect(dma.readU32(iovas[5]!)).toBe(0xfeed);
    expect(dom.stats).toMatchObject({ maps: 8, requests: 8 });
    // Nothing queued: syncMaps sends nothing.
    dom.syncMaps();
    expect(transport.kicks).toBe(kicks + 1);
  });

  it('a refused MAP in a batch is forgotten (its IOVA is free again), the others stand, and syncMaps throws', () => {
    const { dev, dma, driver } = rig({ maxMappingsPerDomain: 3 });
    const dom = driver.attach(1, { mode: 'strict' });
    const iovas = [0, 1, 2, 3].map((i) => dom.queueMap(0x20000 + i * 4096, 4096, 'to-device'));
    expect(() => dom.syncMaps()).toThrow(expect.objectContaining({ kind: 'request-failed', status: VIRTIO_IOMMU_S_NOMEM }));
    expect(dev.domain(dom.id)!.mappings.size).toBe(3);
    for (const iova of iovas.slice(0, 3)) expect(dma.readU8(iova)).toBe(0);
    expect(() => dma.readU8(iovas[3]!)).toThrow(DmaFault);
    expect(() => dom.unmap(iovas[3]!)).toThrow(expect.objectContaining({ kind: 'driver-state' }));
    dom.unmap(iovas[0]!);
    // The refused IOVA went back to the allocator: it can be claimed exactly.
    expect(dom.mapAt(iovas[3]!, 0x30000, 4096, 'to-device')).toBe(iovas[3]);
  });

  it('unmap of a MAP still queued sends the MAP first, so the UNMAP removes it', () => {
    const { dev, dma, driver } = rig();
    const dom = driver.attach(1, { mode: 'strict' });
    const iova = dom.queueMap(0x20000, 4096, 'to-device');
    dom.unmap(iova);
    expect(dev.domain(dom.id)!.mappings.size).toBe(0);
    expect(dom.stats.requests).toBe(2);
    expectUnreachable(dma, iova);
  });

  it('map() is queueMap + syncMaps: usable on return', () => {
    const { dma, driver, transport } = rig();
    const dom = driver.attach(1, { mode: 'strict' });
    const kicks = transport.kicks;
    const iova = dom.map(0x20000, 16, 'to-device');
    expect(transport.kicks).toBe(kicks + 1);
    expect(dma.readU8(iova)).toBe(0);
  });
});

describe('revocation with the run cache and verified runs warm', () => {
  it('strict: a DMA right after unmap faults, whatever the access', () => {
    const { dma, driver } = rig();
    const dom = driver.attach(1, { mode: 'strict' });
    const iova = dom.map(0x20000, 4096, 'bidirectional');
    const other = dom.map(0x40000, 4096, 'bidirectional');
    warm(dma, iova);
    warm(dma, other);
    dom.unmap(iova);
    expectUnreachable(dma, iova);
    // The other run is still served.
    dma.checkRange(other, 4096, 'write');
  });

  it('deferred: an unmapped, not yet flushed buffer stays reachable (as documented); after the flush nothing stale is usable', () => {
    const { dma, driver, transport } = rig();
    const dom = driver.attach(1, { mode: 'deferred', batchSize: 64, flushDelayMs: 1e9 });
    const iovas = Array.from({ length: 16 }, (_, i) => dom.queueMap(0x20000 + i * 4096, 4096, 'bidirectional'));
    dom.syncMaps();
    for (const iova of iovas) warm(dma, iova);
    for (const iova of iovas) dom.unmap(iova);
    // Not flushed: the guest may not rely on revocation yet — the device can still reach them.
    for (const iova of iovas) warm(dma, iova);
    expect(dom.reachable).toBe(16);
    const kicks = transport.kicks;
    dom.flush();
    expect(transport.kicks).toBe(kicks + 1);
    // One UNMAP request for the 16 adjacent mappings (next-fit keeps them adjacent).
    expect(dom.stats.requests).toBe(16 + 1);
    for (const iova of iovas) expectUnreachable(dma, iova);
    expect(dom.reachable).toBe(0);
  });

  it('deferred: a flush due by the clock is applied by syncMaps, before the new MAPs are sent', () => {
    const { dma, driver, tick } = rig();
    const dom = driver.attach(1, { mode: 'deferred', batchSize: 64, flushDelayMs: 10 });
    const a = dom.map(0x20000, 4096, 'bidirectional');
    warm(dma, a);
    dom.unmap(a);
    tick(10);
    const b = dom.queueMap(0x30000, 4096, 'to-device');
    dma.readU8(a); // queueMap does not read the clock
    dom.syncMaps();
    expectUnreachable(dma, a);
    expect(dma.readU8(b)).toBe(0);
  });
});

describe('MAP / UNMAP below and across 2^53: the number fast path agrees with the u64 rules', () => {
  const T53 = 2n ** 53n;
  const P = 0x1000n;

  it('maps and unmaps at the top of the number range and above it', () => {
    const dev = new VirtioIommu();
    dev.addEndpoint(1);
    expect(attach(dev, 1, 1)).toBe(VIRTIO_IOMMU_S_OK);
    // Wholly below 2^53 (number path), wholly above (bigint path), and straddling.
    expect(map(dev, 1, T53 - 2n * P, T53 - P - 1n, 0n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(map(dev, 1, T53 + P, T53 + 2n * P - 1n, 0n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(map(dev, 1, T53 - P, T53 + P - 1n, 0n)).toBe(VIRTIO_IOMMU_S_OK);
    // Overlaps are found across the boundary, from either side.
    expect(map(dev, 1, T53 - P, T53 - 1n, 0n)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(map(dev, 1, T53 - 3n * P, T53 - P - 1n, 0n)).toBe(VIRTIO_IOMMU_S_INVAL);
    // UNMAP [0, 2^53 − 1] would split the straddling mapping: RANGE, nothing removed.
    expect(unmap(dev, 1, 0n, T53 - 1n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(dev.domain(1)!.mappings.size).toBe(3);
    // UNMAP [0, 2^53 − P − 1] removes the one below.
    expect(unmap(dev, 1, 0n, T53 - P - 1n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(dev.domain(1)!.mappings.all().map((m) => m.virtStart)).toEqual([T53 - P, T53 + P]);
    expect(unmap(dev, 1, 0n, U64_MAX)).toBe(VIRTIO_IOMMU_S_OK);
    expect(dev.domain(1)!.mappings.size).toBe(0);
  });

  it('phys_end crossing 2^53, physLimit and input_range bounds at and above 2^53', () => {
    const dev = new VirtioIommu({ physLimit: T53 - 1n, inputRange: { start: P, end: T53 + 16n * P - 1n } });
    dev.addEndpoint(1);
    attach(dev, 1, 1);
    expect(map(dev, 1, P, 2n * P - 1n, T53 - P)).toBe(VIRTIO_IOMMU_S_OK); // phys end = 2^53 − 1 = physLimit
    expect(map(dev, 1, 2n * P, 4n * P - 1n, T53 - P)).toBe(VIRTIO_IOMMU_S_RANGE); // phys end past physLimit (crosses 2^53)
    expect(map(dev, 1, 0n, P - 1n, 0n)).toBe(VIRTIO_IOMMU_S_RANGE); // below input_range
    expect(map(dev, 1, T53 + 15n * P, T53 + 16n * P - 1n, 0n)).toBe(VIRTIO_IOMMU_S_OK); // last page of input_range
    expect(map(dev, 1, T53 + 16n * P, T53 + 17n * P - 1n, 0n)).toBe(VIRTIO_IOMMU_S_RANGE);
    const high = new VirtioIommu({ inputRange: { start: T53 + P, end: U64_MAX } });
    high.addEndpoint(1);
    attach(high, 1, 1);
    expect(map(high, 1, P, 2n * P - 1n, 0n)).toBe(VIRTIO_IOMMU_S_RANGE); // input_range starts above 2^53
    expect(unmap(high, 1, P, 2n * P - 1n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(map(high, 1, T53 + P, T53 + 2n * P - 1n, 0n)).toBe(VIRTIO_IOMMU_S_OK);
  });

  it('alignment: 4 KiB granule on the low word, a 4 GiB granule through the slow check', () => {
    const dev = new VirtioIommu();
    dev.addEndpoint(1);
    attach(dev, 1, 1);
    expect(map(dev, 1, 0x1000n, 0x1fffn, 0x1800n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(map(dev, 1, 0x1800n, 0x27ffn, 0n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(map(dev, 1, 0x1000n, 0x17ffn, 0n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(map(dev, 1, 0x1_0000_1000n, 0x1_0000_1fffn, 0x2000n, RW)).toBe(VIRTIO_IOMMU_S_OK);
    const big = new VirtioIommu({ pageSizeMask: ~((1n << 32n) - 1n) & U64_MAX });
    big.addEndpoint(1);
    attach(big, 1, 1);
    const G = 1n << 32n;
    expect(map(big, 1, G, 2n * G - 1n, 0n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(map(big, 1, 3n * G + P, 4n * G + P - 1n, 0n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(map(big, 1, 5n * G, 6n * G - 1n, P)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(map(big, 1, 7n * G, 8n * G - 2n, 0n)).toBe(VIRTIO_IOMMU_S_RANGE);
  });
});

/** The fault record of the DmaFault `f` throws (fails the test if it throws nothing else). */
function faultOf(f: () => unknown): DmaFault['fault'] {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(DmaFault);
    return (e as DmaFault).fault;
  }
  throw new Error('expected a DmaFault');
}

describe('cached runs only partly in guest RAM', () => {
  it('ranges inside RAM pass, ranges reaching past it fault bad-target at the first bad byte, every time, hit or miss', () => {
    const dev = new VirtioIommu();
    dev.addEndpoint(1);
    const ram = GuestMemory.create(0x10000);
    const dma = dev.dmaMemory(1, ram);
    attach(dev, 1, 1);
    // IOVA [0x1000, 0x3000) → GPA [0xf000, 0x11000): the second page is not RAM.
    expect(map(dev, 1, 0x1000n, 0x2fffn, 0xf000n)).toBe(VIRTIO_IOMMU_S_OK);
    for (let round = 0; round < 3; round++) {
      dma.checkRange(0x1000, 0x1000, 'write');
      expect(dma.tryView(0x1800, 0x100, 'read')?.length).toBe(0x100);
      expect(dma.slices(0x1000, 0x1000, 'write').length).toBe(1);
      const faults = dev.stats.faults;
      expect(faultOf(() => dma.checkRange(0x1f00, 0x200, 'read'))).toMatchObject({ reason: 'bad-target', address: 0x2000 });
      expect(dev.stats.faults).toBe(faults); // a probe records nothing
      expect(faultOf(() => dma.slices(0x1f00, 0x200, 'write'))).toMatchObject({ reason: 'bad-target', address: 0x2000 });
      expect(() => dma.readInto(0x1ff0, new Uint8Array(0x20))).toThrow(DmaFault);
      expect(dev.stats.faults).toBe(faults + 2);
    }
  });
});
