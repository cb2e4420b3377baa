import type { Options } from 'tsup';

/**
 * The one build every package shares: ESM + a bundled `.d.ts`, Node 20.
 * A package's `tsup.config.ts` passes only what differs (extra entries, a bin).
 */
export function libraryConfig(overrides: Options = {}): Options {
  return {
    entry: ['src/index.ts'],
    format: ['esm'],
    target: 'node20',
    platform: 'node',
    // TypeScript 6 deprecates baseUrl, which tsup's dts build still sets (TOOLCHAIN.md 4).
    dts: { compilerOptions: { ignoreDeprecations: '6.0', customConditions: [] } },
    sourcemap: true,
    clean: true,
    splitting: false,
    treeshake: true,
    ...overrides,
  };
}
