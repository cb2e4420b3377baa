import { afterEach, describe, expect, it } from 'vitest';
import { Bridge, Port } from '../src/index.js';
import { SinkBackend, broadcastFrame, udpFrame, vlanOf } from './helpers.js';

const NORMAL = [{ type: 'apply_actions' as const, actions: [{ type: 'output' as const, port: Port.NORMAL }] }];
let now = 0;
let br: Bridge;
afterEach(() => br.close());

/** Ports: 1, 2 access VLAN 10; 3 access VLAN 20; 4 trunk (10, 20); 5 trunk of all VLANs, native 10. */
function setup(): SinkBackend[] {
  now = 0;
  br = new Bridge({ clock: () => now, macAgingMs: 300_000 });
  const s = [0, 1, 2, 3, 4].map(() => new SinkBackend());
  br.addPort(s[0]!, { portNo: 1, vlan: { mode: 'access', tag: 10 } });
  br.addPort(s[1]!, { portNo: 2, vlan: { mode: 'access', tag: 10 } });
  br.addPort(s[2]!, { portNo: 3, vlan: { mode: 'access', tag: 20 } });
  br.addPort(s[3]!, { portNo: 4, vlan: { mode: 'trunk', trunks: [10, 20] } });
  br.addPort(s[4]!, { portNo: 5, vlan: { mode: 'trunk', native: 10 } });
  br.addFlow({ priority: 0, instructions: NORMAL });
  return s;
}

const counts = (s: SinkBackend[]): number[] => s.map((x) => x.sent.length);
const clear = (s: SinkBackend[]): void => s.forEach((x) => x.take());

describe('NORMAL: VLANs', () => {
  it('floods a broadcast only within its VLAN, tagging on trunks and untagging on access ports', () => {
    const s = setup();
    s[0]!.inject(broadcastFrame(1));
    expect(counts(s)).toEqual([0, 1, 0, 1, 1]);
    expect(vlanOf(s[1]!.sent[0]!)).toBe(-1); // access port: untagged
    expect(vlanOf(s[3]!.sent[0]!)).toBe(10); // trunk: tagged
    expect(vlanOf(s[4]!.sent[0]!)).toBe(-1); // trunk whose native VLAN is 10: untagged
    clear(s);
    s[2]!.inject(broadcastFrame(3));
    expect(counts(s)).toEqual([0, 0, 0, 1, 1]);
    expect(vlanOf(s[3]!.sent[0]!)).toBe(20);
    expect(vlanOf(s[4]!.sent[0]!)).toBe(20);
  });

  it('isolates VLANs: a frame from VLAN 20 never reaches VLAN 10 stations, even to a learned MAC', () => {
    const s = setup();
    s[0]!.inject(udpFrame(1, 9)); // station 1 learned on port 1, VLAN 10
    clear(s);
    // From VLAN 20 (port 3), to station 1's MAC: unknown in VLAN 20, flooded in VLAN 20 only.
    s[2]!.inject(udpFrame(3, 1));
    expect(counts(s)).toEqual([0, 0, 0, 1, 1]);
    expect(vlanOf(s[3]!.sent[0]!)).toBe(20);
    clear(s);
    // A trunk frame tagged 20 for station 1: same.
    s[3]!.inject(udpFrame(4, 1, { vlan: 20 }));
    expect(counts(s)).toEqual([0, 0, 1, 0, 1]);
  });

  it('drops tagged frames on access ports and VLANs a trunk does not carry', () => {
    const s = setup();
    s[0]!.inject(udpFrame(1, 2, { vlan: 10 }));
    expect(counts(s)).toEqual([0, 0, 0, 0, 0]);
    s[3]!.inject(udpFrame(4, 2, { vlan: 30 })); // trunk 4 carries 10 and 20 only
    expect(counts(s)).toEqual([0, 0, 0, 0, 0]);
    s[4]!.inject(udpFrame(5, 2, { vlan: 30 })); // trunk 5 carries everything: VLAN 30 has no other member
    expect(counts(s)).toEqual([0, 0, 0, 0, 0]);
    s[4]!.inject(udpFrame(5, 2)); // untagged on trunk 5 = native VLAN 10
    expect(counts(s)).toEqual([1, 1, 0, 1, 0]);
  });

  it('learns: unicast to a learned MAC goes to one port; none back out the ingress port', () => {
    const s = setup();
    s[1]!.inject(udpFrame(2, 1));
    clear(s);
    s[0]!.inject(udpFrame(1, 2));
    expect(counts(s)).toEqual([0, 1, 0, 0, 0]);
    s[1]!.inject(udpFrame(2, 1));
    expect(counts(s)).toEqual([1, 1, 0, 0, 0]);
    clear(s);
    // Destination behind the ingress port: dropped.
    s[0]!.inject(udpFrame(3, 1, { dstMac: '02:00:00:00:00:01' }));
    expect(counts(s)).toEqual([0, 0, 0, 0, 0]);
  });

  it('follows a station move and ages entries out on the injected clock', () => {
    const s = setup();
    s[0]!.inject(udpFrame(1, 9)); // station 1 on port 1
    s[1]!.inject(udpFrame(2, 9));
    clear(s);
    s[1]!.inject(udpFrame(2, 1));
    expect(counts(s)).toEqual([1, 0, 0, 0, 0]);
    clear(s);
    // Station 1 moves behind the trunk (tagged 10).
    s[3]!.inject(udpFrame(1, 2, { vlan: 10 }));
    expect(br.stats.macMoves).toBe(1);
    clear(s);
    s[1]!.inject(udpFrame(2, 1));
    expect(counts(s)).toEqual([0, 0, 0, 1, 0]);
    expect(vlanOf(s[3]!.sent[0]!)).toBe(10);
    clear(s);
    // 300 s later without traffic from station 1: forgotten, flooded again.
    now += 300_001;
    s[1]!.inject(udpFrame(2, 1));
    expect(counts(s)).toEqual([1, 0, 0, 1, 1]);
  });

  it('forgets stations behind a port that goes down', () => {
    const s = setup();
    s[0]!.inject(udpFrame(1, 9));
    clear(s);
    s[0]!.link(false);
    s[0]!.link(true);
    s[1]!.inject(udpFrame(2, 1));
    expect(counts(s)).toEqual([1, 0, 0, 1, 1]);
  });

  it('no frame crosses VLANs unless a flow makes it', () => {
    const s = setup();
    // A flow that rewrites VLAN 20 traffic from port 3 into VLAN 10 on the trunk: the explicit exception.
    br.addFlow({
      priority: 10, match: { in_port: 3 },
      instructions: [{ type: 'apply_actions', actions: [{ type: 'push_vlan' }, { type: 'set_field', field: 'vlan_vid', value: 10 }, { type: 'output', port: 4 }] }],
    });
    s[2]!.inject(udpFrame(3, 1));
    expect(counts(s)).toEqual([0, 0, 0, 1, 0]);
    expect(vlanOf(s[3]!.sent[0]!)).toBe(10);
  });
});
