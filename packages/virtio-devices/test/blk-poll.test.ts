import { MemoryBackend, type Segments } from '@ioplane/blk-backends';
import { type DeviceQueue, Doorbell } from '@ioplane/virtqueue';
import { describe, expect, it } from 'vitest';
import { GuestMemory, GuestMemoryError } from '@ioplane/guest-memory';
import { STATUS_DEVICE_NEEDS_RESET } from '../src/defs.js';
import { DirectTransport, HaltPollGovernor, VirtioBlkDevice, VirtioBlkDriver, VirtioError } from '../src/index.js';
import { AREA, DATA, DelegatingBackend, MEM_SIZE, harness, pattern } from './harness.js';

/** A memory back-end that completes at once (as the sync engine does) and records, at each read, how many interrupts the driver had been sent. */
class CountingBackend extends DelegatingBackend {
  readonly interruptsAtRead: number[] = [];
  interrupts: () => number = () => 0;
  /** When set, reads wait here until released (a back-end that completes later, as the threadpool engine does). */
  gate = false;
  readonly held: (() => void)[] = [];
  override read(o: number, s: Segments): Promise<void> {
    this.interruptsAtRead.push(this.interrupts());
    if (!this.gate) return this.inner.read(o, s);
    return new Promise<void>((resolve, reject) => this.held.push(() => void this.inner.read(o, s).then(resolve, reject)));
  }
}

