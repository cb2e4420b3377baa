export * from './defs.js';
export { ViommuError, type ViommuErrorKind, DmaFault, type FaultRecord, type FaultReason, type FaultSink, FAULT_REASONS, FaultCode, VTD_FAULT_CODES } from './errors.js';
export { Iotlb } from './iotlb.js';
export { Mapping, MappingTable, type UnmapResult } from './mapping-table.js';
export { TranslatingMemory, aheadRights, type TranslationOut, type TranslationSource } from './translating-memory.js';
export { Domain, Endpoint, InvalidationLog, type ReservedRegion, type BypassState } from './domain.js';
export { VirtioIommu, type ChainSegment, type VirtioIommuOptions, type VirtioIommuStats, DEFAULT_FEATURES, encodeFault } from './virtio-iommu.js';
export {
  IommuRequest,
  attachRequest,
  detachRequest,
  mapRequest,
  unmapRequest,
  probeRequest,
  parseProbeProperties,
  parseFaultEvent,
  parseConfig,
  directTransport,
  GuestIommuDriver,
  DmaDomain,
  type FaultEvent,
  type IommuConfig,
  type IommuTransport,
} from './driver.js';
export { DmaMapper, PERM_READ, PERM_WRITE, type DmaDirection, type InvalidationMode, type DmaDomainOptions, type DriverStats, type LiveMapping, type MapperHost } from './dma-mapper.js';
export { VtdGuestDriver, VtdDmaDomain, type VtdGuestDriverOptions, type VtdInvalidator } from './vtd-driver.js';
export { VtdRemapper, VtdSource, type VtdOptions } from './vtd.js';
export {
  VtdInvalidationQueue,
  VtdQueuedInvalidator,
  VtdQiRegisters,
  QI_REG,
  QI_ERRORS,
  QI_TYPE,
  QI_WAIT_IF,
  QI_WAIT_SW,
  QI_WAIT_FN,
  GCMD_TE,
  GCMD_SRTP,
  GCMD_QIE,
  FSTS_IQE,
  ICS_IWC,
  type VtdQiErrorReason,
  type VtdQiFault,
  type VtdInvalidationQueueOptions,
  type VtdQueuedInvalidatorOptions,
} from './vtd-qi.js';
