import fc from 'fast-check';
import { expect } from 'vitest';
import type { DmaMemory } from '@ioplane/guest-memory';
import { type DmaDomainOptions, DmaFault, type DmaMapper, type InvalidationMode } from '../src/index.js';

const PAGE = 4096;
const FRAME = 0x20_0000;

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
 * batch and optimistic at most its quota, a flush nothing; a stale buffer
 * still reached reaches a GPA it was mapped to. Every word of the guest pages
 * at `data` + (0..poolPages + maxPages − 1) × 4 KiB must hold its own address.
 * Maps are 1 to `maxPages` pages long: with hundreds, the IOVAs cross many
 * 2 MiB frames, and emptied page tables are unlinked and reused.
 */
export function checkModeBounds(rig: ModeRig, data: number, numRuns: number, maxPages = 3, poolPages = 61): void {
  const step = fc.oneof(
    fc.record({ kind: fc.constant('map' as const), pages: fc.integer({ min: 1, max: maxPages }), off: fc.integer({ min: 0, max: PAGE - 1 }) }),
    fc.record({ kind: fc.constant('many' as const), pick: fc.array(fc.nat(), { maxLength: 8 }) }),
    fc.record({ kind: fc.constant('one' as const), pick: fc.nat() }),
    fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 0, max: 6 }) }),
    fc.record({ kind: fc.constant('flush' as const) }),
  );
  const mode = fc.constantFrom<InvalidationMode>('strict', 'deferred', 'optimistic');
  let frameProbes = 0;
  fc.assert(
    fc.property(mode, fc.array(step, { maxLength: 40 }), (m, steps) => {
      const batchSize = 5;
      const { dom, dma, tick } = rig({ mode: m, batchSize, flushDelayMs: 10, quota: batchSize, timeoutMs: 10 });
      type Buf = { iova: number; gpa: number; len: number };
      const live: Buf[] = [];
      const unmapped: Buf[] = [];
      const ever: Buf[] = [];
      // Consecutive maps take consecutive guest pages, so a translation through another buffer's table shows.
      let nextGpa = 0;
      for (const s of steps) {
        if (s.kind === 'map') {
          const off = s.off & ~3;
          const gpa = data + (nextGpa % poolPages) * PAGE + off;
          nextGpa += s.pages;
          const len = s.pages * PAGE - off;
          const b = { iova: dom.map(gpa, len, 'bidirectional'), gpa, len };
          live.push(b);
          ever.push(b);
        } else if (s.kind === 'tick') {
          tick(s.ms);
          // An unmap stamps with the time last read: a sync reads the clock and applies it.
          dom.syncMaps();
        } else if (s.kind === 'flush') dom.flush();
        else {
          const picks = s.kind === 'one' ? [s.pick] : s.pick;
          const chosen: Buf[] = [];
          for (const p of picks) {
            if (live.length === 0) break;
            chosen.push(live.splice(p % live.length, 1)[0]!);
          }
          if (s.kind === 'one' && chosen.length === 1) dom.unmap(chosen[0]!.iova);
          else dom.unmapMany(chosen.map((b) => b.iova));
          unmapped.push(...chosen);
        }
        // Never-unmapped buffers reach exactly their guest pages, whatever else was cached: at the
        // start and in every 2 MiB frame they cross (each frame has its own table and PDE).
        for (const b of live) for (const a of probes(b.iova, b.len)) {
          frameProbes++;
          expect(dma.readU32(a), `live IOVA 0x${a.toString(16)}`).toBe(b.gpa + (a - b.iova));
        }
        const covered = (a: number): boolean => live.some((b) => a >= b.iova - (b.iova % PAGE) && a < b.iova + b.len);
        // Distinct IOVAs: optimistic teardown hands an unmapped IOVA back, so one can be unmapped twice.
        let stale = 0;
        for (const iova of new Set(unmapped.map((b) => b.iova))) {
          const b = unmapped.find((u) => u.iova === iova)!;
          let reached = false;
          for (const a of probes(b.iova, b.len)) {
            if (covered(a) || !reachable(dma, a)) continue;
            reached = true;
            // Deferred and optimistic may still reach an unmapped buffer, but only where it was mapped.
            const got = dma.readU32(a);
            expect(ever.some((e) => a >= e.iova && a < e.iova + e.len && e.gpa + (a - e.iova) === got), `stale IOVA 0x${a.toString(16)} reads 0x${got.toString(16)}`).toBe(true);
          }
          if (reached) stale++;
        }
        if (m === 'strict' || s.kind === 'flush') expect(stale).toBe(0);
        else expect(stale).toBeLessThanOrEqual(m === 'deferred' ? batchSize - 1 : batchSize);
      }
    }),
    { numRuns },
  );
  // The frame probes ran (a floor well below what any seed gives).
  expect(frameProbes).toBeGreaterThan(numRuns);
}

/** `iova`, and the first byte of every later 2 MiB frame in [iova, iova + len). */
function probes(iova: number, len: number): number[] {
  const out = [iova];
  for (let f = iova - (iova % FRAME) + FRAME; f < iova + len; f += FRAME) out.push(f);
  return out;
}
