/** What was wrong with a value given to a builder or an address parser. */
export type PacketErrorKind =
  /** A textual MAC, IPv4 or IPv6 address does not parse. */
  | 'invalid-address'
  /** The output buffer is too small for the frame being built. */
  | 'buffer-too-small'
  /** A field value is outside its wire range (a port above 65535, a VNI above 2^24-1, ...). */
  | 'invalid-field'
  /** A checksum offset points outside the frame (virtio-net NEEDS_CSUM, VirtIO 1.2 §5.1.6.2). */
  | 'invalid-offset';

/**
 * The one error type of `@ioplane/packet`. Parsers never throw it (a bad frame is
 * parsed as far as it is valid and marked); builders and address parsers do, for
 * values that came from configuration, not from the wire.
 */
export class PacketError extends Error {
  override readonly name = 'PacketError';
  constructor(
    readonly kind: PacketErrorKind,
    message: string,
    /** The offending field, where there is one. */
    readonly field?: string,
    /** The offending value. */
    readonly value?: unknown,
  ) {
    super(message);
  }
}
