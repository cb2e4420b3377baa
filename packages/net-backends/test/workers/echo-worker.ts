// A worker that opens side 'b' of a shared loopback and echoes every frame back,
// or (mode 'corrupt') writes a record longer than the ring allows.
import { parentPort, workerData } from 'node:worker_threads';
import { SharedLoopbackBackend, type SharedLoopbackChannel } from '../../src/index.js';

const { channel, mode } = workerData as { channel: SharedLoopbackChannel; mode: 'echo' | 'corrupt' };
if (mode === 'corrupt') {
  // Header words: head at 0, data seq at 1; data starts at byte 192. Claim a 60000-byte record.
  const ctl = new Int32Array(channel.ba, 0, 48);
  const data = new Uint32Array(channel.ba, 192, 4);
  data[0] = 60000;
  Atomics.store(ctl, 0, 60004);
  Atomics.add(ctl, 1, 1);
  Atomics.notify(ctl, 1);
  parentPort!.postMessage('written');
} else {
  const b = SharedLoopbackBackend.open(channel, 'b');
  const out: Uint8Array[] = [];
  b.onReceive((f) => {
    out.push(f.slice());
    if (out.length === 1) setImmediate(flush);
  });
  const flush = (): void => {
    const n = b.send(out);
    out.splice(0, n);
    if (out.length > 0) void b.writable().then(flush);
  };
  parentPort!.on('message', (m) => {
    if (m === 'stop') void b.close().then(() => parentPort!.postMessage({ stats: b.stats }));
  });
  parentPort!.postMessage('ready');
}
