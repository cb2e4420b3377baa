// Runs a TypeScript worker on source: registers tsx's loader in this thread, then imports the module named in workerData.
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
await import(workerData.module);
