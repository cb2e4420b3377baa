import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import {
  buildArp, buildIcmpEcho, buildUdp, fillIpv4HeaderChecksum, fillL4Checksum, PacketInfo, parseIpv4, parseIpv6, parseMac, parsePacket, writeEthernet,
  writeIpHeader,
} from '@ioplane/packet';
import { Bridge, Port, type Action, type GroupConfig, type Instruction, type Match, type SetField } from '../src/index.js';
import { SinkBackend, hex, tag } from './helpers.js';
import { Reference, snapshot } from './reference.js';

// ── packets ──
const MACS = ['02:00:00:00:00:01', '02:00:00:00:00:02', '02:00:00:00:00:03', 'ff:ff:ff:ff:ff:ff'];
const IPS = ['10.0.0.1', '10.0.0.2', '10.0.1.1'];
const IP6S = ['2001:db8::1', '2001:db8::2'];
const TPORTS = [80, 443, 1000];

interface PktSpec {
  src: number;
  dst: number;
  vlan: { vid: number; pcp: number } | null;
  l3: 'tcp' | 'udp' | 'icmp' | 'arp' | 'udp6' | 'icmp6';
  sip: number;
  dip: number;
  sport: number;
  dport: number;
  dscp: number;
}

const pktArb: fc.Arbitrary<PktSpec> = fc.record({
  src: fc.integer({ min: 0, max: 2 }),
  dst: fc.integer({ min: 0, max: 3 }),
  vlan: fc.option(fc.record({ vid: fc.constantFrom(1, 2), pcp: fc.constantFrom(0, 3) }), { nil: null }),
  l3: fc.constantFrom('tcp', 'udp', 'icmp', 'arp', 'udp6', 'icmp6'),
  sip: fc.integer({ min: 0, max: 2 }),
  dip: fc.integer({ min: 0, max: 2 }),
  sport: fc.integer({ min: 0, max: 2 }),
  dport: fc.integer({ min: 0, max: 2 }),
  dscp: fc.constantFrom(0, 46),
});

function buildPacket(s: PktSpec): Uint8Array {
  const out = new Uint8Array(256);
  const srcMac = parseMac(MACS[s.src]!);
  const dstMac = parseMac(MACS[s.dst]!);
  let n: number;
  switch (s.l3) {
    case 'udp':
      n = buildUdp(out, { srcMac, dstMac, srcIp: parseIpv4(IPS[s.sip]!), dstIp: parseIpv4(IPS[s.dip]!), srcPort: TPORTS[s.sport]!, dstPort: TPORTS[s.dport]!, payload: new Uint8Array(18) });
      break;
    case 'udp6':
      n = buildUdp(out, { srcMac, dstMac, srcIp: parseIpv6(IP6S[s.sip % 2]!), dstIp: parseIpv6(IP6S[s.dip % 2]!), srcPort: TPORTS[s.sport]!, dstPort: TPORTS[s.dport]!, payload: new Uint8Array(8) });
      break;
    case 'icmp':
      n = buildIcmpEcho(out, { srcMac, dstMac, srcIp: parseIpv4(IPS[s.sip]!), dstIp: parseIpv4(IPS[s.dip]!), id: 7, sequence: 1, payload: new Uint8Array(18) });
      break;
    case 'icmp6':
      n = buildIcmpEcho(out, { srcMac, dstMac, srcIp: parseIpv6(IP6S[s.sip % 2]!), dstIp: parseIpv6(IP6S[s.dip % 2]!), id: 9, sequence: 2, payload: new Uint8Array(6) });
      break;
    case 'arp':
      n = buildArp(out, { operation: 1 + (s.sport % 2), srcMac, srcIp: parseIpv4(IPS[s.sip]!), targetMac: dstMac, targetIp: parseIpv4(IPS[s.dip]!), ethDst: dstMac, padToMinimum: true });
      break;
    case 'tcp': {
      const h = writeEthernet(out, 0, dstMac, srcMac, 0x0800);
      const ipl = writeIpHeader(out, h, { src: parseIpv4(IPS[s.sip]!), dst: parseIpv4(IPS[s.dip]!), protocol: 6, payloadLength: 20 + 6, tos: s.dscp << 2 });
      const l4 = h + ipl;
      out[l4] = TPORTS[s.sport]! >> 8;
      out[l4 + 1] = TPORTS[s.sport]! & 0xff;
      out[l4 + 2] = TPORTS[s.dport]! >> 8;
      out[l4 + 3] = TPORTS[s.dport]! & 0xff;
      out[l4 + 12] = 5 << 4;
      out[l4 + 13] = 0x18;
      n = l4 + 26;
      break;
    }
  }
  let f: Uint8Array<ArrayBufferLike> = out.slice(0, n);
  if (s.dscp && (s.l3 === 'udp' || s.l3 === 'icmp')) {
    f[15] = s.dscp << 2;
    fillIpv4HeaderChecksum(f, 14);
  }
  if (s.l3 === 'tcp') {
    const info = new PacketInfo();
    parsePacket(f, info);
    fillL4Checksum(f, info);
  }
  if (s.vlan) f = tag(f, s.vlan.vid, s.vlan.pcp);
  return f;
}

