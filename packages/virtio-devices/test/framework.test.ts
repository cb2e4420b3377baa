import { MemoryBackend } from '@ioplane/blk-backends';
import { GuestMemory } from '@ioplane/guest-memory';
import { layoutQueue } from '@ioplane/virtqueue';
import { describe, expect, it } from 'vitest';
import {
  BLK_CFG_CAPACITY,
  BLK_CFG_NUM_QUEUES,
  BLK_CFG_WRITEBACK,
  STATUS_ACKNOWLEDGE as A,
  STATUS_DEVICE_NEEDS_RESET,
  STATUS_DRIVER as D,
  STATUS_DRIVER_OK as OK,
  STATUS_FAILED,
  STATUS_FEATURES_OK as F,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_MQ,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  VirtioBlkDevice,
  VirtioError,
  bit,
} from '../src/index.js';

function setup(opts: { numQueues?: number } = {}) {
  const mem = GuestMemory.create(1 << 20);
  const errors: VirtioError[] = [];
  const irq = { queue: [] as number[], config: 0 };
  const dev = new VirtioBlkDevice({
    mem,
    backend: new MemoryBackend({ size: 1 << 20 }),
    numQueues: opts.numQueues ?? 1,
    queueSize: 64,
    interrupts: { queue: (q) => irq.queue.push(q), config: () => irq.config++ },
    onGuestError: (e) => errors.push(e),
  });
  return { mem, dev, errors, irq };
}

const v1 = bit(VIRTIO_F_VERSION_1);
function writeFeatures(dev: VirtioBlkDevice, f: bigint): void {
  dev.writeDriverFeatures(0, Number(f & 0xffff_ffffn));
  dev.writeDriverFeatures(1, Number(f >> 32n));
}
function toFeaturesOk(dev: VirtioBlkDevice, f = v1): void {
  dev.setStatus(A);
  dev.setStatus(A | D);
  writeFeatures(dev, f);
  dev.setStatus(A | D | F);
}
function setupQueue(dev: VirtioBlkDevice, q: number, base: number): void {
  const { config } = layoutQueue(false, 64, base);
  dev.setQueueSize(q, 64);
  dev.setQueueAddresses(q, config.descAddr, config.driverAddr, config.deviceAddr);
  dev.enableQueue(q);
}

describe('feature negotiation (§2.2)', () => {
  it('offers VERSION_1 and reads features in two 32-bit words', () => {
    const { dev } = setup();
    expect(dev.readDeviceFeatures(1) & 1).toBe(1); // bit 32
    expect(dev.readDeviceFeatures(2)).toBe(0);
    const all = BigInt(dev.readDeviceFeatures(0)) | (BigInt(dev.readDeviceFeatures(1)) << 32n);
    expect(all).toBe(dev.deviceFeatures);
  });

  it('accepts a subset of what is offered and sets FEATURES_OK', () => {
    const { dev, errors } = setup();
    toFeaturesOk(dev, v1 | bit(VIRTIO_F_RING_PACKED));
    expect(dev.status).toBe(A | D | F);
    expect(dev.hasFeature(VIRTIO_F_RING_PACKED)).toBe(true);
    expect(errors).toEqual([]);
  });

  it('refuses FEATURES_OK for a bit it did not offer (the driver re-reads and sees it clear)', () => {
    const { dev, errors } = setup(); // one queue: MQ not offered
    toFeaturesOk(dev, v1 | bit(VIRTIO_BLK_F_MQ));
    expect(dev.status & F).toBe(0);
    expect(errors[0]?.kind).toBe('invalid-features');
  });

  it('refuses FEATURES_OK without VERSION_1 (no legacy interface)', () => {
    const { dev, errors } = setup();
    toFeaturesOk(dev, 0n);
    expect(dev.status).toBe(A | D);
    expect(errors[0]?.message).toMatch(/VERSION_1/);
  });

  it('ignores feature writes before DRIVER and after FEATURES_OK', () => {
    const { dev, errors } = setup();
    dev.writeDriverFeatures(0, 1);
    expect(dev.driverFeatures).toBe(0n);
    toFeaturesOk(dev);
    writeFeatures(dev, v1 | bit(VIRTIO_F_RING_PACKED));
    expect(dev.driverFeatures).toBe(v1);
    expect(errors.map((e) => e.kind)).toEqual(['invalid-features', 'invalid-features', 'invalid-features']);
  });

  it('rejects a feature word that is not a u32 or a select other than 0 and 1', () => {
    const { dev, errors } = setup();
    dev.setStatus(A);
    dev.setStatus(A | D);
    dev.writeDriverFeatures(2, 1);
    dev.writeDriverFeatures(0, 2 ** 32);
    dev.writeDriverFeatures(0, -1);
    expect(dev.driverFeatures).toBe(0n);
    expect(errors).toHaveLength(3);
  });
});

