import { describe, expect, it } from 'vitest';
import {
  NET_HDR_SIZE,
  NetHdr,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6,
  VIRTIO_NET_HDR_GSO_UDP,
  bit,
  validateTxHdr,
} from '../src/index.js';

const CSUM = bit(VIRTIO_NET_F_CSUM);
const limits = (features: bigint) => ({ features, maxFrame: 1522, maxGsoFrame: 65557 });

function hdr(fields: Partial<NetHdr>): NetHdr {
  return Object.assign(new NetHdr(), fields);
}

describe('virtio_net_hdr (§5.1.6)', () => {
  it('is 12 bytes, little-endian, at the offsets of the spec', () => {
    expect(NET_HDR_SIZE).toBe(12);
    const b = new Uint8Array(16).fill(0xee);
    hdr({ flags: 1, gsoType: 4, hdrLen: 0x0102, gsoSize: 0x0304, csumStart: 0x0506, csumOffset: 0x0708, numBuffers: 0x090a }).encode(b, 2);
    expect(Array.from(b)).toEqual([0xee, 0xee, 1, 4, 2, 1, 4, 3, 6, 5, 8, 7, 0x0a, 9, 0xee, 0xee]);
    const d = new NetHdr().decode(b, 2);
    expect(d).toMatchObject({ flags: 1, gsoType: 4, hdrLen: 0x0102, gsoSize: 0x0304, csumStart: 0x0506, csumOffset: 0x0708, numBuffers: 0x090a });
  });

  it('accepts a plain header and a NEEDS_CSUM header within the frame', () => {
    expect(validateTxHdr(hdr({}), 60, limits(0n))).toBeUndefined();
    expect(validateTxHdr(hdr({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 34, csumOffset: 6 }), 42, limits(CSUM))).toBeUndefined();
  });

  it('refuses flags a driver may not set on TX (DATA_VALID is for RX, §5.1.6.2.1)', () => {
    expect(validateTxHdr(hdr({ flags: VIRTIO_NET_HDR_F_DATA_VALID }), 60, limits(CSUM))).toBe('receive-only flags');
    // §5.1.6.2.2: a flag bit the device does not know is ignored, not refused.
    expect(validateTxHdr(hdr({ flags: 0x80 }), 60, limits(CSUM))).toBeUndefined();
    expect(validateTxHdr(hdr({ flags: 0x80 | 1, csumStart: 34, csumOffset: 16 }), 60, limits(CSUM))).toBeUndefined();
  });

  it('refuses NEEDS_CSUM without CSUM negotiated, and offsets past the frame', () => {
    expect(validateTxHdr(hdr({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 34, csumOffset: 6 }), 42, limits(0n))).toBe('NEEDS_CSUM without VIRTIO_NET_F_CSUM');
    expect(validateTxHdr(hdr({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 34, csumOffset: 7 }), 42, limits(CSUM))).toBe('csum_start + csum_offset + 2 past the frame');
    expect(validateTxHdr(hdr({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 0xffff, csumOffset: 0xffff }), 1514, limits(CSUM))).toBe('csum_start + csum_offset + 2 past the frame');
  });

  it('checks frame length: 14 up to the MTU frame, 64 KiB with GSO', () => {
    expect(validateTxHdr(hdr({}), 13, limits(0n))).toBe('frame too short');
    expect(validateTxHdr(hdr({}), 1522, limits(0n))).toBeUndefined();
    expect(validateTxHdr(hdr({}), 1523, limits(0n))).toBe('frame too long');
    const tso = CSUM | bit(VIRTIO_NET_F_HOST_TSO4);
    expect(validateTxHdr(hdr({ flags: 1, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448, csumStart: 34, csumOffset: 16 }), 30000, limits(tso))).toBeUndefined();
    expect(validateTxHdr(hdr({ flags: 1, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448, csumStart: 34, csumOffset: 16 }), 65558, limits(tso))).toBe('frame too long');
  });

  it('accepts GSO types only as negotiated, with NEEDS_CSUM and a gso_size', () => {
    const base = { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoSize: 1448, csumStart: 34, csumOffset: 16 };
    expect(validateTxHdr(hdr({ ...base, gsoType: VIRTIO_NET_HDR_GSO_TCPV4 }), 3000, limits(CSUM))).toBe('gso_type not negotiated');
    expect(validateTxHdr(hdr({ ...base, gsoType: VIRTIO_NET_HDR_GSO_TCPV6 }), 3000, limits(CSUM | bit(VIRTIO_NET_F_HOST_TSO4)))).toBe('gso_type not negotiated');
    expect(validateTxHdr(hdr({ ...base, gsoType: VIRTIO_NET_HDR_GSO_TCPV6 }), 3000, limits(CSUM | bit(VIRTIO_NET_F_HOST_TSO6)))).toBeUndefined();
    expect(validateTxHdr(hdr({ ...base, gsoType: VIRTIO_NET_HDR_GSO_UDP }), 3000, limits(CSUM | bit(VIRTIO_NET_F_HOST_TSO4)))).toBe('gso_type not negotiated');
    expect(validateTxHdr(hdr({ ...base, gsoType: VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN }), 3000, limits(CSUM | bit(VIRTIO_NET_F_HOST_TSO4)))).toBe('gso_type not negotiated');
    expect(validateTxHdr(hdr({ ...base, gsoType: 2 }), 3000, limits(CSUM | bit(VIRTIO_NET_F_HOST_TSO4)))).toBe('unknown gso_type');
    expect(validateTxHdr(hdr({ ...base, flags: 0, gsoType: VIRTIO_NET_HDR_GSO_TCPV4 }), 3000, limits(CSUM | bit(VIRTIO_NET_F_HOST_TSO4)))).toBe('gso without NEEDS_CSUM');
    expect(validateTxHdr(hdr({ ...base, gsoSize: 0, gsoType: VIRTIO_NET_HDR_GSO_TCPV4 }), 3000, limits(CSUM | bit(VIRTIO_NET_F_HOST_TSO4)))).toBe('gso_size 0');
  });
});
