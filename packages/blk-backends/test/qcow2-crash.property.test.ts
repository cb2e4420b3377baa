/**
 * Property: a crash at any point of any sequence of writes, compressed writes, discards,
 * write-zeroes and flushes leaves a qcow2 image that
 *
 *  - `qemu-img check` accepts, with leaks at most (lazy refcounts: once a read-write open has
 *    repaired it, clean);
 *  - holds, at every byte, what the guest had there at its last completed flush, or a value
 *    one of the operations issued since then wrote there. Nothing else: not the old contents of
 *    a host cluster that an L2 entry reached before its data did, not another guest address's
 *    data.
 *
 * The crash is that of a host whose page cache loses writes: every write the driver made before
 * its last fdatasync is on the disk, and of the writes after it any subset, page by page (4 KiB),
 * applied in the order they were issued. That is what the driver's ordering must survive:
 * data and refcounts before the L2 entries that rely on them, L2 tables before the L1 entries
 * (docs/interop/qcow2.txt; the issue's "Ordering for integrity"). QEMU reads each crashed image
 * (`qemu-img convert`), and so does this back-end; the two must agree.
 */
import fc from 'fast-check';
import { copyFileSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Qcow2Backend, createImage, MemoryBackend } from '../src/index.js';
import { tempDir } from './helpers.js';
import { requireQemu, run as runTool } from './qemu.js';

let tmp: ReturnType<typeof tempDir> | undefined;
afterEach(() => {
  tmp?.remove();
  tmp = undefined;
});

/**
 * The regime: CI runs the defaults (1 MiB images, up to 20 batches, 60 runs, ~50 s). A longer
 * hunt (`pnpm --filter @ioplane/blk-backends test:crash-long`) takes bigger images and more
 * batches, which grow and move the refcount table (the third lazy-refcount bug was found so).
 */
const SIZE = envInt('CRASH_SIZE_MIB', 1, 1, 64) << 20;
const MAX_BATCHES = envInt('CRASH_BATCHES', 20, 3, 200);
const RUNS = envInt('CRASH_RUNS', 60, 1, 100_000);

function envInt(name: string, dflt: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < min || v > max) throw new Error(`${name}=${raw}: expected an integer in ${min}..${max}`);
  return v;
}
const SECTORS = SIZE / 512;
const PAGE = 4096;

type Op =
  | { t: 'write'; s: number; n: number; v: number }
  | { t: 'compressed'; s: number; v: number }
  | { t: 'discard'; s: number; n: number }
  | { t: 'zero'; s: number; n: number; unmap: boolean }
  | { t: 'flush' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ t: fc.constant('write' as const), s: fc.nat({ max: SECTORS - 1 }), n: fc.oneof(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1, max: 300 })), v: fc.integer({ min: 1, max: 255 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('compressed' as const), s: fc.nat({ max: SECTORS - 1 }), v: fc.integer({ min: 1, max: 255 }) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('discard' as const), s: fc.nat({ max: SECTORS - 1 }), n: fc.integer({ min: 1, max: 300 }) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('zero' as const), s: fc.nat({ max: SECTORS - 1 }), n: fc.integer({ min: 1, max: 300 }), unmap: fc.boolean() }) },
  { weight: 2, arbitrary: fc.constant({ t: 'flush' as const }) },
);

/** The bytes an op touches, [start, end): `compressed` takes its whole cluster. */
function span(o: Exclude<Op, { t: 'flush' }>, cs: number): [number, number] {
  if (o.t === 'compressed') {
    const c = Math.floor((o.s * 512) / cs) * cs;
    return [c, Math.min(c + cs, SIZE)];
  }
  return [o.s * 512, Math.min(o.s + o.n, SECTORS) * 512];
}

/**
 * Batches of ops issued together: often next to each other (a gap of 0–7 sectors), so that they
 * share clusters and race for their allocation. A flush goes alone, after the batch it was in.
 */
