/**
 * Byte layout of VirtIO 1.2 virtqueues, as named constants. Offsets are in
 * bytes from the start of the structure; every field is little-endian.
 */

// ── Feature bits this package acts on (VirtIO 1.2 §6 "Reserved Feature Bits") ──
export const VIRTIO_F_INDIRECT_DESC = 28;
export const VIRTIO_F_EVENT_IDX = 29;
export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_ACCESS_PLATFORM = 33;
export const VIRTIO_F_RING_PACKED = 34;
export const VIRTIO_F_IN_ORDER = 35;

/** Split queues: a power of two up to 32768 (§2.7). Packed: any size up to 2^15 (§2.8). */
export const MAX_QUEUE_SIZE = 32768;

// ── Descriptors: 16 bytes in both formats (§2.7.5, §2.8.13) ──
export const DESC_SIZE = 16;
/** le64 addr */
export const DESC_ADDR = 0;
/** le32 len */
export const DESC_LEN = 8;
/** split: le16 flags at 12, le16 next at 14 */
export const SPLIT_DESC_FLAGS = 12;
export const SPLIT_DESC_NEXT = 14;
/** packed: le16 id at 12, le16 flags at 14 */
export const PACKED_DESC_ID = 12;
export const PACKED_DESC_FLAGS = 14;

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
/** packed only (§2.8.1) */
export const VIRTQ_DESC_F_AVAIL = 1 << 7;
export const VIRTQ_DESC_F_USED = 1 << 15;

// ── Split virtqueue (§2.7) ──
export const SPLIT_DESC_ALIGN = 16;
export const SPLIT_AVAIL_ALIGN = 2;
export const SPLIT_USED_ALIGN = 4;

/** struct virtq_avail { le16 flags; le16 idx; le16 ring[N]; le16 used_event; } — 6 + 2·N bytes */
export const AVAIL_FLAGS = 0;
export const AVAIL_IDX = 2;
export const AVAIL_RING = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** Offset of used_event: 4 + 2·N. */
export const availUsedEventOffset = (size: number): number => AVAIL_RING + 2 * size;
export const availRingBytes = (size: number): number => 6 + 2 * size;

/** struct virtq_used { le16 flags; le16 idx; { le32 id; le32 len; } ring[N]; le16 avail_event; } — 6 + 8·N bytes */
export const USED_FLAGS = 0;
export const USED_IDX = 2;
export const USED_RING = 4;
export const USED_ELEM_SIZE = 8;
export const VIRTQ_USED_F_NO_NOTIFY = 1;
/** Offset of avail_event: 4 + 8·N. */
export const usedAvailEventOffset = (size: number): number => USED_RING + USED_ELEM_SIZE * size;
export const usedRingBytes = (size: number): number => 6 + USED_ELEM_SIZE * size;

// ── Packed virtqueue (§2.8) ──
export const PACKED_DESC_ALIGN = 16;
export const PACKED_EVENT_ALIGN = 4;
/** struct pvirtq_event_suppress { le16 desc (off:15, wrap:1); le16 flags (2 bits) } */
export const EVENT_OFF_WRAP = 0;
export const EVENT_FLAGS = 2;
export const EVENT_SUPPRESS_BYTES = 4;
export const RING_EVENT_FLAGS_ENABLE = 0;
export const RING_EVENT_FLAGS_DISABLE = 1;
export const RING_EVENT_FLAGS_DESC = 2;
export const EVENT_WRAP_BIT = 15;

/**
 * `vring_need_event` (§2.7.10 / virtio_ring.h): true when `event_idx` lies in
 * the window (old, new], all in 16-bit arithmetic.
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}
