/**
 * The baseline: a bare single-producer/single-consumer ring of u32 tokens in
 * a SharedArrayBuffer, with the same doorbell scheme the queues use. Each
 * side caches the other's index and re-reads it only when it seems stuck,
 * as the virtqueue code does.
 */
export const SPSC_HEADER = 4; // Int32 words: head, tail, consumerSleeping, pad

export function spscBytes(size: number): number {
  return SPSC_HEADER * 4 + size * 4;
}

export class SpscRing {
  private readonly ctl: Int32Array;
  private readonly slots: Uint32Array;
  private readonly mask: number;
  private head = 0;
  private tail = 0;
  private cachedHead = 0;
  private cachedTail = 0;

  constructor(
    sab: SharedArrayBuffer,
    offset: number,
    readonly size: number,
  ) {
    this.ctl = new Int32Array(sab, offset, SPSC_HEADER);
    this.slots = new Uint32Array(sab, offset + SPSC_HEADER * 4, size);
    this.mask = size - 1;
  }

  /** Producer: false when full. The slot write is released by the tail store. */
  push(v: number): boolean {
    if (this.tail - this.cachedHead === this.size) {
      this.cachedHead = Atomics.load(this.ctl, 0);
      if (this.tail - this.cachedHead === this.size) return false;
    }
    this.slots[this.tail & this.mask] = v;
    this.tail++;
    return true;
  }

  publish(): void {
    Atomics.store(this.ctl, 1, this.tail);
  }

  /** Producer, after publish: is the consumer asleep (so it needs a doorbell)? */
  consumerSleeping(): boolean {
    return Atomics.load(this.ctl, 2) === 1;
  }

  /** Consumer: -1 when empty. */
  pop(): number {
    if (this.head === this.cachedTail) {
      this.cachedTail = Atomics.load(this.ctl, 1);
      if (this.head === this.cachedTail) return -1;
    }
    const v = this.slots[this.head & this.mask]!;
    this.head++;
    return v;
  }

  release(): void {
    Atomics.store(this.ctl, 0, this.head);
  }

  /** Consumer: announce sleep, then re-check (true: something arrived, stay awake). */
  prepareSleep(): boolean {
    Atomics.store(this.ctl, 2, 1);
    this.cachedTail = Atomics.load(this.ctl, 1);
    if (this.head !== this.cachedTail) {
      Atomics.store(this.ctl, 2, 0);
      return true;
    }
    return false;
  }

  wake(): void {
    Atomics.store(this.ctl, 2, 0);
  }
}
