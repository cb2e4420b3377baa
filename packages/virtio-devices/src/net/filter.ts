import { NET_MAC_TABLE_ENTRIES, NET_MAX_VLAN } from './defs.js';

/**
 * The receive filter a virtio-net device applies (VirtIO 1.2 §5.1.6.5.1–3):
 * RX modes (promiscuous, all-multicast, all-unicast, no-multicast,
 * no-unicast, no-broadcast), the device MAC, a MAC table of unicast and
 * multicast entries, and a VLAN filter. Allocates nothing per frame.
 *
 * The order of the checks is QEMU's `receive_filter`: promiscuous takes
 * everything; a frame with an 802.1Q tag whose VID is not in the VLAN table
 * is dropped; broadcast unless NOBCAST; multicast by ALLMULTI or the table
 * unless NOMULTI; unicast to the device MAC, by ALLUNI or the table unless
 * NOUNI.
 */
export class RxFilter {
  promisc = true;
  allMulti = false;
  allUni = false;
  noMulti = false;
  noUni = false;
  noBcast = false;
  /** The VLAN filter is in force (VIRTIO_NET_F_CTRL_VLAN negotiated); otherwise every VID passes. */
  vlanFiltering = false;
  readonly mac = new Uint8Array(6);
  /** MAC table: unicast entries first, then multicast (6 bytes each). */
  readonly table = new Uint8Array(NET_MAC_TABLE_ENTRIES * 6);
  uniCount = 0;
  multiCount = 0;
  /** More entries than the table holds: treated as all-unicast / all-multicast (as QEMU does). */
  uniOverflow = false;
  multiOverflow = false;
  readonly vlans = new Uint32Array(NET_MAX_VLAN / 32);

  /** Back to the state after a device reset: promiscuous (QEMU's default), tables empty. */
  reset(): void {
    this.promisc = true;
    this.allMulti = this.allUni = this.noMulti = this.noUni = this.noBcast = false;
    this.vlanFiltering = false;
    this.uniCount = this.multiCount = 0;
    this.uniOverflow = this.multiOverflow = false;
    this.vlans.fill(0);
  }

  addVlan(vid: number): void {
    this.vlans[vid >>> 5]! |= 1 << (vid & 31);
  }
  delVlan(vid: number): void {
    this.vlans[vid >>> 5]! &= ~(1 << (vid & 31));
  }
  hasVlan(vid: number): boolean {
    return (this.vlans[vid >>> 5]! & (1 << (vid & 31))) !== 0;
  }

  /** Does the filter let `frame` (an Ethernet frame of at least 14 bytes) through? */
  accepts(frame: Uint8Array): boolean {
    if (this.promisc) return true;
    // 802.1Q tag (TPID 0x8100): the VID must be in the table (§5.1.6.5.3).
    if (this.vlanFiltering && frame.length >= 16 && frame[12] === 0x81 && frame[13] === 0x00) {
      const vid = ((frame[14]! & 0x0f) << 8) | frame[15]!;
      if (!this.hasVlan(vid)) return false;
    }
    if ((frame[0]! & 1) !== 0) {
      if (frame[0] === 0xff && frame[1] === 0xff && frame[2] === 0xff && frame[3] === 0xff && frame[4] === 0xff && frame[5] === 0xff) return !this.noBcast;
      if (this.noMulti) return false;
      if (this.allMulti || this.multiOverflow) return true;
      return this.inTable(frame, this.uniCount, this.uniCount + this.multiCount);
    }
    if (this.noUni) return false;
    if (this.allUni || this.uniOverflow) return true;
    const m = this.mac;
    if (frame[0] === m[0] && frame[1] === m[1] && frame[2] === m[2] && frame[3] === m[3] && frame[4] === m[4] && frame[5] === m[5]) return true;
    return this.inTable(frame, 0, this.uniCount);
  }

  private inTable(frame: Uint8Array, from: number, to: number): boolean {
    const t = this.table;
    for (let i = from; i < to; i++) {
      const o = i * 6;
      if (frame[0] === t[o] && frame[1] === t[o + 1] && frame[2] === t[o + 2] && frame[3] === t[o + 3] && frame[4] === t[o + 4] && frame[5] === t[o + 5]) return true;
    }
    return false;
  }
}
