// Guest-physical layout and worker set-up shared by bench/iommu-threads.ts and its guest worker.
import type { MessagePort } from 'node:worker_threads';
import type { InvalidationMode } from '@ioplane/viommu';

export const GUEST_LAYOUT = {
  /** Guest RAM. */
  SIZE: 32 << 20,
  /** The virtio-blk driver's rings and buffers (identity-mapped when the vIOMMU is on). */
  BLK_AREA: { addr: 0x10000, len: 4 << 20 },
  /** VT-d translation tables. */
  TABLES: { addr: 0x600000, len: 1 << 20 },
  /** The VT-d invalidation queue (256 descriptors of 16 bytes) and the invalidation-wait status dword. */
  QUEUE: { addr: 0x700000, len: 4096 },
  STATUS: 0x701000,
  /** Request buffers: slot s at DATA + s × SLOT. */
  DATA: 8 << 20,
  SLOT: 64 << 10,
} as const;

/** `strict-many`: strict, with a wave's completed buffers unmapped by one `unmapMany` call. */
export type IommuScenario = 'off' | 'static' | 'strict-many' | InvalidationMode;

export interface IommuGuestSetup {
  sab: SharedArrayBuffer;
  bells: Int32Array;
  scenario: IommuScenario;
  /** The device's VT-d source-id. */
  sid: number;
  /** How the guest thread waits for completions while a job runs: Atomics.waitAsync on its event loop, a futex sleep ('sync'), or polling a queue that sends no interrupts ('poll'). */
  wait: 'async' | 'sync' | 'poll';
  /** HaltPollOptions.maxUs of the guest thread's halt polling (0: none). */
  haltPollUs: number;
  /** The invalidation queue's shared registers (`VtdQiRegisters.array`; absent when the vIOMMU is off). */
  qi: Int32Array | undefined;
  /** The guest driver's deferred/optimistic teardown by age runs from a timer (else every map reads the clock). */
  fqTimer: boolean;
  /** Packed rings (else split). */
  packed: boolean;
  /** Which vIOMMU: VT-d (tables in guest memory, the invalidation queue) or the virtio-iommu device (its driver over `iommuPort`). */
  unit: 'vtd' | 'virtio';
  /** CPUs (a taskset list) the guest's thread binds itself to; undefined: unbound. */
  cpus: string | undefined;
  /** The virtio-iommu device's control port (unit 'virtio'). */
  iommuPort: MessagePort | undefined;
}