// ── matches ──
type Profile = 'l2' | 'ipv4' | 'tcp' | 'udp' | 'icmp' | 'arp' | 'ipv6';

const maybe = <T>(a: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> => fc.option(a, { nil: undefined, freq: 2 });

const matchArb: fc.Arbitrary<Match> = fc.constantFrom<Profile>('l2', 'ipv4', 'tcp', 'udp', 'icmp', 'arp', 'ipv6').chain((profile) => {
  const l2 = {
    in_port: maybe(fc.integer({ min: 1, max: 4 })),
    eth_src: maybe(fc.oneof(fc.constantFrom(...MACS.slice(0, 3)), fc.constant('02:00:00:00:00:00/ff:ff:ff:00:00:00'))),
    eth_dst: maybe(fc.oneof(fc.constantFrom(...MACS), fc.constant('01:00:00:00:00:00/01:00:00:00:00:00'))),
    vlan_vid: maybe(fc.oneof(fc.constantFrom(0, 0x1001, 0x1002), fc.constant({ value: 0x1000, mask: 0x1000 }))),
    metadata: maybe(fc.oneof(fc.constantFrom(0n, 1n, 2n), fc.constant({ value: 1n, mask: 1n }))),
    reg0: maybe(fc.constantFrom(0, 5, 9)),
    tunnel_id: maybe(fc.oneof(fc.constantFrom<number | bigint>(0, 5, 0x1_0000_0005n), fc.constant({ value: 0x1_0000_0000n, mask: 0xffff_ffff_0000_0000n }))),
  };
  const ipv4 = {
    ip_proto: maybe(fc.constantFrom(6, 17, 1)),
    ip_dscp: maybe(fc.constantFrom(0, 46)),
    ipv4_src: maybe(fc.oneof(fc.constantFrom(...IPS), fc.constantFrom('10.0.0.0/24', '10.0.0.0/16', '0.0.0.0/0'))),
    ipv4_dst: maybe(fc.oneof(fc.constantFrom(...IPS), fc.constantFrom('10.0.1.0/24', '10.0.0.0/8'))),
  };
  switch (profile) {
    case 'l2':
      return fc.record({ ...l2, eth_type: maybe(fc.constantFrom(0x0800, 0x0806, 0x86dd)) }, { requiredKeys: [] });
    case 'ipv4':
      return fc.record({ ...l2, ...ipv4, eth_type: fc.constant(0x0800) }, { requiredKeys: ['eth_type'] });
    case 'tcp':
      return fc.record({ ...l2, ...ipv4, eth_type: fc.constant(0x0800), ip_proto: fc.constant(6), tcp_src: maybe(fc.constantFrom(...TPORTS)), tcp_dst: maybe(fc.constantFrom(...TPORTS)) }, { requiredKeys: ['eth_type', 'ip_proto'] });
    case 'udp':
      return fc.record({ ...l2, ...ipv4, eth_type: fc.constant(0x0800), ip_proto: fc.constant(17), udp_src: maybe(fc.constantFrom(...TPORTS)), udp_dst: maybe(fc.constantFrom(...TPORTS)) }, { requiredKeys: ['eth_type', 'ip_proto'] });
    case 'icmp':
      return fc.record({ ...l2, ...ipv4, eth_type: fc.constant(0x0800), ip_proto: fc.constant(1), icmpv4_type: maybe(fc.constantFrom(0, 8)), icmpv4_code: maybe(fc.constant(0)) }, { requiredKeys: ['eth_type', 'ip_proto'] });
    case 'arp':
      return fc.record({ ...l2, eth_type: fc.constant(0x0806), arp_op: maybe(fc.constantFrom(1, 2)), arp_spa: maybe(fc.constantFrom(...IPS)), arp_tpa: maybe(fc.constantFrom('10.0.0.0/24', ...IPS)), arp_sha: maybe(fc.constantFrom(...MACS.slice(0, 3))) }, { requiredKeys: ['eth_type'] });
    case 'ipv6':
      return fc.record({ ...l2, eth_type: fc.constant(0x86dd), ip_proto: maybe(fc.constant(17)), ipv6_src: maybe(fc.constantFrom(...IP6S, '2001:db8::/32')), ipv6_dst: maybe(fc.constantFrom(...IP6S, '2001:db8::/64')), ipv6_flabel: maybe(fc.oneof(fc.constantFrom(0, 0xabcde), fc.constant({ value: 0x80000, mask: 0x80000 }))) }, { requiredKeys: ['eth_type'] });
  }
}).map((m) => {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(m)) if (v !== undefined) out[k] = v;
  // vlan_pcp needs a VID with OFPVID_PRESENT (§7.2.3.6); add it sometimes.
  return out;
});

