#!/usr/bin/env node
// Fails when a merge left conflict markers in a tracked file.
import { execFileSync } from 'node:child_process';

let out = '';
try {
  out = execFileSync('git', ['grep', '-nE', '^(<<<<<<<|>>>>>>>) ', '--', '.', ':!pnpm-lock.yaml'], { encoding: 'utf8' });
} catch (e) {
  // git grep exits 1 when nothing matches: that is the good case.
  if (e.status !== 1) throw e;
}
if (out.trim() !== '') {
  console.error(`conflict markers left by a merge:\n${out}`);
  process.exit(1);
}
