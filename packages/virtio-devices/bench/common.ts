/** What the benchmark measures: one pattern of reads. */
export interface Job {
  type: 'job';
  bs: number;
  qd: number;
  random: boolean;
  ops: number;
  seed: number;
}

export interface JobResult {
  type: 'result';
  iops: number;
  mbps: number;
  /** Microseconds. */
  p50: number;
  p99: number;
  /** CPU time of the whole process (every thread: device, guest, libuv's threadpool) per request, µs; filled in by the harness. */
  cpuUs?: number;
}

/** xorshift32: deterministic offsets, seeded per run, the same on both paths. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

export function summarize(lat: Float64Array, job: Job, ms: number): JobResult {
  const secs = ms / 1000;
  lat.sort();
  const n = lat.length;
  return {
    type: 'result',
    iops: n / secs,
    mbps: (n * job.bs) / secs / 1e6,
    p50: lat[Math.floor(n * 0.5)]! * 1000,
    p99: lat[Math.min(n - 1, Math.floor(n * 0.99))]! * 1000,
  };
}
