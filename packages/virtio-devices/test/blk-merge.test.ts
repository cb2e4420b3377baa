import { BlockError, type Segments } from '@ioplane/blk-backends';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { VirtioError } from '../src/index.js';
import { DATA, DelegatingBackend, harness, pattern } from './harness.js';

/** A memory back-end that records each read/write call (offset, bytes, segments), can hold them, and fails any that touches a bad sector. */
class RecordingBackend extends DelegatingBackend {
  readonly calls: { op: string; offset: number; length: number; segments: number }[] = [];
  readonly bad = new Set<number>();
  gate = false;
  readonly held: (() => void)[] = [];
  private io(op: 'read' | 'write', offset: number, segs: Segments): Promise<void> {
    let length = 0;
    for (const s of segs) length += s.byteLength;
    this.calls.push({ op, offset, length, segments: segs.length });
    for (let s = offset / 512; s < (offset + length) / 512; s++) {
      if (this.bad.has(s)) return Promise.reject(new BlockError('io', `injected ${op} failure at sector ${s}`));
    }
    const run = (): Promise<void> => (op === 'read' ? this.inner.read(offset, segs) : this.inner.write(offset, segs));
    if (!this.gate) return run();
    return new Promise<void>((resolve, reject) => this.held.push(() => void run().then(resolve, reject)));
  }
  override read(o: number, s: Segments): Promise<void> {
    return this.io('read', o, s);
  }
  override write(o: number, s: Segments): Promise<void> {
    return this.io('write', o, s);
  }
  override flush(): Promise<void> {
    this.calls.push({ op: 'flush', offset: 0, length: 0, segments: 0 });
    return this.inner.flush();
  }
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('virtio-blk request merging (contiguous requests made available together)', () => {
  it('contiguous reads become one back-end call; each request completes once with its own data', async () => {
    const backend = new RecordingBackend(1 << 20);
    const data = pattern(4 * 4096, 1);
    await backend.inner.write(8192, [data]);
    const h = await harness({ backend });
    backend.gate = true;
    const settled: number[] = [];
    // Buffers far apart in guest memory: the merged call carries four segments.
    const ps = [0, 1, 2, 3].map((i) => h.driver.read(16 + i * 8, DATA + i * 65536, 4096).then(() => settled.push(i)));
    for (let i = 0; i < 5; i++) await tick();
    expect(backend.calls).toEqual([{ op: 'read', offset: 8192, length: 4 * 4096, segments: 4 }]);
    expect(h.device.blkStats.merged).toBe(4);
    expect(h.device.blkStats.mergedCalls).toBe(1);
    expect(h.device.inFlight).toBe(4);
    backend.held.shift()!();
    await Promise.all(ps);
    expect(settled.sort()).toEqual([0, 1, 2, 3]);
    for (let i = 0; i < 4; i++) expect(h.mem.view(DATA + i * 65536, 4096, 'read')).toEqual(data.subarray(i * 4096, (i + 1) * 4096));
    expect(h.device.inFlight).toBe(0);
    expect(h.driver.inFlight).toBe(0);
  });

  it('contiguous writes become one call; a gap, a change of direction or a FLUSH ends a run, and issue order is kept', async () => {
    const backend = new RecordingBackend(1 << 20);
    const h = await harness({ backend });
    for (let i = 0; i < 6; i++) h.mem.writeFrom(DATA + i * 4096, pattern(4096, 10 + i));
    const ps = [
      h.driver.write(0, DATA, 4096),
      h.driver.write(8, DATA + 4096, 4096),
      h.driver.flush(),
      h.driver.write(16, DATA + 2 * 4096, 4096),
      h.driver.write(40, DATA + 3 * 4096, 4096), // gap
      h.driver.read(48, DATA + 8 * 4096, 4096), // other direction, though contiguous
      h.driver.read(56, DATA + 9 * 4096, 4096),
    ];
    await Promise.all(ps);
    expect(backend.calls.map((c) => [c.op, c.offset, c.length])).toEqual([
      ['write', 0, 8192],
      ['flush', 0, 0],
      ['write', 8192, 4096],
      ['write', 40 * 512, 4096],
      ['read', 48 * 512, 8192],
    ]);
    const back = new Uint8Array(8192);
    await backend.inner.read(0, [back]);
    expect(back).toEqual(Uint8Array.from([...pattern(4096, 10), ...pattern(4096, 11)]));
  });

  it('maxBytes and maxSegments bound a merged call; merge: false issues each request alone', async () => {
    const backend = new RecordingBackend(1 << 20);
    const h = await harness({ backend, device: { merge: { maxBytes: 8192 } } });
    await Promise.all([0, 1, 2, 3, 4].map((i) => h.driver.read(i * 8, DATA + i * 4096, 4096)));
    expect(backend.calls.map((c) => c.length)).toEqual([8192, 8192, 4096]);

    const b2 = new RecordingBackend(1 << 20);
    const h2 = await harness({ backend: b2, device: { merge: { maxSegments: 3 } } });
    await Promise.all([0, 1, 2, 3].map((i) => h2.driver.read(i * 8, DATA + i * 65536, 4096)));
    expect(b2.calls.map((c) => c.segments)).toEqual([3, 1]);

    const b3 = new RecordingBackend(1 << 20);
    const h3 = await harness({ backend: b3, device: { merge: false } });
    await Promise.all([0, 1, 2].map((i) => h3.driver.read(i * 8, DATA + i * 4096, 4096)));
    expect(b3.calls.map((c) => c.length)).toEqual([4096, 4096, 4096]);
    expect(h3.device.blkStats.merged).toBe(0);
  });

  it('a merged call that fails is retried request by request: only the request that really fails gets IOERR', async () => {
    const backend = new RecordingBackend(1 << 20);
    const data = pattern(3 * 4096, 4);
    await backend.inner.write(0, [data]);
    backend.bad.add(12); // inside the second 4 KiB request
    const h = await harness({ backend });
    const out = await Promise.all([0, 1, 2].map((i) => h.driver.read(i * 8, DATA + i * 4096, 4096).then(() => 'ok', (e: unknown) => e)));
    expect(out[0]).toBe('ok');
    expect(out[2]).toBe('ok');
    expect(out[1]).toBeInstanceOf(VirtioError);
    expect((out[1] as VirtioError).kind).toBe('io-error');
    expect(backend.calls.map((c) => [c.offset, c.length])).toEqual([
      [0, 12288],
      [0, 4096],
      [4096, 4096],
      [8192, 4096],
    ]);
    expect(h.mem.view(DATA, 4096, 'read')).toEqual(data.subarray(0, 4096));
    expect(h.mem.view(DATA + 8192, 4096, 'read')).toEqual(data.subarray(8192));
    expect(h.device.blkStats.backendErrors).toBe(1);
    expect(h.device.inFlight).toBe(0);
  });

  it('a reset while a merged call is in flight drops its completions and waits for it', async () => {
    const backend = new RecordingBackend(1 << 20);
    const h = await harness({ backend });
    backend.gate = true;
    const ps = [0, 1].map((i) => h.driver.read(i * 8, DATA + i * 4096, 4096).catch((e: unknown) => e));
    for (let i = 0; i < 5; i++) await tick();
    expect(h.device.inFlight).toBe(2);
    const closed = h.driver.close();
    for (let i = 0; i < 5; i++) await tick();
    backend.held.shift()!();
    await closed;
    const out = await Promise.all(ps);
    for (const e of out) expect((e as VirtioError).kind).toBe('cancelled');
    expect(h.device.blkStats.dropped).toBe(2);
    expect(h.device.inFlight).toBe(0);
  });

  it('rejects nonsensical merge limits', async () => {
    await expect(harness({ device: { merge: { maxBytes: -1 } } })).rejects.toThrow(/merge limits/);
    await expect(harness({ device: { merge: { maxSegments: 1.5 } } })).rejects.toThrow(/merge limits/);
  });
});

describe('property: merged requests complete exactly once with the status and data of the model', () => {
  const SECTORS = 256;
  // Runs of contiguous requests (so that merging happens), in random directions, some touching a bad sector.
  const run = fc.record({
    write: fc.boolean(),
    start: fc.integer({ min: 0, max: SECTORS - 1 }),
    sizes: fc.array(fc.integer({ min: 1, max: 16 }), { minLength: 1, maxLength: 6 }),
  });
  it('batches of contiguous runs, with and without failures, split or packed', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.array(run, { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 6 }),
        fc.array(fc.integer({ min: 0, max: SECTORS - 1 }), { maxLength: 3 }),
        fc.boolean(),
        fc.integer({ min: 4096, max: 65536 }),
        async (batches, bad, packed, maxBytes) => {
          const backend = new RecordingBackend(SECTORS * 512);
          for (const s of bad) backend.bad.add(s);
          const h = await harness({ backend, device: { merge: { maxBytes } }, driver: { ring: { packed } } });
          const model = Buffer.alloc(SECTORS * 512);
          let seed = 1;
          for (const batch of batches) {
            // Requests in flight together touch disjoint sectors, so the outcome is defined.
            const used = new Set<number>();
            const reqs: { write: boolean; sector: number; count: number; seed: number }[] = [];
            for (const r of batch) {
              let s = r.start;
              for (const n of r.sizes) {
                const count = Math.min(n, SECTORS - s);
                if (count <= 0) break;
                let free = true;
                for (let k = s; k < s + count; k++) if (used.has(k)) free = false;
                if (!free) break;
                for (let k = s; k < s + count; k++) used.add(k);
                reqs.push({ write: r.write, sector: s, count, seed: seed++ });
                s += count;
              }
            }
            const before = Buffer.from(model);
            const settle = new Array<number>(reqs.length).fill(0);
            const outs = await Promise.all(
              reqs.map((r, i) => {
                const at = DATA + i * 16 * 512;
                const len = r.count * 512;
                const touchesBad = [...backend.bad].some((b) => b >= r.sector && b < r.sector + r.count);
                if (r.write) h.mem.writeFrom(at, pattern(len, r.seed));
                else h.mem.fill(at, len, 0xee);
                const p = r.write ? h.driver.write(r.sector, at, len) : h.driver.read(r.sector, at, len);
                return p.then(
                  () => {
                    settle[i]!++;
                    if (touchesBad) throw new Error(`request ${i} at ${r.sector} touches a bad sector but succeeded`);
                    if (r.write) model.set(pattern(len, r.seed), r.sector * 512);
                    else if (!Buffer.from(h.mem.view(at, len, 'read')).equals(before.subarray(r.sector * 512, r.sector * 512 + len))) {
                      throw new Error(`read of ${r.count} at ${r.sector} differs from the model`);
                    }
                    return 'ok';
                  },
                  (e: unknown) => {
                    settle[i]!++;
                    if (!touchesBad) throw new Error(`request ${i} at ${r.sector} failed without a bad sector: ${String(e)}`);
                    if (!(e instanceof VirtioError) || e.kind !== 'io-error') throw new Error(`expected io-error, got ${String(e)}`);
                    return 'ioerr';
                  },
                );
              }),
            );
            expect(outs).toHaveLength(reqs.length);
            expect(settle.every((n) => n === 1)).toBe(true);
          }
          expect(h.device.inFlight).toBe(0);
          expect(h.driver.inFlight).toBe(0);
          // A merged call (several segments: one per request here) is never larger than maxBytes.
          for (const c of backend.calls) if (c.segments > 1) expect(c.length).toBeLessThanOrEqual(maxBytes);
          const all = new Uint8Array(SECTORS * 512);
          await backend.inner.read(0, [all]);
          expect(Buffer.from(all).equals(model)).toBe(true);
        },
      ),
      { numRuns: 120 },
    );
  });
});