const batchesArb = fc.array(
  fc.tuple(fc.nat({ max: SECTORS - 1 }), fc.array(fc.tuple(opArb, fc.boolean(), fc.integer({ min: 0, max: 7 })), { minLength: 1, maxLength: 3 })).map(([base, raw]) => {
    let cursor = base;
    const ops = raw.map(([o, near, d]): Op => {
      if (o.t === 'flush') return o;
      const s = near ? Math.min(SECTORS - 1, cursor + d) : o.s;
      const placed = { ...o, s, ...(near && o.t !== 'compressed' ? { n: 1 + (o.n % 16) } : {}) } as Op;
      cursor = s + (placed.t === 'compressed' ? 1 : (placed as { n: number }).n);
      return placed;
    });
    return ops;
  }),
  { minLength: 3, maxLength: MAX_BATCHES },
);

function inBatches(raw: Op[][], cs: number): Op[][] {
  const out: Op[][] = [];
  for (const b of raw) {
    const taken: [number, number][] = [];
    const rest = b.filter((o): o is Exclude<Op, { t: 'flush' }> => {
      if (o.t === 'flush') return false;
      const [x, y] = span(o, cs);
      if (taken.some(([a, e]) => x < e && a < y)) return false;
      taken.push([x, y]);
      return true;
    });
    const flush = b.findIndex((o) => o.t === 'flush');
    // A flush first in its batch goes with the batch's writes, concurrently (a guest's FLUSH
    // with writes still in flight); elsewhere it goes alone, after them.
    if (flush === 0 && rest.length > 0) out.push([...rest, { t: 'flush' }]);
    else {
      if (rest.length > 0) out.push(rest);
      if (flush >= 0) out.push([{ t: 'flush' }]);
    }
  }
  return out;
}

function pattern(len: number, v: number): Uint8Array {
  const d = new Uint8Array(len);
  for (let i = 0; i < d.length; i++) d[i] = (v + (i >> 9)) & 0xff;
  return d;
}

async function apply(b: MemoryBackend | Qcow2Backend, o: Op, cs: number): Promise<void> {
  const clip = (s: number, n: number): number => Math.min(n, b.size / 512 - s) * 512;
  switch (o.t) {
    case 'write':
      return b.write(o.s * 512, [pattern(clip(o.s, o.n), o.v)]);
    case 'compressed': {
      const at = Math.floor((o.s * 512) / cs) * cs;
      const d = pattern(Math.min(cs, b.size - at), o.v);
      return b instanceof Qcow2Backend && d.length === cs ? b.writeCompressed(at, d) : b.write(at, [d]);
    }
    case 'discard':
      return b.discard(o.s * 512, clip(o.s, o.n));
    case 'zero':
      return b.writeZeroes(o.s * 512, clip(o.s, o.n), o.unmap);
    case 'flush':
      return b.flush();
  }
}

/** What reached the host file, in issue order. */
type Event = { t: 'write'; pos: number; data: Uint8Array } | { t: 'sync' } | { t: 'truncate'; size: number };

type HostFile = Qcow2Backend['hostFile'];
type Hooked = Pick<HostFile, 'writev' | 'datasync' | 'zeroRange' | 'truncate'>;

/**
 * Patches `target` (a HostFile, or HostFile.prototype) so that every write, zeroing,
 * truncation and fdatasync of a file `mine` accepts is appended to `log`, after it is done.
 * Returns the undo.
 */
function hook(target: Hooked, log: Event[], mine: (f: HostFile) => boolean): () => void {
  const saved = { writev: target.writev, datasync: target.datasync, zeroRange: target.zeroRange, truncate: target.truncate };
  target.writev = async function (this: HostFile, bufs, pos) {
    await saved.writev.call(this, bufs, pos);
    if (!mine(this)) return;
    let at = pos;
    for (const b of bufs) {
      log.push({ t: 'write', pos: at, data: b.slice() });
      at += b.length;
    }
  };
  target.datasync = async function (this: HostFile) {
    await saved.datasync.call(this);
    if (mine(this)) log.push({ t: 'sync' });
  };
  target.zeroRange = async function (this: HostFile, pos, len, unmap) {
    const size = this.size;
    const r = await saved.zeroRange.call(this, pos, len, unmap);
    const end = Math.min(pos + len, size);
    if (mine(this) && end > pos) log.push({ t: 'write', pos, data: new Uint8Array(end - pos) });
    return r;
  };
  target.truncate = async function (this: HostFile, size) {
    await saved.truncate.call(this, size);
    if (mine(this)) log.push({ t: 'truncate', size });
  };
  return () => Object.assign(target, saved);
}