// ── actions ──
const setArb = (m: Match | null): fc.Arbitrary<Action> => {
  const fields: [SetField, fc.Arbitrary<number | string | bigint>][] = [
    ['tunnel_id', fc.constantFrom<number | bigint>(5, 0x1_0000_0005n, 0xffff_ffff_ffff_ffffn)],
    ['eth_src', fc.constantFrom(...MACS.slice(0, 3))],
    ['eth_dst', fc.constantFrom(...MACS)],
    ['vlan_vid', fc.constantFrom(1, 2, 3)],
    ['vlan_pcp', fc.constantFrom(0, 5)],
    ['reg0', fc.constantFrom(0, 5, 9)],
  ];
  if (m === null || m.eth_type === 0x0800) fields.push(['ipv4_src', fc.constantFrom(...IPS)], ['ipv4_dst', fc.constantFrom(...IPS)]);
  if (m === null || m.eth_type === 0x0800 || m.eth_type === 0x86dd) fields.push(['ip_dscp', fc.constantFrom(0, 46)]);
  if (m === null || m.ip_proto === 6) fields.push(['tcp_src', fc.constantFrom(...TPORTS)], ['tcp_dst', fc.constantFrom(...TPORTS)]);
  if (m === null || m.ip_proto === 17) fields.push(['udp_src', fc.constantFrom(...TPORTS)], ['udp_dst', fc.constantFrom(...TPORTS)]);
  if (m === null || m.eth_type === 0x86dd) {
    fields.push(['ipv6_src', fc.constantFrom(...IP6S, '2001:db8::ffff:1', 'fe80::1')], ['ipv6_dst', fc.constantFrom(...IP6S, '2001:db8:1::9')], ['ipv6_flabel', fc.constantFrom(0, 1, 0xabcde, 0xfffff)]);
  }
  if (m === null || m.eth_type === 0x0806) {
    fields.push(
      ['arp_op', fc.constantFrom(1, 2)], ['arp_spa', fc.constantFrom(...IPS)], ['arp_tpa', fc.constantFrom(...IPS)],
      ['arp_sha', fc.constantFrom(...MACS.slice(0, 3))], ['arp_tha', fc.constantFrom(...MACS)],
    );
  }
  if (m === null || (m.eth_type === 0x0800 && m.ip_proto === 1)) fields.push(['icmpv4_type', fc.constantFrom(0, 8, 3)], ['icmpv4_code', fc.constantFrom(0, 1)]);
  if (m === null || (m.eth_type === 0x86dd && m.ip_proto === 58)) fields.push(['icmpv6_type', fc.constantFrom(128, 129, 1)], ['icmpv6_code', fc.constantFrom(0, 4)]);
  return fc.constantFrom(...fields).chain(([field, v]) => v.map((value) => ({ type: 'set_field', field, value })));
};

