/**
 * VirtIO 1.2 constants the device framework and virtio-blk act on, as named
 * constants (STYLE.md 3). Section numbers are those of the VirtIO 1.2 spec.
 */

// ── Device status field (§2.1) ──
export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_DEVICE_NEEDS_RESET = 0x40;
export const STATUS_FAILED = 0x80;
/** Bits a driver may write (§2.1: DEVICE_NEEDS_RESET is set by the device only). */
export const STATUS_DRIVER_BITS = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK | STATUS_FEATURES_OK | STATUS_FAILED;

// ── Reserved feature bits (§6) ──
export const VIRTIO_F_INDIRECT_DESC = 28;
export const VIRTIO_F_EVENT_IDX = 29;
export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_ACCESS_PLATFORM = 33;
export const VIRTIO_F_RING_PACKED = 34;
export const VIRTIO_F_IN_ORDER = 35;

/** `1n << bit` for a feature bit number. */
export const bit = (n: number): bigint => 1n << BigInt(n);

// ── Device IDs (§5) ──
export const VIRTIO_ID_NET = 1;
export const VIRTIO_ID_BLOCK = 2;

/** Queue size limit of both ring formats (§2.7, §2.8). */
export const MAX_QUEUE_SIZE = 32768;

// ── virtio-blk feature bits (§5.2.3) ──
export const VIRTIO_BLK_F_SIZE_MAX = 1;
export const VIRTIO_BLK_F_SEG_MAX = 2;
export const VIRTIO_BLK_F_GEOMETRY = 4;
export const VIRTIO_BLK_F_RO = 5;
export const VIRTIO_BLK_F_BLK_SIZE = 6;
export const VIRTIO_BLK_F_FLUSH = 9;
export const VIRTIO_BLK_F_TOPOLOGY = 10;
export const VIRTIO_BLK_F_CONFIG_WCE = 11;
export const VIRTIO_BLK_F_MQ = 12;
export const VIRTIO_BLK_F_DISCARD = 13;
export const VIRTIO_BLK_F_WRITE_ZEROES = 14;

// ── virtio-blk configuration layout, struct virtio_blk_config (§5.2.4) ──
/** le64 capacity, in 512-byte sectors whatever blk_size says */
export const BLK_CFG_CAPACITY = 0;
/** le32 size_max: largest single segment (VIRTIO_BLK_F_SIZE_MAX) */
export const BLK_CFG_SIZE_MAX = 8;
/** le32 seg_max: most data segments in one request (VIRTIO_BLK_F_SEG_MAX) */
export const BLK_CFG_SEG_MAX = 12;
/** struct virtio_blk_geometry { le16 cylinders; u8 heads; u8 sectors; } */
export const BLK_CFG_GEOMETRY_CYLINDERS = 16;
export const BLK_CFG_GEOMETRY_HEADS = 18;
export const BLK_CFG_GEOMETRY_SECTORS = 19;
/** le32 blk_size (VIRTIO_BLK_F_BLK_SIZE) */
export const BLK_CFG_BLK_SIZE = 20;
/** struct virtio_blk_topology { u8 physical_block_exp; u8 alignment_offset; le16 min_io_size; le32 opt_io_size; } */
export const BLK_CFG_PHYSICAL_BLOCK_EXP = 24;
export const BLK_CFG_ALIGNMENT_OFFSET = 25;
export const BLK_CFG_MIN_IO_SIZE = 26;
export const BLK_CFG_OPT_IO_SIZE = 28;
/** u8 writeback (VIRTIO_BLK_F_CONFIG_WCE: writable by the driver) */
export const BLK_CFG_WRITEBACK = 32;
/** u8 unused0 at 33; le16 num_queues (VIRTIO_BLK_F_MQ) */
export const BLK_CFG_NUM_QUEUES = 34;
/** le32 max_discard_sectors; le32 max_discard_seg; le32 discard_sector_alignment (VIRTIO_BLK_F_DISCARD) */
export const BLK_CFG_MAX_DISCARD_SECTORS = 36;
export const BLK_CFG_MAX_DISCARD_SEG = 40;
export const BLK_CFG_DISCARD_SECTOR_ALIGNMENT = 44;
/** le32 max_write_zeroes_sectors; le32 max_write_zeroes_seg; u8 write_zeroes_may_unmap (VIRTIO_BLK_F_WRITE_ZEROES) */
export const BLK_CFG_MAX_WRITE_ZEROES_SECTORS = 48;
export const BLK_CFG_MAX_WRITE_ZEROES_SEG = 52;
export const BLK_CFG_WRITE_ZEROES_MAY_UNMAP = 56;
/** u8 unused1[3] at 57; then the secure-erase fields (not offered), 72 bytes in all. */
export const BLK_CFG_SIZE = 72;

// ── virtio-blk requests (§5.2.6) ──
/** struct virtio_blk_req header: le32 type; le32 reserved; le64 sector. */
export const BLK_REQ_HEADER_SIZE = 16;
export const BLK_REQ_TYPE = 0;
export const BLK_REQ_RESERVED = 4;
export const BLK_REQ_SECTOR = 8;
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_GET_LIFETIME = 10;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;
export const VIRTIO_BLK_T_SECURE_ERASE = 14;
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;
/** GET_ID answers with up to 20 bytes, not NUL-terminated when all 20 are used. */
export const VIRTIO_BLK_ID_BYTES = 20;
/** struct virtio_blk_discard_write_zeroes { le64 sector; le32 num_sectors; le32 flags; } */
export const BLK_DWZ_SEGMENT_SIZE = 16;
export const BLK_DWZ_SECTOR = 0;
export const BLK_DWZ_NUM_SECTORS = 8;
export const BLK_DWZ_FLAGS = 12;
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;
/** Sector unit of virtio-blk addressing (capacity, sector, num_sectors). */
export const SECTOR_SIZE = 512;
export const SECTOR_SHIFT = 9;
