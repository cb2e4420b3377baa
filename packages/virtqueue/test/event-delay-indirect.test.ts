import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  BufferList,
  type DescriptorChain,
  type DeviceQueue,
  type DriverQueue,
  type RingFeatures,
  type UsedBuffer,
  createDeviceQueue,
  createDriverQueue,
  layoutQueue,
} from '../src/index.js';
import { checkAcrossWrap, warmUp } from './wrap.js';
import { testMemory } from '../src/testing.js';

/**
 * `enableInterruptsDelayed` (Linux's virtqueue_enable_cb_delayed): with
 * EVENT_IDX the device asks for no interrupt until `share` of what was
 * outstanding has come back, and never lets the last outstanding buffer
 * complete without one.
 */

const RING = 0x1000;
const INDIRECT = 0x40000;
const DATA = 0x80000;
const none: RingFeatures = { packed: false, indirect: false, eventIdx: false, inOrder: false };

interface Pair {
  drv: DriverQueue<number>;
  dev: DeviceQueue;
  mem: ReturnType<typeof testMemory>;
  driverAddr: number;
  size: number;
}

function pair(features: RingFeatures, size = 16): Pair {
  const mem = testMemory(1 << 20);
  const { config } = layoutQueue(features.packed, size, RING);
  const drv = createDriverQueue<number>(mem, config, features, { indirectArea: { addr: INDIRECT, maxIndirect: 4 } });
  const dev = createDeviceQueue(mem, config, features);
  // The device's first needsInterrupt has no earlier one to compare with and always fires: spend it.
  dev.publishUsed();
  dev.needsInterrupt();
  return { drv, dev, mem, driverAddr: config.driverAddr, size };
}

function addOne(drv: DriverQueue<number>, token: number): void {
  expect(drv.add(new BufferList().push(DATA + token * 64, 64, true), token)).toBe(true);
  drv.publish();
}

/** Pops everything available. */
function popAll(dev: DeviceQueue): DescriptorChain[] {
  const out: DescriptorChain[] = [];
  for (;;) {
    const c = dev.createChain();
    if (!dev.pop(c)) return out;
    out.push(c);
  }
}

/** Completes the chains one publish each; the interrupt decisions, in order. */
function completeEach(dev: DeviceQueue, chains: DescriptorChain[]): boolean[] {
  return chains.map((c) => {
    dev.complete(c, 8);
    return dev.needsInterrupt();
  });
}

const ring = (packed: boolean): string => (packed ? 'packed' : 'split');

