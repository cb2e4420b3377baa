import fc from 'fast-check';
import { expect } from 'vitest';
import type { DmaMemory } from '@ioplane/guest-memory';
import { type DmaDomainOptions, DmaFault, type DmaMapper, type InvalidationMode } from '../src/index.js';

const PAGE = 4096;

/** The fault reason `f` throws, or 'none'. */
export function fault(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    if (e instanceof DmaFault) return e.fault.reason;
    throw e;
  }
  return 'none';
}

/** Whether a device can read 16 bytes at `iova`. */
export function reachable(dma: Pick<DmaMemory, 'checkRange'>, iova: number): boolean {
  return fault(() => dma.checkRange(iova, 16, 'read')) === 'none';
}

/** A fresh domain in `options.mode` over a fresh unit, the device's view of it, and the guest clock. */
export type ModeRig = (options: DmaDomainOptions) => { dom: DmaMapper; dma: DmaMemory; tick: (ms: number) => void };

/**
 * The modes' promises, as a fast-check property over random map / unmap /
 * unmapMany / flush / clock sequences: never-unmapped buffers reach exactly
 * their guest pages, strict leaves nothing stale, deferred fewer than its
 * batch and optimistic at most its quota, a flush nothing. Every word of
 * the guest pages at `data` + (0..63) × 4 KiB must hold its own address. Maps are 1 to `maxPages` pages long: with hundreds, the IOVAs
 * cross many 2 MiB frames, and emptied page tables are unlinked and reused.
 */
export function checkModeBounds(rig: ModeRig, data: number, numRuns: number, maxPages = 3): void {
  const step = fc.oneof(
    fc.record({ kind: fc.constant('map' as const), page: fc.integer({ min: 0, max: 63 }), pages: fc.integer({ min: 1, max: maxPages }), off: fc.integer({ min: 0, max: PAGE - 1 }) }),
    fc.record({ kind: fc.constant('many' as const), pick: fc.array(fc.nat(), { maxLength: 8 }) }),
    fc.record({ kind: fc.constant('one' as const), pick: fc.nat() }),
    fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 0, max: 6 }) }),
    fc.record({ kind: fc.constant('flush' as const) }),
  );
  const mode = fc.constantFrom<InvalidationMode>('strict', 'deferred', 'optimistic');
  fc.assert(
    fc.property(mode, fc.array(step, { maxLength: 40 }), (m, steps) => {
      const batchSize = 5;
      const { dom, dma, tick } = rig({ mode: m, batchSize, flushDelayMs: 10, quota: batchSize, timeoutMs: 10 });
      const live: { iova: number; gpa: number }[] = [];
      const unmapped: number[] = [];
      for (const s of steps) {
        if (s.kind === 'map') {
          const gpa = data + s.page * PAGE + (s.off & ~3);
          live.push({ iova: dom.map(gpa, s.pages * PAGE - (s.off & ~3), 'bidirectional'), gpa });
        } else if (s.kind === 'tick') {
          tick(s.ms);
          // An unmap stamps with the time last read: a sync reads the clock and applies it.
          dom.syncMaps();
        } else if (s.kind === 'flush') dom.flush();
        else {
          const picks = s.kind === 'one' ? [s.pick] : s.pick;
          const chosen: number[] = [];
          for (const p of picks) {
            if (live.length === 0) break;
            chosen.push(live.splice(p % live.length, 1)[0]!.iova);
          }
          if (s.kind === 'one' && chosen.length === 1) dom.unmap(chosen[0]!);
          else dom.unmapMany(chosen);
          unmapped.push(...chosen);
        }
        // Never-unmapped buffers reach exactly their guest pages, whatever else was cached.
        for (const { iova, gpa } of live) expect(dma.readU32(iova)).toBe(gpa);
        const liveIovas = new Set(live.map((l) => l.iova - (l.iova % PAGE)));
        // Distinct IOVAs: optimistic teardown hands an unmapped IOVA back, so one can be unmapped twice.
        const stale = [...new Set(unmapped)].filter((a) => !liveIovas.has(a - (a % PAGE)) && reachable(dma, a)).length;
        if (m === 'strict' || s.kind === 'flush') expect(stale).toBe(0);
        else expect(stale).toBeLessThanOrEqual(m === 'deferred' ? batchSize - 1 : batchSize);
      }
    }),
    { numRuns },
  );
}
