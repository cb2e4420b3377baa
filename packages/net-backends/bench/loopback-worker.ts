// The receiving thread of the loopback benchmark: either a SharedLoopbackBackend (side b)
// counting frames, or the bare baseline ring, busy-polled.
import { parentPort, workerData } from 'node:worker_threads';
import { SharedLoopbackBackend, type SharedLoopbackChannel } from '../src/index.js';

const data = workerData as { kind: 'backend'; channel: SharedLoopbackChannel } | { kind: 'bare'; ring: SharedArrayBuffer; slots: number; slotSize: number };

if (data.kind === 'backend') {
  const b = SharedLoopbackBackend.open(data.channel, 'b');
  let target = 0;
  let got = 0;
  let sink = 0;
  b.onReceive((f) => {
    sink ^= f[f.length - 1]!;
    if (++got === target) parentPort!.postMessage({ done: got, sink });
  });
  parentPort!.on('message', (m: { expect?: number; stop?: boolean }) => {
    if (m.stop) {
      void b.close().then(() => process.exit(0));
      return;
    }
    got = 0;
    target = m.expect!;
    parentPort!.postMessage({ ready: true });
  });
} else {
  // Bare ring: ctl[0] head (frames written), ctl[1] consumer sleeping; ctl[16] tail (frames read),
  // ctl[17] producer waiting; slots of u32 length + bytes. Sleeps with Atomics.wait when empty.
  const { ring, slots, slotSize } = data;
  const ctl = new Int32Array(ring, 0, 32);
  const bytes = new Uint8Array(ring, 128);
  const words = new Uint32Array(ring, 128);
  parentPort!.on('message', (m: { expect?: number; stop?: boolean }) => {
    if (m.stop) process.exit(0);
    const n = m.expect!;
    parentPort!.postMessage({ ready: true });
    let tail = Atomics.load(ctl, 16);
    let sink = 0;
    const end = tail + n;
    while (tail !== end) {
      let head = Atomics.load(ctl, 0);
      if (head === tail) {
        Atomics.store(ctl, 1, 1);
        head = Atomics.load(ctl, 0);
        if (head === tail) Atomics.wait(ctl, 0, head, 50);
        Atomics.store(ctl, 1, 0);
        continue;
      }
      while (tail !== head) {
        const at = (tail % slots) * slotSize;
        const len = words[at >>> 2]!;
        sink ^= bytes[at + 4 + len - 1]!;
        tail++;
      }
      Atomics.store(ctl, 16, tail);
      if (Atomics.load(ctl, 17) !== 0) Atomics.notify(ctl, 16);
    }
    parentPort!.postMessage({ done: n, sink });
  });
}
