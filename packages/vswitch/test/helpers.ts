import { BaseNetBackend } from '@ioplane/net-backends';
import { buildUdp, parseIpv4, parseMac, writeEthernet } from '@ioplane/packet';

/** An in-memory port: records copies of what the switch sends, injects frames as received. */
export class SinkBackend extends BaseNetBackend {
  readonly kind = 'sink';
  readonly sent: Uint8Array[] = [];
  constructor(mtu = 1500) {
    super(mtu);
    this.setLink(true);
  }

  send(frames: readonly Uint8Array[], count = frames.length): number {
    for (let i = 0; i < count; i++) {
      const f = frames[i]!;
      if (!this.admit(f)) continue;
      this.sent.push(f.slice());
      this.stats.txPackets++;
      this.stats.txBytes += f.length;
    }
    return count;
  }

  inject(frame: Uint8Array): void {
    this.deliver(frame);
  }

  link(up: boolean): void {
    this.setLink(up);
  }

  take(): Uint8Array[] {
    return this.sent.splice(0);
  }

  close(): Promise<void> {
    this.markClosed();
    return Promise.resolve();
  }
}

export const mac = (n: number): string => `02:00:00:00:00:${n.toString(16).padStart(2, '0')}`;

/** A UDP/IPv4 frame between stations `src` and `dst` (MAC 02:..:0n, IP 10.0.0.n). */
export function udpFrame(src: number, dst: number, opts: { vlan?: number; sport?: number; dport?: number; dstMac?: string; size?: number } = {}): Uint8Array {
  const size = opts.size ?? 64;
  const payload = new Uint8Array(Math.max(0, size - 42));
  const out = new Uint8Array(size + 4);
  const n = buildUdp(out, {
    srcMac: parseMac(mac(src)), dstMac: parseMac(opts.dstMac ?? mac(dst)), srcIp: parseIpv4(`10.0.0.${src}`), dstIp: parseIpv4(`10.0.0.${dst}`),
    srcPort: opts.sport ?? 1000, dstPort: opts.dport ?? 2000, payload,
  });
  let f: Uint8Array<ArrayBufferLike> = out.subarray(0, n);
  if (opts.vlan !== undefined) f = tag(f, opts.vlan);
  return f.slice();
}

/** Inserts an 802.1Q tag. */
export function tag(frame: Uint8Array, vid: number, pcp = 0): Uint8Array<ArrayBufferLike> {
  const out = new Uint8Array(frame.length + 4);
  out.set(frame.subarray(0, 12), 0);
  out[12] = 0x81;
  out[13] = 0x00;
  out[14] = ((pcp << 5) | (vid >> 8)) & 0xff;
  out[15] = vid & 0xff;
  out.set(frame.subarray(12), 16);
  return out;
}

export function vlanOf(frame: Uint8Array): number {
  return frame[12] === 0x81 && frame[13] === 0x00 ? ((frame[14]! << 8) | frame[15]!) & 0xfff : -1;
}

export function broadcastFrame(src: number, vlan?: number): Uint8Array {
  const f = new Uint8Array(64);
  writeEthernet(f, 0, parseMac('ff:ff:ff:ff:ff:ff'), parseMac(mac(src)), 0x88b5);
  return vlan === undefined ? f : tag(f, vlan);
}

export function hex(f: Uint8Array): string {
  return Buffer.from(f).toString('hex');
}
