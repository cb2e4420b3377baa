// A hostile guest writes descriptor chains by hand (no driver): every malformed
// request gets its status (or, with no status byte, a used entry of length 0)
// and nothing reaches the back-end.
import { MemoryBackend, type BlockBackend } from '@ioplane/blk-backends';
import { GuestMemory } from '@ioplane/guest-memory';
import { VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE, layoutQueue } from '@ioplane/virtqueue';
import { RawSplitRing } from '@ioplane/virtqueue/testing';
import { describe, expect, it } from 'vitest';
import {
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VirtioBlkDevice,
  type VirtioError,
} from '../src/index.js';

const HDR = 0x10000;
const DATA = 0x20000;
const ST = 0x30000;

function rig() {
  const mem = GuestMemory.create(1 << 20);
  const calls: string[] = [];
  const inner = new MemoryBackend({ size: 64 << 10 });
  const backend = new Proxy(inner, {
    get(t, p, r) {
      const v: unknown = Reflect.get(t, p, r);
      if (typeof v !== 'function') return v;
      return (...a: unknown[]) => {
        calls.push(String(p));
        return (v as (...x: unknown[]) => unknown).apply(t, a);
      };
    },
  }) as BlockBackend;
  const errors: VirtioError[] = [];
  let irqs = 0;
  const dev = new VirtioBlkDevice({ mem, backend, queueSize: 16, interrupts: { queue: () => irqs++, config: () => {} }, onGuestError: (e) => errors.push(e) });
  dev.setStatus(STATUS_ACKNOWLEDGE);
  dev.setStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  dev.writeDriverFeatures(1, 1); // VERSION_1 only
  dev.setStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  const { config } = layoutQueue(false, 16, 0x1000);
  dev.setQueueSize(0, 16);
  dev.setQueueAddresses(0, config.descAddr, config.driverAddr, config.deviceAddr);
  dev.enableQueue(0);
  dev.setStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  const ring = new RawSplitRing(mem, config);
  const header = (type: number, sector: number): void => {
    mem.writeU32(HDR, type);
    mem.writeU32(HDR + 4, 0);
    mem.writeU64(HDR + 8, BigInt(sector));
  };
  /** Posts one chain, kicks, waits for its completion; returns the used length and the status byte. */
  const run = async (descs: [number, number, number][]): Promise<{ len: number; status: number }> => {
    mem.writeU8(ST, 0xee);
    descs.forEach(([a, l, f], i) => ring.desc(i, a, l, f | (i < descs.length - 1 ? NEXT : 0), i + 1));
    const before = ring.usedIdx;
    ring.pushAvail(0);
    dev.notify(0);
    for (let i = 0; i < 50 && ring.usedIdx === before; i++) await new Promise((r) => setImmediate(r));
    expect(ring.usedIdx).toBe((before + 1) & 0xffff);
    return { len: ring.usedElem(before).len, status: mem.readU8(ST) };
  };
  return { mem, dev, calls, errors, run, header, irqs: () => irqs };
}

describe('virtio-blk against hand-written hostile chains', () => {
  it('answers each malformed request, the back-end sees none of them, the device keeps going', async () => {
    const r = rig();
    r.header(VIRTIO_BLK_T_IN, 0);
    // A read with device-readable data (wrong direction).
    expect(await r.run([[HDR, 16, 0], [DATA, 512, 0], [ST, 1, WRITE]])).toEqual({ len: 1, status: VIRTIO_BLK_S_IOERR });
    // No writable status byte at all: nothing to answer, a used entry of length 0.
    expect(await r.run([[HDR, 16, 0], [DATA, 512, 0]])).toEqual({ len: 0, status: 0xee });
    // An 8-byte header.
    expect(await r.run([[HDR, 8, 0], [ST, 1, WRITE]])).toEqual({ len: 1, status: VIRTIO_BLK_S_IOERR });
    // A write past capacity (128 sectors).
    r.header(VIRTIO_BLK_T_OUT, 128);
    expect(await r.run([[HDR, 16, 0], [DATA, 512, 0], [ST, 1, WRITE]])).toEqual({ len: 1, status: VIRTIO_BLK_S_IOERR });
    // A write of 100 bytes.
    r.header(VIRTIO_BLK_T_OUT, 0);
    expect(await r.run([[HDR, 16, 0], [DATA, 100, 0], [ST, 1, WRITE]])).toEqual({ len: 1, status: VIRTIO_BLK_S_IOERR });
    // FLUSH without VIRTIO_BLK_F_FLUSH negotiated, and an unknown type.
    r.header(4, 0);
    expect(await r.run([[HDR, 16, 0], [ST, 1, WRITE]])).toEqual({ len: 1, status: VIRTIO_BLK_S_UNSUPP });
    r.header(0x1234, 0);
    expect(await r.run([[HDR, 16, 0], [ST, 1, WRITE]])).toEqual({ len: 1, status: VIRTIO_BLK_S_UNSUPP });
    expect(r.calls.filter((c) => c !== 'size' && c !== 'logicalBlockSize')).toEqual([]);
    expect(r.errors.map((e) => e.details.error)).toEqual(['data-wrong-direction', 'no-status-byte', 'header-too-short', 'out-of-range', 'unaligned-length', 'not-negotiated', 'unknown-type']);
    // And a good read: data + status, used length 513.
    r.header(VIRTIO_BLK_T_IN, 127);
    expect(await r.run([[HDR, 16, 0], [DATA, 512, WRITE], [ST, 1, WRITE]])).toEqual({ len: 513, status: VIRTIO_BLK_S_OK });
    expect(r.calls).toContain('read');
    // Without FLUSH negotiated the cache is writethrough: a write is followed by a flush (§5.2.5.1).
    r.header(VIRTIO_BLK_T_OUT, 0);
    expect(await r.run([[HDR, 16, 0], [DATA, 512, 0], [ST, 1, WRITE]])).toEqual({ len: 1, status: VIRTIO_BLK_S_OK });
    expect(r.calls.slice(-2)).toEqual(['write', 'flush']);
    expect(r.irqs()).toBeGreaterThan(0);
  });
});
