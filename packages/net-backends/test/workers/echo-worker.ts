// A worker that opens side 'b' of a shared loopback and echoes every frame back,
// or (mode 'corrupt') writes a record longer than the ring allows.
import { parentPort, workerData } from 'node:worker_threads';
import { ArpIcmpResponder, parseIpv4, parseMac } from '@ioplane/packet';
import { SharedLoopbackBackend, type SharedLoopbackChannel } from '../../src/index.js';

const { channel, mode } = workerData as { channel: SharedLoopbackChannel; mode: 'echo' | 'corrupt' | 'responder' };
if (mode === 'corrupt') {
  // Header words: head at 0, data seq at 1; data starts at byte 192. Claim a 60000-byte record.
  const ctl = new Int32Array(channel.ba, 0, 48);
  const data = new Uint32Array(channel.ba, 192, 4);
  data[0] = 60000;
  Atomics.store(ctl, 0, 60004);
  Atomics.add(ctl, 1, 1);
  Atomics.notify(ctl, 1);
  parentPort!.postMessage('written');
} else if (mode === 'responder') {
  // A simulated host at 10.200.7.2 answering ARP and ping.
  const b = SharedLoopbackBackend.open(channel, 'b');
  const host = new ArpIcmpResponder(parseMac('02:00:0a:c8:07:02'), parseIpv4('10.200.7.2'));
  const out = new Uint8Array(2048);
  b.onReceive((f) => {
    const n = host.respond(f, out);
    if (n > 0) b.send([out.subarray(0, n)]);
  });
  parentPort!.on('message', (m) => {
    if (m === 'stop') void b.close().then(() => parentPort!.postMessage({ stats: host.stats }));
  });
  parentPort!.postMessage('ready');
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