const outputArb: fc.Arbitrary<Action> = fc.constantFrom(1, 2, 3, 4, Port.IN_PORT, Port.FLOOD, Port.ALL, Port.CONTROLLER).map((port) => ({ type: 'output', port }));

function actionArb(m: Match | null, groups: boolean): fc.Arbitrary<Action> {
  const choices: fc.Arbitrary<Action>[] = [outputArb, outputArb, setArb(m), fc.constant({ type: 'push_vlan' }), fc.constant({ type: 'pop_vlan' })];
  if (groups) choices.push(fc.constantFrom(1, 2, 3).map((groupId) => ({ type: 'group', groupId })));
  return fc.oneof(...choices);
}

interface FlowSpec {
  tableId: number;
  priority: number;
  match: Match;
  instructions: Instruction[];
}

const flowArb: fc.Arbitrary<FlowSpec> = fc.integer({ min: 0, max: 2 }).chain((tableId) =>
  matchArb.chain((match) =>
    fc.record({
      tableId: fc.constant(tableId),
      priority: fc.constantFrom(0, 1, 5, 10),
      match: fc.constant(match),
      apply: maybe(fc.array(actionArb(match, true), { maxLength: 4 })),
      write: maybe(fc.array(actionArb(match, true), { maxLength: 3 })),
      clear: fc.boolean(),
      meta: maybe(fc.constantFrom(1n, 2n)),
      goto: tableId < 2 ? maybe(fc.integer({ min: tableId + 1, max: 2 })) : fc.constant(undefined),
    }).map((r) => {
      const ins: Instruction[] = [];
      if (r.apply) ins.push({ type: 'apply_actions', actions: r.apply });
      if (r.clear) ins.push({ type: 'clear_actions' });
      if (r.write) {
        // An action set holds one action per type (one set_field per field).
        const seen = new Set<string>();
        const acts = r.write.filter((a) => {
          const k = a.type === 'set_field' ? `s:${a.field}` : a.type;
          if (seen.has(k)) return false;
          seen.add(k);
          return true;
        });
        ins.push({ type: 'write_actions', actions: acts });
      }
      if (r.meta !== undefined) ins.push({ type: 'write_metadata', value: r.meta, mask: 3n });
      if (r.goto !== undefined) ins.push({ type: 'goto_table', tableId: r.goto });
      return { tableId: r.tableId, priority: r.priority, match: r.match, instructions: ins };
    }),
  ),
);

const groupArb: fc.Arbitrary<GroupConfig> = fc.record({
  groupId: fc.constantFrom(1, 2, 3),
  type: fc.constantFrom<GroupConfig['type']>('all', 'select', 'indirect', 'ff'),
  buckets: fc.array(
    fc.record({ actions: fc.array(actionArb(null, false), { maxLength: 3 }), weight: fc.integer({ min: 0, max: 3 }), watchPort: fc.integer({ min: 1, max: 4 }) }),
    { minLength: 1, maxLength: 3 },
  ),
}).map((g) => ({
  groupId: g.groupId,
  type: g.type,
  buckets: (g.type === 'indirect' ? g.buckets.slice(0, 1) : g.buckets).map((b) => ({
    actions: b.actions,
    weight: g.type === 'select' ? b.weight : undefined,
    watchPort: g.type === 'ff' || (g.type === 'select' && b.weight === 3) ? b.watchPort : undefined,
  })),
}));

