import { describe, expect, it } from 'vitest';
import {
  Anomaly, ArpIcmpResponder, ArpView, buildArpReply, buildArpRequest, buildIcmpEcho, buildUdp, encapsulateVxlan, EthernetView,
  FLOW_FIELDS, FlowKey, FlowKeyExtractor, formatIpv4, formatIpv6, formatMac, IcmpView, Ipv4View, Ipv6View, Layer, PacketError,
  PacketInfo, parseIpv4, parseIpv6, parseMac, parsePacket, TcpView, UdpView, verifyIpv4HeaderChecksum, verifyL4Checksum,
  VLAN_PRESENT, VlanTagView, vxlanSourcePort, VxlanView, FRAG_ANY, FRAG_LATER, macToNumber, writeEthernet, writeIpHeader,
  internetChecksum, pseudoHeaderSumV6,
} from '../src/index.js';
import { hex, toHex } from './helpers.js';

const A = parseMac('02:00:00:00:00:01');
const B = parseMac('02:00:00:00:00:02');
const IP_A = parseIpv4('10.200.0.1');
const IP_B = parseIpv4('10.200.0.2');

// Golden frames: built here, decoded by tshark 4.0 with every checksum "Good" (see the repository history).
const GOLDEN_ECHO_V4 = '02000000000202000000000108004500002400000000400165470ac800010ac800020800455f12340001696f706c616e6521';
const GOLDEN_ECHO_V6 = '02000000000202000000000186dd60000000000a3a40fd000000000000000000000000000001fd00000000000000000000000000000280000f70000700097636';
const GOLDEN_ARP_REQ = 'ffffffffffff020000000001080600010800060400010200000000010ac800010000000000000ac80002';
const GOLDEN_VXLAN = '020000000001020000000002080045000056000000004011f693c0000201c0000202c35012b500422929080000001234560002000000000202000000000108004500002400000000400165470ac800010ac800020800455f12340001696f706c616e6521';
const GOLDEN_UDP_V6 = '02000000000202000000000186dd60000000000b1140fd000000000000000000000000000001fd00000000000000000000000000000214e90035000becb3010203';

describe('addresses', () => {
  it('parse and format MAC, IPv4, IPv6 (RFC 5952)', () => {
    expect(formatMac(parseMac('AA-bb-cc-00-01-ff'))).toBe('aa:bb:cc:00:01:ff');
    expect(formatIpv4(parseIpv4('10.200.3.4'))).toBe('10.200.3.4');
    expect(formatIpv6(parseIpv6('fd00:0:0:0:0:0:0:1'))).toBe('fd00::1');
    expect(formatIpv6(parseIpv6('::ffff:10.0.0.1'))).toBe('::ffff:a00:1');
    expect(formatIpv6(parseIpv6('2001:db8::1:0:0:1'))).toBe('2001:db8::1:0:0:1');
    expect(macToNumber(parseMac('ff:ff:ff:ff:ff:ff'))).toBe(2 ** 48 - 1);
    for (const bad of ['1.2.3', '1.2.3.256', 'a.b.c.d']) expect(() => parseIpv4(bad)).toThrow(PacketError);
    for (const bad of ['1:2:3', 'fd00::1::2', 'g::1', '1:2:3:4:5:6:7:8:9']) expect(() => parseIpv6(bad)).toThrow(PacketError);
    expect(() => parseMac('02:00:00:00:00')).toThrow(PacketError);
  });
});

