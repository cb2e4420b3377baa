/**
 * The device's share of a 4 KiB virtio-blk request behind VT-d, on one
 * thread: what the device thread of `bench:iommu-threads` does per request
 * beyond the vIOMMU-off path — its three `translateRange` calls (request
 * header and status byte in the driver's identity-mapped area, the data
 * buffer at the request's IOVA) and its share of the invalidation queue —
 * with the guest driver's work done between the timed parts and left out.
 *   node --conditions=@ioplane/source --import tsx bench/device-share.ts   (RUNS=9 WAVES=4000 QD=32 MODES=static,deferred,optimistic)
 *
 * In waves of QD requests, as the two-thread bench's guest submits them:
 * the guest maps QD buffers (static: reuses QD fixed IOVAs), the device
 * translates each request (timed), the guest unmaps them (a deferred batch
 * posts its page-selective invalidations to the queue), and the device
 * takes up the queue (timed). Prints ns per request of the timed device
 * work, median of RUNS, and the difference from `static`.
 */
import { GuestMemory } from '@ioplane/guest-memory';
import { type DmaMapper, TranslatingMemory, VtdGuestDriver, VtdInvalidationQueue, VtdQiRegisters, VtdQueuedInvalidator, VtdRemapper, VtdSource } from '../src/index.js';

const RUNS = Number(process.env.RUNS ?? 9);
const WAVES = Number(process.env.WAVES ?? 4000);
const QD = Number(process.env.QD ?? 32);
const MODES = (process.env.MODES ?? 'static,deferred,optimistic').split(',') as ('static' | 'deferred' | 'optimistic' | 'strict')[];
const SID = 0x0008;
const RINGS = { addr: 0x10000, len: 4 << 20 };
const TABLES = { addr: 0x600000, len: 1 << 20 };
const QUEUE = 0x700000;
const STATUS = 0x701000;
const DATA = 8 << 20;
const SLOT = 64 << 10;

interface Rig {
  dom: DmaMapper;
  dma: TranslatingMemory;
  queue: VtdInvalidationQueue;
  fixed: number[];
}

function rig(mode: (typeof MODES)[number]): Rig {
  const mem = new GuestMemory([{ gpa: 0, backing: new SharedArrayBuffer(32 << 20) }]);
  const vtd = new VtdRemapper({ memory: mem });
  const regs = VtdQiRegisters.create();
  const queue = new VtdInvalidationQueue(vtd, mem, regs);
  // The unit runs when the device gets to it (below), not when the guest rings; register commands
  // (enabling the queue) are taken at once, as the guest waits for them.
  let inline = true;
  const unit = new VtdQueuedInvalidator({ mem, regs, queue: { addr: QUEUE }, status: STATUS, notify: () => void (inline && queue.process()) });
  const driver = new VtdGuestDriver({ unit, mem, area: TABLES, now: () => performance.now(), schedule: () => undefined });
  const dom = driver.attach(SID, { mode: mode === 'static' ? 'strict' : mode });
  dom.mapAt(RINGS.addr, RINGS.addr, RINGS.len, 'bidirectional');
  const fixed: number[] = [];
  if (mode === 'static') for (let s = 0; s < QD; s++) fixed.push(dom.map(DATA + s * SLOT, SLOT, 'from-device'));
  inline = false;
  return { dom, dma: new TranslatingMemory(mem, new VtdSource(vtd, SID), vtd), queue, fixed };
}

const iovas: number[] = new Array<number>(QD).fill(0);
let sink = 0;
/** Per mode: the invalidation-queue passes that found descriptors, and their time. */
const qi = new Map(MODES.map((m) => [m, { calls: 0, ns: 0 }]));

/** Per mode: the guest's map and unmap calls, ns per request, per run (not the device's share: beside it). */
const guest = new Map(MODES.map((m) => [m, { map: [] as number[], unmap: [] as number[] }]));

/** One run: ns per request of the device's timed work. */
function run(mode: (typeof MODES)[number], r: Rig, record: boolean): number {
  const { dom, dma, queue, fixed } = r;
  let ns = 0;
  let mapNs = 0;
  let unmapNs = 0;
  let acc = 0;
  for (let w = 0; w < WAVES; w++) {
    const m0 = process.hrtime.bigint();
    for (let i = 0; i < QD; i++) iovas[i] = mode === 'static' ? fixed[i]! : dom.map(DATA + i * SLOT, 4096, 'from-device');
    const t0 = process.hrtime.bigint();
    mapNs += Number(t0 - m0);
    for (let i = 0; i < QD; i++) {
      // The request header (16 bytes) and status byte sit in the ring area, one request slot apart.
      const hdr = RINGS.addr + 0x200000 + i * 32;
      acc += dma.translateRange(hdr, 16, 'read');
      acc += dma.translateRange(iovas[i]!, 4096, 'write');
      acc += dma.translateRange(hdr + 16, 1, 'write');
    }
    const t1 = process.hrtime.bigint();
    if (queue.poll() > 0) {
      const q = qi.get(mode)!;
      q.ns += Number(process.hrtime.bigint() - t1);
      q.calls++;
    }
    const t2 = process.hrtime.bigint();
    ns += Number(t2 - t0);
    if (mode !== 'static') for (let i = 0; i < QD; i++) dom.unmap(iovas[i]!);
    unmapNs += Number(process.hrtime.bigint() - t2);
  }
  sink += acc;
  if (record) {
    guest.get(mode)!.map.push(mapNs / (WAVES * QD));
    guest.get(mode)!.unmap.push(unmapNs / (WAVES * QD));
  }
  return ns / (WAVES * QD);
}

const rigs = new Map(MODES.map((m) => [m, rig(m)]));
const samples = new Map(MODES.map((m) => [m, [] as number[]]));
for (let round = -1; round < RUNS; round++) {
  for (const m of MODES) {
    const ns = run(m, rigs.get(m)!, round >= 0);
    if (round >= 0) samples.get(m)!.push(ns);
  }
}
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const base = samples.has('static') ? median(samples.get('static')!) : NaN;
console.log(`The device's share per 4 KiB request (three translateRange calls + the invalidation queue), one thread, QD ${QD}, ${WAVES} waves × ${RUNS} runs, Node ${process.version}`);
console.log('| mode | ns per request (median) | min–max | over static | beside it, the guest driver: map, unmap (ns per request) |');
console.log('|---|---:|---:|---:|---:|');
for (const m of MODES) {
  const s = samples.get(m)!;
  const g = guest.get(m)!;
  console.log(`| ${m} | ${median(s).toFixed(0)} | ${Math.min(...s).toFixed(0)}–${Math.max(...s).toFixed(0)} | ${m === 'static' ? '' : `+${(median(s) - base).toFixed(0)}`} | ${median(g.map).toFixed(0)}, ${median(g.unmap).toFixed(0)} |`);
}
for (const [m, q] of qi) if (q.calls > 0) console.log(`${m}: the invalidation queue was taken up ${q.calls} times, ${(q.ns / q.calls / 1000).toFixed(1)} µs each`);
if (sink === 0.5) console.log(sink);