describe('enableInterruptsDelayed', () => {
  for (const packed of [false, true]) {
    it(`${ring(packed)}, EVENT_IDX: no interrupt until 3/4 of the outstanding buffers are used, then one`, () => {
      const { drv, dev } = pair({ ...none, packed, eventIdx: true });
      for (let i = 0; i < 8; i++) addOne(drv, i);
      expect(drv.enableInterruptsDelayed()).toBe(false);
      // floor(8 × 3/4) = 6 used buffers pass without an interrupt; the 7th asks for one.
      expect(completeEach(dev, popAll(dev))).toEqual([false, false, false, false, false, false, true, false]);
    });

    it(`${ring(packed)}, EVENT_IDX: a share of 1/2, and 0 (the next buffer, as enableInterrupts)`, () => {
      const half = pair({ ...none, packed, eventIdx: true });
      for (let i = 0; i < 8; i++) addOne(half.drv, i);
      expect(half.drv.enableInterruptsDelayed(0.5)).toBe(false);
      expect(completeEach(half.dev, popAll(half.dev))).toEqual([false, false, false, false, true, false, false, false]);
      const next = pair({ ...none, packed, eventIdx: true });
      for (let i = 0; i < 8; i++) addOne(next.drv, i);
      expect(next.drv.enableInterruptsDelayed(0)).toBe(false);
      expect(completeEach(next.dev, popAll(next.dev))[0]).toBe(true);
    });

    it(`${ring(packed)}, EVENT_IDX: a single outstanding buffer interrupts when it completes`, () => {
      const { drv, dev } = pair({ ...none, packed, eventIdx: true });
      addOne(drv, 0);
      expect(drv.enableInterruptsDelayed()).toBe(false);
      expect(completeEach(dev, popAll(dev))).toEqual([true]);
    });

    it(`${ring(packed)}, EVENT_IDX: taking used buffers before the event does not pull it back`, () => {
      const { drv, dev } = pair({ ...none, packed, eventIdx: true });
      const out: UsedBuffer<number> = { token: undefined, len: 0 };
      for (let i = 0; i < 8; i++) addOne(drv, i);
      expect(drv.enableInterruptsDelayed()).toBe(false);
      const chains = popAll(dev);
      expect(completeEach(dev, chains.slice(0, 3))).toEqual([false, false, false]);
      // The driver polls meanwhile (a submission path reaping on its way): the event stays 6 ahead.
      let got = 0;
      while (drv.pollUsed(out)) got++;
      expect(got).toBe(3);
      expect(completeEach(dev, chains.slice(3))).toEqual([false, false, false, true, false]);
    });

    it(`${ring(packed)}, EVENT_IDX: true when used buffers are already waiting`, () => {
      const { drv, dev } = pair({ ...none, packed, eventIdx: true });
      for (let i = 0; i < 4; i++) addOne(drv, i);
      const chains = popAll(dev);
      dev.complete(chains[0]!, 8);
      expect(drv.enableInterruptsDelayed()).toBe(true);
    });

    it(`${ring(packed)} without EVENT_IDX: nothing to delay with, the next used buffer interrupts`, () => {
      const { drv, dev } = pair({ ...none, packed });
      for (let i = 0; i < 8; i++) addOne(drv, i);
      drv.disableInterrupts();
      expect(drv.enableInterruptsDelayed()).toBe(false);
      expect(completeEach(dev, popAll(dev))[0]).toBe(true);
    });

    it(`${ring(packed)}: a share outside [0, 1) is refused`, () => {
      const { drv } = pair({ ...none, packed, eventIdx: true });
      for (const share of [1, 1.5, -0.25, Number.NaN]) expect(() => drv.enableInterruptsDelayed(share)).toThrow(RangeError);
    });
  }

  it('split, EVENT_IDX + IN_ORDER: no delay (a batch may come back as one used entry)', () => {
    const { drv, dev } = pair({ ...none, eventIdx: true, inOrder: true });
    for (let i = 0; i < 8; i++) addOne(drv, i);
    expect(drv.enableInterruptsDelayed()).toBe(false);
    const chains = popAll(dev);
    // The whole batch as one used entry: a used_event 6 entries ahead would never be reached.
    for (const c of chains) dev.pushUsedInOrder(c);
    dev.publishUsed();
    expect(dev.needsInterrupt()).toBe(true);
  });

  it('split, EVENT_IDX, the largest ring: a full ring reclaimed in one batch moves used_event 2^15 on, and the next completion interrupts', () => {
    // used_event is 0 and the driver reclaims 32768 buffers: it is then exactly 0x8000 behind,
    // the one distance where "behind" (>= 0x8000) and "ahead" meet. Left there, the device
    // would not interrupt again until the index came round to it.
    const size = 32768;
    const mem = testMemory(4 << 20);
    const { config } = layoutQueue(false, size, RING);
    const drv = createDriverQueue<number>(mem, config, { ...none, eventIdx: true });
    const dev = createDeviceQueue(mem, config, { ...none, eventIdx: true });
    const list = new BufferList().push(DATA, 8, true);
    for (let i = 0; i < size; i++) expect(drv.add(list, i)).toBe(true);
    drv.publish();
    const c = dev.createChain();
    while (dev.pop(c)) dev.pushUsed(c, 8);
    dev.publishUsed();
    dev.needsInterrupt();
    const out: UsedBuffer<number> = { token: undefined, len: 0 };
    let got = 0;
    while (drv.pollUsed(out)) got++;
    expect(got).toBe(size);
    expect(mem.readU16(config.driverAddr + 4 + 2 * size)).toBe(size);
    expect(drv.add(list, 0)).toBe(true);
    drv.publish();
    expect(dev.pop(c)).toBe(true);
    dev.complete(c, 8);
    expect(dev.needsInterrupt()).toBe(true);
  });

  it('split: used_event is written at avail + 4 + 2 × size', () => {
    const { drv, mem, driverAddr, size } = pair({ ...none, eventIdx: true });
    for (let i = 0; i < 12; i++) addOne(drv, i);
    drv.enableInterruptsDelayed(0.5);
    expect(mem.readU16(driverAddr + 4 + 2 * size)).toBe(6);
  });
});

