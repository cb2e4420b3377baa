import type { DmaMemory } from '@ioplane/guest-memory';
import { DescriptorChain } from './chain.js';
import {
  AVAIL_FLAGS,
  AVAIL_IDX,
  AVAIL_RING,
  DESC_SIZE,
  SPLIT_AVAIL_ALIGN,
  SPLIT_DESC_ALIGN,
  SPLIT_USED_ALIGN,
  USED_ELEM_SIZE,
  USED_FLAGS,
  USED_IDX,
  USED_RING,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  availRingBytes,
  usedRingBytes,
  vringNeedEvent,
} from './defs.js';
import type { DeviceQueue, QueueState } from './device-queue.js';
import { VirtqueueError } from './errors.js';
import { type QueueConfig, type RingFeatures, checkSize, dataViewOver, ringArea, u16Over, u32Over } from './layout.js';
import { SegmentChecker } from './segments.js';

/** A chain's total length must stay below 2^32 bytes (§2.7.5.1; `SegmentChecker.push`). */
const MAX_CHAIN_BYTES = 0xffff_ffff;

// u16 indices into the rings (offset / 2)
const AVAIL_FLAGS_U16 = AVAIL_FLAGS / 2;
const AVAIL_IDX_U16 = AVAIL_IDX / 2;
const AVAIL_RING_U16 = AVAIL_RING / 2;
const USED_FLAGS_U16 = USED_FLAGS / 2;
const USED_IDX_U16 = USED_IDX / 2;

/**
 * The device side of a split virtqueue (VirtIO 1.2 §2.7). Ring areas are
 * checked once at construction and then accessed through cached views;
 * every descriptor is checked as it is read.
 */
export class SplitDeviceQueue implements DeviceQueue {
  readonly size: number;
  readonly features: RingFeatures;
  broken: VirtqueueError | undefined;

  private readonly mask: number;
  private readonly desc: DataView;
  /** The same table as u32 words, on a little-endian host (see `u32Over`). */
  private readonly desc32: Uint32Array | undefined;
  private readonly avail: Uint16Array;
  private readonly used: Uint16Array;
  private readonly usedView: DataView;
  private readonly used32: Uint32Array | undefined;
  /** u16 index of used_event in the avail ring, of avail_event in the used ring. */
  private readonly usedEventU16: number;
  private readonly availEventU16: number;
  private readonly checker: SegmentChecker;
  private readonly eventIdx: boolean;

  private nextAvail = 0;
  private shadowAvail = 0;
  private nextUsed = 0;
  private publishedUsed = 0;
  private signalledUsed = 0;
  private signalledValid = false;
  private notifyEnabled = true;
  private skipped = 0;
  private skippedHead = 0;
  private skippedLen = 0;

  constructor(mem: DmaMemory, config: QueueConfig, features: RingFeatures, state?: QueueState) {
    checkSize(config.size, false);
    const size = config.size;
    this.size = size;
    this.mask = size - 1;
    this.features = features;
    const descBytes = ringArea(mem, 'descriptor table', config.descAddr, DESC_SIZE * size, SPLIT_DESC_ALIGN, 'read');
    this.desc = dataViewOver(descBytes);
    this.desc32 = u32Over(descBytes);
    this.avail = u16Over(ringArea(mem, 'available ring', config.driverAddr, availRingBytes(size), SPLIT_AVAIL_ALIGN, 'read'));
    const usedBytes = ringArea(mem, 'used ring', config.deviceAddr, usedRingBytes(size), SPLIT_USED_ALIGN, 'write');
    this.used = u16Over(usedBytes);
    this.usedView = dataViewOver(usedBytes);
    this.used32 = u32Over(usedBytes);
    this.usedEventU16 = AVAIL_RING_U16 + size;
    this.availEventU16 = (USED_RING + USED_ELEM_SIZE * size) / 2;
    this.checker = new SegmentChecker(mem);
    this.eventIdx = features.eventIdx;
    if (state) {
      this.nextAvail = this.shadowAvail = state.nextAvail & 0xffff;
      this.nextUsed = this.publishedUsed = this.signalledUsed = state.nextUsed & 0xffff;
    }
  }

