import { describe, expect, it } from 'vitest';
import {
  FixedPolicy,
  NO_COALESCING,
  VIRTIO_NET_CTRL_NOTF_COAL_RX_SET,
  VIRTIO_NET_CTRL_NOTF_COAL_TX_SET,
  VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET,
  VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET,
  VIRTIO_NET_ERR,
  VIRTIO_NET_OK,
  VirtioNetNotfCoal,
  decodeNvmeInterruptCoalescing,
  decodeNvmeInterruptVectorConfig,
  encodeNvmeInterruptCoalescing,
  encodeNvmeInterruptVectorConfig,
} from '../src/index.js';
import { US, harness } from './harness.js';

/** struct virtio_net_ctrl_coal { le32 max_packets; le32 max_usecs; } */
function coal(maxPackets: number, maxUsecs: number): Uint8Array {
  const b = new Uint8Array(8);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, maxPackets, true);
  dv.setUint32(4, maxUsecs, true);
  return b;
}

/** struct virtio_net_ctrl_coal_vq { le16 vq_index; le16 reserved; struct virtio_net_ctrl_coal coal; } */
function coalVq(vq: number, maxPackets: number, maxUsecs: number, reserved = 0): Uint8Array {
  const b = new Uint8Array(12);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, vq, true);
  dv.setUint16(2, reserved, true);
  b.set(coal(maxPackets, maxUsecs), 4);
  return b;
}

/** A 2-pair virtio-net device: rx0=0 tx0=1 rx1=2 tx1=3, controlq=4. */
function device(opts: { notfCoal?: boolean; vqNotfCoal?: boolean; pairs?: number } = {}) {
  const policy = new FixedPolicy(NO_COALESCING);
  const h = harness(policy, 5);
  const ctl = new VirtioNetNotfCoal({
    policy,
    coalescer: h.coalescer,
    queuePairs: opts.pairs ?? 2,
    notfCoal: opts.notfCoal ?? true,
    vqNotfCoal: opts.vqNotfCoal ?? true,
  });
  return { policy, ctl, ...h };
}

