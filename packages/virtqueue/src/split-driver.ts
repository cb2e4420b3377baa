import type { GuestMemory } from '@ioplane/guest-memory';
import type { BufferList } from './chain.js';
import {
  AVAIL_FLAGS,
  AVAIL_IDX,
  AVAIL_RING,
  DESC_SIZE,
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
import { type DriverOptions, type DriverQueue, type IndirectMode, type UsedBuffer, checkShare } from './driver-queue.js';
import { VirtqueueError } from './errors.js';
import { type QueueConfig, type RingFeatures, checkSize, dataViewOver, setAddr, u16Over, u32Over } from './layout.js';

const TWO_32 = 0x1_0000_0000;
const USED_RING_U32 = USED_RING / 4;

/** Writes one 16-byte split descriptor. */
function writeDesc(dv: DataView, off: number, addr: number, len: number, flags: number, next: number): void {
  setAddr(dv, off, addr);
  dv.setUint32(off + 8, len, true);
  dv.setUint16(off + 12, flags, true);
  dv.setUint16(off + 14, next, true);
}

/** The driver side of a split virtqueue (VirtIO 1.2 §2.7.13, §2.7.14). */
export class SplitDriverQueue<T = unknown> implements DriverQueue<T> {
  readonly size: number;
  readonly features: RingFeatures;
  broken: VirtqueueError | undefined;
  numFree: number;

  private readonly mask: number;
  private readonly desc: DataView;
  /** The same table as u32 words, on a little-endian host (see `u32Over`). */
  private readonly desc32: Uint32Array | undefined;
  private readonly used32: Uint32Array | undefined;
  private readonly avail: Uint16Array;
  private readonly used: Uint16Array;
  private readonly usedView: DataView;
  private readonly usedEventU16: number;
  private readonly availEventU16: number;
  private readonly indirectAddr: number;
  private readonly indirectView: DataView | undefined;
  private readonly maxIndirect: number;
  private readonly indirectMode: IndirectMode;
  private readonly indirectFrom: number;
  private readonly inOrder: boolean;
  private readonly indirectAlways: boolean;
  private readonly eventIdx: boolean;

  /** Driver-private copy of each descriptor's next link: the device cannot corrupt our free list. */
  private readonly nextOf: Uint16Array;
  /** Per head: ring descriptors its list holds; 0 when it is not the head of a list in flight. */
  private readonly descsOf: Uint16Array;
  private readonly writableOf: Float64Array;
  private readonly tokens: (T | undefined)[];
  /**
   * Free descriptors, linked through `nextOf`, taken at the head and returned
   * at the tail (as DPDK's virtio driver does): buffers completed in order are
   * reused in order, so each lands in the avail slot it had before and the
   * unchanged entry is not rewritten.
   */
  private freeHead = 0;
  private freeTail: number;
  /** IN_ORDER: descriptors are used in ring order (§2.7.5), lists retired in order. */
  private nextDesc = 0;
  private readonly order: Uint16Array;
  private orderHead = 0;
  private orderTail = 0;
  private batchLeft = 0;
  private batchLastLen = 0;

  private interruptsOn = true;
  /** What used_event holds (the driver is its only writer; with EVENT_IDX). */
  private usedEventAt = 0;
  private availIdx = 0;
  /** avail.idx as last published: the buffers the device can see. */
  private publishedIdx = 0;
  private lastKick = 0;
  private lastUsed = 0;
  private shadowUsed = 0;
  inFlight = 0;

  constructor(mem: GuestMemory, config: QueueConfig, features: RingFeatures, options: DriverOptions = {}) {
    checkSize(config.size, false);
    const size = config.size;
    this.size = size;
    this.mask = size - 1;
    this.features = features;
    const descBytes = mem.view(config.descAddr, DESC_SIZE * size, 'write');
    const availBytes = mem.view(config.driverAddr, availRingBytes(size), 'write');
    const usedBytes = mem.view(config.deviceAddr, usedRingBytes(size), 'write');
    // A new ring starts zeroed (§2.7.13: used flags 0; §2.8.13 zero-initialised).
    descBytes.fill(0);
    availBytes.fill(0);
    usedBytes.fill(0);
    this.desc = dataViewOver(descBytes);
    this.desc32 = u32Over(descBytes);
    this.avail = u16Over(availBytes);
    this.used = u16Over(usedBytes);
    this.usedView = dataViewOver(usedBytes);
    this.used32 = u32Over(usedBytes);
    this.inOrder = features.inOrder;
    this.eventIdx = features.eventIdx;
    this.usedEventU16 = (AVAIL_RING + 2 * size) / 2;
    this.availEventU16 = (USED_RING + USED_ELEM_SIZE * size) / 2;
    this.indirectAddr = options.indirectArea?.addr ?? 0;
    this.maxIndirect = options.indirectArea?.maxIndirect ?? 0;
    this.indirectMode = options.indirectArea && features.indirect ? (options.indirect ?? 'auto') : 'never';
    this.indirectAlways = this.indirectMode === 'always';
    this.indirectFrom = options.indirectFrom ?? 2;
    if (!Number.isInteger(this.indirectFrom) || this.indirectFrom < 2) throw new RangeError(`indirectFrom ${options.indirectFrom} must be an integer of at least 2`);
    if (this.indirectMode !== 'never') {
      this.indirectView = dataViewOver(mem.view(this.indirectAddr, size * this.maxIndirect * DESC_SIZE, 'write'));
    }
    this.nextOf = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.nextOf[i] = (i + 1) & this.mask;
    this.freeTail = size - 1;
    this.descsOf = new Uint16Array(size);
    this.writableOf = new Float64Array(size);
    this.tokens = new Array<T | undefined>(size).fill(undefined);
    this.order = new Uint16Array(size);
    this.numFree = size;
  }

  add(list: BufferList, token: T): boolean {
    const t = this.desc32;
    if (list.count === 1 && t !== undefined && this.numFree > 0 && this.broken === undefined && !this.indirectAlways) {
      // The common case, small enough for the JIT to inline at the caller:
      // one direct descriptor, written word by word (see `putDesc`).
      const head = this.inOrder ? this.nextDesc : this.freeHead;
      const o = head << 2;
      const addr = list.addrs[0]!;
      const lo = addr >>> 0;
      const hi = addr < TWO_32 ? 0 : (addr - lo) / TWO_32;
      const len = list.lens[0]!;
      const w3 = list.writable[0] === 1 ? VIRTQ_DESC_F_WRITE : 0;
      if (t[o] !== lo) t[o] = lo;
      if (t[o + 1] !== hi) t[o + 1] = hi;
      if (t[o + 2] !== len) t[o + 2] = len;
      if (t[o + 3] !== w3) t[o + 3] = w3;
      this.numFree--;
      if (this.inOrder) this.nextDesc = (head + 1) & this.mask;
      else this.freeHead = this.nextOf[head]!;
      this.finishAdd(head, 1, list.writableBytes, token);
      return true;
    }
    return this.addGeneral(list, token);
  }

  private addGeneral(list: BufferList, token: T): boolean {
    if (this.broken !== undefined) throw this.broken;
    const n = list.count;
    if (n === 0) throw new RangeError('a buffer list needs at least one segment (VirtIO 1.2 §2.7.13.1)');
    const indirect =
      this.indirectMode !== 'never' &&
      n <= this.maxIndirect &&
      // Short lists go direct while the ring has room for them, else indirect (one descriptor).
      (this.indirectMode === 'always' || n >= this.indirectFrom || n > this.numFree);
    const need = indirect ? 1 : n;
    if (need > this.numFree) return false;
    const head = this.inOrder ? this.nextDesc : this.freeHead;
    if (indirect) {
      const slot = head * this.maxIndirect * DESC_SIZE;
      const dv = this.indirectView!;
      for (let i = 0; i < n; i++) {
        const flags = (list.isWritable(i) ? VIRTQ_DESC_F_WRITE : 0) | (i < n - 1 ? VIRTQ_DESC_F_NEXT : 0);
        writeDesc(dv, slot + i * DESC_SIZE, list.addr(i), list.len(i), flags, i + 1 < n ? i + 1 : 0);
      }
      const table = this.indirectAddr + slot;
      this.putDesc(head, table, n * DESC_SIZE, VIRTQ_DESC_F_INDIRECT, 0);
      this.takeDescs(head, 1);
    } else {
      let d = head;
      for (let i = 0; i < n; i++) {
        const next = this.nextOf[d]!;
        const flags = (list.isWritable(i) ? VIRTQ_DESC_F_WRITE : 0) | (i < n - 1 ? VIRTQ_DESC_F_NEXT : 0);
        this.putDesc(d, list.addr(i), list.len(i), flags, i < n - 1 ? next : 0);
        if (i < n - 1) d = next;
      }
      this.takeDescs(head, n);
    }
    this.finishAdd(head, need, list.writableBytes, token);
    return true;
  }

  /** Bookkeeping for a list whose descriptors are written at `head`, and its avail entry. */
  private finishAdd(head: number, descs: number, writableBytes: number, token: T): void {
    this.descsOf[head] = descs;
    this.writableOf[head] = writableBytes;
    this.tokens[head] = token;
    if (this.inOrder) {
      this.order[this.orderTail] = head;
      this.orderTail = (this.orderTail + 1) & this.mask;
    }
    const slot = AVAIL_RING / 2 + (this.availIdx & this.mask);
    // Heads recur in the same slots (always, under IN_ORDER): an unchanged
    // entry is not rewritten, so the device's cached copy of its line stays valid.
    if (this.avail[slot] !== head) this.avail[slot] = head;
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.inFlight++;
  }

  /**
   * Writes descriptor `d`. On a little-endian host, word by word, skipping
   * words that already hold the value: a ring reused for the same buffers
   * (a driver's pooled requests, a NIC's receive buffers) then leaves the
   * table's cache lines shared with the device instead of taking them back.
   */
  private putDesc(d: number, addr: number, len: number, flags: number, next: number): void {
    const t = this.desc32;
    if (t === undefined) {
      writeDesc(this.desc, d * DESC_SIZE, addr, len, flags, next);
      return;
    }
    const o = d << 2;
    const lo = addr >>> 0;
    const hi = addr < TWO_32 ? 0 : (addr - lo) / TWO_32;
    const w3 = flags | (next << 16);
    if (t[o] !== lo) t[o] = lo;
    if (t[o + 1] !== hi) t[o + 1] = hi;
    if (t[o + 2] !== len) t[o + 2] = len;
    if (t[o + 3] !== w3) t[o + 3] = w3;
  }

  private takeDescs(head: number, n: number): void {
    this.numFree -= n;
    if (this.inOrder) {
      this.nextDesc = (head + n) & this.mask;
    } else {
      let d = head;
      for (let i = 1; i < n; i++) d = this.nextOf[d]!;
      this.freeHead = this.nextOf[d]!;
    }
  }

  publish(): void {
    // Release: descriptors and ring entries are visible before the new idx (§2.7.13.3.1).
    Atomics.store(this.avail, AVAIL_IDX / 2, this.availIdx);
    this.publishedIdx = this.availIdx;
  }

  needsNotify(): boolean {
    const old = this.lastKick;
    const now = this.availIdx;
    this.lastKick = now;
    // The idx store and these loads are sequentially consistent (§2.7.13.4's barrier).
    if (this.features.eventIdx) return vringNeedEvent(Atomics.load(this.used, this.availEventU16), now, old);
    return (Atomics.load(this.used, USED_FLAGS / 2) & VIRTQ_USED_F_NO_NOTIFY) === 0;
  }

  pollUsed(out: UsedBuffer<T>): boolean {
    const u = this.used32;
    if (this.lastUsed !== this.shadowUsed && u !== undefined && !this.inOrder && this.broken === undefined) {
      // The common case, small enough for the JIT to inline at the caller: an
      // entry already known published, for a one-descriptor chain in flight.
      const i = USED_RING_U32 + ((this.lastUsed & this.mask) << 1);
      const id = u[i]!;
      const len = u[i + 1]!;
      if (id < this.size && this.descsOf[id] === 1 && len <= this.writableOf[id]!) {
        out.token = this.tokens[id];
        out.len = len;
        this.tokens[id] = undefined;
        this.descsOf[id] = 0;
        if (this.numFree === 0) this.freeHead = id;
        else this.nextOf[this.freeTail] = id;
        this.freeTail = id;
        this.numFree++;
        this.inFlight--;
        this.lastUsed = (this.lastUsed + 1) & 0xffff;
        this.moveUsedEvent();
        return true;
      }
    }
    return this.pollUsedGeneral(out);
  }

  private pollUsedGeneral(out: UsedBuffer<T>): boolean {
    if (this.broken) throw this.broken;
    if (this.batchLeft > 0) return this.retireInOrder(out);
    if (this.lastUsed === this.shadowUsed) {
      this.shadowUsed = Atomics.load(this.used, USED_IDX / 2);
      if (this.lastUsed === this.shadowUsed) return false;
      const ahead = (this.shadowUsed - this.lastUsed) & 0xffff;
      if (ahead > this.inFlight) {
        this.fail(new VirtqueueError('used-index-ahead', `used index ${this.shadowUsed} is ${ahead} entries ahead, but only ${this.inFlight} buffers are in flight`, { value: this.shadowUsed }));
      }
    }
    const off = USED_RING + (this.lastUsed & this.mask) * USED_ELEM_SIZE;
    const u = this.used32;
    const id = u !== undefined ? u[off >>> 2]! : this.usedView.getUint32(off, true);
    const len = u !== undefined ? u[(off >>> 2) + 1]! : this.usedView.getUint32(off + 4, true);
    if (id >= this.size || this.descsOf[id] === 0) {
      this.fail(new VirtqueueError('used-id-invalid', `used entry ${this.lastUsed & this.mask} names descriptor ${id}, which is not the head of a buffer in flight`, { head: id }));
    }
    if (len > this.writableOf[id]!) {
      this.fail(new VirtqueueError('used-len-invalid', `used entry for chain ${id} says ${len} bytes were written, but it has ${this.writableOf[id]} writable bytes`, { head: id, value: len }));
    }
    if (this.inOrder) {
      // One entry may stand for a batch ending at `id` (§2.7.9): retire the
      // batch in ring order, the earlier buffers as used completely.
      let k = 1;
      let i = this.orderHead;
      while (this.order[i] !== id) {
        i = (i + 1) & this.mask;
        k++;
        if (k > this.inFlight) {
          this.fail(new VirtqueueError('used-id-invalid', `used entry names chain ${id}, which is not in flight in order`, { head: id }));
        }
      }
      this.batchLeft = k;
      this.batchLastLen = len;
      return this.retireInOrder(out);
    }
    this.retire(id, len, out);
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    this.moveUsedEvent();
    return true;
  }

  private retireInOrder(out: UsedBuffer<T>): boolean {
    const id = this.order[this.orderHead]!;
    this.orderHead = (this.orderHead + 1) & this.mask;
    this.batchLeft--;
    this.retire(id, this.batchLeft === 0 ? this.batchLastLen : this.writableOf[id]!, out);
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    this.moveUsedEvent();
    return true;
  }

  /**
   * With interrupts on, ask for one at the next used entry, as Linux's
   * virtqueue_get_buf does: otherwise an EVENT_IDX device, having crossed the
   * old used_event once, would never interrupt again. Only the last entry of
   * the batch the driver has seen needs it: the device has already published
   * past any earlier one, so `vring_need_event` could not fire on it, and each
   * store is a full barrier on a line the device reads. A used_event still
   * ahead (set by `enableInterruptsDelayed`, not yet reached) stays where it
   * is: the device will cross it, so the delay is kept.
   */
  private moveUsedEvent(): void {
    if (
      this.eventIdx &&
      this.interruptsOn &&
      this.lastUsed === this.shadowUsed &&
      this.batchLeft === 0 &&
      ((this.usedEventAt - this.lastUsed) & 0xffff) >= 0x8000
    ) {
      this.usedEventAt = this.lastUsed;
      Atomics.store(this.avail, this.usedEventU16, this.lastUsed);
    }
  }

  private retire(id: number, len: number, out: UsedBuffer<T>): void {
    out.token = this.tokens[id];
    out.len = len;
    this.tokens[id] = undefined;
    const n = this.descsOf[id]!;
    this.descsOf[id] = 0;
    if (!this.inOrder) {
      let d = id;
      for (let i = 1; i < n; i++) d = this.nextOf[d]!;
      if (this.numFree === 0) this.freeHead = id;
      else this.nextOf[this.freeTail] = id;
      this.freeTail = d;
    }
    this.numFree += n;
    this.inFlight--;
  }

  enableInterrupts(): boolean {
    this.interruptsOn = true;
    if (this.features.eventIdx) {
      // used_event already there (a driver polling between interrupts re-arms often): the store
      // would only take the line back from the device's cache. The earlier store of the same
      // value is ordered before the load below just as well.
      if (this.usedEventAt !== this.lastUsed) {
        this.usedEventAt = this.lastUsed;
        Atomics.store(this.avail, this.usedEventU16, this.lastUsed);
      }
    } else Atomics.store(this.avail, AVAIL_FLAGS / 2, 0);
    return this.batchLeft > 0 || Atomics.load(this.used, USED_IDX / 2) !== this.lastUsed;
  }

  /**
   * Linux's `virtqueue_enable_cb_delayed`: with EVENT_IDX, used_event goes
   * `share` of the published buffers still outstanding past the last used
   * entry seen, so the device interrupts once that many more have come back
   * (Linux: 3/4) instead of at the next one. The event lies before the end of
   * what is outstanding, so the last buffer to complete never goes without an
   * interrupt. Without EVENT_IDX there is nothing to delay with (§2.7.10's
   * flag is all or nothing), nor under IN_ORDER, where the device may return
   * a batch as one used entry and so never reach an index counted in buffers:
   * then it is `enableInterrupts`. Returns true if used buffers are already
   * there (take them, then call again), as `enableInterrupts` does.
   */
  enableInterruptsDelayed(share = 0.75): boolean {
    checkShare(share);
    if (!this.features.eventIdx || this.inOrder) return this.enableInterrupts();
    this.interruptsOn = true;
    const bufs = Math.floor(((this.publishedIdx - this.lastUsed) & 0xffff) * share);
    const at = (this.lastUsed + bufs) & 0xffff;
    // The store and the load below are sequentially consistent: either the device's next
    // publish reads this event, or this load sees what it published (§2.7.14's barrier).
    if (this.usedEventAt !== at) {
      this.usedEventAt = at;
      Atomics.store(this.avail, this.usedEventU16, at);
    }
    return this.batchLeft > 0 || Atomics.load(this.used, USED_IDX / 2) !== this.lastUsed;
  }

  disableInterrupts(): void {
    this.interruptsOn = false;
    if (!this.features.eventIdx) Atomics.store(this.avail, AVAIL_FLAGS / 2, VIRTQ_AVAIL_F_NO_INTERRUPT);
  }

  private fail(error: VirtqueueError): never {
    this.broken = error;
    throw error;
  }
}
