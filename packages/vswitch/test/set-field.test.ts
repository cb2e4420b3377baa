import { afterEach, describe, expect, it } from 'vitest';
import {
  PacketInfo, buildArp, buildIcmpEcho, buildUdp, parseIpv4, parseIpv6, parseMac, parsePacket, verifyIpv4HeaderChecksum, verifyL4Checksum,
} from '@ioplane/packet';
import { Bridge, VswitchError, type Action, type Match } from '../src/index.js';
import { SinkBackend } from './helpers.js';

const M1 = parseMac('02:00:00:00:00:01');
const M2 = parseMac('02:00:00:00:00:02');

const udp6 = (): Uint8Array => {
  const out = new Uint8Array(128);
  const n = buildUdp(out, { srcMac: M1, dstMac: M2, srcIp: parseIpv6('2001:db8::1'), dstIp: parseIpv6('2001:db8::2'), srcPort: 1000, dstPort: 2000, payload: new Uint8Array(10) });
  return out.slice(0, n);
};
const icmp = (v6: boolean): Uint8Array => {
  const out = new Uint8Array(128);
  const n = buildIcmpEcho(out, v6
    ? { srcMac: M1, dstMac: M2, srcIp: parseIpv6('2001:db8::1'), dstIp: parseIpv6('2001:db8::2'), id: 1, sequence: 1, payload: new Uint8Array(12) }
    : { srcMac: M1, dstMac: M2, srcIp: parseIpv4('10.0.0.1'), dstIp: parseIpv4('10.0.0.2'), id: 1, sequence: 1, payload: new Uint8Array(12) });
  return out.slice(0, n);
};
const arp = (): Uint8Array => {
  const out = new Uint8Array(64);
  const n = buildArp(out, { operation: 1, srcMac: M1, srcIp: parseIpv4('10.0.0.1'), targetMac: new Uint8Array(6), targetIp: parseIpv4('10.0.0.2'), ethDst: parseMac('ff:ff:ff:ff:ff:ff'), padToMinimum: true });
  return out.slice(0, n);
};

const kindOf = (fn: () => unknown): string => {
  try {
    fn();
  } catch (e) {
    if (e instanceof VswitchError) return e.kind;
    throw e;
  }
  return 'none';
};

