// Parse + flow-key extraction and checksum throughput, against a plain copy of the same bytes
// measured in the same run. Medians over 11 runs.
import { buildUdp, FlowKey, FlowKeyExtractor, onesComplementSum, parseIpv4, parseMac } from '../src/index.js';

const RUNS = 11;
const N = 400_000;
const mac = parseMac('02:00:00:00:00:01');
const frames = [64, 1500].map((size) => {
  const out = new Uint8Array(size);
  buildUdp(out, { srcMac: mac, dstMac: mac, srcIp: parseIpv4('10.0.0.1'), dstIp: parseIpv4('10.0.0.2'), srcPort: 1, dstPort: 2, payload: new Uint8Array(size - 42) });
  return out;
});

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function rate(fn: () => void): number {
  const t = process.hrtime.bigint();
  fn();
  return N / (Number(process.hrtime.bigint() - t) / 1e9);
}

const ex = new FlowKeyExtractor();
const key = new FlowKey();
let sink = 0;
for (const f of frames) {
  const copyBuf = new Uint8Array(f.length);
  const base: number[] = [];
  const parse: number[] = [];
  const csum: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    base.push(rate(() => { for (let i = 0; i < N; i++) copyBuf.set(f); }));
    parse.push(rate(() => { for (let i = 0; i < N; i++) sink ^= ex.extract(f, key, i).words[18]!; }));
    csum.push(rate(() => { for (let i = 0; i < N; i++) sink ^= onesComplementSum(f, 14, f.length); }));
  }
  const b = median(base);
  console.log(`${f.length} B: copy baseline ${(b / 1e6).toFixed(2)} M/s | parse+flow key ${(median(parse) / 1e6).toFixed(2)} M/s (${(median(parse) / b).toFixed(2)}x) | checksum ${(median(csum) / 1e6).toFixed(2)} M/s (${(median(csum) / b).toFixed(2)}x)`);
}
if (sink === 0.5) console.log(sink);
