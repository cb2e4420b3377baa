/** The conformance suite itself can fail: broken back-ends are caught by the test named for the rule. */
import { describe, expect, it } from 'vitest';
import { MemoryBackend, type BlockBackend, type Extent, type Segments } from '../src/index.js';
import { testBlockBackend, type BackendFactory } from '../src/testing.js';

async function runSuite(factory: BackendFactory): Promise<Map<string, string | undefined>> {
  const tests: [string, () => Promise<void>][] = [];
  testBlockBackend(
    {
      describe: (_n, fn) => fn(),
      it: (n, fn) => tests.push([n, fn]),
    },
    'under test',
    factory,
  );
  const results = new Map<string, string | undefined>();
  for (const [n, fn] of tests) {
    try {
      await fn();
      results.set(n, undefined);
    } catch (e) {
      results.set(n, (e as Error).message);
    }
  }
  return results;
}

/** A memory back-end with one rule broken. */
class Broken implements BlockBackend {
  constructor(
    private readonly inner: MemoryBackend,
    private readonly breakage: 'discard' | 'alignment' | 'status' | 'close',
  ) {}
  get size(): number {
    return this.inner.size;
  }
  get logicalBlockSize(): number {
    return this.inner.logicalBlockSize;
  }
  get physicalBlockSize(): number {
    return this.inner.physicalBlockSize;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  read(o: number, s: Segments): Promise<void> {
    return this.inner.read(o, s);
  }
  write(o: number, s: Segments): Promise<void> {
    if (this.breakage === 'alignment' && o % 512 !== 0) return Promise.resolve();
    return this.inner.write(o, s);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  discard(o: number, l: number): Promise<void> {
    return this.breakage === 'discard' ? Promise.resolve() : this.inner.discard(o, l);
  }
  writeZeroes(o: number, l: number, u: boolean): Promise<void> {
    return this.inner.writeZeroes(o, l, u);
  }
  async blockStatus(o: number, l: number): Promise<Extent[]> {
    const e = await this.inner.blockStatus(o, l);
    return this.breakage === 'status' ? e.slice(1) : e;
  }
  close(): Promise<void> {
    return this.breakage === 'close' ? Promise.resolve() : this.inner.close();
  }
}

describe('testBlockBackend', () => {
  it('passes a correct back-end', async () => {
    const r = await runSuite({ create: (size) => Promise.resolve(new MemoryBackend({ size })) });
    expect([...r.values()].filter((v) => v !== undefined)).toEqual([]);
    expect(r.size).toBeGreaterThanOrEqual(9);
  });

  for (const [breakage, test] of [
    ['discard', 'discard and write-zeroes make ranges read as zeros and spare their neighbours'],
    ['alignment', 'refuses unaligned and invalid requests before any I/O'],
    ['status', 'block status covers the range exactly and agrees with the data'],
    ['close', 'flush resolves, and close is idempotent and ends service'],
  ] as const) {
    it(`catches a back-end whose ${breakage} is broken`, async () => {
      const r = await runSuite({ create: (size) => Promise.resolve(new Broken(new MemoryBackend({ size }), breakage)) });
      expect(r.get(test)).toMatch(/^testBlockBackend: /);
    });
  }
});