describe('builders produce the golden bytes', () => {
  const out = new Uint8Array(2000);
  it('ICMP echo request over IPv4 and ICMPv6 over IPv6', () => {
    const text = new TextEncoder().encode('ioplane!');
    expect(toHex(out.subarray(0, buildIcmpEcho(out, { srcMac: A, dstMac: B, srcIp: IP_A, dstIp: IP_B, id: 0x1234, sequence: 1, payload: text })))).toBe(GOLDEN_ECHO_V4);
    expect(toHex(out.subarray(0, buildIcmpEcho(out, { srcMac: A, dstMac: B, srcIp: parseIpv6('fd00::1'), dstIp: parseIpv6('fd00::2'), id: 7, sequence: 9, payload: new TextEncoder().encode('v6') })))).toBe(GOLDEN_ECHO_V6);
  });
  it('ARP request and a UDP/IPv6 datagram', () => {
    expect(toHex(out.subarray(0, buildArpRequest(out, { srcMac: A, srcIp: IP_A, targetIp: IP_B })))).toBe(GOLDEN_ARP_REQ);
    expect(toHex(out.subarray(0, buildUdp(out, { srcMac: A, dstMac: B, srcIp: parseIpv6('fd00::1'), dstIp: parseIpv6('fd00::2'), srcPort: 5353, dstPort: 53, payload: hex('010203') })))).toBe(GOLDEN_UDP_V6);
  });
  it('VXLAN encapsulation (RFC 7348 §5), outer UDP checksum on request', () => {
    const inner = hex(GOLDEN_ECHO_V4);
    const n = encapsulateVxlan(out, inner, { srcMac: B, dstMac: A, srcIp: parseIpv4('192.0.2.1'), dstIp: parseIpv4('192.0.2.2'), srcPort: 50000, vni: 0x123456, udpChecksum: true });
    expect(toHex(out.subarray(0, n))).toBe(GOLDEN_VXLAN);
  });
  it('ARP reply and padding to the Ethernet minimum', () => {
    const n = buildArpReply(out, { srcMac: B, srcIp: IP_B, dstMac: A, dstIp: IP_A, padToMinimum: true });
    expect(n).toBe(60);
    const arp = new ArpView().bind(out, 14);
    expect(arp.operation).toBe(2);
    expect(formatMac(arp.targetMac)).toBe('02:00:00:00:00:01');
    expect(formatIpv4(arp.senderIp)).toBe('10.200.0.2');
  });
  it('reject bad fields and small buffers with typed errors', () => {
    expect(() => buildArpRequest(new Uint8Array(20), { srcMac: A, srcIp: IP_A, targetIp: IP_B })).toThrow(expect.objectContaining({ kind: 'buffer-too-small' }));
    expect(() => buildUdp(out, { srcMac: A, dstMac: B, srcIp: IP_A, dstIp: IP_B, srcPort: 70000, dstPort: 1 })).toThrow(expect.objectContaining({ kind: 'invalid-field', field: 'srcPort' }));
    expect(() => encapsulateVxlan(out, hex(GOLDEN_ARP_REQ), { srcMac: A, dstMac: B, srcIp: 1, dstIp: 2, srcPort: 1, vni: 1 << 24 })).toThrow(expect.objectContaining({ kind: 'invalid-field', field: 'vni' }));
    expect(() => buildUdp(out, { srcMac: A, dstMac: B, srcIp: IP_A, dstIp: parseIpv6('::1'), srcPort: 1, dstPort: 1 })).toThrow(PacketError);
  });
  it('maps flow hashes into the dynamic port range', () => {
    for (const h of [0, 1, 0xffffffff, 123456789]) {
      const p = vxlanSourcePort(h);
      expect(p).toBeGreaterThanOrEqual(49152);
      expect(p).toBeLessThanOrEqual(65535);
    }
  });
});

