import { describe, expect, it } from 'vitest';
import {
  DmaFault,
  GuestIommuDriver,
  VIRTIO_IOMMU_S_NOENT,
  VIRTIO_IOMMU_S_NOMEM,
  detachRequest,
  parseFaultEvent,
  VIRTIO_IOMMU_T_MAP,
  VIRTIO_IOMMU_T_UNMAP,
  ViommuError,
  VirtioIommu,
  directTransport,
  mapRequest,
  parseConfig,
  parseProbeProperties,
} from '../src/index.js';
import { driverRig } from './helpers.js';

function rig(options: { reserved?: { start: bigint; end: bigint }[]; inputRange?: { start: bigint; end: bigint } } = {}) {
  return driverRig(options.inputRange ? { inputRange: options.inputRange } : {}, options.reserved ?? []);
}

describe('guest driver: strict mode', () => {
  it('maps before DMA and unmaps after; once unmap returns the device cannot reach the buffer', () => {
    const { dev, dma, ram, driver, transport } = rig();
    const dom = driver.attach(1, { mode: 'strict' });
    expect(dev.endpoint(1)!.domain!.id).toBe(dom.id);
    ram.writeU32(0x5010, 0xcafe);
    const iova = dom.map(0x5010, 64, 'to-device');
    expect(iova % 4096).toBe(0x10);
    expect(dma.readU32(iova)).toBe(0xcafe);
    expect(() => dma.writeU32(iova, 1)).toThrow(DmaFault); // to-device: read-only for the device
    const kicks = transport.kicks;
    dom.unmap(iova);
    expect(transport.kicks).toBe(kicks + 1);
    expect(() => dma.readU32(iova)).toThrow(DmaFault);
    expect(dom.stats).toMatchObject({ maps: 1, unmaps: 1, requests: 2, batches: 2 });
    // The IOVA is free again at once (mapAt claims exactly it) — though the
    // next-fit allocator does not hand it out next.
    const next = dom.map(0x9000, 16, 'from-device');
    expect(next).not.toBe(iova - 0x10);
    expect(dom.mapAt(iova - 0x10, 0x9000, 16, 'from-device')).toBe(iova - 0x10);
  });

  it('allocates next-fit: fresh IOVAs above the last one, wrapping to the bottom when the top is used up', () => {
    // IOVAs 0x1000..0x3fff: three pages (0 is never handed out).
    const { driver } = rig({ inputRange: { start: 0n, end: 0x3fffn } });
    const dom = driver.attach(1, { mode: 'strict' });
    const a = dom.map(0x10000, 64, 'to-device');
    expect(a).toBe(0x1000);
    dom.unmap(a);
    const b = dom.map(0x10000, 64, 'to-device');
    expect(b).toBe(0x2000);
    const c = dom.map(0x20000, 64, 'to-device');
    expect(c).toBe(0x3000);
    // Nothing above 0x3000: the search wraps and finds 0x1000, free since a's UNMAP.
    expect(dom.map(0x30000, 64, 'to-device')).toBe(0x1000);
    expect(() => dom.map(0x40000, 64, 'to-device')).toThrow(expect.objectContaining({ kind: 'driver-state' }));
  });

  it('covers whole granules and spans them for unaligned buffers', () => {
    const { dma, driver } = rig();
    const dom = driver.attach(1);
    const iova = dom.map(0x1ff0, 0x20, 'bidirectional');
    dma.writeU32(iova + 0x1c, 7);
    expect(dma.readU32(iova + 0x1c)).toBe(7);
    expect(dma.readU32(iova - 0x1ff0 + 4096 * 2 - 4)).toBe(0); // the rest of the second granule
  });

  it('reports failures as ViommuError with the device status', () => {
    const { driver } = rig();
    expect(() => driver.attach(9)).toThrow(ViommuError);
    let err: unknown;
    try {
      driver.send(mapRequest(77, 0x1000n, 0x1fffn, 0n, 3));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ViommuError);
    expect(err).toMatchObject({ kind: 'request-failed', status: VIRTIO_IOMMU_S_NOENT });
    const dom = driver.attach(1);
    expect(() => dom.unmap(0x1234)).toThrow(/not mapped/);
    expect(() => dom.map(0, 0, 'to-device')).toThrow(ViommuError);
  });

  it('probes the endpoint and never hands out reserved IOVAs', () => {
    const { driver, dma } = rig({ reserved: [{ start: 0x1000n, end: 0x8fffn }] });
    const dom = driver.attach(1);
    expect(dom.reserved).toEqual([{ start: 0x1000n, end: 0x8fffn, subtype: 0 }]);
    const a = dom.map(0x20000, 4096, 'to-device');
    expect(a).toBe(0x9000);
    expect(() => dma.readU8(0x1000)).toThrow(DmaFault);
  });

  it('destroy detaches: the domain ceases to exist', () => {
    const { dev, driver } = rig();
    const dom = driver.attach(1, { mode: 'deferred' });
    dom.unmap(dom.map(0x1000, 1, 'to-device'));
    dom.destroy();
    expect(dev.domain(dom.id)).toBeUndefined();
  });
});

