import { GuestMemory } from '@ioplane/guest-memory';
import { type NetBackend, createLoopbackPair } from '@ioplane/net-backends';
import { BufferList, type DriverQueue, type UsedBuffer, createDriverQueue, layoutQueue, ringFeatures } from '@ioplane/virtqueue';
import {
  DirectTransport,
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  VIRTIO_F_VERSION_1,
  bit,
  VirtioNetDevice,
  VirtioNetDriver,
  type NetHdr,
  type VirtioError,
  type VirtioNetDriverOptions,
  type VirtioNetOptions,
} from '../src/index.js';

export const NET_MEM = 16 << 20;
export const NET_AREA = { addr: 0x10000, len: 12 << 20 };

export interface NetGuest {
  mem: GuestMemory;
  device: VirtioNetDevice;
  driver: VirtioNetDriver;
  errors: VirtioError[];
  /** Frames received, copied, with their header fields. */
  received: { frame: Uint8Array; flags: number; numBuffers: number; queue: number }[];
}

/** One guest: a virtio-net device on `backend`, driven by the guest driver through a DirectTransport, in this thread. */
export async function netGuest(backend: NetBackend, device: Partial<VirtioNetOptions> = {}, driver: Partial<VirtioNetDriverOptions> = {}): Promise<NetGuest> {
  const mem = GuestMemory.create(NET_MEM);
  const errors: VirtioError[] = [];
  const received: NetGuest['received'] = [];
  const ref: { drv?: VirtioNetDriver } = {};
  const dev = new VirtioNetDevice({
    mem,
    backend,
    interrupts: {
      queue: (q) => void ref.drv?.handleInterrupt(q),
      config: () => void ref.drv?.handleConfigChange().catch(() => undefined),
    },
    onGuestError: (e) => errors.push(e),
    ...device,
  });
  const drv = await VirtioNetDriver.create({ transport: new DirectTransport(dev), mem, area: NET_AREA, ...driver });
  ref.drv = drv;
  drv.onFrame((frame: Uint8Array, hdr: NetHdr, queue: number) => received.push({ frame: frame.slice(), flags: hdr.flags, numBuffers: hdr.numBuffers, queue }));
  return { mem, device: dev, driver: drv, errors, received };
}

/** Two guests joined by an in-process loopback pair. */
export async function twoGuests(
  device: Partial<VirtioNetOptions> = {},
  driver: Partial<VirtioNetDriverOptions> = {},
  mtu = 1500,
): Promise<{ a: NetGuest; b: NetGuest; close: () => Promise<void> }> {
  const pair = createLoopbackPair({ mtu });
  const a = await netGuest(pair.a, { mac: Uint8Array.of(0x52, 0x54, 0, 0, 0, 0xa), ...device }, driver);
  const b = await netGuest(pair.b, { mac: Uint8Array.of(0x52, 0x54, 0, 0, 0, 0xb), ...device }, driver);
  return {
    a,
    b,
    close: async () => {
      await a.driver.close();
      await b.driver.close();
      a.device.detach();
      b.device.detach();
      await pair.a.close();
      await pair.b.close();
    },
  };
}

/** Waits (bounded) until `cond` holds, turning the event loop. */
export async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

export function ethFrame(dst: Uint8Array, src: Uint8Array, len: number, seed: number, etherType = 0x88b5): Uint8Array {
  const f = new Uint8Array(len);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = etherType >>> 8;
  f[13] = etherType & 0xff;
  let x = (seed * 2654435761 + 1) >>> 0;
  for (let i = 14; i < len; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    f[i] = x >>> 24;
  }
  return f;
}


/**
 * A hand-driven guest: features and queues set up step by step, buffers posted
 * and chains built by the test (to post too few, too small or malformed ones).
 */
export interface RawGuest {
  mem: GuestMemory;
  device: VirtioNetDevice;
  errors: VirtioError[];
  queues: DriverQueue<number>[];
  list: BufferList;
  used: UsedBuffer<number>;
  /** Posts a device-writable buffer of `len` bytes at `addr` on queue `q` with `token`, and kicks. */
  postRx(q: number, addr: number, len: number, token: number): void;
  /** Adds `list` on queue `q` with `token`, publishes, kicks. */
  submit(q: number, list: BufferList, token: number): void;
  /** Every used buffer of queue `q` so far. */
  reap(q: number): { token: number; len: number }[];
}

export async function rawGuest(backend: NetBackend, features: bigint, opts: Partial<VirtioNetOptions> = {}, queueSize = 64): Promise<RawGuest> {
  const mem = GuestMemory.create(NET_MEM);
  const errors: VirtioError[] = [];
  const device = new VirtioNetDevice({ mem, backend, interrupts: { queue: () => {}, config: () => {} }, onGuestError: (e) => errors.push(e), ring: { packed: false, indirect: false, eventIdx: false }, ...opts });
  const t = new DirectTransport(device);
  await t.setStatus(0);
  await t.setStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  await t.setDriverFeatures(features | bit(VIRTIO_F_VERSION_1));
  await t.setStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  if ((await t.status() & STATUS_FEATURES_OK) === 0) throw new Error(`features refused: ${errors.map((e) => e.message).join('; ')}`);
  const rf = ringFeatures(features | bit(VIRTIO_F_VERSION_1));
  const queues: DriverQueue<number>[] = [];
  let at = 0x10000;
  for (let q = 0; q < device.numQueues; q++) {
    const { config, bytes } = layoutQueue(false, queueSize, at);
    await t.setQueueSize(q, queueSize);
    await t.setQueueAddresses(q, config.descAddr, config.driverAddr, config.deviceAddr);
    await t.enableQueue(q);
    queues.push(createDriverQueue<number>(mem, config, rf));
    at = Math.ceil((at + bytes) / 4096) * 4096;
  }
  await t.setStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  const list = new BufferList(8);
  const used: UsedBuffer<number> = { token: undefined, len: 0 };
  const submit = (q: number, l: BufferList, token: number): void => {
    if (!queues[q]!.add(l, token)) throw new Error(`queue ${q} full`);
    queues[q]!.publish();
    t.notify(q);
  };
  return {
    mem,
    device,
    errors,
    queues,
    list,
    used,
    postRx: (q, addr, len, token) => submit(q, list.clear().push(addr, len, true), token),
    submit,
    reap: (q) => {
      const out: { token: number; len: number }[] = [];
      while (queues[q]!.pollUsed(used)) out.push({ token: used.token!, len: used.len });
      return out;
    },
  };
}

/** Guest-physical area for test buffers in a raw guest. */
export const RAW_DATA = 8 << 20;
