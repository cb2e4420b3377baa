import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DmaFault, type InvalidationMode } from '../src/index.js';
import { driverRig } from './helpers.js';

const PAGE = 4096;

const rig = () => driverRig();

function reachable(dma: ReturnType<typeof rig>['dma'], iova: number): boolean {
  try {
    dma.checkRange(iova, 16, 'read');
    return true;
  } catch (e) {
    if (e instanceof DmaFault) return false;
    throw e;
  }
}

describe('unmapMany', () => {
  it('strict: one submission, adjacent mappings in one range UNMAP, nothing reachable on return', () => {
    const { dma, driver, transport } = rig();
    const dom = driver.attach(1, { mode: 'strict' });
    const iovas = Array.from({ length: 8 }, (_, i) => dom.queueMap(0x20000 + i * PAGE, PAGE, 'bidirectional'));
    dom.syncMaps();
    for (const a of iovas) dma.readU32(a); // warm every cache above the table
    const kicks = transport.kicks;
    const requests = dom.stats.requests;
    // Out of order, leaving one (iovas[3]) mapped: two runs, two UNMAPs, one notification.
    dom.unmapMany([iovas[7]!, iovas[0]!, iovas[2]!, iovas[1]!, iovas[5]!, iovas[4]!, iovas[6]!, 0], 7);
    expect(transport.kicks).toBe(kicks + 1);
    expect(dom.stats.requests).toBe(requests + 2);
    expect(dom.stats.unmaps).toBe(7);
    for (let i = 0; i < 8; i++) expect(reachable(dma, iovas[i]!)).toBe(i === 3);
    expect(dom.reachable).toBe(1);
    // The IOVAs are free again (strict: at once).
    dom.unmap(iovas[3]!);
    expect(dom.reachable).toBe(0);
  });

  it('an unmapped or repeated IOVA throws and changes nothing', () => {
    const { dma, driver, transport } = rig();
    const dom = driver.attach(1, { mode: 'strict' });
    const a = dom.map(0x20000, PAGE, 'to-device');
    const b = dom.map(0x30000, PAGE, 'to-device');
    const kicks = transport.kicks;
    expect(() => dom.unmapMany([a, 0x7000_0000])).toThrow(expect.objectContaining({ kind: 'driver-state' }));
    expect(() => dom.unmapMany([a, b, a])).toThrow(expect.objectContaining({ kind: 'driver-state' }));
    expect(() => dom.unmapMany([a], 2)).toThrow(expect.objectContaining({ kind: 'driver-state' }));
    // A hole in the list is not an IOVA (a driver-state error, not a TypeError).
    // eslint-disable-next-line no-sparse-arrays
    expect(() => dom.unmapMany([a, , b] as number[])).toThrow(expect.objectContaining({ kind: 'driver-state' }));
    expect(transport.kicks).toBe(kicks);
    expect(dom.reachable).toBe(2);
    expect(reachable(dma, a) && reachable(dma, b)).toBe(true);
    dom.unmapMany([a, b]);
    expect(reachable(dma, a) || reachable(dma, b)).toBe(false);
    dom.unmapMany([], 0);
  });

  it('finds mappings at IOVAs far above 2^31 (live mappings are keyed by page number)', () => {
    const { dma, driver } = rig();
    const dom = driver.attach(1, { mode: 'strict' });
    const hi = 2 ** 40 + 0x5123;
    expect(dom.mapAt(hi, 0x25123, 16, 'to-device')).toBe(hi);
    const hi2 = dom.mapAt(2 ** 52 + 0x7000, 0x27000, PAGE, 'to-device');
    expect(reachable(dma, hi) && reachable(dma, hi2)).toBe(true);
    expect(() => dom.unmap(2 ** 40 + 0x6000)).toThrow(expect.objectContaining({ kind: 'driver-state' }));
    dom.unmap(hi + 7); // any address inside the mapping's first granule names it
    dom.unmapMany([hi2]);
    expect(reachable(dma, hi) || reachable(dma, hi2)).toBe(false);
    expect(dom.reachable).toBe(0);
  });

  it('sends MAPs still queued first', () => {
    const { dma, driver } = rig();
    const dom = driver.attach(1, { mode: 'strict' });
    const a = dom.queueMap(0x20000, PAGE, 'to-device');
    const b = dom.queueMap(0x21000, PAGE, 'to-device');
    dom.unmapMany([a]);
    expect(reachable(dma, a)).toBe(false);
    expect(reachable(dma, b)).toBe(true);
  });

  it('deferred: the same as one unmap per IOVA (batch bound and clock bound)', () => {
    const { dma, driver, tick } = rig();
    const dom = driver.attach(1, { mode: 'deferred', batchSize: 4, flushDelayMs: 10 });
    const iovas = Array.from({ length: 6 }, (_, i) => dom.map(0x20000 + i * PAGE, PAGE, 'to-device'));
    dom.unmapMany(iovas, 3);
    // Below the batch size: still reachable until the flush.
    expect(iovas.slice(0, 3).every((a) => reachable(dma, a))).toBe(true);
    dom.unmapMany(iovas.slice(3), 1);
    // The fourth filled the batch: all four gone.
    expect(iovas.slice(0, 4).some((a) => reachable(dma, a))).toBe(false);
    dom.unmapMany([iovas[4]!]);
    tick(10);
    dom.unmapMany([iovas[5]!]);
    // An unmap does not read the clock (it stamps with the time last read); the next expire does.
    expect(reachable(dma, iovas[4]!)).toBe(true);
    dom.expire();
    expect(reachable(dma, iovas[4]!) || reachable(dma, iovas[5]!)).toBe(false);
    expect(dom.reachable).toBe(0);
  });

  it('property: strict unmapMany leaves exactly the model live set reachable; others modes keep their bounds', () => {
    const step = fc.oneof(
      fc.record({ kind: fc.constant('map' as const), page: fc.integer({ min: 0, max: 63 }), pages: fc.integer({ min: 1, max: 3 }) }),
      fc.record({ kind: fc.constant('many' as const), pick: fc.array(fc.nat(), { maxLength: 8 }) }),
      fc.record({ kind: fc.constant('one' as const), pick: fc.nat() }),
      fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 0, max: 6 }) }),
    );
    const mode = fc.constantFrom<InvalidationMode>('strict', 'deferred', 'optimistic');
    fc.assert(
      fc.property(mode, fc.array(step, { maxLength: 40 }), (m, steps) => {
        const { dma, driver, tick } = rig();
        const batchSize = 5;
        const dom = driver.attach(1, { mode: m, batchSize, flushDelayMs: 10, quota: batchSize, timeoutMs: 10 });
        const live: number[] = [];
        const unmapped: number[] = [];
        for (const s of steps) {
          if (s.kind === 'map') live.push(dom.map(0x20000 + s.page * PAGE, s.pages * PAGE, 'bidirectional'));
          else if (s.kind === 'tick') tick(s.ms);
          else {
            const picks = s.kind === 'one' ? [s.pick] : s.pick;
            const chosen: number[] = [];
            for (const p of picks) {
              if (live.length === 0) break;
              chosen.push(live.splice(p % live.length, 1)[0]!);
            }
            if (s.kind === 'one' && chosen.length === 1) dom.unmap(chosen[0]!);
            else dom.unmapMany(chosen);
            unmapped.push(...chosen);
          }
          // Never-unmapped buffers stay reachable in every mode.
          for (const a of live) expect(reachable(dma, a)).toBe(true);
          // Distinct IOVAs: optimistic teardown hands an unmapped IOVA back, so one can be unmapped twice.
          const stale = [...new Set(unmapped)].filter((a) => !live.includes(a) && reachable(dma, a)).length;
          // strict: nothing unmapped is reachable; deferred/optimistic: fewer than the batch / at most the quota.
          if (m === 'strict') expect(stale).toBe(0);
          else expect(stale).toBeLessThanOrEqual(m === 'deferred' ? batchSize - 1 : batchSize);
        }
      }),
      { numRuns: 200 },
    );
  });
});
