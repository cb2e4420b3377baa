import { NetBackendError } from './errors.js';

/** Counters every back-end keeps (as `ip -s link` shows them). */
export interface NetStats {
  /** Frames handed to the receiver (or held for it while paused). */
  rxPackets: number;
  rxBytes: number;
  /** Frames lost on receive: no receiver, the hold queue full, a foreign sender. */
  rxDrops: number;
  /** Frames received malformed: runts, oversize, a bad encapsulation. */
  rxErrors: number;
  /** Frames sent (handed to the peer or the kernel). */
  txPackets: number;
  txBytes: number;
  /** Frames dropped on send: link down, no route (an unknown VXLAN destination with no flood list). */
  txDrops: number;
  /** Frames refused on send: runts, oversize, a failed system call. */
  txErrors: number;
}

/** Called once per received frame. The bytes are valid only during the call: copy to keep them. */
export type FrameHandler = (frame: Uint8Array) => void;

export interface FramesOptions {
  /** Frames held by the iterator before it pauses the back-end (default 64). */
  highWaterMark?: number;
  /** Ends the iteration. */
  signal?: AbortSignal;
}

/**
 * A network back-end: frames in, frames out, batched. Frames are Ethernet frames
 * without FCS, from 14 bytes to `maxFrameSize` (the MTU plus an Ethernet header
 * and two VLAN tags).
 */
export interface NetBackend {
  /** What this is: `loopback`, `shared-loopback`, `udp`, `vxlan`, `tap`, `capture(…)`. */
  readonly kind: string;
  /** The L3 MTU: the largest IP packet a frame carries (default 1500). */
  readonly mtu: number;
  /** `mtu + 14 + 8`: the largest frame accepted, with room for two VLAN tags. */
  readonly maxFrameSize: number;
  readonly linkUp: boolean;
  /** True once `close()` was called. */
  readonly closed: boolean;
  /** Live counters. */
  readonly stats: Readonly<NetStats>;
  /**
   * Sends `frames[0, count)`. Returns how many frames from the start were taken:
   * sent, or dropped and counted (link down, runt, oversize). Frames not taken
   * were refused for back-pressure: retry them after `await writable()`. The
   * caller may reuse every taken frame's buffer as soon as `send` returns.
   */
  send(frames: readonly Uint8Array[], count?: number): number;
  /** Resolves when `send` can take at least one frame (or the link is down). */
  writable(): Promise<void>;
  /** Sets (or clears, with null) the receive callback. Without one, received frames are dropped and counted. */
  onReceive(handler: FrameHandler | null): void;
  /**
   * Stops delivering frames. Back-ends with a peer that can wait (loopback) stop
   * draining, so the peer's `send` takes fewer frames; the others hold a bounded
   * queue and then drop and count.
   */
  pause(): void;
  resume(): void;
  readonly paused: boolean;
  /** Receives frames as an async iterator (copies), pausing the back-end while the consumer lags. */
  frames(options?: FramesOptions): AsyncIterableIterator<Uint8Array>;
  /** Calls `listener` on every link change; returns the unsubscribe function. */
  onLinkChange(listener: (up: boolean) => void): () => void;
  /** Closes the back-end: the link goes down, iterators end, resources are freed. Idempotent. */
  close(): Promise<void>;
}

/** Bytes of an Ethernet header plus two VLAN tags, added to the MTU to get the largest frame. */
export const FRAME_OVERHEAD = 14 + 8;
/** The shortest frame accepted: an Ethernet header. */
export const MIN_FRAME = 14;
export const DEFAULT_MTU = 1500;
/** The largest MTU accepted (an IPv4 total length is 16 bits). */
export const MAX_MTU = 65535 - FRAME_OVERHEAD;

export function checkMtu(mtu: number): number {
  if (!Number.isInteger(mtu) || mtu < 68 || mtu > MAX_MTU) {
    // RFC 791: every internet module must be able to forward a datagram of 68 octets.
    throw new NetBackendError('invalid-config', `mtu ${mtu} is outside 68..${MAX_MTU}`, 'mtu', mtu);
  }
  return mtu;
}

export function newStats(): NetStats {
  return { rxPackets: 0, rxBytes: 0, rxDrops: 0, rxErrors: 0, txPackets: 0, txBytes: 0, txDrops: 0, txErrors: 0 };
}

/**
 * The receive side of any back-end as an async iterator: copies each frame into a
 * bounded queue and pauses the back-end at `highWaterMark`, resuming at half.
 */
export async function* receiveFrames(backend: NetBackend, options: FramesOptions = {}): AsyncIterableIterator<Uint8Array> {
  const hwm = options.highWaterMark ?? 64;
  if (!Number.isInteger(hwm) || hwm < 1) throw new NetBackendError('invalid-config', `highWaterMark ${hwm} is not a positive integer`, 'highWaterMark', hwm);
  const queue: Uint8Array[] = [];
  let head = 0;
  let wake: (() => void) | undefined;
  const poke = (): void => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  let pausedByUs = false;
  backend.onReceive((frame) => {
    queue.push(frame.slice());
    if (!pausedByUs && queue.length - head >= hwm) {
      pausedByUs = true;
      backend.pause();
    }
    poke();
  });
  const offLink = backend.onLinkChange(poke);
  options.signal?.addEventListener('abort', poke, { once: true });
  try {
    for (;;) {
      if (head < queue.length) {
        const f = queue[head++]!;
        if (head > 1024 && head * 2 > queue.length) {
          queue.splice(0, head);
          head = 0;
        }
        if (pausedByUs && queue.length - head <= hwm >> 1) {
          pausedByUs = false;
          backend.resume();
        }
        yield f;
        continue;
      }
      if (options.signal?.aborted || backend.closed) return;
      await new Promise<void>((r) => (wake = r));
    }
  } finally {
    backend.onReceive(null);
    offLink();
    options.signal?.removeEventListener('abort', poke);
    if (pausedByUs) backend.resume();
  }
}

