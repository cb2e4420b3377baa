import { GuestMemory } from '@ioplane/guest-memory';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  DmaFault,
  GuestIommuDriver,
  type InvalidationMode,
  VIRTIO_IOMMU_ATTACH_F_BYPASS,
  VIRTIO_IOMMU_S_NOMEM,
  VIRTIO_IOMMU_S_OK,
  VirtioIommu,
  attachRequest,
  detachRequest,
  directTransport,
  mapRequest,
  parseConfig,
  probeRequest,
  unmapRequest,
} from '../src/index.js';

describe('hostile request bytes (structured fuzzing)', () => {
  it('never throws, writes only the used length, and answers a tail with a known status', () => {
    // Mostly well-formed requests over small IDs (endpoints 0–6, domains 1–6, page-aligned ranges in
    // 128 pages), so requests succeed and meet existing state; a minority have a byte overwritten, the
    // readable part truncated or the writable part resized, and a few are random bytes.
    const dom = fc.integer({ min: 1, max: 6 });
    // Six endpoints (and a missing seventh): a domain lives only while an endpoint is attached, so
    // with no more endpoints than maxDomains the domain cap could never be tested.
    const ep = fc.integer({ min: 0, max: 6 });
    const page = fc.integer({ min: 0, max: 127 });
    const pages = fc.integer({ min: 1, max: 4 });
    // Most maps and unmaps name a domain that exists (picked when sent), so MAP reaches the mapping cap.
    const existing = fc.option(fc.nat(), { freq: 5 });
    const bypass = fc.oneof({ weight: 4, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) });
    const flags = fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 3 }) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 7 }) });
    const valid = fc.oneof(
      { weight: 3, arbitrary: fc.record({ t: fc.constant('attach' as const), dom, ep, bypass }) },
      { weight: 1, arbitrary: fc.record({ t: fc.constant('detach' as const), dom, ep }) },
      { weight: 5, arbitrary: fc.record({ t: fc.constant('map' as const), dom, existing, page, pages, phys: page, flags }) },
      { weight: 2, arbitrary: fc.record({ t: fc.constant('unmap' as const), dom, existing, page, pages }) },
      { weight: 2, arbitrary: fc.record({ t: fc.constant('probe' as const), ep }) },
    );
    const damage = fc.oneof(
      { weight: 7, arbitrary: fc.constant({ d: 'none' as const }) },
      { weight: 1, arbitrary: fc.record({ d: fc.constant('byte' as const), at: fc.nat(63), value: fc.nat(255) }) },
      { weight: 1, arbitrary: fc.record({ d: fc.constant('truncate' as const), len: fc.nat(63) }) },
      { weight: 1, arbitrary: fc.record({ d: fc.constant('writable' as const), len: fc.nat(80) }) },
    );
    const random = fc.record({ t: fc.constant('raw' as const), type: fc.oneof(fc.integer({ min: 0, max: 7 }), fc.nat(255)), body: fc.uint8Array({ maxLength: 100 }), writable: fc.nat(80) });
    const req = fc.oneof({ weight: 9, arbitrary: fc.tuple(valid, damage) }, { weight: 1, arbitrary: fc.tuple(random, fc.constant({ d: 'none' as const })) });
    const P = 4096n;
    let ok = 0;
    let okMaps = 0;
    let okProbes = 0;
    let runsWithDomain = 0;
    let fullDomain = 0;
    let allDomains = 0;
    fc.assert(
      fc.property(fc.array(req, { minLength: 1, maxLength: 60, size: 'max' }), (reqs) => {
        const dev = new VirtioIommu({ probeSize: 48, maxMappingsPerDomain: 8, maxDomains: 4 });
        for (let e = 0; e < 6; e++) dev.addEndpoint(e, { reserved: e === 3 ? [{ start: 0n, end: 0xfffn }] : [] });
        let hadDomain = false;
        for (const [r, dmg] of reqs) {
          let readable: Uint8Array;
          let writable: Uint8Array;
          if (r.t === 'raw') {
            readable = new Uint8Array(Math.max(1, r.body.length));
            readable.set(r.body);
            readable[0] = r.type;
            writable = new Uint8Array(r.writable);
          } else {
            let id = r.t === 'probe' ? 0 : r.dom;
            if ((r.t === 'map' || r.t === 'unmap') && r.existing !== null) {
              const ids = dev.listDomains().map((d) => d.id);
              if (ids.length > 0) id = ids[r.existing % ids.length]!;
            }
            const enc =
              r.t === 'attach' ? attachRequest(id, r.ep, r.bypass ? VIRTIO_IOMMU_ATTACH_F_BYPASS : 0)
              : r.t === 'detach' ? detachRequest(id, r.ep)
              : r.t === 'map' ? mapRequest(id, BigInt(r.page) * P, BigInt(r.page + r.pages) * P - 1n, BigInt(r.phys) * P, r.flags)
              : r.t === 'unmap' ? unmapRequest(id, BigInt(r.page) * P, BigInt(r.page + r.pages) * P - 1n)
              : probeRequest(r.ep, 48);
            readable = enc.readable;
            writable = enc.writable;
            if (dmg.d === 'byte') readable[dmg.at % readable.length] = dmg.value;
            else if (dmg.d === 'truncate') readable = readable.slice(0, dmg.len % readable.length);
            else if (dmg.d === 'writable') writable = new Uint8Array(dmg.len);
          }
          writable.fill(0xcc);
          const used = dev.handleRequest(readable, writable);
          expect([0, 4, 52, writable.length]).toContain(used);
          expect(used).toBeLessThanOrEqual(writable.length);
          for (let i = used; i < writable.length; i++) expect(writable[i]).toBe(0xcc);
          if (used > 0) {
            expect(writable[used - 4]).toBeLessThanOrEqual(VIRTIO_IOMMU_S_NOMEM);
            expect([writable[used - 3], writable[used - 2], writable[used - 1]]).toEqual([0, 0, 0]);
            if (writable[used - 4] === VIRTIO_IOMMU_S_OK) {
              ok++;
              if (r.t === 'map' && dmg.d === 'none') okMaps++;
              if (r.t === 'probe' && dmg.d === 'none') okProbes++;
            }
          }
          // The caps hold after every request, not only at the end.
          const domains = dev.listDomains();
          expect(domains.length).toBeLessThanOrEqual(4);
          if (domains.length === 4) allDomains++;
          if (domains.length > 0) hadDomain = true;
          for (const d of domains) {
            expect(d.mappings.size).toBeLessThanOrEqual(8);
            if (d.mappings.size === 8) fullDomain++;
          }
        }
        if (hadDomain) runsWithDomain++;
      }),
      { numRuns: 300 },
    );
    // The generator reaches the state-changing paths, and both caps.
    // (Floors are about half what a run gives: ~4000 OK, ~1000 OK MAPs, ~800 PROBEs, ~260 runs, 50+ and 350+ steps at the caps.)
    expect(ok).toBeGreaterThan(2000);
    expect(okMaps).toBeGreaterThan(500);
    expect(okProbes).toBeGreaterThan(400);
    expect(runsWithDomain).toBeGreaterThan(200);
    expect(fullDomain).toBeGreaterThan(10);
    expect(allDomains).toBeGreaterThan(100);
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