/** Records every write, zeroing, truncation and fdatasync the back-end makes to its file. */
function record(q: Qcow2Backend): Event[] {
  const log: Event[] = [];
  hook(q.hostFile, log, () => true);
  return log;
}

/**
 * Opens `path` read-write (a dirty lazy-refcount image is repaired there) and closes it,
 * recording every event on that file: the repair's writes are made inside `open`, before a
 * back-end exists to hook, so the HostFile prototype is patched for the duration.
 */
async function recordRepair(path: string): Promise<Event[]> {
  const probe = await Qcow2Backend.open(path, { readOnly: true });
  const proto = Object.getPrototypeOf(probe.hostFile) as Hooked;
  await probe.close();
  const log: Event[] = [];
  const undo = hook(proto, log, (f) => f.path === path);
  try {
    await (await Qcow2Backend.open(path)).close();
  } finally {
    undo();
  }
  return log;
}

/** The file a crash after the first `k` events leaves: all before the last sync, a subset after. */
function crashImage(initial: Uint8Array, log: Event[], k: number, keep: (event: number, page: number) => boolean): Uint8Array {
  let lastSync = -1;
  for (let i = 0; i < k; i++) if (log[i]!.t === 'sync') lastSync = i;
  let img = initial.slice();
  const put = (pos: number, data: Uint8Array): void => {
    if (pos + data.length > img.length) {
      const g = new Uint8Array(pos + data.length);
      g.set(img);
      img = g;
    }
    img.set(data, pos);
  };
  for (let i = 0; i < k; i++) {
    const e = log[i]!;
    if (e.t === 'truncate') {
      const g = new Uint8Array(e.size);
      g.set(img.subarray(0, Math.min(img.length, e.size)));
      img = g;
    } else if (e.t === 'write') {
      if (i < lastSync) put(e.pos, e.data);
      else {
        // Page by page, each on the disk or not.
        for (let at = e.pos; at < e.pos + e.data.length; ) {
          const end = Math.min(e.pos + e.data.length, (Math.floor(at / PAGE) + 1) * PAGE);
          if (keep(i, Math.floor(at / PAGE))) put(at, e.data.subarray(at - e.pos, end - e.pos));
          at = end;
        }
      }
    }
  }
  return img;
}

const layouts = fc.record({
  clusterSize: fc.constantFrom(512, 4096, 65536),
  /** 64 with 512-byte clusters: a refcount block covers 32 KiB, so the refcount table grows and moves. */
  refcountBits: fc.constantFrom(1, 16, 64),
  lazy: fc.boolean(),
  /** A raw backing file with data in its middle half: partial writes there copy the rest of the cluster up. */
  backing: fc.boolean(),
  /** Version 2 (16-bit refcounts, no lazy refcounts, no zero flag); version 3 with extended L2 entries (subclusters). */
  version: fc.constantFrom(2 as const, 3 as const, 3 as const),
  extendedL2: fc.boolean(),
  tinyCaches: fc.boolean(),
}).map((l) => ({
  ...l,
  refcountBits: l.version === 2 ? 16 : l.refcountBits,
  lazy: l.version === 3 && l.lazy,
  extendedL2: l.version === 3 && l.extendedL2,
  clusterSize: l.version === 3 && l.extendedL2 ? Math.max(16384, l.clusterSize) : l.clusterSize,
}));

/** Across the runs: crash points checked, those that fell between a flush's writes, bytes found at an older value. */
const seen = { writebackMidBatch: 0, leakRepairCrashes: 0, flushBesideWrites: 0, leaksRepaired: 0, repairCrashes: 0, concurrent: 0, crashes: 0, midFlush: 0, unflushedLost: 0, lazy: 0, leaks: 0 };

/** A run of batches on an image, with every file event recorded and the guest's view after each batch. */
interface Recorded {
  size: number;
  lazy: boolean;
  initial: Uint8Array;
  log: Event[];
  batches: Op[][];
  /** views[j]: the guest's whole disk after batch j - 1 (views[0]: before any). */
  views: Uint8Array[];
  start: number[];
  end: number[];
}

