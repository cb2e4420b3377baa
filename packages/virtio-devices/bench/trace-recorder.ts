/**
 * Opt-in completion-trace recorder for the virtio-blk bench (RECORD_TRACES=DIR).
 *
 * A `BlockBackend` in front of the real one: while armed, every read the
 * device hands it is stamped at submission (its arrival at the back-end) and
 * at completion (service time = completion − arrival), into preallocated
 * arrays. `trace()` returns them in `@ioplane/interrupt-coalescing`'s trace
 * shape (arrival ns from the first request, service ns), which `formatTrace`
 * writes as JSON Lines for that package's simulator bench (`--trace FILE`).
 *
 * Only reads are recorded (the bench issues nothing else); the wrapper
 * allocates one closure per recorded read, so it is installed only when the
 * flag is given and the recorded run is not one of the measured ones.
 */
import type { BlockBackend, Extent, Segments } from '@ioplane/blk-backends';
import type { Trace } from '@ioplane/interrupt-coalescing';

export class RecordingBackend implements BlockBackend {
  readonly size: number;
  readonly logicalBlockSize: number;
  readonly physicalBlockSize: number;
  readonly readOnly: boolean;
  #armed = false;
  #n = 0;
  readonly #arrival: Float64Array;
  readonly #done: Float64Array;

  constructor(
    readonly inner: BlockBackend,
    /** Most requests one trace holds (the rest of an armed run is not recorded). */
    readonly capacity: number,
    readonly now: () => number = () => performance.now(),
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`trace capacity ${capacity} is not a positive integer`);
    this.size = inner.size;
    this.logicalBlockSize = inner.logicalBlockSize;
    this.physicalBlockSize = inner.physicalBlockSize;
    this.readOnly = inner.readOnly;
    this.#arrival = new Float64Array(capacity);
    this.#done = new Float64Array(capacity).fill(Number.NaN);
  }

  /** Starts a new recording (forgets the last one). */
  arm(): void {
    this.#n = 0;
    this.#done.fill(Number.NaN);
    this.#armed = true;
  }

  disarm(): void {
    this.#armed = false;
  }

  /** Requests recorded since `arm()`. */
  get recorded(): number {
    return this.#n;
  }

  /** The recording, arrivals from 0 in ns, sorted by arrival; requests still in flight are left out. */
  trace(): Trace {
    const idx: number[] = [];
    for (let i = 0; i < this.#n; i++) if (!Number.isNaN(this.#done[i]!)) idx.push(i);
    idx.sort((a, b) => this.#arrival[a]! - this.#arrival[b]!);
    const arrivalsNs = new Float64Array(idx.length);
    const serviceNs = new Float64Array(idx.length);
    const t0 = idx.length > 0 ? this.#arrival[idx[0]!]! : 0;
    for (let k = 0; k < idx.length; k++) {
      const i = idx[k]!;
      // performance.now() is ms with µs-or-better resolution; round to whole ns.
      arrivalsNs[k] = Math.round((this.#arrival[i]! - t0) * 1e6);
      serviceNs[k] = Math.max(0, Math.round((this.#done[i]! - this.#arrival[i]!) * 1e6));
    }
    return { arrivalsNs, serviceNs };
  }

  read(offset: number, segments: Segments): Promise<void> {
    if (!this.#armed || this.#n >= this.capacity) return this.inner.read(offset, segments);
    const i = this.#n++;
    this.#arrival[i] = this.now();
    return this.inner.read(offset, segments).then(() => {
      this.#done[i] = this.now();
    });
  }

  write(offset: number, segments: Segments): Promise<void> {
    return this.inner.write(offset, segments);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  discard(offset: number, length: number): Promise<void> {
    return this.inner.discard(offset, length);
  }

  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    return this.inner.writeZeroes(offset, length, mayUnmap);
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.inner.blockStatus(offset, length);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
