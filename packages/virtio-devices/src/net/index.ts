export * from './defs.js';
export { NetHdr, validateTxHdr, type TxHdrError, type TxHdrLimits } from './header.js';
export { RxFilter } from './filter.js';
export { VirtioNetDevice, type NetDeviceStats, type VirtioNetOptions } from './device.js';
export { VirtioNetDriver, type NetDeviceInfo, type NetDriverStats, type NetFrameHandler, type NetListenOptions, type VirtioNetDriverOptions } from './driver.js';