async function recordRun(f: string, size: number, lazy: boolean, batches: Op[][], cs: number, model: MemoryBackend, tinyCaches = false): Promise<Recorded> {
  const initial = new Uint8Array(readFileSync(f));
  // Tiny caches: metadata is written back whenever they overflow, in the middle of operations.
  const q = await Qcow2Backend.open(f, tinyCaches ? { l2CacheTables: 2, refcountCacheBlocks: 1 } : {});
  const log = record(q);
  const views: Uint8Array[] = [new Uint8Array(size)];
  await model.read(0, [views[0]!]);
  const start: number[] = [];
  const end: number[] = [];
  try {
    for (const batch of batches) {
      if (batch.length > 1) seen.concurrent++;
      if (batch.length > 1 && batch.some((o) => o.t === 'flush')) seen.flushBesideWrites++;
      start.push(log.length);
      await Promise.all(batch.map((o) => apply(q, o, cs)));
      end.push(log.length);
      // Metadata written back in the middle of a batch without a flush (caches overflowing).
      if (!batch.some((o) => o.t === 'flush') && log.slice(start[start.length - 1], log.length).some((e) => e.t === 'sync')) seen.writebackMidBatch++;
      for (const o of batch) await apply(model, o, cs);
      const v = new Uint8Array(size);
      await model.read(0, [v]);
      views.push(v);
    }
  } finally {
    await q.close();
  }
  return { size, lazy, initial, log, batches, views, start, end };
}

/**
 * The crash after the first `p` file events, losing what `keep` says of the unsynced writes:
 * the image must pass `qemu-img check` (leaks at most; lazy refcounts: clean after this
 * back-end's repair), read the same through QEMU and through this back-end, and hold at every
 * byte its value at the last completed flush or one a batch begun since then wrote.
 */
