/**
 * virtio-iommu wire layout, VirtIO 1.2 §5.13 (device ID 23). Every field is
 * little-endian. Offsets are from the start of each structure; the request
 * structures are split in a device-readable part (head + payload) and a
 * device-writable part (the tail, preceded by the properties for PROBE).
 */

/** §5.13.1 */
export const VIRTIO_ID_IOMMU = 23;

/** §5.13.2: requestq is queue 0, eventq queue 1. */
export const REQUEST_QUEUE = 0;
export const EVENT_QUEUE = 1;

/** §5.13.3 feature bits (bit numbers). */
export const VIRTIO_IOMMU_F_INPUT_RANGE = 0;
export const VIRTIO_IOMMU_F_DOMAIN_RANGE = 1;
export const VIRTIO_IOMMU_F_MAP_UNMAP = 2;
/** Superseded by BYPASS_CONFIG; new devices SHOULD NOT offer it (§5.13.3.2). Never offered here. */
export const VIRTIO_IOMMU_F_BYPASS = 3;
export const VIRTIO_IOMMU_F_PROBE = 4;
export const VIRTIO_IOMMU_F_MMIO = 5;
export const VIRTIO_IOMMU_F_BYPASS_CONFIG = 6;

/**
 * §5.13.4 struct virtio_iommu_config (40 bytes):
 *   le64 page_size_mask @0; le64 input_range.start @8; le64 input_range.end @16;
 *   le32 domain_range.start @24; le32 domain_range.end @28; le32 probe_size @32;
 *   u8 bypass @36; u8 reserved[3] @37.
 */
export const CONFIG_PAGE_SIZE_MASK = 0;
export const CONFIG_INPUT_RANGE_START = 8;
export const CONFIG_INPUT_RANGE_END = 16;
export const CONFIG_DOMAIN_RANGE_START = 24;
export const CONFIG_DOMAIN_RANGE_END = 28;
export const CONFIG_PROBE_SIZE = 32;
export const CONFIG_BYPASS = 36;
export const CONFIG_SIZE = 40;

/** §5.13.6 request types. */
export const VIRTIO_IOMMU_T_ATTACH = 1;
export const VIRTIO_IOMMU_T_DETACH = 2;
export const VIRTIO_IOMMU_T_MAP = 3;
export const VIRTIO_IOMMU_T_UNMAP = 4;
export const VIRTIO_IOMMU_T_PROBE = 5;

/** §5.13.6 status codes. */
export const VIRTIO_IOMMU_S_OK = 0;
export const VIRTIO_IOMMU_S_IOERR = 1;
export const VIRTIO_IOMMU_S_UNSUPP = 2;
export const VIRTIO_IOMMU_S_DEVERR = 3;
export const VIRTIO_IOMMU_S_INVAL = 4;
export const VIRTIO_IOMMU_S_RANGE = 5;
export const VIRTIO_IOMMU_S_NOENT = 6;
export const VIRTIO_IOMMU_S_FAULT = 7;
export const VIRTIO_IOMMU_S_NOMEM = 8;

export type VirtioIommuStatus = 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8;

export const STATUS_NAMES: readonly string[] = ['OK', 'IOERR', 'UNSUPP', 'DEVERR', 'INVAL', 'RANGE', 'NOENT', 'FAULT', 'NOMEM'];

/** struct virtio_iommu_req_head { u8 type; u8 reserved[3]; } and the tail { u8 status; u8 reserved[3]; }. */
export const HEAD_SIZE = 4;
export const TAIL_SIZE = 4;
export const HEAD_TYPE = 0;
export const TAIL_STATUS = 0;

/**
 * §5.13.6.1 ATTACH: head, le32 domain @4, le32 endpoint @8, le32 flags @12,
 * u8 reserved[4] @16 | tail. Device-readable part: 20 bytes.
 */
export const ATTACH_DOMAIN = 4;
export const ATTACH_ENDPOINT = 8;
export const ATTACH_FLAGS = 12;
export const ATTACH_RESERVED = 16;
export const ATTACH_READABLE_SIZE = 20;
export const VIRTIO_IOMMU_ATTACH_F_BYPASS = 1 << 0;

