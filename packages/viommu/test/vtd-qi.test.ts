import { GuestMemory } from '@ioplane/guest-memory';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  FSTS_IQE,
  GCMD_QIE,
  ICS_IWC,
  QI_REG,
  ViommuError,
  VtdGuestDriver,
  VtdInvalidationQueue,
  VtdQiRegisters,
  VtdQueuedInvalidator,
  VtdRemapper,
} from '../src/index.js';
import { SEQ_SPAN, nextSeq, seqReached } from '../src/vtd-qi.js';
import { checkModeBounds, fault, reachable } from './vtd-helpers.js';

const PAGE = 4096;
const SID = 0x0108;
const DATA = 0x10000;
const TABLES = { addr: 0x80000, len: 0x40000 };
const QUEUE = 0xc0000;
const STATUS = 0xc2000;
const RAM = 0x100000;

/** A unit with its queue, and a guest driver whose every submission is processed inline (one thread). */
function rig(options: { process?: boolean; timeoutMs?: number; now?: () => number } = {}) {
  const ram = GuestMemory.create(RAM);
  for (let i = 0; i < 0x40000; i += 4) ram.writeU32(DATA + i, (DATA + i) >>> 0);
  const vtd = new VtdRemapper({ memory: ram });
  const regs = VtdQiRegisters.create();
  const q = new VtdInvalidationQueue(vtd, ram, regs);
  const ctl = { live: options.process ?? true };
  const inv = new VtdQueuedInvalidator({
    mem: ram,
    regs,
    queue: { addr: QUEUE },
    status: STATUS,
    notify: () => {
      if (ctl.live) q.process();
    },
    timeoutMs: options.timeoutMs,
    now: options.now,
  });
  let now = 0;
  const driver = new VtdGuestDriver({ unit: inv, mem: ram, area: TABLES, now: () => now });
  const dma = vtd.dmaMemory(SID, ram);
  return { ram, vtd, regs, q, inv, driver, dma, ctl, tick: (ms: number) => (now += ms) };
}



function errorOf(f: () => unknown): ViommuError | undefined {
  try {
    f();
  } catch (e) {
    if (e instanceof ViommuError) return e;
    throw e;
  }
  return undefined;
}

/** Writes descriptor `i` of the ring (four 32-bit words). */
function put(ram: GuestMemory, i: number, w: readonly [number, number, number, number], base = QUEUE): void {
  for (let k = 0; k < 4; k++) ram.writeU32(base + i * 16 + k * 4, w[k]! >>> 0);
}

const cc = (g: number, did = 0, sid = 0, fm = 0): [number, number, number, number] => [1 | (g << 4) | (did << 16), sid | (fm << 16), 0, 0];
const iotlb = (g: number, did = 0, addr = 0, am = 0, ih = false): [number, number, number, number] => [
  2 | (g << 4) | (did << 16),
  0,
  ((addr % 2 ** 32) & 0xffff_f000) + (ih ? 0x40 : 0) + am,
  Math.floor(addr / 2 ** 32),
];
const wait = (data: number, addr: number, flags = 0x20): [number, number, number, number] => [5 | flags, data, addr % 2 ** 32, Math.floor(addr / 2 ** 32)];

/** A unit whose queue is enabled by register writes alone (no guest-side driver): for raw descriptor streams. */
function rawUnit(qs = 0) {
  const ram = GuestMemory.create(RAM);
  const vtd = new VtdRemapper({ memory: ram });
  const regs = VtdQiRegisters.create();
  const q = new VtdInvalidationQueue(vtd, ram, regs);
  const a = regs.array;
  Atomics.store(a, QI_REG.IQA_LO, QUEUE + qs);
  Atomics.store(a, QI_REG.GCMD, GCMD_QIE);
  Atomics.add(a, QI_REG.CMD_SEQ, 1);
  q.process();
  expect(q.queueEnabled).toBe(true);
  const tail = (t: number) => Atomics.store(a, QI_REG.IQT, t * 16);
  return { ram, vtd, regs, q, a, tail };
}

