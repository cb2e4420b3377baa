/** What went wrong, seen from the side of whoever called in (a guest, a host tool, a builder). */
export type SrIovErrorKind =
  /** A configuration access outside the 4 KiB space of a function. */
  | 'out-of-range'
  /** A configuration access that is not naturally aligned (PCIe Base 6.0 §7.2.2: byte enables stay in one DW). */
  | 'misaligned'
  /** An access size other than 1, 2 or 4 bytes. */
  | 'invalid-size'
  /** A builder argument (capability parameters, BAR layout, IDs) that no device could have. */
  | 'invalid-argument'
  /** A capability does not fit where it was asked to go, or overlaps another one. */
  | 'no-space'
  /** `sriov_numvfs` above `sriov_totalvfs` (Linux answers -ERANGE). */
  | 'range'
  /** `sriov_numvfs` from one non-zero count to another without going through 0 (Linux: -EBUSY). */
  | 'busy'
  /** VFs whose routing IDs run past bus 255 or past the bus range the PF's bridge decodes (Linux: -ENOMEM). */
  | 'no-bus-numbers'
  /** A VF BAR window that is not assigned or does not hold every VF (Linux: -ENOMEM). */
  | 'no-resources'
  /** A routing ID already used by another function on the segment (Linux: -EEXIST). */
  | 'rid-collision'
  /** A VF index that does not exist now (Linux: -EINVAL from ndo_set_vf_*). */
  | 'invalid-vf'
  /** A per-VF setting out of its range: MAC, VLAN, QoS, rate (Linux: -EINVAL). */
  | 'invalid-setting'
  /** A VLAN protocol other than 802.1Q (0x8100) or 802.1ad (0x88a8) (Linux: -EPROTONOSUPPORT). */
  | 'unsupported-protocol'
  /** An unknown sysfs attribute, or text that is not a number (Linux: -EINVAL / -ENOENT). */
  | 'invalid-input';

/** The errno Linux would answer for the same request, where one applies. */
export type Errno = 'ERANGE' | 'EBUSY' | 'ENOMEM' | 'EEXIST' | 'EINVAL' | 'EPROTONOSUPPORT' | 'ENOENT';

const ERRNO: Partial<Record<SrIovErrorKind, Errno>> = {
  range: 'ERANGE',
  busy: 'EBUSY',
  'no-bus-numbers': 'ENOMEM',
  'no-resources': 'ENOMEM',
  'rid-collision': 'EEXIST',
  'invalid-vf': 'EINVAL',
  'invalid-setting': 'EINVAL',
  'unsupported-protocol': 'EPROTONOSUPPORT',
  'invalid-input': 'EINVAL',
};

/**
 * The one error type of `@ioplane/sr-iov`. `value` is the offending value
 * (an offset, a count, a VLAN ID), `limit` the bound it broke where there is one.
 */
export class SrIovError extends Error {
  override readonly name = 'SrIovError';
  /** The errno Linux answers in the same situation, for code that mimics sysfs or rtnetlink. */
  readonly errno: Errno | undefined;
  constructor(
    readonly kind: SrIovErrorKind,
    message: string,
    readonly value?: number | string,
    readonly limit?: number,
  ) {
    super(message);
    this.errno = ERRNO[kind];
  }
}

export function hex(v: number, width = 0): string {
  return `0x${v.toString(16).padStart(width, '0')}`;
}
