/**
 * Zero-copy views: each wraps a byte array and an offset and reads or writes the
 * header's fields in place (network byte order). `bind()` re-points a view, so one
 * instance serves every packet. Views do not check bounds: bind them at offsets a
 * {@link PacketInfo} vouched for (STYLE.md 4, "validate once, then run unchecked").
 */
abstract class HeaderView {
  bytes: Uint8Array = new Uint8Array(0);
  offset = 0;
  bind(bytes: Uint8Array, offset = 0): this {
    this.bytes = bytes;
    this.offset = offset;
    return this;
  }
  protected u8(at: number): number {
    return this.bytes[this.offset + at]!;
  }
  protected setU8(at: number, v: number): void {
    this.bytes[this.offset + at] = v;
  }
  protected u16(at: number): number {
    const o = this.offset + at;
    return (this.bytes[o]! << 8) | this.bytes[o + 1]!;
  }
  protected setU16(at: number, v: number): void {
    const o = this.offset + at;
    this.bytes[o] = v >>> 8;
    this.bytes[o + 1] = v;
  }
  protected u32(at: number): number {
    const o = this.offset + at;
    return ((this.bytes[o]! << 24) | (this.bytes[o + 1]! << 16) | (this.bytes[o + 2]! << 8) | this.bytes[o + 3]!) >>> 0;
  }
  protected setU32(at: number, v: number): void {
    const o = this.offset + at;
    this.bytes[o] = v >>> 24;
    this.bytes[o + 1] = v >>> 16;
    this.bytes[o + 2] = v >>> 8;
    this.bytes[o + 3] = v;
  }
  /** A zero-copy sub-array of `len` bytes at `at` (allocates the view object only). */
  protected sub(at: number, len: number): Uint8Array {
    return this.bytes.subarray(this.offset + at, this.offset + at + len);
  }
}

/** Ethernet II: dst(0..5) src(6..11) type(12..13). */
export class EthernetView extends HeaderView {
  get dst(): Uint8Array {
    return this.sub(0, 6);
  }
  get src(): Uint8Array {
    return this.sub(6, 6);
  }
  get etherType(): number {
    return this.u16(12);
  }
  set etherType(v: number) {
    this.setU16(12, v);
  }
  setDst(mac: Uint8Array): void {
    this.bytes.set(mac.subarray(0, 6), this.offset);
  }
  setSrc(mac: Uint8Array): void {
    this.bytes.set(mac.subarray(0, 6), this.offset + 6);
  }
}

/** An 802.1Q/802.1ad tag: TPID(0..1), TCI(2..3) = PCP(3) DEI(1) VID(12) (IEEE 802.1Q §9.6). */
export class VlanTagView extends HeaderView {
  get tpid(): number {
    return this.u16(0);
  }
  get tci(): number {
    return this.u16(2);
  }
  get pcp(): number {
    return this.u8(2) >> 5;
  }
  get dei(): boolean {
    return (this.u8(2) & 0x10) !== 0;
  }
  get vid(): number {
    return this.u16(2) & 0xfff;
  }
  set tci(v: number) {
    this.setU16(2, v);
  }
}

/** ARP for Ethernet/IPv4 (RFC 826), 28 bytes. */
export class ArpView extends HeaderView {
  get hardwareType(): number {
    return this.u16(0);
  }
  get protocolType(): number {
    return this.u16(2);
  }
  get operation(): number {
    return this.u16(6);
  }
  set operation(v: number) {
    this.setU16(6, v);
  }
  get senderMac(): Uint8Array {
    return this.sub(8, 6);
  }
  get senderIp(): number {
    return this.u32(14);
  }
  set senderIp(v: number) {
    this.setU32(14, v);
  }
  get targetMac(): Uint8Array {
    return this.sub(18, 6);
  }
  get targetIp(): number {
    return this.u32(24);
  }
  set targetIp(v: number) {
    this.setU32(24, v);
  }
}

