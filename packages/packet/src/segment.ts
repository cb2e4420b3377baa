import { computeL4Checksum, fillIpv4HeaderChecksum } from './checksum.js';
import { PacketError } from './errors.js';
import { Layer, PacketInfo, parsePacket } from './parse.js';

const FIN = 0x01;
const PSH = 0x08;
const CWR = 0x80;

/**
 * Software TCP segmentation, what a NIC's TSO does (and Linux's `skb_gso_segment`
 * for SKB_GSO_TCPV4/TCPV6): one TCP/IPv4 or TCP/IPv6 frame whose payload is larger
 * than `mss` becomes frames of at most `mss` payload bytes each. Every segment gets
 * the original headers (Ethernet, VLAN tags, IP with options or extension headers,
 * TCP with options) with:
 *
 * - the IP length fields for its size; IPv4 identification incremented per segment
 *   (as Linux does without SKB_GSO_TCP_FIXEDID) and the header checksum recomputed;
 * - the TCP sequence number advanced by the payload before it;
 * - FIN and PSH only on the last segment, CWR only on the first (RFC 3168 §6.1.2);
 * - the TCP checksum computed in full (RFC 9293 §3.1).
 *
 * Each segment is written into `out` and handed to `emit(out, length)` before the
 * next overwrites it: nothing is allocated per segment (pass a reusable `info` to
 * allocate nothing per call; it is left describing the last segment). Returns the number of
 * segments, or -1 (nothing emitted) when the frame is not a whole, unfragmented
 * TCP segment without anomalies — a guest-supplied frame the caller drops and counts.
 */
export function segmentTcp(
  frame: Uint8Array,
  mss: number,
  out: Uint8Array,
  emit: (segment: Uint8Array, length: number) => void,
  info: PacketInfo = new PacketInfo(),
  length = frame.length,
): number {
  if (!Number.isInteger(mss) || mss < 1 || mss > 65535) throw new PacketError('invalid-field', `mss ${mss} is outside 1..65535`, 'mss', mss);
  parsePacket(frame, info, length, 0);
  if (info.anomalies !== 0 || info.fragment !== 0 || (info.layers & Layer.TCP) === 0) return -1;
  const hdrLen = info.payloadOffset;
  const payloadLen = info.ipEnd - hdrLen;
  if (out.length < hdrLen + Math.min(mss, payloadLen)) {
    throw new PacketError('buffer-too-small', `a segment needs ${hdrLen + Math.min(mss, payloadLen)} bytes; out has ${out.length}`, 'out', out.length);
  }
  const l3 = info.l3Offset;
  const l4 = info.l4Offset;
  const v4 = info.ipVersion === 4;
  const flags = frame[l4 + 13]!;
  const seq0 = ((frame[l4 + 4]! << 24) | (frame[l4 + 5]! << 16) | (frame[l4 + 6]! << 8) | frame[l4 + 7]!) >>> 0;
  const id0 = v4 ? (frame[l3 + 4]! << 8) | frame[l3 + 5]! : 0;
  const count = payloadLen === 0 ? 1 : Math.ceil(payloadLen / mss);
  const ipHeaderLength = info.ipHeaderLength;
  out.set(frame.subarray(0, hdrLen), 0);
  for (let i = 0; i < count; i++) {
    const off = i * mss;
    const len = Math.min(mss, payloadLen - off);
    if (i > 0) out.set(frame.subarray(0, hdrLen), 0);
    out.set(frame.subarray(hdrLen + off, hdrLen + off + len), hdrLen);
    const ipLen = hdrLen - l3 + len;
    if (v4) {
      out[l3 + 2] = ipLen >>> 8;
      out[l3 + 3] = ipLen & 0xff;
      const id = (id0 + i) & 0xffff;
      out[l3 + 4] = id >>> 8;
      out[l3 + 5] = id & 0xff;
      fillIpv4HeaderChecksum(out, l3, ipHeaderLength);
    } else {
      const pl = ipLen - 40;
      out[l3 + 4] = pl >>> 8;
      out[l3 + 5] = pl & 0xff;
    }
    const seq = (seq0 + off) >>> 0;
    out[l4 + 4] = seq >>> 24;
    out[l4 + 5] = (seq >>> 16) & 0xff;
    out[l4 + 6] = (seq >>> 8) & 0xff;
    out[l4 + 7] = seq & 0xff;
    let f = flags;
    if (i !== count - 1) f &= ~(FIN | PSH);
    if (i !== 0) f &= ~CWR;
    out[l4 + 13] = f;
    const n = hdrLen + len;
    // `info` now describes the segment (the original's offsets were read above).
    parsePacket(out, info, n, 0);
    const c = computeL4Checksum(out, info);
    out[l4 + 16] = c >>> 8;
    out[l4 + 17] = c & 0xff;
    emit(out, n);
  }
  return count;
}
