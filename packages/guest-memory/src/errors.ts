/** What went wrong with a guest memory access, seen from the device's side. */
export type GuestMemoryErrorKind =
  /** Some byte of [addr, addr+len) is not backed by any region (a hole, or past the end). */
  | 'out-of-bounds'
  /** The address or length is not a non-negative safe integer, or addr+len passes 2^64. */
  | 'invalid-address'
  /** An atomic or aligned access at an address that is not a multiple of its size. */
  | 'misaligned'
  /** A zero-copy view was asked for a range that spans two regions. */
  | 'not-contiguous'
  /** A 64-bit value read from the guest does not fit in 53 bits. */
  | 'too-large'
  /** A write to a region the owner made read-only (ROM, a write-protected image of RAM). */
  | 'read-only'
  /** A translating layer (an IOMMU) refused the access: unmapped, or no permission. Only such layers raise it. */
  | 'fault'
  /** A region description given to the constructor is unusable. */
  | 'invalid-region';

export type Access = 'read' | 'write';

/**
 * The one error type of `@ioplane/guest-memory`. It names the offending
 * address and length, so a device can report what the guest did wrong.
 */
export class GuestMemoryError extends Error {
  override readonly name = 'GuestMemoryError';
  constructor(
    readonly kind: GuestMemoryErrorKind,
    /** Guest address of the access (a bigint when the guest wrote one past 2^53). */
    readonly addr: number | bigint,
    /** Length of the access in bytes. */
    readonly len: number,
    message: string,
    /** The direction of the access, where one was stated. */
    readonly access?: Access,
  ) {
    super(message);
  }
}

export function hex(v: number | bigint): string {
  return `0x${v.toString(16)}`;
}

export function outOfBounds(addr: number, len: number, access?: Access): GuestMemoryError {
  return new GuestMemoryError(
    'out-of-bounds',
    addr,
    len,
    `guest memory ${access ? `${access} ` : ''}of ${len} byte(s) at ${hex(addr)} is outside guest memory`,
    access,
  );
}
