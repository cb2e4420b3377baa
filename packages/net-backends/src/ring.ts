import { NetBackendError } from './errors.js';

/*
 * A single-producer single-consumer ring of variable-length frames over an
 * ArrayBuffer or a SharedArrayBuffer (STYLE.md 3: the layout as named constants).
 *
 *   bytes 0..191   control words (Int32), the producer's and the consumer's on separate cache lines
 *   bytes 192..    data: `capacity` bytes (a power of two), records of
 *                  u32 length (host order) | frame bytes | zero padding to 4
 *                  a length of WRAP_MARKER means "continue at data offset 0"
 *
 * head and tail are free-running u32 byte counters: used = (head - tail) mod 2^32,
 * position = counter & (capacity - 1). The producer publishes head with a
 * release store after writing records; the consumer acquire-loads it (JavaScript
 * Atomics are sequentially consistent, which is stronger).
 */
export const RING_HEADER_BYTES = 192;
/** Producer cache line. */
export const W_HEAD = 0;
export const W_DATA_SEQ = 1;
export const W_CONSUMER_SLEEPING = 2;
export const W_PRODUCER_STATE = 3;
/** Consumer cache line. */
export const W_TAIL = 16;
export const W_SPACE_SEQ = 17;
export const W_PRODUCER_WAITING = 18;
export const W_CONSUMER_STATE = 19;
/** Read-only geometry. */
export const W_MAGIC = 32;
export const W_CAPACITY = 33;
export const W_MAX_FRAME = 34;
export const RING_MAGIC = 0x696f7066; // 'iopf'
export const WRAP_MARKER = 0xffffffff;
/** Side states in W_PRODUCER_STATE / W_CONSUMER_STATE. */
export const SIDE_NEW = 0;
export const SIDE_OPEN = 1;
export const SIDE_CLOSED = 2;

function pad4(n: number): number {
  return (n + 3) & ~3;
}

/** Bytes a ring of `capacity` data bytes needs. */
export function ringBytes(capacity: number): number {
  return RING_HEADER_BYTES + capacity;
}

/** The ring's result codes for a drain. */
export const DRAIN_OK = 0;
export const DRAIN_CORRUPT = -1;

export class FrameRing {
  readonly ctl: Int32Array;
  readonly data: Uint8Array;
  private readonly words: Uint32Array;
  readonly capacity: number;
  readonly maxFrame: number;
  private readonly mask: number;
  /** Producer-local: head not yet published, and the last tail seen. */
  private pHead = 0;
  private pTail = 0;
  /** Consumer-local. */
  private cTail = 0;
  /** Why the last drain stopped, for error messages. */
  corruption = '';

  /** Formats a new ring in `buffer` (all zero) for frames up to `maxFrame` bytes. */
  static format(buffer: ArrayBuffer | SharedArrayBuffer, maxFrame: number): FrameRing {
    const capacity = buffer.byteLength - RING_HEADER_BYTES;
    if (capacity <= 0 || (capacity & (capacity - 1)) !== 0 || capacity < 2 * (maxFrame + 8)) {
      throw new NetBackendError('invalid-config', `ring data area ${capacity} is not a power of two of at least two ${maxFrame}-byte frames`, 'capacity', capacity);
    }
    const ctl = new Int32Array(buffer, 0, RING_HEADER_BYTES / 4);
    ctl[W_CAPACITY] = capacity;
    ctl[W_MAX_FRAME] = maxFrame;
    Atomics.store(ctl, W_MAGIC, RING_MAGIC);
    return new FrameRing(buffer);
  }

  /** Attaches to a formatted ring (possibly formatted by another thread); validates its geometry once. */
  constructor(buffer: ArrayBuffer | SharedArrayBuffer) {
    if (buffer.byteLength < RING_HEADER_BYTES) throw new NetBackendError('corrupt-ring', `ring buffer of ${buffer.byteLength} bytes is smaller than its header`, 'byteLength', buffer.byteLength);
    this.ctl = new Int32Array(buffer, 0, RING_HEADER_BYTES / 4);
    const capacity = this.ctl[W_CAPACITY]!;
    const maxFrame = this.ctl[W_MAX_FRAME]!;
    if (Atomics.load(this.ctl, W_MAGIC) !== RING_MAGIC || capacity !== buffer.byteLength - RING_HEADER_BYTES || (capacity & (capacity - 1)) !== 0 ||
        maxFrame < 14 || capacity < 2 * (maxFrame + 8)) {
      throw new NetBackendError('corrupt-ring', `ring header does not describe this ${buffer.byteLength}-byte buffer`, 'capacity', capacity);
    }
    this.capacity = capacity;
    this.maxFrame = maxFrame;
    this.mask = capacity - 1;
    this.data = new Uint8Array(buffer, RING_HEADER_BYTES, capacity);
    this.words = new Uint32Array(buffer, RING_HEADER_BYTES, capacity / 4);
    this.pHead = Atomics.load(this.ctl, W_HEAD) >>> 0;
    this.pTail = Atomics.load(this.ctl, W_TAIL) >>> 0;
    this.cTail = this.pTail;
  }

