import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  STATUS_ACKNOWLEDGE,
  STATUS_DEVICE_NEEDS_RESET,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FAILED,
  STATUS_FEATURES_OK,
  VIRTIO_F_VERSION_1,
  bit,
} from '../src/defs.js';
import { driverOk, negotiateFeatures } from '../src/driver-init.js';
import { VirtioError } from '../src/errors.js';
import type { DriverTransport } from '../src/transport.js';

/** A device seen only through its status and feature registers, recording what the driver wrote. */
class FakeDevice implements DriverTransport {
  statusWrites: number[] = [];
  featuresWritten: bigint[] = [];
  #status = 0;
  constructor(
    readonly offered: bigint,
    readonly opts: { resetPolls?: number; refuse?: boolean; needsReset?: boolean } = {},
  ) {}
  #resetPolls = 0;
  numQueues = (): Promise<number> => Promise.resolve(1);
  deviceFeatures = (): Promise<bigint> => Promise.resolve(this.offered);
  setDriverFeatures = (f: bigint): Promise<void> => {
    this.featuresWritten.push(f);
    return Promise.resolve();
  };
  status = (): Promise<number> => {
    // A device that takes `resetPolls` reads to finish its reset (§4.1.4.3.2).
    if (this.#status === 0 && this.#resetPolls > 0) {
      this.#resetPolls--;
      return Promise.resolve(STATUS_ACKNOWLEDGE);
    }
    return Promise.resolve(this.#status);
  };
  setStatus = (v: number): Promise<void> => {
    this.statusWrites.push(v);
    if (v === 0) this.#resetPolls = this.opts.resetPolls ?? 0;
    // A device that refuses the features leaves FEATURES_OK clear (§3.1.1 step 6).
    if ((v & STATUS_FEATURES_OK) !== 0 && this.opts.refuse === true) v &= ~STATUS_FEATURES_OK;
    if ((v & STATUS_DRIVER_OK) !== 0 && this.opts.needsReset === true) v |= STATUS_DEVICE_NEEDS_RESET;
    this.#status = v;
    return Promise.resolve();
  };
  configGeneration = (): Promise<number> => Promise.resolve(0);
  readConfig = (): Promise<number> => Promise.resolve(0);
  writeConfig = (): Promise<void> => Promise.resolve();
  queueMaxSize = (): Promise<number> => Promise.resolve(256);
  setQueueSize = (): Promise<void> => Promise.resolve();
  setQueueAddresses = (): Promise<void> => Promise.resolve();
  enableQueue = (): Promise<void> => Promise.resolve();
  notify = (): void => {};
}

const V1 = bit(VIRTIO_F_VERSION_1);
const A = STATUS_ACKNOWLEDGE;
const D = STATUS_DRIVER;

describe('driver initialisation (§3.1.1)', () => {
  it('writes the status bits in the order the spec gives and accepts the chosen subset', async () => {
    const dev = new FakeDevice(V1 | 0b1011n, { resetPolls: 3 });
    const accepted = await negotiateFeatures(dev, (offered) => offered & (V1 | 0b0011n));
    expect(accepted).toBe(V1 | 0b0011n);
    expect(dev.featuresWritten).toEqual([V1 | 0b0011n]);
    await driverOk(dev);
    expect(dev.statusWrites).toEqual([0, A, A | D, A | D | STATUS_FEATURES_OK, A | D | STATUS_FEATURES_OK | STATUS_DRIVER_OK]);
  });

  it('never accepts a feature that was not offered, whatever the chooser returns', async () => {
    await fc.assert(
      fc.asyncProperty(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), async (offered, wanted) => {
        const dev = new FakeDevice(offered | V1);
        const accepted = await negotiateFeatures(dev, () => wanted);
        expect(accepted).toBe((offered | V1) & wanted);
        expect(accepted & ~(offered | V1)).toBe(0n);
      }),
      { numRuns: 200 },
    );
  });

  it('leaves a device without VERSION_1 in FAILED', async () => {
    const dev = new FakeDevice(0b111n);
    await expect(negotiateFeatures(dev, (o) => o)).rejects.toMatchObject({ kind: 'feature-missing' });
    expect(dev.statusWrites.at(-1)).toBe(A | D | STATUS_FAILED);
    expect(dev.featuresWritten).toEqual([]);
  });

  it('leaves a device that refuses the features in FAILED and names them', async () => {
    const dev = new FakeDevice(V1 | 0b1n, { refuse: true });
    const e = await negotiateFeatures(dev, (o) => o).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(VirtioError);
    expect(e).toMatchObject({ kind: 'features-rejected' });
    expect((e as Error).message).toContain((V1 | 0b1n).toString(16));
    expect(dev.statusWrites.at(-1)).toBe(A | D | STATUS_FAILED);
  });

  it('gives up on a reset that never finishes, after the timeout', async () => {
    const dev = new FakeDevice(V1, { resetPolls: Number.MAX_SAFE_INTEGER });
    await expect(negotiateFeatures(dev, (o) => o, 20)).rejects.toMatchObject({ kind: 'device-needs-reset' });
    expect(dev.statusWrites).toEqual([0]);
  });

  it('reports a device that asks for a reset at DRIVER_OK', async () => {
    const dev = new FakeDevice(V1, { needsReset: true });
    await negotiateFeatures(dev, (o) => o);
    await expect(driverOk(dev)).rejects.toMatchObject({ kind: 'device-needs-reset' });
  });
});