/** §5.13.6.2 DETACH: head, le32 domain @4, le32 endpoint @8, u8 reserved[8] @12 | tail. 20 readable bytes. */
export const DETACH_DOMAIN = 4;
export const DETACH_ENDPOINT = 8;
export const DETACH_READABLE_SIZE = 20;

/**
 * §5.13.6.3 MAP: head, le32 domain @4, le64 virt_start @8, le64 virt_end @16,
 * le64 phys_start @24, le32 flags @32 | tail. 36 readable bytes. virt_end is inclusive.
 */
export const MAP_DOMAIN = 4;
export const MAP_VIRT_START = 8;
export const MAP_VIRT_END = 16;
export const MAP_PHYS_START = 24;
export const MAP_FLAGS = 32;
export const MAP_READABLE_SIZE = 36;
export const VIRTIO_IOMMU_MAP_F_READ = 1 << 0;
export const VIRTIO_IOMMU_MAP_F_WRITE = 1 << 1;
export const VIRTIO_IOMMU_MAP_F_MMIO = 1 << 2;

/** §5.13.6.4 UNMAP: head, le32 domain @4, le64 virt_start @8, le64 virt_end @16, u8 reserved[4] @24 | tail. 28 readable bytes. */
export const UNMAP_DOMAIN = 4;
export const UNMAP_VIRT_START = 8;
export const UNMAP_VIRT_END = 16;
export const UNMAP_RESERVED = 24;
export const UNMAP_READABLE_SIZE = 28;

/**
 * §5.13.6.5 PROBE: head, le32 endpoint @4, u8 reserved[64] @8 | u8 properties[probe_size], tail.
 * 72 readable bytes; probe_size + 4 writable bytes.
 */
export const PROBE_ENDPOINT = 4;
export const PROBE_READABLE_SIZE = 72;

/** §5.13.6.5 struct virtio_iommu_probe_property { le16 type (12 bits) + reserved (4 bits); le16 length; }. */
export const PROBE_PROPERTY_HEADER_SIZE = 4;
export const PROBE_PROPERTY_TYPE_MASK = 0x0fff;
export const VIRTIO_IOMMU_PROBE_T_NONE = 0;
export const VIRTIO_IOMMU_PROBE_T_RESV_MEM = 1;

/**
 * §5.13.6.6.1 struct virtio_iommu_probe_resv_mem: property header @0, u8 subtype @4,
 * u8 reserved[3] @5, le64 start @8, le64 end @16 (inclusive). 24 bytes; `length` is 20.
 */
export const RESV_MEM_SUBTYPE = 4;
export const RESV_MEM_START = 8;
export const RESV_MEM_END = 16;
export const RESV_MEM_SIZE = 24;
export const VIRTIO_IOMMU_RESV_MEM_T_RESERVED = 0;
export const VIRTIO_IOMMU_RESV_MEM_T_MSI = 1;

/**
 * §5.13.6.7 struct virtio_iommu_fault (24 bytes): u8 reason @0, u8 reserved[3] @1,
 * le32 flags @4, le32 endpoint @8, le32 reserved1 @12, le64 address @16.
 */
export const FAULT_REASON = 0;
export const FAULT_FLAGS = 4;
export const FAULT_ENDPOINT = 8;
export const FAULT_ADDRESS = 16;
export const FAULT_SIZE = 24;
export const VIRTIO_IOMMU_FAULT_R_UNKNOWN = 0;
export const VIRTIO_IOMMU_FAULT_R_DOMAIN = 1;
export const VIRTIO_IOMMU_FAULT_R_MAPPING = 2;
export const VIRTIO_IOMMU_FAULT_F_READ = 1 << 0;
export const VIRTIO_IOMMU_FAULT_F_WRITE = 1 << 1;
export const VIRTIO_IOMMU_FAULT_F_ADDRESS = 1 << 8;

export const U64_MAX = 0xffff_ffff_ffff_ffffn;
export const U32_MAX = 0xffff_ffff;
