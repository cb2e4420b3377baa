/**
 * virtio-net constants (VirtIO 1.2 §5.1) as named constants (STYLE.md 3).
 * Section numbers are those of the VirtIO 1.2 spec.
 */

// ── Feature bits (§5.1.3) ──
/** Device handles packets with partial checksum (TX checksum offload). */
export const VIRTIO_NET_F_CSUM = 0;
/** Driver handles packets with partial checksum; the device may set DATA_VALID. */
export const VIRTIO_NET_F_GUEST_CSUM = 1;
export const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2;
/** `mtu` in config space is valid. */
export const VIRTIO_NET_F_MTU = 3;
/** `mac` in config space is valid. */
export const VIRTIO_NET_F_MAC = 5;
export const VIRTIO_NET_F_GUEST_TSO4 = 7;
export const VIRTIO_NET_F_GUEST_TSO6 = 8;
export const VIRTIO_NET_F_GUEST_ECN = 9;
export const VIRTIO_NET_F_GUEST_UFO = 10;
/** Device can take TSOv4 frames (gso_type TCPV4). */
export const VIRTIO_NET_F_HOST_TSO4 = 11;
/** Device can take TSOv6 frames (gso_type TCPV6). */
export const VIRTIO_NET_F_HOST_TSO6 = 12;
export const VIRTIO_NET_F_HOST_ECN = 13;
export const VIRTIO_NET_F_HOST_UFO = 14;
/** Driver can merge receive buffers (num_buffers in the header). */
export const VIRTIO_NET_F_MRG_RXBUF = 15;
/** `status` in config space is valid. */
export const VIRTIO_NET_F_STATUS = 16;
export const VIRTIO_NET_F_CTRL_VQ = 17;
export const VIRTIO_NET_F_CTRL_RX = 18;
export const VIRTIO_NET_F_CTRL_VLAN = 19;
export const VIRTIO_NET_F_CTRL_RX_EXTRA = 20;
export const VIRTIO_NET_F_GUEST_ANNOUNCE = 21;
/** Multiqueue with automatic receive steering; `max_virtqueue_pairs` is valid. */
export const VIRTIO_NET_F_MQ = 22;
export const VIRTIO_NET_F_CTRL_MAC_ADDR = 23;

// ── Configuration layout, struct virtio_net_config (§5.1.4) ──
/** u8 mac[6] (VIRTIO_NET_F_MAC) */
export const NET_CFG_MAC = 0;
/** le16 status (VIRTIO_NET_F_STATUS) */
export const NET_CFG_STATUS = 6;
/** le16 max_virtqueue_pairs (VIRTIO_NET_F_MQ) */
export const NET_CFG_MAX_VIRTQUEUE_PAIRS = 8;
/** le16 mtu (VIRTIO_NET_F_MTU) */
export const NET_CFG_MTU = 10;
/** le32 speed; u8 duplex (VIRTIO_NET_F_SPEED_DUPLEX, not offered) */
export const NET_CFG_SPEED = 12;
export const NET_CFG_DUPLEX = 16;
/** u8 rss_max_key_size; le16 rss_max_indirection_table_length; le32 supported_hash_types (RSS, not offered) */
export const NET_CFG_RSS_MAX_KEY_SIZE = 17;
export const NET_CFG_RSS_MAX_INDIRECTION_TABLE_LENGTH = 18;
export const NET_CFG_SUPPORTED_HASH_TYPES = 20;
export const NET_CFG_SIZE = 24;

/** status bits (§5.1.4) */
export const VIRTIO_NET_S_LINK_UP = 1;
export const VIRTIO_NET_S_ANNOUNCE = 2;

/** §5.1.4.1: max_virtqueue_pairs is 1..0x8000. */
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN = 1;
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX = 0x8000;

// ── struct virtio_net_hdr (§5.1.6) ──
/** 12 bytes: VERSION_1 (or MRG_RXBUF) makes num_buffers part of every header (§5.1.6.1). */
export const NET_HDR_SIZE = 12;
export const NET_HDR_FLAGS = 0;
export const NET_HDR_GSO_TYPE = 1;
export const NET_HDR_HDR_LEN = 2;
export const NET_HDR_GSO_SIZE = 4;
export const NET_HDR_CSUM_START = 6;
export const NET_HDR_CSUM_OFFSET = 8;
export const NET_HDR_NUM_BUFFERS = 10;

export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
export const VIRTIO_NET_HDR_F_RSC_INFO = 4;

export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_UDP = 3;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
export const VIRTIO_NET_HDR_GSO_UDP_L4 = 5;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

// ── Control virtqueue (§5.1.6.5) ──
export const VIRTIO_NET_OK = 0;
export const VIRTIO_NET_ERR = 1;

export const VIRTIO_NET_CTRL_RX = 0;
export const VIRTIO_NET_CTRL_RX_PROMISC = 0;
export const VIRTIO_NET_CTRL_RX_ALLMULTI = 1;
export const VIRTIO_NET_CTRL_RX_ALLUNI = 2;
export const VIRTIO_NET_CTRL_RX_NOMULTI = 3;
export const VIRTIO_NET_CTRL_RX_NOUNI = 4;
export const VIRTIO_NET_CTRL_RX_NOBCAST = 5;

export const VIRTIO_NET_CTRL_MAC = 1;
export const VIRTIO_NET_CTRL_MAC_TABLE_SET = 0;
export const VIRTIO_NET_CTRL_MAC_ADDR_SET = 1;

export const VIRTIO_NET_CTRL_VLAN = 2;
export const VIRTIO_NET_CTRL_VLAN_ADD = 0;
export const VIRTIO_NET_CTRL_VLAN_DEL = 1;

export const VIRTIO_NET_CTRL_ANNOUNCE = 3;
export const VIRTIO_NET_CTRL_ANNOUNCE_ACK = 0;

export const VIRTIO_NET_CTRL_MQ = 4;
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0;

/** Entries of each MAC filter table the device keeps (QEMU keeps 64 as well). */
export const NET_MAC_TABLE_ENTRIES = 64;
/** VLAN IDs are 12 bits (IEEE 802.1Q). */
export const NET_MAX_VLAN = 4096;