describe('device status (§2.1, §3.1.1)', () => {
  it('steps ACKNOWLEDGE → DRIVER → FEATURES_OK → DRIVER_OK', () => {
    const { dev, errors } = setup();
    toFeaturesOk(dev);
    setupQueue(dev, 0, 0x1000);
    dev.setStatus(A | D | F | OK);
    expect(dev.status).toBe(A | D | F | OK);
    expect(dev.running).toBe(true);
    expect(errors).toEqual([]);
  });

  it('refuses a skipped step', () => {
    const { dev, errors } = setup();
    dev.setStatus(D);
    expect(dev.status).toBe(0);
    dev.setStatus(A);
    dev.setStatus(A | F);
    expect(dev.status).toBe(A);
    dev.setStatus(A | D | OK);
    expect(dev.status).toBe(A);
    expect(errors.every((e) => e.kind === 'invalid-status')).toBe(true);
    expect(errors).toHaveLength(3);
  });

  it('refuses clearing a bit (only a reset clears)', () => {
    const { dev, errors } = setup();
    dev.setStatus(A);
    dev.setStatus(A | D);
    dev.setStatus(D);
    expect(dev.status).toBe(A | D);
    expect(errors[0]?.message).toMatch(/clears bits 0x1/);
  });

  it('refuses undefined bits and values that are not a byte; DEVICE_NEEDS_RESET from the driver is not taken', () => {
    const { dev, errors } = setup();
    dev.setStatus(0x10);
    dev.setStatus(0x100);
    dev.setStatus(A | STATUS_DEVICE_NEEDS_RESET);
    expect(dev.status & STATUS_DEVICE_NEEDS_RESET).toBe(0);
    expect(errors.filter((e) => e.kind === 'invalid-status')).toHaveLength(2);
  });

  it('takes FAILED at any time and then consumes no buffers', () => {
    const { dev } = setup();
    dev.setStatus(A);
    dev.setStatus(A | STATUS_FAILED);
    expect(dev.status).toBe(A | STATUS_FAILED);
    expect(dev.running).toBe(false);
  });

  it('a write of 0 resets features, status and queue set-up (§2.4)', async () => {
    const { dev } = setup();
    toFeaturesOk(dev);
    setupQueue(dev, 0, 0x1000);
    dev.setStatus(A | D | F | OK);
    dev.setStatus(0);
    await dev.reset();
    expect(dev.status).toBe(0);
    expect(dev.driverFeatures).toBe(0n);
    expect(dev.queueEnabled(0)).toBe(false);
    expect(dev.queueSize(0)).toBe(64);
    expect(dev.stats.resets).toBe(2);
  });
});

