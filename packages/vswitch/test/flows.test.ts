import { afterEach, describe, expect, it } from 'vitest';
import { Bridge, Port, VswitchError, compileMatch, type Match } from '../src/index.js';
import { SinkBackend, tag, udpFrame } from './helpers.js';

const kindOf = (fn: () => unknown): string => {
  try {
    fn();
  } catch (e) {
    if (e instanceof VswitchError) return e.kind;
    throw e;
  }
  return 'none';
};

describe('match compilation (OpenFlow 1.3.5 §7.2.3)', () => {
  it('checks prerequisites (§7.2.3.6)', () => {
    expect(kindOf(() => compileMatch({ ipv4_src: '10.0.0.1' }))).toBe('bad-prerequisite');
    expect(kindOf(() => compileMatch({ eth_type: 0x86dd, ipv4_src: '10.0.0.1' }))).toBe('bad-prerequisite');
    expect(kindOf(() => compileMatch({ eth_type: 0x0800, tcp_dst: 80 }))).toBe('bad-prerequisite');
    expect(kindOf(() => compileMatch({ eth_type: 0x0800, ip_proto: 17, tcp_dst: 80 }))).toBe('bad-prerequisite');
    expect(kindOf(() => compileMatch({ vlan_pcp: 3 }))).toBe('bad-prerequisite');
    expect(kindOf(() => compileMatch({ vlan_vid: 0, vlan_pcp: 3 }))).toBe('bad-prerequisite');
    expect(kindOf(() => compileMatch({ eth_type: 0x86dd, ip_proto: 1, icmpv4_type: 8 }))).toBe('bad-prerequisite');
    expect(kindOf(() => compileMatch({ arp_op: 1 }))).toBe('bad-prerequisite');
    expect(kindOf(() => compileMatch({ vlan_vid: 0x1005, vlan_pcp: 3, eth_type: 0x0800, ip_proto: 6, tcp_dst: 80, ipv4_dst: '10.0.0.0/8' }))).toBe('none');
    expect(kindOf(() => compileMatch({ eth_type: 0x86dd, ip_proto: 58, icmpv6_type: 135, ipv6_src: 'fe80::/10' }))).toBe('none');
    expect(kindOf(() => compileMatch({ eth_type: 0x0800, ipv6_flabel: 1 }))).toBe('bad-prerequisite');
    expect(kindOf(() => compileMatch({ eth_type: 0x86dd, ipv6_flabel: 0x100000 }))).toBe('bad-match');
    expect(kindOf(() => compileMatch({ eth_type: 0x86dd, ipv6_flabel: { value: 0xabcde, mask: 0xf0000 } }))).toBe('bad-wildcards');
    expect(kindOf(() => compileMatch({ eth_type: 0x86dd, ipv6_flabel: { value: 0xa0000, mask: 0xf0000 } }))).toBe('none');
  });

  it('allows masks only where Table 12 does, and rejects value bits outside the mask (§7.2.3.5)', () => {
    expect(kindOf(() => compileMatch({ in_port: { value: 1, mask: 1 } as unknown as number }))).toBe('bad-wildcards');
    expect(kindOf(() => compileMatch({ eth_type: 0x0800, ip_proto: 6, tcp_dst: { value: 80, mask: 0xff00 } as unknown as number }))).toBe('bad-wildcards');
    expect(kindOf(() => compileMatch({ vlan_vid: { value: 0x1003, mask: 0x1000 } }))).toBe('bad-wildcards');
    expect(kindOf(() => compileMatch({ metadata: { value: 3n, mask: 1n } }))).toBe('bad-wildcards');
    expect(kindOf(() => compileMatch({ eth_dst: { value: '02:00:00:00:00:01', mask: 'ff:ff:ff:ff:ff:00' } }))).toBe('bad-wildcards');
    expect(kindOf(() => compileMatch({ eth_dst: '01:00:00:00:00:00/01:00:00:00:00:00', tunnel_id: { value: 5, mask: 0xff }, reg3: { value: 0, mask: 1 } }))).toBe('none');
  });

  it('rejects unknown fields, bad values and contradictory fields', () => {
    expect(kindOf(() => compileMatch({ nope: 1 } as unknown as Match))).toBe('bad-match');
    expect(kindOf(() => compileMatch({ eth_type: 0x10000 }))).toBe('bad-match');
    expect(kindOf(() => compileMatch({ eth_src: 'zz' }))).toBe('bad-match');
    expect(kindOf(() => compileMatch({ eth_type: 0x0800, ipv4_dst: '10.0.0.0/33' }))).toBe('bad-match');
    expect(kindOf(() => compileMatch({ vlan_vid: 5 }))).toBe('bad-match'); // a VID without OFPVID_PRESENT
    expect(kindOf(() => compileMatch({ eth_type: 0x0800, ip_proto: 6, tcp_src: 1, udp_src: 1 }))).toBe('bad-prerequisite');
  });
});

