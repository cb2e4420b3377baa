import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { createSharedLoopback, SharedLoopbackBackend, type NetStats } from '../src/index.js';
import { collector, sendAll, testFrame, waitFor } from '../src/testing.js';

const EXEC_ARGV = ['--conditions=@ioplane/source'];
const BOOTSTRAP = new URL('./workers/bootstrap.mjs', import.meta.url);
const ECHO = new URL('./workers/echo-worker.ts', import.meta.url).href;

function startWorker(channel: unknown, mode: string): { w: Worker; next: () => Promise<unknown> } {
  const w = new Worker(BOOTSTRAP, { workerData: { channel, mode, module: ECHO }, execArgv: EXEC_ARGV });
  const queue: unknown[] = [];
  let wake: (() => void) | undefined;
  w.on('message', (m) => {
    queue.push(m);
    wake?.();
  });
  w.on('error', (e) => {
    queue.push(e);
    wake?.();
  });
  return {
    w,
    next: async () => {
      const deadline = Date.now() + 15_000;
      while (queue.length === 0) {
        if (Date.now() > deadline) throw new Error('worker did not answer in 15 s');
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 100);
        });
      }
      const m = queue.shift();
      if (m instanceof Error) throw m;
      return m;
    },
  };
}

describe('shared-memory loopback across worker threads', () => {
  it('a worker echoes 5000 frames of mixed sizes back, in order, with back-pressure and no loss', async () => {
    const channel = createSharedLoopback({ ringBytes: 64 * 1024 });
    const { w, next } = startWorker(channel, 'echo');
    const a = SharedLoopbackBackend.open(channel, 'a');
    try {
      expect(await next()).toBe('ready');
      await waitFor(() => a.linkUp, 'link up');
      const got = collector(a, 77);
      const frames = Array.from({ length: 5000 }, (_, i) => testFrame([64, 1500, 300, 1522][i % 4]!, 77, i));
      await sendAll(a, frames, 15_000);
      await waitFor(() => got.frames.length === frames.length, 'all echoes', 15_000);
      expect(got.seqs.every((s, i) => s === i)).toBe(true);
      expect(got.frames.every((f, i) => Buffer.compare(f, frames[i]!) === 0)).toBe(true);
      w.postMessage('stop');
      const { stats } = (await next()) as { stats: NetStats };
      expect(stats.rxPackets).toBe(5000);
      expect(stats.txPackets).toBe(5000);
      await waitFor(() => !a.linkUp, 'link down after the worker closed');
    } finally {
      await a.close();
      await w.terminate();
    }
  });

  it('a record the other thread wrote past the ring is refused: counted, the ring abandoned, no crash', async () => {
    const channel = createSharedLoopback({ ringBytes: 64 * 1024 });
    const a = SharedLoopbackBackend.open(channel, 'a');
    const { w, next } = startWorker(channel, 'corrupt');
    try {
      let delivered = 0;
      a.onReceive(() => delivered++);
      expect(await next()).toBe('written');
      await waitFor(() => a.closed, 'the back-end to abandon the ring');
      expect(a.stats.rxErrors).toBe(1);
      expect(delivered).toBe(0);
      expect(a.corruption).toMatch(/60000 bytes/);
    } finally {
      await a.close();
      await w.terminate();
    }
  });
});
