/**
 * Configuration-space access rates: ConfigSpace.read/write (range, alignment
 * and mask checks, RW1C, hooks) against a bare DataView over 4 KiB, measured
 * in the same run, alternating baseline and candidate, medians of 21 runs
 * after 3 discarded warm-up rounds (this machine's timings are bimodal).
 *
 *   pnpm --filter @ioplane/sr-iov bench
 */
import { ConfigSpace, intel82599LikePf } from '../src/index.js';

const OPS = 2_000_000;
const RUNS = 21;
const WARMUP = 3;
/** DW-aligned offsets spread over the header, capabilities and extended space. */
const OFFSETS = Uint16Array.from({ length: 1024 }, (_, i) => (i * 37 * 4) % 4096);

function time(fn: () => number): number {
  const t0 = process.hrtime.bigint();
  const sink = fn();
  const ns = Number(process.hrtime.bigint() - t0);
  if (sink === -1) console.log('');
  return (OPS / ns) * 1e9;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1]!;
}

const bare = new DataView(new ArrayBuffer(4096));
const space = new ConfigSpace();
for (let o = 0x40; o < 0x1000; o += 4) space.setWritable(o, 4, 0xffff00ff);
const pf = intel82599LikePf();

const cases: [string, () => number][] = [
  ['DataView getUint32 (baseline)', () => { let s = 0; for (let i = 0; i < OPS; i++) s ^= bare.getUint32(OFFSETS[i & 1023]!, true); return s; }],
  ['ConfigSpace.read 4 B', () => { let s = 0; for (let i = 0; i < OPS; i++) s ^= space.read(OFFSETS[i & 1023]!, 4); return s; }],
  ['PF configRead 4 B (82599-like)', () => { let s = 0; for (let i = 0; i < OPS; i++) s ^= pf.configRead(OFFSETS[i & 1023]!, 4); return s; }],
  ['DataView setUint32 (baseline)', () => { for (let i = 0; i < OPS; i++) bare.setUint32(OFFSETS[i & 1023]!, i, true); return 0; }],
  ['ConfigSpace.write 4 B (masked)', () => { for (let i = 0; i < OPS; i++) space.write(OFFSETS[i & 1023]!, 4, i); return 0; }],
  ['ConfigSpace.write 1 B (masked)', () => { for (let i = 0; i < OPS; i++) space.write(OFFSETS[i & 1023]! + (i & 3), 1, i); return 0; }],
];

const results = new Map<string, number[]>(cases.map(([n]) => [n, []]));
for (let r = 0; r < WARMUP; r++) for (const [, fn] of cases) time(fn);
for (let r = 0; r < RUNS; r++) for (const [name, fn] of cases) results.get(name)!.push(time(fn));

const readBase = median(results.get('DataView getUint32 (baseline)')!);
const writeBase = median(results.get('DataView setUint32 (baseline)')!);
console.log(`config-space access, ${OPS.toLocaleString()} ops × ${RUNS} runs (median, min–max), Node ${process.version}`);
for (const [name] of cases) {
  const xs = results.get(name)!;
  const m = median(xs);
  const base = /read|get/i.test(name) ? readBase : writeBase;
  console.log(`  ${name.padEnd(34)} ${(m / 1e6).toFixed(1).padStart(7)} M ops/s  (${(Math.min(...xs) / 1e6).toFixed(1)}–${(Math.max(...xs) / 1e6).toFixed(1)})  ×${(m / base).toFixed(2)} of baseline`);
}
