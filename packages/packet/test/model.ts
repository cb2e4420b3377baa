/**
 * An independent reference for the parser: a packet described as plain data,
 * serialized by the simplest code (arrays, push), and the offsets that description
 * implies. The parser must recover them.
 */
export interface PacketModel {
  vlans: { tpid: number; tci: number }[];
  l3: 'arp' | 'ipv4' | 'ipv6' | 'other';
  /** IPv4 options, a whole number of 4-byte words, or IPv6 extension headers [next-header value, body length in 8-byte units]. */
  ipv4Options: number[];
  ipv6Ext: { type: 0 | 43 | 60 | 44; units: number }[];
  frag: { offset8: number; more: boolean };
  l4: 'udp' | 'tcp' | 'icmp' | 'none';
  tcpOptionsWords: number;
  payload: number[];
  ethPadding: number;
}

export interface Expected {
  l3Offset: number;
  etherType: number;
  ipHeaderLength: number;
  ipProtocol: number;
  ipEnd: number;
  l4Offset: number;
  payloadOffset: number;
  isFragment: boolean;
  laterFragment: boolean;
}

const u16 = (v: number): number[] => [(v >>> 8) & 255, v & 255];

export function serialize(m: PacketModel): { bytes: Uint8Array; expect: Expected } {
  const b: number[] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
  for (const v of m.vlans) b.push(...u16(v.tpid), ...u16(v.tci));
  const etherType = m.l3 === 'arp' ? 0x0806 : m.l3 === 'ipv4' ? 0x0800 : m.l3 === 'ipv6' ? 0x86dd : 0x88b5;
  b.push(...u16(etherType));
  const l3Offset = b.length;
  const exp: Expected = { l3Offset, etherType, ipHeaderLength: 0, ipProtocol: -1, ipEnd: -1, l4Offset: -1, payloadOffset: -1, isFragment: false, laterFragment: false };
  const proto = m.l4 === 'udp' ? 17 : m.l4 === 'tcp' ? 6 : m.l4 === 'icmp' ? (m.l3 === 'ipv6' ? 58 : 1) : 59;
  const l4: number[] = [];
  let l4HeaderLen = 0;
  if (m.l4 === 'udp') {
    l4HeaderLen = 8;
    l4.push(...u16(1000), ...u16(2000), ...u16(8 + m.payload.length), 0, 0);
  } else if (m.l4 === 'tcp') {
    l4HeaderLen = 20 + 4 * m.tcpOptionsWords;
    l4.push(...u16(1000), ...u16(2000), 0, 0, 0, 1, 0, 0, 0, 0, ((5 + m.tcpOptionsWords) << 4), 0x12, 0xff, 0xff, 0, 0, 0, 0);
    for (let i = 0; i < m.tcpOptionsWords; i++) l4.push(1, 1, 1, 1);
  } else if (m.l4 === 'icmp') {
    l4HeaderLen = 8;
    l4.push(8, 0, 0, 0, 0, 1, 0, 2);
  }
  l4.push(...m.payload);
  if (m.l3 === 'arp') {
    b.push(0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2);
  } else if (m.l3 === 'ipv4') {
    const ihl = 20 + m.ipv4Options.length;
    const fragField = (m.frag.more ? 0x2000 : 0) | m.frag.offset8;
    b.push(0x40 | (ihl / 4), 0, ...u16(ihl + l4.length), 0, 7, ...u16(fragField), 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, ...m.ipv4Options);
    exp.ipHeaderLength = ihl;
    exp.ipProtocol = proto;
    exp.ipEnd = l3Offset + ihl + l4.length;
    exp.isFragment = m.frag.more || m.frag.offset8 !== 0;
    exp.laterFragment = m.frag.offset8 !== 0;
    if (!exp.laterFragment) {
      exp.l4Offset = l3Offset + ihl;
      if (m.l4 !== 'none') exp.payloadOffset = exp.l4Offset + l4HeaderLen;
    }
    b.push(...l4);
  } else if (m.l3 === 'ipv6') {
    const ext: number[] = [];
    m.ipv6Ext.forEach((e, i) => {
      const next = i + 1 < m.ipv6Ext.length ? m.ipv6Ext[i + 1]!.type : proto;
      if (e.type === 44) {
        const ff = (m.frag.offset8 << 3) | (m.frag.more ? 1 : 0);
        ext.push(next, 0, ...u16(ff), 0, 0, 0, 9);
      } else {
        ext.push(next, e.units);
        for (let k = 0; k < 6 + 8 * e.units; k++) ext.push(k === 0 ? 1 : 0);
      }
    });
    const first = m.ipv6Ext.length ? m.ipv6Ext[0]!.type : proto;
    const plen = ext.length + l4.length;
    b.push(0x60, 0, 0, 0, ...u16(plen), first, 64);
    for (let i = 0; i < 32; i++) b.push(i);
    b.push(...ext);
    const fragHdr = m.ipv6Ext.some((e) => e.type === 44);
    exp.ipHeaderLength = 40 + ext.length;
    exp.ipProtocol = proto;
    exp.ipEnd = l3Offset + 40 + plen;
    exp.isFragment = fragHdr && (m.frag.more || m.frag.offset8 !== 0);
    exp.laterFragment = fragHdr && m.frag.offset8 !== 0;
    if (!exp.laterFragment) {
      exp.l4Offset = l3Offset + 40 + ext.length;
      if (m.l4 !== 'none') exp.payloadOffset = exp.l4Offset + l4HeaderLen;
    }
    b.push(...l4);
  } else {
    b.push(...m.payload);
  }
  for (let i = 0; i < m.ethPadding; i++) b.push(0);
  return { bytes: Uint8Array.from(b), expect: exp };
}
