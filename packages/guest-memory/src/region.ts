import { GuestMemoryError, hex } from './errors.js';

/** Every region must end at or below 2^53, so every address is an exact JS number. */
export const MAX_GUEST_ADDRESS = Number.MAX_SAFE_INTEGER;

/** How a caller describes a region of guest physical memory. */
export interface RegionSpec {
  /** Guest-physical address of the first byte. */
  gpa: number;
  /**
   * The backing bytes. A `SharedArrayBuffer` lets a guest driver in a worker
   * thread and the device share the memory; any `ArrayBuffer` or `Uint8Array`
   * (such as a Buffer over memory mapped from a file descriptor) works too.
   * When absent, a zero-filled `SharedArrayBuffer` of `size` bytes is made.
   */
  backing?: ArrayBufferLike | Uint8Array;
  /** Size in bytes; required without `backing`, and must match it when both are given. */
  size?: number;
  /** Device writes to a read-only region (a ROM) are refused. */
  readonly?: boolean;
}

/** One contiguous region of guest physical memory, with the typed views over its backing. */
export class Region {
  readonly gpa: number;
  readonly size: number;
  /** One past the last guest-physical address. */
  readonly end: number;
  readonly readonly: boolean;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** Host byte offset of guest address `gpa` inside `bytes.buffer`. */
  readonly hostOffset: number;
  readonly u16: Uint16Array;
  readonly u32: Uint32Array;
  readonly i32: Int32Array;
  readonly shared: boolean;

  constructor(spec: RegionSpec) {
    const { gpa } = spec;
    if (!Number.isSafeInteger(gpa) || gpa < 0) {
      throw new GuestMemoryError('invalid-region', gpa, spec.size ?? 0, `region base ${String(gpa)} is not a non-negative safe integer`);
    }
    let bytes: Uint8Array;
    if (spec.backing === undefined) {
      const size = spec.size;
      if (size === undefined || !Number.isSafeInteger(size) || size <= 0) {
        throw new GuestMemoryError('invalid-region', gpa, 0, `region at ${hex(gpa)} needs a positive size or a backing`);
      }
      bytes = new Uint8Array(new SharedArrayBuffer(size));
    } else if (spec.backing instanceof Uint8Array) {
      bytes = spec.backing;
    } else {
      bytes = new Uint8Array(spec.backing);
    }
    if (bytes.byteLength === 0) {
      throw new GuestMemoryError('invalid-region', gpa, 0, `region at ${hex(gpa)} is empty`);
    }
    if (spec.size !== undefined && spec.size !== bytes.byteLength) {
      throw new GuestMemoryError('invalid-region', gpa, spec.size, `region at ${hex(gpa)}: size ${spec.size} differs from its backing's ${bytes.byteLength} bytes`);
    }
    if (gpa + bytes.byteLength > MAX_GUEST_ADDRESS + 1) {
      throw new GuestMemoryError('invalid-region', gpa, bytes.byteLength, `region at ${hex(gpa)} of ${bytes.byteLength} bytes ends past 2^53`);
    }
    this.gpa = gpa;
    this.size = bytes.byteLength;
    this.end = gpa + bytes.byteLength;
    this.readonly = spec.readonly ?? false;
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.hostOffset = bytes.byteOffset;
    const buf = bytes.buffer;
    // Atomics index the whole buffer, so an access is atomic-capable only when
    // its host offset is aligned; guest alignment alone is not enough.
    this.u16 = new Uint16Array(buf, 0, buf.byteLength >>> 1);
    this.u32 = new Uint32Array(buf, 0, buf.byteLength >>> 2);
    this.i32 = new Int32Array(buf, 0, buf.byteLength >>> 2);
    this.shared = typeof SharedArrayBuffer !== 'undefined' && buf instanceof SharedArrayBuffer;
  }

  contains(addr: number, len: number): boolean {
    return addr >= this.gpa && len <= this.end - addr;
  }
}
