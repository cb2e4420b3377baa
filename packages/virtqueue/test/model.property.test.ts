import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  BufferList,
  type DescriptorChain,
  type RingFeatures,
  type UsedBuffer,
  createDeviceQueue,
  createDriverQueue,
  layoutQueue,
} from '../src/index.js';
import { testMemory } from '../src/testing.js';
import { checkAcrossWrap, warmUp } from './wrap.js';

/**
 * A driver and a device run random interleavings of their operations on one
 * ring. The reference model is a plain map of what is in flight. Checked:
 *  - every buffer comes back exactly once, with the length the device used
 *    (or, for an IN_ORDER batch, its whole writable length, §2.7.9/§2.8.8);
 *  - bytes travel intact both ways;
 *  - no notification the spec requires is suppressed: a side that went to
 *    sleep after re-checking (enable + re-check returned false) is always
 *    woken by the other side's next publish.
 */

const RING = 0x1000;
const INDIRECT = 0x40000;
const DATA = 0x80000;
const SLOT = 512;
const MAX_INDIRECT = 4;

type Op =
  | { t: 'add'; segs: { len: number; w: boolean }[] }
  | { t: 'pop' }
  | { t: 'complete'; pick: number; frac: number; skip: boolean; publish: boolean }
  | { t: 'publish' }
  | { t: 'poll' }
  | { t: 'drvSleep' }
  | { t: 'drvBusy' }
  | { t: 'devSleep' }
  | { t: 'devBusy' };

const segArb = fc.record({ len: fc.integer({ min: 1, max: 48 }), w: fc.boolean() });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ t: fc.constant('add' as const), segs: fc.array(segArb, { minLength: 1, maxLength: 4 }) }) },
  { weight: 4, arbitrary: fc.constant({ t: 'pop' as const }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('complete' as const), pick: fc.nat(), frac: fc.double({ min: 0, max: 1, noNaN: true }), skip: fc.boolean(), publish: fc.boolean() }) },
  { weight: 1, arbitrary: fc.constant({ t: 'publish' as const }) },
  { weight: 3, arbitrary: fc.constant({ t: 'poll' as const }) },
  { weight: 1, arbitrary: fc.constant({ t: 'drvSleep' as const }) },
  { weight: 1, arbitrary: fc.constant({ t: 'drvBusy' as const }) },
  { weight: 1, arbitrary: fc.constant({ t: 'devSleep' as const }) },
  { weight: 1, arbitrary: fc.constant({ t: 'devBusy' as const }) },
);

const featArb = fc.record({
  packed: fc.boolean(),
  indirect: fc.boolean(),
  eventIdx: fc.boolean(),
  inOrder: fc.boolean(),
});

const readByte = (token: number, seg: number, j: number): number => (token * 31 + seg * 7 + j) & 0xff;
const writeByte = (token: number, j: number): number => (token * 17 + j + 0x55) & 0xff;

