import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { main, type MapEntry } from '../src/img.js';

const INSTALL = 'apt-get install -y --no-install-recommends qemu-utils';

/** Fail (never skip) when qemu-img/qemu-io are missing, naming the install line. */
export function requireQemu(): void {
  for (const tool of ['qemu-img', 'qemu-io']) {
    const r = spawnSync(tool, ['--version'], { encoding: 'utf8' });
    if (r.error || r.status !== 0) throw new Error(`${tool} is not installed; these oracle tests need it: ${INSTALL}`);
  }
}

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[]): RunResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export function qemuImg(...args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8', timeout: 60_000 });
}

/** qemu-io with several -c commands; throws if any command failed (qemu-io exits non-zero). */
export function qemuIo(file: string, cmds: string[], fmt?: string): string {
  const args = [...(fmt ? ['-f', fmt] : []), ...cmds.flatMap((c) => ['-c', c]), file];
  const r = spawnSync('qemu-io', args, { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0 || /fail|error/i.test(r.stdout + r.stderr)) throw new Error(`qemu-io ${args.join(' ')} failed:\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

export function qemuMap(file: string): MapEntry[] {
  return JSON.parse(qemuImg('map', '--output=json', file)) as MapEntry[];
}

/** `ioplane-img` in-process. */
export async function img(...argv: string[]): Promise<RunResult> {
  let stdout = '';
  let stderr = '';
  const status = await main(argv, { write: (s: string) => (stdout += s) }, { write: (s: string) => (stderr += s) });
  return { status, stdout, stderr };
}

/** Map entries reduced to what allocation means (qemu 7.2 prints no "compressed" key; merge what that leaves adjacent). */
export function normalizeMap(entries: MapEntry[], withOffsets: boolean): string[] {
  const out: MapEntry[] = [];
  for (const e of entries) {
    const n: MapEntry = { start: e.start, length: e.length, depth: e.depth, present: e.present, zero: e.zero, data: e.data };
    if (withOffsets && e.offset !== undefined) n.offset = e.offset;
    const l = out[out.length - 1];
    if (l && l.start + l.length === n.start && l.depth === n.depth && l.present === n.present && l.zero === n.zero && l.data === n.data && (l.offset === undefined) === (n.offset === undefined) && (l.offset === undefined || l.offset + l.length === n.offset)) {
      l.length += n.length;
    } else out.push(n);
  }
  return out.map((e) => JSON.stringify(e));
}

export function readFile(p: string): Uint8Array {
  return new Uint8Array(readFileSync(p));
}