describe('VT-d queued invalidation: one thread', () => {
  it('the driver sets the root table by register and maps; a strict unmap is a PSI plus a wait, and the device faults on return', () => {
    const { dma, driver, q, inv, regs, ram, vtd } = rig();
    expect(vtd.translationEnabled).toBe(true);
    const dom = driver.attach(SID, { mode: 'strict' });
    const keep = dom.map(DATA + 0x10000, PAGE, 'bidirectional');
    const iova = dom.map(DATA, PAGE, 'bidirectional');
    expect(dma.readU32(iova)).toBe(DATA);
    const before = { d: q.stats.descriptors, w: inv.stats.waits, i: vtd.stats.iotlbInvalidations };
    dom.unmap(iova);
    // One IOTLB descriptor and one wait; the wait's status dword holds its sequence number.
    expect(q.stats.descriptors - before.d).toBe(2);
    expect(inv.stats.waits - before.w).toBe(1);
    expect(vtd.stats.iotlbInvalidations - before.i).toBe(1);
    expect(ram.readU32(STATUS)).not.toBe(0);
    expect(regs.head).toBe(Atomics.load(regs.array, QI_REG.IQT) / 16);
    expect(fault(() => dma.readU32(iova))).toBe('vtd-read');
    expect(dma.readU32(keep)).toBe(DATA + 0x10000);
  });

  it('a batch sends several invalidations behind one wait', () => {
    const { inv, q, vtd } = rig();
    const w = inv.stats.waits;
    const i = vtd.stats.iotlbInvalidations;
    inv.batch(() => {
      inv.invalidateIotlbDomain(1);
      inv.invalidateIotlbPages(1, 0x5000, 0, true);
      inv.invalidateIotlbDomain(2);
    });
    expect(inv.stats.waits - w).toBe(1);
    expect(vtd.stats.iotlbInvalidations - i).toBe(3);
    expect(q.error).toBeUndefined();
  });

  it('many submissions wrap the ring (256 descriptors) and keep working', () => {
    const { driver, dma, regs } = rig();
    const dom = driver.attach(SID, { mode: 'strict' });
    for (let k = 0; k < 400; k++) {
      const iova = dom.map(DATA + (k % 16) * PAGE, PAGE, 'bidirectional');
      expect(dma.readU32(iova)).toBe(DATA + (k % 16) * PAGE);
      dom.unmap(iova);
      expect(reachable(dma, iova)).toBe(false);
    }
    expect(regs.head).toBe(Atomics.load(regs.array, QI_REG.IQT) / 16);
  });

  it('a second guest-side instance disables the running queue first (IQH back to 0), then works from a fresh ring', () => {
    const { ram, regs, q, vtd, driver, dma } = rig();
    const dom = driver.attach(SID, { mode: 'strict' });
    expect(regs.head).toBeGreaterThan(0);
    const again = new VtdQueuedInvalidator({ mem: ram, regs, queue: { addr: QUEUE + 0x4000, qs: 1 }, status: STATUS + 8, notify: () => q.process() });
    expect(q.queueEnabled).toBe(true);
    expect(q.queueSize).toBe(512);
    expect(regs.head).toBe(0);
    const iova = dom.map(DATA, PAGE, 'bidirectional');
    expect(dma.readU32(iova)).toBe(DATA);
    const i0 = vtd.stats.iotlbInvalidations;
    again.invalidateIotlbPages(dom.id, iova, 0, true);
    expect(vtd.stats.iotlbInvalidations - i0).toBe(1);
    expect(regs.head).toBe(2);
  });

  it('a wait that nobody processes ends in a typed timeout, not a hang', () => {
    let t = 0;
    const { inv, ctl } = rig({ timeoutMs: 50, now: () => (t += 10) });
    ctl.live = false;
    expect(errorOf(() => inv.invalidateIotlbDomain(1))).toMatchObject({ kind: 'timeout', message: expect.stringMatching(/not completed within 50 ms/) as string });
  });

  it('property: live buffers reach their GPA; strict leaves nothing stale, deferred and optimistic stay in their bounds', () => {
    checkModeBounds((options) => {
      const { dma, driver, tick } = rig();
      return { dom: driver.attach(SID, options), dma, tick };
    }, DATA, 100);
  });
});