describe('set_field of IPv6, ARP and ICMP fields (OpenFlow 1.3.5 §7.2.5, Table 12 prerequisites)', () => {
  let br: Bridge;
  let s1: SinkBackend;
  let s2: SinkBackend;
  afterEach(() => br.close());
  const setup = (): void => {
    br = new Bridge({ clock: () => 0 });
    s1 = new SinkBackend();
    s2 = new SinkBackend();
    br.addPort(s1, { portNo: 1 });
    br.addPort(s2, { portNo: 2 });
  };
  const flow = (match: Match, actions: Action[], tableId = 0, goto = -1): void => {
    br.addFlow({
      tableId, priority: 1, match,
      instructions: [{ type: 'apply_actions', actions }, ...(goto >= 0 ? [{ type: 'goto_table' as const, tableId: goto }] : [])],
    });
  };
  const parsed = (f: Uint8Array): PacketInfo => {
    const info = new PacketInfo();
    parsePacket(f, info);
    return info;
  };

  it('rejects set_fields whose prerequisites the flow does not match, and bad values', () => {
    setup();
    const add = (match: Match, a: Action) => kindOf(() => flow(match, [a]));
    expect(add({ eth_type: 0x0800 }, { type: 'set_field', field: 'ipv6_src', value: '2001:db8::9' })).toBe('bad-prerequisite');
    expect(add({ eth_type: 0x0800 }, { type: 'set_field', field: 'arp_tpa', value: '10.0.0.9' })).toBe('bad-prerequisite');
    expect(add({ eth_type: 0x86dd, ip_proto: 58 }, { type: 'set_field', field: 'icmpv4_type', value: 0 })).toBe('bad-prerequisite');
    expect(add({ eth_type: 0x0800, ip_proto: 1 }, { type: 'set_field', field: 'icmpv6_code', value: 0 })).toBe('bad-prerequisite');
    expect(add({ eth_type: 0x86dd }, { type: 'set_field', field: 'ipv6_dst', value: '10.0.0.1' })).toBe('bad-action');
    expect(add({ eth_type: 0x86dd }, { type: 'set_field', field: 'ipv6_flabel', value: 0x100000 })).toBe('bad-action');
    expect(add({ eth_type: 0x0806 }, { type: 'set_field', field: 'arp_sha', value: 'not-a-mac' })).toBe('bad-action');
    expect(add({ eth_type: 0x0806 }, { type: 'set_field', field: 'arp_op', value: 256 })).toBe('bad-action');
    expect(add({ eth_type: 0x0800, ip_proto: 1 }, { type: 'set_field', field: 'icmpv4_code', value: -1 })).toBe('bad-action');
    expect(add({ eth_type: 0x86dd }, { type: 'set_field', field: 'ipv6_dst', value: '2001:db8::7' })).toBe('none');
  });

  it('rewrites IPv6 addresses and the flow label with a valid UDP checksum, and later tables match the new address', () => {
    setup();
    flow({ eth_type: 0x86dd }, [{ type: 'set_field', field: 'ipv6_dst', value: '2001:db8:ffff::42' }, { type: 'set_field', field: 'ipv6_src', value: 'fe80::1' }, { type: 'set_field', field: 'ipv6_flabel', value: 0xabcde }], 0, 1);
    flow({ eth_type: 0x86dd, ipv6_dst: '2001:db8:ffff::/48', ipv6_flabel: 0xabcde }, [{ type: 'output', port: 2 }], 1);
    for (let i = 0; i < 3; i++) s1.inject(udp6()); // upcall, then cache hits
    const got = s2.take();
    expect(got).toHaveLength(3);
    for (const f of got) {
      const info = parsed(f);
      expect(Buffer.from(f.subarray(14 + 8, 14 + 24)).equals(Buffer.from(parseIpv6('fe80::1')))).toBe(true);
      expect(Buffer.from(f.subarray(14 + 24, 14 + 40)).equals(Buffer.from(parseIpv6('2001:db8:ffff::42')))).toBe(true);
      expect(((f[15]! & 0x0f) << 16) | (f[16]! << 8) | f[17]!).toBe(0xabcde);
      expect(verifyL4Checksum(f, info)).toBe(true);
    }
  });

  it('rewrites ICMPv4 and ICMPv6 type and code with valid checksums (ICMPv6 also after an address rewrite)', () => {
    setup();
    flow({ eth_type: 0x0800, ip_proto: 1 }, [{ type: 'set_field', field: 'icmpv4_type', value: 0 }, { type: 'set_field', field: 'icmpv4_code', value: 3 }, { type: 'output', port: 2 }]);
    flow({ eth_type: 0x86dd, ip_proto: 58 }, [{ type: 'set_field', field: 'icmpv6_type', value: 129 }, { type: 'set_field', field: 'ipv6_src', value: '2001:db8::99' }, { type: 'output', port: 2 }]);
    s1.inject(icmp(false));
    s1.inject(icmp(true));
    const [v4, v6] = s2.take();
    expect(v4![34]).toBe(0);
    expect(v4![35]).toBe(3);
    expect(verifyIpv4HeaderChecksum(v4!, 14)).toBe(true);
    expect(verifyL4Checksum(v4!, parsed(v4!))).toBe(true);
    expect(v6![54]).toBe(129);
    expect(verifyL4Checksum(v6!, parsed(v6!))).toBe(true);
  });

  it('rewrites the ARP opcode, addresses and hardware addresses, and a later table matches them', () => {
    setup();
    flow({ eth_type: 0x0806 }, [
      { type: 'set_field', field: 'arp_op', value: 2 },
      { type: 'set_field', field: 'arp_sha', value: '02:00:00:00:00:aa' },
      { type: 'set_field', field: 'arp_tha', value: '02:00:00:00:00:01' },
      { type: 'set_field', field: 'arp_spa', value: '10.0.0.2' },
      { type: 'set_field', field: 'arp_tpa', value: '10.0.0.1' },
    ], 0, 1);
    flow({ eth_type: 0x0806, arp_op: 2, arp_sha: '02:00:00:00:00:aa', arp_tha: '02:00:00:00:00:01', arp_spa: '10.0.0.2', arp_tpa: '10.0.0.1' }, [{ type: 'output', port: 2 }], 1);
    s1.inject(arp());
    s1.inject(arp());
    const got = s2.take();
    expect(got).toHaveLength(2);
    const f = got[1]!;
    expect((f[20]! << 8) | f[21]!).toBe(2);
    expect(Buffer.from(f.subarray(22, 28)).toString('hex')).toBe('0200000000aa');
    expect(Array.from(f.subarray(28, 32))).toEqual([10, 0, 0, 2]);
    expect(Buffer.from(f.subarray(32, 38)).toString('hex')).toBe('020000000001');
    expect(Array.from(f.subarray(38, 42))).toEqual([10, 0, 0, 1]);
  });

  it('a match-all flow rewriting IPv6 addresses leaves IPv4 traffic alone (the megaflow keeps eth_type exact)', () => {
    setup();
    br.groupMod('add', { groupId: 1, type: 'indirect', buckets: [{ actions: [{ type: 'set_field', field: 'ipv6_dst', value: '2001:db8::77' }, { type: 'output', port: 2 }] }] });
    flow({}, [{ type: 'group', groupId: 1 }]);
    const v4 = icmp(false);
    for (let i = 0; i < 2; i++) {
      s1.inject(udp6());
      s1.inject(v4);
    }
    const got = s2.take();
    expect(got).toHaveLength(4);
    expect(Buffer.from(got[2]!.subarray(38, 54)).equals(Buffer.from(parseIpv6('2001:db8::77')))).toBe(true);
    expect(Buffer.from(got[3]!).equals(Buffer.from(v4))).toBe(true);
    expect(br.stats.megaflow.entries).toBe(2);
  });
});