/**
 * A property against a model: the driver sleeps after arming with a random
 * share; the model says, from what was outstanding then (buffers for split,
 * ring descriptors for packed), after how many used ones the interrupt must
 * come. While the driver sleeps, every device publish is checked: no
 * interrupt before that point, one exactly at the publish that reaches it.
 */
type Op =
  | { t: 'add'; segs: number }
  | { t: 'pop' }
  | { t: 'complete'; pick: number; publish: boolean }
  | { t: 'publish' }
  | { t: 'sleep'; share: number }
  | { t: 'poll'; max: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ t: fc.constant('add' as const), segs: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 4, arbitrary: fc.constant({ t: 'pop' as const }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('complete' as const), pick: fc.nat(), publish: fc.boolean() }) },
  { weight: 1, arbitrary: fc.constant({ t: 'publish' as const }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('sleep' as const), share: fc.constantFrom(0, 0.25, 0.5, 0.75, 0.9) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('poll' as const), max: fc.integer({ min: 1, max: 8 }) }) },
);

/** Returns the device's used index after the drain. */
function runModel(features: RingFeatures, sizeSeed: number, ops: Op[], start = 0): number {
  const size = features.packed ? 2 + (sizeSeed % 15) : 2 << (sizeSeed % 4);
  const { drv, dev } = pair(features, size);
  if (start !== 0) warmUp(drv, dev, start, DATA);
  const out: UsedBuffer<number> = { token: undefined, len: 0 };
  const popped: DescriptorChain[] = [];
  const returned = new Set<number>();
  let next = 0;
  let outstanding = 0;
  // Ring units (split: used entries; packed: descriptors) pushed and not yet published.
  let pushedUnits = 0;
  // While the driver sleeps: units still to be published before the interrupt is due.
  let sleeping = false;
  let due = 0;
  // Packed: ring descriptors of the buffers the driver has not taken back.
  let descsOut = 0;
  const descsOf = new Map<number, number>();
  const delays = features.eventIdx && (features.packed || !features.inOrder);

  const publish = (): void => {
    dev.publishUsed();
    const units = pushedUnits;
    pushedUnits = 0;
    const irq = dev.needsInterrupt();
    if (!sleeping) return;
    due -= units;
    // Exactly at the publish that reaches the event (an IN_ORDER split batch counts as one entry).
    expect(irq).toBe(due <= 0);
    if (irq) sleeping = false;
  };

  const poll = (max: number): void => {
    for (let i = 0; i < max && drv.pollUsed(out); i++) {
      expect(returned.has(out.token!)).toBe(false);
      returned.add(out.token!);
      descsOut -= descsOf.get(out.token!)!;
      outstanding--;
    }
  };

  for (const op of ops) {
    switch (op.t) {
      case 'add': {
        const list = new BufferList();
        for (let s = 0; s < op.segs; s++) list.push(DATA + next * 256 + s * 64, 32, s === op.segs - 1);
        const before = drv.numFree;
        if (!drv.add(list, next)) break;
        drv.publish();
        descsOf.set(next, before - drv.numFree);
        descsOut += before - drv.numFree;
        next++;
        outstanding++;
        break;
      }
      case 'pop': {
        const c = dev.createChain();
        if (dev.pop(c)) popped.push(c);
        break;
      }
      case 'complete': {
        if (popped.length === 0) break;
        const i = features.inOrder ? 0 : op.pick % popped.length;
        const [c] = popped.splice(i, 1) as [DescriptorChain];
        if (features.inOrder) dev.pushUsedInOrder(c);
        else dev.pushUsed(c, 1);
        pushedUnits += features.packed ? c.descCount : 1;
        if (op.publish) publish();
        break;
      }
      case 'publish':
        if (pushedUnits > 0) publish();
        break;
      case 'sleep': {
        if (sleeping) break;
        // The driver takes everything used, then arms; asleep only if nothing came meanwhile.
        poll(size);
        const units = features.packed ? descsOut : outstanding;
        if (drv.enableInterruptsDelayed(op.share)) break;
        if (outstanding === 0) break;
        sleeping = true;
        due = (delays ? Math.floor(units * op.share) : 0) + 1;
        break;
      }
      case 'poll':
        if (!sleeping) poll(op.max);
        break;
    }
  }
  // Drain: everything comes back once.
  for (let guard = 0; guard < 1000 && outstanding > 0; guard++) {
    for (let c = dev.createChain(); dev.pop(c); c = dev.createChain()) popped.push(c);
    while (popped.length > 0) {
      const c = popped.shift()!;
      if (features.inOrder) dev.pushUsedInOrder(c);
      else dev.pushUsed(c, 1);
      pushedUnits += features.packed ? c.descCount : 1;
    }
    if (pushedUnits > 0) publish();
    // A sleeping driver has been woken by now: nothing it had in flight is left.
    expect(sleeping).toBe(false);
    poll(size);
  }
  expect(outstanding).toBe(0);
  expect(returned.size).toBe(next);
  expect(drv.broken).toBeUndefined();
  expect(dev.broken).toBeUndefined();
  return dev.state().nextUsed;
}

