#!/usr/bin/env node
// Proves every public package can be installed alone from its tarball and used:
// pnpm pack → publint + attw on the tarball → npm install into an empty project
// (with the tarballs of its @ioplane/* dependencies, never the registry's) →
// import from plain ESM, run the README's example as written, type-check a consumer.
// Usage: node scripts/check-publish.mjs [package-name ...]
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { publint } from 'publint';
import { formatMessage } from 'publint/utils';

const root = resolve(import.meta.dirname, '..');
const bin = (name) => join(root, 'node_modules', '.bin', name);
const only = new Set(process.argv.slice(2));

function run(cmd, args, opts = {}) {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}

const packages = new Map();
for (const dir of readdirSync(join(root, 'packages'))) {
  const pkgDir = join(root, 'packages', dir);
  const file = join(pkgDir, 'package.json');
  if (!existsSync(file)) continue;
  const pkg = JSON.parse(readFileSync(file, 'utf8'));
  if (pkg.private) continue;
  packages.set(pkg.name, { dir: pkgDir, pkg });
}

const work = mkdtempSync(join(tmpdir(), 'ioplane-publish-'));
const tarballs = join(work, 'tarballs');
mkdirSync(tarballs);
const tarballOf = new Map();
for (const [name, { dir, pkg }] of packages) {
  if (!existsSync(join(dir, 'dist'))) throw new Error(`${name}: no dist/ — build first (pnpm build)`);
  run('pnpm', ['pack', '--pack-destination', tarballs], { cwd: dir });
  const file = join(tarballs, `${name.replace('@', '').replace('/', '-')}-${pkg.version}.tgz`);
  if (!existsSync(file)) throw new Error(`${name}: pnpm pack did not write ${file}`);
  tarballOf.set(name, file);
}

function ioplaneDeps(name, seen = new Set()) {
  const { pkg } = packages.get(name);
  for (const dep of Object.keys({ ...pkg.dependencies, ...pkg.peerDependencies })) {
    if (packages.has(dep) && !seen.has(dep)) {
      seen.add(dep);
      ioplaneDeps(dep, seen);
    }
  }
  return seen;
}

/** The first ```js block under the README's "## Example" heading. */
function readmeExample(dir) {
  const readme = readFileSync(join(dir, 'README.md'), 'utf8');
  const at = readme.search(/^## Example/m);
  if (at < 0) return undefined;
  const m = /```(?:js|javascript|mjs)\n([\s\S]*?)```/.exec(readme.slice(at));
  return m?.[1];
}

let failed = 0;
let passed = 0;
for (const [name, { dir }] of packages) {
  if (only.size > 0 && !only.has(name)) continue;
  const problems = [];
  const tgz = tarballOf.get(name);
  try {
    const pkgJson = JSON.parse(run('tar', ['-xOzf', tgz, 'package/package.json']));
    if (JSON.stringify(pkgJson.exports ?? {}).includes('@ioplane/source')) problems.push('the packed package.json exports still name the @ioplane/source condition');
    if (JSON.stringify(pkgJson).includes('workspace:')) problems.push('the packed package.json still has a workspace: range');

    const buf = readFileSync(tgz);
    const { messages } = await publint({ level: 'warning', strict: true, pack: { tarball: buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength) } });
    for (const m of messages) problems.push(`publint ${m.type}: ${formatMessage(m, pkgJson) ?? m.code}`);

    try {
      run(bin('attw'), [tgz, '--profile', 'esm-only', '--format', 'ascii', '--no-color']);
    } catch (e) {
      problems.push(`attw: ${e.stdout || e.message}`);
    }

    const consumer = join(work, `consumer-${name.replace(/[@/]/g, '_')}`);
    mkdirSync(consumer);
    writeFileSync(join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
    const deps = [...ioplaneDeps(name)].map((d) => tarballOf.get(d));
    run('npm', ['install', '--no-audit', '--no-fund', '--no-package-lock', '--loglevel=error', tgz, ...deps], { cwd: consumer });

    writeFileSync(join(consumer, 'import.mjs'), `import * as m from '${name}';\nconst names = Object.keys(m);\nif (names.length === 0) throw new Error('no exports');\nconsole.log(names.length);\n`);
    run('node', ['import.mjs'], { cwd: consumer });

    const example = readmeExample(dir);
    if (example === undefined) problems.push('README.md has no ```js block under "## Example"');
    else {
      writeFileSync(join(consumer, 'example.mjs'), example);
      try {
        run('node', ['example.mjs'], { cwd: consumer, timeout: 60_000 });
      } catch (e) {
        problems.push(`README example failed: ${e.stderr || e.message}`);
      }
    }

    writeFileSync(join(consumer, 'consumer.ts'), `import * as m from '${name}';\nexport const names: string[] = Object.keys(m);\nexport type Api = typeof m;\n`);
    writeFileSync(
      join(consumer, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          strict: true, noEmit: true, module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022',
          lib: ['ES2024'], types: ['node'], typeRoots: [join(root, 'node_modules', '@types')], skipLibCheck: false,
        },
        files: ['consumer.ts'],
      }),
    );
    try {
      run(bin('tsc'), ['-p', 'tsconfig.json'], { cwd: consumer });
    } catch (e) {
      problems.push(`consumer type-check: ${e.stdout || e.message}`);
    }
  } catch (e) {
    problems.push(e.stderr || e.message);
  }
  if (problems.length > 0) {
    failed++;
    console.error(`✗ ${name}\n  ${problems.join('\n  ')}`);
  } else {
    passed++;
    console.log(`✓ ${name}: packed, publint + attw clean, installed alone, imported, README example ran, consumer type-checks`);
  }
}
rmSync(work, { recursive: true, force: true });
console.log(`check:publish: ${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