describe('queue set-up (§4.1.4.3)', () => {
  it('is refused before FEATURES_OK and after DRIVER_OK', () => {
    const { dev, errors } = setup();
    dev.setQueueSize(0, 32);
    expect(dev.queueSize(0)).toBe(64);
    toFeaturesOk(dev);
    setupQueue(dev, 0, 0x1000);
    dev.setStatus(A | D | F | OK);
    dev.setQueueSize(0, 16);
    expect(dev.queueSize(0)).toBe(64);
    expect(errors.map((e) => e.kind)).toEqual(['invalid-queue', 'invalid-queue']);
  });

  it('refuses a size above the maximum, zero, or not a power of two for split rings', () => {
    const { dev, errors } = setup();
    toFeaturesOk(dev);
    for (const s of [0, 65, 48, 1.5]) dev.setQueueSize(0, s);
    expect(dev.queueSize(0)).toBe(64);
    expect(errors).toHaveLength(4);
    dev.setQueueSize(0, 16);
    expect(dev.queueSize(0)).toBe(16);
  });

  it('accepts any size up to the maximum for packed rings (§2.8)', () => {
    const { dev, errors } = setup();
    toFeaturesOk(dev, v1 | bit(VIRTIO_F_RING_PACKED));
    dev.setQueueSize(0, 48);
    expect(dev.queueSize(0)).toBe(48);
    expect(errors).toEqual([]);
  });

  it('refuses changes to an enabled queue, and queues that do not exist', () => {
    const { dev, errors } = setup();
    toFeaturesOk(dev);
    setupQueue(dev, 0, 0x1000);
    dev.setQueueAddresses(0, 0x8000, 0x9000, 0xa000);
    expect(dev.queueConfig(0)?.descAddr).toBe(0x1000);
    dev.enableQueue(3);
    expect(dev.queueMaxSize(3)).toBe(0);
    expect(errors).toHaveLength(2);
  });

  it('a misaligned ring at DRIVER_OK sets DEVICE_NEEDS_RESET and raises a config interrupt (§2.1.2)', () => {
    const { dev, errors, irq } = setup();
    toFeaturesOk(dev);
    dev.setQueueSize(0, 64);
    dev.setQueueAddresses(0, 0x1008, 0x2000, 0x3000); // descriptors need 16-byte alignment
    dev.enableQueue(0);
    dev.setStatus(A | D | F | OK);
    expect(dev.status & STATUS_DEVICE_NEEDS_RESET).toBe(STATUS_DEVICE_NEEDS_RESET);
    expect(irq.config).toBe(1);
    expect(errors.at(-1)?.kind).toBe('invalid-queue');
    expect(dev.running).toBe(false);
  });

  it('ignores a notification before DRIVER_OK and for a queue not enabled', () => {
    const { dev, errors } = setup({ numQueues: 2 });
    dev.notify(0);
    toFeaturesOk(dev);
    setupQueue(dev, 0, 0x1000);
    dev.setStatus(A | D | F | OK);
    dev.notify(1);
    expect(errors.map((e) => e.kind)).toEqual(['ignored-access', 'ignored-access']);
  });
});

describe('configuration space (§2.5, §5.2.4)', () => {
  it('reads capacity, num_queues; outside accesses read 0 and are reported', () => {
    const { dev, errors } = setup({ numQueues: 3 });
    expect(dev.readConfig(BLK_CFG_CAPACITY, 4)).toBe((1 << 20) / 512);
    expect(dev.readConfig(BLK_CFG_CAPACITY + 4, 4)).toBe(0);
    expect(dev.readConfig(BLK_CFG_NUM_QUEUES, 2)).toBe(3);
    expect(dev.readConfig(dev.configSize - 2, 4)).toBe(0);
    expect(dev.readConfig(0, 3 as 4)).toBe(0);
    expect(errors).toHaveLength(2);
  });

  it('writeback is writable only with CONFIG_WCE negotiated; other fields are read-only', () => {
    const { dev, errors } = setup();
    toFeaturesOk(dev);
    dev.writeConfig(BLK_CFG_WRITEBACK, 1, 0);
    expect(dev.readConfig(BLK_CFG_WRITEBACK, 1)).toBe(1);
    dev.writeConfig(BLK_CFG_CAPACITY, 4, 7);
    expect(dev.readConfig(BLK_CFG_CAPACITY, 4)).toBe(2048);
    expect(errors).toHaveLength(2);
    const b = setup();
    toFeaturesOk(b.dev, v1 | bit(VIRTIO_BLK_F_CONFIG_WCE));
    b.dev.writeConfig(BLK_CFG_WRITEBACK, 1, 0);
    expect(b.dev.readConfig(BLK_CFG_WRITEBACK, 1)).toBe(0);
    expect(b.errors).toEqual([]);
  });

  it('a resize bumps config_generation and raises a config interrupt once running', () => {
    const backend = new MemoryBackend({ size: 1 << 20 });
    const mem = GuestMemory.create(1 << 20);
    let cfg = 0;
    const dev = new VirtioBlkDevice({ mem, backend, interrupts: { queue: () => {}, config: () => cfg++ } });
    const g0 = dev.configGeneration;
    toFeaturesOk(dev);
    setupQueue(dev, 0, 0x1000);
    dev.setStatus(A | D | F | OK);
    (backend as { size: number }).size = 2 << 20;
    dev.resized();
    expect(dev.configGeneration).toBe(g0 + 1);
    expect(dev.readConfig(BLK_CFG_CAPACITY, 4)).toBe(4096);
    expect(cfg).toBe(1);
    expect(dev.readIsr()).toBe(2);
    expect(dev.readIsr()).toBe(0);
  });

  it('rejects bad construction parameters with a typed error', () => {
    const mem = GuestMemory.create(1 << 16);
    const backend = new MemoryBackend({ size: 1 << 16 });
    const interrupts = { queue: () => {}, config: () => {} };
    expect(() => new VirtioBlkDevice({ mem, backend, interrupts, numQueues: 0 })).toThrow(VirtioError);
    expect(() => new VirtioBlkDevice({ mem, backend, interrupts, queueSize: 65536 })).toThrow(VirtioError);
    expect(() => new VirtioBlkDevice({ mem, backend, interrupts, serial: 'x'.repeat(21) })).toThrow(/longer than 20/);
    expect(() => new VirtioBlkDevice({ mem, backend, interrupts, maxDiscardSeg: 0 })).toThrow(VirtioError);
  });
});

