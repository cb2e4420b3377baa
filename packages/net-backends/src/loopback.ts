import { BaseNetBackend, DEFAULT_MTU, FRAME_OVERHEAD, checkMtu } from './backend.js';
import { NetBackendError } from './errors.js';
import {
  DRAIN_CORRUPT, FrameRing, SIDE_CLOSED, SIDE_NEW, SIDE_OPEN, W_CONSUMER_SLEEPING, W_CONSUMER_STATE, W_DATA_SEQ, W_PRODUCER_STATE,
  W_PRODUCER_WAITING, W_SPACE_SEQ, ringBytes,
} from './ring.js';

/** Frames handed to the receiver per drain before yielding to the event loop. */
const DRAIN_BATCH = 1024;

export interface LoopbackOptions {
  /** L3 MTU (default 1500). */
  mtu?: number;
  /** Data bytes of each direction's ring, a power of two (default 256 KiB). */
  ringBytes?: number;
}

function ringCapacity(opts: LoopbackOptions, maxFrame: number): number {
  const cap = opts.ringBytes ?? Math.max(256 * 1024, nextPow2(4 * (maxFrame + 8)));
  if (!Number.isInteger(cap) || cap <= 0 || (cap & (cap - 1)) !== 0 || cap < 2 * (maxFrame + 8)) {
    throw new NetBackendError('invalid-config', `ringBytes ${cap} must be a power of two of at least ${2 * (maxFrame + 8)}`, 'ringBytes', cap);
  }
  return cap;
}

function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/**
 * Shared by both loopbacks: frames go through a FrameRing per direction, so the
 * peer's back-pressure is real (a full ring makes `send` take fewer frames) and a
 * paused receiver simply stops draining.
 */
abstract class RingBackend extends BaseNetBackend {
  protected abstract readonly tx: FrameRing;
  protected abstract readonly rx: FrameRing;
  private readonly deliverFn = (f: Uint8Array): void => this.deliver(f);

  send(frames: readonly Uint8Array[], count = frames.length): number {
    const n = Math.min(count, frames.length);
    const s = this.stats;
    let i = 0;
    let wrote = 0;
    for (; i < n; i++) {
      const f = frames[i]!;
      if (!this.admit(f)) continue;
      if (!this.tx.tryWrite(f)) break;
      s.txPackets++;
      s.txBytes += f.length;
      wrote++;
    }
    if (wrote > 0) this.kick(this.tx.publish());
    return i;
  }

  protected override canSend(): boolean {
    return this.tx.canWriteMax();
  }

  /** Wake the peer's receiver; `asked` is whether it said it sleeps. */
  protected abstract kick(asked: boolean): void;

  /** Drains one batch; returns frames delivered, or -1 when the ring is corrupt (then closed). */
  protected drainBatch(): number {
    const n = this.rx.drain(this.deliverFn, DRAIN_BATCH);
    if (n === DRAIN_CORRUPT) {
      this.stats.rxErrors++;
      this.corruption = this.rx.corruption;
      void this.close();
      return -1;
    }
    return n;
  }

  /** Why the receive ring was abandoned, if it was. */
  corruption = '';
}

/**
 * One end of an in-process loopback pair: what one end sends, the other receives,
 * through a ring per direction, delivered from `setImmediate` (so a reply sent
 * from a handler cannot recurse).
 */
export class LoopbackBackend extends RingBackend {
  readonly kind = 'loopback';
  protected readonly tx: FrameRing;
  protected readonly rx: FrameRing;
  /** @internal */
  peer!: LoopbackBackend;
  private scheduled = false;
  private readonly run = (): void => {
    this.scheduled = false;
    this.drainSome();
  };

  /** @internal use {@link createLoopbackPair}. */
  constructor(mtu: number, tx: FrameRing, rx: FrameRing) {
    super(mtu);
    this.tx = tx;
    this.rx = rx;
  }

  protected kick(): void {
    this.peer.schedule();
  }

  /** @internal */
  schedule(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    setImmediate(this.run);
  }

  private drainSome(): void {
    if (this.paused || this.closed) return;
    const n = this.drainBatch();
    if (n > 0) this.peer.notifyWritable();
    if (n === DRAIN_BATCH_SIZE || (n > 0 && this.rx.hasData())) this.schedule();
  }