describe('parsePacket rules', () => {
  const info = new PacketInfo();
  it('parses the golden VXLAN frame down to the inner frame and the inner echo', () => {
    const f = hex(GOLDEN_VXLAN);
    parsePacket(f, info);
    expect(info.anomalies).toBe(0);
    expect(info.layers & (Layer.IPV4 | Layer.UDP | Layer.VXLAN)).toBe(Layer.IPV4 | Layer.UDP | Layer.VXLAN);
    expect(info.vni).toBe(0x123456);
    expect(new VxlanView().bind(f, info.vxlanOffset).vni).toBe(0x123456);
    expect(verifyL4Checksum(f, info)).toBe(true);
    const inner = f.subarray(info.innerOffset);
    parsePacket(inner, info);
    expect(info.layers & Layer.ICMP).toBeTruthy();
    expect(verifyL4Checksum(inner, info)).toBe(true);
    expect(new IcmpView().bind(inner, info.l4Offset).id).toBe(0x1234);
    // VXLAN recognition can be turned off or moved to another port.
    parsePacket(f, info, f.length, 0);
    expect(info.layers & Layer.VXLAN).toBe(0);
    parsePacket(f, info, f.length, 8472);
    expect(info.layers & Layer.VXLAN).toBe(0);
  });

  it('marks a VXLAN header without the I flag (RFC 7348 §5) and an inner frame shorter than 14 bytes', () => {
    const f = hex(GOLDEN_VXLAN);
    f[42] = 0;
    parsePacket(f, info);
    expect(info.anomalies & Anomaly.BAD_VXLAN).toBeTruthy();
    expect(info.layers & Layer.UDP).toBeTruthy();
    const g = hex(GOLDEN_VXLAN).subarray(0, 50 + 10);
    // Fix the IP and UDP lengths so only the inner frame is short.
    g[16] = 0;
    g[17] = 60 - 14;
    g[38] = 0;
    g[39] = 60 - 34;
    parsePacket(g, info);
    expect(info.anomalies).toBe(Anomaly.BAD_VXLAN);
  });

  it('walks 802.1ad + 802.1Q tags and marks a third', () => {
    const base = hex(GOLDEN_ARP_REQ);
    const tagged = new Uint8Array(base.length + 8);
    tagged.set(base.subarray(0, 12));
    tagged.set(hex('88a8 2064 8100 a00a'), 12);
    tagged.set(base.subarray(12), 20);
    parsePacket(tagged, info);
    expect(info.anomalies).toBe(0);
    expect([info.vlanCount, info.vlanTpid0, info.vlanTci0, info.vlanTpid1, info.vlanTci1]).toEqual([2, 0x88a8, 0x2064, 0x8100, 0xa00a]);
    expect(new VlanTagView().bind(tagged, 16).vid).toBe(10);
    expect(new VlanTagView().bind(tagged, 16).pcp).toBe(5);
    expect(info.layers & Layer.ARP).toBeTruthy();
    const triple = new Uint8Array(tagged.length + 4);
    triple.set(tagged.subarray(0, 20));
    triple.set(hex('8100 0001'), 20);
    triple.set(tagged.subarray(20), 24);
    parsePacket(triple, info);
    expect(info.anomalies & Anomaly.TOO_MANY_VLAN_TAGS).toBeTruthy();
    expect(info.l3Offset).toBe(-1);
  });

  it('marks ARP that is not Ethernet/IPv4 (RFC 826)', () => {
    const f = hex(GOLDEN_ARP_REQ);
    f[19] = 8;
    parsePacket(f, info);
    expect(info.anomalies).toBe(Anomaly.BAD_ARP);
  });

  it('IPv4: IHL below 5, version mismatch, total length below the header, Ethernet padding, options, fragments', () => {
    const f = hex(GOLDEN_ECHO_V4);
    const g = Uint8Array.from(f);
    g[14] = 0x44;
    expect(parsePacket(g, info).anomalies).toBe(Anomaly.BAD_IPV4_IHL);
    g[14] = 0x65;
    expect(parsePacket(g, info).anomalies).toBe(Anomaly.BAD_IP_VERSION);
    g.set(f);
    g[17] = 19;
    expect(parsePacket(g, info).anomalies).toBe(Anomaly.BAD_IP_LENGTH);
    // Padding after the IP total length is not part of the packet.
    const padded = new Uint8Array(80);
    padded.set(f);
    parsePacket(padded, info);
    expect(info.anomalies).toBe(0);
    expect(info.ipEnd).toBe(f.length);
    expect(verifyL4Checksum(padded, info)).toBe(true);
    // Fragments (RFC 791 §3.1): a first fragment keeps L4, a later one does not.
    g.set(f);
    g[20] = 0x20;
    parsePacket(g, info);
    expect([info.fragment, info.moreFragments, info.l4Offset]).toEqual([FRAG_ANY, true, 34]);
    g[20] = 0x00;
    g[21] = 0x03;
    parsePacket(g, info);
    expect([info.fragment, info.fragmentOffset, info.l4Offset, info.layers & Layer.ICMP]).toEqual([FRAG_ANY | FRAG_LATER, 24, -1, 0]);
  });

  it('IPv4 options: walked, a bad option length marked but the packet still parsed', () => {
    // One 4-byte option: Router Alert (RFC 2113, type 0x94, length 4).
    const opt = hex('4600 0026 0000 0000 4011 0000 0a000001 0a000002 94040000 1234 0035 0008 0000 00000000 0000');
    const f = new Uint8Array(14 + opt.length);
    f.set(hex('020000000002 020000000001 0800'));
    f.set(opt, 14);
    parsePacket(f, info);
    expect(info.anomalies).toBe(0);
    expect([info.ipHeaderLength, info.ipv4OptionsLength, info.l4Offset]).toEqual([24, 4, 38]);
    expect(new Ipv4View().bind(f, 14).options.length).toBe(4);
    f[35] = 9;
    parsePacket(f, info);
    expect(info.anomalies).toBe(Anomaly.BAD_IPV4_OPTIONS);
    expect(info.layers & Layer.UDP).toBeTruthy();
    f[35] = 1;
    expect(parsePacket(f, info).anomalies).toBe(Anomaly.BAD_IPV4_OPTIONS);
  });

  it('IPv6: Hop-by-Hop not first is marked (RFC 8200 §4.1), an over-long chain is cut, ESP stops the walk', () => {
    const f = hex(GOLDEN_UDP_V6);
    parsePacket(f, info);
    expect(info.anomalies).toBe(0);
    const v6 = new Ipv6View().bind(f, 14);
    expect(formatIpv6(v6.src)).toBe('fd00::1');
    expect(new UdpView().bind(f, info.l4Offset).dstPort).toBe(53);
    const frame = (exts: number[][], last: number): Uint8Array => {
      const body: number[] = [];
      exts.forEach((e, i) => body.push(i + 1 < exts.length ? exts[i + 1]![0]! : last, 0, 1, 0, 0, 0, 0, 0));
      const b = new Uint8Array(54 + body.length);
      b.set(f.subarray(0, 54));
      b[18] = body.length >> 8;
      b[19] = body.length & 0xff;
      b[20] = exts.length ? exts[0]![0]! : last;
      b.set(body, 54);
      return b;
    };
    parsePacket(frame([[0], [60], [43]], 59), info);
    expect([info.anomalies, info.ipv6ExtensionCount, info.ipProtocol, info.ipHeaderLength]).toEqual([0, 3, 59, 64]);
    parsePacket(frame([[60], [0]], 59), info);
    expect(info.anomalies).toBe(Anomaly.BAD_IPV6_EXTENSION);
    parsePacket(frame(Array.from({ length: 20 }, () => [60]), 59), info);
    expect(info.anomalies).toBe(Anomaly.BAD_IPV6_EXTENSION);
    expect(info.ipv6ExtensionCount).toBe(12);
    parsePacket(frame([[60]], 50), info);
    expect([info.anomalies, info.ipProtocol, info.payloadOffset]).toEqual([0, 50, -1]);
  });

  it('L4: a TCP data offset below 5 and a UDP length past the datagram are marked', () => {
    const out = new Uint8Array(200);
    const n = buildUdp(out, { srcMac: A, dstMac: B, srcIp: IP_A, dstIp: IP_B, srcPort: 1, dstPort: 2, payload: hex('00') });
    const f = out.subarray(0, n);
    f[38] = 0;
    f[39] = 50;
    expect(parsePacket(f, info).anomalies).toBe(Anomaly.BAD_L4_LENGTH);
    f[39] = 7;
    expect(parsePacket(f, info).anomalies).toBe(Anomaly.BAD_L4_LENGTH);
    expect(info.layers & Layer.UDP).toBe(0);
    // Turn it into TCP with a 20-byte header and data offset 4.
    const t = new Uint8Array(54);
    t.set(f.subarray(0, 34));
    t[16] = 0;
    t[17] = 40;
    t[23] = 6;
    t[34 + 12] = 0x40;
    expect(parsePacket(t, info).anomalies).toBe(Anomaly.BAD_L4_LENGTH);
    t[34 + 12] = 0x50;
    t[34 + 13] = 0x12;
    parsePacket(t, info);
    expect(info.anomalies).toBe(0);
    expect(new TcpView().bind(t, 34).flags).toBe(0x12);
  });

  it('never throws on any prefix of the golden frames and marks the truncation', () => {
    for (const g of [GOLDEN_ECHO_V4, GOLDEN_ECHO_V6, GOLDEN_ARP_REQ, GOLDEN_VXLAN, GOLDEN_UDP_V6]) {
      const f = hex(g);
      for (let n = 0; n < f.length; n++) {
        parsePacket(f, info, n);
        expect(info.anomalies, `${g.slice(0, 8)} cut at ${n}`).not.toBe(0);
      }
      expect(parsePacket(f, info).anomalies).toBe(0);
    }
  });

  it('views read and write in place', () => {
    const f = hex(GOLDEN_ECHO_V4);
    const eth = new EthernetView().bind(f);
    expect(formatMac(eth.src)).toBe('02:00:00:00:00:01');
    eth.setDst(A);
    expect(formatMac(f.subarray(0, 6))).toBe('02:00:00:00:00:01');
    const ip = new Ipv4View().bind(f, 14);
    expect([ip.version, ip.headerLength, ip.ttl, ip.protocol, formatIpv4(ip.dst)]).toEqual([4, 20, 64, 1, '10.200.0.2']);
    expect(verifyIpv4HeaderChecksum(f, 14)).toBe(true);
    ip.ttl = 63;
    expect(verifyIpv4HeaderChecksum(f, 14)).toBe(false);
  });
});