describe('virtio-net VIRTIO_NET_CTRL_NOTF_COAL', () => {
  it('`ethtool -C eth0 rx-frames 15 rx-usecs 10`: RX_SET sets every receive queue; the device then coalesces as the spec example', () => {
    const d = device();
    expect(d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_RX_SET, coal(15, 10))).toBe(VIRTIO_NET_OK);
    expect(d.ctl.get(0)).toEqual({ maxPackets: 15, maxUsecs: 10 });
    expect(d.ctl.get(2)).toEqual({ maxPackets: 15, maxUsecs: 10 });
    expect(d.ctl.get(1)).toEqual({ maxPackets: 0, maxUsecs: 0 });
    expect(d.policy.params(2)).toEqual({ maxFrames: 15, maxUsecs: 10 });
    expect(d.policy.params(3)).toEqual(NO_COALESCING);
    // "count packets received ... until it accumulates 15, or until 10 microseconds elapsed since the first one"
    for (let i = 0; i < 15; i++) d.coalescer.onCompletion(0, 100);
    expect(d.deliveries).toHaveLength(1);
    d.at(1 * US);
    d.coalescer.onCompletion(0, 100);
    d.at(11 * US - 1);
    expect(d.deliveries).toHaveLength(1);
    d.at(11 * US);
    expect(d.deliveries).toHaveLength(2);
    // TX untouched: every packet notifies.
    d.coalescer.onCompletion(1, 100);
    expect(d.deliveries).toHaveLength(3);
  });

  it('a zero in either field means a notification after every packet', () => {
    const d = device();
    d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_TX_SET, coal(0, 50));
    expect(d.policy.params(1)).toEqual(NO_COALESCING);
    d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_TX_SET, coal(32, 0));
    expect(d.policy.params(3)).toEqual(NO_COALESCING);
    d.coalescer.onCompletion(3, 10);
    expect(d.deliveries).toHaveLength(1);
  });

  it('VQ_SET/VQ_GET per virtqueue; the last command wins (the spec\'s command sequence)', () => {
    const d = device();
    const reply = new Uint8Array(8);
    d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_RX_SET, coal(8, 100)); // command1
    d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET, coalVq(0, 16, 200, 0xbeef)); // command2, reserved ignored
    expect(d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET, coalVq(0, 0, 0).subarray(0, 4), reply)).toBe(VIRTIO_NET_OK); // command3
    expect(Array.from(reply)).toEqual(Array.from(coal(16, 200)));
    expect(d.ctl.get(2)).toEqual({ maxPackets: 8, maxUsecs: 100 });
    d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET, coalVq(1, 4, 40)); // command4
    d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_TX_SET, coal(2, 20)); // command5 overrides command4
    d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET, coalVq(1, 0, 0).subarray(0, 4), reply); // command6
    expect(Array.from(reply)).toEqual(Array.from(coal(2, 20)));
  });

  it('answers VIRTIO_NET_ERR to what the driver must not send', () => {
    const d = device({ pairs: 2 });
    const reply = new Uint8Array(8);
    expect(d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET, coalVq(4, 1, 1))).toBe(VIRTIO_NET_ERR); // the controlq
    expect(d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET, coalVq(9, 0, 0).subarray(0, 4), reply)).toBe(VIRTIO_NET_ERR);
    expect(d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_RX_SET, coal(1, 1).subarray(0, 7))).toBe(VIRTIO_NET_ERR); // short
    expect(d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET, new Uint8Array(13))).toBe(VIRTIO_NET_ERR); // long
    expect(d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET, new Uint8Array(4))).toBe(VIRTIO_NET_ERR); // no reply buffer
    expect(d.ctl.handle(7, new Uint8Array(8))).toBe(VIRTIO_NET_ERR);
    d.ctl.setQueuePairs(1);
    expect(d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET, coalVq(2, 1, 1))).toBe(VIRTIO_NET_ERR); // not enabled now
    const noFeat = device({ notfCoal: false, vqNotfCoal: false });
    expect(noFeat.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_TX_SET, coal(1, 1))).toBe(VIRTIO_NET_ERR);
    expect(noFeat.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET, coalVq(0, 1, 1))).toBe(VIRTIO_NET_ERR);
    expect(d.ctl.errors).toBe(7);
  });

  it('a change whose new condition is already met notifies at once (the spec\'s 10 packets then max_packets 8)', () => {
    const d = device({ pairs: 1 });
    d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_TX_SET, coal(15, 1000));
    for (let i = 0; i < 10; i++) d.coalescer.onCompletion(1, 50);
    expect(d.deliveries).toHaveLength(0);
    d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_TX_SET, coal(8, 1000));
    expect(d.deliveries).toHaveLength(1);
  });

  it('a re-enabled queue returns to the TX_SET/RX_SET values (or 0); reset zeroes everything', () => {
    const d = device();
    d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_TX_SET, coal(5, 50));
    d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET, coalVq(3, 9, 90));
    d.ctl.handle(VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET, coalVq(0, 9, 90));
    d.ctl.queueReenabled(3);
    d.ctl.queueReenabled(0);
    expect(d.ctl.get(3)).toEqual({ maxPackets: 5, maxUsecs: 50 });
    expect(d.ctl.get(0)).toEqual({ maxPackets: 0, maxUsecs: 0 });
    d.ctl.reset();
    for (const vq of [0, 1, 2, 3]) expect(d.ctl.get(vq)).toEqual({ maxPackets: 0, maxUsecs: 0 });
    expect(d.policy.params(1)).toEqual(NO_COALESCING);
  });
});

describe('NVMe Interrupt Coalescing (FID 08h) and Interrupt Vector Configuration (FID 09h) dwords', () => {
  it('round-trips and ignores reserved bits', () => {
    expect(decodeNvmeInterruptCoalescing(0xffff_0a07)).toEqual({ thr: 7, time: 10 });
    expect(encodeNvmeInterruptCoalescing({ thr: 7, time: 10 })).toBe(0x0a07);
    expect(decodeNvmeInterruptVectorConfig(0x0001_0003)).toEqual({ iv: 3, coalescingDisable: true });
    expect(decodeNvmeInterruptVectorConfig(0xfffe_0005)).toEqual({ iv: 5, coalescingDisable: false });
    expect(encodeNvmeInterruptVectorConfig({ iv: 3, coalescingDisable: true })).toBe(0x1_0003);
    expect(() => encodeNvmeInterruptCoalescing({ thr: 256, time: 0 })).toThrow(/thr/);
    expect(() => decodeNvmeInterruptCoalescing(-1)).toThrow(/cdw11/);
  });
});