describe('VT-d queued invalidation: batches posted without waiting', () => {
  it('property: wait sequence numbers order correctly across the wrap (1 … 2^30 − 1, never 0)', () => {
    const advance = (t: number, k: number): number => ((t - 1 + k) % SEQ_SPAN) + 1;
    expect(nextSeq(SEQ_SPAN)).toBe(1);
    expect(nextSeq(0)).toBe(1);
    fc.assert(
      fc.property(fc.integer({ min: 1, max: SEQ_SPAN }), fc.integer({ min: 0, max: Math.floor(SEQ_SPAN / 2) - 1 }), (t, k) => {
        let n = t;
        for (let i = 0; i < Math.min(k, 3); i++) n = nextSeq(n);
        expect(n).toBe(advance(t, Math.min(k, 3)));
        const later = advance(t, k);
        expect(seqReached(later, t)).toBe(true);
        if (k > 0) expect(seqReached(t, later)).toBe(false);
      }),
      { numRuns: 2000 },
    );
  });

  it('postIotlbDomain publishes a DSI and a wait and returns; retired() reads the status once the unit has run', () => {
    const { inv, q, regs, ctl, driver } = rig();
    driver.attach(SID, { mode: 'deferred' });
    ctl.live = false;
    const waits = inv.stats.waits;
    const t1 = inv.postIotlbDomain(1);
    const t2 = inv.postIotlbDomain(1);
    expect(inv.stats.waits).toBe(waits + 2);
    expect(regs.head).not.toBe(Atomics.load(regs.array, QI_REG.IQT)); // nothing consumed yet
    expect(inv.retired(t1, false)).toBe(false);
    q.process();
    expect(inv.retired(t2, false)).toBe(true);
    expect(inv.retired(t1, false)).toBe(true); // waits complete in queue order
  });

  it('a deferred batch holds its IOVAs until the unit reports it done; the device reaches them until then; flush() waits', () => {
    // A unit that runs only when the guest starts waiting (the guest reads its clock right after ringing).
    const hook = { run: (): void => {} };
    const r = rig({ now: () => (hook.run(), 0) });
    const { driver, dma, q, ctl } = r;
    hook.run = () => void q.process();
    ctl.live = false;
    const dom = driver.attach(SID, { mode: 'deferred', batchSize: 4 });
    const first = [0, 1, 2, 3].map((i) => dom.map(DATA + i * PAGE, PAGE, 'to-device'));
    for (const iova of first) expect(dma.readU32(iova)).toBe(DATA + first.indexOf(iova) * PAGE); // cached in the IOTLB
    for (const iova of first) dom.unmap(iova); // the 4th unmap tears the batch down: posted, not waited for
    expect(dom.reachable).toBe(4);
    for (const iova of first) expect(reachable(dma, iova)).toBe(true);
    // New maps get other IOVAs while the batch is in flight.
    const second = [4, 5, 6, 7].map((i) => dom.map(DATA + i * PAGE, PAGE, 'to-device'));
    for (const iova of second) expect(first).not.toContain(iova);
    q.process();
    for (const iova of first) expect(reachable(dma, iova)).toBe(false);
    dom.syncMaps(); // sees the status: the IOVAs go back to the allocator
    expect(dom.reachable).toBe(4);
    for (const iova of second) dom.unmap(iova);
    expect(dom.reachable).toBe(4); // posted again
    dom.flush(); // waits
    expect(dom.reachable).toBe(0);
    for (const iova of second) expect(reachable(dma, iova)).toBe(false);
  });

  it('a batch that unlinks emptied tables is posted too: the pages are held until the unit is done, then freed', () => {
    // A unit that never runs by itself, and a short timeout: a synchronous wait would throw.
    const { driver, dma, q, ctl } = rig({ timeoutMs: 20 });
    const dom = driver.attach(SID, { mode: 'deferred', batchSize: 64 });
    ctl.live = false;
    const base = driver.pagesInUse;
    // Next-fit walks the IOVA space: 512 maps fill a level-1 table, and tables beyond the few kept
    // empty are unlinked by the batch that empties them. Seven tables' worth of map/unmap pairs.
    const seen: number[] = [];
    for (let i = 0; i < 7 * 512; i++) {
      const iova = dom.map(DATA, PAGE, 'to-device');
      if (i % 512 === 0) seen.push(iova);
      dom.unmap(iova);
    }
    expect(dom.heldTablePages).toBeGreaterThan(0);
    const held = dom.heldTablePages;
    const inUse = driver.pagesInUse;
    expect(inUse).toBeGreaterThanOrEqual(base + held);
    q.process();
    // The device reaches none of the unmapped IOVAs once the unit ran (the PDE cache went with the DSI).
    for (const iova of seen) expect(reachable(dma, iova)).toBe(false);
    dom.syncMaps(); // sees the status: IOVAs and table pages go back
    expect(dom.heldTablePages).toBe(0);
    expect(driver.pagesInUse).toBe(inUse - held);
    const iova = dom.map(DATA + PAGE, PAGE, 'to-device');
    expect(dma.readU32(iova)).toBe(DATA + PAGE);
    dom.unmap(iova);
    ctl.live = true;
    dom.flush();
    expect(dom.reachable).toBe(0);
  });

  it('posts never overrun descriptors the unit has not consumed: the guest waits when the ring would fill', () => {
    // The unit runs only when the guest waits: here, only when its ring is full.
    const hook = { run: (): void => {} };
    const r = rig({ now: () => (hook.run(), 0) });
    const { inv, q } = r;
    let runs = 0;
    hook.run = () => {
      runs++;
      q.process();
    };
    r.ctl.live = false;
    let last = 0;
    for (let i = 0; i < 1000; i++) last = inv.postIotlbDomain(1 + (i % 7));
    expect(inv.retired(last, false)).toBe(false);
    q.process();
    // 1000 posts of two descriptors each in a 256-descriptor ring: the guest had to wait a few times.
    expect(runs).toBeGreaterThanOrEqual(7);
    expect(inv.retired(last, false)).toBe(true);
    expect(q.stats.errors).toBe(0);
    // Every descriptor written was consumed once: none was overwritten before the unit read it.
    expect(q.stats.descriptors).toBe(inv.stats.descriptors + inv.stats.waits);
  });

  it('property: with the unit running only before each device access, the modes keep their bounds', () => {
    checkModeBounds((options) => {
      const hook = { run: (): void => {} };
      const r = rig({ now: () => (hook.run(), 0) });
      const { dma, driver, tick, q } = r;
      hook.run = () => void q.process();
      r.ctl.live = false;
      // The device's unit takes up what was queued before each translation (as the two-thread benchmark's source does).
      const polled = {
        checkRange: (addr: number, len: number, access: 'read' | 'write') => {
          q.process();
          dma.checkRange(addr, len, access);
        },
        readU32: (addr: number) => {
          q.process();
          return dma.readU32(addr);
        },
      } as unknown as typeof dma;
      return { dom: driver.attach(SID, options), dma: polled, tick };
    }, DATA, 100);
  });
});

