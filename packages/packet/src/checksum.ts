import { IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP } from './constants.js';
import { PacketError } from './errors.js';
import { Layer, type PacketInfo } from './parse.js';

/**
 * The 16-bit one's complement sum (RFC 1071 §4.1) of `bytes[start, end)` added to
 * `initial`, folded to 16 bits but not complemented. An odd last byte is padded
 * with a zero byte. Sums compose: the sum of two ranges is the folded sum of their
 * sums, provided the first range has an even length.
 */
export function onesComplementSum(bytes: Uint8Array, start: number, end: number, initial = 0): number {
  let sum = initial;
  let i = start;
  const even = end - ((end - start) & 1);
  // Up to 65535-byte frames: at most 32768 adds of 0xffff plus 8-way unrolling stays far below 2^53.
  for (; i + 8 <= even; i += 8) {
    sum += ((bytes[i]! << 8) | bytes[i + 1]!) + ((bytes[i + 2]! << 8) | bytes[i + 3]!) +
      ((bytes[i + 4]! << 8) | bytes[i + 5]!) + ((bytes[i + 6]! << 8) | bytes[i + 7]!);
  }
  for (; i < even; i += 2) sum += (bytes[i]! << 8) | bytes[i + 1]!;
  if (i < end) sum += bytes[i]! << 8;
  return foldSum(sum);
}

/** Folds a wide sum of 16-bit words to 16 bits with end-around carry (RFC 1071 §2(C)). */
export function foldSum(sum: number): number {
  while (sum > 0xffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000);
  return sum;
}

/** The Internet checksum of `bytes[start, end)`: the complement of the one's complement sum. */
export function internetChecksum(bytes: Uint8Array, start = 0, end = bytes.length, initial = 0): number {
  return ~onesComplementSum(bytes, start, end, initial) & 0xffff;
}

