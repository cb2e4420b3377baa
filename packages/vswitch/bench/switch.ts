// Packets per second through the bridge for 64-byte UDP frames injected from an in-memory
// port, for 1 / 1 000 / 100 000 installed flows and 1 / 100 / 10 000 distinct traffic flows,
// with cache hit rates; with the microflow cache on (the default) and off (every packet takes
// the megaflow path). The baseline, measured in the same run, is bare frame passing between two
// in-memory ports (the same frames handed straight to the output port's send()). Medians of
// RUNS runs; spread is min–max. Each installed-flow count runs in a fresh process, so one
// scenario's heap and JIT state do not weigh on the next. Run: pnpm --filter @ioplane/vswitch bench
import { spawnSync } from 'node:child_process';
import { BaseNetBackend, createLoopbackPair } from '@ioplane/net-backends';
import { buildUdp, parseMac } from '@ioplane/packet';
import { Bridge, type Instruction } from '../src/index.js';

const RUNS = Number(process.env.RUNS ?? 11);
const PACKETS = Number(process.env.PACKETS ?? 1_000_000);
const BATCH = 256;

/** An in-memory port: copies each frame into a ring, as a queue to a consumer would. */
class CountingBackend extends BaseNetBackend {
  readonly kind = 'counting';
  count = 0;
  private readonly ring = new Uint8Array(1 << 16);
  private at = 0;
  constructor() {
    super(1500);
    this.setLink(true);
  }
  send(frames: readonly Uint8Array[], count = frames.length): number {
    for (let i = 0; i < count; i++) {
      const f = frames[i]!;
      if (this.at + f.length > this.ring.length) this.at = 0;
      this.ring.set(f, this.at);
      this.at += f.length;
    }
    this.count += count;
    return count;
  }
  close(): Promise<void> {
    this.markClosed();
    return Promise.resolve();
  }
}

function ip(i: number): number {
  return (0x0a000000 | (i & 0xffffff)) >>> 0;
}

function frames(flows: number, installed: number): Uint8Array[] {
  const src = parseMac('02:00:00:00:00:01');
  const dst = parseMac('02:00:00:00:00:02');
  const out: Uint8Array[] = [];
  for (let f = 0; f < flows; f++) {
    const buf = new Uint8Array(64);
    // Distinct flows differ in destination address (one of the installed ones) and source port.
    buildUdp(buf, { srcMac: src, dstMac: dst, srcIp: ip(1), dstIp: ip(f % Math.max(installed, 1)), srcPort: 1024 + (f % 50000), dstPort: 4000, payload: new Uint8Array(22) });
    out.push(buf);
  }
  return out;
}

