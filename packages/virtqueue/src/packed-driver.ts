import type { GuestMemory } from '@ioplane/guest-memory';
import type { BufferList } from './chain.js';
import {
  DESC_SIZE,
  EVENT_SUPPRESS_BYTES,
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
import { type DriverOptions, type DriverQueue, type IndirectMode, type UsedBuffer, checkShare } from './driver-queue.js';
import { VirtqueueError } from './errors.js';
import { type QueueConfig, type RingFeatures, checkSize, dataViewOver, setAddr, u16Over, u32Over } from './layout.js';

const TWO_32 = 0x1_0000_0000;

const FLAGS_U16 = 7;

function writeFields(dv: DataView, off: number, addr: number, len: number, id: number): void {
  setAddr(dv, off, addr);
  dv.setUint32(off + 8, len, true);
  dv.setUint16(off + 12, id, true);
}

/** The driver side of a packed virtqueue (VirtIO 1.2 §2.8.21, §2.8.22). */
export class PackedDriverQueue<T = unknown> implements DriverQueue<T> {
  readonly size: number;
  readonly features: RingFeatures;
  broken: VirtqueueError | undefined;
  numFree: number;
  inFlight = 0;

  private readonly desc: DataView;
  private readonly descU16: Uint16Array;
  /** The same ring as u32 words, on a little-endian host (see `u32Over`). */
  private readonly desc32: Uint32Array | undefined;
  private readonly indirectAlways: boolean;
  private readonly driverEvent: Uint16Array;
  private readonly deviceEvent: Uint16Array;
  private readonly indirectAddr: number;
  private readonly indirectView: DataView | undefined;
  private readonly maxIndirect: number;
  private readonly indirectMode: IndirectMode;
  private readonly indirectFrom: number;

  private interruptsOn = true;
  /** Used ring positions between nextUsed and a used event set ahead by `enableInterruptsDelayed`. */
  private eventAhead = 0;
  private nextAvail = 0;
  private availWrap = 1;
  private nextUsed = 0;
  private usedWrap = 1;
  private added = 0;
  /** Free Buffer IDs (a stack), and per ID: ring descriptors, writable bytes, token. */
  private readonly freeIds: Uint16Array;
  private freeCount: number;
  private readonly descsOf: Uint16Array;
  private readonly writableOf: Float64Array;
  private readonly tokens: (T | undefined)[];
  private readonly live: Uint8Array;
  /** IN_ORDER: IDs in the order made available, for batched used descriptors (§2.8.8). */
  private readonly order: Uint16Array;
  private orderHead = 0;
  private orderTail = 0;
  private batchLeft = 0;
  private batchLastLen = 0;
  private batchDescs = 0;

  constructor(mem: GuestMemory, config: QueueConfig, features: RingFeatures, options: DriverOptions = {}) {
    checkSize(config.size, true);
    const size = config.size;
    this.size = size;
    this.features = features;
    const ring = mem.view(config.descAddr, DESC_SIZE * size, 'write');
    const drv = mem.view(config.driverAddr, EVENT_SUPPRESS_BYTES, 'write');
    const dev = mem.view(config.deviceAddr, EVENT_SUPPRESS_BYTES, 'write');
    ring.fill(0);
    drv.fill(0);
    dev.fill(0);
    this.desc = dataViewOver(ring);
    this.descU16 = u16Over(ring);
    this.desc32 = u32Over(ring);
    this.driverEvent = u16Over(drv);
    this.deviceEvent = u16Over(dev);
    this.indirectAddr = options.indirectArea?.addr ?? 0;
    this.maxIndirect = options.indirectArea?.maxIndirect ?? 0;
    this.indirectMode = options.indirectArea && features.indirect ? (options.indirect ?? 'auto') : 'never';
    this.indirectAlways = this.indirectMode === 'always';
    this.indirectFrom = options.indirectFrom ?? 2;
    if (!Number.isInteger(this.indirectFrom) || this.indirectFrom < 2) throw new RangeError(`indirectFrom ${options.indirectFrom} must be an integer of at least 2`);
    if (this.indirectMode !== 'never') {
      this.indirectView = dataViewOver(mem.view(this.indirectAddr, size * this.maxIndirect * DESC_SIZE, 'write'));
    }
    this.freeIds = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.freeIds[i] = size - 1 - i;
    this.freeCount = size;
    this.descsOf = new Uint16Array(size);
    this.writableOf = new Float64Array(size);
    this.tokens = new Array<T | undefined>(size).fill(undefined);
    this.live = new Uint8Array(size);
    this.order = new Uint16Array(size);
    this.numFree = size;
  }

  add(list: BufferList, token: T): boolean {
    const t = this.desc32;
    if (list.count === 1 && t !== undefined && this.numFree > 0 && this.freeCount > 0 && this.broken === undefined && !this.indirectAlways) {
      // The common case, small enough for the JIT to inline at the caller: one direct descriptor.
      const id = this.freeIds[--this.freeCount]!;
      const pos = this.nextAvail;
      const o = pos << 2;
      const addr = list.addrs[0]!;
      const lo = addr >>> 0;
      t[o] = lo;
      t[o + 1] = addr < TWO_32 ? 0 : (addr - lo) / TWO_32;
      t[o + 2] = list.lens[0]!;
      this.descU16[pos * 8 + 6] = id;
      const flags = (list.writable[0] === 1 ? VIRTQ_DESC_F_WRITE : 0) | (this.availWrap === 1 ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED);
      this.advance(1);
      // Release: the fields above are visible before the flags that make them available (§2.8.21.1).
      Atomics.store(this.descU16, pos * 8 + FLAGS_U16, flags);
      this.numFree--;
      this.added++;
      this.track(id, 1, list.writableBytes, token);
      return true;
    }
    return this.addGeneral(list, token);
  }

  private addGeneral(list: BufferList, token: T): boolean {
    if (this.broken) throw this.broken;
    const n = list.count;
    if (n === 0) throw new RangeError('a buffer list needs at least one segment (VirtIO 1.2 §2.8)');
    const indirect =
      this.indirectMode !== 'never' &&
      n <= this.maxIndirect &&
      // Short lists go direct while the ring has room for them, else indirect (one descriptor).
      (this.indirectMode === 'always' || n >= this.indirectFrom || n > this.numFree);
    const need = indirect ? 1 : n;
    if (need > this.numFree || this.freeCount === 0) return false;
    const id = this.freeIds[--this.freeCount]!;
    const first = this.nextAvail;
    const wrapBits = this.availWrap === 1 ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
    let headFlags: number;
    if (indirect) {
      const slot = id * this.maxIndirect * DESC_SIZE;
      const dv = this.indirectView!;
      for (let i = 0; i < n; i++) {
        writeFields(dv, slot + i * DESC_SIZE, list.addr(i), list.len(i), 0);
        dv.setUint16(slot + i * DESC_SIZE + 14, list.isWritable(i) ? VIRTQ_DESC_F_WRITE : 0, true);
      }
      writeFields(this.desc, first * DESC_SIZE, this.indirectAddr + slot, n * DESC_SIZE, id);
      headFlags = VIRTQ_DESC_F_INDIRECT | wrapBits;
      this.advance(1);
    } else {
      headFlags = 0;
      for (let i = 0; i < n; i++) {
        const pos = this.nextAvail;
        const flags =
          (list.isWritable(i) ? VIRTQ_DESC_F_WRITE : 0) |
          (i < n - 1 ? VIRTQ_DESC_F_NEXT : 0) |
          (this.availWrap === 1 ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED);
        // Buffer ID belongs in the last descriptor; writing it in all is allowed.
        writeFields(this.desc, pos * DESC_SIZE, list.addr(i), list.len(i), id);
        if (i === 0) headFlags = flags;
        else this.desc.setUint16(pos * DESC_SIZE + 14, flags, true);
        this.advance(1);
      }
    }
    // Release: the first descriptor is made available last (§2.8.6, §2.8.21.1).
    Atomics.store(this.descU16, first * 8 + FLAGS_U16, headFlags);
    this.numFree -= need;
    this.added += need;
    this.track(id, need, list.writableBytes, token);
    return true;
  }

  /** Bookkeeping for a list made available under Buffer ID `id`. */
  private track(id: number, descs: number, writableBytes: number, token: T): void {
    this.descsOf[id] = descs;
    this.writableOf[id] = writableBytes;
    this.tokens[id] = token;
    this.live[id] = 1;
    if (this.features.inOrder) {
      this.order[this.orderTail] = id;
      this.orderTail = (this.orderTail + 1) % this.size;
    }
    this.inFlight++;
  }

  private advance(n: number): void {
    this.nextAvail += n;
    if (this.nextAvail >= this.size) {
      this.nextAvail -= this.size;
      this.availWrap ^= 1;
    }
  }

  publish(): void {
    // Each add() already exposed its list with a release store of the head flags.
  }

  needsNotify(): boolean {
    const added = this.added;
    this.added = 0;
    const flags = Atomics.load(this.deviceEvent, 1) & 3;
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (flags !== RING_EVENT_FLAGS_DESC || !this.features.eventIdx) return true;
    const offWrap = Atomics.load(this.deviceEvent, 0);
    let event = offWrap & 0x7fff;
    if (offWrap >> 15 !== this.availWrap) event -= this.size;
    const now = this.nextAvail;
    return vringNeedEvent(event & 0xffff, now, (now - added) & 0xffff);
  }

  pollUsed(out: UsedBuffer<T>): boolean {
    if (this.broken) throw this.broken;
    if (this.batchLeft > 0) return this.retireInOrder(out);
    const flags = Atomics.load(this.descU16, this.nextUsed * 8 + FLAGS_U16);
    const used = (flags & VIRTQ_DESC_F_USED) !== 0 ? 1 : 0;
    const avail = (flags & VIRTQ_DESC_F_AVAIL) !== 0 ? 1 : 0;
    if (used !== this.usedWrap || avail !== used) return false;
    const off = this.nextUsed * DESC_SIZE;
    const id = this.desc.getUint16(off + 12, true);
    // Element Length is reserved in used descriptors without WRITE (§2.8.4).
    const len = (flags & VIRTQ_DESC_F_WRITE) !== 0 ? this.desc.getUint32(off + 8, true) : 0;
    if (id >= this.size || this.live[id] !== 1) {
      this.fail(new VirtqueueError('used-id-invalid', `used descriptor at ring position ${this.nextUsed} names Buffer ID ${id}, which is not in flight`, { head: id }));
    }
    if (len > this.writableOf[id]!) {
      this.fail(new VirtqueueError('used-len-invalid', `used descriptor for Buffer ID ${id} says ${len} bytes were written, but it has ${this.writableOf[id]} writable bytes`, { head: id, value: len }));
    }
    if (this.features.inOrder) {
      let k = 1;
      let descs = this.descsOf[this.order[this.orderHead]!]!;
      let i = this.orderHead;
      while (this.order[i] !== id) {
        i = (i + 1) % this.size;
        k++;
        if (k > this.inFlight) {
          this.fail(new VirtqueueError('used-id-invalid', `used descriptor names Buffer ID ${id}, which is not in flight in order`, { head: id }));
        }
        descs += this.descsOf[this.order[i]!]!;
      }
      this.batchLeft = k;
      this.batchLastLen = len;
      this.batchDescs = descs;
      return this.retireInOrder(out);
    }
    this.retire(id, len, out);
    this.skipUsed(this.descsOf[id]!);
    return true;
  }

  private retireInOrder(out: UsedBuffer<T>): boolean {
    const id = this.order[this.orderHead]!;
    this.orderHead = (this.orderHead + 1) % this.size;
    this.batchLeft--;
    this.retire(id, this.batchLeft === 0 ? this.batchLastLen : this.writableOf[id]!, out);
    if (this.batchLeft === 0) this.skipUsed(this.batchDescs);
    return true;
  }

  private skipUsed(n: number): void {
    this.nextUsed += n;
    if (this.nextUsed >= this.size) {
      this.nextUsed -= this.size;
      this.usedWrap ^= 1;
    }
    // As Linux's virtqueue_get_buf_ctx_packed: keep asking for the next used descriptor,
    // unless a delayed event (`enableInterruptsDelayed`) is still ahead: the device will reach it.
    if (this.eventAhead >= n) this.eventAhead -= n;
    else if (this.features.eventIdx && this.interruptsOn) {
      this.eventAhead = 0;
      Atomics.store(this.driverEvent, 0, this.nextUsed | (this.usedWrap << 15));
    }
  }

  private retire(id: number, len: number, out: UsedBuffer<T>): void {
    out.token = this.tokens[id];
    out.len = len;
    this.tokens[id] = undefined;
    this.live[id] = 0;
    this.numFree += this.descsOf[id]!;
    this.freeIds[this.freeCount++] = id;
    this.inFlight--;
  }

  enableInterrupts(): boolean {
    this.interruptsOn = true;
    this.eventAhead = 0;
    if (this.features.eventIdx) {
      Atomics.store(this.driverEvent, 0, this.nextUsed | (this.usedWrap << 15));
      Atomics.store(this.driverEvent, 1, RING_EVENT_FLAGS_DESC);
    } else {
      Atomics.store(this.driverEvent, 1, RING_EVENT_FLAGS_ENABLE);
    }
    return this.usedWaiting();
  }

  /**
   * Linux's `virtqueue_enable_cb_delayed_packed`: with EVENT_IDX the driver
   * event (off_wrap, §2.8.10) goes `share` of the ring descriptors
   * outstanding past the next used position, so the device interrupts once
   * it has used that many more instead of at the next one. Positions advance
   * by every descriptor of a used chain (and of an IN_ORDER batch, §2.8.8),
   * so an event before the end of what is outstanding is always crossed:
   * the last buffer to complete never goes without an interrupt. Without
   * EVENT_IDX it is `enableInterrupts`. Returns true if a used descriptor is
   * already there (take it, then call again).
   */
  enableInterruptsDelayed(share = 0.75): boolean {
    checkShare(share);
    if (!this.features.eventIdx) return this.enableInterrupts();
    this.interruptsOn = true;
    const bufs = Math.floor((this.size - this.numFree) * share);
    let pos = this.nextUsed + bufs;
    let wrap = this.usedWrap;
    if (pos >= this.size) {
      pos -= this.size;
      wrap ^= 1;
    }
    this.eventAhead = bufs;
    Atomics.store(this.driverEvent, 0, pos | (wrap << 15));
    Atomics.store(this.driverEvent, 1, RING_EVENT_FLAGS_DESC);
    return this.usedWaiting();
  }

  /** After storing an event (sequentially consistent): is a used descriptor already at nextUsed? */
  private usedWaiting(): boolean {
    if (this.batchLeft > 0) return true;
    const flags = Atomics.load(this.descU16, this.nextUsed * 8 + FLAGS_U16);
    const used = (flags & VIRTQ_DESC_F_USED) !== 0 ? 1 : 0;
    const avail = (flags & VIRTQ_DESC_F_AVAIL) !== 0 ? 1 : 0;
    return used === this.usedWrap && avail === used;
  }

  disableInterrupts(): void {
    this.interruptsOn = false;
    Atomics.store(this.driverEvent, 1, RING_EVENT_FLAGS_DISABLE);
  }

  private fail(error: VirtqueueError): never {
    this.broken = error;
    throw error;
  }
}