describe('virtio-blk passes (maxBatch) and idle polling (pollNs)', () => {
  for (const maxBatch of [undefined, 8]) {
    it(`maxBatch ${maxBatch ?? 'unlimited'}: 20 reads made available together ${maxBatch ? 'go in passes of 8, each published before the next is taken' : 'go in one pass, published once'}`, async () => {
      const backend = new CountingBackend(1 << 20);
      const data = pattern(20 * 8192, 9);
      await backend.inner.write(0, [data]);
      // Not contiguous (every other 4 KiB block), and merging off anyway: 20 back-end calls.
      const h = await harness({ backend, device: { merge: false, ...(maxBatch ? { maxBatch } : {}) } });
      backend.interrupts = () => h.interrupts.length;
      await Promise.all(Array.from({ length: 20 }, (_, i) => h.driver.read(i * 16, DATA + i * 4096, 4096)));
      for (let i = 0; i < 20; i++) expect(h.mem.view(DATA + i * 4096, 4096, 'read')).toEqual(data.subarray(i * 8192, i * 8192 + 4096));
      if (maxBatch) {
        // Pass 1 before any interrupt; the interrupt for pass 1 comes before pass 2 is taken, and so on.
        expect(backend.interruptsAtRead).toEqual([...Array<number>(8).fill(0), ...Array<number>(8).fill(1), ...Array<number>(4).fill(2)]);
        expect(h.interrupts).toHaveLength(3);
      } else {
        expect(backend.interruptsAtRead).toEqual(Array<number>(20).fill(0));
        expect(h.interrupts).toHaveLength(1);
      }
      expect(h.device.inFlight).toBe(0);
      expect(h.driver.inFlight).toBe(0);
    });
  }

  it('maxBatch with a back-end that completes later: the next pass is taken without waiting for a completion', async () => {
    const backend = new CountingBackend(1 << 20);
    const h = await harness({ backend, device: { merge: false, maxBatch: 8 } });
    backend.gate = true;
    const ps = Array.from({ length: 20 }, (_, i) => h.driver.read(i * 16, DATA + i * 4096, 4096));
    for (let i = 0; i < 10 && backend.held.length < 20; i++) await new Promise((r) => setImmediate(r));
    expect(backend.held).toHaveLength(20);
    expect(h.device.inFlight).toBe(20);
    for (const release of backend.held.splice(0)) release();
    await Promise.all(ps);
    expect(h.device.inFlight).toBe(0);
  });

  it('pollNs: an idle queue is polled until the budget runs out on the injected clock, then kicks are asked for and still work', async () => {
    let clock = 0;
    let reads = 0;
    // Each look at the clock moves it 10 µs: a 1 ms budget ends after about 100 looks.
    const now = (): number => {
      reads++;
      return (clock += 0.01);
    };
    const h = await harness({ device: { pollNs: 1_000_000, now } });
    h.mem.writeFrom(DATA, pattern(4096, 1));
    await h.driver.write(0, DATA, 4096);
    expect(h.device.blkStats.pollMisses).toBeGreaterThanOrEqual(1);
    expect(h.device.blkStats.pollHits).toBe(0);
    const misses = h.device.blkStats.pollMisses;
    const looks = reads;
    // One miss = the deadline read + about 100 more (one per 64 ring checks).
    expect(looks / misses).toBeGreaterThan(90);
    expect(looks / misses).toBeLessThan(120);
    // After a miss the device asked for kicks: the next request is kicked and served.
    const kicks = h.device.stats.notifications;
    await h.driver.read(0, DATA + 8192, 4096);
    expect(h.device.stats.notifications).toBe(kicks + 1);
    expect(h.mem.view(DATA + 8192, 4096, 'read')).toEqual(pattern(4096, 1));
  });

  it('onPoll runs once per 64 ring checks while the device spins, and never without a poll budget', async () => {
    let clock = 0;
    let calls = 0;
    // Each look at the clock moves it 10 µs: a 1 ms budget is about 100 looks, one per 64 checks, each with an onPoll.
    const h = await harness({ device: { pollNs: 1_000_000, now: () => (clock += 0.01), onPoll: () => calls++ } });
    await h.driver.read(0, DATA, 4096);
    const misses = h.device.blkStats.pollMisses;
    expect(misses).toBeGreaterThanOrEqual(1);
    expect(calls / misses).toBeGreaterThan(90);
    expect(calls / misses).toBeLessThan(120);
    let idle = 0;
    const quiet = await harness({ device: { onPoll: () => idle++ } });
    await quiet.driver.read(0, DATA, 4096);
    expect(idle).toBe(0);
  });

  for (const eventIdx of [true, false]) {
    it(`a polled queue (${eventIdx ? 'EVENT_IDX' : 'NO_INTERRUPT flag'}): no interrupts; completions are collected by poll(), and setPolled(q, false) re-arms`, async () => {
      const h = await harness({ device: { ring: { eventIdx } } });
      h.mem.writeFrom(DATA, pattern(4096, 4));
      await h.driver.write(0, DATA, 4096);
      const before = h.interrupts.length;
      h.driver.setPolled(0, true);
      let done = 0;
      const ps = [0, 1, 2].map((i) => h.driver.read(0, DATA + (i + 1) * 4096, 4096).then(() => done++));
      for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
      expect(h.device.inFlight).toBe(0); // the device has completed them …
      expect(done).toBe(0); // … but nobody was interrupted
      expect(h.interrupts.length).toBe(before);
      expect(h.driver.poll(0)).toBe(3);
      await Promise.all(ps);
      expect(done).toBe(3);
      for (let i = 1; i <= 3; i++) expect(h.mem.view(DATA + i * 4096, 4096, 'read')).toEqual(pattern(4096, 4));
      expect(h.driver.poll(0)).toBe(0);
      h.driver.setPolled(0, false);
      await h.driver.read(0, DATA + 8 * 4096, 4096); // resolves by interrupt again
      expect(h.interrupts.length).toBe(before + 1);
      expect(() => h.driver.setPolled(3, true)).toThrow(/queue 3 is not set up/);
    });
  }

  for (const eventIdx of [true, false]) {
    it(`listen with spinUs (${eventIdx ? 'EVENT_IDX' : 'NO_INTERRUPT flag'}): no interrupts while requests keep completing; idle past the window, it re-arms and sleeps`, async () => {
      const run = async (spinUs: number): Promise<number> => {
        const backend = new CountingBackend(1 << 20);
        // Each read completes a turn of the event loop later, so passes publish in turns of their own.
        backend.gate = true;
        let releasing = true;
        const release = (): void => {
          for (const go of backend.held.splice(0)) go();
          if (releasing) setImmediate(release);
        };
        setImmediate(release);
        const data = pattern(32 * 4096, 6);
        await backend.inner.write(0, [data]);
        const irq = new Doorbell();
        const h = await harness({ backend, device: { merge: false, maxBatch: 4, ring: { eventIdx }, interrupts: { queue: () => irq.ring(), config: () => {} } } });
        let clock = 0;
        const listening = h.driver.listen([irq], { spinUs, now: () => clock });
        await h.driver.read(0, DATA, 4096);
        const before = h.device.stats.queueInterrupts;
        // 32 reads in passes of 4 while the clock stands still: the spinning driver takes each pass's completions.
        await Promise.all(Array.from({ length: 32 }, (_, i) => h.driver.read(i * 8, DATA + i * 4096, 4096)));
        const during = h.device.stats.queueInterrupts - before;
        for (let i = 0; i < 32; i++) expect(h.mem.view(DATA + i * 4096, 4096, 'read')).toEqual(data.subarray(i * 4096, (i + 1) * 4096));
        // Past the window with nothing in flight: the driver re-arms and sleeps; a read then completes by interrupt.
        clock += 1;
        for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
        const asleep = h.device.stats.queueInterrupts;
        await h.driver.read(0, DATA, 4096);
        expect(h.device.stats.queueInterrupts).toBe(asleep + 1);
        releasing = false;
        await h.driver.close();
        await listening;
        return during;
      };
      const sleeping = await run(0);
      const spinning = await run(100);
      // Sleeping: an interrupt per pass (8 passes of 4). Spinning: at most the one it re-armed for before its first spin.
      expect(sleeping).toBeGreaterThanOrEqual(6);
      expect(spinning).toBeLessThanOrEqual(1);
    });
  }

  it('listen with haltPoll: short idle periods grow the window until the interrupts come while the thread polls; a long idle shrinks it', async () => {
    const backend = new CountingBackend(1 << 20);
    // Each read completes a turn of the event loop later, and each turn moves the injected clock 10 µs.
    backend.gate = true;
    let clock = 0;
    let releasing = true;
    const release = (): void => {
      clock += 0.01;
      for (const go of backend.held.splice(0)) go();
      if (releasing) setImmediate(release);
    };
    setImmediate(release);
    const data = pattern(32 * 4096, 11);
    await backend.inner.write(0, [data]);
    const irq = new Doorbell();
    const h = await harness({ backend, device: { merge: false, maxBatch: 4, interrupts: { queue: () => irq.ring(), config: () => {} } } });
    const governor = new HaltPollGovernor();
    const listening = h.driver.listen([irq], { haltPoll: governor, now: () => clock });
    // One at a time: each idle period lasts a turn or two (10-20 µs), under maxUs; the first ones sleep and grow the window to 50.
    for (let i = 0; i < 8; i++) await h.driver.read(i * 8, DATA + i * 4096, 4096);
    expect(governor.windowUs).toBe(50);
    const { caught: caughtBefore, slept: sleptBefore } = governor.stats;
    expect(sleptBefore).toBeGreaterThanOrEqual(1);
    const interruptsBefore = h.device.stats.queueInterrupts;
    await Promise.all(Array.from({ length: 32 }, (_, i) => h.driver.read(i * 8, DATA + i * 4096, 4096)));
    for (let i = 0; i < 32; i++) expect(h.mem.view(DATA + i * 4096, 4096, 'read')).toEqual(data.subarray(i * 4096, (i + 1) * 4096));
    // The device still interrupted once per pass; the thread was polling for each, and slept for none.
    expect(h.device.stats.queueInterrupts - interruptsBefore).toBeGreaterThanOrEqual(6);
    expect(governor.stats.caught - caughtBefore).toBeGreaterThanOrEqual(6);
    expect(governor.stats.slept).toBe(sleptBefore);
    // Nothing to do for 5 ms: the poll runs out, the thread sleeps, and the next interrupt wakes it after more than maxUs.
    releasing = false;
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
    clock += 5;
    for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
    backend.gate = false;
    await h.driver.read(0, DATA, 4096);
    for (let i = 0; i < 3 && governor.stats.slept === sleptBefore; i++) await new Promise((r) => setImmediate(r));
    expect(governor.stats.slept).toBe(sleptBefore + 1);
    expect(governor.windowUs).toBe(0);
    await h.driver.close();
    await listening;
  });

  it('listen rejects a spin window outside 0..1e6 µs, and halt-polling options given where a governor belongs', async () => {
    const h = await harness();
    expect(() => h.driver.listen([new Doorbell()], { haltPoll: { maxUs: 200 } as unknown as HaltPollGovernor })).toThrow(/haltPoll must be a HaltPollGovernor/);
    expect(() => h.driver.listen([new Doorbell()], { spinUs: -1 })).toThrow(/spinUs -1/);
    expect(() => h.driver.listen([new Doorbell()], { spinUs: 2e6 })).toThrow(/spinUs/);
  });

  it('completions of a back-end that finishes during the pass are published in the same turn of the event loop', async () => {
    const h = await harness();
    let published = -1;
    const p = h.driver.read(0, DATA, 4096).then(() => (published = h.interrupts.length));
    // No macrotask has run yet: a microtask chain (pass → completions → publish → interrupt → reap) did it all.
    await p;
    expect(published).toBe(1);
    let immediate = false;
    setImmediate(() => (immediate = true));
    await h.driver.read(8, DATA, 4096);
    expect(immediate).toBe(false);
  });

  for (const settles of ['at once (COMPLETED)', 'later']) {
    it(`a back-end that completes ${settles}: the device asks for kicks only once the pass's completions are published`, async () => {
      // 'later': each read's promise settles in a microtask, as every back-end's did before COMPLETED.
      const backend = new (class extends DelegatingBackend {
        override read(o: number, s: Segments): Promise<void> {
          const p = this.inner.read(o, s);
          return settles === 'later' ? p.then(() => undefined) : p;
        }
      })(1 << 20);
      const data = pattern(4 * 4096, 3);
      await backend.inner.write(0, [data]);
      const h = await harness({ backend, device: { merge: false } });
      const dq = (h.device as unknown as { queues: DeviceQueue[] }).queues[0]!;
      const enable = dq.enableNotifications.bind(dq);
      let enables = 0;
      dq.enableNotifications = () => {
        enables++;
        return enable();
      };
      // Four reads in one pass: each completes, but kicks stay off until the publish, which looks at
      // the ring once more and only then, finding it empty, asks for a kick (one store, not one per pass end).
      await Promise.all([0, 1, 2, 3].map((i) => h.driver.read(i * 8, DATA + i * 4096, 4096)));
      expect(h.device.blkStats.requests).toBe(4);
      expect(enables).toBe(1);
      expect(h.mem.view(DATA, 4 * 4096, 'read')).toEqual(data);
      expect(h.device.inFlight).toBe(0);
    });
  }

  it('a status byte that cannot be written when a back-end completes at once: the device needs a reset and leaves the ring alone', async () => {
    const gm = GuestMemory.create(MEM_SIZE);
    // The device's view of guest memory: one write (the first status byte) refused, as a vIOMMU
    // would refuse a buffer unmapped while its request was in flight.
    let refuse = false;
    const mem = Object.create(gm) as GuestMemory;
    mem.writeU8 = (addr: number, v: number): void => {
      if (refuse) throw new GuestMemoryError('out-of-bounds', addr, 1, 'status refused', 'write');
      gm.writeU8(addr, v);
    };
    const backend = new (class extends DelegatingBackend {
      override read(o: number, seg: Segments): Promise<void> {
        refuse = true;
        return this.inner.read(o, seg);
      }
    })(1 << 20);
    const errors: unknown[] = [];
    const device = new VirtioBlkDevice({ mem, backend, interrupts: { queue: () => {}, config: () => {} }, onGuestError: (e) => errors.push(e) });
    const driver = await VirtioBlkDriver.create({ transport: new DirectTransport(device), mem: gm, area: AREA });
    const dq = (device as unknown as { queues: DeviceQueue[] }).queues[0]!;
    const enable = dq.enableNotifications.bind(dq);
    let enables = 0;
    dq.enableNotifications = () => {
      enables++;
      return enable();
    };
    void driver.read(0, DATA, 4096).catch(() => undefined);
    await new Promise((r) => setImmediate(r));
    expect(device.blkStats.requests).toBe(1);
    expect(device.status & STATUS_DEVICE_NEEDS_RESET).toBe(STATUS_DEVICE_NEEDS_RESET);
    expect(errors.some((e) => e instanceof VirtioError && e.kind === 'queue-broken')).toBe(true);
    expect(enables).toBe(0);
  });

  it('pollNs 0 (the default) never spins', async () => {
    let reads = 0;
    const h = await harness({ device: { now: () => ++reads } });
    await h.driver.read(0, DATA, 4096);
    expect(reads).toBe(0);
    expect(h.device.blkStats.pollHits + h.device.blkStats.pollMisses).toBe(0);
  });

  it('rejects a negative or absurd poll budget and a pass that is not a positive integer', () => {
    const mem = { checkRange() {} } as never;
    const backend = new MemoryBackend({ size: 1 << 20 });
    const base = { mem, backend, interrupts: { queue: () => {}, config: () => {} } };
    expect(() => new VirtioBlkDevice({ ...base, pollNs: -1 })).toThrow(/pollNs -1/);
    expect(() => new VirtioBlkDevice({ ...base, pollNs: 2e9 })).toThrow(/pollNs/);
    expect(() => new VirtioBlkDevice({ ...base, maxBatch: 0 })).toThrow(/maxBatch 0/);
    expect(() => new VirtioBlkDevice({ ...base, maxBatch: 2.5 })).toThrow(/maxBatch 2.5/);
  });
});