type Step =
  | { kind: 'packet'; port: number; pkt: PktSpec }
  | { kind: 'burst'; port: number; pkts: PktSpec[] }
  | { kind: 'add'; flow: FlowSpec }
  | { kind: 'delete'; strict: boolean; flow: FlowSpec }
  | { kind: 'modify'; flow: FlowSpec }
  | { kind: 'group'; g: GroupConfig; del: boolean }
  | { kind: 'link'; port: number; up: boolean }
  | { kind: 'noflood'; port: number; on: boolean }
  | { kind: 'miss'; table: number; controller: boolean };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 10, arbitrary: fc.record({ kind: fc.constant('packet' as const), port: fc.integer({ min: 1, max: 4 }), pkt: pktArb }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('burst' as const), port: fc.integer({ min: 1, max: 4 }), pkts: fc.array(pktArb, { minLength: 1, maxLength: 5 }) }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('add' as const), flow: flowArb }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('delete' as const), strict: fc.boolean(), flow: flowArb }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('modify' as const), flow: flowArb }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('group' as const), g: groupArb, del: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('link' as const), port: fc.integer({ min: 1, max: 4 }), up: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('noflood' as const), port: fc.integer({ min: 1, max: 4 }), on: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('miss' as const), table: fc.integer({ min: 0, max: 2 }), controller: fc.boolean() }) },
);

let bridges: Bridge[] = [];
/** Non-vacuity: frames compared, and frames the actions rewrote. */
const seen = { outputs: 0, rewritten: 0 };
afterEach(() => {
  for (const b of bridges) b.close();
  bridges = [];
});

function runScenario(steps: Step[], options: { microflowSize?: number; megaflowLimit?: number }): void {
  const br = new Bridge({ clock: () => 0, microflowInsertInterval: 1, microflowSize: 8192, ...options });
  bridges.push(br);
  const sinks = [1, 2, 3, 4].map((no) => {
    const s = new SinkBackend();
    br.addPort(s, { portNo: no });
    return s;
  });
  const pins: { reason: string; tableId: number }[] = [];
  br.onPacketIn((p) => pins.push({ reason: p.reason, tableId: p.tableId }));
  for (const step of steps) {
    switch (step.kind) {
      case 'packet': {
        const frame = buildPacket(step.pkt);
        const ref = new Reference(snapshot(br));
        ref.process(step.port, frame);
        sinks[step.port - 1]!.inject(frame);
        const got: { port: number; hex: string }[] = [];
        // Collect in port order per sink would lose the global order: compare as multisets sorted.
        sinks.forEach((s, i) => {
          for (const f of s.take()) got.push({ port: i + 1, hex: hex(f) });
        });
        const sortKey = (o: { port: number; hex: string }): string => `${o.port}:${o.hex}`;
        expect(got.map(sortKey).sort(), `outputs for ${JSON.stringify(step.pkt)} on port ${step.port}`).toEqual(ref.outputs.map(sortKey).sort());
        expect(pins.splice(0)).toEqual(ref.packetIns);
        seen.outputs += got.length;
        const inHex = hex(frame);
        seen.rewritten += got.filter((o) => o.hex !== inHex).length;
        break;
      }
      case 'burst': {
        // receiveBatch: outputs of unmodified frames are queued per port and sent at the end.
        const frames = step.pkts.map(buildPacket);
        const ref = new Reference(snapshot(br));
        for (const f of frames) ref.process(step.port, f);
        if (br.portInfo(step.port).live) br.receiveBatch(step.port, frames);
        const got: { port: number; hex: string }[] = [];
        sinks.forEach((s, i) => {
          for (const f of s.take()) got.push({ port: i + 1, hex: hex(f) });
        });
        const sortKey = (o: { port: number; hex: string }): string => `${o.port}:${o.hex}`;
        expect(got.map(sortKey).sort(), `outputs for a burst on port ${step.port}`).toEqual(ref.outputs.map(sortKey).sort());
        expect(pins.splice(0)).toEqual(ref.packetIns);
        seen.outputs += got.length;
        break;
      }
      case 'add':
        try {
          br.addFlow(step.flow);
        } catch (e) {
          // A group that does not exist (yet) is refused (OFPBAC_BAD_OUT_GROUP): fine.
          if (!(e instanceof Error) || !/does not exist/.test(e.message)) throw e;
        }
        break;
      case 'delete':
        br.flowMod({ command: step.strict ? 'delete_strict' : 'delete', tableId: step.strict ? step.flow.tableId : 255, priority: step.flow.priority, match: step.strict ? step.flow.match : { in_port: step.flow.match.in_port } });
        break;
      case 'modify':
        try {
          br.flowMod({ command: 'modify', tableId: step.flow.tableId, match: { eth_type: step.flow.match.eth_type }, instructions: step.flow.instructions.filter((i) => i.type !== 'goto_table' && i.type !== 'write_actions') });
        } catch (e) {
          if (!(e instanceof Error) || !/does not exist|prerequisite/.test(e.message)) throw e;
        }
        break;
      case 'group':
        if (step.del) br.groupMod('delete', { groupId: step.g.groupId });
        else br.groupMod(br.groupConfigs().some((g) => g.groupId === step.g.groupId) ? 'modify' : 'add', step.g);
        break;
      case 'link':
        sinks[step.port - 1]!.link(step.up);
        break;
      case 'noflood':
        br.setPortConfig(step.port, { noFlood: step.on });
        break;
      case 'miss':
        br.setTableMiss(step.table, step.controller ? 'controller' : 'drop');
        break;
    }
  }
}

