// Boots a worker thread that runs TypeScript source: registers tsx's loader,
// then imports the entry named in workerData.__entry.
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
await import(workerData.__entry);
