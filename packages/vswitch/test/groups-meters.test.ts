import { afterEach, describe, expect, it } from 'vitest';
import { fillIpv4HeaderChecksum, verifyIpv4HeaderChecksum } from '@ioplane/packet';
import { Bridge, Port, VswitchError, remarkDscp, type FlowRemoved } from '../src/index.js';
import { SinkBackend, udpFrame } from './helpers.js';

let now = 0;
let br: Bridge;
afterEach(() => br.close());

function setup(n = 4): SinkBackend[] {
  now = 0;
  br = new Bridge({ clock: () => now });
  return Array.from({ length: n }, (_, i) => {
    const s = new SinkBackend();
    br.addPort(s, { portNo: i + 1 });
    return s;
  });
}

const toGroup = (groupId: number) => [{ type: 'apply_actions' as const, actions: [{ type: 'group' as const, groupId }] }];
const out = (port: number) => ({ type: 'output' as const, port });

describe('groups (OpenFlow 1.3.5 §5.6.1)', () => {
  it('ALL copies to every bucket, each on its own clone', () => {
    const s = setup();
    br.groupMod('add', { groupId: 1, type: 'all', buckets: [
      { actions: [{ type: 'set_field', field: 'eth_dst', value: '02:00:00:00:00:aa' }, out(2)] },
      { actions: [out(3)] },
    ] });
    br.addFlow({ match: { in_port: 1 }, instructions: toGroup(1) });
    const f = udpFrame(1, 2);
    s[0]!.inject(f);
    expect(s[1]!.sent[0]!.subarray(0, 6)).toEqual(Uint8Array.from([2, 0, 0, 0, 0, 0xaa]));
    expect(s[2]!.sent[0]).toEqual(f); // the second bucket did not see the first one's rewrite
    expect(br.groupStats()[0]!.buckets.map((b) => b.packetCount)).toEqual([1, 1]);
  });

  it('SELECT spreads flows by hash in proportion to weights and keeps a flow on one bucket', () => {
    const s = setup();
    br.groupMod('add', { groupId: 1, type: 'select', buckets: [{ weight: 3, actions: [out(2)] }, { weight: 1, actions: [out(3)] }] });
    br.addFlow({ match: { in_port: 1 }, instructions: toGroup(1) });
    for (let i = 0; i < 2000; i++) s[0]!.inject(udpFrame(1, 2, { sport: 1000 + i }));
    const a = s[1]!.sent.length;
    const b = s[2]!.sent.length;
    expect(a + b).toBe(2000);
    expect(a / b).toBeGreaterThan(2.3);
    expect(a / b).toBeLessThan(3.9);
    s[1]!.take();
    s[2]!.take();
    for (let i = 0; i < 50; i++) s[0]!.inject(udpFrame(1, 2, { sport: 4242 }));
    expect([s[1]!.sent.length, s[2]!.sent.length].sort()).toEqual([0, 50]);
  });

  it('INDIRECT has exactly one bucket', () => {
    const s = setup();
    expect(() => br.groupMod('add', { groupId: 1, type: 'indirect', buckets: [{ actions: [] }, { actions: [] }] })).toThrow(VswitchError);
    br.groupMod('add', { groupId: 1, type: 'indirect', buckets: [{ actions: [out(4)] }] });
    br.addFlow({ match: {}, instructions: toGroup(1) });
    s[0]!.inject(udpFrame(1, 2));
    expect(s[3]!.sent.length).toBe(1);
  });

  it('FAST_FAILOVER uses the first live bucket and switches when its watch port goes down, and back', () => {
    const s = setup();
    br.groupMod('add', { groupId: 1, type: 'ff', buckets: [{ watchPort: 2, actions: [out(2)] }, { watchPort: 3, actions: [out(3)] }] });
    br.addFlow({ match: { in_port: 1 }, instructions: toGroup(1) });
    s[0]!.inject(udpFrame(1, 2));
    expect([s[1]!.sent.length, s[2]!.sent.length]).toEqual([1, 0]);
    s[1]!.link(false); // the cached program must not be followed any more
    s[0]!.inject(udpFrame(1, 2));
    expect([s[1]!.sent.length, s[2]!.sent.length]).toEqual([1, 1]);
    br.setPortConfig(3, { down: true });
    s[0]!.inject(udpFrame(1, 2));
    expect([s[1]!.sent.length, s[2]!.sent.length]).toEqual([1, 1]); // no live bucket: dropped
    s[1]!.link(true);
    s[0]!.inject(udpFrame(1, 2));
    expect([s[1]!.sent.length, s[2]!.sent.length]).toEqual([2, 1]);
  });

  it('refuses loops, unknown groups and watchless fast-failover buckets; deleting a group removes its flows', () => {
    setup();
    expect(() => br.addFlow({ instructions: toGroup(9) })).toThrow(/group 9 does not exist/);
    expect(() => br.groupMod('add', { groupId: 1, type: 'ff', buckets: [{ actions: [] }] })).toThrow(/watches nothing/);
    br.groupMod('add', { groupId: 1, type: 'all', buckets: [{ actions: [out(2)] }] });
    br.groupMod('add', { groupId: 2, type: 'all', buckets: [{ actions: [{ type: 'group', groupId: 1 }] }] });
    expect(() => br.groupMod('modify', { groupId: 1, type: 'all', buckets: [{ actions: [{ type: 'group', groupId: 2 }] }] })).toThrow(/loop/);
    expect(() => br.groupMod('delete', { groupId: 1 })).toThrow(/used by group 2/);
    br.addFlow({ match: { in_port: 1 }, instructions: toGroup(2) });
    br.groupMod('delete', { groupId: 2 });
    expect(br.flows()).toEqual([]);
  });
});

