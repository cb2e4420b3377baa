#!/usr/bin/env node
// One closing line for the whole run, summed from each workspace's vitest JSON report.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..');
let passed = 0;
let failed = 0;
let skipped = 0;
const missing = [];
for (const group of ['packages', 'apps']) {
  const base = join(root, group);
  if (!existsSync(base)) continue;
  for (const dir of readdirSync(base)) {
    const pkgFile = join(base, dir, 'package.json');
    if (!existsSync(pkgFile)) continue;
    const pkg = JSON.parse(readFileSync(pkgFile, 'utf8'));
    if (!pkg.scripts?.test) continue;
    const report = join(base, dir, '.vitest-report.json');
    if (!existsSync(report)) {
      missing.push(pkg.name);
      continue;
    }
    const r = JSON.parse(readFileSync(report, 'utf8'));
    passed += r.numPassedTests;
    failed += r.numFailedTests;
    skipped += r.numPendingTests + (r.numTodoTests ?? 0);
  }
}
if (missing.length > 0) {
  console.error(`no test report from: ${missing.join(', ')}`);
  failed += missing.length;
}
if (skipped > 0) console.log(`tests: ${passed} passed, ${failed} failed, ${skipped} skipped`);
else console.log(`tests: ${passed} passed, ${failed} failed`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