describe('VT-d queued invalidation: malformed queues stop with IQE, and resume once fixed', () => {
  const cases: { name: string; desc: [number, number, number, number]; reason: string }[] = [
    { name: 'an unknown type (device-TLB, no ATS)', desc: [3, 0, 0, 0], reason: 'unsupported-type' },
    { name: 'a type with bits 11:9 set', desc: [0x201, 0, 0, 0], reason: 'unsupported-type' },
    { name: 'type 0', desc: [0, 0, 0, 0], reason: 'unsupported-type' },
    { name: 'context-cache, reserved bit 6', desc: [0x11 | 0x40, 0, 0, 0], reason: 'reserved-bits' },
    { name: 'context-cache, a non-zero high qword', desc: [0x11, 0, 1, 0], reason: 'reserved-bits' },
    { name: 'context-cache, reserved bits 63:50', desc: [0x11, 0x0004_0000, 0, 0], reason: 'reserved-bits' },
    { name: 'IOTLB, reserved bits 63:32 of the low qword', desc: [0x12, 1, 0, 0], reason: 'reserved-bits' },
    { name: 'IOTLB, reserved hi bit 7', desc: [0x32, 0, 0x80, 0], reason: 'reserved-bits' },
    { name: 'wait, reserved status-address bits 1:0', desc: [0x25, 1, STATUS + 1, 0], reason: 'reserved-bits' },
    { name: 'wait, the page-request drain bit', desc: [0xa5, 1, STATUS, 0], reason: 'reserved-bits' },
    { name: 'IOTLB, granularity 0', desc: [0x02, 0, 0, 0], reason: 'granularity' },
    { name: 'context-cache, granularity 0', desc: [0x01, 0, 0, 0], reason: 'granularity' },
    { name: 'PSI, address mask 19 above MAMV 18', desc: iotlb(3, 1, 0, 19), reason: 'address-mask' },
    { name: 'PSI, address at 2^48', desc: iotlb(3, 1, 2 ** 48, 0), reason: 'address' },
    { name: 'wait, status address past the end of RAM', desc: wait(9, RAM), reason: 'status-address' },
    { name: 'wait, status address above 2^32', desc: wait(9, 2 ** 40), reason: 'status-address' },
  ];
  for (const c of cases) {
    it(`${c.name}: ${c.reason}`, () => {
      const { ram, vtd, regs, q, tail } = rawUnit();
      // A working translation, to show the unit's state survives.
      const dom = new VtdGuestDriver({ unit: vtd, mem: ram, area: { addr: 0xe0000, len: 0x10000 } }).attach(SID);
      const dma = vtd.dmaMemory(SID, ram);
      const iova = dom.map(DATA, PAGE, 'to-device');
      ram.writeU32(DATA, 0xfeed);
      put(ram, 0, iotlb(2, 7));
      put(ram, 1, c.desc);
      put(ram, 2, wait(0x1234, STATUS));
      tail(3);
      const inv0 = vtd.stats.iotlbInvalidations;
      expect(q.process()).toBe(1);
      expect(vtd.stats.iotlbInvalidations - inv0).toBe(1);
      expect(regs.queueError).toBe(true);
      expect(regs.head).toBe(1);
      expect(regs.queueErrorReason).toBe(c.reason);
      expect(q.error).toMatchObject({ reason: c.reason, index: 1 });
      expect(q.error!.message).toMatch(/descriptor 1/);
      expect(ram.readU32(STATUS)).toBe(0);
      // Nothing after it runs while IQE is set, however often the unit is prodded.
      expect(q.process()).toBe(0);
      expect(q.poll()).toBe(0);
      expect(regs.head).toBe(1);
      expect(dma.readU32(iova)).toBe(0xfeed);
      // Software replaces the bad descriptor (as Linux does: with a copy of the wait) and clears IQE.
      put(ram, 1, wait(0x1111, STATUS + 4));
      regs.clearQueueError();
      expect(q.process()).toBe(2);
      expect(q.error).toBeUndefined();
      expect(regs.queueError).toBe(false);
      expect(ram.readU32(STATUS + 4)).toBe(0x1111);
      expect(ram.readU32(STATUS)).toBe(0x1234);
      expect(regs.head).toBe(3);
      expect(dma.readU32(iova)).toBe(0xfeed);
    });
  }

  it('a tail past the ring or off a descriptor boundary is an IQE; the head stays, and a good tail resumes', () => {
    const { ram, regs, q, a, tail } = rawUnit();
    put(ram, 0, wait(5, STATUS));
    for (const bad of [256 * 16, 0x18, -16]) {
      Atomics.store(a, QI_REG.IQT, bad);
      expect(q.process()).toBe(0);
      expect(regs.queueError).toBe(true);
      expect(regs.queueErrorReason).toBe('tail');
      expect(q.error).toMatchObject({ reason: 'tail', index: 0 });
      expect(regs.head).toBe(0);
      regs.clearQueueError();
    }
    tail(1);
    expect(q.process()).toBe(1);
    expect(ram.readU32(STATUS)).toBe(5);
  });

  it('a queue outside guest memory, or with DW = 1, is refused at enable; the guest side says so', () => {
    const ram = GuestMemory.create(RAM);
    const vtd = new VtdRemapper({ memory: ram });
    for (const iqa of [RAM - PAGE + 1, QUEUE | 0x800]) {
      const regs = VtdQiRegisters.create();
      const q = new VtdInvalidationQueue(vtd, ram, regs);
      Atomics.store(regs.array, QI_REG.IQA_LO, iqa);
      Atomics.store(regs.array, QI_REG.GCMD, GCMD_QIE);
      Atomics.add(regs.array, QI_REG.CMD_SEQ, 1);
      q.process();
      expect(q.queueEnabled).toBe(false);
      expect(q.error?.reason).toBe('queue-address');
      expect(regs.load(QI_REG.CMD_ACK)).toBe(1);
    }
    // A ring that spans two regions is refused by the guest side before it reaches the unit.
    const two = new GuestMemory([
      { gpa: 0, size: 0x800 },
      { gpa: 0x800, size: 0x10000 },
    ]);
    expect(errorOf(() => new VtdQueuedInvalidator({ mem: two, regs: VtdQiRegisters.create(), queue: { addr: 0 }, status: 0x5000 }))?.kind).toBe('invalid-option');
    // A spin budget that is negative or absurd is refused.
    for (const spinMs of [-1, 1e6, Number.NaN]) {
      expect(errorOf(() => new VtdQueuedInvalidator({ mem: ram, regs: VtdQiRegisters.create(), queue: { addr: QUEUE }, status: STATUS, spinMs }))?.message).toMatch(/spinMs/);
    }
    // A unit that sees less memory than the guest (its RAM ends where the ring starts) refuses the
    // queue; the guest's enable fails with the unit's reason.
    const regs = VtdQiRegisters.create();
    const low = new GuestMemory([{ gpa: 0, backing: new Uint8Array(ram.regions[0]!.bytes.buffer, 0, QUEUE) }]);
    const q = new VtdInvalidationQueue(new VtdRemapper({ memory: low }), low, regs);
    const e = errorOf(() => new VtdQueuedInvalidator({ mem: ram, regs, queue: { addr: QUEUE }, status: STATUS, notify: () => q.process() }));
    expect(e?.kind).toBe('invalidation-queue');
    expect(e?.message).toMatch(/queue-address/);
  });

  it('the guest side recovers like Linux: the bad descriptor becomes a wait, IQE is cleared, the call throws, and the next one works', () => {
    const { inv, regs, q, driver, dma } = rig();
    const dom = driver.attach(SID, { mode: 'strict' });
    expect(() => inv.submitRaw([3, 0, 0, 0])).toThrow(/unsupported-type.*descriptor \d+.*replaced by a wait/);
    expect(regs.queueError).toBe(false);
    expect(q.error).toBeUndefined();
    expect(regs.head).toBe(Atomics.load(regs.array, QI_REG.IQT) / 16);
    const iova = dom.map(DATA, PAGE, 'bidirectional');
    expect(dma.readU32(iova)).toBe(DATA);
    dom.unmap(iova);
    expect(reachable(dma, iova)).toBe(false);
  });

  it('poll() does nothing while IQT equals the head, and processes once software moves it', () => {
    const { ram, q, tail } = rawUnit();
    expect(q.poll()).toBe(0);
    put(ram, 0, wait(77, STATUS));
    expect(q.poll()).toBe(0);
    tail(1);
    expect(q.poll()).toBe(1);
    expect(ram.readU32(STATUS)).toBe(77);
    expect(q.poll()).toBe(0);
    expect(q.stats.polls).toBe(1);
  });

  it('device-selective context invalidation honours the function mask; IF sets ICS.IWC', () => {
    const { ram, vtd, regs, q, tail } = rawUnit();
    put(ram, 0, cc(3, 0, 0x0108, 3));
    put(ram, 1, cc(3, 0, 0x0108, 0));
    put(ram, 2, cc(2, 5));
    put(ram, 3, wait(0, 0, 0x10));
    tail(4);
    const c0 = vtd.stats.contextInvalidations;
    expect(q.process()).toBe(4);
    expect(vtd.stats.contextInvalidations - c0).toBe(8 + 1 + 1);
    expect(regs.load(QI_REG.ICS) & ICS_IWC).toBe(ICS_IWC);
    expect(regs.load(QI_REG.FSTS) & FSTS_IQE).toBe(0);
  });

  it('property: a random descriptor stream applies exactly the valid descriptors up to each bad one, in order, across the ring end', () => {
    type D = { ok: true; w: [number, number, number, number]; ctx: number; tlb: number; status?: [number, number] } | { ok: false; w: [number, number, number, number]; reason: string };
    const good = fc.oneof(
      fc.record({ g: fc.integer({ min: 1, max: 3 }), did: fc.integer({ min: 0, max: 0xffff }), sid: fc.integer({ min: 0, max: 0xffff }), fm: fc.integer({ min: 0, max: 3 }) }).map(
        ({ g, did, sid, fm }): D => ({ ok: true, w: cc(g, did, sid, fm), ctx: g === 3 ? (fm === 0 ? 1 : 1 << fm) : 1, tlb: 0 }),
      ),
      fc.record({ g: fc.integer({ min: 1, max: 3 }), did: fc.integer({ min: 0, max: 0xffff }), page: fc.integer({ min: 0, max: 2 ** 36 - 1 }), am: fc.integer({ min: 0, max: 18 }), ih: fc.boolean() }).map(
        ({ g, did, page, am, ih }): D => ({ ok: true, w: iotlb(g, did, page * PAGE, am, ih), ctx: 0, tlb: 1 }),
      ),
      fc.record({ data: fc.integer({ min: 1, max: 0x7fff_ffff }), slot: fc.integer({ min: 0, max: 63 }) }).map(({ data, slot }): D => ({ ok: true, w: wait(data, STATUS + slot * 4), ctx: 0, tlb: 0, status: [slot, data] })),
    );
    const bad = fc.constantFrom<D>(
      { ok: false, w: [4, 0, 0, 0], reason: 'unsupported-type' },
      { ok: false, w: [0x12 | 0x100, 0, 0, 0], reason: 'reserved-bits' },
      { ok: false, w: [0x2, 0, 0, 0], reason: 'granularity' },
      { ok: false, w: wait(1, RAM + 64), reason: 'status-address' },
    );
    const item = fc.oneof({ arbitrary: good, weight: 6 }, { arbitrary: bad, weight: 1 });
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 255 }), fc.array(item, { maxLength: 200 }), (start, items) => {
        const { ram, vtd, regs, q, tail } = rawUnit();
        // Move the head to `start` with no-op waits (IF = SW = 0), so streams cross the ring's end.
        for (let i = 0; i < start; i++) put(ram, i, [5, 0, 0, 0]);
        tail(start);
        q.process();
        expect(regs.head).toBe(start);
        items.forEach((d, i) => put(ram, (start + i) % 256, d.w));
        tail((start + items.length) % 256);
        const c0 = vtd.stats.contextInvalidations;
        const t0 = vtd.stats.iotlbInvalidations;
        const expected = new Map<number, number>();
        let ctx = 0;
        let tlb = 0;
        for (let i = 0; i < items.length; i++) {
          const d = items[i]!;
          if (d.ok) {
            ctx += d.ctx;
            tlb += d.tlb;
            if (d.status !== undefined) expected.set(d.status[0], d.status[1]);
            continue;
          }
          // The unit stops here: nothing after it has run.
          q.process();
          expect(regs.queueError).toBe(true);
          expect(regs.head).toBe((start + i) % 256);
          expect(q.error?.reason).toBe(d.reason);
          expect(vtd.stats.contextInvalidations - c0).toBe(ctx);
          expect(vtd.stats.iotlbInvalidations - t0).toBe(tlb);
          put(ram, (start + i) % 256, [5, 0, 0, 0]);
          regs.clearQueueError();
        }
        q.process();
        expect(regs.queueError).toBe(false);
        expect(regs.head).toBe((start + items.length) % 256);
        expect(vtd.stats.contextInvalidations - c0).toBe(ctx);
        expect(vtd.stats.iotlbInvalidations - t0).toBe(tlb);
        for (const [slot, data] of expected) expect(ram.readU32(STATUS + slot * 4)).toBe(data);
      }),
      { numRuns: 150 },
    );
  });
});