function bridgeWith(installed: number, microflowSize: number): { br: Bridge; sink: CountingBackend } {
  const br = new Bridge({ microflowSize, megaflowLimit: 200_000 });
  br.addPort(new CountingBackend(), { portNo: 1 });
  const sink = new CountingBackend();
  br.addPort(sink, { portNo: 2 });
  const out: Instruction[] = [{ type: 'apply_actions', actions: [{ type: 'output', port: 2 }] }];
  if (installed === 1) br.addFlow({ match: { in_port: 1 }, instructions: out });
  else {
    for (let i = 0; i < installed - 1; i++) {
      br.addFlow({ priority: 100, match: { in_port: 1, eth_type: 0x0800, ipv4_dst: ip(i) }, instructions: out });
    }
    br.addFlow({ priority: 0, match: {}, instructions: [] });
  }
  return { br, sink };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function timeRun(fn: () => void): number {
  const t = process.hrtime.bigint();
  fn();
  return PACKETS / (Number(process.hrtime.bigint() - t) / 1e9);
}

function pump(br: Bridge, fr: Uint8Array[]): void {
  const batch: Uint8Array[] = new Array<Uint8Array>(BATCH);
  let at = 0;
  for (let sent = 0; sent < PACKETS; sent += BATCH) {
    for (let i = 0; i < BATCH; i++) {
      batch[i] = fr[at]!;
      if (++at === fr.length) at = 0;
    }
    br.receiveBatch(1, batch, BATCH);
  }
}

function bare(sink: CountingBackend, fr: Uint8Array[]): void {
  const one: Uint8Array[] = [fr[0]!];
  let at = 0;
  for (let sent = 0; sent < PACKETS; sent++) {
    one[0] = fr[at]!;
    if (++at === fr.length) at = 0;
    sink.send(one, 1);
  }
}

const fmt = (r: number): string => `${(r / 1e6).toFixed(2)} Mpps`;
const pct = (h: number, m: number): string => (h + m === 0 ? '-' : `${((100 * h) / (h + m)).toFixed(1)}%`);

const scenario = process.argv[2];
if (scenario === undefined) {
  console.log(`vswitch: ${PACKETS} packets of 64 B per run, batches of ${BATCH}, median of ${RUNS} runs (min–max)`);
  console.log('baseline: the same frames passed straight to the output port (bare send), measured alternately with the bridge\n');
  for (const s of ['1', '1000', '100000', 'loopback']) {
    const r = spawnSync(process.execPath, [...process.execArgv, process.argv[1]!, s], { stdio: 'inherit', env: process.env });
    if (r.status !== 0) process.exit(r.status ?? 1);
  }
  process.exit(0);
}
const results: { name: string; median: number; min: number; max: number; extra: string }[] = [];
for (const installed of scenario === 'loopback' ? [] : [Number(scenario)]) {
  const t0 = Date.now();
  const setups = [bridgeWith(installed, 8192), bridgeWith(installed, 0)];
  console.log(`# ${installed} installed flow(s) (set-up ${Date.now() - t0} ms)`);
  for (const flows of [1, 100, 10_000]) {
    const fr = frames(flows, installed);
    const baseSink = new CountingBackend();
    const base: number[] = [];
    const withEmc: number[] = [];
    const megaOnly: number[] = [];
    for (const s of setups) pump(s.br, fr); // warm-up: fills the caches
    const before = setups.map((s) => structuredClone(s.br.stats));
    for (let r = 0; r < RUNS; r++) {
      // Alternate baseline and candidates back to back (TOOLCHAIN.md: timings are bimodal).
      base.push(timeRun(() => bare(baseSink, fr)));
      withEmc.push(timeRun(() => pump(setups[0]!.br, fr)));
      megaOnly.push(timeRun(() => pump(setups[1]!.br, fr)));
    }
    const after = setups.map((s) => s.br.stats);
    const d = (i: number, k: 'microflow' | 'megaflow', f: 'hits' | 'misses'): number => after[i]![k][f] - before[i]![k][f];
    const b = median(base);
    const line = (label: string, xs: number[], stats: string): void => {
      const m = median(xs);
      results.push({ name: `${installed}/${flows}/${label}`, median: m, min: Math.min(...xs), max: Math.max(...xs), extra: stats });
      console.log(`  ${String(flows).padStart(6)} traffic flows  ${label.padEnd(22)} ${fmt(m).padStart(11)}  (${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))})  ${(m / b).toFixed(3)}x baseline  ${stats}`);
    };
    console.log(`  ${String(flows).padStart(6)} traffic flows  ${'baseline (bare send)'.padEnd(22)} ${fmt(b).padStart(11)}  (${fmt(Math.min(...base))}–${fmt(Math.max(...base))})`);
    line('microflow+megaflow', withEmc, `microflow hit ${pct(d(0, 'microflow', 'hits'), d(0, 'microflow', 'misses'))}, megaflow hit ${pct(d(0, 'megaflow', 'hits'), d(0, 'megaflow', 'misses'))}, megaflows ${after[0]!.megaflow.entries}, masks ${after[0]!.megaflow.masks}`);
    line('megaflow only', megaOnly, `megaflow hit ${pct(d(1, 'megaflow', 'hits'), d(1, 'megaflow', 'misses'))}, megaflows ${after[1]!.megaflow.entries}`);
  }
}

// End to end through net-backends loopback pairs (ring copy + event loop), against the same
// frames passed between two loopback ports without a switch.
async function loopbackRun(withSwitch: boolean, fr: Uint8Array[], n: number, deferredTx = false): Promise<number> {
  const inPair = createLoopbackPair();
  const outPair = createLoopbackPair();
  let got = 0;
  let done: () => void = () => {};
  const finished = new Promise<void>((r) => (done = r));
  let br: Bridge | null = null;
  if (withSwitch) {
    br = new Bridge({ deferredTx });
    br.addPort(inPair.b, { portNo: 1 });
    br.addPort(outPair.a, { portNo: 2 });
    br.addFlow({ match: { in_port: 1 }, instructions: [{ type: 'apply_actions', actions: [{ type: 'output', port: 2 }] }] });
    outPair.b.onReceive(() => {
      if (++got === n) done();
    });
  } else {
    inPair.b.onReceive(() => {
      if (++got === n) done();
    });
  }
  const t = process.hrtime.bigint();
  let sent = 0;
  let at = 0;
  const batch: Uint8Array[] = [];
  while (sent < n) {
    batch.length = 0;
    for (let i = 0; i < BATCH && sent + i < n; i++) {
      batch.push(fr[at]!);
      if (++at === fr.length) at = 0;
    }
    let k = 0;
    while (k < batch.length) {
      const m = inPair.a.send(k === 0 ? batch : batch.slice(k));
      k += m;
      if (k < batch.length) await inPair.a.writable();
    }
    sent += batch.length;
  }
  await finished;
  const rate = n / (Number(process.hrtime.bigint() - t) / 1e9);
  br?.close();
  await Promise.all([inPair.a.close(), inPair.b.close(), outPair.a.close(), outPair.b.close()]);
  return rate;
}

if (scenario !== 'loopback') process.exit(0);
const fr1 = frames(100, 1);
const lb: number[] = [];
const lbs: number[] = [];
const lbd: number[] = [];
const N = 300_000;
for (let r = 0; r < RUNS; r++) {
  lb.push(await loopbackRun(false, fr1, N));
  lbs.push(await loopbackRun(true, fr1, N));
  lbd.push(await loopbackRun(true, fr1, N, true));
}
console.log(`\n# end to end over net-backends loopback pairs (${N} frames, 100 flows)`);
console.log(`  baseline: loopback port → loopback port       ${fmt(median(lb))}  (${fmt(Math.min(...lb))}–${fmt(Math.max(...lb))})`);
console.log(`  loopback → bridge (1 flow) → loopback          ${fmt(median(lbs))}  (${fmt(Math.min(...lbs))}–${fmt(Math.max(...lbs))})  ${(median(lbs) / median(lb)).toFixed(3)}x baseline`);
console.log(`  the same with deferredTx (one send per drain)   ${fmt(median(lbd))}  (${fmt(Math.min(...lbd))}–${fmt(Math.max(...lbd))})  ${(median(lbd) / median(lb)).toFixed(3)}x baseline`);
