import { afterEach, describe, expect, it } from 'vitest';
import { Layer, PacketInfo, parsePacket } from '@ioplane/packet';
import { Bridge, Port, VswitchError } from '../src/index.js';
import { SinkBackend, broadcastFrame, udpFrame } from './helpers.js';

const bridges: Bridge[] = [];
afterEach(() => {
  for (const b of bridges.splice(0)) b.close();
});
function bridge(): Bridge {
  const b = new Bridge({ clock: () => 0 });
  bridges.push(b);
  return b;
}
const out = (port: number) => ({ type: 'output' as const, port });

describe('VXLAN tunnel ports (RFC 7348)', () => {
  it('encapsulates with the flow tunnel_id as VNI, decapsulates on the far side with tunnel_id and tun_src to match on', () => {
    const a = bridge();
    const b = bridge();
    const hostA = new SinkBackend();
    const hostB = new SinkBackend();
    const wireA = new SinkBackend(1600);
    const wireB = new SinkBackend(1600);
    a.addPort(hostA, { portNo: 1 });
    a.addTunnelPort({ portNo: 10, underlay: wireA, localIp: '192.0.2.1', remoteIp: '192.0.2.2', localMac: '02:aa:00:00:00:01', remoteMac: '02:bb:00:00:00:01' });
    b.addPort(hostB, { portNo: 1 });
    b.addTunnelPort({ portNo: 10, underlay: wireB, localIp: '192.0.2.2', remoteIp: '192.0.2.1', localMac: '02:bb:00:00:00:01', remoteMac: '02:aa:00:00:00:01' });
    a.addFlow({ match: { in_port: 1 }, instructions: [{ type: 'apply_actions', actions: [{ type: 'set_field', field: 'tunnel_id', value: 5000 }, out(10)] }] });
    b.addFlow({ match: { in_port: 10, tunnel_id: 5000, tun_src: '192.0.2.1' }, instructions: [{ type: 'apply_actions', actions: [out(1)] }] });
    const inner = udpFrame(1, 2);
    hostA.inject(inner);
    expect(wireA.sent.length).toBe(1);
    const outer = wireA.sent[0]!;
    const info = new PacketInfo();
    parsePacket(outer, info);
    expect(info.layers & Layer.VXLAN).toBeTruthy();
    expect(info.vni).toBe(5000);
    const sport = (outer[34]! << 8) | outer[35]!;
    expect(sport).toBeGreaterThanOrEqual(49152);
    expect(outer.subarray(info.innerOffset)).toEqual(inner);
    wireB.inject(outer);
    expect(hostB.sent).toEqual([inner]);
    // A VNI the flow does not name, or a foreign VTEP, is not delivered.
    const other = outer.slice();
    other[info.vxlanOffset + 6] = 1;
    wireB.inject(other);
    expect(hostB.sent.length).toBe(1);
    const foreign = outer.slice();
    foreign[14 + 15] = 9; // outer source 192.0.2.9
    wireB.inject(foreign);
    expect(b.portInfo(10).stats.rxDropped).toBe(1);
  });

  it('tunnel_id is 64 bits: the VNI is its low 24 bits, and packet-ins carry all 64', async () => {
    const a = bridge();
    const host = new SinkBackend();
    const wire = new SinkBackend(1600);
    a.addPort(host, { portNo: 1 });
    a.addTunnelPort({ portNo: 10, underlay: wire, localIp: '192.0.2.1', remoteIp: '192.0.2.2', localMac: '02:aa:00:00:00:01', remoteMac: '02:bb:00:00:00:01' });
    const tid = 0xdead_beef_0112_3456n;
    a.addFlow({ match: { in_port: 1 }, instructions: [{ type: 'apply_actions', actions: [{ type: 'set_field', field: 'tunnel_id', value: tid }] }, { type: 'goto_table', tableId: 1 }] });
    a.addFlow({ tableId: 1, match: { tunnel_id: { value: 0xdead_beef_0000_0000n, mask: 0xffff_ffff_0000_0000n } }, instructions: [{ type: 'apply_actions', actions: [out(10), { type: 'output', port: Port.CONTROLLER }] }] });
    const ins: bigint[] = [];
    a.onPacketIn((p) => ins.push(p.tunnelId));
    for (let i = 0; i < 2; i++) host.inject(udpFrame(1, 2));
    await Promise.resolve();
    expect(wire.sent.length).toBe(2);
    const info = new PacketInfo();
    parsePacket(wire.sent[1]!, info);
    expect(info.vni).toBe(0x123456);
    expect(ins).toEqual([tid, tid]);
    expect(() => a.addFlow({ match: {}, instructions: [{ type: 'apply_actions', actions: [{ type: 'set_field', field: 'tunnel_id', value: 1n << 64n }] }] })).toThrow(/tunnel_id/);
    expect(() => a.addFlow({ match: { tunnel_id: -1 }, instructions: [] })).toThrow(/tunnel_id/);
  });

  it('takes the remote VTEP from the flow (tun_dst) when the port has none, and drops without one', () => {
    const a = bridge();
    const host = new SinkBackend();
    const wire = new SinkBackend(1600);
    a.addPort(host, { portNo: 1 });
    a.addTunnelPort({ portNo: 10, underlay: wire, localIp: '192.0.2.1', localMac: '02:aa:00:00:00:01', remoteMac: '02:bb:00:00:00:01', vni: 42 });
    a.addFlow({ match: { in_port: 1, eth_type: 0x0800, ipv4_dst: '10.0.0.2' }, instructions: [{ type: 'apply_actions', actions: [{ type: 'set_field', field: 'tun_dst', value: '198.51.100.7' }, out(10)] }] });
    a.addFlow({ priority: 1, match: { in_port: 1 }, instructions: [{ type: 'apply_actions', actions: [out(10)] }] });
    host.inject(udpFrame(1, 2));
    expect(wire.sent.length).toBe(1);
    expect(Array.from(wire.sent[0]!.subarray(30, 34))).toEqual([198, 51, 100, 7]);
    host.inject(udpFrame(1, 3));
    expect(wire.sent.length).toBe(1);
    expect(a.portInfo(10).stats.txDropped).toBe(1);
  });
});