describe('flow-mods (§6.4)', () => {
  let br: Bridge;
  let s: SinkBackend[];
  afterEach(() => br.close());
  const setup = (): void => {
    br = new Bridge({ clock: () => 0 });
    s = [1, 2, 3].map((no) => {
      const x = new SinkBackend();
      br.addPort(x, { portNo: no });
      return x;
    });
  };
  const out = (port: number) => [{ type: 'apply_actions' as const, actions: [{ type: 'output' as const, port }] }];

  it('an add with the same match and priority replaces; the higher priority wins; ties go to the older entry', () => {
    setup();
    br.addFlow({ priority: 5, match: { in_port: 1 }, instructions: out(2) });
    br.addFlow({ priority: 5, match: { in_port: 1 }, instructions: out(3) });
    expect(br.flows().length).toBe(1);
    s[0]!.inject(udpFrame(1, 2));
    expect([s[1]!.sent.length, s[2]!.sent.length]).toEqual([0, 1]);
    br.addFlow({ priority: 5, match: { eth_type: 0x0800 }, instructions: out(2) });
    s[0]!.inject(udpFrame(1, 2));
    expect([s[1]!.sent.length, s[2]!.sent.length]).toEqual([0, 2]); // same priority, older entry
    br.addFlow({ priority: 6, match: { eth_type: 0x0800, ip_proto: 17 }, instructions: out(2) });
    s[0]!.inject(udpFrame(1, 2));
    expect([s[1]!.sent.length, s[2]!.sent.length]).toEqual([1, 2]);
  });

  it('CHECK_OVERLAP refuses overlapping same-priority entries', () => {
    setup();
    br.addFlow({ priority: 5, match: { in_port: 1 }, instructions: [] });
    expect(kindOf(() => br.addFlow({ priority: 5, match: { eth_type: 0x0800 }, flags: { checkOverlap: true }, instructions: [] }))).toBe('overlap');
    expect(kindOf(() => br.addFlow({ priority: 5, match: { in_port: 2 }, flags: { checkOverlap: true }, instructions: [] }))).toBe('none');
  });

  it('modify, strict and non-strict delete, cookie and out_port filters', () => {
    setup();
    br.addFlow({ priority: 1, cookie: 0x10n, match: { in_port: 1 }, instructions: out(2) });
    br.addFlow({ priority: 2, cookie: 0x11n, match: { in_port: 1, eth_type: 0x0800 }, instructions: out(3) });
    br.addFlow({ priority: 3, cookie: 0x20n, match: { in_port: 2 }, instructions: out(3) });
    br.flowMod({ command: 'modify', match: { in_port: 1 }, cookie: 0x10n, cookieMask: 0xffn, instructions: out(3) });
    expect(br.flows().map((f) => [f.cookie, f.instructions])).toEqual([
      [0x20n, out(3)], [0x11n, out(3)], [0x10n, out(3)],
    ]);
    br.flowMod({ command: 'delete_strict', match: { in_port: 1 }, priority: 2 });
    expect(br.flows().length).toBe(3);
    br.flowMod({ command: 'delete', tableId: 255, match: {}, outPort: 3, cookie: 0x10n, cookieMask: 0xf0n });
    expect(br.flows().map((f) => f.cookie)).toEqual([0x20n]);
    br.flowMod({ command: 'delete', tableId: 255 });
    expect(br.flows()).toEqual([]);
  });

  it('validates instructions: goto forward only, one of each, one action per type in a set, tables 0..254', () => {
    setup();
    expect(kindOf(() => br.addFlow({ tableId: 3, instructions: [{ type: 'goto_table', tableId: 3 }] }))).toBe('bad-instruction');
    expect(kindOf(() => br.addFlow({ tableId: 255, instructions: [] }))).toBe('bad-table');
    expect(kindOf(() => br.addFlow({ instructions: [{ type: 'clear_actions' }, { type: 'clear_actions' }] }))).toBe('bad-instruction');
    expect(kindOf(() => br.addFlow({ instructions: [{ type: 'write_actions', actions: [{ type: 'output', port: 1 }, { type: 'output', port: 2 }] }] }))).toBe('bad-action');
    expect(kindOf(() => br.addFlow({ instructions: out(0) }))).toBe('bad-action');
    expect(kindOf(() => br.addFlow({ instructions: out(Port.TABLE) }))).toBe('bad-action');
    expect(kindOf(() => br.addFlow({ match: { in_port: 1 }, instructions: [{ type: 'apply_actions', actions: [{ type: 'set_field', field: 'tcp_dst', value: 80 }] }] }))).toBe('bad-prerequisite');
    expect(kindOf(() => br.addFlow({ instructions: [{ type: 'apply_actions', actions: [{ type: 'push_vlan', ethertype: 0x0800 }] }] }))).toBe('bad-action');
    expect(kindOf(() => br.addFlow({ idleTimeout: 70000, instructions: [] }))).toBe('bad-flow-mod');
  });

  it('the pipeline: goto_table, write_metadata matched downstream, the action set runs at the end in §5.10 order', () => {
    setup();
    br.addFlow({ tableId: 0, match: { in_port: 1 }, instructions: [
      { type: 'write_actions', actions: [{ type: 'output', port: 2 }, { type: 'set_field', field: 'eth_dst', value: '02:00:00:00:00:ee' }] },
      { type: 'write_metadata', value: 0x5n, mask: 0xfn },
      { type: 'goto_table', tableId: 4 },
    ] });
    br.addFlow({ tableId: 4, match: { metadata: { value: 0x4n, mask: 0x4n } }, instructions: [
      { type: 'apply_actions', actions: [{ type: 'push_vlan' }, { type: 'set_field', field: 'vlan_vid', value: 7 }] },
    ] });
    s[0]!.inject(udpFrame(1, 2));
    const f = s[1]!.sent[0]!;
    expect(Array.from(f.subarray(0, 6))).toEqual([2, 0, 0, 0, 0, 0xee]);
    expect([f[12], f[13], f[14], f[15]]).toEqual([0x81, 0, 0, 7]);
    expect(br.tableStats().map((t) => [t.tableId, t.lookupCount, t.matchedCount])).toEqual([[0, 1, 1], [4, 1, 1]]);
    // clear_actions empties the set.
    br.addFlow({ tableId: 4, priority: 0xffff, match: {}, instructions: [{ type: 'clear_actions' }] });
    s[0]!.inject(udpFrame(1, 2));
    expect(s[1]!.sent.length).toBe(1);
  });

  it('a frame carries at most two VLAN tags: a third push is not applied, so later pops and set_fields act on the tags the frame has', () => {
    // Found by the model property: push, push, pop on a tagged frame, then the action set's
    // pop and a group's set_field vlan_vid. With the third tag applied to the bytes but not to
    // the two-tag key, the key showed an untagged frame after the second pop while one tag
    // remained, the set_field was skipped, and the frame left with its old VID.
    setup();
    br.groupMod('add', { groupId: 3, type: 'all', buckets: [{ actions: [{ type: 'set_field', field: 'vlan_vid', value: 1 }, { type: 'output', port: 2 }] }] });
    br.addFlow({ match: { in_port: 1 }, instructions: [
      { type: 'apply_actions', actions: [{ type: 'push_vlan' }, { type: 'push_vlan' }, { type: 'pop_vlan' }] },
      { type: 'write_actions', actions: [{ type: 'group', groupId: 3 }, { type: 'pop_vlan' }] },
    ] });
    const tagsOf = (f: Uint8Array): number[] => {
      const vids: number[] = [];
      for (let at = 12; f[at] === 0x81 && f[at + 1] === 0; at += 4) vids.push(((f[at + 2]! << 8) | f[at + 3]!) & 0xfff);
      return vids;
    };
    // Two tags after the pushes (the second push not applied), one after the apply's pop, none
    // after the action set's pop: the group's set_field has no tag to write.
    s[0]!.inject(udpFrame(1, 2, { vlan: 2 }));
    expect(s[1]!.sent.map(tagsOf)).toEqual([[]]);
    // An untagged frame: [0], [0, 0], [0], then []: untagged again.
    s[0]!.inject(udpFrame(1, 2));
    expect(s[1]!.sent.map(tagsOf)).toEqual([[], []]);
    // With the action set's pop gone, the tag left after the apply's pop is the one the
    // set_field writes.
    br.addFlow({ match: { in_port: 1 }, instructions: [
      { type: 'apply_actions', actions: [{ type: 'push_vlan' }, { type: 'push_vlan' }, { type: 'pop_vlan' }] },
      { type: 'write_actions', actions: [{ type: 'group', groupId: 3 }] },
    ] });
    s[0]!.inject(udpFrame(1, 2, { vlan: 2 }));
    expect(s[1]!.sent.slice(2).map(tagsOf)).toEqual([[1]]);
    // A plain double push keeps two tags; the frame keeps its payload.
    br.addFlow({ match: { in_port: 1 }, instructions: [{ type: 'apply_actions', actions: [{ type: 'push_vlan' }, { type: 'push_vlan' }, { type: 'output', port: 2 }] }] });
    s[0]!.inject(udpFrame(1, 2, { vlan: 2 }));
    const last = s[1]!.sent[3]!;
    expect(tagsOf(last)).toEqual([2, 2]);
    expect(last.length).toBe(udpFrame(1, 2, { vlan: 2 }).length + 4);
  });

  it('a frame arriving with three tags matches as two tags and eth_type 0x8100; two pops leave the third', () => {
    setup();
    const three = tag(tag(udpFrame(1, 2, { vlan: 7 }), 6), 5);
    br.addFlow({ priority: 1, match: { in_port: 1 }, instructions: [{ type: 'apply_actions', actions: [{ type: 'output', port: 3 }] }] });
    br.addFlow({ priority: 2, match: { in_port: 1, vlan_vid: 0x1005, eth_type: 0x8100 }, instructions: [{ type: 'apply_actions', actions: [{ type: 'pop_vlan' }, { type: 'pop_vlan' }, { type: 'output', port: 2 }] }] });
    s[0]!.inject(three);
    expect(s[2]!.sent).toHaveLength(0);
    const out = s[1]!.sent[0]!;
    expect([out[12], out[13], out[14], out[15]]).toEqual([0x81, 0, 0, 7]);
    expect(out.length).toBe(three.length - 8);
  });
});

