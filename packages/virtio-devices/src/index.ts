export * from './defs.js';
export { VirtioError, type VirtioErrorKind } from './errors.js';
export {
  VirtioDevice,
  type AccessSize,
  type DeviceStats,
  type InterruptSink,
  type VirtioDeviceOptions,
  type VirtioTransportTarget,
} from './device.js';
export { BlkRequest, parseBlkRequest, writeBlkStatus, type BlkLimits, type BlkParseError, type BlkRequestKind } from './blk-request.js';
export { VirtioBlkDevice, type BlkStats, type VirtioBlkOptions } from './blk.js';
export {
  VirtioBlkDriver,
  type BlkDeviceInfo,
  type GuestBuffer,
  type ListenOptions,
  type SectorRange,
  type VirtioBlkDriverOptions,
} from './blk-driver.js';
export { HaltPollGovernor, type HaltPollOptions, type HaltPollStats } from './halt-poll.js';
export {
  DirectTransport,
  MessagePortTransport,
  serveTransport,
  type DriverTransport,
  type ServedDevice,
} from './transport.js';
export * from './net/index.js';
export { VirtioIommuDevice, IOMMU_REQUEST_QUEUE, IOMMU_EVENT_QUEUE, type IommuQueueStats, type VirtioIommuDeviceOptions } from './iommu/device.js';
export { VirtioIommuDriver, type VirtioIommuDriverOptions } from './iommu/driver.js';
