import type { DmaDirection } from '@ioplane/viommu';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { pattern } from './harness.js';
import { iommuHarness } from './iommu-harness.js';

const PAGE = 4096;
const DATA = 0x800000; // guest-physical data area: 64 pages
const PAGES = 64;

interface Model {
  iova: number;
  pages: number;
  gpa: number;
  writable: boolean;
}

/**
 * virtio-blk reads through the vIOMMU against a per-page model: a read of
 * `len` bytes at an IOVA succeeds iff every page is mapped device-writable,
 * and then exactly those guest-physical pages change; otherwise it fails
 * with IOERR, one fault event arrives, and no byte of the data area changes.
 */
describe('virtio-blk behind virtio-iommu: property against a per-page model', () => {
  it('succeeds exactly when every page is mapped for the device to write, and writes nothing else', async () => {
    const disk = pattern(1 << 20, 5); // the whole 1 MiB disk
    const canary = pattern(PAGES * PAGE, 11);
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ gpaPage: fc.integer({ min: 0, max: PAGES - 4 }), pages: fc.integer({ min: 1, max: 4 }), dir: fc.constantFrom<DmaDirection>('to-device', 'from-device', 'bidirectional') }), { minLength: 1, maxLength: 6 }),
        fc.array(fc.record({ pick: fc.nat(), shift: fc.integer({ min: -2, max: 4 }), pages: fc.integer({ min: 1, max: 3 }), sector: fc.integer({ min: 0, max: 120 }) }), { minLength: 1, maxLength: 5 }),
        async (maps, reqs) => {
          const h = await iommuHarness();
          try {
            await h.backend.write(0, [disk]);
            const model: Model[] = maps.map((m) => ({
              iova: h.domain.map(DATA + m.gpaPage * PAGE, m.pages * PAGE, m.dir),
              pages: m.pages,
              gpa: DATA + m.gpaPage * PAGE,
              writable: m.dir !== 'to-device',
            }));
            const lookup = (iova: number): Model | undefined => model.find((m) => iova >= m.iova && iova < m.iova + m.pages * PAGE);
            for (const r of reqs) {
              h.mem.writeFrom(DATA, canary);
              const base = model[r.pick % model.length]!;
              const iova = base.iova + r.shift * PAGE;
              if (iova <= 0) continue;
              const len = r.pages * PAGE;
              const targets: number[] = [];
              let ok = true;
              for (let p = 0; p < r.pages; p++) {
                const m = lookup(iova + p * PAGE);
                if (m === undefined || !m.writable) ok = false;
                else targets.push(m.gpa + (iova + p * PAGE - m.iova));
              }
              const events = h.iommu.events.length;
              const sector = r.sector * 8;
              const got = await h.blk.read(sector, iova, len).then(
                () => 'ok',
                (e: { kind: string }) => e.kind,
              );
              expect(got).toBe(ok ? 'ok' : 'io-error');
              const after = h.mem.view(DATA, PAGES * PAGE, 'read');
              const expected = canary.slice();
              if (ok) targets.forEach((gpa, p) => expected.set(disk.subarray((sector * 512) + p * PAGE, (sector * 512) + (p + 1) * PAGE), gpa - DATA));
              expect(Buffer.compare(after, expected)).toBe(0);
              expect(h.iommu.events.length - events).toBe(ok ? 0 : 1);
            }
          } finally {
            await h.close();
          }
        },
      ),
      { numRuns: 80 },
    );
  });
});