describe('bonds', () => {
  it('active-backup: one member carries traffic, the backup takes over on link loss, inactive members receive nothing', () => {
    const br = bridge();
    const host = new SinkBackend();
    const m = [new SinkBackend(), new SinkBackend()];
    br.addPort(host, { portNo: 1 });
    br.addBond({ portNo: 5, members: m, mode: 'active-backup' });
    br.addFlow({ match: { in_port: 1 }, instructions: [{ type: 'apply_actions', actions: [out(5)] }] });
    br.addFlow({ match: { in_port: 5 }, instructions: [{ type: 'apply_actions', actions: [out(1)] }] });
    host.inject(udpFrame(1, 2));
    expect([m[0]!.sent.length, m[1]!.sent.length]).toEqual([1, 0]);
    m[1]!.inject(udpFrame(2, 1)); // the backup's frames are dropped
    expect(host.sent.length).toBe(0);
    m[0]!.link(false);
    host.inject(udpFrame(1, 2));
    expect([m[0]!.sent.length, m[1]!.sent.length]).toEqual([1, 1]);
    m[1]!.inject(udpFrame(2, 1));
    expect(host.sent.length).toBe(1);
    m[0]!.link(true); // no flapping back: the active member stays
    host.inject(udpFrame(1, 2));
    expect([m[0]!.sent.length, m[1]!.sent.length]).toEqual([1, 2]);
    expect(br.portInfo(5).members).toEqual([{ up: true, active: false }, { up: true, active: true }]);
    m[1]!.link(false);
    m[0]!.link(false);
    expect(br.portInfo(5).live).toBe(false);
  });

  it('balance-tcp: flows spread over live members by 5-tuple hash, one flow stays on one member', () => {
    const br = bridge();
    const host = new SinkBackend();
    const m = [new SinkBackend(), new SinkBackend(), new SinkBackend()];
    br.addPort(host, { portNo: 1 });
    br.addBond({ portNo: 5, members: m, mode: 'balance-tcp' });
    br.addFlow({ match: { in_port: 1 }, instructions: [{ type: 'apply_actions', actions: [out(5)] }] });
    for (let i = 0; i < 600; i++) host.inject(udpFrame(1, 2, { sport: i }));
    for (const x of m) expect(x.take().length).toBeGreaterThan(120);
    m[2]!.link(false);
    for (let i = 0; i < 600; i++) host.inject(udpFrame(1, 2, { sport: i }));
    expect(m[2]!.sent.length).toBe(0);
    expect(m[0]!.take().length + m[1]!.take().length).toBe(600);
    for (let i = 0; i < 20; i++) host.inject(udpFrame(1, 2, { sport: 77 }));
    expect([m[0]!.sent.length, m[1]!.sent.length].sort((x, y) => x - y)).toEqual([0, 20]);
  });
});

