import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const INSTALL_HINT = 'lspci (Debian package pciutils) is needed: apt-get install -y --no-install-recommends pciutils';

/** One device as `lspci -vvv` printed it. */
export interface LspciDevice {
  readonly address: string;
  readonly title: string;
  readonly lines: readonly string[];
  readonly text: string;
}

/**
 * Runs the real `lspci -F <dump> <args>` on `dump` in a temp directory that is
 * removed even on failure. lspci's libkmod warning on stderr is discarded.
 * Fails (never skips) when lspci is missing, naming the apt-get line.
 */
export function runLspci(dump: string, args: readonly string[] = ['-vvv'], bin = 'lspci'): string {
  const dir = mkdtempSync(join(tmpdir(), 'ioplane-lspci-'));
  try {
    const file = join(dir, 'dump.txt');
    writeFileSync(file, dump);
    try {
      return execFileSync(bin, ['-F', file, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000, maxBuffer: 64 << 20 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(INSTALL_HINT, { cause: e });
      const err = e as { stderr?: string; status?: number };
      throw new Error(`lspci failed (status ${String(err.status)}): ${String(err.stderr)}`, { cause: e });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Splits `lspci -vvv` output into devices. */
export function parseLspci(out: string): Map<string, LspciDevice> {
  const devices = new Map<string, LspciDevice>();
  for (const block of out.split(/\n\n+/)) {
    const lines = block.split('\n').filter((l) => l.length > 0);
    const head = lines[0];
    if (!head) continue;
    const m = /^((?:[0-9a-f]{4,5}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) (.*)$/.exec(head);
    if (!m) throw new Error(`unexpected lspci line: ${head}`);
    devices.set(m[1]!, { address: m[1]!, title: m[2]!, lines: lines.slice(1), text: block });
  }
  return devices;
}

/** The first capture of `re` in a device's text, or a thrown error naming what is missing. */
export function field(dev: LspciDevice, re: RegExp): string {
  const m = re.exec(dev.text);
  if (!m) throw new Error(`${dev.address}: no match for ${String(re)} in:\n${dev.text}`);
  return m[1]!;
}