describe('meters (§5.7) on the injected clock', () => {
  it('a pktps drop band passes the burst, then the rate', () => {
    const s = setup();
    br.meterMod('add', { meterId: 1, unit: 'pktps', burst: true, bands: [{ type: 'drop', rate: 100, burstSize: 10 }] });
    br.addFlow({ match: { in_port: 1 }, instructions: [{ type: 'meter', meterId: 1 }, { type: 'apply_actions', actions: [out(2)] }] });
    for (let i = 0; i < 50; i++) s[0]!.inject(udpFrame(1, 2));
    expect(s[1]!.sent.length).toBe(10);
    now += 100; // 100 ms at 100 pkt/s: 10 more tokens
    for (let i = 0; i < 50; i++) s[0]!.inject(udpFrame(1, 2));
    expect(s[1]!.sent.length).toBe(20);
    now += 10_000; // the bucket refills only to its burst
    for (let i = 0; i < 50; i++) s[0]!.inject(udpFrame(1, 2));
    expect(s[1]!.sent.length).toBe(30);
    const st = br.meterStats()[0]!;
    expect(st.packetInCount).toBe(150);
    expect(st.bands[0]!.packetCount).toBe(120);
    expect(st.flowCount).toBe(1);
  });

  it('a dscp_remark band raises the AF drop precedence past its rate (IPv4 checksum kept); a higher-rate drop band still drops', () => {
    const s = setup();
    br.meterMod('add', { meterId: 2, unit: 'pktps', burst: true, bands: [{ type: 'dscp_remark', rate: 100, burstSize: 4, precLevel: 1 }, { type: 'drop', rate: 200, burstSize: 8 }] });
    br.addFlow({ match: { in_port: 1 }, instructions: [{ type: 'meter', meterId: 2 }, { type: 'apply_actions', actions: [out(2)] }] });
    const af11 = udpFrame(1, 2);
    af11[15] = 10 << 2; // AF11
    fillIpv4HeaderChecksum(af11, 14);
    for (let i = 0; i < 10; i++) s[0]!.inject(af11);
    const got = s[1]!.take();
    // 4 within the remark band's burst, 4 more remarked (within the drop band's 8), 2 dropped.
    expect(got.map((f) => f[15]! >>> 2)).toEqual([10, 10, 10, 10, 12, 12, 12, 12]);
    for (const f of got) expect(verifyIpv4HeaderChecksum(f, 14)).toBe(true);
    const st = br.meterStats()[0]!;
    expect(st.bands.map((b) => b.packetCount)).toEqual([4, 2]);
    expect(() => br.meterMod('add', { meterId: 3, bands: [{ type: 'dscp_remark', rate: 10 }] })).toThrow(/precLevel/);
  });

  it('remarkDscp follows RFC 2597 AFxy and leaves other codepoints alone', () => {
    expect(remarkDscp(10, 1)).toBe(12); // AF11 → AF12
    expect(remarkDscp(10, 2)).toBe(14); // AF11 → AF13
    expect(remarkDscp(14, 1)).toBe(14); // AF13 stays
    expect(remarkDscp(34, 9)).toBe(38); // AF41 → AF43
    for (const d of [0, 8, 46, 48, 56, 11, 2, 42]) expect(remarkDscp(d, 1)).toBe(d); // BE, CS1, EF, CS6, CS7, odd, pool-2, AF5x is not AF
  });

  it('a kbps band counts bits; without the burst flag the bucket holds one second', () => {
    const s = setup();
    // 64 kb/s: 8000 bytes per second; 64-byte frames cost 512 bits each.
    br.meterMod('add', { meterId: 7, unit: 'kbps', bands: [{ type: 'drop', rate: 64 }] });
    br.addFlow({ match: {}, instructions: [{ type: 'meter', meterId: 7 }, { type: 'apply_actions', actions: [out(2)] }] });
    for (let i = 0; i < 200; i++) s[0]!.inject(udpFrame(1, 2, { size: 64 }));
    expect(s[1]!.sent.length).toBe(125); // 64 000 bits / 512
    now += 500;
    for (let i = 0; i < 200; i++) s[0]!.inject(udpFrame(1, 2, { size: 64 }));
    expect(s[1]!.sent.length).toBe(125 + 62);
  });

  it('the band with the highest rate among those exceeded applies; deleting a meter removes its flows', () => {
    setup();
    expect(() => br.meterMod('add', { meterId: 1, bands: [] })).toThrow(VswitchError);
    expect(() => br.addFlow({ instructions: [{ type: 'meter', meterId: 3 }] })).toThrow(/meter 3 does not exist/);
    br.meterMod('add', { meterId: 3, unit: 'pktps', burst: true, bands: [{ type: 'drop', rate: 10, burstSize: 1 }, { type: 'drop', rate: 1000, burstSize: 5 }] });
    br.addFlow({ instructions: [{ type: 'meter', meterId: 3 }] });
    for (let i = 0; i < 10; i++) br.receive(1, udpFrame(1, 2));
    const st = br.meterStats()[0]!;
    // Packet 1 passes both; 2..5 exceed only the 10 pkt/s band; 6..10 exceed both: the 1000 pkt/s band counts them.
    expect(st.bands.map((b) => b.packetCount)).toEqual([4, 5]);
    br.meterMod('delete', { meterId: 3 });
    expect(br.flows()).toEqual([]);
  });
});