describe('guest driver: deferred mode (batched invalidation)', () => {
  it('leaves unmapped buffers reachable until the batch is full, then sends one batch', () => {
    const { dma, driver, transport } = rig();
    const dom = driver.attach(1, { mode: 'deferred', batchSize: 4, flushDelayMs: 1000 });
    const iovas = [0, 1, 2, 3].map((i) => dom.map(0x10000 + i * 4096, 4096, 'bidirectional'));
    const kicks = transport.kicks;
    for (const iova of iovas.slice(0, 3)) dom.unmap(iova);
    expect(transport.kicks).toBe(kicks);
    expect(dma.readU8(iovas[0]!)).toBe(0); // still reachable: the guest may not rely on revocation yet
    expect(dom.reachable).toBe(4);
    dom.unmap(iovas[3]!);
    expect(transport.kicks).toBe(kicks + 1); // one notification
    // Four MAPs, then one UNMAP covering the four adjacent mappings (§5.13.6.4).
    expect(dom.stats.requests).toBe(5);
    for (const iova of iovas) expect(() => dma.readU8(iova)).toThrow(DmaFault);
  });

  it('flushes when the oldest pending unmap is flushDelayMs old (injected clock)', () => {
    const { dma, driver, tick } = rig();
    const dom = driver.attach(1, { mode: 'deferred', batchSize: 100, flushDelayMs: 10 });
    const a = dom.map(0x10000, 64, 'to-device');
    dom.unmap(a);
    tick(9);
    dom.expire();
    expect(dma.readU8(a)).toBe(0);
    tick(1);
    dom.expire();
    expect(() => dma.readU8(a)).toThrow(DmaFault);
  });

  it('merges adjacent pending unmaps into one UNMAP, never across a live mapping', () => {
    const { dma, driver } = rig();
    const dom = driver.attach(1, { mode: 'deferred', batchSize: 100, flushDelayMs: 1e9 });
    const [a, b, c, e] = [0, 1, 2, 3].map((i) => dom.map(0x10000 + i * 4096, 4096, 'bidirectional')) as [number, number, number, number];
    expect([b - a, c - b, e - c]).toEqual([4096, 4096, 4096]);
    dom.unmap(a);
    dom.unmap(c);
    dom.unmap(e);
    const sent = dom.stats.requests;
    dom.flush();
    expect(dom.stats.requests - sent).toBe(2); // [a] and [c, e]: b is live between them
    expect(dma.readU8(b)).toBe(0);
    for (const iova of [a, c, e]) expect(() => dma.readU8(iova)).toThrow(DmaFault);
  });

  it('never reuses an IOVA before its UNMAP completed', () => {
    // Two usable IOVA pages, so the allocator must come back to them.
    const { driver, dev } = rig({ inputRange: { start: 0n, end: 0x2fffn } });
    const dom = driver.attach(1, { mode: 'deferred', batchSize: 100, flushDelayMs: 1e9 });
    const a = dom.map(0x10000, 64, 'to-device');
    dom.unmap(a);
    const b = dom.map(0x10000, 64, 'to-device');
    expect(b).not.toBe(a);
    dom.unmap(b);
    // Both pages are unmapped but not yet flushed: a third map must flush first.
    expect(dev.domain(dom.id)!.mappings.size).toBe(2);
    const c = dom.map(0x30000, 64, 'to-device');
    expect([a, b]).toContain(c);
    expect(dev.domain(dom.id)!.mappings.size).toBe(1);
    expect(dom.stats.batches).toBe(4); // 3 MAPs, 1 UNMAP batch
  });
});