  protected override onResumed(): void {
    if (this.rx.hasData()) this.schedule();
  }

  /** @internal */
  linkChanged(up: boolean): void {
    this.setLink(up);
  }

  override notifyWritable(): void {
    super.notifyWritable();
  }

  close(): Promise<void> {
    if (!this.closed) {
      this.markClosed();
      if (!this.peer.closed) this.peer.linkChanged(false);
    }
    return Promise.resolve();
  }
}

const DRAIN_BATCH_SIZE = DRAIN_BATCH;

/** The two ends of an in-process loopback, and a switch for their shared link. */
export interface LoopbackPair {
  a: LoopbackBackend;
  b: LoopbackBackend;
  /** Sets the link state both ends see (a cable pulled and plugged back). Ignored once an end is closed. */
  setLink(up: boolean): void;
}

export function createLoopbackPair(options: LoopbackOptions = {}): LoopbackPair {
  const mtu = checkMtu(options.mtu ?? DEFAULT_MTU);
  const maxFrame = mtu + FRAME_OVERHEAD;
  const cap = ringCapacity(options, maxFrame);
  const ab = FrameRing.format(new ArrayBuffer(ringBytes(cap)), maxFrame);
  const ba = FrameRing.format(new ArrayBuffer(ringBytes(cap)), maxFrame);
  const a = new LoopbackBackend(mtu, ab, ba);
  const b = new LoopbackBackend(mtu, ba, ab);
  a.peer = b;
  b.peer = a;
  a.linkChanged(true);
  b.linkChanged(true);
  return {
    a,
    b,
    setLink(up: boolean): void {
      if (a.closed || b.closed) return;
      a.linkChanged(up);
      b.linkChanged(up);
      if (up) {
        a.schedule();
        b.schedule();
      }
    },
  };
}

/** What crosses `postMessage` to let a worker open its end of a shared loopback. */
export interface SharedLoopbackChannel {
  readonly ab: SharedArrayBuffer;
  readonly ba: SharedArrayBuffer;
  readonly mtu: number;
}

/** Allocates the two shared rings of a cross-thread loopback; each side opens its end with {@link SharedLoopbackBackend.open}. */
export function createSharedLoopback(options: LoopbackOptions = {}): SharedLoopbackChannel {
  const mtu = checkMtu(options.mtu ?? DEFAULT_MTU);
  const maxFrame = mtu + FRAME_OVERHEAD;
  const cap = ringCapacity(options, maxFrame);
  const ab = new SharedArrayBuffer(ringBytes(cap));
  const ba = new SharedArrayBuffer(ringBytes(cap));
  FrameRing.format(ab, maxFrame);
  FrameRing.format(ba, maxFrame);
  return { ab, ba, mtu };
}

/**
 * One end of a loopback across threads: two FrameRings in SharedArrayBuffers,
 * `Atomics.waitAsync` to sleep when a ring is empty (or full, for `writable()`),
 * `Atomics.notify` only when the other side said it sleeps.
 */
export class SharedLoopbackBackend extends RingBackend {
  readonly kind = 'shared-loopback';
  protected readonly tx: FrameRing;
  protected readonly rx: FrameRing;
  private resumeWake: (() => void) | undefined;
  private loop: Promise<void> | undefined;

  private constructor(mtu: number, tx: FrameRing, rx: FrameRing) {
    super(mtu);
    this.tx = tx;
    this.rx = rx;
  }