describe('flow key', () => {
  const ex = new FlowKeyExtractor();
  const key = new FlowKey();
  it('extracts L2, L3, L4 fields into the fixed layout', () => {
    const out = new Uint8Array(200);
    const n = buildUdp(out, { srcMac: A, dstMac: B, srcIp: IP_A, dstIp: IP_B, srcPort: 1111, dstPort: 2222, vlanTci: 0x2005, ttl: 9 });
    ex.extract(out.subarray(0, n), key, 7);
    expect(key.get('in_port')).toBe(7);
    expect(key.get('eth_type')).toBe(0x0800);
    expect(key.get('vlan_tci')).toBe(0x2005 | VLAN_PRESENT);
    expect(key.get('vlan_vid')).toBe(5);
    expect(key.get('vlan_pcp')).toBe(1);
    expect(key.get('nw_proto')).toBe(17);
    expect(key.get('nw_ttl')).toBe(9);
    expect(key.get('nw_src')).toBe(IP_A);
    expect(key.get('nw_dst')).toBe(IP_B);
    expect([key.get('tp_src'), key.get('tp_dst')]).toEqual([1111, 2222]);
    expect(key.words[4]).toBe(0x02000000);
    expect(key.words[5]).toBe(0x00020200);
    expect(key.words[6]).toBe(0x00000001);
  });
  it('ARP as Open vSwitch keys it: opcode in nw_proto, spa/tpa in nw_src/nw_dst', () => {
    ex.extract(hex(GOLDEN_ARP_REQ), key, 1);
    expect([key.get('eth_type'), key.get('nw_proto'), key.get('nw_src'), key.get('nw_dst')]).toEqual([0x0806, 1, IP_A, IP_B]);
    expect(key.words[20]).toBe(0x02000000);
  });
  it('IPv6 addresses in four words each; ICMPv6 type/code in the port word', () => {
    ex.extract(hex(GOLDEN_ECHO_V6), key, 1);
    expect([...key.words.subarray(10, 14)]).toEqual([0xfd000000, 0, 0, 1]);
    expect([...key.words.subarray(14, 18)]).toEqual([0xfd000000, 0, 0, 2]);
    expect(key.get('tp_src')).toBe(128);
    expect(key.get('nw_proto')).toBe(58);
  });
  it('masks, masked equality and masked hash agree', () => {
    const k2 = new FlowKey();
    const out = new Uint8Array(200);
    let n = buildUdp(out, { srcMac: A, dstMac: B, srcIp: IP_A, dstIp: IP_B, srcPort: 1, dstPort: 53 });
    ex.extract(out.subarray(0, n), key, 1);
    n = buildUdp(out, { srcMac: A, dstMac: B, srcIp: IP_A, dstIp: IP_B, srcPort: 2, dstPort: 53 });
    ex.extract(out.subarray(0, n), k2, 1);
    const mask = new FlowKey().exact('in_port').exact('eth_type').exact('nw_proto').exact('nw_dst').exact('tp_dst');
    expect(key.equals(k2)).toBe(false);
    expect(key.equalsMasked(k2, mask)).toBe(true);
    expect(key.hash(mask)).toBe(k2.hash(mask));
    expect(key.hash()).not.toBe(k2.hash());
    const m1 = new FlowKey().maskFrom(key, mask);
    expect(m1.hash()).toBe(key.hash(mask));
    expect(mask.get(FLOW_FIELDS.tp_src)).toBe(0);
    expect(key.hash5Tuple()).not.toBe(k2.hash5Tuple());
  });
});

