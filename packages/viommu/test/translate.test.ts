import { GuestMemory, GuestMemoryError } from '@ioplane/guest-memory';
import { describe, expect, it } from 'vitest';
import {
  DmaFault,
  VIRTIO_IOMMU_ATTACH_F_BYPASS,
  VIRTIO_IOMMU_FAULT_F_ADDRESS,
  VIRTIO_IOMMU_FAULT_F_READ,
  VIRTIO_IOMMU_FAULT_F_WRITE,
  VIRTIO_IOMMU_FAULT_R_DOMAIN,
  VIRTIO_IOMMU_FAULT_R_MAPPING,
  VIRTIO_IOMMU_FAULT_R_UNKNOWN,
  VIRTIO_IOMMU_RESV_MEM_T_MSI,
  VIRTIO_IOMMU_S_OK,
  type FaultRecord,
  VirtioIommu,
  detachRequest,
  parseFaultEvent,
} from '../src/index.js';
import { R, RW, W, attach, device, map, status, unmap } from './helpers.js';

const RAM = 0x40000; // 256 KiB of guest RAM at GPA 0
const CANARY = 0x5a;

function setup(options: ConstructorParameters<typeof VirtioIommu>[0] = {}) {
  const ram = GuestMemory.create(RAM);
  const bytes = ram.regions[0]!.bytes;
  bytes.fill(CANARY);
  const faults: FaultRecord[] = [];
  const dev = device({ ...options, onFault: (f) => faults.push(f) });
  const dma = dev.dmaMemory(1, ram);
  return { ram, bytes, dev, dma, faults };
}

/** Every byte of RAM still holds the canary except in [from, to). */
function untouchedOutside(bytes: Uint8Array, from = 0, to = 0): boolean {
  for (let i = 0; i < bytes.length; i++) if ((i < from || i >= to) && bytes[i] !== CANARY) return false;
  return true;
}

function expectFault(fn: () => unknown, expected: Partial<FaultRecord>): DmaFault {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(DmaFault);
    expect(e).toBeInstanceOf(GuestMemoryError);
    const f = e as DmaFault;
    expect(f.kind).toBe('fault');
    expect(f.fault).toMatchObject(expected);
    return f;
  }
  throw new Error('expected a DMA fault');
}

