/** What went wrong, seen from the side of the caller that gave the bad value. */
export type CoalescingErrorKind =
  /** A policy, table or simulator parameter is out of its range (a configuration error). */
  | 'invalid-config'
  /** A queue index is not an integer in [0, queues). */
  | 'invalid-queue'
  /** A vector index is not an integer in [0, table size). */
  | 'invalid-vector'
  /** A recorded trace file is malformed (the line number says where). */
  | 'invalid-trace'
  /** A fake clock was asked to go backwards. */
  | 'clock-backwards'
  /** Timers kept re-arming at or before the target time past the loop bound. */
  | 'timer-loop';

/**
 * The one error type of `@ioplane/interrupt-coalescing`. `field` and `value`
 * name the offending parameter; `line` the trace line, where there is one.
 */
export class CoalescingError extends Error {
  override readonly name = 'CoalescingError';
  constructor(
    readonly kind: CoalescingErrorKind,
    message: string,
    readonly field?: string,
    readonly value?: unknown,
    readonly line?: number,
  ) {
    super(message);
  }
}

/** Throws `invalid-config` unless `v` is an integer in [min, max]. */
export function checkInt(field: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new CoalescingError('invalid-config', `${field} must be an integer in [${min}, ${max}], got ${String(v)}`, field, v);
  }
  return v;
}

/** Throws `invalid-config` unless `v` is a finite number in [min, max]. */
export function checkNumber(field: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) {
    throw new CoalescingError('invalid-config', `${field} must be a number in [${min}, ${max}], got ${String(v)}`, field, v);
  }
  return v;
}
