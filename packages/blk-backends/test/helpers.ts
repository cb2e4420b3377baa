import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A fresh temporary directory per test, removed even when the test fails. */
export function tempDir(prefix = 'ioplane-blk-'): { dir: string; path: (name: string) => string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, path: (n) => join(dir, n), remove: () => rmSync(dir, { recursive: true, force: true }) };
}