/** IPv4 pseudo-header sum (RFC 768, RFC 9293 §3.1): source, destination, zero+protocol, L4 length. */
export function pseudoHeaderSumV4(src: number, dst: number, protocol: number, l4Length: number): number {
  return foldSum((src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + protocol + l4Length);
}

/**
 * IPv6 pseudo-header sum (RFC 8200 §8.1): source and destination (16 bytes each, read
 * from `bytes` at `srcOffset`/`dstOffset`), the 32-bit upper-layer length and next header.
 */
export function pseudoHeaderSumV6(bytes: Uint8Array, srcOffset: number, dstOffset: number, protocol: number, l4Length: number): number {
  const s = onesComplementSum(bytes, srcOffset, srcOffset + 16, 0);
  const d = onesComplementSum(bytes, dstOffset, dstOffset + 16, s);
  return foldSum(d + (l4Length >>> 16) + (l4Length & 0xffff) + protocol);
}

/** Where the checksum field sits inside each L4 header. */
export function l4ChecksumFieldOffset(protocol: number): number {
  switch (protocol) {
    case IPPROTO_UDP:
      return 6;
    case IPPROTO_TCP:
      return 16;
    case IPPROTO_ICMP:
    case IPPROTO_ICMPV6:
      return 2;
    default:
      return -1;
  }
}

/**
 * The pseudo-header sum for the parsed packet's L4 segment (0 for ICMPv4, which has
 * none; RFC 792). A guest or a device sets this, uncomplemented, in the checksum
 * field before asking for NEEDS_CSUM completion (VirtIO 1.2 §5.1.6.2).
 */
export function pseudoHeaderSum(bytes: Uint8Array, info: PacketInfo): number {
  const l3 = info.l3Offset;
  if (info.ipProtocol === IPPROTO_ICMP) return 0;
  if (info.ipVersion === 4) {
    const src = ((bytes[l3 + 12]! << 24) | (bytes[l3 + 13]! << 16) | (bytes[l3 + 14]! << 8) | bytes[l3 + 15]!) >>> 0;
    const dst = ((bytes[l3 + 16]! << 24) | (bytes[l3 + 17]! << 16) | (bytes[l3 + 18]! << 8) | bytes[l3 + 19]!) >>> 0;
    return pseudoHeaderSumV4(src, dst, info.ipProtocol, info.l4Length);
  }
  return pseudoHeaderSumV6(bytes, l3 + 8, info.ipv6FinalDstOffset >= 0 ? info.ipv6FinalDstOffset : l3 + 24, info.ipProtocol, info.l4Length);
}

/**
 * The checksum the L4 header of a parsed, unfragmented UDP/TCP/ICMP/ICMPv6 packet
 * should carry (the field itself counted as zero), or -1 when the packet has no
 * such complete segment. UDP's computed 0 is sent as 0xffff (RFC 768).
 */
export function computeL4Checksum(bytes: Uint8Array, info: PacketInfo): number {
  if (!hasWholeL4(info)) return -1;
  const field = info.l4Offset + l4ChecksumFieldOffset(info.ipProtocol);
  const p = pseudoHeaderSum(bytes, info);
  let sum = onesComplementSum(bytes, info.l4Offset, field, p);
  sum = onesComplementSum(bytes, field + 2, info.ipEnd, sum);
  const c = ~sum & 0xffff;
  return c === 0 && info.ipProtocol === IPPROTO_UDP ? 0xffff : c;
}

function hasWholeL4(info: PacketInfo): boolean {
  return info.fragment === 0 && (info.anomalies & 1) === 0 &&
    (info.layers & (Layer.UDP | Layer.TCP | Layer.ICMP | Layer.ICMPV6)) !== 0;
}

/**
 * Verifies the L4 checksum of a parsed packet: true when it is right, or when it
 * is a UDP-over-IPv4 zero ("no checksum", RFC 768); false otherwise, and for
 * packets without a whole L4 segment.
 */
export function verifyL4Checksum(bytes: Uint8Array, info: PacketInfo): boolean {
  if (!hasWholeL4(info)) return false;
  const field = info.l4Offset + l4ChecksumFieldOffset(info.ipProtocol);
  if (info.ipProtocol === IPPROTO_UDP && info.ipVersion === 4 && bytes[field] === 0 && bytes[field + 1] === 0) return true;
  return onesComplementSum(bytes, info.l4Offset, info.ipEnd, pseudoHeaderSum(bytes, info)) === 0xffff;
}

/** Writes the right L4 checksum into a parsed packet; false when it has no whole L4 segment. */
export function fillL4Checksum(bytes: Uint8Array, info: PacketInfo): boolean {
  const c = computeL4Checksum(bytes, info);
  if (c < 0) return false;
  const field = info.l4Offset + l4ChecksumFieldOffset(info.ipProtocol);
  bytes[field] = c >>> 8;
  bytes[field + 1] = c & 0xff;
  return true;
}

/** The IPv4 header checksum for the header at `l3` (RFC 791 §3.1), the field counted as zero. */
export function computeIpv4HeaderChecksum(bytes: Uint8Array, l3: number, headerLength = (bytes[l3]! & 15) * 4): number {
  let sum = onesComplementSum(bytes, l3, l3 + 10, 0);
  sum = onesComplementSum(bytes, l3 + 12, l3 + headerLength, sum);
  return ~sum & 0xffff;
}

export function verifyIpv4HeaderChecksum(bytes: Uint8Array, l3: number, headerLength = (bytes[l3]! & 15) * 4): boolean {
  if (l3 + headerLength > bytes.length || headerLength < 20) return false;
  return onesComplementSum(bytes, l3, l3 + headerLength, 0) === 0xffff;
}

export function fillIpv4HeaderChecksum(bytes: Uint8Array, l3: number, headerLength = (bytes[l3]! & 15) * 4): void {
  const c = computeIpv4HeaderChecksum(bytes, l3, headerLength);
  bytes[l3 + 10] = c >>> 8;
  bytes[l3 + 11] = c & 0xff;
}

/**
 * Completes a partial checksum as the virtio-net NEEDS_CSUM offload asks (VirtIO 1.2
 * §5.1.6.2): the driver left the pseudo-header sum in the field at
 * `csumStart + csumOffset`; the device sums `bytes[csumStart, length)` (the field
 * included) and stores the complement there. A computed 0 is stored as 0xffff
 * (equivalent in one's complement, and what UDP needs, RFC 768). Returns false
 * and changes nothing when the offsets do not fit the frame: the caller drops it
 * and counts the error (a guest-supplied header is hostile).
 */
export function completePartialChecksum(bytes: Uint8Array, csumStart: number, csumOffset: number, length = bytes.length): boolean {
  const len = length < bytes.length ? length : bytes.length;
  if (!Number.isInteger(csumStart) || !Number.isInteger(csumOffset) || csumStart < 0 || csumOffset < 0 || csumStart + csumOffset + 2 > len) return false;
  const c = ~onesComplementSum(bytes, csumStart, len, 0) & 0xffff;
  const at = csumStart + csumOffset;
  const v = c === 0 ? 0xffff : c;
  bytes[at] = v >>> 8;
  bytes[at + 1] = v & 0xff;
  return true;
}

/** {@link completePartialChecksum} that throws a typed error instead of returning false. */
export function completePartialChecksumOrThrow(bytes: Uint8Array, csumStart: number, csumOffset: number, length = bytes.length): void {
  if (!completePartialChecksum(bytes, csumStart, csumOffset, length)) {
    throw new PacketError('invalid-offset', `csum_start ${csumStart} + csum_offset ${csumOffset} + 2 is past the frame's ${length} bytes`, 'csum_start', csumStart);
  }
}
