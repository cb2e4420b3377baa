// Checks the hot path allocates nothing per packet: after warm-up, 2 million 64-byte frames
// (100 flows) go through the bridge for each kind of action program, and the garbage
// collections seen meanwhile are counted (0 expected). Run: pnpm --filter @ioplane/vswitch bench:alloc
import { PerformanceObserver } from 'node:perf_hooks';
import { BaseNetBackend } from '@ioplane/net-backends';
import { buildUdp, parseMac } from '@ioplane/packet';
import { Bridge, Port, type Action } from '../src/index.js';

class Sink extends BaseNetBackend {
  readonly kind = 'sink';
  constructor() {
    super(1500);
    this.setLink(true);
  }
  send(_f: readonly Uint8Array[], n = _f.length): number {
    return n;
  }
  close(): Promise<void> {
    this.markClosed();
    return Promise.resolve();
  }
}

const programs: Record<string, (br: Bridge) => Action[]> = {
  'output': () => [{ type: 'output', port: 2 }],
  'set_field ipv4 + push_vlan + vlan_vid + output': () => [
    { type: 'set_field', field: 'ipv4_dst', value: '10.9.9.9' }, { type: 'push_vlan' }, { type: 'set_field', field: 'vlan_vid', value: 5 }, { type: 'output', port: 2 },
  ],
  'NORMAL (learning, flooding with tagging)': () => [{ type: 'output', port: Port.NORMAL }],
  'SELECT group (2 buckets)': (br) => {
    br.groupMod('add', { groupId: 1, type: 'select', buckets: [{ actions: [{ type: 'output', port: 2 }] }, { actions: [{ type: 'output', port: 3 }] }] });
    return [{ type: 'group', groupId: 1 }];
  },
  'ALL group + FLOOD': (br) => {
    br.groupMod('add', { groupId: 1, type: 'all', buckets: [{ actions: [{ type: 'set_field', field: 'eth_dst', value: '02:00:00:00:00:09' }, { type: 'output', port: 2 }] }, { actions: [{ type: 'output', port: Port.FLOOD }] }] });
    return [{ type: 'group', groupId: 1 }];
  },
};

const frames = Array.from({ length: 100 }, (_, i) => {
  const b = new Uint8Array(64);
  buildUdp(b, { srcMac: parseMac('02:00:00:00:00:01'), dstMac: parseMac('02:00:00:00:00:02'), srcIp: 0x0a000001, dstIp: 0x0a000002, srcPort: 1000 + i, dstPort: 2, payload: new Uint8Array(22) });
  return b;
});

let gcs = 0;
const obs = new PerformanceObserver((l) => (gcs += l.getEntries().length));
for (const micro of [8192, 0]) {
  for (const [name, make] of Object.entries(programs)) {
    const br = new Bridge({ microflowSize: micro });
    for (let p = 1; p <= 3; p++) br.addPort(new Sink(), { portNo: p, vlan: p === 3 ? { mode: 'trunk', trunks: [0, 10] } : undefined });
    const actions = make(br);
    br.meterMod('add', { meterId: 1, unit: 'pktps', bands: [{ type: 'drop', rate: 1e9 }] });
    br.addFlow({ match: { in_port: 1, eth_type: 0x0800 }, instructions: [{ type: 'meter', meterId: 1 }, { type: 'apply_actions', actions }] });
    for (let i = 0; i < 2000; i++) br.receiveBatch(1, frames, 100);
    gcs = 0;
    obs.observe({ entryTypes: ['gc'] });
    const t = process.hrtime.bigint();
    for (let i = 0; i < 20000; i++) br.receiveBatch(1, frames, 100);
    const s = Number(process.hrtime.bigint() - t) / 1e9;
    await new Promise((r) => setTimeout(r, 20));
    obs.disconnect();
    console.log(`${micro ? 'microflow+megaflow' : 'megaflow only     '}  meter + ${name.padEnd(46)} ${(2e6 / s / 1e6).toFixed(2).padStart(6)} Mpps   GCs during 2M packets: ${gcs}`);
    br.close();
  }
}