/** Returns the device's used index after the drain. */
function run(features: RingFeatures, sizeSeed: number, ops: Op[], start = 0): number {
  const size = features.packed ? 1 + (sizeSeed % 9) : 1 << (sizeSeed % 5);
  const mem = testMemory(1 << 20);
  const { config } = layoutQueue(features.packed, size, RING);
  // Lists of 2 to 5 segments and up go indirect (`indirectFrom`), shorter ones direct while they fit.
  const indirectFrom = 2 + (Math.floor(sizeSeed / 10) % 4);
  const drv = createDriverQueue<number>(mem, config, features, { indirectArea: { addr: INDIRECT, maxIndirect: MAX_INDIRECT }, indirectFrom });
  const dev = createDeviceQueue(mem, config, features);
  if (start !== 0) warmUp(drv, dev, start);

  const tokenOfAddr = new Map<number, number>();
  const outstanding = new Map<number, { writable: number; expectLen?: number }>();
  const returned = new Set<number>();
  const popped: { chain: DescriptorChain; token: number }[] = [];
  const pool: DescriptorChain[] = [];
  let nextToken = 0;
  let drvSleeping = false;
  let devSleeping = false;
  let unpublished = false;
  const out: UsedBuffer<number> = { token: undefined, len: 0 };

  const chain = (): DescriptorChain => pool.pop() ?? dev.createChain();

  const devPublish = (): void => {
    dev.publishUsed();
    unpublished = false;
    const irq = dev.needsInterrupt();
    if (drvSleeping) {
      // A sleeping driver that has used buffers waiting must be interrupted.
      expect(irq || !drvHasUsed()).toBe(true);
      if (irq) drvSleeping = false;
    } else if (irq) drvSleeping = false;
  };
  // Whether the driver would find used buffers right now (without taking them).
  let peekCount = 0;
  const drvHasUsed = (): boolean => {
    peekCount++;
    // enableInterrupts' re-check is the driver's own "anything used?" test.
    return drv.enableInterrupts();
  };

  const add = (segs: { len: number; w: boolean }[]): void => {
    const sorted = [...segs.filter((s) => !s.w), ...segs.filter((s) => s.w)];
    const token = nextToken++;
    if (token * SLOT >= (1 << 20) - DATA) return;
    const list = new BufferList();
    let at = DATA + token * SLOT;
    sorted.forEach((s, i) => {
      if (!s.w) for (let j = 0; j < s.len; j++) mem.writeU8(at + j, readByte(token, i, j));
      list.push(at, s.len, s.w);
      at += s.len + 8;
    });
    if (!drv.add(list, token)) return;
    tokenOfAddr.set(DATA + token * SLOT, token);
    outstanding.set(token, { writable: list.writableBytes });
    drv.publish();
    const kick = drv.needsNotify();
    if (devSleeping) {
      // The device slept after a re-check: this new buffer must wake it.
      expect(kick).toBe(true);
    }
    if (kick) devSleeping = false;
  };

  const pop = (): void => {
    if (devSleeping) return;
    const c = chain();
    if (!dev.pop(c)) {
      pool.push(c);
      return;
    }
    const token = tokenOfAddr.get(c.addr(0));
    expect(token).toBeDefined();
    // The device reads exactly what the driver wrote, segment by segment.
    for (let i = 0; i < c.readableCount; i++) {
      const bytes = new Uint8Array(c.len(i));
      mem.readInto(c.addr(i), bytes);
      bytes.forEach((b, j) => expect(b).toBe(readByte(token!, i, j)));
    }
    popped.push({ chain: c, token: token! });
  };

  const complete = (pick: number, frac: number, skip: boolean, publish: boolean): void => {
    if (popped.length === 0) return;
    const i = features.inOrder ? 0 : pick % popped.length;
    const [{ chain: c, token }] = popped.splice(i, 1) as [{ chain: DescriptorChain; token: number }];
    const entry = outstanding.get(token)!;
    const useSkip = features.inOrder && skip;
    const len = useSkip ? c.writableBytes : Math.floor(frac * c.writableBytes);
    const data = Uint8Array.from({ length: len }, (_, j) => writeByte(token, j));
    expect(c.writeFrom(mem, 0, data)).toBe(len);
    entry.expectLen = len;
    if (useSkip) dev.pushUsedInOrder(c);
    else dev.pushUsed(c, len);
    unpublished = true;
    pool.push(c);
    if (publish) devPublish();
  };

  const poll = (): void => {
    if (drvSleeping) return;
    while (drv.pollUsed(out)) {
      const token = out.token!;
      expect(returned.has(token)).toBe(false);
      const entry = outstanding.get(token);
      expect(entry).toBeDefined();
      expect(out.len).toBe(entry!.expectLen);
      // The driver sees exactly the bytes the device wrote.
      let addr = DATA + token * SLOT;
      let left = out.len;
      // Walk the writable segments in order (readable first, as added).
      const segs = [...segStore.get(token)!];
      for (const s of segs) {
        if (s.w && left > 0) {
          const n = Math.min(left, s.len);
          const got = new Uint8Array(n);
          mem.readInto(addr, got);
          const offset = out.len - left;
          got.forEach((b, j) => expect(b).toBe(writeByte(token, offset + j)));
          left -= n;
        }
        addr += s.len + 8;
      }
      outstanding.delete(token);
      returned.add(token);
    }
  };

  const segStore = new Map<number, { len: number; w: boolean }[]>();
  for (const op of ops) {
    switch (op.t) {
      case 'add': {
        const sorted = [...op.segs.filter((s) => !s.w), ...op.segs.filter((s) => s.w)];
        segStore.set(nextToken, sorted);
        add(op.segs);
        break;
      }
      case 'pop':
        pop();
        break;
      case 'complete':
        complete(op.pick, op.frac, op.skip, op.publish);
        break;
      case 'publish':
        if (unpublished) devPublish();
        break;
      case 'poll':
        poll();
        break;
      case 'drvSleep':
        if (!drvSleeping && !drv.enableInterrupts()) drvSleeping = true;
        break;
      case 'drvBusy':
        if (!drvSleeping) drv.disableInterrupts();
        break;
      case 'devSleep':
        if (!devSleeping && !dev.enableNotifications()) devSleeping = true;
        break;
      case 'devBusy':
        if (!devSleeping) dev.disableNotifications();
        break;
    }
  }

  // Drain: a sleeping device must not have missed a buffer, a sleeping driver
  // must not have missed a used buffer (checked as they happened); now finish.
  if (unpublished) devPublish();
  drvSleeping = false;
  devSleeping = false;
  for (let guard = 0; guard < 10_000 && (outstanding.size > 0); guard++) {
    pop();
    while (popped.length > 0) complete(0, 1, false, false);
    devPublish();
    poll();
  }
  expect(outstanding.size).toBe(0);
  expect(drv.inFlight).toBe(0);
  expect(drv.numFree).toBe(size);
  expect(dev.broken).toBeUndefined();
  expect(drv.broken).toBeUndefined();
  void peekCount;
  return dev.state().nextUsed;
}

describe('driver and device against a model, random interleavings', () => {
  it('returns every buffer once, intact, and never loses a wakeup', () => {
    fc.assert(
      fc.property(featArb, fc.nat(1000), fc.array(opArb, { maxLength: 120 }), (features, sizeSeed, ops) => {
        run(features, sizeSeed, ops);
      }),
      { numRuns: 600 },
    );
  });

  it('split ring from just below the 16-bit index wrap: the same, across it', () => {
    checkAcrossWrap(run, opArb, 160);
  });

  for (const packed of [false, true]) {
    for (const eventIdx of [false, true]) {
      for (const inOrder of [false, true]) {
        it(`long run: ${packed ? 'packed' : 'split'}${eventIdx ? ' +EVENT_IDX' : ''}${inOrder ? ' +IN_ORDER' : ''} +INDIRECT`, () => {
          fc.assert(
            fc.property(fc.nat(1000), fc.array(opArb, { minLength: 200, maxLength: 400 }), (sizeSeed, ops) => {
              run({ packed, eventIdx, inOrder, indirect: true }, sizeSeed, ops);
            }),
            { numRuns: 40 },
          );
        });
      }
    }
  }
});
