/** What went wrong in a network back-end. */
export type NetBackendErrorKind =
  /** A configuration value is unusable (an MTU out of range, a bad address, a VNI above 2^24-1). */
  | 'invalid-config'
  /** The back-end is closed. */
  | 'closed'
  /** A system call failed (open, ioctl, bind, write); `code` names the errno. */
  | 'io'
  /** The platform or privileges do not allow this back-end (no /dev/net/tun, not root). */
  | 'unsupported'
  /** The shared ring was written inconsistently by the other side (a length past the ring, a bad marker). */
  | 'corrupt-ring'
  /** A capture file could not be written. */
  | 'capture';

/** The one error type of `@ioplane/net-backends`. */
export class NetBackendError extends Error {
  override readonly name = 'NetBackendError';
  constructor(
    readonly kind: NetBackendErrorKind,
    message: string,
    /** The offending field or system call. */
    readonly field?: string,
    /** The offending value, or the errno name for `io`. */
    readonly value?: unknown,
  ) {
    super(message);
  }
}