  // ---- producer side ----

  /** Free bytes as the producer sees them (refreshing the consumer's tail). */
  freeBytes(): number {
    this.pTail = Atomics.load(this.ctl, W_TAIL) >>> 0;
    return this.capacity - ((this.pHead - this.pTail) >>> 0);
  }

  /** True when a frame of `maxFrame` bytes would fit now. */
  canWriteMax(): boolean {
    return this.freeBytes() >= 2 * (this.maxFrame + 8);
  }

  /**
   * Writes one frame (not yet visible to the consumer; see `publish`). Returns
   * false when the ring is full. The caller checked the length.
   */
  tryWrite(frame: Uint8Array): boolean {
    const len = frame.length;
    const need = 4 + pad4(len);
    let pos = this.pHead & this.mask;
    const contiguous = this.capacity - pos;
    const total = need > contiguous ? need + contiguous : need;
    let free = this.capacity - ((this.pHead - this.pTail) >>> 0);
    if (free < total) {
      this.pTail = Atomics.load(this.ctl, W_TAIL) >>> 0;
      free = this.capacity - ((this.pHead - this.pTail) >>> 0);
      if (free < total) return false;
    }
    if (need > contiguous) {
      this.words[pos >>> 2] = WRAP_MARKER;
      this.pHead = (this.pHead + contiguous) >>> 0;
      pos = 0;
    }
    this.words[pos >>> 2] = len;
    this.data.set(frame, pos + 4);
    this.pHead = (this.pHead + need) >>> 0;
    return true;
  }

  /** Makes the written frames visible; returns true when the consumer asked to be woken. */
  publish(): boolean {
    Atomics.store(this.ctl, W_HEAD, this.pHead | 0);
    Atomics.add(this.ctl, W_DATA_SEQ, 1);
    return Atomics.load(this.ctl, W_CONSUMER_SLEEPING) !== 0;
  }

  // ---- consumer side ----

  /** True when frames are waiting. */
  hasData(): boolean {
    return (Atomics.load(this.ctl, W_HEAD) >>> 0) !== this.cTail;
  }

  /**
   * Hands up to `max` frames to `fn` (a zero-copy view valid during the call) and
   * frees their space. Returns the number delivered, or DRAIN_CORRUPT when the
   * producer wrote something inconsistent (the ring is then unusable).
   */
  drain(fn: (frame: Uint8Array) => void, max: number): number {
    const head = Atomics.load(this.ctl, W_HEAD) >>> 0;
    let tail = this.cTail;
    const used = (head - tail) >>> 0;
    if (used > this.capacity) {
      this.corruption = `head ${head} is ${used} bytes past tail ${tail}, more than the ${this.capacity}-byte ring`;
      return DRAIN_CORRUPT;
    }
    let n = 0;
    // Bounded: every record advances tail by at least 4 bytes and we stop at head or max.
    while (tail !== head && n < max) {
      const pos = tail & this.mask;
      const len = this.words[pos >>> 2]!;
      if (len === WRAP_MARKER) {
        const skip = this.capacity - pos;
        if (((head - tail) >>> 0) < skip) {
          this.corruption = `wrap marker at ${pos} runs past head`;
          return DRAIN_CORRUPT;
        }
        tail = (tail + skip) >>> 0;
        continue;
      }
      const need = 4 + pad4(len);
      if (len > this.maxFrame || pos + need > this.capacity || ((head - tail) >>> 0) < need) {
        this.corruption = `record of ${len} bytes at ${pos} does not fit (max frame ${this.maxFrame}, ${(head - tail) >>> 0} bytes published)`;
        return DRAIN_CORRUPT;
      }
      fn(this.data.subarray(pos + 4, pos + 4 + len));
      tail = (tail + need) >>> 0;
      n++;
      if ((n & 63) === 0) this.release(tail);
    }
    if (tail !== this.cTail) this.release(tail);
    return n;
  }

  private release(tail: number): void {
    this.cTail = tail;
    Atomics.store(this.ctl, W_TAIL, tail | 0);
    Atomics.add(this.ctl, W_SPACE_SEQ, 1);
    if (Atomics.load(this.ctl, W_PRODUCER_WAITING) !== 0) Atomics.notify(this.ctl, W_SPACE_SEQ);
  }
}
