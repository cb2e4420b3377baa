export * from './defs.js';
export { VirtqueueError, type VirtqueueErrorKind } from './errors.js';
export { BufferList, DescriptorChain } from './chain.js';
export { type TranslatingDma, isTranslatingDma } from './translating.js';
export {
  type QueueConfig,
  type RingFeatures,
  ringFeatures,
  featureBits,
  layoutQueue,
  splitAreaSizes,
  packedAreaSizes,
} from './layout.js';
export type { DeviceQueue, QueueState } from './device-queue.js';
export type { DriverQueue, DriverOptions, IndirectMode, UsedBuffer } from './driver-queue.js';
export { SplitDeviceQueue } from './split-device.js';
export { PackedDeviceQueue } from './packed-device.js';
export { SplitDriverQueue } from './split-driver.js';
export { PackedDriverQueue } from './packed-driver.js';
export { createDeviceQueue, createDriverQueue } from './queues.js';
export { CallbackNotifier, Doorbell, type Notifier, type WaitResult } from './notify.js';