  /**
   * Opens side `a` (sends into `ab`) or `b` (sends into `ba`) of a channel, in this
   * thread. Each side opens once. The rings are validated before use: the other
   * thread is not trusted.
   */
  static open(channel: SharedLoopbackChannel, side: 'a' | 'b'): SharedLoopbackBackend {
    if (side !== 'a' && side !== 'b') throw new NetBackendError('invalid-config', `side ${String(side)} is neither 'a' nor 'b'`, 'side', side);
    const mtu = checkMtu(channel.mtu);
    const txBuf = side === 'a' ? channel.ab : channel.ba;
    const rxBuf = side === 'a' ? channel.ba : channel.ab;
    const tx = new FrameRing(txBuf);
    const rx = new FrameRing(rxBuf);
    if (tx.maxFrame !== mtu + FRAME_OVERHEAD || rx.maxFrame !== mtu + FRAME_OVERHEAD) {
      throw new NetBackendError('corrupt-ring', `ring frame limit ${tx.maxFrame}/${rx.maxFrame} disagrees with mtu ${mtu}`, 'mtu', mtu);
    }
    if (Atomics.compareExchange(tx.ctl, W_PRODUCER_STATE, SIDE_NEW, SIDE_OPEN) !== SIDE_NEW) {
      throw new NetBackendError('invalid-config', `side ${side} of this shared loopback was already opened`, 'side', side);
    }
    Atomics.store(rx.ctl, W_CONSUMER_STATE, SIDE_OPEN);
    const b = new SharedLoopbackBackend(mtu, tx, rx);
    b.refreshLink();
    // Tell the other side we are here: wake its receiver and its writer.
    b.wakeOther();
    b.loop = b.rxLoop();
    return b;
  }

  private peerOpen(): boolean {
    return Atomics.load(this.tx.ctl, W_CONSUMER_STATE) === SIDE_OPEN && Atomics.load(this.rx.ctl, W_PRODUCER_STATE) === SIDE_OPEN;
  }

  private refreshLink(): void {
    this.setLink(!this.closed && this.peerOpen());
  }

  private wakeOther(): void {
    Atomics.add(this.tx.ctl, W_DATA_SEQ, 1);
    Atomics.notify(this.tx.ctl, W_DATA_SEQ);
    Atomics.add(this.rx.ctl, W_SPACE_SEQ, 1);
    Atomics.notify(this.rx.ctl, W_SPACE_SEQ);
  }

  protected kick(asked: boolean): void {
    if (asked) Atomics.notify(this.tx.ctl, W_DATA_SEQ);
  }

  protected override onResumed(): void {
    const w = this.resumeWake;
    this.resumeWake = undefined;
    w?.();
  }

  private async rxLoop(): Promise<void> {
    const ctl = this.rx.ctl;
    let batches = 0;
    while (!this.closed) {
      if (this.paused) {
        await new Promise<void>((r) => (this.resumeWake = r));
        continue;
      }
      const n = this.drainBatch();
      if (n < 0) return;
      if (n > 0) {
        // Yield to the event loop now and then, so a flood cannot starve timers and I/O.
        if (++batches % 8 === 0) await new Promise<void>((r) => setImmediate(r));
        continue;
      }
      Atomics.store(ctl, W_CONSUMER_SLEEPING, 1);
      const seq = Atomics.load(ctl, W_DATA_SEQ);
      this.refreshLink();
      if (this.rx.hasData() || this.closed) {
        Atomics.store(ctl, W_CONSUMER_SLEEPING, 0);
        continue;
      }
      const w = Atomics.waitAsync(ctl, W_DATA_SEQ, seq);
      if (w.async) await w.value;
      Atomics.store(ctl, W_CONSUMER_SLEEPING, 0);
      this.refreshLink();
    }
  }

  override async writable(): Promise<void> {
    const ctl = this.tx.ctl;
    while (this.linkUp && !this.tx.canWriteMax()) {
      Atomics.store(ctl, W_PRODUCER_WAITING, 1);
      const seq = Atomics.load(ctl, W_SPACE_SEQ);
      if (this.tx.canWriteMax()) break;
      const w = Atomics.waitAsync(ctl, W_SPACE_SEQ, seq, 1000);
      if (w.async) await w.value;
      this.refreshLink();
    }
    Atomics.store(ctl, W_PRODUCER_WAITING, 0);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.markClosed();
    Atomics.store(this.tx.ctl, W_PRODUCER_STATE, SIDE_CLOSED);
    Atomics.store(this.rx.ctl, W_CONSUMER_STATE, SIDE_CLOSED);
    // Wake our own receiver (it waits on rx DATA_SEQ) and the other side's.
    Atomics.add(this.rx.ctl, W_DATA_SEQ, 1);
    Atomics.notify(this.rx.ctl, W_DATA_SEQ);
    this.onResumed();
    this.wakeOther();
    await this.loop;
  }
}