describe('guest driver: optimistic teardown', () => {
  it('keeps the mapping live after unmap and hands the same IOVA back for the same pages and direction', () => {
    const { dma, driver, transport } = rig();
    const dom = driver.attach(1, { mode: 'optimistic', quota: 8, timeoutMs: 10 });
    const a = dom.map(0x10000, 512, 'from-device');
    dom.unmap(a);
    expect(() => dma.writeU8(a, 1)).not.toThrow(); // torn down later, not now
    const kicks = transport.kicks;
    expect(dom.map(0x10000 + 100, 64, 'from-device')).toBe(a + 100);
    expect(transport.kicks).toBe(kicks); // no MAP request
    expect(dom.stats.reused).toBe(1);
    dom.unmap(a);
    expect(dom.map(0x10000, 512, 'to-device')).not.toBe(a); // another direction: a new mapping
  });

  it('tears down beyond the quota (oldest first) and after the timeout, in batches', () => {
    const { dma, driver, tick } = rig();
    const dom = driver.attach(1, { mode: 'optimistic', quota: 2, timeoutMs: 10 });
    const iovas = [0, 1, 2].map((i) => dom.map(0x10000 + i * 4096, 4096, 'to-device'));
    for (const iova of iovas) dom.unmap(iova);
    expect(() => dma.readU8(iovas[0]!)).toThrow(DmaFault);
    expect(dma.readU8(iovas[1]!)).toBe(0);
    tick(10);
    dom.expire();
    for (const iova of iovas) expect(() => dma.readU8(iova)).toThrow(DmaFault);
    expect(dom.reachable).toBe(0);
  });
});

describe('request encoders and decoders', () => {
  it('lays out MAP and UNMAP exactly (§5.13.6.3–4)', () => {
    const m = mapRequest(0x01020304, 0x1122334455667000n, 0x1122334455667fffn, 0xa000n, 3);
    expect(m.readable.length).toBe(36);
    expect(m.writable.length).toBe(4);
    expect([...m.readable.subarray(0, 12)]).toEqual([VIRTIO_IOMMU_T_MAP, 0, 0, 0, 4, 3, 2, 1, 0x00, 0x70, 0x66, 0x55]);
    expect(new DataView(m.readable.buffer).getBigUint64(24, true)).toBe(0xa000n);
    expect(new DataView(m.readable.buffer).getUint32(32, true)).toBe(3);
    expect(VIRTIO_IOMMU_T_UNMAP).toBe(4);
  });

  it('parses PROBE properties defensively: unknown types and reserved bits skipped, truncation stops', () => {
    const b = new Uint8Array(64);
    const v = new DataView(b.buffer);
    v.setUint16(0, 0x7, true); // unknown type, 4 bytes of value
    v.setUint16(2, 4, true);
    v.setUint16(8, 0x1001, true); // RESV_MEM with a reserved bit: ignored
    v.setUint16(10, 20, true);
    v.setUint16(32, 1, true);
    v.setUint16(34, 20, true);
    b[36] = 9; // unknown subtype: treated as RESERVED
    v.setBigUint64(40, 5n, true);
    v.setBigUint64(48, 6n, true);
    expect(parseProbeProperties(b)).toEqual([{ subtype: 0, start: 5n, end: 6n }]);
    v.setUint16(56, 1, true);
    v.setUint16(58, 20, true); // would run past the end
    expect(parseProbeProperties(b).length).toBe(1);
  });
});