describe('driver side of config_generation and the cross-thread transport', () => {
  it('re-reads config space when config_generation moves during the read (§2.5.1)', async () => {
    const { DirectTransport, VirtioBlkDriver } = await import('../src/index.js');
    const { dev, mem } = setup();
    const t = new DirectTransport(dev);
    let gens = 0;
    const moving = Object.create(t) as typeof t;
    // The first read pair sees the generation move (as if the device changed config mid-read).
    moving.configGeneration = () => Promise.resolve(gens++ === 1 ? 7 : 0);
    const driver = await VirtioBlkDriver.create({ transport: moving, mem, area: { addr: 0x1000, len: 0xf0000 } });
    expect(gens).toBe(4); // gen, gen (moved: retry), gen, gen
    expect(driver.info.capacitySectors).toBe(2048);
    await driver.close();
  });

  it('a kick rung before a reset and noticed only after it is not delivered to the reset device', async () => {
    const { MessagePortTransport, serveTransport } = await import('../src/index.js');
    const { Doorbell } = await import('@ioplane/virtqueue');
    const { MessageChannel } = await import('node:worker_threads');
    const { dev, errors } = setup();
    const { port1, port2 } = new MessageChannel();
    const bell = new Doorbell();
    // The kick loop polls every 50 ms; a count moved without Atomics.notify is seen only then.
    const served = serveTransport(dev, port1, [bell], 50);
    const t = new MessagePortTransport(port2, [bell]);
    try {
      Atomics.add(bell.array, bell.index, 1); // a kick whose wake-up has not reached the device yet
      await t.setStatus(0); // the driver resets: that kick was for rings now thrown away
      await new Promise((r) => setTimeout(r, 120));
      expect(dev.stats.notifications).toBe(0);
      expect(errors).toEqual([]);
      // A kick after the reset still reaches the device (here it is not started: reported as such).
      t.notify(0);
      for (let i = 0; i < 50 && dev.stats.notifications === 0; i++) await new Promise((r) => setTimeout(r, 5));
      expect(dev.stats.notifications).toBe(1);
      expect(errors.map((e) => e.message)).toEqual(['notification of queue 0 before DRIVER_OK']);
    } finally {
      t.close();
      await served.stop();
    }
  });

  it('a control call with no device behind the port times out with a typed error', async () => {
    const { MessagePortTransport } = await import('../src/index.js');
    const { MessageChannel } = await import('node:worker_threads');
    const { port1, port2 } = new MessageChannel();
    const t = new MessagePortTransport(port1, [], 20);
    await expect(t.status()).rejects.toMatchObject({ kind: 'transport' });
    expect(() => t.notify(0)).toThrow(/no doorbell for queue 0/);
    t.close();
    port2.close();
  });
});