  createChain(): DescriptorChain {
    return new DescriptorChain(Math.min(this.size, 64));
  }

  hasAvailable(): boolean {
    return this.broken === undefined && Atomics.load(this.avail, AVAIL_IDX_U16) !== this.nextAvail;
  }

  pop(chain: DescriptorChain): boolean {
    const t = this.desc32;
    if (this.nextAvail !== this.shadowAvail && t !== undefined && this.broken === undefined) {
      // The common case, small enough for the JIT to inline at the caller: an
      // entry already known published, naming one direct descriptor whose
      // buffer checks out. Anything else takes the general path below, which
      // reads it again and reports what is wrong.
      const head = this.avail[AVAIL_RING_U16 + (this.nextAvail & this.mask)]!;
      const o = head << 2;
      if (head < this.size) {
        const flags = t[o + 3]!;
        if ((flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT)) === 0) {
          const len = t[o + 2]!;
          const writable = (flags & VIRTQ_DESC_F_WRITE) !== 0;
          const addr = this.checker.single(t[o]!, t[o + 1]!, len, writable);
          if (addr >= 0) {
            chain.setSingle(head, addr, len, writable, this.checker.via, this.checker.gpa, this.checker.gen);
            this.popped();
            return true;
          }
        } else if ((flags & VIRTQ_DESC_F_INDIRECT) === 0 && this.popDirect(head, chain, t)) {
          this.popped();
          return true;
        }
      }
    }
    return this.popGeneral(chain);
  }

  /**
   * A chain of direct descriptors in the ring's table (a block request's
   * header, data and status) whose every descriptor checks out: `chain`
   * filled, true. Anything else — an INDIRECT, a next past the table, a loop,
   * a readable descriptor after a writable one, 2^32 bytes or more, a buffer
   * outside memory — false, and the general path reads the chain again and
   * reports what is wrong. Never throws.
   */
  private popDirect(head: number, chain: DescriptorChain, t: Uint32Array): boolean {
    const checker = this.checker;
    chain.clear();
    chain.head = head;
    chain.descCount = 1;
    let idx = head;
    let total = 0;
    // At most one visit per descriptor of the table (§2.7.5.3.1), as `readChain`'s TTL.
    for (let ttl = this.size; ttl > 0; ttl--) {
      const o = idx << 2;
      const w = t[o + 3]!;
      if ((w & VIRTQ_DESC_F_INDIRECT) !== 0) return false;
      const len = t[o + 2]!;
      const writable = (w & VIRTQ_DESC_F_WRITE) !== 0;
      if (!writable && chain.writableBytes > 0) return false;
      total += len;
      if (total > MAX_CHAIN_BYTES) return false;
      const addr = checker.single(t[o]!, t[o + 1]!, len, writable);
      if (addr < 0) return false;
      chain.via = checker.via;
      chain.push(addr, len, writable, checker.gpa, checker.gen);
      if ((w & VIRTQ_DESC_F_NEXT) === 0) return true;
      idx = w >>> 16;
      if (idx >= this.size) return false;
    }
    return false;
  }

  private popGeneral(chain: DescriptorChain): boolean {
    if (this.broken) throw this.broken;
    if (this.nextAvail === this.shadowAvail) {
      this.shadowAvail = Atomics.load(this.avail, AVAIL_IDX_U16);
      if (this.nextAvail === this.shadowAvail) return false;
      const pending = (this.shadowAvail - this.nextAvail) & 0xffff;
      if (pending > this.size) {
        this.fail(new VirtqueueError('avail-index-ahead', `available index ${this.shadowAvail} is ${pending} entries ahead of the device's ${this.nextAvail}, more than the queue size ${this.size} (VirtIO 1.2 §2.7.6)`, { value: this.shadowAvail }));
      }
    }
    // Plain read of the ring entry: ordered after the acquire load of idx.
    const head = this.avail[AVAIL_RING_U16 + (this.nextAvail & this.mask)]!;
    if (head >= this.size) {
      this.fail(new VirtqueueError('head-out-of-range', `available ring entry ${this.nextAvail & this.mask} names descriptor ${head}, past the table of ${this.size}`, { head }));
    }
    try {
      this.readChain(head, chain);
    } catch (e) {
      if (e instanceof VirtqueueError) this.fail(e);
      throw e;
    }
    this.popped();
    return true;
  }

  private popped(): void {
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    // avail_event matters only at the end of what the device has seen: the
    // driver has already published past any earlier value, so
    // `vring_need_event` could not fire on it. One full-barrier store per batch.
    if (this.eventIdx && this.notifyEnabled && this.nextAvail === this.shadowAvail) Atomics.store(this.used, this.availEventU16, this.nextAvail);
  }

  private readChain(head: number, chain: DescriptorChain): void {
    chain.clear();
    chain.head = head;
    chain.descCount = 1;
    let table = this.desc;
    let base = 0;
    let tableSize = this.size;
    let idx = head;
    // A chain visits each descriptor of its table at most once (§2.7.5.3.1: no
    // longer than the queue size), so a TTL bounds loops.
    let ttl = this.size;
    let indirect = false;
    const t32 = this.desc32;
    for (;;) {
      if (ttl === 0) {
        throw new VirtqueueError('chain-too-long', `chain ${head} is longer than its ${indirect ? 'indirect table' : 'queue'} (${tableSize} descriptors): it loops (VirtIO 1.2 §2.7.5.1)`, { head, desc: idx });
      }
      ttl--;
      let lo: number;
      let hi: number;
      let len: number;
      let flags: number;
      let next: number;
      if (!indirect && t32 !== undefined) {
        // The ring's own table as u32 words (little-endian host): four loads, flags and next from one.
        const o = idx << 2;
        lo = t32[o]!;
        hi = t32[o + 1]!;
        len = t32[o + 2]!;
        const w = t32[o + 3]!;
        flags = w & 0xffff;
        next = w >>> 16;
      } else {
        const off = base + idx * DESC_SIZE;
        lo = table.getUint32(off, true);
        hi = table.getUint32(off + 4, true);
        len = table.getUint32(off + 8, true);
        flags = table.getUint16(off + 12, true);
        next = table.getUint16(off + 14, true);
      }
      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        if (!this.features.indirect) {
          throw new VirtqueueError('indirect-not-negotiated', `descriptor ${idx} of chain ${head} is INDIRECT but VIRTIO_F_INDIRECT_DESC was not negotiated (VirtIO 1.2 §2.7.5.3.1)`, { head, desc: idx });
        }
        if (indirect) {
          throw new VirtqueueError('nested-indirect', `descriptor ${idx} of chain ${head}'s indirect table is itself INDIRECT (VirtIO 1.2 §2.7.5.3.1)`, { head, desc: idx });
        }
        if ((flags & VIRTQ_DESC_F_NEXT) !== 0) {
          throw new VirtqueueError('indirect-with-next', `descriptor ${idx} of chain ${head} sets both INDIRECT and NEXT (VirtIO 1.2 §2.7.5.3.1)`, { head, desc: idx });
        }
        this.checker.indirectTable(head, idx, lo, hi, len);
        table = this.checker.tableView;
        base = this.checker.tableBase;
        tableSize = len / DESC_SIZE;
        ttl = tableSize;
        idx = 0;
        indirect = true;
        continue;
      }
      this.checker.push(chain, lo, hi, len, (flags & VIRTQ_DESC_F_WRITE) !== 0, idx);
      if ((flags & VIRTQ_DESC_F_NEXT) === 0) return;
      if (next >= tableSize) {
        throw new VirtqueueError('next-out-of-range', `descriptor ${idx} of chain ${head} points to descriptor ${next}, past the ${indirect ? 'indirect table' : 'queue'} of ${tableSize}`, { head, desc: idx, value: next });
      }
      idx = next;
    }
  }

  pushUsed(chain: DescriptorChain, len: number): void {
    if (this.broken) return;
    checkLen(chain, len);
    this.writeUsed(chain.head, len, 1 + this.skipped);
    this.skipped = 0;
  }

  pushUsedInOrder(chain: DescriptorChain): void {
    if (!this.features.inOrder) throw new TypeError('pushUsedInOrder needs VIRTIO_F_IN_ORDER');
    if (this.broken) return;
    this.skipped++;
    this.skippedHead = chain.head;
    this.skippedLen = chain.writableBytes;
  }

  /** One used element at the position of the batch's first buffer (§2.7.9). */
  private writeUsed(id: number, len: number, count: number): void {
    const off = USED_RING + (this.nextUsed & this.mask) * USED_ELEM_SIZE;
    const u = this.used32;
    if (u !== undefined) {
      // As the driver does with descriptors: an element that already holds
      // these values (the same head in the same slot, lap after lap) is not
      // rewritten, so the driver's cached copy of its line stays valid.
      const i = off >>> 2;
      if (u[i] !== id) u[i] = id;
      if (u[i + 1] !== len) u[i + 1] = len;
    } else {
      this.usedView.setUint32(off, id, true);
      this.usedView.setUint32(off + 4, len, true);
    }
    this.nextUsed = (this.nextUsed + count) & 0xffff;
  }

  publishUsed(): void {
    if (this.broken) return;
    if (this.skipped > 0) {
      this.writeUsed(this.skippedHead, this.skippedLen, this.skipped);
      this.skipped = 0;
    }
    if (this.publishedUsed === this.nextUsed) return;
    // Release: the used elements above are visible before the new idx (§2.7.14 step 4).
    Atomics.store(this.used, USED_IDX_U16, this.nextUsed);
    this.publishedUsed = this.nextUsed;
  }

  complete(chain: DescriptorChain, len: number): void {
    this.pushUsed(chain, len);
    this.publishUsed();
  }

  needsInterrupt(): boolean {
    if (this.broken) return false;
    // Atomics are sequentially consistent: the idx store above is ordered before
    // these loads, the full barrier §2.7.14 asks for before reading used_event.
    if (this.features.eventIdx) {
      const old = this.signalledUsed;
      const now = this.publishedUsed;
      const valid = this.signalledValid;
      this.signalledUsed = now;
      this.signalledValid = true;
      if (!valid) return true;
      return vringNeedEvent(Atomics.load(this.avail, this.usedEventU16), now, old);
    }
    return (Atomics.load(this.avail, AVAIL_FLAGS_U16) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  enableNotifications(): boolean {
    if (this.broken) return false;
    this.notifyEnabled = true;
    if (this.features.eventIdx) Atomics.store(this.used, this.availEventU16, this.nextAvail);
    else Atomics.store(this.used, USED_FLAGS_U16, 0);
    // Re-check after the store: a buffer the driver added before it could see
    // the store would otherwise wait for a notification that never comes.
    this.shadowAvail = Atomics.load(this.avail, AVAIL_IDX_U16);
    return this.shadowAvail !== this.nextAvail;
  }

  disableNotifications(): void {
    if (this.broken) return;
    this.notifyEnabled = false;
    if (!this.features.eventIdx) Atomics.store(this.used, USED_FLAGS_U16, VIRTQ_USED_F_NO_NOTIFY);
  }

  markBroken(error: VirtqueueError): void {
    this.broken ??= error;
  }

  state(): QueueState {
    return { nextAvail: this.nextAvail, nextUsed: this.nextUsed };
  }

  private fail(error: VirtqueueError): never {
    this.broken = error;
    throw error;
  }
}

export function checkLen(chain: DescriptorChain, len: number): void {
  // `>= 0` and `<=` are false for NaN; the fraction test last, rarely reached.
  if (!(len >= 0 && len <= chain.writableBytes && len % 1 === 0)) {
    throw new RangeError(`used length ${len} for chain ${chain.head} is not within its ${chain.writableBytes} writable bytes`);
  }
}
