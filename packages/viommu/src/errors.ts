import { type Access, GuestMemoryError } from '@ioplane/guest-memory';

/** What a host-side caller of `@ioplane/viommu` got wrong (never a guest's doing: guests get status codes and faults). */
export type ViommuErrorKind =
  /** An option or argument is out of its range (names the option and the value). */
  | 'invalid-option'
  /** An endpoint ID given by the host is already registered, or not registered. */
  | 'endpoint'
  /** A guest-side driver request the device refused (the status is in the message and `status`). */
  | 'request-failed'
  /** The guest-side driver was used in a way its mode forbids (unmapping twice, unknown handle). */
  | 'driver-state'
  /** The VT-d invalidation queue stopped on a descriptor (IQE) or refused a register write (names the descriptor and why). */
  | 'invalidation-queue'
  /** A bounded wait for the other side (a VT-d invalidation wait, a register command) ran out. */
  | 'timeout';

/** The one error class of `@ioplane/viommu` for host-side misuse and guest-driver failures. */
export class ViommuError extends Error {
  override readonly name = 'ViommuError';
  constructor(
    readonly kind: ViommuErrorKind,
    message: string,
    /** The offending value, where there is one. */
    readonly value?: unknown,
    /** For `request-failed`: the virtio-iommu status the device returned (0 = none written). */
    readonly status?: number,
  ) {
    super(message);
  }
}

/**
 * Why a translation failed. The first group belongs to the virtio-iommu model,
 * the second mirrors the VT-d fault reasons (Intel VT-d spec §7.1.3, table
 * "Unrecoverable Fault Conditions"; codes in `VTD_FAULT_CODES`).
 */
export const FAULT_REASONS = [
  'none',
  /** The endpoint is not attached to a domain and not in bypass (virtio-iommu FAULT_R_DOMAIN). */
  'unattached',
  /** No mapping covers the address (FAULT_R_MAPPING). */
  'unmapped',
  /** A mapping covers the address but lacks the read or write permission (FAULT_R_MAPPING + READ/WRITE flag). */
  'permission',
  /** The address lies in a RESV_MEM region of subtype RESERVED (FAULT_R_MAPPING). */
  'reserved',
  /** The translated guest-physical range is not guest memory (FAULT_R_UNKNOWN). */
  'bad-target',
  /** The endpoint is unknown to the IOMMU (FAULT_R_UNKNOWN). */
  'unknown-endpoint',
  // VT-d (fault reason codes 1h..Dh)
  'root-not-present',
  'context-not-present',
  'context-invalid',
  'address-width',
  'vtd-write',
  'vtd-read',
  'paging-entry-invalid',
  'root-table-invalid',
  'context-table-invalid',
  'root-reserved',
  'context-reserved',
  'paging-reserved',
  'translation-type',
] as const;

export type FaultReason = (typeof FAULT_REASONS)[number];

/** Index of each reason in `FAULT_REASONS`; translation sources return these numbers so that no string or object is made per access. */
export const FaultCode = {
  none: 0,
  unattached: 1,
  unmapped: 2,
  permission: 3,
  reserved: 4,
  badTarget: 5,
  unknownEndpoint: 6,
  rootNotPresent: 7,
  contextNotPresent: 8,
  contextInvalid: 9,
  addressWidth: 10,
  vtdWrite: 11,
  vtdRead: 12,
  pagingEntryInvalid: 13,
  rootTableInvalid: 14,
  contextTableInvalid: 15,
  rootReserved: 16,
  contextReserved: 17,
  pagingReserved: 18,
  translationType: 19,
} as const;

/** VT-d fault reason codes (VT-d spec §7.1.3) for the VT-d reasons, by `FaultCode`. */
export const VTD_FAULT_CODES: Readonly<Record<number, number>> = {
  [FaultCode.rootNotPresent]: 0x1,
  [FaultCode.contextNotPresent]: 0x2,
  [FaultCode.contextInvalid]: 0x3,
  [FaultCode.addressWidth]: 0x4,
  [FaultCode.vtdWrite]: 0x5,
  [FaultCode.vtdRead]: 0x6,
  [FaultCode.pagingEntryInvalid]: 0x7,
  [FaultCode.rootTableInvalid]: 0x8,
  [FaultCode.contextTableInvalid]: 0x9,
  [FaultCode.rootReserved]: 0xa,
  [FaultCode.contextReserved]: 0xb,
  [FaultCode.pagingReserved]: 0xc,
  [FaultCode.translationType]: 0xd,
};

/** One DMA the IOMMU refused. */
export interface FaultRecord {
  /** The endpoint (virtio-iommu endpoint ID, or VT-d source-id bus<<8|devfn). */
  readonly endpoint: number;
  /** The first bus address (IOVA) of the access that could not be translated. */
  readonly address: number;
  /** Start and length of the whole access the device attempted. */
  readonly accessStart: number;
  readonly accessLength: number;
  readonly access: Access;
  readonly reason: FaultReason;
  /** The VT-d fault reason code, for faults raised by the VT-d walker. */
  readonly vtdReason?: number;
}

/**
 * What a device sees when the IOMMU refuses its DMA: a `GuestMemoryError` of
 * kind `fault` (devices catch that type and complete the request with an I/O
 * error), carrying the fault record. Nothing was read or written.
 */
export class DmaFault extends GuestMemoryError {
  constructor(readonly fault: FaultRecord) {
    super(
      'fault',
      fault.accessStart,
      fault.accessLength,
      `IOMMU refused ${fault.access} of ${fault.accessLength} byte(s) at IOVA 0x${fault.accessStart.toString(16)} from endpoint ${fault.endpoint}: ${fault.reason} at 0x${fault.address.toString(16)}`,
      fault.access,
    );
  }
}

/** Where translation faults go: a log, the virtio-iommu event queue, a VT-d fault recording register. */
export interface FaultSink {
  report(fault: FaultRecord): void;
}