describe('ARP/ICMP responder', () => {
  it('answers ARP for its address and echo requests with the same id, sequence and data', () => {
    const r = new ArpIcmpResponder(B, IP_B);
    const out = new Uint8Array(1600);
    const info = new PacketInfo();
    let n = r.respond(hex(GOLDEN_ARP_REQ), out);
    parsePacket(out.subarray(0, n), info);
    expect(info.layers & Layer.ARP).toBeTruthy();
    expect(formatMac(out.subarray(22, 28))).toBe('02:00:00:00:00:02');
    n = r.respond(hex(GOLDEN_ECHO_V4), out);
    const reply = out.subarray(0, n);
    parsePacket(reply, info);
    expect(verifyL4Checksum(reply, info)).toBe(true);
    expect(reply[info.l4Offset]).toBe(0);
    expect(toHex(reply.subarray(info.l4Offset + 4))).toBe(toHex(hex(GOLDEN_ECHO_V4).subarray(38)));
    const bad = hex(GOLDEN_ECHO_V4);
    bad[bad.length - 1] = bad[bad.length - 1]! ^ 0xff;
    expect(r.respond(bad, out)).toBe(0);
    expect(r.stats).toEqual({ arpReplies: 1, neighborAdvertisements: 0, echoReplies: 1, errors: 1, ignored: 0 });
    expect(new ArpIcmpResponder(B, IP_A).respond(hex(GOLDEN_ECHO_V4), out)).toBe(0);
  });

  it('answers IPv6 Neighbor Solicitations (RFC 4861 §7.2.4) and ICMPv6 echo when given an IPv6 address', () => {
    const me = parseIpv6('fd00::1');
    const peer = parseIpv6('fd00::2');
    const r = new ArpIcmpResponder(B, IP_B, me);
    const out = new Uint8Array(1600);
    const info = new PacketInfo();
    // A Neighbor Solicitation from fd00::2 for fd00::1, to the solicited-node group.
    const ns = new Uint8Array(14 + 40 + 32);
    writeEthernet(ns, 0, parseMac('33:33:ff:00:00:01'), A, 0x86dd);
    writeIpHeader(ns, 14, { src: peer, dst: parseIpv6('ff02::1:ff00:1'), protocol: 58, payloadLength: 32, ttl: 255 });
    ns[54] = 135;
    ns.set(me, 62);
    ns.set([1, 1, ...A], 78);
    const c = internetChecksum(ns, 54, 86, pseudoHeaderSumV6(ns, 22, 38, 58, 32));
    ns[56] = c >>> 8;
    ns[57] = c & 0xff;
    let n = r.respond(ns, out);
    const na = out.subarray(0, n);
    parsePacket(na, info);
    expect(info.layers & Layer.ICMPV6).toBeTruthy();
    expect(verifyL4Checksum(na, info)).toBe(true);
    expect([na[54], na[58], na[21]]).toEqual([136, 0x60, 255]);
    expect(formatIpv6(na, 62)).toBe('fd00::1');
    expect(formatMac(na, 80)).toBe(formatMac(B));
    expect(formatMac(na, 0)).toBe(formatMac(A));
    // A hop limit other than 255 is ignored (§7.1.1).
    const bad = Uint8Array.from(ns);
    bad[21] = 64;
    expect(r.respond(bad, out)).toBe(0);
    // ICMPv6 echo to us.
    n = buildIcmpEcho(out, { srcMac: A, dstMac: B, srcIp: peer, dstIp: me, id: 5, sequence: 6, payload: hex('abcd') });
    const req = out.slice(0, n);
    n = r.respond(req, out);
    parsePacket(out.subarray(0, n), info);
    expect(verifyL4Checksum(out.subarray(0, n), info)).toBe(true);
    expect(out[info.l4Offset]).toBe(129);
    expect(r.stats).toMatchObject({ neighborAdvertisements: 1, echoReplies: 1, ignored: 1 });
  });
});