describe('translating DmaMemory over a virtio-iommu domain', () => {
  it('translates reads and writes through a mapping, little-endian, scalar and ranges', () => {
    const { dev, dma, ram } = setup();
    attach(dev, 1, 1);
    expect(map(dev, 1, 0x10_0000n, 0x10_1fffn, 0x8000n)).toBe(VIRTIO_IOMMU_S_OK);
    dma.writeU32(0x10_0010, 0xdeadbeef);
    expect(ram.readU32(0x8010)).toBe(0xdeadbeef);
    expect(dma.readU16(0x10_0010)).toBe(0xbeef);
    dma.writeU64(0x10_0ff8 + 4, 0x0102030405060708n); // crosses a 4 KiB page, same mapping
    expect(dma.readU64(0x10_0ffc)).toBe(0x0102030405060708n);
    dma.writeU53(0x10_0100, 2 ** 52 + 3);
    expect(dma.readU53(0x10_0100)).toBe(2 ** 52 + 3);
    const v = dma.tryView(0x10_0000, 0x2000, 'read');
    expect(v?.length).toBe(0x2000);
    expect(v?.byteOffset).toBe(0x8000);
    dma.fill(0x10_1000, 16, 0x77);
    expect(ram.readU8(0x900f)).toBe(0x77);
  });

  it('a range spanning two mappings works when both permit; scatter/gather follows the translation', () => {
    const { dev, dma, ram } = setup();
    attach(dev, 1, 1);
    map(dev, 1, 0x1000n, 0x1fffn, 0x3000n);
    map(dev, 1, 0x2000n, 0x2fffn, 0x1000n); // physically before: two pieces
    const src = Uint8Array.from({ length: 0x20 }, (_, i) => i + 1);
    dma.writeFrom(0x1ff0, src);
    expect([...ram.view(0x3ff0, 0x10, 'read')]).toEqual([...src.subarray(0, 16)]);
    expect([...ram.view(0x1000, 0x10, 'read')]).toEqual([...src.subarray(16)]);
    const back = new Uint8Array(0x20);
    dma.readInto(0x1ff0, back);
    expect(back).toEqual(src);
    expect(dma.tryView(0x1ff0, 0x20, 'read')).toBeUndefined();
    const parts = dma.slices(0x1ff0, 0x20, 'write');
    expect(parts.map((p) => [p.byteOffset, p.length])).toEqual([[0x3ff0, 16], [0x1000, 16]]);
    expect(dma.readU32(0x1ffe)).toBe(new DataView(src.buffer).getUint32(14, true));
    dma.writeU16(0x1fff, 0xabcd);
    expect(ram.readU8(0x3fff)).toBe(0xcd);
    expect(ram.readU8(0x1000)).toBe(0xab);
  });

  it('physically contiguous neighbouring mappings merge into one view', () => {
    const { dev, dma } = setup();
    attach(dev, 1, 1);
    map(dev, 1, 0x1000n, 0x1fffn, 0x4000n);
    map(dev, 1, 0x2000n, 0x3fffn, 0x5000n);
    expect(dma.tryView(0x1800, 0x2000, 'write')?.byteOffset).toBe(0x4800);
  });

  it('enforces permissions: a read-only mapping refuses writes and a write-only one reads', () => {
    const { dev, dma, bytes, faults } = setup();
    attach(dev, 1, 1);
    map(dev, 1, 0x1000n, 0x1fffn, 0x1000n, R);
    map(dev, 1, 0x2000n, 0x2fffn, 0x2000n, W);
    expect(dma.readU8(0x1000)).toBe(CANARY);
    expectFault(() => dma.writeU8(0x1000, 1), { reason: 'permission', access: 'write', address: 0x1000, endpoint: 1 });
    dma.writeU8(0x2000, 1);
    expectFault(() => dma.readU8(0x2000), { reason: 'permission', access: 'read', address: 0x2000 });
    expect(untouchedOutside(bytes, 0x2000, 0x2001)).toBe(true);
    expect(faults.length).toBe(2);
  });

  it('canary: a write that runs past the mapping faults at the first bad byte and touches nothing', () => {
    const { dev, dma, bytes, faults } = setup();
    attach(dev, 1, 1);
    map(dev, 1, 0x10000n, 0x10fffn, 0x20000n);
    const buf = new Uint8Array(0x1001).fill(0xee);
    expectFault(() => dma.writeFrom(0x10000, buf), { reason: 'unmapped', address: 0x11000, accessStart: 0x10000, accessLength: 0x1001, access: 'write' });
    expectFault(() => dma.fill(0x10800, 0x1000, 0xee), { reason: 'unmapped', address: 0x11000 });
    expectFault(() => dma.writeU32(0x10ffe, 0xeeeeeeee), { reason: 'unmapped', address: 0x11000 });
    expectFault(() => dma.writeU64(0xfffc, 0n), { reason: 'unmapped', address: 0xfffc });
    expectFault(() => dma.slices(0x10f00, 0x200, 'write'), { reason: 'unmapped' });
    expectFault(() => dma.tryView(0x10f00, 0x200, 'write'), { reason: 'unmapped' });
    expectFault(() => dma.checkRange(0x10f00, 0x200, 'write'), { reason: 'unmapped' });
    expect(untouchedOutside(bytes)).toBe(true);
    // checkRange is a probe, not a DMA: it throws the same fault but records none.
    expect(faults.length).toBe(6);
    // A read past the end fills nothing either.
    const dest = new Uint8Array(0x1001).fill(1);
    expectFault(() => dma.readInto(0x10000, dest), { reason: 'unmapped', access: 'read' });
    expect(dest.every((b) => b === 1)).toBe(true);
  });

  it('canary: a write spanning a writable and a read-only mapping touches neither', () => {
    const { dev, dma, bytes } = setup();
    attach(dev, 1, 1);
    map(dev, 1, 0x1000n, 0x1fffn, 0x1000n, RW);
    map(dev, 1, 0x2000n, 0x2fffn, 0x2000n, R);
    expectFault(() => dma.writeFrom(0x1f00, new Uint8Array(0x200)), { reason: 'permission', address: 0x2000 });
    expect(untouchedOutside(bytes)).toBe(true);
  });

  it('canary: a mapping whose target is not guest RAM faults (bad-target) before any byte moves', () => {
    const { dev, dma, bytes } = setup();
    attach(dev, 1, 1);
    map(dev, 1, 0x1000n, 0x1fffn, 0x3f000n); // last page of RAM
    map(dev, 1, 0x2000n, 0x2fffn, 0x40000n); // just past RAM
    expectFault(() => dma.writeFrom(0x1f00, new Uint8Array(0x200)), { reason: 'bad-target', address: 0x2000 });
    expectFault(() => dma.writeU32(0x2000, 1), { reason: 'bad-target' });
    expectFault(() => dma.readU8(0x2000), { reason: 'bad-target' });
    expect(untouchedOutside(bytes)).toBe(true);
  });

  it('blocks unattached endpoints (FAULT_R_DOMAIN) unless bypass is configured', () => {
    const { dev, dma, faults } = setup();
    expectFault(() => dma.readU32(0x1000), { reason: 'unattached', endpoint: 1 });
    dev.writeConfig(36, Uint8Array.of(1));
    expect(dma.readU32(0x1000)).toBe(0x5a5a5a5a);
    // Attached to a translating domain: bypass no longer applies.
    attach(dev, 1, 1);
    expectFault(() => dma.readU32(0x1000), { reason: 'unmapped' });
    expect(status(dev, detachRequest(1, 1))).toBe(VIRTIO_IOMMU_S_OK);
    expect(dma.readU32(0x1000)).toBe(0x5a5a5a5a);
    expect(faults.map((f) => f.reason)).toEqual(['unattached', 'unmapped']);
  });

  it('turning bypass off, or a device reset, revokes a translation the DmaMemory just used', () => {
    const { dev, dma } = setup({ bypass: true });
    expect(dma.readU8(0x10)).toBe(CANARY);
    dma.writeU8(0x20, 1);
    dev.writeConfig(36, Uint8Array.of(0));
    expectFault(() => dma.readU8(0x10), { reason: 'unattached' });
    expectFault(() => dma.writeU8(0x20, 1), { reason: 'unattached' });
    dev.writeConfig(36, Uint8Array.of(1));
    attach(dev, 1, 1);
    map(dev, 1, 0x1000n, 0x1fffn, 0x1000n);
    expect(dma.readU8(0x1000)).toBe(CANARY);
    dev.reset();
    dev.writeConfig(36, Uint8Array.of(0));
    expectFault(() => dma.readU8(0x1000), { reason: 'unattached' });
  });

  it('a bypass domain passes addresses through; initial bypass from the options', () => {
    const { dev, dma } = setup({ bypass: true });
    expect(dma.readU8(0x10)).toBe(CANARY);
    attach(dev, 9, 1, VIRTIO_IOMMU_ATTACH_F_BYPASS);
    dev.writeConfig(36, Uint8Array.of(0));
    dma.writeU8(0x10, 1);
    expect(dma.readU8(0x10)).toBe(1);
  });

  it('RESV_MEM: RESERVED faults even in bypass, MSI passes through', () => {
    const ram = GuestMemory.create(RAM);
    const dev = new VirtioIommu({ bypass: true });
    dev.addEndpoint(4, { reserved: [{ start: 0x3000n, end: 0x3fffn }, { start: 0x8000n, end: 0x8fffn, subtype: VIRTIO_IOMMU_RESV_MEM_T_MSI }] });
    const dma = dev.dmaMemory(4, ram);
    expectFault(() => dma.readU8(0x3000), { reason: 'reserved' });
    expect(() => dma.readInto(0x2000, new Uint8Array(0x1800))).toThrow(DmaFault);
    dma.writeU32(0x8000, 7);
    expect(ram.readU32(0x8000)).toBe(7);
    attach(dev, 1, 4);
    map(dev, 1, 0x1000n, 0x1fffn, 0x0n);
    expectFault(() => dma.readU8(0x3000), { reason: 'reserved' });
    expect(dma.readU32(0x8000)).toBe(7);
  });

  it('after UNMAP returns OK, no access goes through — the IOTLB is never stale', () => {
    const { dev, dma } = setup();
    attach(dev, 1, 1);
    map(dev, 1, 0x1000n, 0x1fffn, 0x5000n);
    expect(dma.readU8(0x1000)).toBe(CANARY); // now cached
    expect(dev.domain(1)!.tlb!.hits + dev.domain(1)!.tlb!.misses).toBeGreaterThan(0);
    expect(dev.iotlbTotals()).toEqual({ hits: 0, misses: 1, invalidations: 0 });
    dma.readU8(0x1001); // the TranslatingMemory's own run: the IOTLB is not even asked
    expect(dev.iotlbTotals().hits).toBe(0);
    expect(unmap(dev, 1, 0x1000n, 0x1fffn)).toBe(VIRTIO_IOMMU_S_OK);
    expect(dev.iotlbTotals().invalidations).toBe(1);
    expectFault(() => dma.readU8(0x1000), { reason: 'unmapped' });
    // Remapped elsewhere: the new translation, not the old one.
    map(dev, 1, 0x1000n, 0x1fffn, 0x9000n, R);
    dma.inner.writeU8(0x9000, 0x42);
    expect(dma.readU8(0x1000)).toBe(0x42);
    expectFault(() => dma.writeU8(0x1000, 0), { reason: 'permission' });
  });

  it('after DETACH the endpoint cannot use the domain; another endpoint of the domain still can', () => {
    const ram = GuestMemory.create(RAM);
    const dev = device();
    const a = dev.dmaMemory(1, ram);
    const b = dev.dmaMemory(2, ram);
    attach(dev, 1, 1);
    attach(dev, 1, 2);
    map(dev, 1, 0x1000n, 0x1fffn, 0x5000n);
    a.readU8(0x1000);
    b.readU8(0x1000);
    status(dev, detachRequest(1, 1));
    expectFault(() => a.readU8(0x1000), { reason: 'unattached' });
    expect(b.readU8(0x1000)).toBe(0);
  });

  it('fault reports reach the event queue in the struct virtio_iommu_fault layout', () => {
    const { dev, dma } = setup();
    expect(() => dma.readU8(0x1234)).toThrow(DmaFault);
    attach(dev, 1, 1);
    map(dev, 1, 0x1000n, 0x1fffn, 0n, R);
    expect(() => dma.writeU8(0x1000, 0)).toThrow(DmaFault);
    map(dev, 1, 0x2000n, 0x2fffn, 0x100000n, RW);
    expect(() => dma.writeU8(0x2000, 0)).toThrow(DmaFault);
    expect(dev.pendingEvents).toBe(3);
    const buf = new Uint8Array(24).fill(0xff);
    expect(dev.takeFaultEvent(new Uint8Array(16))).toBe(0);
    expect(dev.takeFaultEvent(buf)).toBe(24);
    expect([...buf.subarray(0, 16)]).toEqual([VIRTIO_IOMMU_FAULT_R_DOMAIN, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    expect(new DataView(buf.buffer).getBigUint64(16, true)).toBe(0x1234n);
    expect(parseFaultEvent(buf)).toEqual({ reason: VIRTIO_IOMMU_FAULT_R_DOMAIN, flags: VIRTIO_IOMMU_FAULT_F_READ | VIRTIO_IOMMU_FAULT_F_ADDRESS, endpoint: 1, address: 0x1234n });
    dev.takeFaultEvent(buf);
    expect(parseFaultEvent(buf)).toEqual({ reason: VIRTIO_IOMMU_FAULT_R_MAPPING, flags: VIRTIO_IOMMU_FAULT_F_WRITE | VIRTIO_IOMMU_FAULT_F_ADDRESS, endpoint: 1, address: 0x1000n });
    dev.takeFaultEvent(buf);
    expect(parseFaultEvent(buf)?.reason).toBe(VIRTIO_IOMMU_FAULT_R_UNKNOWN);
    expect(dev.takeFaultEvent(buf)).toBe(0);
    buf[2] = 1;
    expect(parseFaultEvent(buf)).toBeUndefined(); // reserved nonzero: the driver ignores it
  });

  it('bounds pending fault events, dropping the oldest', () => {
    const { dev, dma } = setup({ maxPendingEvents: 2 });
    for (let i = 0; i < 5; i++) expect(() => dma.readU8(i)).toThrow(DmaFault);
    expect(dev.pendingEvents).toBe(2);
    expect(dev.stats.eventsDropped).toBe(3);
    const buf = new Uint8Array(24);
    dev.takeFaultEvent(buf);
    expect(parseFaultEvent(buf)?.address).toBe(3n);
  });

  it('rejects addresses that are not safe integers with invalid-address, not a fault', () => {
    const { dma, faults } = setup();
    for (const fn of [() => dma.readU8(-1), () => dma.readU8(0.5), () => dma.readInto(2 ** 53, new Uint8Array(1)), () => dma.checkRange(0, -1, 'read')]) {
      expect(fn).toThrow(GuestMemoryError);
      try {
        fn();
      } catch (e) {
        expect((e as GuestMemoryError).kind).toBe('invalid-address');
      }
    }
    expect(faults.length).toBe(0);
    expect(() => dma.writeU53(0, -1)).toThrow(/not a non-negative safe integer/);
  });

  it('zero-length accesses succeed without a translation', () => {
    const { dma, faults } = setup();
    dma.checkRange(0x1000, 0, 'write');
    dma.readInto(0x1000, new Uint8Array(0));
    dma.writeFrom(0x1000, new Uint8Array(0));
    dma.fill(0x1000, 0, 0);
    expect(dma.tryView(0x1000, 0, 'read')?.length).toBe(0);
    expect(dma.slices(0x1000, 0, 'read')).toEqual([]);
    expect(faults.length).toBe(0);
  });

  it('readU53 names the IOVA when the value is too large', () => {
    const { dev, dma } = setup();
    attach(dev, 1, 1);
    map(dev, 1, 0x1000n, 0x1fffn, 0x3000n);
    dma.writeU64(0x1008, 1n << 60n);
    expect(() => dma.readU53(0x1008)).toThrow(/IOVA 0x1008/);
  });

  it('works without an IOTLB', () => {
    const { dev, dma } = setup({ iotlbEntries: 0 });
    attach(dev, 1, 1);
    expect(dev.domain(1)!.tlb).toBeUndefined();
    map(dev, 1, 0x1000n, 0x1fffn, 0x3000n);
    dma.writeU8(0x1001, 9);
    expect(dma.readU8(0x1001)).toBe(9);
    unmap(dev, 1, 0x1000n, 0x1fffn);
    expect(() => dma.readU8(0x1001)).toThrow(DmaFault);
  });

  it('mappings above 2^53 exist in the domain but cannot be reached through number addresses', () => {
    const { dev, dma } = setup();
    attach(dev, 1, 1);
    expect(map(dev, 1, 1n << 60n, (1n << 60n) + 0xfffn, 0x1000n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(map(dev, 1, 0x1f_ffff_ffff_f000n, 0x20_0000_0000_0fffn, 0x2000n)).toBe(VIRTIO_IOMMU_S_OK); // straddles 2^53
    expect(dev.domain(1)!.mappings.find((1n << 60n) + 5n)?.physStart).toBe(0x1000n);
    dma.writeU8(2 ** 53 - 1, 3); // the last number-addressable byte of the straddling mapping
    expect(dma.inner.readU8(0x2fff)).toBe(3);
    // A mapping pointing above 2^53 is never reachable RAM.
    expect(map(dev, 1, 0x4000n, 0x4fffn, 1n << 60n)).toBe(VIRTIO_IOMMU_S_OK);
    expectFault(() => dma.readU8(0x4000), { reason: 'bad-target' });
  });
});