describe('flow timeouts (§5.5) on the injected clock', () => {
  it('idle and hard timeouts expire entries, with flow-removed reports; traffic keeps an idle entry alive', () => {
    const s = setup();
    const removed: FlowRemoved[] = [];
    br.onFlowRemoved((f) => removed.push(f));
    br.addFlow({ priority: 10, match: { in_port: 1 }, idleTimeout: 10, flags: { sendFlowRem: true }, cookie: 7n, instructions: [{ type: 'apply_actions', actions: [out(2)] }] });
    br.addFlow({ priority: 10, match: { in_port: 3 }, hardTimeout: 5, flags: { sendFlowRem: true }, instructions: [{ type: 'apply_actions', actions: [out(2)] }] });
    for (let t = 0; t < 30; t++) {
      now = t * 1000;
      s[0]!.inject(udpFrame(1, 2));
      s[2]!.inject(udpFrame(3, 2));
    }
    // The hard entry died at 5 s despite traffic; the idle entry lives on while used.
    expect(removed.map((r) => [r.reason, r.priority])).toEqual([['hard_timeout', 10]]);
    expect(s[1]!.sent.length).toBe(30 + 5);
    now = 38_999;
    br.tick();
    expect(removed.length).toBe(1);
    now = 39_000;
    s[3]!.inject(udpFrame(4, 2)); // any packet runs due expiry first
    expect(removed.map((r) => r.reason)).toEqual(['hard_timeout', 'idle_timeout']);
    expect(removed[1]!.cookie).toBe(7n);
    expect(removed[1]!.packetCount).toBe(30);
    s[0]!.inject(udpFrame(1, 2));
    expect(s[1]!.sent.length).toBe(35);
  });
});

describe('table-miss and the controller hooks', () => {
  it('misses drop by default, go to the controller when configured; packet-out sends and runs the tables', () => {
    const s = setup();
    const pins: { reason: string; len: number; table: number }[] = [];
    br.onPacketIn((p) => {
      pins.push({ reason: p.reason, len: p.data.length, table: p.tableId });
      // A controller answers from its handler: packet-out the frame to port 3.
      br.packetOut({ inPort: p.inPort, data: p.data, actions: [out(3)] });
    });
    const big = udpFrame(1, 2, { size: 300 });
    s[0]!.inject(big);
    expect(pins).toEqual([]);
    br.setTableMiss(0, 'controller');
    s[0]!.inject(big);
    expect(pins).toEqual([{ reason: 'no_match', len: 128, table: 0 }]);
    expect(s[2]!.sent.length).toBe(1);
    br.addFlow({ match: { in_port: 1 }, cookie: 5n, instructions: [{ type: 'apply_actions', actions: [{ type: 'output', port: Port.CONTROLLER, maxLen: 0xffff }] }] });
    s[0]!.inject(big);
    expect(pins[1]).toEqual({ reason: 'action', len: big.length, table: 0 });
    br.addFlow({ priority: 1, match: { in_port: 2 }, instructions: [{ type: 'apply_actions', actions: [out(4)] }] });
    br.packetOut({ inPort: 2, data: udpFrame(2, 1), actions: [{ type: 'output', port: Port.TABLE }] });
    expect(s[3]!.sent.length).toBe(1);
    expect(() => br.packetOut({ data: new Uint8Array(4), actions: [] })).toThrow(VswitchError);
  });
});