describe('caches', () => {
  it('a megaflow keeps only the fields the classifier consulted; changes revalidate, so no packet follows a stale entry', () => {
    const br = new Bridge({ clock: () => 0 });
    const s = [1, 2, 3].map((no) => {
      const x = new SinkBackend();
      br.addPort(x, { portNo: no });
      return x;
    });
    br.addFlow({ match: { in_port: 1 }, instructions: [{ type: 'apply_actions', actions: [{ type: 'output', port: 2 }] }] });
    for (let i = 0; i < 10; i++) s[0]!.inject(udpFrame(1, 2, { sport: i, dstMac: `02:00:00:00:01:0${i}` }));
    expect(br.stats.upcalls).toBe(1);
    const [mf] = br.megaflows();
    expect(Array.from(mf!.mask).filter((w) => w !== 0).length).toBe(1); // in_port only
    // A higher-priority flow on a field the megaflow ignored: the very next packet obeys it.
    br.addFlow({ priority: 0x9000, match: { eth_type: 0x0800, ip_proto: 17, udp_src: 3 }, instructions: [{ type: 'apply_actions', actions: [{ type: 'output', port: 3 }] }] });
    s[0]!.inject(udpFrame(1, 2, { sport: 3 }));
    s[0]!.inject(udpFrame(1, 2, { sport: 4 }));
    expect([s[1]!.sent.length, s[2]!.sent.length]).toEqual([11, 1]);
    // Now the priorities make udp_src, ip_proto and eth_type part of every megaflow from port 1.
    const masks = br.megaflows().map((m) => m.mask[18]);
    expect(masks.every((w) => w === 0xffff0000)).toBe(true);
    expect(br.stats.megaflow.flushes).toBeGreaterThan(0);
    br.close();
  });

  it('receiveBatch sends queued unmodified frames in one call and keeps each port\'s order with rewritten ones', () => {
    const br = new Bridge({ clock: () => 0 });
    const a = new SinkBackend();
    const b = new SinkBackend();
    let calls = 0;
    const send = b.send.bind(b);
    b.send = (f, n) => {
      calls++;
      return send(f, n);
    };
    br.addPort(a, { portNo: 1 });
    br.addPort(b, { portNo: 2 });
    br.addFlow({ match: { in_port: 1 }, instructions: [{ type: 'apply_actions', actions: [{ type: 'output', port: 2 }] }] });
    br.addFlow({ priority: 0x9000, match: { eth_type: 0x0800, ip_proto: 17, udp_src: 2 }, instructions: [{ type: 'apply_actions', actions: [{ type: 'set_field', field: 'eth_dst', value: '02:00:00:00:00:ee' }, { type: 'output', port: 2 }] }] });
    const frames = [1, 1, 2, 1, 1].map((sport, i) => udpFrame(1, 2, { sport, dport: i }));
    br.receiveBatch(1, frames);
    expect(b.sent.map((f) => [f[5], f[37]])).toEqual([[2, 0], [2, 1], [0xee, 2], [2, 3], [2, 4]]);
    expect(calls).toBe(3); // [0, 1] queued, flushed before the rewritten frame, then [3, 4]
    expect(br.portInfo(2).stats.txPackets).toBe(5);
    br.close();
  });

  it('bounded: a tiny megaflow cache evicts and counts, and still forwards every packet', () => {
    const br = new Bridge({ clock: () => 0, megaflowLimit: 4, microflowSize: 0 });
    const a = new SinkBackend();
    const b = new SinkBackend();
    br.addPort(a, { portNo: 1 });
    br.addPort(b, { portNo: 2 });
    for (let i = 0; i < 8; i++) br.addFlow({ priority: 10, match: { eth_type: 0x0800, ip_proto: 17, udp_src: i }, instructions: [{ type: 'apply_actions', actions: [{ type: 'output', port: 2 }] }] });
    for (let r = 0; r < 3; r++) for (let i = 0; i < 8; i++) a.inject(udpFrame(1, 2, { sport: i }));
    expect(b.sent.length).toBe(24);
    expect(br.stats.megaflow.entries).toBe(4);
    expect(br.stats.megaflow.evictions).toBeGreaterThan(0);
    br.close();
  });
});

