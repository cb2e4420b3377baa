import { readFileSync, writeFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { img, requireQemu, run } from './qemu.js';

let tmp: ReturnType<typeof tempDir> | undefined;
afterEach(() => {
  tmp?.remove();
  tmp = undefined;
});

describe('ioplane-img usage', () => {
  it('reports usage errors with exit 1', async () => {
    expect((await img()).status).toBe(1);
    expect((await img('help')).status).toBe(0);
    const u = await img('frobnicate');
    expect(u.status).toBe(1);
    expect(u.stderr).toContain("unknown command 'frobnicate'");
    tmp = tempDir();
    const bad = await img('create', '-f', 'qcow2', '-o', 'cluster_sise=4k', tmp.path('x.qcow2'), '1M');
    expect(bad.stderr).toContain("unknown option 'cluster_sise'");
    expect((await img('create', '-f', 'qcow2', tmp.path('x.qcow2'))).stderr).toContain('image size needed');
    expect((await img('create', '-f', 'qcow2', tmp.path('x.qcow2'), '12Q')).stderr).toContain("'12Q' is not a size");
    expect((await img('create', '-f', 'vmdk', tmp.path('x.vmdk'), '1M')).stderr).toContain("format 'vmdk' is not supported");
    expect((await img('info', tmp.path('missing.qcow2'))).stderr).toContain('cannot open');
    expect((await img('check', '-r', 'some', tmp.path('x'))).stderr).toContain('-r takes leaks or all');
  });

  it('creates raw and qcow2 images with k/M/G sizes and prints human info and map', async () => {
    tmp = tempDir();
    const r = await img('create', '-f', 'raw', tmp.path('a.raw'), '1G');
    expect(r.stdout).toBe(`Formatting '${tmp.path('a.raw')}', fmt=raw size=1073741824\n`);
    const q = await img('create', '-f', 'qcow2', '-o', 'cluster_size=4k', '-o', 'lazy_refcounts=on', tmp.path('b.qcow2'), '64M');
    expect(q.status).toBe(0);
    const info = await img('info', tmp.path('b.qcow2'));
    expect(info.stdout).toContain('virtual size: 64 MiB (67108864 bytes)');
    expect(info.stdout).toContain('cluster_size: 4096');
    expect(info.stdout).toContain('lazy-refcounts: true');
    expect((await img('io', tmp.path('b.qcow2'), '-c', 'write -P 7 8k 8k')).status).toBe(0);
    const map = await img('map', tmp.path('b.qcow2'));
    expect(map.stdout).toMatch(/^Offset\s+Length\s+Mapped to\s+File\n0x2000\s+0x2000\s+0x[0-9a-f]+\s+.*b\.qcow2\n$/);
    expect((await img('check', tmp.path('a.raw'))).status).toBe(63);
    const info2 = JSON.parse((await img('info', '--output=json', tmp.path('a.raw'))).stdout) as Record<string, unknown>;
    expect(info2).toMatchObject({ 'virtual-size': 1073741824, format: 'raw' });
  });

  it('compare: a size mismatch with zero tail is identical unless -s; a difference names its offset', async () => {
    tmp = tempDir();
    await img('create', '-f', 'raw', tmp.path('a.raw'), '1M');
    await img('create', '-f', 'qcow2', tmp.path('b.qcow2'), '2M');
    const c = await img('compare', tmp.path('a.raw'), tmp.path('b.qcow2'));
    expect(c.stdout).toBe('Warning: Image size mismatch!\nImages are identical.\n');
    expect((await img('compare', '-s', tmp.path('a.raw'), tmp.path('b.qcow2'))).status).toBe(1);
    await img('io', tmp.path('b.qcow2'), '-c', 'write -P 1 1536k 512');
    const d = await img('compare', tmp.path('a.raw'), tmp.path('b.qcow2'));
    expect(d.stdout).toContain('Content mismatch at offset 1572864!');
    expect(d.status).toBe(1);
  });

  it('check -r all clears the corrupt bit of an image whose structures are sound', async () => {
    requireQemu();
    tmp = tempDir();
    const f = tmp.path('c.qcow2');
    await img('create', '-f', 'qcow2', f, '1M');
    await img('io', f, '-c', 'write -P 5 0 64k');
    const b = new Uint8Array(readFileSync(f));
    b[79] = b[79]! | 0x02;
    writeFileSync(f, b);
    expect((await img('io', f, '-c', 'write -P 6 0 512')).stderr).toContain('marked corrupt');
    expect(run('qemu-img', ['info', '--output=json', f]).stdout).toContain('"corrupt": true');
    const r = await img('check', '-r', 'all', f);
    expect(r.status).toBe(0);
    expect(run('qemu-img', ['info', '--output=json', f]).stdout).toContain('"corrupt": false');
    expect((await img('io', f, '-c', 'write -P 6 0 512', '-c', 'read -P 6 0 512', '-c', 'read -P 5 512 63k')).status).toBe(0);
  });
});
