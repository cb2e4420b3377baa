/** The builders' frames, written to a pcap and decoded by tshark (the real peer): fields and checksums. */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildArpReply, buildArpRequest, buildIcmpEcho, buildTcp, buildUdp, encapsulateVxlan, parseIpv4, parseIpv6, parseMac, segmentTcp } from '../src/index.js';

function pcap(frames: Uint8Array[]): Buffer {
  const parts: Buffer[] = [];
  const gh = Buffer.alloc(24);
  gh.writeUInt32LE(0xa1b2c3d4, 0);
  gh.writeUInt16LE(2, 4);
  gh.writeUInt16LE(4, 6);
  gh.writeUInt32LE(65535, 16);
  gh.writeUInt32LE(1, 20);
  parts.push(gh);
  frames.forEach((f, i) => {
    const h = Buffer.alloc(16);
    h.writeUInt32LE(i, 0);
    h.writeUInt32LE(f.length, 8);
    h.writeUInt32LE(f.length, 12);
    parts.push(h, Buffer.from(f));
  });
  return Buffer.concat(parts);
}

describe('tshark decodes what the builders build', () => {
  it('ARP, ICMP/ICMPv6 echo, UDP over IPv4/IPv6 with an 802.1Q tag, VXLAN: fields as built, every checksum good', () => {
    try {
      execFileSync('tshark', ['--version'], { stdio: 'ignore' });
    } catch (e) {
      throw new Error('tshark is missing: apt-get install -y --no-install-recommends tshark', { cause: e });
    }
    const A = parseMac('02:00:00:00:00:01');
    const B = parseMac('02:00:00:00:00:02');
    const a4 = parseIpv4('10.200.9.1');
    const b4 = parseIpv4('10.200.9.2');
    const frames: Uint8Array[] = [];
    const add = (fn: (out: Uint8Array) => number): void => {
      const out = new Uint8Array(2000);
      frames.push(out.slice(0, fn(out)));
    };
    add((o) => buildArpRequest(o, { srcMac: A, srcIp: a4, targetIp: b4 }));
    add((o) => buildArpReply(o, { srcMac: B, srcIp: b4, dstMac: A, dstIp: a4, padToMinimum: true }));
    add((o) => buildIcmpEcho(o, { srcMac: A, dstMac: B, srcIp: a4, dstIp: b4, id: 0x4242, sequence: 7, payload: new Uint8Array(56).fill(0x61) }));
    add((o) => buildIcmpEcho(o, { reply: true, srcMac: B, dstMac: A, srcIp: parseIpv6('fd00::2'), dstIp: parseIpv6('fd00::1'), id: 9, sequence: 10, payload: new Uint8Array(3) }));
    add((o) => buildUdp(o, { srcMac: A, dstMac: B, srcIp: a4, dstIp: b4, srcPort: 40000, dstPort: 9999, payload: new Uint8Array(33).fill(1), vlanTci: 0x6064 }));
    add((o) => buildUdp(o, { srcMac: A, dstMac: B, srcIp: parseIpv6('fd00::1'), dstIp: parseIpv6('fd00::2'), srcPort: 1, dstPort: 9998, payload: new Uint8Array(1) }));
    add((o) => encapsulateVxlan(o, frames[2]!, { srcMac: A, dstMac: B, srcIp: parseIpv4('10.200.8.1'), dstIp: parseIpv4('10.200.8.2'), srcPort: 50001, vni: 777, udpChecksum: true }));
    const dir = mkdtempSync(join(tmpdir(), 'ioplane-packet-'));
    try {
      const file = join(dir, 'built.pcap');
      writeFileSync(file, pcap(frames));
      const fields = ['arp.opcode', 'arp.src.proto_ipv4', 'vlan.id', 'vlan.priority', 'ip.checksum.status', 'icmp.type', 'icmp.seq', 'icmp.checksum.status', 'icmpv6.type', 'icmpv6.checksum.status', 'udp.dstport', 'udp.checksum.status', 'vxlan.vni', 'frame.len'];
      const out = execFileSync('tshark', ['-r', file, '-n', '-o', 'ip.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE', '-T', 'fields', '-E', 'separator=|', ...fields.flatMap((f) => ['-e', f])], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
      const rows = out.trim().split('\n').map((l) => Object.fromEntries(l.split('|').map((v, i) => [fields[i]!, v])));
      expect(rows.length).toBe(7);
      expect(rows[0]).toMatchObject({ 'arp.opcode': '1', 'arp.src.proto_ipv4': '10.200.9.1', 'frame.len': '42' });
      expect(rows[1]).toMatchObject({ 'arp.opcode': '2', 'frame.len': '60' });
      expect(rows[2]).toMatchObject({ 'ip.checksum.status': '1', 'icmp.type': '8', 'icmp.seq': '7', 'icmp.checksum.status': '1' });
      expect(rows[3]).toMatchObject({ 'icmpv6.type': '129', 'icmpv6.checksum.status': '1' });
      expect(rows[4]).toMatchObject({ 'vlan.id': '100', 'vlan.priority': '3', 'ip.checksum.status': '1', 'udp.dstport': '9999', 'udp.checksum.status': '1' });
      expect(rows[5]).toMatchObject({ 'udp.dstport': '9998', 'udp.checksum.status': '1' });
      // The VXLAN frame: outer and inner IP checksums good, outer UDP checksum good, inner echo decoded.
      expect(rows[6]).toMatchObject({ 'vxlan.vni': '777', 'ip.checksum.status': '1,1', 'udp.checksum.status': '1', 'icmp.type': '8', 'icmp.checksum.status': '1' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a TCP segment split by segmentTcp: tshark sees consecutive sequence numbers, lengths and good checksums', () => {
    const big = new Uint8Array(4000);
    const n = buildTcp(big, { srcMac: parseMac('02:00:00:00:00:01'), dstMac: parseMac('02:00:00:00:00:02'), srcIp: parseIpv4('10.200.9.1'), dstIp: parseIpv4('10.200.9.2'),
      srcPort: 5001, dstPort: 80, seq: 1_000_000, ack: 7, flags: 0x18, options: new Uint8Array([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]), payload: new Uint8Array(2500).fill(0x5a) });
    const frames: Uint8Array[] = [];
    segmentTcp(big.subarray(0, n), 1000, new Uint8Array(2000), (s, len) => frames.push(s.slice(0, len)));
    const dir = mkdtempSync(join(tmpdir(), 'ioplane-packet-'));
    try {
      const file = join(dir, 'tso.pcap');
      writeFileSync(file, pcap(frames));
      const out = execFileSync('tshark', ['-r', file, '-n', '-o', 'ip.check_checksum:TRUE', '-o', 'tcp.check_checksum:TRUE', '-o', 'tcp.relative_sequence_numbers:FALSE', '-T', 'fields', '-E', 'separator=|',
        '-e', 'tcp.seq', '-e', 'tcp.len', '-e', 'tcp.flags.push', '-e', 'tcp.checksum.status', '-e', 'ip.checksum.status', '-e', 'ip.id', '-e', 'tcp.options.timestamp.tsval'], { encoding: 'utf8', timeout: 30_000 });
      const rows = out.trim().split('\n').map((l) => l.split('|'));
      expect(rows.map((r) => [r[0], r[1], r[2], r[3], r[4], r[6]])).toEqual([
        ['1000000', '1000', '0', '1', '1', '1'],
        ['1001000', '1000', '0', '1', '1', '1'],
        ['1002000', '500', '1', '1', '1', '1'],
      ]);
      expect(rows.map((r) => Number(r[5]))).toEqual([0, 1, 2]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
