/** What the other side did wrong, or how a queue was set up wrong. */
export type VirtqueueErrorKind =
  // Set-up (queue activation)
  | 'invalid-size'
  | 'ring-misaligned'
  | 'ring-out-of-memory'
  | 'ring-not-contiguous'
  | 'feature-mismatch'
  // Written by the driver, found by the device
  | 'avail-index-ahead'
  | 'head-out-of-range'
  | 'next-out-of-range'
  | 'chain-too-long'
  | 'chain-too-large'
  | 'readable-after-writable'
  | 'buffer-out-of-memory'
  | 'address-too-large'
  | 'indirect-not-negotiated'
  | 'indirect-with-next'
  | 'nested-indirect'
  | 'indirect-in-chain'
  | 'indirect-table-length'
  | 'ring-overrun'
  | 'descriptor-not-available'
  // Written by the device, found by the driver
  | 'used-index-ahead'
  | 'used-id-invalid'
  | 'used-len-invalid'
  // The queue stopped after an earlier error
  | 'broken';

/**
 * The one error type of `@ioplane/virtqueue`, written from the side that found
 * the problem. `head` and `desc` name the chain and descriptor where known.
 */
export class VirtqueueError extends Error {
  override readonly name = 'VirtqueueError';
  constructor(
    readonly kind: VirtqueueErrorKind,
    message: string,
    readonly details: { head?: number; desc?: number; value?: number | bigint; cause?: unknown } = {},
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
  }
}
