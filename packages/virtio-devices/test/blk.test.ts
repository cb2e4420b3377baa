import { BlockError, type Segments } from '@ioplane/blk-backends';
import { describe, expect, it } from 'vitest';
import { STATUS_DEVICE_NEEDS_RESET, VirtioError } from '../src/index.js';
import { DATA, DelegatingBackend, harness, pattern } from './harness.js';

/** A back-end whose calls wait until the test releases them, in any order; counts every call. */
class GatedBackend extends DelegatingBackend {
  gate = false;
  failNext: string | undefined;
  readonly calls: string[] = [];
  readonly held: { op: string; release: () => void }[] = [];
  private wrap(op: string, run: () => Promise<void>): Promise<void> {
    this.calls.push(op);
    if (this.failNext !== undefined && op === this.failNext) {
      this.failNext = undefined;
      return Promise.reject(new BlockError('io', `injected ${op} failure`));
    }
    if (!this.gate) return run();
    return new Promise<void>((resolve, reject) => {
      this.held.push({ op, release: () => void run().then(resolve, reject) });
    });
  }
  override read(o: number, s: Segments): Promise<void> {
    return this.wrap('read', () => this.inner.read(o, s));
  }
  override write(o: number, s: Segments): Promise<void> {
    return this.wrap('write', () => this.inner.write(o, s));
  }
  override flush(): Promise<void> {
    return this.wrap('flush', () => this.inner.flush());
  }
  override discard(o: number, l: number): Promise<void> {
    return this.wrap('discard', () => this.inner.discard(o, l));
  }
  override writeZeroes(o: number, l: number, u: boolean): Promise<void> {
    return this.wrap('write-zeroes', () => this.inner.writeZeroes(o, l, u));
  }
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await tick();
}

