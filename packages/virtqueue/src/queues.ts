import type { DmaMemory, GuestMemory } from '@ioplane/guest-memory';
import type { DeviceQueue, QueueState } from './device-queue.js';
import type { DriverOptions, DriverQueue } from './driver-queue.js';
import type { QueueConfig, RingFeatures } from './layout.js';
import { PackedDeviceQueue } from './packed-device.js';
import { PackedDriverQueue } from './packed-driver.js';
import { SplitDeviceQueue } from './split-device.js';
import { SplitDriverQueue } from './split-driver.js';

/** The device side of a queue in the format the features say (RING_PACKED or split). */
export function createDeviceQueue(mem: DmaMemory, config: QueueConfig, features: RingFeatures, state?: QueueState): DeviceQueue {
  return features.packed ? new PackedDeviceQueue(mem, config, features, state) : new SplitDeviceQueue(mem, config, features, state);
}

/** The driver side of a queue in the format the features say. */
export function createDriverQueue<T>(mem: GuestMemory, config: QueueConfig, features: RingFeatures, options?: DriverOptions): DriverQueue<T> {
  return features.packed ? new PackedDriverQueue<T>(mem, config, features, options) : new SplitDriverQueue<T>(mem, config, features, options);
}
