import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ArpIcmpResponder, buildArpRequest, buildIcmpEcho, parseIpv4, parseMac } from '@ioplane/packet';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { capture, CaptureWriter, createLoopbackPair, NetBackendError, type CaptureTime } from '../src/index.js';
import { timestampUnits } from '../src/capture.js';
import { testFrame, testNetBackend, waitFor } from '../src/testing.js';

function requireTshark(): void {
  try {
    execFileSync('tshark', ['--version'], { stdio: 'ignore' });
  } catch {
    throw new Error('tshark is missing: apt-get install -y --no-install-recommends tshark');
  }
}

/** tshark -T fields, one array per packet. */
function tshark(file: string, fields: string[], extra: string[] = []): string[][] {
  requireTshark();
  const out = execFileSync('tshark', ['-r', file, '-n', ...extra, '-T', 'fields', '-E', 'separator=|', ...fields.flatMap((f) => ['-e', f])], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  return out.trim().split('\n').filter((l) => l !== '').map((l) => l.split('|'));
}

let dir = '';
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'ioplane-capture-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

testNetBackend('pcapng capture around an in-process loopback', () => {
  const p = createLoopbackPair();
  const d = mkdtempSync(join(tmpdir(), 'ioplane-capture-conf-'));
  return { a: capture(p.a, { path: join(d, 'a.pcapng') }), b: capture(p.b, { path: join(d, 'b.pcap'), format: 'pcap' }), cleanup: () => rmSync(d, { recursive: true, force: true }) };
});

/** A deterministic clock: 1700000000.123456789 s, then +1.000001001 s per frame. */
function fakeClock(): (out: CaptureTime) => void {
  let i = 0;
  return (out) => {
    out.sec = 1_700_000_000 + i;
    out.nsec = 123_456_789 + i * 1001;
    i++;
  };
}

const HOST_MAC = parseMac('02:00:00:00:00:01');
const PEER_MAC = parseMac('02:00:00:00:00:02');
const HOST_IP = parseIpv4('10.200.1.1');
const PEER_IP = parseIpv4('10.200.1.2');

/** a (captured) asks b (an ARP/ICMP responder) for its MAC, then pings it 3 times. */
async function exchange(format: 'pcap' | 'pcapng', res: 'us' | 'ns', path: string): Promise<void> {
  const p = createLoopbackPair();
  const a = capture(p.a, { path, format, timestampResolution: res, clock: fakeClock(), interfaceName: 'guest0' });
  const responder = new ArpIcmpResponder(PEER_MAC, PEER_IP);
  const out = new Uint8Array(1600);
  p.b.onReceive((f) => {
    const n = responder.respond(f, out);
    if (n > 0) p.b.send([out.subarray(0, n)]);
  });
  let replies = 0;
  a.onReceive(() => replies++);
  const buf = new Uint8Array(1600);
  a.send([buf.subarray(0, buildArpRequest(buf, { srcMac: HOST_MAC, srcIp: HOST_IP, targetIp: PEER_IP }))]);
  await waitFor(() => replies === 1, 'the ARP reply');
  for (let seq = 1; seq <= 3; seq++) {
    a.send([buf.subarray(0, buildIcmpEcho(buf, { srcMac: HOST_MAC, dstMac: PEER_MAC, srcIp: HOST_IP, dstIp: PEER_IP, id: 0x77, sequence: seq, payload: new TextEncoder().encode('ioplane ping') }))]);
    await waitFor(() => replies === 1 + seq, `echo reply ${seq}`);
  }
  await a.close();
  await p.b.close();
  expect(a.writer.stats).toMatchObject({ packets: 8, files: 1, errors: 0 });
}

describe('capture files read by tshark', () => {
  for (const [format, res] of [['pcap', 'us'], ['pcap', 'ns'], ['pcapng', 'us'], ['pcapng', 'ns']] as const) {
    it(`${format} with ${res} timestamps: ARP and ICMP echo in both directions, checksums good`, async () => {
      const path = join(dir, `x.${format}`);
      await exchange(format, res, path);
      const rows = tshark(path, ['frame.number', 'frame.time_epoch', 'eth.type', 'arp.opcode', 'ip.src', 'ip.dst', 'icmp.type', 'icmp.seq', 'icmp.checksum.status', 'ip.checksum.status', 'frame.packet_flags_direction', 'frame.interface_name'], ['-o', 'ip.check_checksum:TRUE']);
      expect(rows.length).toBe(8);
      const time = (i: number): string => {
        const ns = 123_456_789 + i * 1001;
        const frac = res === 'ns' ? String(ns).padStart(9, '0') : String(Math.floor(ns / 1000) * 1000).padStart(9, '0');
        return `${1_700_000_000 + i}.${frac}`;
      };
      rows.forEach((r, i) => expect(r[1]).toBe(time(i)));
      expect(rows.map((r) => r[2])).toEqual(['0x0806', '0x0806', '0x0800', '0x0800', '0x0800', '0x0800', '0x0800', '0x0800']);
      expect(rows.map((r) => r[3])).toEqual(['1', '2', '', '', '', '', '', '']);
      expect(rows.slice(2).map((r) => [r[4], r[5], r[6], r[7], r[8], r[9]])).toEqual([
        ['10.200.1.1', '10.200.1.2', '8', '1', '1', '1'],
        ['10.200.1.2', '10.200.1.1', '0', '1', '1', '1'],
        ['10.200.1.1', '10.200.1.2', '8', '2', '1', '1'],
        ['10.200.1.2', '10.200.1.1', '0', '2', '1', '1'],
        ['10.200.1.1', '10.200.1.2', '8', '3', '1', '1'],
        ['10.200.1.2', '10.200.1.1', '0', '3', '1', '1'],
      ]);
      if (format === 'pcapng') {
        // epb_flags direction: 2 outbound (sent by the wrapped back-end), 1 inbound.
        expect(rows.map((r) => Number(r[10]))).toEqual([2, 1, 2, 1, 2, 1, 2, 1]);
        expect(rows.every((r) => r[11] === 'guest0')).toBe(true);
      }
    });
  }

  it('truncates to the snap length and keeps the original length', () => {
    const path = join(dir, 's.pcapng');
    const w = new CaptureWriter({ path, snaplen: 64, clock: fakeClock() });
    w.record(testFrame(200, 1, 1), 'out');
    w.record(testFrame(61, 1, 2), 'in');
    w.close();
    expect(tshark(path, ['frame.len', 'frame.cap_len'])).toEqual([['200', '64'], ['61', '61']]);
  });

  it('rotates at the size limit and keeps only the newest files', () => {
    const path = join(dir, 'r.pcap');
    const maxFileBytes = 1024 + 128 + 44;
    const w = new CaptureWriter({ path, format: 'pcap', snaplen: 128, maxFileBytes, maxFiles: 3, clock: fakeClock() });
    for (let i = 0; i < 100; i++) w.record(testFrame(100, 9, i), i % 2 ? 'in' : 'out');
    w.close();
    expect(w.files).toEqual([join(dir, 'r.7.pcap'), join(dir, 'r.8.pcap'), join(dir, 'r.9.pcap')]);
    expect(w.stats.files).toBe(10);
    const seqs: number[] = [];
    for (const f of w.files) {
      expect(statSync(f).size).toBeLessThanOrEqual(maxFileBytes);
      for (const [data] of tshark(f, ['data.data'])) seqs.push(parseInt(data!.slice(16, 24), 16));
    }
    // The surviving files hold the newest frames, in order, ending with the last.
    expect(seqs.at(-1)).toBe(99);
    expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => 100 - seqs.length + i));
    expect(() => statSync(join(dir, 'r.pcap'))).toThrow();
  });

  it('rejects bad options with typed errors', () => {
    expect(() => new CaptureWriter({ path: join(dir, 'x'), format: 'erf' as 'pcap' })).toThrow(NetBackendError);
    expect(() => new CaptureWriter({ path: join(dir, 'x'), maxFileBytes: 100 })).toThrow(expect.objectContaining({ field: 'maxFileBytes' }));
    expect(() => new CaptureWriter({ path: join(dir, 'x'), snaplen: 5 })).toThrow(expect.objectContaining({ field: 'snaplen' }));
    expect(() => new CaptureWriter({ path: join(dir, 'x'), maxFiles: 0 })).toThrow(expect.objectContaining({ field: 'maxFiles' }));
  });

  it('splits 64-bit pcapng timestamps exactly (against BigInt)', () => {
    const out = { hi: 0, lo: 0 };
    fc.assert(
      fc.property(fc.nat(0xffffffff), fc.constantFrom(1e6, 1e9), fc.nat(999_999_999), (sec, units, f) => {
        const frac = f % units;
        timestampUnits(sec, units, frac, out);
        const exact = BigInt(sec) * BigInt(units) + BigInt(frac);
        expect(BigInt(out.hi) * 2n ** 32n + BigInt(out.lo)).toBe(exact);
      }),
    );
  });
});
