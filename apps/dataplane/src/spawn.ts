import { Worker, type WorkerOptions } from 'node:worker_threads';

/**
 * Starts a worker from a module next to this one. Built, that is a `.js`
 * file; under tests (running TypeScript source) it is booted through tsx.
 */
export function spawnWorker(name: string, options: WorkerOptions): Worker {
  const fromSource = import.meta.url.endsWith('.ts');
  if (!fromSource) return new Worker(new URL(`./${name}.js`, import.meta.url), options);
  const entry = new URL(`./${name}.ts`, import.meta.url).href;
  return new Worker(new URL('../test/ts-worker.mjs', import.meta.url), {
    ...options,
    execArgv: ['--conditions=@ioplane/source'],
    workerData: { ...(options.workerData as object), __entry: entry },
  });
}