describe('guest driver: failures and exhaustion', () => {
  it('flushes pending unmaps to find IOVA space, then reports exhaustion', () => {
    const dev = new VirtioIommu({ inputRange: { start: 0x1000n, end: 0x4fffn } });
    dev.addEndpoint(1);
    const driver = new GuestIommuDriver(directTransport(dev), parseConfig(dev.config));
    const dom = driver.attach(1, { mode: 'deferred', batchSize: 100, flushDelayMs: 1e9 });
    const a = [0, 1, 2, 3].map((i) => dom.map(i * 4096, 4096, 'to-device'));
    expect(a).toEqual([0x1000, 0x2000, 0x3000, 0x4000]);
    dom.unmap(a[1]!);
    dom.unmap(a[2]!);
    expect(dom.reachable).toBe(4);
    expect(dom.map(0x10000, 8192, 'to-device')).toBe(0x2000); // needed the flush
    expect(dom.reachable).toBe(3);
    expect(() => dom.map(0x20000, 4096, 'to-device')).toThrow(/exhausted/);
  });

  it('a refused MAP gives its IOVA back; a refused UNMAP keeps it out of use and throws', () => {
    const dev = new VirtioIommu({ maxMappingsPerDomain: 1 });
    dev.addEndpoint(1);
    const driver = new GuestIommuDriver(directTransport(dev), parseConfig(dev.config));
    const dom = driver.attach(1);
    const a = dom.map(0, 4096, 'to-device');
    expect(() => dom.map(0x8000, 4096, 'to-device')).toThrow(expect.objectContaining({ kind: 'request-failed', status: VIRTIO_IOMMU_S_NOMEM }));
    dom.unmap(a);
    // The refused MAP's IOVA (the next after a) was given back: mapAt can claim it.
    expect(dom.mapAt(a + 0x1000, 0x8000, 4096, 'to-device')).toBe(a + 0x1000);
    dom.unmap(a + 0x1000);
    expect(dom.mapAt(a, 0x8000, 4096, 'to-device')).toBe(a);
    // The domain disappears behind the driver's back: its UNMAP gets NOENT.
    driver.send(detachRequest(dom.id, 1));
    expect(() => dom.unmap(a)).toThrow(expect.objectContaining({ kind: 'request-failed', status: VIRTIO_IOMMU_S_NOENT }));
  });

  it('rejects unusable configs and short buffers', () => {
    const dev = new VirtioIommu();
    expect(() => parseConfig(dev.config.subarray(0, 39))).toThrow(/shorter/);
    expect(() => new GuestIommuDriver(directTransport(dev), { ...parseConfig(dev.config), pageSizeMask: 0n })).toThrow(/granule/);
    expect(parseFaultEvent(new Uint8Array(24), 23)).toBeUndefined();
    expect(parseFaultEvent(new Uint8Array(20))).toBeUndefined();
    const noAddress = new Uint8Array(24);
    noAddress[4] = 1;
    expect(parseFaultEvent(noAddress)).toEqual({ reason: 0, flags: 1, endpoint: 0 });
  });

  it('keeps IOVAs out of every reserved region, in any order', () => {
    const { driver } = rig({ reserved: [{ start: 0x5000n, end: 0x5fffn }, { start: 0x1000n, end: 0x2fffn }] });
    const dom = driver.attach(1);
    const got = [0, 1, 2, 3].map((i) => dom.map(i * 4096, 4096, 'to-device'));
    expect(got).toEqual([0x3000, 0x4000, 0x6000, 0x7000]);
  });
});

describe('guest driver: fixed (identity) mappings', () => {
  it('mapAt maps at the IOVA asked for, and map never hands out an IOVA inside it', () => {
    const { dma, ram, driver } = rig();
    const dom = driver.attach(1, { mode: 'strict' });
    ram.writeU32(0x3000, 0xabcd);
    // Identity: IOVA = GPA for [0x1000, 0x5000).
    expect(dom.mapAt(0x1000, 0x1000, 0x4000, 'bidirectional')).toBe(0x1000);
    expect(dma.readU32(0x3000)).toBe(0xabcd);
    dma.writeU32(0x3004, 7);
    expect(ram.readU32(0x3004)).toBe(7);
    // First-fit allocation would have started at 0x1000: it now skips the fixed range.
    for (let i = 0; i < 8; i++) {
      const iova = dom.map(0x8000 + i * 0x1000, 0x1000, 'to-device');
      expect(iova < 0x1000 || iova >= 0x5000).toBe(true);
    }
    // Overlapping an existing mapping, not granule-congruent, or at 0: refused before any request.
    const sent = dom.stats.requests;
    expect(() => dom.mapAt(0x4000, 0x4000, 0x2000, 'to-device')).toThrow(ViommuError);
    expect(() => dom.mapAt(0x20000, 0x20010, 0x1000, 'to-device')).toThrow(ViommuError);
    expect(() => dom.mapAt(0, 0, 0x1000, 'to-device')).toThrow(ViommuError);
    expect(dom.stats.requests).toBe(sent);
    // Unmapped like any other; the IOVA range is free again afterwards.
    dom.unmap(0x1000);
    expect(() => dma.readU32(0x3000)).toThrow(DmaFault);
    expect(dom.mapAt(0x1000, 0x1000, 0x1000, 'to-device')).toBe(0x1000);
  });

  it('optimistic: a fixed mapping pending teardown is flushed, not reused, when its range is asked for again', () => {
    const { dev, driver } = rig();
    const dom = driver.attach(1, { mode: 'optimistic' });
    dom.mapAt(0x10000, 0x10000, 0x1000, 'to-device');
    dom.unmap(0x10000);
    expect(dom.reachable).toBe(1);
    expect(dom.mapAt(0x10000, 0x20000, 0x1000, 'from-device')).toBe(0x10000);
    expect(dev.domain(dom.id)!.mappings.size).toBe(1);
  });
});
