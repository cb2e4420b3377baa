import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/*
 * The benchmarks are what the issues' figures come from: each runs here in a
 * few seconds (tiny OPS, one round) so that one that no longer starts, hangs
 * or prints nonsense fails CI, not the next person who measures with it.
 */
const PKG = fileURLToPath(new URL('..', import.meta.url));

function bench(script: string, env: Record<string, string>): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--conditions=@ioplane/source', script], { cwd: PKG, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${script} did not finish within 150 s:\n${out}`));
    }, 150_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

/** The ratio column of a scenario's row in a bench table: a finite number. */
function ratio(out: string, scenario: string): number {
  const row = out.split('\n').find((l) => l.startsWith(`| ${scenario} |`));
  if (row === undefined) throw new Error(`no row for ${scenario} in:\n${out}`);
  return Number(row.split('|')[3]);
}

describe('benchmarks run (smoke: tiny runs, figures not judged)', () => {
  it('bench:iommu-threads, VT-d: every scenario, ratios printed', { timeout: 160_000 }, async () => {
    const r = await bench('bench/iommu-threads.ts', { ROUNDS: '1', OPS: '800', WARMUP_OPS: '1600', QD: '32', ONLY: 'off,static,strict,strict-many,deferred,optimistic' });
    expect(r.code, r.out).toBe(0);
    // Two warm-up jobs of 800 each, then the rounds; the threads bound where the machine allows (two CPUs, taskset).
    expect(r.out).toMatch(/after 1600 warm-up reads per scenario/);
    expect(r.out).toMatch(/device thread on CPU \d+, guest and helper threads on CPUs [\d,]+|threads unbound/);
    expect(r.out).toMatch(/\| deferred \| \d+ \| \d+ \| -?\d+ \| \d+ \| \d+ \|/);
    for (const s of ['static', 'strict', 'strict-many', 'deferred', 'optimistic']) expect(ratio(r.out, s)).toBeGreaterThan(0);
    expect(r.out).toMatch(/deferred: \d+ requests, .* walks and [\d.]+ leaves prefetched/);
  });

  it('bench:iommu-threads, virtio-iommu with its driver in the guest worker', { timeout: 160_000 }, async () => {
    const r = await bench('bench/iommu-threads.ts', { UNIT: 'virtio', ROUNDS: '1', OPS: '800', WARMUP_OPS: '0', QD: '1,32', ONLY: 'off,static,strict,deferred' });
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/behind the virtio-iommu device on two threads/);
    for (const s of ['static', 'strict', 'deferred']) expect(ratio(r.out, s)).toBeGreaterThan(0);
  });

  it('bench:iommu, one thread, in-memory back-end', { timeout: 160_000 }, async () => {
    const r = await bench('bench/iommu.ts', { BACKEND: 'memory', ROUNDS: '1', OPS: '800', SLICES: '2', QD: '32', ONLY: 'off,static,strict,strict-many,deferred,vtd-deferred' });
    expect(r.code, r.out).toBe(0);
    for (const s of ['static', 'strict', 'deferred', 'vtd-deferred']) expect(ratio(r.out, s)).toBeGreaterThan(0);
  });

  it('bench (virtio-blk against direct reads), the target pattern on the sync engine', { timeout: 160_000 }, async () => {
    const r = await bench('bench/blk.ts', { RUNS: '1', SIZE_MB: '8', PATTERN: '4k-rand-qd32', ENGINES: 'sync', CONFIG: 'raw direct sync,raw virtio sync,raw virtio sync no-halt-poll,raw virtio sync polled-guest' });
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/virtio\/direct raw \d\.\d\d/);
    expect(r.out).toMatch(/raw virtio sync\s+\d+\s/);
    expect(r.out).toMatch(/virtio sync no-halt-poll \d\.\d\d/);
    // The default guest halt-polls and says how its idle periods ended; the no-halt-poll one does not.
    expect(r.out).toMatch(/raw virtio sync device: .*guest idle \d+ times caught by halt polling, \d+ asleep/);
    expect(r.out).not.toMatch(/raw virtio sync no-halt-poll device: .*halt polling/);
  });
});
