import type { DmaMemory } from '@ioplane/guest-memory';
import { GuestMemoryError } from '@ioplane/guest-memory';
import {
  DESC_SIZE,
  EVENT_SUPPRESS_BYTES,
  MAX_QUEUE_SIZE,
  PACKED_DESC_ALIGN,
  PACKED_EVENT_ALIGN,
  SPLIT_AVAIL_ALIGN,
  SPLIT_DESC_ALIGN,
  SPLIT_USED_ALIGN,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_IN_ORDER,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  availRingBytes,
  usedRingBytes,
} from './defs.js';
import { VirtqueueError } from './errors.js';

/**
 * Where a queue lives, as the transport reports it (VirtIO 1.2 §4.1.4.3:
 * queue_desc, queue_driver, queue_device). For a split queue the driver area
 * is the available ring and the device area the used ring; for a packed
 * queue they are the driver and device event suppression structures.
 */
export interface QueueConfig {
  size: number;
  descAddr: number;
  driverAddr: number;
  deviceAddr: number;
}

/** The ring features a queue acts on, from the negotiated feature bits. */
export interface RingFeatures {
  indirect: boolean;
  eventIdx: boolean;
  inOrder: boolean;
  packed: boolean;
}

export function ringFeatures(negotiated: bigint): RingFeatures {
  const has = (bit: number): boolean => ((negotiated >> BigInt(bit)) & 1n) === 1n;
  return {
    indirect: has(VIRTIO_F_INDIRECT_DESC),
    eventIdx: has(VIRTIO_F_EVENT_IDX),
    inOrder: has(VIRTIO_F_IN_ORDER),
    packed: has(VIRTIO_F_RING_PACKED),
  };
}

export function featureBits(f: Partial<RingFeatures>): bigint {
  let v = 0n;
  if (f.indirect) v |= 1n << BigInt(VIRTIO_F_INDIRECT_DESC);
  if (f.eventIdx) v |= 1n << BigInt(VIRTIO_F_EVENT_IDX);
  if (f.inOrder) v |= 1n << BigInt(VIRTIO_F_IN_ORDER);
  if (f.packed) v |= 1n << BigInt(VIRTIO_F_RING_PACKED);
  return v;
}

export function splitAreaSizes(size: number): { desc: number; driver: number; device: number } {
  return { desc: DESC_SIZE * size, driver: availRingBytes(size), device: usedRingBytes(size) };
}

export function packedAreaSizes(size: number): { desc: number; driver: number; device: number } {
  return { desc: DESC_SIZE * size, driver: EVENT_SUPPRESS_BYTES, device: EVENT_SUPPRESS_BYTES };
}

const alignUp = (v: number, a: number): number => Math.ceil(v / a) * a;

/**
 * A compact layout for a queue of `size` at `base` (16-byte aligned), each
 * part at its minimum alignment. Returns the config and the bytes used.
 */
export function layoutQueue(packed: boolean, size: number, base: number): { config: QueueConfig; bytes: number } {
  const s = packed ? packedAreaSizes(size) : splitAreaSizes(size);
  const descAddr = alignUp(base, 16);
  const driverAddr = alignUp(descAddr + s.desc, packed ? PACKED_EVENT_ALIGN : SPLIT_AVAIL_ALIGN);
  const deviceAddr = alignUp(driverAddr + s.driver, packed ? PACKED_EVENT_ALIGN : SPLIT_USED_ALIGN);
  return { config: { size, descAddr, driverAddr, deviceAddr }, bytes: deviceAddr + s.device - base };
}

export function checkSize(size: number, packed: boolean): void {
  const ok = Number.isInteger(size) && size >= 1 && size <= MAX_QUEUE_SIZE && (packed || (size & (size - 1)) === 0);
  if (!ok) {
    throw new VirtqueueError('invalid-size', `queue size ${String(size)} is invalid: ${packed ? 'packed queues take 1..32768' : 'split queues take a power of two up to 32768'} (VirtIO 1.2 §2.6)`, { value: size });
  }
}

/**
 * A zero-copy view of one ring area, checked for alignment, memory and
 * contiguity once at activation (STYLE.md 4): the queue then reads and
 * writes it without further checks.
 */
export function ringArea(mem: DmaMemory, what: string, addr: number, len: number, align: number, access: 'read' | 'write'): Uint8Array {
  if (!Number.isSafeInteger(addr) || addr < 0 || addr % align !== 0) {
    throw new VirtqueueError('ring-misaligned', `${what} at 0x${addr.toString(16)} is not ${align}-byte aligned (VirtIO 1.2 §2.7 / §2.8 alignment table)`, { value: addr });
  }
  let view: Uint8Array | undefined;
  try {
    view = mem.tryView(addr, len, access);
  } catch (e) {
    if (e instanceof GuestMemoryError) {
      throw new VirtqueueError('ring-out-of-memory', `${what} (${len} bytes at 0x${addr.toString(16)}) is not in guest memory: ${e.message}`, { value: addr, cause: e });
    }
    throw e;
  }
  if (view === undefined) {
    throw new VirtqueueError('ring-not-contiguous', `${what} (${len} bytes at 0x${addr.toString(16)}) spans two memory regions`, { value: addr });
  }
  // Ring indices and flags are accessed with Atomics, which index whole host words.
  if (view.byteOffset % 2 !== 0) {
    throw new VirtqueueError('ring-misaligned', `${what} at 0x${addr.toString(16)} is not aligned in host memory`, { value: addr });
  }
  return view;
}

export function u16Over(view: Uint8Array): Uint16Array {
  return new Uint16Array(view.buffer, view.byteOffset, view.byteLength >>> 1);
}

/**
 * Ring fields are little-endian (VirtIO 1.2 §1.4). On a little-endian host a
 * Uint32Array reads and writes them as they are, with none of DataView's
 * per-access endianness and bounds work; elsewhere the queues use DataView.
 */
export const HOST_LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

/** A Uint32Array over `view`, if the host is little-endian and the view is 4-aligned in host memory. */
export function u32Over(view: Uint8Array): Uint32Array | undefined {
  if (!HOST_LITTLE_ENDIAN || view.byteOffset % 4 !== 0) return undefined;
  return new Uint32Array(view.buffer, view.byteOffset, view.byteLength >>> 2);
}

export function dataViewOver(view: Uint8Array): DataView {
  return new DataView(view.buffer, view.byteOffset, view.byteLength);
}

export const DESC_ALIGN = { split: SPLIT_DESC_ALIGN, packed: PACKED_DESC_ALIGN } as const;

const TWO_32 = 0x1_0000_0000;

/** Stores a guest address as le64 (two le32 words); most buffers lie below 4 GiB. */
export function setAddr(dv: DataView, off: number, addr: number): void {
  if (addr < TWO_32) {
    dv.setUint32(off, addr, true);
    dv.setUint32(off + 4, 0, true);
  } else {
    dv.setUint32(off, addr % TWO_32, true);
    dv.setUint32(off + 4, Math.floor(addr / TWO_32), true);
  }
}
