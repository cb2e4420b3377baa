import {
  NET_HDR_CSUM_OFFSET,
  NET_HDR_CSUM_START,
  NET_HDR_FLAGS,
  NET_HDR_GSO_SIZE,
  NET_HDR_GSO_TYPE,
  NET_HDR_HDR_LEN,
  NET_HDR_NUM_BUFFERS,
  NET_HDR_SIZE,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_HOST_ECN,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_HOST_UFO,
  VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_F_RSC_INFO,
  VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6,
  VIRTIO_NET_HDR_GSO_UDP,
} from './defs.js';

/**
 * struct virtio_net_hdr (VirtIO 1.2 §5.1.6), 12 bytes, little-endian. One
 * instance is reused for every packet: decoding allocates nothing.
 */
export class NetHdr {
  flags = 0;
  gsoType = 0;
  hdrLen = 0;
  gsoSize = 0;
  csumStart = 0;
  csumOffset = 0;
  numBuffers = 0;

  clear(): this {
    this.flags = this.gsoType = this.hdrLen = this.gsoSize = this.csumStart = this.csumOffset = this.numBuffers = 0;
    return this;
  }

  /** Reads the 12 bytes at `offset` of `b` (which must hold them). */
  decode(b: Uint8Array, offset = 0): this {
    this.flags = b[offset + NET_HDR_FLAGS]!;
    this.gsoType = b[offset + NET_HDR_GSO_TYPE]!;
    this.hdrLen = le16(b, offset + NET_HDR_HDR_LEN);
    this.gsoSize = le16(b, offset + NET_HDR_GSO_SIZE);
    this.csumStart = le16(b, offset + NET_HDR_CSUM_START);
    this.csumOffset = le16(b, offset + NET_HDR_CSUM_OFFSET);
    this.numBuffers = le16(b, offset + NET_HDR_NUM_BUFFERS);
    return this;
  }

  /** Writes the 12 bytes at `offset` of `b`. */
  encode(b: Uint8Array, offset = 0): void {
    b[offset + NET_HDR_FLAGS] = this.flags;
    b[offset + NET_HDR_GSO_TYPE] = this.gsoType;
    put16(b, offset + NET_HDR_HDR_LEN, this.hdrLen);
    put16(b, offset + NET_HDR_GSO_SIZE, this.gsoSize);
    put16(b, offset + NET_HDR_CSUM_START, this.csumStart);
    put16(b, offset + NET_HDR_CSUM_OFFSET, this.csumOffset);
    put16(b, offset + NET_HDR_NUM_BUFFERS, this.numBuffers);
  }
}

function le16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}
function put16(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
}

/** Why a transmitted header was refused (constant strings: naming the rule allocates nothing). */
export type TxHdrError =
  | 'receive-only flags'
  | 'NEEDS_CSUM without VIRTIO_NET_F_CSUM'
  | 'csum_start + csum_offset + 2 past the frame'
  | 'gso_type not negotiated'
  | 'unknown gso_type'
  | 'gso without NEEDS_CSUM'
  | 'gso_size 0'
  | 'frame too short'
  | 'frame too long';

/** What the device accepts in a TX header, from the negotiated features. */
export interface TxHdrLimits {
  features: bigint;
  /** Largest frame without GSO (the back-end's maxFrameSize). */
  maxFrame: number;
  /** Largest frame with GSO (64 KiB of IP plus link headers). */
  maxGsoFrame: number;
}

const has = (f: bigint, n: number): boolean => (f & (1n << BigInt(n))) !== 0n;

/**
 * Checks a header the driver put on a transmitted packet of `frameLen` bytes
 * (VirtIO 1.2 §5.1.6.2.1, driver requirements the device enforces):
 * - flags: DATA_VALID and RSC_INFO are for received packets (§5.1.6.2.1); bits the device
 *   does not know are ignored (§5.1.6.2.2);
 * - NEEDS_CSUM only when VIRTIO_NET_F_CSUM was negotiated, and csum_start +
 *   csum_offset + 2 within the frame;
 * - gso_type other than NONE only when the matching HOST_* feature was
 *   negotiated (TCPV4: HOST_TSO4, TCPV6: HOST_TSO6, UDP: HOST_UFO, ECN bit: HOST_ECN),
 *   then NEEDS_CSUM set and gso_size non-zero.
 * Returns undefined when the header is acceptable.
 */
export function validateTxHdr(h: NetHdr, frameLen: number, l: TxHdrLimits): TxHdrError | undefined {
  const f = l.features;
  // §5.1.6.2.2: the device MUST ignore flag bits it does not recognize; the two it knows as
  // receive-only, the driver MUST NOT set (§5.1.6.2.1).
  if ((h.flags & (VIRTIO_NET_HDR_F_DATA_VALID | VIRTIO_NET_HDR_F_RSC_INFO)) !== 0) return 'receive-only flags';
  if (frameLen < 14) return 'frame too short';
  const gso = h.gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
  if ((h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0) {
    if (!has(f, VIRTIO_NET_F_CSUM)) return 'NEEDS_CSUM without VIRTIO_NET_F_CSUM';
    if (h.csumStart + h.csumOffset + 2 > frameLen) return 'csum_start + csum_offset + 2 past the frame';
  }
  if (h.gsoType === VIRTIO_NET_HDR_GSO_NONE) return frameLen > l.maxFrame ? 'frame too long' : undefined;
  if ((h.gsoType & VIRTIO_NET_HDR_GSO_ECN) !== 0 && !has(f, VIRTIO_NET_F_HOST_ECN)) return 'gso_type not negotiated';
  switch (gso) {
    case VIRTIO_NET_HDR_GSO_TCPV4:
      if (!has(f, VIRTIO_NET_F_HOST_TSO4)) return 'gso_type not negotiated';
      break;
    case VIRTIO_NET_HDR_GSO_TCPV6:
      if (!has(f, VIRTIO_NET_F_HOST_TSO6)) return 'gso_type not negotiated';
      break;
    case VIRTIO_NET_HDR_GSO_UDP:
      if (!has(f, VIRTIO_NET_F_HOST_UFO)) return 'gso_type not negotiated';
      break;
    default:
      return 'unknown gso_type';
  }
  // §5.1.6.2.1: with gso_type other than NONE the driver MUST also set NEEDS_CSUM and gso_size.
  if ((h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) === 0) return 'gso without NEEDS_CSUM';
  if (h.gsoSize === 0) return 'gso_size 0';
  if (frameLen > l.maxGsoFrame) return 'frame too long';
  return undefined;
}

/** Flags the device may set on a received packet (§5.1.6.4). */
export const RX_HDR_FLAGS = VIRTIO_NET_HDR_F_DATA_VALID | VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_RSC_INFO;
export { NET_HDR_SIZE };
