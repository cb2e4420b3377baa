import { readIpv4 } from './addr.js';
import { buildArpReply, buildIcmpEcho } from './build.js';
import { onesComplementSum } from './checksum.js';
import { ARP_OP_REQUEST, ICMP_ECHO_REQUEST } from './constants.js';
import { Layer, PacketInfo, parsePacket } from './parse.js';

export interface ResponderStats {
  arpReplies: number;
  echoReplies: number;
  /** Frames for us that were malformed (bad ICMP checksum, truncated). */
  errors: number;
  /** Frames not for us, or of a kind we do not answer. */
  ignored: number;
}

/**
 * A minimal IPv4 host: answers ARP requests for its address (RFC 826) and ICMP
 * echo requests to it (RFC 792; RFC 1122 §3.2.2.6: the reply carries the same
 * identifier, sequence and data). Used by tests as the far end of a back-end,
 * and by examples. Allocates nothing per frame.
 */
export class ArpIcmpResponder {
  readonly stats: ResponderStats = { arpReplies: 0, echoReplies: 0, errors: 0, ignored: 0 };
  private readonly info = new PacketInfo();

  constructor(
    readonly mac: Uint8Array,
    readonly ip: number,
  ) {}

  /**
   * Builds the answer to `frame` into `out` and returns its length, or 0 when the
   * frame needs no answer.
   */
  respond(frame: Uint8Array, out: Uint8Array): number {
    const info = parsePacket(frame, this.info, frame.length, 0);
    const l3 = info.l3Offset;
    const tci = info.vlanCount === 1 ? info.vlanTci0 : undefined;
    if (info.layers & Layer.ARP) {
      const op = (frame[l3 + 6]! << 8) | frame[l3 + 7]!;
      if (op !== ARP_OP_REQUEST || readIpv4(frame, l3 + 24) !== this.ip) {
        this.stats.ignored++;
        return 0;
      }
      this.stats.arpReplies++;
      return buildArpReply(out, { srcMac: this.mac, srcIp: this.ip, dstMac: frame.subarray(l3 + 8, l3 + 14), dstIp: readIpv4(frame, l3 + 14), vlanTci: tci });
    }
    if (info.layers & Layer.ICMP && readIpv4(frame, l3 + 16) === this.ip) {
      const l4 = info.l4Offset;
      if (frame[l4] !== ICMP_ECHO_REQUEST) {
        this.stats.ignored++;
        return 0;
      }
      if (info.anomalies !== 0 || info.fragment !== 0 || onesComplementSum(frame, l4, info.ipEnd) !== 0xffff) {
        this.stats.errors++;
        return 0;
      }
      if (out.length < info.ipEnd) {
        this.stats.errors++;
        return 0;
      }
      this.stats.echoReplies++;
      return buildIcmpEcho(out, {
        reply: true,
        srcMac: this.mac,
        dstMac: frame.subarray(6, 12),
        srcIp: this.ip,
        dstIp: readIpv4(frame, l3 + 12),
        id: (frame[l4 + 4]! << 8) | frame[l4 + 5]!,
        sequence: (frame[l4 + 6]! << 8) | frame[l4 + 7]!,
        payload: frame.subarray(l4 + 8, info.ipEnd),
        vlanTci: tci,
      });
    }
    this.stats.ignored++;
    return 0;
  }
}
