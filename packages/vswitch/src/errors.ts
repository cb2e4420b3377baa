/**
 * What went wrong, from the side of whoever asked (a controller's flow-mod, a
 * configuration call). Each kind maps onto an OpenFlow 1.3.5 error (§7.4.4) so the
 * future OpenFlow endpoint can answer with the protocol's own code.
 */
export type VswitchErrorKind =
  /** OFPBMC_BAD_FIELD / BAD_VALUE: an unknown match field or a value out of range. */
  | 'bad-match'
  /** OFPBMC_BAD_PREREQ: a field whose prerequisites (§7.2.3.6) are not in the match. */
  | 'bad-prerequisite'
  /** OFPBMC_BAD_WILDCARDS / BAD_MASK: a mask on a field that takes none, or value bits outside the mask (§7.2.3.5). */
  | 'bad-wildcards'
  /** OFPBAC_*: an action that is malformed, unknown or inconsistent with the match. */
  | 'bad-action'
  /** OFPBIC_*: an instruction that is malformed, repeated, or goes backwards (§5.9). */
  | 'bad-instruction'
  /** OFPFMFC_BAD_TABLE_ID / OFPBIC_BAD_TABLE_ID: a table outside 0–254. */
  | 'bad-table'
  /** OFPFMFC_OVERLAP: CHECK_OVERLAP was set and another entry of the same priority overlaps. */
  | 'overlap'
  /** OFPFMFC_TABLE_FULL. */
  | 'table-full'
  /** OFPFMFC_BAD_TIMEOUT / BAD_COMMAND and other flow-mod fields out of range. */
  | 'bad-flow-mod'
  /** OFPGMFC_*: a group that exists, does not exist, loops, is chained, or has bad buckets. */
  | 'bad-group'
  /** OFPMMFC_*: a meter that exists, does not exist, or has bad bands. */
  | 'bad-meter'
  /** A port number in use, unknown, or reserved; a bad port configuration. */
  | 'bad-port'
  /** A bridge option out of range. */
  | 'bad-config'
  /** Valid OpenFlow this switch does not implement (named in the message). */
  | 'unsupported';

export class VswitchError extends Error {
  override readonly name = 'VswitchError';
  constructor(
    readonly kind: VswitchErrorKind,
    message: string,
    /** The field, action or option at fault. */
    readonly field?: string,
    /** The offending value. */
    readonly value?: unknown,
  ) {
    super(message);
  }
}