async function checkCrash(rec: Recorded, p: number, keep: (event: number, page: number) => boolean, dir: ReturnType<typeof tempDir>, what: string, repairCrash?: () => number): Promise<void> {
  const { size, log, batches, views, start, end } = rec;
  seen.crashes++;
  const crashed = dir.path(`crash-${p}.qcow2`);
  writeFileSync(crashed, crashImage(rec.initial, log, p, keep));
  const where = `crash after ${p} of ${log.length} file events; ${what}`;
  // The guest's view its last completed flush guarantees, and the last batch begun, at the
  // crash. A flush alone guarantees its batch's view; one issued beside writes only the view
  // before that batch (those writes had not completed when it was issued).
  let flushed = 0;
  let begun = 0;
  for (let j = 0; j < batches.length; j++) {
    const b = batches[j]!;
    const hasFlush = b.some((o) => o.t === 'flush');
    if (hasFlush && end[j]! <= p) flushed = b.length === 1 ? j + 1 : j;
    if (start[j]! < p) begun = j + 1;
    if (hasFlush && start[j]! < p && p < end[j]!) seen.midFlush++;
  }
  if (rec.lazy) {
    if (repairCrash !== undefined) {
      // A second crash, in the middle of the repair that the first one called for: the next
      // open must still repair it, and the guest's data must not have moved.
      const before = new Uint8Array(readFileSync(crashed));
      const rlog = await recordRepair(crashed);
      if (rlog.length > 0) {
        const p2 = 1 + (repairCrash() % rlog.length);
        writeFileSync(crashed, crashImage(before, rlog, p2, () => (repairCrash() & 1) === 1));
        seen.repairCrashes++;
      }
    }
    // A read-write open repairs what lazy refcounts left; then QEMU finds it clean.
    const r = await Qcow2Backend.open(crashed);
    if (r.dirtyBit) throw new Error(`${where}: still dirty after open`);
    await r.close();
    seen.lazy++;
  }
  const chk = runTool('qemu-img', ['check', '-f', 'qcow2', crashed]);
  if (chk.status === 3) seen.leaks++;
  expect(rec.lazy ? [0] : [0, 3], `${where}: qemu-img check says ${chk.stdout}${chk.stderr}`).toContain(chk.status);
  if (!rec.lazy) {
    // This back-end's check finds what QEMU's finds: the same number of leaked clusters, no errors.
    const qemuLeaks = Number(/(\d+) leaked clusters? w(?:as|ere) found/.exec(chk.stdout)?.[1] ?? 0);
    const c = await Qcow2Backend.open(crashed, { readOnly: true });
    const ours = await c.check().finally(() => c.close());
    expect([ours.corruptions, ours.leaks], `${where}: check() against qemu-img check's ${qemuLeaks} leaks: ${ours.messages.slice(0, 3).join('; ')}`).toEqual([0, qemuLeaks]);
    if (qemuLeaks > 0) {
      // And repairs them (on a copy: the data checks below read the crashed image as it was).
      const copy = dir.path(`repaired-${p}.qcow2`);
      copyFileSync(crashed, copy);
      const leaky = new Uint8Array(readFileSync(copy));
      const w = await Qcow2Backend.open(copy);
      const rlog = record(w);
      const fixed = await w.check(true).finally(() => w.close());
      expect(fixed.leaksFixed, where).toBe(qemuLeaks);
      const again = runTool('qemu-img', ['check', '-f', 'qcow2', copy]);
      expect(again.status, `${where}: after check(true), qemu-img check says ${again.stdout}`).toBe(0);
      seen.leaksRepaired++;
      if (repairCrash !== undefined && rlog.length > 0) {
        // A crash in the middle of that repair: leaks at most, never an error.
        const p3 = 1 + (repairCrash() % rlog.length);
        writeFileSync(copy, crashImage(leaky, rlog, p3, () => (repairCrash() & 1) === 1));
        const mid = runTool('qemu-img', ['check', '-f', 'qcow2', copy]);
        expect([0, 3], `${where}; then a crash after ${p3} of ${rlog.length} events of check(true): qemu-img check says ${mid.stdout}`).toContain(mid.status);
        seen.leakRepairCrashes++;
      }
      rmSync(copy);
    }
  }
  const raw = dir.path(`crash-${p}.raw`);
  const cv = runTool('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', crashed, raw]);
  expect(cv.status, `${where}: ${cv.stderr}`).toBe(0);
  const got = new Uint8Array(readFileSync(raw));
  // This back-end reads the crashed image as QEMU does.
  const r = await Qcow2Backend.open(crashed, { readOnly: true });
  const ours = new Uint8Array(size);
  try {
    await r.read(0, [ours]);
  } finally {
    await r.close();
  }
  expect(Buffer.compare(ours, got), `${where}: this back-end and qemu-img read the crashed image differently`).toBe(0);
  // Every byte: its value at the last completed flush, or one a batch begun since then left.
  const base = views[flushed]!;
  for (let i = 0; i < size; i++) {
    const b = got[i]!;
    if (b === base[i]) continue;
    let ok = false;
    for (let j = flushed + 1; j <= begun && !ok; j++) ok = views[j]![i] === b;
    if (!ok) {
      const allowed = [base[i]!, ...views.slice(flushed + 1, begun + 1).map((v) => v[i]!)];
      throw new Error(`${where}: byte ${i} (sector ${i >> 9}) reads 0x${b.toString(16)}; after the last completed flush (batch ${flushed}) it may only be one of ${[...new Set(allowed)].map((x) => `0x${x.toString(16)}`).join(', ')}`);
    }
  }
  for (let i = 0; i < size; i += 512) {
    if (got[i] !== views[begun]![i]) {
      seen.unflushedLost++;
      break;
    }
  }
  rmSync(crashed);
  rmSync(raw);
}

/** A seeded generator (fast-check's numbers lean to the edges). */
function lcg(seed: number): () => number {
  let rng = seed >>> 0;
  return () => {
    rng = (Math.imul(rng, 1103515245) + 12345) >>> 0;
    return rng >>> 8;
  };
}

