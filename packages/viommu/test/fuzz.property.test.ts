import { GuestMemory } from '@ioplane/guest-memory';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DmaFault, GuestIommuDriver, type InvalidationMode, VIRTIO_IOMMU_S_NOMEM, VirtioIommu, directTransport, parseConfig } from '../src/index.js';

describe('hostile request bytes (structured fuzzing)', () => {
  it('never throws, writes only the used length, and answers a tail with a known status', () => {
    const type = fc.oneof(fc.integer({ min: 0, max: 7 }), fc.nat(255));
    const body = fc.uint8Array({ maxLength: 100 });
    fc.assert(
      fc.property(fc.array(fc.record({ type, body, writable: fc.nat(80), small: fc.boolean() }), { minLength: 1, maxLength: 40, size: 'max' }), (reqs) => {
        const dev = new VirtioIommu({ probeSize: 48, maxMappingsPerDomain: 8, maxDomains: 4 });
        for (let ep = 0; ep < 4; ep++) dev.addEndpoint(ep, { reserved: ep === 3 ? [{ start: 0n, end: 0xfffn }] : [] });
        for (const r of reqs) {
          const readable = new Uint8Array(Math.max(1, r.body.length));
          readable.set(r.body);
          readable[0] = r.type;
          if (r.small) {
            // Keep IDs and addresses small so requests meet existing state often.
            for (let i = 4; i + 4 <= readable.length; i += 4) readable[i + 1] = readable[i + 2] = readable[i + 3] = 0;
          }
          const writable = new Uint8Array(r.writable).fill(0xcc);
          const used = dev.handleRequest(readable, writable);
          expect([0, 4, 52, writable.length]).toContain(used);
          expect(used).toBeLessThanOrEqual(writable.length);
          for (let i = used; i < writable.length; i++) expect(writable[i]).toBe(0xcc);
          if (used > 0) {
            expect(writable[used - 4]).toBeLessThanOrEqual(VIRTIO_IOMMU_S_NOMEM);
            expect([writable[used - 3], writable[used - 2], writable[used - 1]]).toEqual([0, 0, 0]);
          }
        }
        for (const d of dev.listDomains()) expect(d.mappings.size).toBeLessThanOrEqual(8);
        expect(dev.listDomains().length).toBeLessThanOrEqual(4);
      }),
      { numRuns: 300 },
    );
  });
});

/**
 * The guarantees the README states for each mode, checked against the device:
 * a buffer the guest has mapped (and not unmapped) is reachable in its
 * direction; memory never mapped is never reachable; in strict mode an
 * unmapped buffer is unreachable at once; in deferred mode at most
 * `batchSize` unmapped buffers are still reachable; in optimistic mode at most
 * `quota`.
 */
describe('guest driver modes keep their promises (property)', () => {
  const PAGE = 4096;
  type Op = { t: 'map'; page: number; pages: number; write: boolean } | { t: 'unmap'; k: number } | { t: 'tick'; ms: number };
  const op: fc.Arbitrary<Op> = fc.oneof(
    { weight: 3, arbitrary: fc.record({ t: fc.constant('map' as const), page: fc.nat(40), pages: fc.integer({ min: 1, max: 3 }), write: fc.boolean() }) },
    { weight: 3, arbitrary: fc.record({ t: fc.constant('unmap' as const), k: fc.nat() }) },
    { weight: 1, arbitrary: fc.record({ t: fc.constant('tick' as const), ms: fc.nat(6) }) },
  );

  for (const mode of ['strict', 'deferred', 'optimistic'] as InvalidationMode[]) {
    it(`${mode}`, () => {
      fc.assert(
        fc.property(fc.array(op, { minLength: 1, maxLength: 60, size: 'max' }), (ops) => {
          const dev = new VirtioIommu();
          dev.addEndpoint(1);
          const ram = GuestMemory.create(64 * PAGE);
          const dma = dev.dmaMemory(1, ram);
          let now = 0;
          const driver = new GuestIommuDriver(directTransport(dev), parseConfig(dev.config), () => now);
          const LIMIT = 4;
          const dom = driver.attach(1, { mode, batchSize: LIMIT, flushDelayMs: 10, quota: LIMIT, timeoutMs: 10 });
          const live: { iova: number; len: number; write: boolean }[] = [];
          const gone: { iova: number; len: number; write: boolean }[] = [];
          // The granules a live mapping covers (the driver maps whole pages).
          const inLive = (iova: number) => live.some((m) => iova >= m.iova - (m.iova % PAGE) && iova < Math.ceil((m.iova + m.len) / PAGE) * PAGE);
          for (const o of ops) {
            if (o.t === 'map') {
              const len = o.pages * PAGE - 8;
              const iova = dom.map(o.page * PAGE + 8, len, o.write ? 'from-device' : 'to-device');
              live.push({ iova, len, write: o.write });
            } else if (o.t === 'unmap') {
              if (live.length === 0) continue;
              const [m] = live.splice(o.k % live.length, 1);
              dom.unmap(m!.iova);
              gone.push(m!);
            } else {
              now += o.ms;
              dom.expire();
            }
            // Every live buffer is reachable in its direction (and only that one).
            for (const m of live) {
              if (m.write) {
                dma.fill(m.iova, m.len, 1);
                expect(() => dma.readU8(m.iova)).toThrow(DmaFault);
              } else dma.readInto(m.iova, new Uint8Array(m.len));
            }
            // Unmapped buffers still live in the device: none in strict, at most LIMIT mappings otherwise.
            const held = dev.domain(dom.id)!.mappings.size - live.length;
            if (mode === 'strict') {
              expect(held).toBe(0);
              for (const g of gone) if (!inLive(g.iova)) expect(() => dma.checkRange(g.iova, 1, g.write ? 'write' : 'read')).toThrow(DmaFault);
            } else if (mode === 'deferred') expect(held).toBeLessThan(LIMIT); // the batch goes out when the LIMIT-th unmap arrives
            else expect(held).toBeLessThanOrEqual(LIMIT); // teardown beyond the quota
            expect(dom.reachable).toBe(dev.domain(dom.id)!.mappings.size);
            // Never-mapped IOVAs (the allocator starts at one page; nothing ever goes past 200 pages here).
            expect(() => dma.checkRange(0, 1, 'read')).toThrow(DmaFault);
            expect(() => dma.checkRange(200 * PAGE, 1, 'read')).toThrow(DmaFault);
          }
          // The time bound: flushDelayMs / timeoutMs later, nothing unmapped is left.
          now += 10;
          dom.expire();
          expect(dev.domain(dom.id)!.mappings.size).toBe(live.length);
          for (const g of gone) {
            if (inLive(g.iova)) continue;
            expect(() => dma.checkRange(g.iova, 1, 'read')).toThrow(DmaFault);
          }
        }),
        { numRuns: 100 },
      );
    });
  }
});
