import { describe, it } from 'vitest';
import { createImage, MemoryBackend, openImage, Qcow2Backend, RawFileBackend, type BlockBackend, type IoEngine } from '../src/index.js';
import { testBlockBackend, type BackendFactory } from '../src/testing.js';
import { tempDir } from './helpers.js';

testBlockBackend({ describe, it }, 'memory', {
  create: (size) => Promise.resolve(new MemoryBackend({ size })),
});

function fileFactory(create: (path: string, size: number) => Promise<BlockBackend>, engine: IoEngine = 'threadpool'): BackendFactory {
  let tmp: ReturnType<typeof tempDir> | undefined;
  let file = '';
  return {
    async create(size) {
      tmp = tempDir();
      file = tmp.path('disk.img');
      return create(file, size);
    },
    async reopen(b, readOnly) {
      await b.close();
      return openImage(file, { readOnly, engine });
    },
    cleanup() {
      tmp?.remove();
      return Promise.resolve();
    },
  };
}

testBlockBackend(
  { describe, it },
  'raw file',
  fileFactory(async (p, size) => {
    await RawFileBackend.create(p, size);
    return RawFileBackend.open(p);
  }),
);

testBlockBackend(
  { describe, it },
  'raw file, sync engine',
  fileFactory(async (p, size) => {
    await RawFileBackend.create(p, size);
    return RawFileBackend.open(p, { engine: 'sync' });
  }, 'sync'),
);

testBlockBackend(
  { describe, it },
  'qcow2 over a qcow2 backing file, sync engine',
  fileFactory(async (p, size) => {
    await createImage(`${p}.base`, 'qcow2', { size });
    await createImage(p, 'qcow2', { backingFile: `${p}.base`, backingFormat: 'qcow2' });
    return openImage(p, { engine: 'sync' });
  }, 'sync'),
);

testBlockBackend(
  { describe, it },
  'raw file, O_DIRECT',
  fileFactory(async (p, size) => {
    await RawFileBackend.create(p, size);
    return RawFileBackend.open(p, { direct: true });
  }),
);

for (const [name, opts] of [
  ['qcow2 v3, 64 KiB clusters', {}],
  ['qcow2 v2 (compat=0.10)', { version: 2 }],
  ['qcow2 v3, 512 B clusters, 1-bit refcounts', { clusterSize: 512, refcountBits: 1 }],
  ['qcow2 v3, 2 MiB clusters, 64-bit refcounts', { clusterSize: 2 * 1024 * 1024, refcountBits: 64 }],
  ['qcow2 v3, extended L2, 32 KiB clusters', { extendedL2: true, clusterSize: 32768 }],
  ['qcow2 v3, lazy refcounts, 4 KiB clusters', { lazyRefcounts: true, clusterSize: 4096 }],
] as const) {
  testBlockBackend(
    { describe, it },
    name,
    fileFactory(async (p, size) => {
      await createImage(p, 'qcow2', { size, ...opts });
      return Qcow2Backend.open(p);
    }),
  );
}

for (const [name, fmt] of [
  ['qcow2 over a qcow2 backing file', 'qcow2'],
  ['qcow2 (v2) over a raw backing file', 'raw'],
] as const) {
  testBlockBackend(
    { describe, it },
    name,
    fileFactory(async (p, size) => {
      const base = `${p}.base`;
      await createImage(base, fmt, { size });
      await createImage(p, 'qcow2', { backingFile: base, backingFormat: fmt, ...(fmt === 'raw' ? { version: 2 as const } : {}) });
      return Qcow2Backend.open(p);
    }),
  );
}