describe('qcow2 crash consistency', () => {
  beforeAll(() => requireQemu());

  for (const lazy of [false, true]) {
    it(`${lazy ? 'lazy refcounts' : 'refcounts in order'}: a compressed cluster's data reaches the disk before its L2 entry (the crash that loses only the data)`, async () => {
      // Found by the property below: with lazy refcounts the flush wrote L2 tables with no
      // fdatasync after the data, so a crash could keep the L2 entry and lose the compressed
      // data it names, past the end of the file: QEMU then fails the read with EIO.
      tmp = tempDir();
      const f = tmp.path('z.qcow2');
      const cs = 65536;
      await createImage(f, 'qcow2', { size: SIZE, clusterSize: cs, lazyRefcounts: lazy });
      let q = await Qcow2Backend.open(f);
      // The L2 table exists already: only its entry changes.
      await q.write(0, [pattern(512, 3)]);
      await q.close();
      const initial = new Uint8Array(readFileSync(f));
      q = await Qcow2Backend.open(f);
      const log = record(q);
      const data = pattern(cs, 7);
      try {
        await q.writeCompressed(cs, data);
        await q.flush();
      } finally {
        await q.close();
      }
      for (let p = 1; p <= log.length; p++) {
        // The adversary: every write since the last fdatasync lands except the first (the
        // data, when no fdatasync came after it).
        let lastSync = -1;
        for (let i = 0; i < p; i++) if (log[i]!.t === 'sync') lastSync = i;
        let firstUnsynced = lastSync + 1;
        while (firstUnsynced < p && log[firstUnsynced]!.t !== 'write') firstUnsynced++;
        const crashed = tmp.path(`z-${p}.qcow2`);
        writeFileSync(crashed, crashImage(initial, log, p, (event) => event !== firstUnsynced));
        if (lazy) await (await Qcow2Backend.open(crashed)).close();
        const raw = tmp.path(`z-${p}.raw`);
        const cv = runTool('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', crashed, raw]);
        expect(cv.status, `crash after ${p} of ${log.length} file events: ${cv.stderr}`).toBe(0);
        const got = new Uint8Array(readFileSync(raw)).subarray(cs, 2 * cs);
        expect(got.every((b) => b === 0) || Buffer.compare(got, data) === 0, `crash after ${p}: the cluster holds neither zeros nor the data`).toBe(true);
      }
    });
  }

  it('a crash anywhere, losing any writes since the last fdatasync, leaves a checkable image holding flushed data', async () => {
    await fc.assert(
      fc.asyncProperty(layouts, batchesArb, fc.integer(), async (layout, raw, seed) => {
        tmp?.remove();
        tmp = tempDir();
        const f = tmp.path('c.qcow2');
        const cs = layout.clusterSize;
        const batches = inBatches(raw, cs);
        const model = new MemoryBackend({ size: SIZE });
        if (layout.backing) {
          const d = new Uint8Array(SIZE / 2);
          for (let i = 0; i < d.length; i++) d[i] = 0x80 | ((seed + (i >> 9)) & 0x7f);
          const base = new Uint8Array(SIZE);
          base.set(d, SIZE / 4);
          writeFileSync(tmp.path('base.raw'), base);
          await model.write(SIZE / 4, [d]);
        }
        await createImage(f, 'qcow2', {
          size: SIZE,
          clusterSize: cs,
          refcountBits: layout.refcountBits,
          lazyRefcounts: layout.lazy,
          version: layout.version,
          extendedL2: layout.extendedL2,
          ...(layout.backing ? { backingFile: 'base.raw', backingFormat: 'raw' } : {}),
        });
        const rec = await recordRun(f, SIZE, layout.lazy, batches, cs, model, layout.tinyCaches);
        if (rec.log.length === 0) return;
        const next = lcg(seed);
        const points = new Set<number>();
        for (let i = 0; i < 5; i++) points.add(1 + (next() % rec.log.length));
        for (const p of points) await checkCrash(rec, p, () => (next() & 1) === 1, tmp, `batches ${JSON.stringify(batches)}; layout ${JSON.stringify(layout)}`, (next() & 1) === 1 ? next : undefined);
      }),
      // No shrinking: each step spawns qemu-img; the message names the ops, the layout and the crash.
      { numRuns: RUNS, endOnFailure: true },
    );
    if (process.env.CRASH_COV) console.log('COV', JSON.stringify(seen));
    // The generator reaches what this is for (floors set for 60 runs, scaled to the runs asked).
    const floor = (n: number): number => Math.floor((n * Math.min(RUNS, 60)) / 60);
    expect(seen.crashes).toBeGreaterThan(floor(100));
    expect(seen.midFlush).toBeGreaterThan(floor(10));
    expect(seen.unflushedLost).toBeGreaterThan(floor(10));
    expect(seen.lazy).toBeGreaterThan(floor(20));
    expect(seen.concurrent).toBeGreaterThan(floor(100));
    expect(seen.repairCrashes).toBeGreaterThan(floor(10));
    expect(seen.leaksRepaired).toBeGreaterThan(floor(10));
    expect(seen.flushBesideWrites).toBeGreaterThan(floor(15));
    expect(seen.leakRepairCrashes).toBeGreaterThan(floor(5));
    expect(seen.writebackMidBatch).toBeGreaterThan(floor(30));
  }, 300_000 * Math.max(1, Math.ceil((RUNS * MAX_BATCHES * (SIZE >> 20)) / (60 * 20))));

  it('lazy refcounts: a crash that keeps the refcount table and loses the new refcount blocks it names leaves a repairable image', async () => {
    // Found by a longer run of the property above (4 MiB, 512-byte clusters, 64-bit refcounts):
    // a lazy flush wrote the table right after the blocks with no fdatasync between, and a
    // crash that kept the table but not a block left an entry past the end of the file, which
    // the repair refused ("refcount block 12 ... is outside the image").
    tmp = tempDir();
    const f = tmp.path('r.qcow2');
    const size = 4 << 20;
    await createImage(f, 'qcow2', { size, clusterSize: 512, refcountBits: 64, lazyRefcounts: true });
    const batches: Op[][] = [];
    for (let at = 0; at < 1 << 20; at += 32 << 10) batches.push([{ t: 'write', s: at / 512, n: 16, v: 1 + (at >> 15) }]);
    batches.push([{ t: 'flush' }]);
    const rec = await recordRun(f, size, true, batches, 512, new MemoryBackend({ size }));
    const dv = new DataView(rec.initial.buffer, rec.initial.byteOffset);
    const table = Number(dv.getBigUint64(48));
    const tableEnd = table + dv.getUint32(56) * 512;
    const tableWrites = rec.log.flatMap((e, i) => (e.t === 'write' && e.pos >= table && e.pos < tableEnd ? [i] : []));
    expect(tableWrites.length, 'the flush writes the refcount table').toBeGreaterThan(0);
    // The adversary: of the writes since the last fdatasync, only the table's land.
    for (const w of tableWrites) await checkCrash(rec, w + 1, (event) => tableWrites.includes(event), tmp, `refcount table written at event ${w}`);
  });

  for (const lazy of [false, true]) {
    it(`the refcount table outgrows its cluster and moves (${lazy ? 'lazy refcounts' : 'refcounts in order'}): a crash at any step of it`, async () => {
      // 512-byte clusters with 64-bit refcounts: a refcount block covers 32 KiB of the file, and
      // the first refcount table's one cluster 2 MiB. Writing 3 MiB moves the table.
      tmp = tempDir();
      const f = tmp.path('g.qcow2');
      const size = 4 << 20;
      const cs = 512;
      await createImage(f, 'qcow2', { size, clusterSize: cs, refcountBits: 64, lazyRefcounts: lazy });
      const batches: Op[][] = [];
      for (let at = 0; at < 3 << 20; at += 64 << 10) {
        batches.push([{ t: 'write', s: at / 512, n: 128, v: 1 + ((at >> 16) % 250) }]);
        if (at % (512 << 10) === 0) batches.push([{ t: 'flush' }]);
      }
      batches.push([{ t: 'flush' }]);
      const rec = await recordRun(f, size, lazy, batches, cs, new MemoryBackend({ size }));
      const reftableAt = (b: Uint8Array): bigint => new DataView(b.buffer, b.byteOffset).getBigUint64(48);
      expect(reftableAt(new Uint8Array(readFileSync(f))), 'the refcount table moved').not.toBe(reftableAt(rec.initial));
      // Where the header that names the new table was written: every crash point around it,
      // and a spread over the rest.
      const moved = rec.log.findIndex((e, i) => i > 0 && e.t === 'write' && e.pos === 0 && reftableAt(e.data) !== reftableAt(rec.initial));
      expect(moved).toBeGreaterThan(0);
      const points = new Set<number>();
      for (let p = Math.max(1, moved - 12); p <= Math.min(rec.log.length, moved + 4); p++) points.add(p);
      for (let p = 1; p <= rec.log.length; p += Math.ceil(rec.log.length / 12)) points.add(p);
      const next = lcg(lazy ? 7 : 3);
      for (const p of points) {
        for (const keep of [() => false, () => true, () => (next() & 1) === 1]) await checkCrash(rec, p, keep, tmp, `refcount table move at event ${moved}`);
      }
    }, 120_000);
  }
});
