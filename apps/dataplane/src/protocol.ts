import type { QueueConfig, RingFeatures } from '@ioplane/virtqueue';

/** What the demo guest is told at start, and what it reports. */
export interface GuestSetup {
  sab: SharedArrayBuffer;
  features: RingFeatures;
  queueSize: number;
  chains: number;
  /** Doorbells: [0] available-buffer notifications (kicks), [1] used-buffer notifications (interrupts). */
  bells: Int32Array;
}

export interface GuestReport {
  type: 'done';
  completed: number;
  mismatches: number;
  kicks: number;
  sleeps: number;
  ns: number;
}

export interface GuestReady {
  type: 'ready';
  config: QueueConfig;
}

/** Guest memory map of the demo. */
export const RING_BASE = 0x1000;
export const INDIRECT_BASE = 0x100000;
export const DATA_BASE = 0x200000;
export const SLOT_BYTES = 256;
export const PAYLOAD_BYTES = 128;
export const MEMORY_BYTES = 16 << 20;

/** FNV-1a over the payload: what the device computes and the guest checks. */
export function fnv1a(bytes: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i]!;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}
