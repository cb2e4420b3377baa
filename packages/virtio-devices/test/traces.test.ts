import { readFileSync } from 'node:fs';
import { MemoryBackend } from '@ioplane/blk-backends';
import { formatTrace, parseTrace, type Trace } from '@ioplane/interrupt-coalescing';
import { describe, expect, it } from 'vitest';
import { RecordingBackend } from '../bench/trace-recorder.js';

/** Most requests in service at once, from arrivals and service times. */
function maxConcurrency(t: Trace): number {
  const ev: [number, number][] = [];
  for (let i = 0; i < t.arrivalsNs.length; i++) {
    ev.push([t.arrivalsNs[i]!, 1], [t.arrivalsNs[i]! + t.serviceNs[i]!, -1]);
  }
  // Completions before arrivals at the same instant.
  ev.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let n = 0;
  let max = 0;
  for (const [, d] of ev) max = Math.max(max, (n += d));
  return max;
}

describe('completion traces of the virtio-blk bench', () => {
  it('RecordingBackend stamps arrival and completion of reads only while armed, from the injected clock', async () => {
    const inner = new MemoryBackend({ size: 1 << 16 });
    let now = 10;
    const rec = new RecordingBackend(inner, 2, () => now);
    const buf = new Uint8Array(512);
    await rec.read(0, [buf]); // not armed: not recorded
    rec.arm();
    const a = rec.read(0, [buf]);
    now = 10.25;
    const b = rec.read(512, [buf]);
    now = 10.5;
    await Promise.all([a, b]);
    now = 11;
    await rec.read(1024, [buf]); // past capacity: not recorded
    rec.disarm();
    expect(rec.recorded).toBe(2);
    const t = rec.trace();
    expect([...t.arrivalsNs]).toEqual([0, 250_000]);
    expect([...t.serviceNs]).toEqual([500_000, 250_000]);
    // Round-trips through the simulator's own format.
    const back = parseTrace(formatTrace(t));
    expect([...back.arrivalsNs]).toEqual([0, 250_000]);
    expect([...back.serviceNs]).toEqual([500_000, 250_000]);
    expect(() => new RecordingBackend(inner, 0)).toThrow(/capacity/);
  });

  for (const [name, qd] of [
    ['4k-rand-qd1-raw', 1],
    ['4k-rand-qd32-raw', 32],
  ] as const) {
    it(`bench/traces/${name}.jsonl parses, has a service time per read, and never exceeds QD${qd} in service`, () => {
      const text = readFileSync(new URL(`../bench/traces/${name}.jsonl`, import.meta.url), 'utf8');
      expect(text.length).toBeLessThanOrEqual(1 << 20);
      const t = parseTrace(text);
      expect(t.arrivalsNs.length).toBeGreaterThanOrEqual(1000);
      for (let i = 0; i < t.serviceNs.length; i++) expect(Number.isFinite(t.serviceNs[i]!)).toBe(true);
      const c = maxConcurrency(t);
      expect(c).toBeLessThanOrEqual(qd);
      if (qd > 1) expect(c).toBeGreaterThan(qd / 2);
    });
  }
});
