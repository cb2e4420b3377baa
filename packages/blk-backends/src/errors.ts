/** What went wrong with a block request or an image, seen from the caller's side. */
export type BlockErrorKind =
  /** Offset or length is not a multiple of the back-end's logical block size. */
  | 'unaligned'
  /** Some byte of [offset, offset+length) lies past the end of the device. */
  | 'out-of-range'
  /** A write, discard or write-zeroes on a read-only back-end. */
  | 'read-only'
  /** The back-end was closed. */
  | 'closed'
  /** An argument is unusable (negative, not an integer, empty segment list, bad option). */
  | 'invalid-argument'
  /** The image's metadata is inconsistent or hostile (qcow2: tables outside the file, overlaps, bad magic). */
  | 'corrupt'
  /** A feature the image needs and this implementation does not have (encryption, unknown incompatible bits). */
  | 'unsupported'
  /** A backing chain that loops or is deeper than the limit. */
  | 'backing-loop'
  /** The operating system refused an I/O; `cause` holds its error. */
  | 'io';

/**
 * The one error type of `@ioplane/blk-backends`. Its fields name the offending
 * request or image field, so a device can map it to a status and a user can fix
 * the image.
 */
export class BlockError extends Error {
  override readonly name = 'BlockError';
  constructor(
    readonly kind: BlockErrorKind,
    message: string,
    /** Extra facts: the offending offset, length, field name, bit numbers… */
    readonly detail: Readonly<Record<string, unknown>> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function hex(v: number | bigint): string {
  return `0x${v.toString(16)}`;
}

export function corrupt(message: string, detail: Record<string, unknown> = {}): BlockError {
  return new BlockError('corrupt', message, detail);
}

export function ioError(what: string, cause: unknown): BlockError {
  const code = (cause as { code?: unknown } | null)?.code;
  return new BlockError('io', `${what}: ${cause instanceof Error ? cause.message : String(cause)}`, { code }, { cause });
}
