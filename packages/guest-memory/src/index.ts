export { GuestMemory } from './guest-memory.js';
export { Region, MAX_GUEST_ADDRESS, type RegionSpec } from './region.js';
export type { DmaMemory, AtomicMemory } from './dma.js';
export { GuestMemoryError, type GuestMemoryErrorKind, type Access } from './errors.js';