describe('the cached fast path agrees with a linear reference model', () => {
  it('random rule sets, random packets, random changes between packets (microflow + megaflow)', () => {
    fc.assert(fc.property(fc.array(stepArb, { minLength: 5, maxLength: 60 }), (steps) => runScenario(steps, {})), { numRuns: 150 });
  });

  it('the same with a tiny microflow cache over a tiny megaflow cache (slots naming evicted entries, collisions)', () => {
    fc.assert(fc.property(fc.array(stepArb, { minLength: 5, maxLength: 60 }), (steps) => runScenario(steps, { microflowSize: 2, megaflowLimit: 3 })), { numRuns: 80 });
  });

  it('the same with the microflow cache off and a tiny megaflow cache (evictions)', () => {
    fc.assert(fc.property(fc.array(stepArb, { minLength: 5, maxLength: 60 }), (steps) => runScenario(steps, { microflowSize: 0, megaflowLimit: 3 })), { numRuns: 100 });
  });

  it('set_field, push and pop rewrite bytes as the reference does (checksums recomputed from scratch there)', () => {
    const before = seen.rewritten;
    const rewriteFlow: fc.Arbitrary<FlowSpec> = fc.constantFrom<Match>({}, { eth_type: 0x0800 }, { eth_type: 0x0800, ip_proto: 6 }, { eth_type: 0x0800, ip_proto: 17 }, { eth_type: 0x86dd, ip_proto: 17 }, { eth_type: 0x86dd }, { eth_type: 0x86dd, ip_proto: 58 }, { eth_type: 0x0800, ip_proto: 1 }, { eth_type: 0x0806 }).chain((match) =>
      fc.array(fc.oneof(setArb(match), setArb(match), fc.constant({ type: 'push_vlan' }), fc.constant({ type: 'pop_vlan' })), { minLength: 1, maxLength: 4 }).map((acts) => ({
        tableId: 0, priority: Object.keys(match).length, match, instructions: [{ type: 'apply_actions', actions: [...acts, { type: 'output', port: 2 }, { type: 'output', port: Port.IN_PORT }] }] as Instruction[],
      })),
    );
    fc.assert(
      fc.property(fc.array(rewriteFlow, { minLength: 1, maxLength: 5 }), fc.array(pktArb, { minLength: 1, maxLength: 8 }), (flows, pkts) => {
        const steps: Step[] = flows.map((flow) => ({ kind: 'add', flow }));
        for (let r = 0; r < 2; r++) for (const pkt of pkts) steps.push({ kind: 'packet', port: 1, pkt });
        runScenario(steps, {});
      }),
      { numRuns: 200 },
    );
    expect(seen.rewritten - before).toBeGreaterThan(100);
  });

  it('group buckets rewrite packets of any protocol on their own clones (no match prerequisites there)', () => {
    const push: Action = { type: 'push_vlan' };
    const pop: Action = { type: 'pop_vlan' };
    const out2: Action = { type: 'output', port: 2 };
    const bucket = fc.array(fc.oneof(setArb(null), setArb(null), fc.constant(push), fc.constant(pop)), { maxLength: 3 })
      .map((acts): { actions: Action[] } => ({ actions: [...acts, out2] }));
    const groupFlows = fc.record({
      type: fc.constantFrom<GroupConfig['type']>('all', 'indirect', 'select'),
      buckets: fc.array(bucket, { minLength: 1, maxLength: 3 }),
      match: fc.constantFrom<Match>({}, { in_port: 1 }, { eth_type: 0x0800 }),
    });
    fc.assert(
      fc.property(groupFlows, fc.array(pktArb, { minLength: 2, maxLength: 8 }), (g, pkts) => {
        const steps: Step[] = [
          { kind: 'group', del: false, g: { groupId: 1, type: g.type, buckets: g.type === 'indirect' ? g.buckets.slice(0, 1) : g.buckets } },
          { kind: 'add', flow: { tableId: 0, priority: 1, match: g.match, instructions: [{ type: 'apply_actions', actions: [{ type: 'group', groupId: 1 }, { type: 'output', port: 3 }] }] } },
        ];
        for (let r = 0; r < 2; r++) for (const pkt of pkts) steps.push({ kind: 'packet', port: 1, pkt });
        runScenario(steps, {});
      }),
      { numRuns: 300 },
    );
  });

  it('tunnel_id is 64 bits: set in one table, matched (exact and masked, high and low halves) in the next', () => {
    const TIDS = [5, 0x1_0000_0005n, 0xffff_ffff_0000_0005n, 0xffff_ffff_ffff_ffffn] as const;
    const setFlow: fc.Arbitrary<FlowSpec> = fc.record({ inPort: fc.integer({ min: 1, max: 4 }), tid: fc.constantFrom(...TIDS) }).map(({ inPort, tid }) => ({
      tableId: 0, priority: 1, match: { in_port: inPort },
      instructions: [{ type: 'apply_actions', actions: [{ type: 'set_field', field: 'tunnel_id', value: tid }] }, { type: 'goto_table', tableId: 1 }] as Instruction[],
    }));
    const matchFlow: fc.Arbitrary<FlowSpec> = fc.record({
      m: fc.oneof(fc.constantFrom<number | bigint>(...TIDS, 0), fc.constant({ value: 0x1_0000_0000n, mask: 0x1_0000_0000n }), fc.constant({ value: 5n, mask: 0xffff_ffffn })),
      port: fc.integer({ min: 1, max: 4 }), priority: fc.integer({ min: 0, max: 3 }),
    }).map(({ m, port, priority }) => ({ tableId: 1, priority, match: { tunnel_id: m }, instructions: [{ type: 'apply_actions', actions: [{ type: 'output', port }] }] as Instruction[] }));
    fc.assert(
      fc.property(fc.array(setFlow, { minLength: 1, maxLength: 4 }), fc.array(matchFlow, { minLength: 1, maxLength: 6 }), fc.array(fc.record({ port: fc.integer({ min: 1, max: 4 }), pkt: pktArb }), { minLength: 1, maxLength: 6 }), (sets, matches, pkts) => {
        const steps: Step[] = [...sets, ...matches].map((flow) => ({ kind: 'add', flow }));
        for (let r = 0; r < 2; r++) for (const p of pkts) steps.push({ kind: 'packet', ...p });
        runScenario(steps, {});
      }),
      { numRuns: 200 },
    );
  });

  it('repeated packets hit the caches and still agree', () => {
    fc.assert(
      fc.property(fc.array(flowArb, { maxLength: 12 }), fc.array(fc.record({ port: fc.integer({ min: 1, max: 4 }), pkt: pktArb }), { minLength: 1, maxLength: 6 }), (flows, pkts) => {
        const steps: Step[] = flows.map((flow) => ({ kind: 'add', flow }));
        for (let r = 0; r < 3; r++) for (const p of pkts) steps.push({ kind: 'packet', ...p });
        runScenario(steps, {});
      }),
      { numRuns: 150 },
    );
  });

  it('compared real traffic (not vacuous)', () => {
    expect(seen.outputs).toBeGreaterThan(1000);
    expect(seen.rewritten).toBeGreaterThan(200);
  });
});