/** IPv4 header (RFC 791 §3.1). */
export class Ipv4View extends HeaderView {
  get version(): number {
    return this.u8(0) >> 4;
  }
  get headerLength(): number {
    return (this.u8(0) & 15) * 4;
  }
  get dscp(): number {
    return this.u8(1) >> 2;
  }
  get ecn(): number {
    return this.u8(1) & 3;
  }
  get tos(): number {
    return this.u8(1);
  }
  get totalLength(): number {
    return this.u16(2);
  }
  set totalLength(v: number) {
    this.setU16(2, v);
  }
  get id(): number {
    return this.u16(4);
  }
  get dontFragment(): boolean {
    return (this.u8(6) & 0x40) !== 0;
  }
  get moreFragments(): boolean {
    return (this.u8(6) & 0x20) !== 0;
  }
  /** In bytes (the field counts 8-octet units). */
  get fragmentOffset(): number {
    return (this.u16(6) & 0x1fff) * 8;
  }
  get ttl(): number {
    return this.u8(8);
  }
  set ttl(v: number) {
    this.setU8(8, v);
  }
  get protocol(): number {
    return this.u8(9);
  }
  get checksum(): number {
    return this.u16(10);
  }
  set checksum(v: number) {
    this.setU16(10, v);
  }
  get src(): number {
    return this.u32(12);
  }
  set src(v: number) {
    this.setU32(12, v);
  }
  get dst(): number {
    return this.u32(16);
  }
  set dst(v: number) {
    this.setU32(16, v);
  }
  /** The options bytes (zero-copy), empty when IHL is 5. */
  get options(): Uint8Array {
    return this.sub(20, this.headerLength - 20);
  }
}

/** IPv6 fixed header (RFC 8200 §3). */
export class Ipv6View extends HeaderView {
  get version(): number {
    return this.u8(0) >> 4;
  }
  get trafficClass(): number {
    return (this.u16(0) >> 4) & 0xff;
  }
  get flowLabel(): number {
    return this.u32(0) & 0xfffff;
  }
  get payloadLength(): number {
    return this.u16(4);
  }
  get nextHeader(): number {
    return this.u8(6);
  }
  get hopLimit(): number {
    return this.u8(7);
  }
  set hopLimit(v: number) {
    this.setU8(7, v);
  }
  get src(): Uint8Array {
    return this.sub(8, 16);
  }
  get dst(): Uint8Array {
    return this.sub(24, 16);
  }
}

/** UDP header (RFC 768). */
export class UdpView extends HeaderView {
  get srcPort(): number {
    return this.u16(0);
  }
  set srcPort(v: number) {
    this.setU16(0, v);
  }
  get dstPort(): number {
    return this.u16(2);
  }
  set dstPort(v: number) {
    this.setU16(2, v);
  }
  get length(): number {
    return this.u16(4);
  }
  get checksum(): number {
    return this.u16(6);
  }
  set checksum(v: number) {
    this.setU16(6, v);
  }
}

/** TCP header (RFC 9293 §3.1). */
export class TcpView extends HeaderView {
  get srcPort(): number {
    return this.u16(0);
  }
  get dstPort(): number {
    return this.u16(2);
  }
  get seq(): number {
    return this.u32(4);
  }
  get ack(): number {
    return this.u32(8);
  }
  get dataOffset(): number {
    return (this.u8(12) >> 4) * 4;
  }
  /** The 12 flag bits as Open vSwitch matches them (tcp_flags): NS..FIN. */
  get flags(): number {
    return this.u16(12) & 0xfff;
  }
  get window(): number {
    return this.u16(14);
  }
  get checksum(): number {
    return this.u16(16);
  }
  set checksum(v: number) {
    this.setU16(16, v);
  }
  get urgentPointer(): number {
    return this.u16(18);
  }
}

/** ICMP (RFC 792) and ICMPv6 (RFC 4443) header; id/sequence for echo messages. */
export class IcmpView extends HeaderView {
  get type(): number {
    return this.u8(0);
  }
  set type(v: number) {
    this.setU8(0, v);
  }
  get code(): number {
    return this.u8(1);
  }
  get checksum(): number {
    return this.u16(2);
  }
  set checksum(v: number) {
    this.setU16(2, v);
  }
  get id(): number {
    return this.u16(4);
  }
  get sequence(): number {
    return this.u16(6);
  }
}

/** VXLAN header (RFC 7348 §5): flags(1, I=0x08) reserved(3) VNI(3) reserved(1). */
export class VxlanView extends HeaderView {
  get flags(): number {
    return this.u8(0);
  }
  get validVni(): boolean {
    return (this.u8(0) & 0x08) !== 0;
  }
  get vni(): number {
    return this.u32(4) >>> 8;
  }
  set vni(v: number) {
    this.setU32(4, (v << 8) >>> 0);
  }
}
