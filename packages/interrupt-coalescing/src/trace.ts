import { CoalescingError } from './errors.js';

/**
 * A recorded I/O trace, one JSON value per line (JSON Lines):
 *
 *   {"format":"ioplane-io-trace","version":1}      optional header, first line only
 *   {"t_us":0,"service_us":81.5}                    one I/O: arrival time, and optionally its service time
 *   12.25                                           or just the arrival time, in µs
 *
 * Arrival times are µs from any origin and must not decrease; `service_us`
 * is the back-end's time for that request (without it the simulator draws
 * one). The block path is to record these at submission and completion.
 */
export const TRACE_FORMAT = 'ioplane-io-trace';
export const TRACE_VERSION = 1;
/** Bounds on what a trace file may make us hold. */
export const TRACE_MAX_LINES = 10_000_000;
export const TRACE_MAX_LINE_LENGTH = 4096;

export interface Trace {
  /** Arrival times, ns, non-decreasing, starting at 0. */
  arrivalsNs: Float64Array;
  /** Service times, ns, or NaN where the trace gave none. */
  serviceNs: Float64Array;
}

function bad(line: number, msg: string, value?: unknown): CoalescingError {
  return new CoalescingError('invalid-trace', `trace line ${line}: ${msg}`, 'line', value, line);
}

function finiteNonNeg(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0;
}

/** Parses a JSON Lines trace; every line is checked, errors name the line. */
export function parseTrace(text: string): Trace {
  if (typeof text !== 'string') throw new CoalescingError('invalid-trace', 'trace must be a string', 'text', typeof text);
  const arrivals: number[] = [];
  const services: number[] = [];
  let lineNo = 0;
  let start = 0;
  let last = -Infinity;
  while (start <= text.length) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    lineNo++;
    const raw = text.slice(start, end).trim();
    start = end + 1;
    if (raw.length === 0) {
      if (end === text.length) break;
      continue;
    }
    if (raw.length > TRACE_MAX_LINE_LENGTH) throw bad(lineNo, `longer than ${TRACE_MAX_LINE_LENGTH} characters`, raw.length);
    if (arrivals.length >= TRACE_MAX_LINES) throw bad(lineNo, `more than ${TRACE_MAX_LINES} I/Os`);
    let v: unknown;
    try {
      v = JSON.parse(raw);
    } catch {
      throw bad(lineNo, 'not valid JSON', raw.slice(0, 80));
    }
    let t: unknown;
    let s: unknown;
    if (typeof v === 'number') {
      t = v;
    } else if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
      const o = v as Record<string, unknown>;
      if ('format' in o) {
        if (arrivals.length > 0 || lineNo !== 1) throw bad(lineNo, 'a header may only be the first line');
        if (o['format'] !== TRACE_FORMAT) throw bad(lineNo, `format is not "${TRACE_FORMAT}"`, o['format']);
        if (o['version'] !== TRACE_VERSION) throw bad(lineNo, `unsupported version`, o['version']);
        continue;
      }
      t = o['t_us'];
      s = o['service_us'];
    } else {
      throw bad(lineNo, 'expected a number or an object with t_us', raw.slice(0, 80));
    }
    if (!finiteNonNeg(t)) throw bad(lineNo, 't_us must be a finite number ≥ 0', t);
    if (t < last) throw bad(lineNo, `t_us ${t} is before the previous line's ${last}`, t);
    if (s !== undefined && !(finiteNonNeg(s) && s > 0)) throw bad(lineNo, 'service_us must be a finite number > 0', s);
    last = t;
    arrivals.push(t);
    services.push(s === undefined ? NaN : s);
  }
  if (arrivals.length === 0) throw new CoalescingError('invalid-trace', 'trace holds no I/O', 'lines', lineNo);
  const t0 = arrivals[0]!;
  return {
    arrivalsNs: Float64Array.from(arrivals, (t) => (t - t0) * 1000),
    serviceNs: Float64Array.from(services, (s) => s * 1000),
  };
}

/** Writes a trace in the format {@link parseTrace} reads (with the header line). */
export function formatTrace(trace: Trace): string {
  const lines = [JSON.stringify({ format: TRACE_FORMAT, version: TRACE_VERSION })];
  for (let i = 0; i < trace.arrivalsNs.length; i++) {
    const t_us = trace.arrivalsNs[i]! / 1000;
    const s = trace.serviceNs[i]!;
    lines.push(Number.isNaN(s) ? JSON.stringify({ t_us }) : JSON.stringify({ t_us, service_us: s / 1000 }));
  }
  return `${lines.join('\n')}\n`;
}
