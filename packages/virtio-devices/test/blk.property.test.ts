import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { VirtioError } from '../src/index.js';
import { DATA, harness, pattern } from './harness.js';

const DISK = 256 << 10; // 512 sectors
const SECTORS = DISK / 512;

type Op =
  | { t: 'read'; sector: number; count: number }
  | { t: 'write'; sector: number; count: number; seed: number; split: boolean }
  | { t: 'discard'; sector: number; count: number }
  | { t: 'zero'; sector: number; count: number; unmap: boolean }
  | { t: 'flush' }
  | { t: 'bad-read'; sector: number };

const range = fc.record({ sector: fc.integer({ min: 0, max: SECTORS - 1 }), count: fc.integer({ min: 1, max: 64 }) }).map((r) => ({ ...r, count: Math.min(r.count, SECTORS - r.sector) }));

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: range.map((r) => ({ t: 'read' as const, ...r })) },
  { weight: 4, arbitrary: fc.tuple(range, fc.integer({ min: 1, max: 1e6 }), fc.boolean()).map(([r, seed, split]) => ({ t: 'write' as const, ...r, seed, split })) },
  { weight: 1, arbitrary: range.map((r) => ({ t: 'discard' as const, ...r })) },
  { weight: 1, arbitrary: fc.tuple(range, fc.boolean()).map(([r, unmap]) => ({ t: 'zero' as const, ...r, unmap })) },
  { weight: 1, arbitrary: fc.constant({ t: 'flush' as const }) },
  { weight: 1, arbitrary: fc.integer({ min: SECTORS, max: SECTORS + 1000 }).map((sector) => ({ t: 'bad-read' as const, sector })) },
);

function overlaps(a: { sector: number; count: number }, b: { sector: number; count: number }): boolean {
  return a.sector < b.sector + b.count && b.sector < a.sector + a.count;
}

describe('property: guest requests through virtio-blk agree with a byte-array model', () => {
  it('random batches of concurrent requests, split or packed, one or two queues', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(op, { minLength: 1, maxLength: 12 }), { minLength: 1, maxLength: 12 }), fc.boolean(), fc.integer({ min: 1, max: 2 }), async (batches, packed, queues) => {
        const h = await harness({ size: DISK, device: { numQueues: queues }, driver: { ring: { packed }, queueSize: 16 } });
        const model = Buffer.alloc(DISK);
        for (const batch of batches) {
          // Requests of a batch are in flight together: keep the ones that touch disjoint sectors, so the outcome is defined.
          const kept: Op[] = [];
          for (const o of batch) {
            if (o.t === 'flush' || o.t === 'bad-read') kept.push(o);
            else if (!kept.some((k) => k.t !== 'flush' && k.t !== 'bad-read' && overlaps(k, o))) kept.push(o);
          }
          const before = model.slice();
          const ps = kept.map(async (o, i) => {
            const at = DATA + i * 64 * 512;
            const len = o.t === 'flush' || o.t === 'bad-read' ? 0 : o.count * 512;
            switch (o.t) {
              case 'read':
                h.mem.fill(at, len, 0xee);
                await h.driver.read(o.sector, at, len);
                if (!Buffer.from(h.mem.view(at, len, 'read')).equals(before.subarray(o.sector * 512, o.sector * 512 + len))) {
                  throw new Error(`read of ${o.count} sector(s) at ${o.sector} differs from the model`);
                }
                return;
              case 'write': {
                const data = pattern(len, o.seed);
                h.mem.writeFrom(at, data);
                const half = Math.floor(o.count / 2) * 512;
                if (o.split && half > 0) await h.driver.writev(o.sector, [{ addr: at, len: half }, { addr: at + half, len: len - half }]);
                else await h.driver.write(o.sector, at, len);
                model.set(data, o.sector * 512);
                return;
              }
              case 'discard':
                await h.driver.discard([{ sector: o.sector, count: o.count }]);
                model.fill(0, o.sector * 512, o.sector * 512 + len);
                return;
              case 'zero':
                await h.driver.writeZeroes([{ sector: o.sector, count: o.count }], o.unmap);
                model.fill(0, o.sector * 512, o.sector * 512 + len);
                return;
              case 'flush':
                await h.driver.flush();
                return;
              case 'bad-read': {
                const e = await h.driver.read(o.sector, at, 512).then(() => undefined, (x: unknown) => x);
                expect(e).toBeInstanceOf(VirtioError);
                expect((e as VirtioError).kind).toBe('io-error');
                return;
              }
            }
          });
          await Promise.all(ps);
        }
        // The whole disk, read through the device, equals the model; so does the back-end itself.
        const all = new Uint8Array(DISK);
        for (let s = 0; s < SECTORS; s += 64) {
          await h.driver.read(s, DATA, 64 * 512);
          all.set(h.mem.view(DATA, 64 * 512, 'read'), s * 512);
        }
        expect(Buffer.from(all).equals(Buffer.from(model))).toBe(true);
        const direct = new Uint8Array(DISK);
        await h.backend.read(0, [direct]);
        expect(Buffer.from(direct).equals(Buffer.from(model))).toBe(true);
        expect(h.device.blkStats.backendErrors).toBe(0);
        expect(h.driver.inFlight).toBe(0);
      }),
      { numRuns: 150 },
    );
  });
});
