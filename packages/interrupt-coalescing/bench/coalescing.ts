/**
 * Interrupt coalescing benchmark.
 *
 * 1. Simulation: for each workload (closed loop as fio iodepth=N; Poisson and
 *    bursty open arrivals under a queue-depth cap) at QD 1, 4, 32, 128, each
 *    policy runs on the same seeded workload; the table gives interrupts per
 *    I/O and the delay coalescing adds (completion→interrupt p50/p99), and the
 *    p99 latency (issue→interrupt) relative to `none`. Medians over --seeds
 *    seeds (default 10), with the spread of interrupts/IO.
 * 2. Hot path: ns per onCompletion for each policy, medians of 10 runs, as a
 *    ratio to `none` measured in the same run.
 *
 * A recorded trace (JSON Lines, see src/trace.ts) replaces the synthetic
 * workloads with --trace FILE.
 *
 * The guest's CPU cost per interrupt and per completion (--cpu 2,0.5 µs by
 * default) is what coalescing saves; with --cpu 0,0 it can only add delay.
 *
 *   pnpm --filter @ioplane/interrupt-coalescing bench [-- --seeds 10 --ios 20000 --cpu 2,0.5 --trace FILE --policies vic,adaptive --no-hot-path]
 */
import { readFileSync } from 'node:fs';
import {
  AdaptivePolicy,
  BLOCK_PROFILES,
  NetDimPolicy,
  FakeClock,
  FakeScheduler,
  FixedPolicy,
  InterruptCoalescer,
  NonePolicy,
  Rng,
  VicPolicy,
  burstyArrivals,
  lognormalService,
  nvmeAggregationPolicy,
  parseTrace,
  poissonArrivals,
  simulate,
  type CoalescingPolicy,
  type SimResult,
  type Trace,
} from '../src/index.js';

const args = process.argv.slice(2);
const opt = (name: string, def: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : def;
};
const SEEDS = Number(opt('seeds', '10'));
const MEASURED_IOS = Number(opt('ios', '20000'));
const TRACE = opt('trace', '');
// Guest CPU per interrupt and per completion, µs (--cpu IRQ,PER_IO; "0,0" for the pure-delay model).
const [IRQ_US, PER_IO_US] = opt('cpu', '2,0.5').split(',').map(Number) as [number, number];

// The device: 32 requests served at once, log-normal service (median 60 µs, σ 0.5: mean 68 µs).
const PARALLELISM = 32;
const SERVICE_MEDIAN_US = 60;
const SERVICE_SIGMA = 0.5;
const MEAN_SERVICE_US = SERVICE_MEDIAN_US * Math.exp((SERVICE_SIGMA * SERVICE_SIGMA) / 2);
const WARMUP_US = 100_000; // one vIC epoch, so its IOPS gate has a measurement

const POLICIES: { label: string; make: () => CoalescingPolicy }[] = [
  { label: 'none', make: () => new NonePolicy() },
  { label: 'fixed 16f/50us', make: () => new FixedPolicy({ maxFrames: 16, maxUsecs: 50 }) },
  { label: 'nvme thr7/time1', make: () => nvmeAggregationPolicy(7, 1) },
  { label: 'vic', make: () => new VicPolicy() },
  { label: 'adaptive', make: () => new AdaptivePolicy() },
  { label: 'net_dim', make: () => new NetDimPolicy({ profiles: BLOCK_PROFILES }) },
];

// --policies none,vic,… runs a subset (none is always run: it is the baseline).
const ONLY = opt('policies', '');
if (ONLY) {
  const keep = new Set(['none', ...ONLY.split(',')]);
  for (let i = POLICIES.length - 1; i >= 0; i--) if (!keep.has(POLICIES[i]!.label)) POLICIES.splice(i, 1);
}

const QDS = [1, 4, 32, 128];
type Kind = 'closed' | 'poisson' | 'bursty';
const KINDS: Kind[] = ['closed', 'poisson', 'bursty'];

function capacity(qd: number): number {
  return (Math.min(qd, PARALLELISM) * 1e6) / MEAN_SERVICE_US;
}