describe('virtio-blk device with its guest driver', () => {
  for (const packed of [false, true]) {
    it(`${packed ? 'packed' : 'split'}: completes requests out of order, each with its own data`, async () => {
      const backend = new GatedBackend(1 << 20);
      const data = pattern(3 * 4096, 3);
      await backend.inner.write(0, [data]);
      // Contiguous reads made available together would be merged into one call: this test is about separate ones.
      const h = await harness({ backend, driver: { ring: { packed } }, device: { merge: false } });
      backend.gate = true;
      const order: number[] = [];
      const ps = [0, 1, 2].map((i) => h.driver.read(i * 8, DATA + i * 8192, 4096).then(() => order.push(i)));
      await settle();
      expect(backend.held.map((x) => x.op)).toEqual(['read', 'read', 'read']);
      for (const i of [2, 0, 1]) {
        backend.held[i]!.release();
        await settle();
      }
      await Promise.all(ps);
      expect(order).toEqual([2, 0, 1]);
      for (let i = 0; i < 3; i++) expect(h.mem.view(DATA + i * 8192, 4096, 'read')).toEqual(data.subarray(i * 4096, (i + 1) * 4096));
      expect(h.errors).toEqual([]);
    });
  }

  it('takes more requests than the queue holds: the rest wait their turn', async () => {
    const h = await harness({ driver: { queueSize: 8 } });
    const ps: Promise<void>[] = [];
    for (let i = 0; i < 100; i++) {
      h.mem.writeFrom(DATA + i * 512, pattern(512, i));
      ps.push(h.driver.write(i, DATA + i * 512, 512));
    }
    await Promise.all(ps);
    const back = new Uint8Array(100 * 512);
    await h.backend.read(0, [back]);
    for (let i = 0; i < 100; i++) expect(back.subarray(i * 512, (i + 1) * 512)).toEqual(pattern(512, i));
    expect(h.driver.inFlight).toBe(0);
  });

  it('multiqueue: requests on every queue, interrupts per queue', async () => {
    const h = await harness({ device: { numQueues: 4 } });
    expect(h.driver.numQueues).toBe(4);
    expect(h.driver.info.numQueues).toBe(4);
    await Promise.all([0, 1, 2, 3].map((q) => h.driver.write(q * 8, DATA, 4096, q)));
    expect(new Set(h.interrupts)).toEqual(new Set([0, 1, 2, 3]));
    await expect(h.driver.read(0, DATA, 512, 4)).rejects.toThrow(/queue 4 is not set up/);
  });

  for (const pollWhileBusy of [true, false]) {
    it(`pollWhileBusy ${pollWhileBusy}: a read added while reads are in flight ${pollWhileBusy ? 'is picked up at the next completion, without a kick' : 'is kicked and issued at once'}`, async () => {
      const backend = new GatedBackend(1 << 20);
      await backend.inner.write(0, [pattern(8192, 5)]);
      const h = await harness({ backend, device: { pollWhileBusy } });
      backend.gate = true;
      const first = h.driver.read(0, DATA, 4096);
      await settle();
      expect(backend.held.map((x) => x.op)).toEqual(['read']);
      const kicks = h.device.stats.notifications;
      const second = h.driver.read(8, DATA + 4096, 4096);
      await settle();
      if (pollWhileBusy) {
        // Kicks stay suppressed while the device has a read in flight (§2.7.10): no notification, not issued yet.
        expect(h.device.stats.notifications).toBe(kicks);
        expect(backend.held).toHaveLength(1);
      } else {
        expect(h.device.stats.notifications).toBe(kicks + 1);
        expect(backend.held).toHaveLength(2);
      }
      backend.held[0]!.release();
      await first;
      await settle();
      // The completion's publish looked at the available ring: the second read is at the back-end now.
      expect(backend.held).toHaveLength(2);
      backend.held[1]!.release();
      await second;
      expect(h.mem.view(DATA, 8192, 'read')).toEqual(pattern(8192, 5));
      // Idle again: the device asks for kicks, so a lone request is not stranded.
      backend.gate = false;
      await h.driver.read(0, DATA, 512);
      expect(h.device.inFlight).toBe(0);
    });
  }

  it('a read added while only a FLUSH is in flight is kicked and issued at once (a slow request never holds up new ones)', async () => {
    const backend = new GatedBackend(1 << 20);
    const h = await harness({ backend });
    backend.gate = true;
    const fl = h.driver.flush();
    await settle();
    const kicks = h.device.stats.notifications;
    const rd = h.driver.read(0, DATA, 4096);
    await settle();
    expect(h.device.stats.notifications).toBe(kicks + 1);
    expect(backend.held.map((x) => x.op)).toEqual(['flush', 'read']);
    backend.held[1]!.release();
    await rd;
    backend.held[0]!.release();
    await fl;
  });

  it('a FLUSH completes only after the back-end flush resolved', async () => {
    const backend = new GatedBackend(1 << 20);
    const h = await harness({ backend });
    backend.gate = true;
    let done = false;
    const p = h.driver.flush().then(() => (done = true));
    await settle();
    expect(backend.held.map((x) => x.op)).toEqual(['flush']);
    expect(done).toBe(false);
    backend.held[0]!.release();
    await p;
    expect(done).toBe(true);
  });

  it('writethrough (CONFIG_WCE, writeback = 0): every write is flushed before it completes', async () => {
    const backend = new GatedBackend(1 << 20);
    const h = await harness({ backend, driver: { writeThrough: true } });
    expect(h.device.writeThrough).toBe(true);
    expect(h.driver.info.writeback).toBe(false);
    await h.driver.write(0, DATA, 4096);
    expect(backend.calls).toEqual(['write', 'flush']);
  });

  it('a back-end error answers IOERR; the driver rejects with io-error', async () => {
    const backend = new GatedBackend(1 << 20);
    const h = await harness({ backend });
    backend.failNext = 'read';
    const e = await h.driver.read(0, DATA, 512).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(VirtioError);
    expect((e as VirtioError).kind).toBe('io-error');
    expect(h.device.blkStats.backendErrors).toBe(1);
    await h.driver.read(0, DATA, 512); // the device goes on
  });

  it('requests past capacity are answered IOERR without reaching the back-end', async () => {
    const backend = new GatedBackend(1 << 20);
    const h = await harness({ backend });
    await expect(h.driver.read(2048, DATA, 512)).rejects.toMatchObject({ kind: 'io-error' });
    await expect(h.driver.write(2047, DATA, 1024)).rejects.toMatchObject({ kind: 'io-error' });
    await expect(h.driver.discard([{ sector: 2000, count: 100 }])).rejects.toMatchObject({ kind: 'io-error' });
    expect(backend.calls).toEqual([]);
    expect(h.device.blkStats.rejected).toBe(3);
    expect(h.errors.map((e) => e.details.error)).toEqual(['out-of-range', 'out-of-range', 'out-of-range']);
  });

  it('a read-only device offers RO and answers writes IOERR', async () => {
    const backend = new GatedBackend(1 << 20);
    const h = await harness({ backend, device: { readOnly: true } });
    expect(h.driver.info.readOnly).toBe(true);
    await expect(h.driver.write(0, DATA, 512)).rejects.toMatchObject({ kind: 'io-error' });
    await h.driver.read(0, DATA, 512);
    expect(backend.calls).toEqual(['read']);
  });

  it('discard and write-zeroes (with unmap) zero the range on the back-end; GET_ID answers the serial', async () => {
    const h = await harness({ device: { serial: 'serial-0123456789abc' } });
    h.mem.writeFrom(DATA, pattern(65536, 9));
    await h.driver.write(0, DATA, 65536);
    await h.driver.discard([{ sector: 0, count: 8 }, { sector: 64, count: 8 }]);
    await h.driver.writeZeroes([{ sector: 16, count: 16 }], true);
    const back = new Uint8Array(65536);
    await h.backend.read(0, [back]);
    const exp = pattern(65536, 9);
    exp.fill(0, 0, 4096);
    exp.fill(0, 64 * 512, 72 * 512);
    exp.fill(0, 16 * 512, 32 * 512);
    expect(back).toEqual(exp);
    expect(await h.driver.getId()).toBe('serial-0123456789abc');
  });

  it('a device without DISCARD answers UNSUPP when the driver sends one anyway', async () => {
    const h = await harness({ device: { discard: false } });
    await expect(h.driver.discard([{ sector: 0, count: 8 }])).rejects.toMatchObject({ kind: 'unsupported' });
  });

  it('reset with requests in flight: status stays non-zero until they settle, nothing is written back', async () => {
    const backend = new GatedBackend(1 << 20);
    const h = await harness({ backend });
    backend.gate = true;
    const ps = [0, 1].map((i) => h.driver.read(i, DATA + i * 512, 512).catch((e: unknown) => e));
    await settle();
    expect(h.device.inFlight).toBe(2);
    const cfg = h.device.queueConfig(0)!;
    const usedIdx = h.mem.readU16(cfg.deviceAddr + 2);
    h.device.setStatus(0);
    expect(h.device.status).not.toBe(0);
    expect(h.device.resetting).toBe(true);
    h.device.setStatus(1); // refused until the reset finished
    expect(h.errors.at(-1)?.kind).toBe('invalid-status');
    for (const x of backend.held) x.release();
    await settle();
    expect(h.device.status).toBe(0);
    expect(h.device.blkStats.dropped).toBe(2);
    expect(h.mem.readU16(cfg.deviceAddr + 2)).toBe(usedIdx); // no used entries after the reset
    await h.driver.close();
    const results = await Promise.all(ps);
    expect(results.every((r) => r instanceof VirtioError && r.kind === 'cancelled')).toBe(true);
  });

  it('a malformed ring sets DEVICE_NEEDS_RESET, raises a config interrupt, and the driver fails its requests', async () => {
    const h = await harness({ driver: { ring: { packed: false } } });
    const cfg = h.device.queueConfig(0)!;
    // A hostile driver: the available index jumps more than a queue size ahead (§2.7.6).
    h.mem.writeU16(cfg.driverAddr + 2, 1000);
    h.device.notify(0);
    expect(h.device.status & STATUS_DEVICE_NEEDS_RESET).toBe(STATUS_DEVICE_NEEDS_RESET);
    expect(h.device.stats.configInterrupts).toBe(1);
    expect(h.errors.at(-1)?.kind).toBe('queue-broken');
    await settle();
    await expect(h.driver.read(0, DATA, 512)).rejects.toMatchObject({ kind: 'device-needs-reset' });
    // A reset brings the device back.
    await h.device.reset();
    expect(h.device.status).toBe(0);
  });

  it('the driver refuses a device without VERSION_1 and reports refused features', async () => {
    const { DirectTransport, VirtioBlkDriver } = await import('../src/index.js');
    const h = await harness();
    const t = new DirectTransport(h.device);
    const fake = Object.create(t) as typeof t;
    fake.deviceFeatures = () => Promise.resolve(0n);
    await expect(VirtioBlkDriver.create({ transport: fake, mem: h.mem, area: { addr: 0x1000, len: 3 << 20 } })).rejects.toMatchObject({ kind: 'feature-missing' });
    const refuse = Object.create(t) as typeof t;
    refuse.setDriverFeatures = (f: bigint) => t.setDriverFeatures(f | (1n << 12n)); // MQ, not offered by a 1-queue device
    await expect(VirtioBlkDriver.create({ transport: refuse, mem: h.mem, area: { addr: 0x1000, len: 3 << 20 } })).rejects.toMatchObject({ kind: 'features-rejected' });
  });
});
