import type { DmaMemory } from '@ioplane/guest-memory';
import { DescriptorChain } from './chain.js';
import {
  DESC_SIZE,
  EVENT_SUPPRESS_BYTES,
  PACKED_DESC_ALIGN,
  PACKED_EVENT_ALIGN,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
  vringNeedEvent,
} from './defs.js';
import type { DeviceQueue, QueueState } from './device-queue.js';
import { VirtqueueError } from './errors.js';
import { type QueueConfig, type RingFeatures, checkSize, dataViewOver, ringArea, u16Over, u32Over } from './layout.js';
import { SegmentChecker } from './segments.js';
import { checkLen } from './split-device.js';

/** u16 index of a descriptor's flags: byte 14 of 16. */
const FLAGS_U16 = 7;
const OFF_WRAP_U16 = 0;
const EVT_FLAGS_U16 = 1;

/** Available for wrap counter `wrap`: AVAIL == wrap and USED != wrap (§2.8.1). */
function isAvail(flags: number, wrap: number): boolean {
  const avail = (flags & VIRTQ_DESC_F_AVAIL) !== 0 ? 1 : 0;
  const used = (flags & VIRTQ_DESC_F_USED) !== 0 ? 1 : 0;
  return avail === wrap && used !== wrap;
}

/** The device side of a packed virtqueue (VirtIO 1.2 §2.8). */
export class PackedDeviceQueue implements DeviceQueue {
  readonly size: number;
  readonly features: RingFeatures;
  broken: VirtqueueError | undefined;

  private readonly desc: DataView;
  private readonly descU16: Uint16Array;
  /** The same ring as u32 words, on a little-endian host (see `u32Over`). */
  private readonly desc32: Uint32Array | undefined;
  /** Driver Event Suppression: written by the driver, controls our interrupts. */
  private readonly driverEvent: Uint16Array;
  /** Device Event Suppression: written by us, controls the driver's notifications. */
  private readonly deviceEvent: Uint16Array;
  private readonly checker: SegmentChecker;

  private nextAvail = 0;
  private availWrap = 1;
  private nextUsed = 0;
  private usedWrap = 1;
  /** Ring descriptors popped and not yet returned: never more than the ring holds. */
  private inFlight = 0;
  /** Used descriptors written since the last `needsInterrupt`. */
  private usedSinceSignal = 0;
  private signalledValid = false;
  // Used flags are stored at publish, the first last (§2.8.9 multi-buffer requests).
  private readonly pendingPos: Uint16Array;
  private readonly pendingFlags: Uint16Array;
  private pending = 0;
  private skipped = 0;
  private skippedDescs = 0;
  private skippedId = 0;
  private skippedLen = 0;

  constructor(mem: DmaMemory, config: QueueConfig, features: RingFeatures, state?: QueueState) {
    checkSize(config.size, true);
    const size = config.size;
    this.size = size;
    this.features = features;
    const ring = ringArea(mem, 'descriptor ring', config.descAddr, DESC_SIZE * size, PACKED_DESC_ALIGN, 'write');
    this.desc = dataViewOver(ring);
    this.descU16 = u16Over(ring);
    this.desc32 = u32Over(ring);
    this.driverEvent = u16Over(ringArea(mem, 'driver event suppression', config.driverAddr, EVENT_SUPPRESS_BYTES, PACKED_EVENT_ALIGN, 'read'));
    this.deviceEvent = u16Over(ringArea(mem, 'device event suppression', config.deviceAddr, EVENT_SUPPRESS_BYTES, PACKED_EVENT_ALIGN, 'write'));
    this.checker = new SegmentChecker(mem);
    this.pendingPos = new Uint16Array(size);
    this.pendingFlags = new Uint16Array(size);
    if (state) {
      this.nextAvail = (state.nextAvail & 0x7fff) % size;
      this.availWrap = (state.nextAvail >> 15) & 1;
      this.nextUsed = (state.nextUsed & 0x7fff) % size;
      this.usedWrap = (state.nextUsed >> 15) & 1;
      // Restored queues start with nothing in flight, as vhost-user's SET_VRING_BASE does.
    }
  }

  createChain(): DescriptorChain {
    return new DescriptorChain(Math.min(this.size, 64));
  }

  hasAvailable(): boolean {
    return this.broken === undefined && isAvail(Atomics.load(this.descU16, this.nextAvail * 8 + FLAGS_U16), this.availWrap);
  }