function workload(kind: Kind, qd: number, seed: number): Trace {
  const rate = capacity(qd);
  const n = Math.ceil((rate * WARMUP_US) / 1e6) + MEASURED_IOS;
  const rng = new Rng(seed * 7919 + qd * 31 + KINDS.indexOf(kind));
  const serviceNs = lognormalService(rng, n, SERVICE_MEDIAN_US, SERVICE_SIGMA);
  let arrivalsNs: Float64Array;
  if (kind === 'closed') arrivalsNs = new Float64Array(n); // all queued at 0: the guest refills as slots free
  else if (kind === 'poisson') arrivalsNs = poissonArrivals(rng, n, 0.8 * rate);
  else arrivalsNs = burstyArrivals(rng, n, 0.5 * rate, 32, 4);
  return { arrivalsNs, serviceNs };
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const fmt = (v: number, d = 1): string => v.toFixed(d);

interface Row {
  kind: string;
  qd: number;
  policy: string;
  intPerIo: number;
  intMin: number;
  intMax: number;
  addedP50: number;
  addedP99: number;
  latP99: number;
  latP99VsNone: number;
  iopsVsNone: number;
}

/** One vIC epoch of warm-up, unless a recorded trace is too short to spare it (then measured from its start). */
function warmupFor(trace: Trace): number {
  const span = trace.arrivalsNs[trace.arrivalsNs.length - 1]!;
  if (!TRACE || span > 2 * WARMUP_US * 1000) return WARMUP_US * 1000;
  return 0;
}

function runMatrix(): Row[] {
  const rows: Row[] = [];
  const workloads: { kind: string; qd: number; traces: Trace[] }[] = [];
  if (TRACE) {
    const t = parseTrace(readFileSync(TRACE, 'utf8'));
    const span = t.arrivalsNs[t.arrivalsNs.length - 1]! / 1e6;
    console.log(`${t.arrivalsNs.length} I/Os over ${span.toFixed(1)} ms; ${warmupFor(t) > 0 ? `first ${WARMUP_US / 1000} ms run as warm-up` : `shorter than ${(2 * WARMUP_US) / 1000} ms: measured from the start, so vIC's IOPS gate is closed for its first ${WARMUP_US / 1000} ms`}`);
    for (const qd of QDS) workloads.push({ kind: `trace`, qd, traces: [t] });
  } else {
    for (const kind of KINDS) for (const qd of QDS) workloads.push({ kind, qd, traces: Array.from({ length: SEEDS }, (_, s) => workload(kind, qd, s + 1)) });
  }
  for (const w of workloads) {
    const results = new Map<string, SimResult[]>();
    for (const p of POLICIES) {
      results.set(
        p.label,
        w.traces.map((trace, s) => {
          const fb = new Rng(1000 + s);
          return simulate({
            workload: trace,
            queueDepth: w.qd,
            parallelism: PARALLELISM,
            policy: p.make(),
            warmupNs: warmupFor(trace),
            interruptCostNs: IRQ_US * 1000,
            perCompletionCostNs: PER_IO_US * 1000,
            fallbackService: () => fb.lognormal(SERVICE_MEDIAN_US * 1000, SERVICE_SIGMA),
          });
        }),
      );
    }
    const none = results.get('none')!;
    for (const p of POLICIES) {
      const rs = results.get(p.label)!;
      const ipi = rs.map((r) => r.interruptsPerIo);
      rows.push({
        kind: w.kind,
        qd: w.qd,
        policy: p.label,
        intPerIo: median(ipi),
        intMin: Math.min(...ipi),
        intMax: Math.max(...ipi),
        addedP50: median(rs.map((r) => r.addedP50Us)),
        addedP99: median(rs.map((r) => r.addedP99Us)),
        latP99: median(rs.map((r) => r.latencyP99Us)),
        latP99VsNone: median(rs.map((r, i) => (r.latencyP99Us / none[i]!.latencyP99Us - 1) * 100)),
        iopsVsNone: median(rs.map((r, i) => r.iops / none[i]!.iops)),
      });
    }
  }
  return rows;
}

function printTable(rows: Row[]): void {
  const head = ['workload', 'QD', 'policy', 'int/IO', '(min–max)', 'added p50 µs', 'added p99 µs', 'lat p99 µs', 'lat p99 vs none', 'IOPS vs none'];
  const body = rows.map((r) => [
    r.kind,
    String(r.qd),
    r.policy,
    fmt(r.intPerIo, 3),
    `${fmt(r.intMin, 3)}–${fmt(r.intMax, 3)}`,
    fmt(r.addedP50),
    fmt(r.addedP99),
    fmt(r.latP99),
    `${r.latP99VsNone >= 0 ? '+' : ''}${fmt(r.latP99VsNone)}%`,
    fmt(r.iopsVsNone, 3),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  console.log(line(head));
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  for (const b of body) console.log(line(b));
}

function targets(rows: Row[]): void {
  console.log('\nTargets: QD32 ≥ 80 % fewer interrupts than none; QD1 p99 latency added ≤ 5 %.');
  for (const kind of new Set(rows.map((r) => r.kind))) {
    for (const p of POLICIES) {
      const at = (qd: number): Row | undefined => rows.find((r) => r.kind === kind && r.qd === qd && r.policy === p.label);
      const none32 = rows.find((r) => r.kind === kind && r.qd === 32 && r.policy === 'none');
      const r32 = at(32);
      const r1 = at(1);
      if (!r32 || !r1 || !none32 || p.label === 'none') continue;
      const fewer = (1 - r32.intPerIo / none32.intPerIo) * 100;
      const ok32 = fewer >= 80;
      const ok1 = r1.latP99VsNone <= 5;
      console.log(
        `  ${kind.padEnd(8)} ${p.label.padEnd(16)} QD32 ${fmt(fewer)} % fewer interrupts ${ok32 ? 'PASS' : 'FAIL'}; QD1 p99 ${r1.latP99VsNone >= 0 ? '+' : ''}${fmt(r1.latP99VsNone)} % ${ok1 ? 'PASS' : 'FAIL'}`,
      );
    }
  }
}

/** ns per onCompletion through the coalescer (fake clock, 1 µs apart, CIF 32). */
function hotPath(make: () => CoalescingPolicy, iterations: number): number {
  const clock = new FakeClock();
  const scheduler = new FakeScheduler(clock);
  let delivered = 0;
  const c = new InterruptCoalescer({ queues: 1, clock, scheduler, policy: make(), deliver: () => void delivered++ });
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) {
    clock.set(clock.now() + 1000);
    c.onCompletion(0, 32);
    if ((i & 63) === 63 && scheduler.nextDeadline() <= clock.now()) scheduler.advanceTo(clock.now());
  }
  const ns = Number(process.hrtime.bigint() - t0) / iterations;
  if (delivered === 0) throw new Error('no interrupt delivered');
  return ns;
}

function hotPathTable(): void {
  const RUNS = 10;
  const ITER = 300_000;
  const per = new Map<string, number[]>(POLICIES.map((p) => [p.label, []]));
  for (let r = 0; r < RUNS; r++) for (const p of POLICIES) per.get(p.label)!.push(hotPath(p.make, ITER));
  const base = median(per.get('none')!);
  console.log(`\nHot path: ns per onCompletion (median of ${RUNS} runs × ${ITER}; baseline none = ${fmt(base, 1)} ns)`);
  for (const p of POLICIES) {
    const xs = per.get(p.label)!;
    console.log(`  ${p.label.padEnd(16)} ${fmt(median(xs), 1).padStart(7)} ns  (${fmt(Math.min(...xs), 1)}–${fmt(Math.max(...xs), 1)})  ×${fmt(median(xs) / base, 2)} vs none`);
  }
}

const t0 = Date.now();
console.log(
  TRACE
    ? `Recorded trace ${TRACE}; device ${PARALLELISM}-way parallel`
    : `Synthetic workloads, ${SEEDS} seeds, ${MEASURED_IOS} measured I/Os per run after ${WARMUP_US / 1000} ms warm-up; device ${PARALLELISM}-way parallel, service log-normal median ${SERVICE_MEDIAN_US} µs σ ${SERVICE_SIGMA}; poisson at 80 %, bursty at 50 % (4× peaks, bursts of 32) of capacity min(QD, ${PARALLELISM})/mean service; guest CPU ${IRQ_US} µs per interrupt + ${PER_IO_US} µs per completion`,
);
console.log('added = completion → interrupt (the delay coalescing adds); lat = issue → guest has handled the completion (incl. guest CPU)');
const rows = runMatrix();
printTable(rows);
targets(rows);
if (!args.includes('--no-hot-path')) hotPathTable();
console.log(`\n(${((Date.now() - t0) / 1000).toFixed(1)} s)`);