describe('hostile frames', () => {
  it('runts, oversize frames and random bytes are dropped or forwarded, never thrown', () => {
    const br = new Bridge({ clock: () => 0 });
    const a = new SinkBackend();
    const b = new SinkBackend();
    br.addPort(a, { portNo: 1 });
    br.addPort(b, { portNo: 2 });
    br.addFlow({ priority: 1, instructions: [{ type: 'apply_actions', actions: [{ type: 'push_vlan' }, { type: 'set_field', field: 'vlan_vid', value: 3 }, { type: 'output', port: Port.NORMAL }, { type: 'output', port: Port.FLOOD }] }] });
    br.addFlow({ priority: 2, match: { eth_type: 0x0800 }, instructions: [{ type: 'apply_actions', actions: [{ type: 'set_field', field: 'ipv4_src', value: '1.2.3.4' }, { type: 'pop_vlan' }, { type: 'output', port: 2 }] }] });
    let seed = 7;
    const rnd = (): number => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 24;
    for (const len of [0, 1, 13, 14, 15, 17, 18, 33, 60, 64, 1514, 65535, 65536, 70000]) {
      for (let k = 0; k < 20; k++) {
        const f = new Uint8Array(len);
        for (let i = 0; i < len; i++) f[i] = rnd();
        if (len > 13 && k % 2 === 0) {
          f[12] = 0x08; // IPv4 headers of random content
          f[13] = 0x00;
        }
        expect(() => br.receive(1, f)).not.toThrow();
      }
    }
    expect(br.portInfo(1).stats.rxDropped).toBe(5 * 20); // 0, 1, 13, 65536, 70000 bytes
    br.close();
  });
});

describe('deferredTx', () => {
  it('queues copies of frames delivered one by one and sends them in one call per port after the task', async () => {
    const br = new Bridge({ clock: () => 0, deferredTx: true });
    const a = new SinkBackend();
    const b = new SinkBackend();
    let calls = 0;
    const send = b.send.bind(b);
    b.send = (f, n) => {
      calls++;
      return send(f, n);
    };
    br.addPort(a, { portNo: 1 });
    br.addPort(b, { portNo: 2 });
    br.addFlow({ match: { in_port: 1 }, instructions: [{ type: 'apply_actions', actions: [{ type: 'output', port: 2 }] }] });
    const frames = [0, 1, 2, 3].map((i) => udpFrame(1, 2, { dport: i }));
    for (const f of frames) {
      a.inject(f);
      f.fill(0); // the back-end reuses its buffer: the queued copy must not change
    }
    expect(b.sent.length).toBe(0);
    await Promise.resolve();
    expect(calls).toBe(1);
    expect(b.sent.map((f) => f[37])).toEqual([0, 1, 2, 3]);
    expect(br.portInfo(2).stats.txPackets).toBe(4);
    br.close();
  });
});