  pop(chain: DescriptorChain): boolean {
    const t = this.desc32;
    if (t !== undefined && this.broken === undefined && this.inFlight < this.size) {
      // The common case, small enough for the JIT to inline at the caller: one
      // direct descriptor whose buffer checks out. Anything else takes the
      // general path, which reads it again and reports what is wrong.
      const pos = this.nextAvail;
      // Acquire: the head's flags are written last by the driver (§2.8.21.1).
      const flags = Atomics.load(this.descU16, pos * 8 + FLAGS_U16);
      if (!isAvail(flags, this.availWrap)) return false;
      if ((flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT)) === 0) {
        const o = pos << 2;
        const len = t[o + 2]!;
        const writable = (flags & VIRTQ_DESC_F_WRITE) !== 0;
        const addr = this.checker.single(t[o]!, t[o + 1]!, len, writable);
        if (addr >= 0) {
          chain.setSingle(t[o + 3]! & 0xffff, addr, len, writable, this.checker.via, this.checker.gpa, this.checker.gen);
          this.inFlight++;
          if (++this.nextAvail === this.size) {
            this.nextAvail = 0;
            this.availWrap ^= 1;
          }
          return true;
        }
      }
    }
    return this.popGeneral(chain);
  }

  private popGeneral(chain: DescriptorChain): boolean {
    if (this.broken) throw this.broken;
    // Acquire: the head's flags are written last by the driver (§2.8.21.1).
    const headFlags = Atomics.load(this.descU16, this.nextAvail * 8 + FLAGS_U16);
    if (!isAvail(headFlags, this.availWrap)) return false;
    let count: number;
    try {
      count = this.readChain(chain, headFlags);
      if (this.inFlight + count > this.size) {
        throw new VirtqueueError('ring-overrun', `the driver made ${this.inFlight + count} descriptors available in a ring of ${this.size} (VirtIO 1.2 §2.8.17: never more than the ring holds)`, { head: chain.head, desc: this.nextAvail });
      }
    } catch (e) {
      if (e instanceof VirtqueueError) {
        this.broken = e;
      }
      throw e;
    }
    this.inFlight += count;
    chain.descCount = count;
    this.nextAvail += count;
    if (this.nextAvail >= this.size) {
      this.nextAvail -= this.size;
      this.availWrap ^= 1;
    }
    return true;
  }

  /** Reads the list at nextAvail; returns how many ring descriptors it occupies. */
  private readChain(chain: DescriptorChain, headFlags: number): number {
    chain.clear();
    const start = this.nextAvail;
    // Until the list ends, name it by its position in the ring.
    chain.head = start;
    let idx = start;
    let wrap = this.availWrap;
    let flags = headFlags;
    let count = 0;
    for (;;) {
      if (count === this.size) {
        throw new VirtqueueError('chain-too-long', `the list at ring position ${start} is longer than the queue size ${this.size} (VirtIO 1.2 §2.8.17)`, { head: start, desc: idx });
      }
      const off = idx * DESC_SIZE;
      if (count > 0) {
        flags = this.desc.getUint16(off + 14, true);
        if (!isAvail(flags, wrap)) {
          throw new VirtqueueError('descriptor-not-available', `descriptor at ring position ${idx} continues the list at ${start} but is not marked available (VirtIO 1.2 §2.8.6: all flags set in every descriptor of a list)`, { head: start, desc: idx });
        }
      }
      count++;
      const lo = this.desc.getUint32(off, true);
      const hi = this.desc.getUint32(off + 4, true);
      const len = this.desc.getUint32(off + 8, true);
      const id = this.desc.getUint16(off + 12, true);
      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        if (!this.features.indirect) {
          throw new VirtqueueError('indirect-not-negotiated', `descriptor at ring position ${idx} is INDIRECT but VIRTIO_F_INDIRECT_DESC was not negotiated (VirtIO 1.2 §2.8.20)`, { head: start, desc: idx });
        }
        if ((flags & VIRTQ_DESC_F_NEXT) !== 0) {
          throw new VirtqueueError('indirect-with-next', `descriptor at ring position ${idx} sets both INDIRECT and NEXT (VirtIO 1.2 §2.8.20)`, { head: start, desc: idx });
        }
        if (count > 1) {
          throw new VirtqueueError('indirect-in-chain', `descriptor at ring position ${idx} is INDIRECT inside a list linked by NEXT (VirtIO 1.2 §2.8.20)`, { head: start, desc: idx });
        }
        this.readIndirect(chain, idx, lo, hi, len);
        chain.head = id;
        return count;
      }
      this.checker.push(chain, lo, hi, len, (flags & VIRTQ_DESC_F_WRITE) !== 0, idx);
      if ((flags & VIRTQ_DESC_F_NEXT) === 0) {
        // Buffer ID is in the last descriptor of the list (§2.8.6).
        chain.head = id;
        return count;
      }
      idx++;
      if (idx === this.size) {
        idx = 0;
        wrap ^= 1;
      }
    }
  }

  /** Entries of a packed indirect table are in order; only WRITE counts (§2.8.7). */
  private readIndirect(chain: DescriptorChain, desc: number, lo: number, hi: number, len: number): void {
    this.checker.indirectTable(chain.head, desc, lo, hi, len);
    const table = this.checker.tableView;
    const base = this.checker.tableBase;
    const n = len / DESC_SIZE;
    for (let i = 0; i < n; i++) {
      const off = base + i * DESC_SIZE;
      const flags = table.getUint16(off + 14, true);
      this.checker.push(chain, table.getUint32(off, true), table.getUint32(off + 4, true), table.getUint32(off + 8, true), (flags & VIRTQ_DESC_F_WRITE) !== 0, i);
    }
  }

  pushUsed(chain: DescriptorChain, len: number): void {
    if (this.broken) return;
    checkLen(chain, len);
    this.writeUsed(chain.head, len, chain.descCount + this.skippedDescs);
    this.skipped = 0;
    this.skippedDescs = 0;
  }

  pushUsedInOrder(chain: DescriptorChain): void {
    if (!this.features.inOrder) throw new TypeError('pushUsedInOrder needs VIRTIO_F_IN_ORDER');
    if (this.broken) return;
    this.skipped++;
    this.skippedDescs += chain.descCount;
    this.skippedId = chain.head;
    this.skippedLen = chain.writableBytes;
  }

  /** A used descriptor at nextUsed; the used pointer then skips `descs` (§2.8.6, §2.8.8). */
  private writeUsed(id: number, len: number, descs: number): void {
    const off = this.nextUsed * DESC_SIZE;
    this.desc.setUint32(off + 8, len, true);
    this.desc.setUint16(off + 12, id, true);
    const wrapBits = this.usedWrap === 1 ? VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED : 0;
    this.pendingPos[this.pending] = this.nextUsed;
    this.pendingFlags[this.pending] = wrapBits | (len > 0 ? VIRTQ_DESC_F_WRITE : 0);
    this.pending++;
    this.inFlight -= descs;
    this.usedSinceSignal += descs;
    this.nextUsed += descs;
    if (this.nextUsed >= this.size) {
      this.nextUsed -= this.size;
      this.usedWrap ^= 1;
    }
  }

  publishUsed(): void {
    if (this.broken) return;
    if (this.skipped > 0) {
      this.writeUsed(this.skippedId, this.skippedLen, this.skippedDescs);
      this.skipped = 0;
      this.skippedDescs = 0;
    }
    // Release each flags word, the earliest last, so the driver (which polls the
    // earliest) never sees a later entry half-written.
    for (let i = this.pending - 1; i >= 0; i--) {
      Atomics.store(this.descU16, this.pendingPos[i]! * 8 + FLAGS_U16, this.pendingFlags[i]!);
    }
    this.pending = 0;
  }

  complete(chain: DescriptorChain, len: number): void {
    this.pushUsed(chain, len);
    this.publishUsed();
  }

  needsInterrupt(): boolean {
    if (this.broken) return false;
    const advanced = this.usedSinceSignal;
    const valid = this.signalledValid;
    this.usedSinceSignal = 0;
    this.signalledValid = true;
    const flags = Atomics.load(this.driverEvent, EVT_FLAGS_U16) & 3;
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (flags !== RING_EVENT_FLAGS_DESC || !this.features.eventIdx) return true;
    if (!valid) return true;
    // The event offset is in the driver's used lap; one lap back counts as
    // negative, so the window (old, new] is compared in 16-bit arithmetic.
    const offWrap = Atomics.load(this.driverEvent, OFF_WRAP_U16);
    let event = offWrap & 0x7fff;
    if (offWrap >> 15 !== this.usedWrap) event -= this.size;
    const now = this.nextUsed;
    return vringNeedEvent(event & 0xffff, now, (now - advanced) & 0xffff);
  }

  enableNotifications(): boolean {
    if (this.broken) return false;
    if (this.features.eventIdx) {
      Atomics.store(this.deviceEvent, OFF_WRAP_U16, this.nextAvail | (this.availWrap << 15));
      Atomics.store(this.deviceEvent, EVT_FLAGS_U16, RING_EVENT_FLAGS_DESC);
    } else {
      Atomics.store(this.deviceEvent, EVT_FLAGS_U16, RING_EVENT_FLAGS_ENABLE);
    }
    return this.hasAvailable();
  }

  disableNotifications(): void {
    if (this.broken) return;
    Atomics.store(this.deviceEvent, EVT_FLAGS_U16, RING_EVENT_FLAGS_DISABLE);
  }

  markBroken(error: VirtqueueError): void {
    this.broken ??= error;
  }

  state(): QueueState {
    return { nextAvail: this.nextAvail | (this.availWrap << 15), nextUsed: this.nextUsed | (this.usedWrap << 15) };
  }
}
