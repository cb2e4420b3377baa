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
import type { DriverOptions, DriverQueue, IndirectMode, UsedBuffer } from './driver-queue.js';
import { VirtqueueError } from './errors.js';
import { type QueueConfig, type RingFeatures, checkSize, dataViewOver, setAddr, u16Over } from './layout.js';

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
  private readonly avail: Uint16Array;
  private readonly used: Uint16Array;
  private readonly usedView: DataView;
  private readonly usedEventU16: number;
  private readonly availEventU16: number;
  private readonly indirectAddr: number;
  private readonly indirectView: DataView | undefined;
  private readonly maxIndirect: number;
  private readonly indirectMode: IndirectMode;

  /** Driver-private copy of each descriptor's next link: the device cannot corrupt our free list. */
  private readonly nextOf: Uint16Array;
  private readonly descsOf: Uint16Array;
  private readonly writableOf: Float64Array;
  private readonly tokens: (T | undefined)[];
  private readonly live: Uint8Array;
  private freeHead = 0;
  /** IN_ORDER: descriptors are used in ring order (§2.7.5), lists retired in order. */
  private nextDesc = 0;
  private readonly order: Uint16Array;
  private orderHead = 0;
  private orderTail = 0;
  private batchLeft = 0;
  private batchLastLen = 0;

  private availIdx = 0;
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
    this.avail = u16Over(availBytes);
    this.used = u16Over(usedBytes);
    this.usedView = dataViewOver(usedBytes);
    this.usedEventU16 = (AVAIL_RING + 2 * size) / 2;
    this.availEventU16 = (USED_RING + USED_ELEM_SIZE * size) / 2;
    this.indirectAddr = options.indirectArea?.addr ?? 0;
    this.maxIndirect = options.indirectArea?.maxIndirect ?? 0;
    this.indirectMode = options.indirectArea && features.indirect ? (options.indirect ?? 'auto') : 'never';
    if (this.indirectMode !== 'never') {
      this.indirectView = dataViewOver(mem.view(this.indirectAddr, size * this.maxIndirect * DESC_SIZE, 'write'));
    }
    this.nextOf = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.nextOf[i] = (i + 1) & this.mask;
    this.descsOf = new Uint16Array(size);
    this.writableOf = new Float64Array(size);
    this.tokens = new Array<T | undefined>(size).fill(undefined);
    this.live = new Uint8Array(size);
    this.order = new Uint16Array(size);
    this.numFree = size;
  }

  add(list: BufferList, token: T): boolean {
    if (this.broken) throw this.broken;
    const n = list.count;
    if (n === 0) throw new RangeError('a buffer list needs at least one segment (VirtIO 1.2 §2.7.13.1)');
    const indirect =
      this.indirectMode !== 'never' && n <= this.maxIndirect && (this.indirectMode === 'always' || n > 1);
    const need = indirect ? 1 : n;
    if (need > this.numFree) return false;
    const head = this.features.inOrder ? this.nextDesc : this.freeHead;
    if (indirect) {
      const slot = head * this.maxIndirect * DESC_SIZE;
      const dv = this.indirectView!;
      for (let i = 0; i < n; i++) {
        const flags = (list.isWritable(i) ? VIRTQ_DESC_F_WRITE : 0) | (i < n - 1 ? VIRTQ_DESC_F_NEXT : 0);
        writeDesc(dv, slot + i * DESC_SIZE, list.addr(i), list.len(i), flags, i + 1 < n ? i + 1 : 0);
      }
      const table = this.indirectAddr + slot;
      writeDesc(this.desc, head * DESC_SIZE, table, n * DESC_SIZE, VIRTQ_DESC_F_INDIRECT, 0);
      this.takeDescs(head, 1);
    } else {
      let d = head;
      for (let i = 0; i < n; i++) {
        const next = this.nextOf[d]!;
        const flags = (list.isWritable(i) ? VIRTQ_DESC_F_WRITE : 0) | (i < n - 1 ? VIRTQ_DESC_F_NEXT : 0);
        writeDesc(this.desc, d * DESC_SIZE, list.addr(i), list.len(i), flags, i < n - 1 ? next : 0);
        if (i < n - 1) d = next;
      }
      this.takeDescs(head, n);
    }
    this.descsOf[head] = need;
    this.writableOf[head] = list.writableBytes;
    this.tokens[head] = token;
    this.live[head] = 1;
    if (this.features.inOrder) {
      this.order[this.orderTail] = head;
      this.orderTail = (this.orderTail + 1) & this.mask;
    }
    this.avail[AVAIL_RING / 2 + (this.availIdx & this.mask)] = head;
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.inFlight++;
    return true;
  }

  private takeDescs(head: number, n: number): void {
    this.numFree -= n;
    if (this.features.inOrder) {
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
    const id = this.usedView.getUint32(off, true);
    const len = this.usedView.getUint32(off + 4, true);
    if (id >= this.size || this.live[id] !== 1) {
      this.fail(new VirtqueueError('used-id-invalid', `used entry ${this.lastUsed & this.mask} names descriptor ${id}, which is not the head of a buffer in flight`, { head: id }));
    }
    if (len > this.writableOf[id]!) {
      this.fail(new VirtqueueError('used-len-invalid', `used entry for chain ${id} says ${len} bytes were written, but it has ${this.writableOf[id]} writable bytes`, { head: id, value: len }));
    }
    if (this.features.inOrder) {
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
    return true;
  }

  private retireInOrder(out: UsedBuffer<T>): boolean {
    const id = this.order[this.orderHead]!;
    this.orderHead = (this.orderHead + 1) & this.mask;
    this.batchLeft--;
    this.retire(id, this.batchLeft === 0 ? this.batchLastLen : this.writableOf[id]!, out);
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    return true;
  }

  private retire(id: number, len: number, out: UsedBuffer<T>): void {
    out.token = this.tokens[id];
    out.len = len;
    this.tokens[id] = undefined;
    this.live[id] = 0;
    const n = this.descsOf[id]!;
    if (!this.features.inOrder) {
      let d = id;
      for (let i = 1; i < n; i++) d = this.nextOf[d]!;
      this.nextOf[d] = this.freeHead;
      this.freeHead = id;
    }
    this.numFree += n;
    this.inFlight--;
  }

  enableInterrupts(): boolean {
    if (this.features.eventIdx) Atomics.store(this.avail, this.usedEventU16, this.lastUsed);
    else Atomics.store(this.avail, AVAIL_FLAGS / 2, 0);
    return this.batchLeft > 0 || Atomics.load(this.used, USED_IDX / 2) !== this.lastUsed;
  }

  disableInterrupts(): void {
    if (!this.features.eventIdx) Atomics.store(this.avail, AVAIL_FLAGS / 2, VIRTQ_AVAIL_F_NO_INTERRUPT);
  }

  private fail(error: VirtqueueError): never {
    this.broken = error;
    throw error;
  }
}
