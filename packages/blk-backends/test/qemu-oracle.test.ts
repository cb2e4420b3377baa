/**
 * Oracle tests: images written by qemu-img/qemu-io read back identically
 * through ioplane, images written by ioplane pass `qemu-img check` and
 * `qemu-img compare`, and `ioplane-img map` agrees with `qemu-img map`.
 */
import { writeFileSync } from 'node:fs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MemoryBackend, openImage, Qcow2Backend, type BlockBackend } from '../src/index.js';
import { tempDir } from './helpers.js';
import { img, normalizeMap, qemuImg, qemuIo, qemuMap, readFile, requireQemu, run } from './qemu.js';

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => requireQemu());
afterEach(() => tmp?.remove());

async function readAllOf(b: BlockBackend): Promise<Uint8Array> {
  const buf = new Uint8Array(b.size);
  await b.read(0, [buf]);
  return buf;
}

function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** qemu-io commands and their effect on an expected buffer. */
type Op = ['write', number, number, number] | ['zero', number, number] | ['discard', number, number];
function qemuCmds(ops: Op[]): string[] {
  return ops.map((o) => (o[0] === 'write' ? `write -P ${o[3]} ${o[1]} ${o[2]}` : o[0] === 'zero' ? `write -z ${o[1]} ${o[2]}` : `discard ${o[1]} ${o[2]}`));
}
function apply(buf: Uint8Array, ops: Op[]): void {
  for (const o of ops) {
    if (o[0] === 'write') buf.fill(o[3], o[1], o[1] + o[2]);
    else buf.fill(0, o[1], o[1] + o[2]);
  }
}
function opsFor(cs: number, size: number): Op[] {
  return [
    ['write', 0, cs, 0x11],
    ['write', cs + 512, 3 * 512, 0x22],
    ['write', 3 * cs - 1024, 2048, 0x33],
    ['write', size - 4 * cs, 2 * cs, 0x44],
    ['write', 6 * cs, 4 * cs, 0x55],
    ['zero', 7 * cs, cs],
    ['discard', 8 * cs, cs],
    ['write', 8 * cs + 512, 512, 0x66],
    ['write', size / 2, 4096, 0x77],
  ];
}

