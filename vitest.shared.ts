import { fileURLToPath } from 'node:url';
import { defineConfig, type ViteUserConfig } from 'vitest/config';

/**
 * Tests run on source: `@ioplane/source` points each workspace package's
 * export at `src/index.ts`. Setting conditions replaces Vite's defaults, so
 * they are listed again (TOOLCHAIN.md 6).
 */
export const SOURCE_CONDITIONS = ['@ioplane/source', 'module', 'node', 'development|production'];

export function packageTestConfig(overrides: NonNullable<ViteUserConfig['test']> = {}): ViteUserConfig {
  return defineConfig({
    resolve: { conditions: SOURCE_CONDITIONS },
    ssr: { resolve: { conditions: SOURCE_CONDITIONS, externalConditions: ['@ioplane/source'] } },
    test: {
      environment: 'node',
      include: ['test/**/*.test.ts'],
      setupFiles: [fileURLToPath(new URL('./vitest.fast-check.ts', import.meta.url))],
      // Bounds, not timings: CI runs every package's suite on two shared cores.
      testTimeout: 120_000,
      hookTimeout: 120_000,
      // The JSON report feeds scripts/summary.mjs, which prints one closing line for CI.
      reporters: ['default', ['json', { outputFile: '.vitest-report.json' }]],
      ...overrides,
    },
  });
}