/**
 * The shared plumbing of every back-end: stats, link state, the receive callback,
 * pause/resume with a bounded hold queue for back-ends whose source cannot wait,
 * and the async iterator. A subclass calls `deliver()` for each received frame
 * and implements `send`.
 */
export abstract class BaseNetBackend implements NetBackend {
  abstract readonly kind: string;
  readonly stats: NetStats = newStats();
  readonly maxFrameSize: number;
  private _closed = false;
  protected handler: FrameHandler | null = null;
  private _paused = false;
  private _linkUp = false;
  private readonly linkListeners = new Set<(up: boolean) => void>();
  private readonly held: Uint8Array[] = [];
  private writableWaiters: (() => void)[] = [];

  constructor(
    readonly mtu: number,
    /** Frames held while paused, for back-ends whose source cannot wait (default 256). */
    protected readonly holdLimit = 256,
  ) {
    checkMtu(mtu);
    this.maxFrameSize = mtu + FRAME_OVERHEAD;
  }

  abstract send(frames: readonly Uint8Array[], count?: number): number;

  get linkUp(): boolean {
    return this._linkUp;
  }

  get paused(): boolean {
    return this._paused;
  }

  get closed(): boolean {
    return this._closed;
  }

  onReceive(handler: FrameHandler | null): void {
    this.handler = handler;
    if (handler && !this._paused) this.flushHeld();
  }

  pause(): void {
    this._paused = true;
  }

  resume(): void {
    if (!this._paused) return;
    this._paused = false;
    this.flushHeld();
    this.onResumed();
  }

  /** Hook for ring back-ends: start draining again. */
  protected onResumed(): void {}

  frames(options?: FramesOptions): AsyncIterableIterator<Uint8Array> {
    return receiveFrames(this, options);
  }

  onLinkChange(listener: (up: boolean) => void): () => void {
    this.linkListeners.add(listener);
    return () => this.linkListeners.delete(listener);
  }

  writable(): Promise<void> {
    if (!this._linkUp || this.canSend()) return Promise.resolve();
    return new Promise((r) => this.writableWaiters.push(r));
  }

  /** Whether `send` would take a frame now; back-ends with finite queues override. */
  protected canSend(): boolean {
    return true;
  }

  /** Call when send space appears (or the link changes). */
  protected notifyWritable(): void {
    if (this.writableWaiters.length === 0) return;
    const ws = this.writableWaiters;
    this.writableWaiters = [];
    for (const w of ws) w();
  }

  protected setLink(up: boolean): void {
    if (up === this._linkUp) return;
    this._linkUp = up;
    this.notifyWritable();
    for (const l of [...this.linkListeners]) {
      try {
        l(up);
      } catch {
        // A listener's failure is its own; the back-end keeps running.
      }
    }
  }

  protected markClosed(): void {
    this._closed = true;
    this.held.length = 0;
    this.setLink(false);
    this.notifyWritable();
  }

  /**
   * Validates and size-checks a frame to send. Returns false (counted) for frames
   * that are taken but not sent: runts, oversize, link down.
   */
  protected admit(frame: Uint8Array): boolean {
    if (frame.length < MIN_FRAME || frame.length > this.maxFrameSize) {
      this.stats.txErrors++;
      return false;
    }
    if (!this._linkUp) {
      this.stats.txDrops++;
      return false;
    }
    return true;
  }

  /** Hands one received frame to the receiver (or holds or drops it), counting it. */
  protected deliver(frame: Uint8Array): void {
    const s = this.stats;
    if (frame.length < MIN_FRAME || frame.length > this.maxFrameSize) {
      s.rxErrors++;
      return;
    }
    if (this._paused) {
      if (this.held.length >= this.holdLimit || this._closed) {
        s.rxDrops++;
        return;
      }
      this.held.push(frame.slice());
      s.rxPackets++;
      s.rxBytes += frame.length;
      return;
    }
    const h = this.handler;
    if (h === null) {
      s.rxDrops++;
      return;
    }
    s.rxPackets++;
    s.rxBytes += frame.length;
    this.invoke(h, frame);
  }

  private invoke(h: FrameHandler, frame: Uint8Array): void {
    try {
      h(frame);
    } catch (e) {
      // The receiver's bug must not stop the back-end; it is counted and kept.
      this.stats.rxErrors++;
      this.lastHandlerError = e;
    }
  }

  /** The last exception a receive handler threw (counted in rxErrors). */
  lastHandlerError: unknown = undefined;

  private flushHeld(): void {
    while (this.held.length > 0 && !this._paused && this.handler) {
      this.invoke(this.handler, this.held.shift()!);
    }
  }

  abstract close(): Promise<void>;
}