describe('qcow2 images written by qemu read back identically through ioplane', () => {
  const configs: [string, number, string][] = [
    ['512 B clusters, v3', 512, 'compat=1.1'],
    ['512 B clusters, v2', 512, 'compat=0.10'],
    ['4 KiB clusters, v3', 4096, 'compat=1.1'],
    ['4 KiB clusters, v2', 4096, 'compat=0.10'],
    ['64 KiB clusters, v3', 65536, 'compat=1.1'],
    ['64 KiB clusters, v2', 65536, 'compat=0.10'],
    ['2 MiB clusters, v3', 2 * 1024 * 1024, 'compat=1.1'],
    ['64 KiB clusters, lazy refcounts', 65536, 'compat=1.1,lazy_refcounts=on'],
    ['64 KiB clusters, 1-bit refcounts', 65536, 'compat=1.1,refcount_bits=1'],
    ['4 KiB clusters, 64-bit refcounts', 4096, 'compat=1.1,refcount_bits=64'],
    ['64 KiB clusters, extended L2', 65536, 'compat=1.1,extended_l2=on'],
  ];
  for (const [name, cs, opts] of configs) {
    it(name, async () => {
      tmp = tempDir();
      const size = Math.max(4 * 1024 * 1024, 16 * cs);
      const f = tmp.path('q.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cs},${opts}`, f, String(size));
      const ops = opsFor(cs, size);
      qemuIo(f, qemuCmds(ops));
      const want = new Uint8Array(size);
      apply(want, ops);
      const b = await openImage(f, { readOnly: true });
      try {
        expect(b).toBeInstanceOf(Qcow2Backend);
        expect(firstDiff(await readAllOf(b), want)).toBe(-1);
      } finally {
        await b.close();
      }
      const mine = await img('map', '--output=json', f);
      expect(mine.status).toBe(0);
      expect(normalizeMap(JSON.parse(mine.stdout) as never, true)).toEqual(normalizeMap(qemuMap(f), true));
      const chk = await img('check', f);
      expect(chk.stdout).toContain('No errors were found');
      expect(chk.status).toBe(0);
    });
  }

  it('extended L2 subclusters over a backing file (sub-cluster allocation)', async () => {
    tmp = tempDir();
    const base = tmp.path('base.raw');
    const top = tmp.path('top.qcow2');
    const size = 4 * 1024 * 1024;
    qemuImg('create', '-q', '-f', 'raw', base, String(size));
    qemuIo(base, ['write -P 0xaa 0 4M'], 'raw');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536,extended_l2=on', '-b', base, '-F', 'raw', top);
    // 2 KiB subclusters: touch a few, zero one, leave the rest to the backing file.
    const ops: Op[] = [
      ['write', 2048, 2048, 0x01],
      ['write', 65536 + 6144, 4096, 0x02],
      ['zero', 131072 + 2048, 2048],
      ['write', 300000 - (300000 % 512), 512, 0x03],
    ];
    qemuIo(top, qemuCmds(ops));
    const want = new Uint8Array(size).fill(0xaa);
    apply(want, ops);
    const b = await openImage(top, { readOnly: true });
    try {
      expect(firstDiff(await readAllOf(b), want)).toBe(-1);
    } finally {
      await b.close();
    }
    const mine = await img('map', '--output=json', top);
    expect(normalizeMap(JSON.parse(mine.stdout) as never, true)).toEqual(normalizeMap(qemuMap(top), true));
  });

  it('compressed images from qemu-img convert -c (zlib, and zstd where qemu has it)', async () => {
    tmp = tempDir();
    const raw = tmp.path('src.raw');
    const size = 4 * 1024 * 1024;
    qemuImg('create', '-q', '-f', 'raw', raw, String(size));
    // Compressible text-like data, an incompressible stretch, and holes.
    const want = new Uint8Array(size);
    for (let i = 0; i < 1024 * 1024; i++) want[i] = (i * 7) % 13 === 0 ? i & 0xff : 0x41 + (i % 26);
    let x = 12345;
    for (let i = 2 * 1024 * 1024; i < 2 * 1024 * 1024 + 200000; i++) {
      x = (x * 1103515245 + 12345) >>> 0;
      want[i] = x >>> 24;
    }
    want.fill(0x5a, 3 * 1024 * 1024 + 512, 3 * 1024 * 1024 + 70000);
    writeFileSync(raw, want);
    for (const [cs, ctype] of [
      [65536, 'zlib'],
      [4096, 'zlib'],
      [2 * 1024 * 1024, 'zlib'],
      [65536, 'zstd'],
    ] as const) {
      const q = tmp.path(`c-${cs}-${ctype}.qcow2`);
      const r = run('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${cs},compression_type=${ctype}`, raw, q]);
      if (r.status !== 0 && ctype === 'zstd' && /zstd/i.test(r.stderr)) continue; // qemu built without zstd
      expect(r.stderr).toBe('');
      const b = await openImage(q, { readOnly: true });
      try {
        expect(firstDiff(await readAllOf(b), want), `${cs} ${ctype}`).toBe(-1);
      } finally {
        await b.close();
      }
      const mine = await img('map', '--output=json', q);
      expect(normalizeMap(JSON.parse(mine.stdout) as never, false)).toEqual(normalizeMap(qemuMap(q), false));
      expect((await img('check', q)).status).toBe(0);
    }
  });

  it('backing chains of mixed formats (raw <- qcow2 v2 <- qcow2 v3), map depths agree', async () => {
    tmp = tempDir();
    const size = 4 * 1024 * 1024;
    const base = tmp.path('base.raw');
    const mid = tmp.path('mid.qcow2');
    const top = tmp.path('top.qcow2');
    qemuImg('create', '-q', '-f', 'raw', base, String(size));
    qemuIo(base, ['write -P 0x10 0 1M', 'write -P 0x11 3M 512k'], 'raw');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=4096', '-b', 'base.raw', '-F', 'raw', mid);
    const midOps: Op[] = [
      ['write', 4096 + 512, 1024, 0x20],
      ['write', 2 * 1024 * 1024, 100 * 1024, 0x21],
    ];
    qemuIo(mid, qemuCmds(midOps));
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', top);
    const topOps: Op[] = [
      ['write', 65536 * 3 + 100 * 512, 512, 0x30],
      ['zero', 0, 65536],
      ['write', 3 * 1024 * 1024 + 65536, 65536, 0x31],
    ];
    qemuIo(top, qemuCmds(topOps));
    const want = new Uint8Array(size);
    want.fill(0x10, 0, 1024 * 1024);
    want.fill(0x11, 3 * 1024 * 1024, 3 * 1024 * 1024 + 512 * 1024);
    apply(want, midOps);
    apply(want, topOps);
    const b = await openImage(top, { readOnly: true });
    try {
      expect(firstDiff(await readAllOf(b), want)).toBe(-1);
    } finally {
      await b.close();
    }
    const mine = await img('map', '--output=json', top);
    expect(normalizeMap(JSON.parse(mine.stdout) as never, true)).toEqual(normalizeMap(qemuMap(top), true));
    expect((await img('compare', top, base)).status).toBe(1);
    const flat = tmp.path('flat.raw');
    qemuImg('convert', '-O', 'raw', top, flat);
    const cmp = await img('compare', top, flat);
    expect(cmp.stdout).toContain('Images are identical');
    expect(cmp.status).toBe(0);
  });

  it('raw files: ioplane-img map agrees with qemu-img map on data and holes, also after an ioplane discard', async () => {
    tmp = tempDir();
    const f = tmp.path('h.raw');
    qemuImg('create', '-q', '-f', 'raw', f, '8M');
    qemuIo(f, ['write -P 1 1M 64k', 'write -P 2 5M 1M'], 'raw');
    const mine = await img('map', '--output=json', '-f', 'raw', f);
    expect(mine.stdout).toBe(qemuImg('map', '--output=json', '-f', 'raw', f));
    expect((await img('io', '-f', 'raw', f, '-c', 'discard 5M 512k', '-c', 'flush')).status).toBe(0);
    const after = await img('map', '--output=json', '-f', 'raw', f);
    expect(after.stdout).toBe(qemuImg('map', '--output=json', '-f', 'raw', f));
    expect(after.stdout).toContain(`{ "start": ${5767168}, "length": 524288, "depth": 0, "present": true, "zero": false, "data": true`);
    qemuIo(f, ['read -P 0 5M 512k', 'read -P 2 5632k 512k'], 'raw');
  });

  it('a lazy-refcount image left dirty by a crashed qemu-io is repaired on a read-write open', async () => {
    tmp = tempDir();
    const f = tmp.path('lazy.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', f, '4M');
    // qemu-io's "abort" kills it after the writes: refcounts were never written, the dirty bit stays.
    spawnAbort(f, ['write -P 0x61 0 256k', 'write -P 0x62 1M 64k', 'flush', 'abort']);
    const info = JSON.parse(qemuImg('info', '--output=json', f)) as { 'dirty-flag': boolean };
    expect(info['dirty-flag']).toBe(true);
    const ro = (await openImage(f, { readOnly: true })) as Qcow2Backend;
    expect(ro.dirtyBit).toBe(true);
    await ro.close();
    const rw = (await openImage(f)) as Qcow2Backend;
    expect(rw.dirtyBit).toBe(false);
    const data = new Uint8Array(65536);
    await rw.read(1024 * 1024, [data]);
    expect(data.every((v) => v === 0x62)).toBe(true);
    await rw.write(2 * 1024 * 1024, [new Uint8Array(4096).fill(0x63)]);
    await rw.close();
    expect(run('qemu-img', ['check', f]).status).toBe(0);
    qemuIo(f, ['read -P 0x61 0 256k', 'read -P 0x62 1M 64k', 'read -P 0x63 2M 4k']);
  });
});

function spawnAbort(file: string, cmds: string[]): void {
  // Exits by SIGABRT on purpose; only the image matters.
  run('qemu-io', [...cmds.flatMap((c) => ['-c', c]), file]);
}

describe('images written by ioplane pass qemu-img check and compare', () => {
  const configs: [string, string[]][] = [
    ['v3, 64 KiB', []],
    ['v2, 512 B', ['-o', 'compat=0.10,cluster_size=512']],
    ['v3, 4 KiB, lazy refcounts', ['-o', 'lazy_refcounts=on,cluster_size=4k']],
    ['v3, 2 MiB, refcount_bits=8', ['-o', 'cluster_size=2M,refcount_bits=8']],
    ['v3, extended L2, 32 KiB', ['-o', 'extended_l2=on,cluster_size=32k']],
  ];
  for (const [name, opts] of configs) {
    for (const backed of [false, true]) {
      it(`${name}${backed ? ', over a qcow2 backing file' : ''}`, async () => {
        tmp = tempDir();
        const size = 8 * 1024 * 1024;
        const f = tmp.path('mine.qcow2');
        const model = new MemoryBackend({ size });
        if (backed) {
          const base = tmp.path('base.qcow2');
          qemuImg('create', '-q', '-f', 'qcow2', base, String(size));
          qemuIo(base, ['write -P 0x99 0 3M', 'write -P 0x98 5M 1M']);
          await model.write(0, [new Uint8Array(3 * 1024 * 1024).fill(0x99)]);
          await model.write(5 * 1024 * 1024, [new Uint8Array(1024 * 1024).fill(0x98)]);
          expect((await img('create', '-f', 'qcow2', ...opts, '-b', 'base.qcow2', '-F', 'qcow2', f)).status).toBe(0);
        } else expect((await img('create', '-f', 'qcow2', ...opts, f, '8M')).status).toBe(0);
        const b = await openImage(f);
        let seed = 7;
        const rnd = (n: number): number => {
          seed = (seed * 1103515245 + 12345) >>> 0;
          return seed % n;
        };
        for (let i = 0; i < 60; i++) {
          const off = rnd(size / 512) * 512;
          const len = Math.min(size - off, (1 + rnd(300)) * 512);
          const k = rnd(10);
          if (k < 6) {
            const d = new Uint8Array(len).fill(1 + rnd(250));
            await Promise.all([b.write(off, [d]), model.write(off, [d])]);
          } else if (k === 6) await Promise.all([b.discard(off, len), model.discard(off, len)]);
          else if (k === 7) await Promise.all([b.writeZeroes(off, len, rnd(2) === 0), model.writeZeroes(off, len, false)]);
          else await b.flush();
        }
        await b.close();
        const expected = tmp.path('expected.raw');
        writeFileSync(expected, await readAllOf(model));
        const chk = run('qemu-img', ['check', f]);
        expect(chk.stdout + chk.stderr).toContain('No errors were found');
        expect(chk.status).toBe(0);
        const cmp = run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', f, expected]);
        expect(cmp.stdout).toContain('Images are identical');
        expect((await img('map', '--output=json', f)).stdout).toBe(mapText(f));
      });
    }
  }

  it('extended L2: ioplane allocates the same subclusters qemu-io does for the same writes', async () => {
    tmp = tempDir();
    const base = tmp.path('base.raw');
    qemuImg('create', '-q', '-f', 'raw', base, '2M');
    qemuIo(base, ['write -P 0x77 0 2M'], 'raw');
    const cmds = ['write -P 1 2k 4k', 'write -P 2 100k 1k', 'write -z 200k 8k', 'write -P 3 300k 70k', 'discard 512k 64k', 'write -P 4 1M 512'];
    const theirs = tmp.path('theirs.qcow2');
    const mine = tmp.path('mine.qcow2');
    for (const f of [theirs, mine]) qemuImg('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=64k', '-b', 'base.raw', '-F', 'raw', f);
    qemuIo(theirs, cmds);
    const r = await img('io', mine, ...cmds.flatMap((c) => ['-c', c]));
    expect(r.status).toBe(0);
    expect(normalizeMap(qemuMap(mine), false)).toEqual(normalizeMap(qemuMap(theirs), false));
    expect(run('qemu-img', ['compare', mine, theirs]).stdout).toContain('Images are identical');
    expect(run('qemu-img', ['check', mine]).status).toBe(0);
  });

  it('ioplane-img convert (plain and -c) makes images qemu-img accepts and finds identical', async () => {
    tmp = tempDir();
    const raw = tmp.path('src.raw');
    const data = new Uint8Array(3 * 1024 * 1024);
    for (let i = 0; i < 1024 * 1024; i++) data[i] = 0x30 + ((i >> 9) % 40);
    data.fill(0xee, 2 * 1024 * 1024 + 4096, 2 * 1024 * 1024 + 8192);
    writeFileSync(raw, data);
    for (const args of [['-O', 'qcow2'], ['-c', '-O', 'qcow2'], ['-c', '-O', 'qcow2', '-o', 'cluster_size=4k'], ['-c', '-O', 'qcow2', '-o', 'cluster_size=4k,refcount_bits=1'], ['-O', 'qcow2', '-o', 'compat=0.10'], ['-O', 'raw']]) {
      const out = tmp.path(`out-${args.join('')}.img`);
      const r = await img('convert', '-f', 'raw', ...args, raw, out);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      if (args.includes('qcow2')) expect(run('qemu-img', ['check', out]).status).toBe(0);
      expect(run('qemu-img', ['compare', '-F', 'raw', out, raw]).stdout).toContain('Images are identical');
      expect((await img('compare', out, raw)).status).toBe(0);
      if (args.includes('-c')) {
        const info = run('qemu-img', ['check', out]).stdout;
        expect(info).toMatch(/[1-9][0-9.]*% compressed clusters/);
      }
    }
    expect(readFile(raw).byteLength).toBe(data.byteLength);
  });

  it('check finds leaks (exit 3) and -r leaks repairs them as qemu-img does', async () => {
    tmp = tempDir();
    const f = tmp.path('leak.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', f, '4M');
    qemuIo(f, ['write -P 1 0 128k', 'write -P 2 1M 64k', 'discard 0 64k']);
    // Leak: give an unused cluster a refcount of 1 (refcount block at 0x20000, 16-bit entries).
    const h = readFile(f);
    const dv = new DataView(h.buffer);
    // Clusters: 0 header, 1 refcount table, 2 refcount block, 3 L1, 4 L2, 5 guest 0..64k (freed by the discard).
    expect(dv.getUint16(0x20000 + 5 * 2, false)).toBe(0);
    dv.setUint16(0x20000 + 5 * 2, 1, false);
    writeFileSync(f, h);
    expect(run('qemu-img', ['check', f]).status).toBe(3);
    const mine = await img('check', f);
    expect(mine.status).toBe(3);
    expect(mine.stdout).toContain('Leaked cluster');
    const fix = await img('check', '-r', 'leaks', f);
    expect(fix.stdout).toContain('1 leaked clusters');
    expect(fix.status).toBe(0);
    expect(run('qemu-img', ['check', f]).status).toBe(0);
    // A refcount lower than its references is an error: exit 2 for both.
    const g = readFile(f);
    new DataView(g.buffer).setUint16(0x20000 + 6 * 2, 0, false); // guest 64k..128k
    writeFileSync(f, g);
    expect(run('qemu-img', ['check', f]).status).toBe(2);
    expect((await img('check', f)).status).toBe(2);
  });

  it('a leaked cluster still flagged OFLAG_COPIED: the same leak and error counts as qemu-img; -r leaks prints what it repairs and double-checks', async () => {
    tmp = tempDir();
    const f = tmp.path('copied.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', f, '4M');
    qemuIo(f, ['write -P 1 0 64k']);
    // Clusters: 0 header, 1 refcount table, 2 refcount block, 3 L1, 4 L2, 5 guest 0..64k (COPIED, refcount 1 → 2).
    const b = readFile(f);
    new DataView(b.buffer).setUint16(0x20000 + 5 * 2, 2, false);
    writeFileSync(f, b);
    const theirs = JSON.parse(run('qemu-img', ['check', '--output=json', f]).stdout) as { corruptions?: number; leaks?: number };
    const mine = JSON.parse((await img('check', '--output=json', f)).stdout) as { corruptions?: number; leaks?: number };
    expect(theirs).toMatchObject({ corruptions: 1, leaks: 1 });
    expect(mine).toMatchObject({ corruptions: theirs.corruptions, leaks: theirs.leaks });
    const fix = await img('check', '-r', 'leaks', f);
    expect(fix.status).toBe(0);
    expect(fix.stdout).toContain('Repairing cluster 5 refcount=2 reference=1');
    expect(fix.stdout).toMatch(/1 leaked clusters\n\s+0 corruptions\n\nDouble checking the fixed image now\.\.\.\nNo errors were found on the image\./);
    expect(run('qemu-img', ['check', f]).status).toBe(0);
  });

  it('a refcount block named past the end of the file: check counts the errors qemu-img counts; -r leaks leaves them; -r all grows the file as qemu-img does', async () => {
    tmp = tempDir();
    const f = tmp.path('rb.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', f, '64M');
    qemuIo(f, ['write -P 0xab 0 1M', 'write -P 0xcd 8M 64k']);
    const expected = tmp.path('expected.raw');
    qemuImg('convert', '-f', 'qcow2', '-O', 'raw', f, expected);
    // Point refcount block 0 three clusters past the end of the file (as a crash that kept the
    // refcount table but not the new block it names would leave it).
    const b = readFile(f);
    const dv = new DataView(b.buffer);
    const table = Number(dv.getBigUint64(48, false));
    const past = (Math.ceil(b.length / 65536) + 3) * 65536;
    dv.setBigUint64(table, BigInt(past), false);
    writeFileSync(f, b);
    const qemuCopy = tmp.path('qemu.qcow2');
    writeFileSync(qemuCopy, b);
    const theirs = JSON.parse(run('qemu-img', ['check', '--output=json', f]).stdout) as { corruptions: number };
    const mine = await img('check', '--output=json', f);
    expect(mine.status).toBe(2);
    expect((JSON.parse(mine.stdout) as { corruptions: number }).corruptions).toBe(theirs.corruptions);
    // Leaks only: the errors stay, the file does not grow.
    const leaks = await img('check', '-r', 'leaks', f);
    expect(leaks.status).toBe(2);
    expect(readFile(f).length).toBe(b.length);
    const fix = await img('check', '-r', 'all', f);
    expect(fix.status, fix.stdout + fix.stderr).toBe(0);
    expect(fix.stdout).toMatch(/[1-9]\d* corruptions/);
    expect(run('qemu-img', ['check', f]).status).toBe(0);
    expect(run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', f, expected]).status).toBe(0);
    // qemu-img's own repair of the same image ends at the same size.
    expect(run('qemu-img', ['check', '-r', 'all', qemuCopy]).status).toBe(0);
    expect(readFile(f).length).toBe(past + 65536);
    expect(readFile(qemuCopy).length).toBe(past + 65536);
  });

  it('info --output=json matches qemu-img on the fields both print', async () => {
    tmp = tempDir();
    const base = tmp.path('b.raw');
    qemuImg('create', '-q', '-f', 'raw', base, '2M');
    for (const opts of ['compat=0.10', 'lazy_refcounts=on,refcount_bits=32,cluster_size=4k', 'extended_l2=on']) {
      const f = tmp.path(`i-${opts}.qcow2`);
      qemuImg('create', '-q', '-f', 'qcow2', '-o', opts, '-b', 'b.raw', '-F', 'raw', f);
      const q = JSON.parse(qemuImg('info', '--output=json', f)) as Record<string, unknown>;
      const m = JSON.parse((await img('info', '--output=json', f)).stdout) as Record<string, unknown>;
      for (const k of ['virtual-size', 'cluster-size', 'format', 'backing-filename', 'backing-filename-format', 'format-specific', 'dirty-flag']) {
        expect(m[k], `${opts}: ${k}`).toEqual(q[k]);
      }
    }
  });

  it('io verifies patterns like qemu-io: a mismatch exits non-zero', async () => {
    tmp = tempDir();
    const f = tmp.path('io.qcow2');
    expect((await img('create', '-f', 'qcow2', f, '1M')).status).toBe(0);
    const ok = await img('io', f, '-c', 'write -P 0xab 0 64k', '-c', 'read -P 0xab 0 64k', '-c', 'flush', '-c', 'discard 0 64k', '-c', 'read -P 0 0 64k');
    expect(ok.status).toBe(0);
    expect(ok.stdout).toContain('wrote 65536/65536 bytes at offset 0');
    const bad = await img('io', f, '-c', 'write -P 0x01 4k 4k', '-c', 'read -P 0x02 4k 4k');
    expect(bad.stdout).toContain('Pattern verification failed');
    expect(bad.status).not.toBe(0);
    const unaligned = await img('io', f, '-c', 'write -P 1 1 512');
    expect(unaligned.status).not.toBe(0);
    expect(unaligned.stderr).toContain('not aligned');
    qemuIo(f, ['read -P 0 0 4k', 'read -P 1 4k 4k']);
  });
});

function mapText(f: string): string {
  // ioplane-img prints exactly qemu-img's JSON layout for images without compressed clusters.
  return qemuImg('map', '--output=json', f);
}
