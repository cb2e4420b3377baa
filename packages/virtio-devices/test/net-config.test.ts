import { createLoopbackPair } from '@ioplane/net-backends';
import { describe, expect, it } from 'vitest';
import {
  DirectTransport,
  NET_CFG_MAC,
  NET_CFG_MAX_VIRTQUEUE_PAIRS,
  NET_CFG_MTU,
  NET_CFG_SIZE,
  NET_CFG_STATUS,
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_FEATURES_OK,
  VIRTIO_F_VERSION_1,
  VIRTIO_ID_NET,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_CTRL_RX,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_S_ANNOUNCE,
  VIRTIO_NET_S_LINK_UP,
  VirtioNetDevice,
  bit,
  type VirtioError,
} from '../src/index.js';
import { GuestMemory } from '@ioplane/guest-memory';
import { twoGuests, until } from './net-harness.js';

const MAC = Uint8Array.of(0x52, 0x54, 0x00, 0xab, 0xcd, 0xef);

function device(pairs = 4, mtu = 9000): { dev: VirtioNetDevice; pair: ReturnType<typeof createLoopbackPair>; errors: VirtioError[] } {
  const pair = createLoopbackPair({ mtu });
  const errors: VirtioError[] = [];
  const dev = new VirtioNetDevice({ mem: GuestMemory.create(1 << 20), backend: pair.a, mac: MAC, queuePairs: pairs, interrupts: { queue: () => {}, config: () => {} }, onGuestError: (e) => errors.push(e) });
  return { dev, pair, errors };
}

describe('virtio-net config space (§5.1.4)', () => {
  it('struct virtio_net_config at its offsets: mac 0, status 6, max_virtqueue_pairs 8, mtu 10', () => {
    const { dev } = device(4, 9000);
    expect(dev.deviceId).toBe(VIRTIO_ID_NET);
    expect([NET_CFG_MAC, NET_CFG_STATUS, NET_CFG_MAX_VIRTQUEUE_PAIRS, NET_CFG_MTU, NET_CFG_SIZE]).toEqual([0, 6, 8, 10, 24]);
    expect(dev.configSize).toBe(24);
    for (let i = 0; i < 6; i++) expect(dev.readConfig(i, 1)).toBe(MAC[i]);
    expect(dev.readConfig(0, 4)).toBe(0xab005452);
    expect(dev.readConfig(6, 2)).toBe(VIRTIO_NET_S_LINK_UP);
    expect(dev.readConfig(8, 2)).toBe(4);
    expect(dev.readConfig(10, 2)).toBe(9000);
    // 2N + 1 queues: receiveq/transmitq pairs and the control queue (§5.1.2).
    expect(dev.numQueues).toBe(9);
  });

  it('offers MAC, STATUS, MTU, CSUM, HOST_TSO4, MRG_RXBUF, CTRL_VQ, MQ; not GUEST_TSO (nothing to coalesce)', () => {
    const { dev } = device();
    const f = BigInt(dev.readDeviceFeatures(0)) | (BigInt(dev.readDeviceFeatures(1)) << 32n);
    for (const n of [VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MTU, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ, VIRTIO_F_VERSION_1]) {
      expect(f & bit(n), `feature ${n}`).not.toBe(0n);
    }
    expect(f & bit(VIRTIO_NET_F_GUEST_TSO4)).toBe(0n);
    // One pair: no MQ.
    const one = device(1).dev;
    expect(BigInt(one.readDeviceFeatures(0)) & bit(VIRTIO_NET_F_MQ)).toBe(0n);
  });

  it('config space is read-only to the driver', () => {
    const { dev, errors } = device();
    dev.writeConfig(0, 1, 0x99);
    expect(dev.readConfig(0, 1)).toBe(MAC[0]);
    expect(errors.length).toBe(1);
  });

  it('refuses features whose dependencies are missing (§5.1.3.1) at FEATURES_OK', async () => {
    for (const bad of [bit(VIRTIO_NET_F_CTRL_RX), bit(VIRTIO_NET_F_HOST_TSO4), bit(VIRTIO_NET_F_MQ)]) {
      const { dev, errors } = device();
      const t = new DirectTransport(dev);
      await t.setStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
      await t.setDriverFeatures(bit(VIRTIO_F_VERSION_1) | bad);
      await t.setStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
      expect(await t.status() & STATUS_FEATURES_OK).toBe(0);
      expect(errors.some((e) => e.kind === 'invalid-features')).toBe(true);
    }
  });

  it('link changes of the back-end show in status with a new config_generation; announce sets ANNOUNCE until acked', async () => {
    const { a, close } = await twoGuests();
    try {
      const gen = a.device.configGeneration;
      expect(a.driver.info.linkUp).toBe(true);
      (a.device.backend as unknown as { linkChanged(up: boolean): void }).linkChanged(false);
      expect(a.device.readConfig(NET_CFG_STATUS, 2) & VIRTIO_NET_S_LINK_UP).toBe(0);
      expect(a.device.configGeneration).not.toBe(gen);
      await until(() => !a.driver.info.linkUp, 'driver sees link down');
      (a.device.backend as unknown as { linkChanged(up: boolean): void }).linkChanged(true);
      await until(() => a.driver.info.linkUp, 'driver sees link up');
      expect(a.device.announce()).toBe(true);
      // The driver's config-change handler acks with VIRTIO_NET_CTRL_ANNOUNCE_ACK (§5.1.6.5.4).
      await until(() => (a.device.readConfig(NET_CFG_STATUS, 2) & VIRTIO_NET_S_ANNOUNCE) === 0, 'announce acked');
      expect(a.device.netStats.ctrlCommands).toBeGreaterThan(0);
    } finally {
      await close();
    }
  });
});
