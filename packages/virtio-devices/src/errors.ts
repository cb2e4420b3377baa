/** What went wrong, named from the side that found it (STYLE.md 6). */
export type VirtioErrorKind =
  // Found by the device, done by the driver (reported through `onGuestError`, never thrown at the guest)
  /** A status write the spec forbids (§2.1.1, §3.1.1): a bit cleared, a step skipped, DEVICE_NEEDS_RESET written. */
  | 'invalid-status'
  /** A feature write after FEATURES_OK, or features the device refused at FEATURES_OK (§2.2). */
  | 'invalid-features'
  /** A queue set up outside the window the spec allows, or with a size or address the ring rejects (§4.1.4.3). */
  | 'invalid-queue'
  /** A notification or config access the device ignored (no such queue, not running, outside config space). */
  | 'ignored-access'
  /** A virtqueue was malformed; the device set DEVICE_NEEDS_RESET (§2.1.2). */
  | 'queue-broken'
  /** A request the device answered with IOERR or UNSUPP before it reached the back-end (§5.2.6). */
  | 'bad-request'
  // Found by the driver
  /** The device does not offer a feature the driver requires (VERSION_1). */
  | 'feature-missing'
  /** The device cleared FEATURES_OK: it cannot work with the features accepted (§3.1.1 step 6). */
  | 'features-rejected'
  /** The device set DEVICE_NEEDS_RESET or did not finish a reset in time. */
  | 'device-needs-reset'
  /** A request completed with VIRTIO_BLK_S_IOERR. */
  | 'io-error'
  /** A request completed with VIRTIO_BLK_S_UNSUPP. */
  | 'unsupported'
  /** The device wrote a status byte the spec does not define, or a used length too short. */
  | 'bad-completion'
  /** The request was dropped because the device or driver was reset or closed. */
  | 'cancelled'
  /** A control message got no answer, or the channel closed. */
  | 'transport'
  // Host-side misuse
  | 'invalid-argument';

/**
 * The one error type of `@ioplane/virtio-devices`. `details` names the
 * offending values: queue index, status, feature bits, sector, request type.
 */
export class VirtioError extends Error {
  override readonly name = 'VirtioError';
  constructor(
    readonly kind: VirtioErrorKind,
    message: string,
    readonly details: Readonly<Record<string, unknown>> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export const hex = (v: number | bigint): string => `0x${v.toString(16)}`;