describe('mirrors (SPAN)', () => {
  it('copies frames selected by source port, destination port and VLAN to the mirror port, which floods nothing else', () => {
    const br = bridge();
    const s = [0, 1, 2, 3].map(() => new SinkBackend());
    br.addPort(s[0]!, { portNo: 1, vlan: { mode: 'access', tag: 10 } });
    br.addPort(s[1]!, { portNo: 2, vlan: { mode: 'access', tag: 10 } });
    br.addPort(s[2]!, { portNo: 3, vlan: { mode: 'access', tag: 20 } });
    br.addPort(s[3]!, { portNo: 4 });
    br.addFlow({ instructions: [{ type: 'apply_actions', actions: [{ type: 'output', port: Port.NORMAL }] }] });
    br.addMirror({ name: 'span', selectSrcPorts: [1], outputPort: 4 });
    const f = broadcastFrame(1);
    s[0]!.inject(f);
    expect(s[1]!.sent.length).toBe(1);
    expect(s[3]!.sent).toEqual([f]); // one copy, as received
    s[1]!.inject(broadcastFrame(2));
    expect(s[3]!.sent.length).toBe(1);
    br.removeMirror('span');
    br.addMirror({ name: 'to2', selectDstPorts: [2], outputPort: 4 });
    s[0]!.inject(f);
    expect(s[3]!.sent.length).toBe(2);
    br.removeMirror('to2');
    br.addMirror({ name: 'v20', selectVlans: [20], outputPort: 4 });
    s[0]!.inject(f);
    expect(s[3]!.sent.length).toBe(2);
    s[2]!.inject(broadcastFrame(3));
    expect(s[3]!.sent.length).toBe(3);
    expect(() => br.addMirror({ name: 'v20', outputPort: 4 })).toThrow(VswitchError);
  });
});

describe('shared (interned) datapath programs', () => {
  it('a port removed and added again under the same number gets the traffic of flows cached before', () => {
    const br = bridge();
    const a = new SinkBackend();
    const old = new SinkBackend();
    br.addPort(a, { portNo: 1 });
    br.addPort(old, { portNo: 2 });
    for (let i = 0; i < 3; i++) {
      br.addFlow({ priority: 10, match: { eth_type: 0x0800, ipv4_dst: `10.0.0.${i + 2}` }, instructions: [{ type: 'apply_actions', actions: [out(2)] }] });
    }
    for (let i = 0; i < 3; i++) a.inject(udpFrame(1, i + 2));
    expect(old.take()).toHaveLength(3);
    expect(br.stats.megaflow.entries).toBe(3);
    br.removePort(2);
    const fresh = new SinkBackend();
    br.addPort(fresh, { portNo: 2 });
    for (let i = 0; i < 3; i++) a.inject(udpFrame(1, i + 2));
    expect(old.take()).toHaveLength(0);
    expect(fresh.take()).toHaveLength(3);
  });
});