describe('enableInterruptsDelayed against a model', () => {
  it('split ring from just below the 16-bit index wrap: the same, across it', () => {
    checkAcrossWrap(runModel, opArb, 150);
  });

  it('interrupts exactly when the share is used, never later than the last outstanding buffer', () => {
    fc.assert(
      fc.property(
        fc.record({ packed: fc.boolean(), indirect: fc.boolean(), eventIdx: fc.boolean(), inOrder: fc.boolean() }),
        fc.nat(1000),
        fc.array(opArb, { maxLength: 150 }),
        (features, sizeSeed, ops) => {
          runModel(features, sizeSeed, ops);
        },
      ),
      { numRuns: 800 },
    );
  });
});

describe('indirectFrom', () => {
  for (const packed of [false, true]) {
    it(`${ring(packed)}: lists shorter than indirectFrom take ring descriptors while they fit, longer ones a table`, () => {
      const features = { ...none, packed, indirect: true };
      const mem = testMemory(1 << 20);
      const { config } = layoutQueue(packed, 8, RING);
      const drv = createDriverQueue<number>(mem, config, features, { indirectArea: { addr: INDIRECT, maxIndirect: 4 }, indirectFrom: 4 });
      const dev = createDeviceQueue(mem, config, features);
      const list = (n: number, token: number): BufferList => {
        const l = new BufferList();
        for (let s = 0; s < n; s++) l.push(DATA + token * 256 + s * 64, 16, s === n - 1);
        return l;
      };
      expect(drv.add(list(3, 0), 0)).toBe(true);
      expect(drv.numFree).toBe(5);
      expect(drv.add(list(4, 1), 1)).toBe(true);
      expect(drv.numFree).toBe(4);
      expect(drv.add(list(3, 2), 2)).toBe(true);
      expect(drv.numFree).toBe(1);
      // Three segments, one descriptor left: a table after all, rather than waiting for room.
      expect(drv.add(list(3, 3), 3)).toBe(true);
      expect(drv.numFree).toBe(0);
      drv.publish();
      const chains = popAll(dev);
      // The device finds every segment either way (the descriptors' count shows in numFree above).
      expect(chains.map((c) => c.count)).toEqual([3, 4, 3, 3]);
      for (let i = 0; i < 4; i++) expect(chains[i]!.addr(0)).toBe(DATA + i * 256);
    });

    it(`${ring(packed)}: indirectFrom below 2 or not an integer is refused`, () => {
      const mem = testMemory(1 << 20);
      const { config } = layoutQueue(packed, 8, RING);
      for (const indirectFrom of [1, 0, 2.5]) {
        expect(() => createDriverQueue<number>(mem, config, { ...none, packed, indirect: true }, { indirectArea: { addr: INDIRECT, maxIndirect: 4 }, indirectFrom })).toThrow(RangeError);
      }
    });
  }
});
