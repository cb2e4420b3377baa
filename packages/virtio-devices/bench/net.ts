/**
 * virtio-net benchmark: frames per second guest → guest — guest A's driver →
 * TX virtqueue → virtio-net → loopback back-end → virtio-net → RX virtqueue
 * (mergeable buffers) → guest B's driver — for 64-byte and 1500-byte frames,
 * and, in the same run, the same frames moved by the loopback back-end alone
 * (send batches → ring → receive callback). Both paths run in this thread
 * (DirectTransport: a kick is a call), with at most WINDOW frames in flight so
 * B's posted receive buffers never run out. Configurations alternate run by
 * run; medians over RUNS runs, spread as min–max.
 *   pnpm --filter @ioplane/virtio-devices bench:net      (RUNS=10 by default)
 */
import { GuestMemory } from '@ioplane/guest-memory';
import { type LoopbackPair, createLoopbackPair } from '@ioplane/net-backends';
import { DirectTransport, VirtioNetDevice, VirtioNetDriver } from '../src/index.js';

const RUNS = Number(process.env.RUNS ?? 10);
const PACKED = process.env.PACKED === '1';
const QUEUE = 256;
const WINDOW = 192;
const SIZES: [number, number][] = [
  [64, 1_000_000],
  [1500, 400_000],
];

interface Vm {
  device: VirtioNetDevice;
  driver: VirtioNetDriver;
}

async function vm(pair: LoopbackPair, side: 'a' | 'b'): Promise<Vm> {
  const mem = GuestMemory.create(16 << 20);
  const ref: { driver?: VirtioNetDriver } = {};
  const device = new VirtioNetDevice({
    mem,
    backend: pair[side],
    mac: Uint8Array.of(0x52, 0x54, 0, 0, 0, side === 'a' ? 1 : 2),
    ring: { packed: PACKED },
    interrupts: { queue: (q) => void ref.driver?.handleInterrupt(q), config: () => {} },
  });
  const driver = await VirtioNetDriver.create({ transport: new DirectTransport(device), mem, area: { addr: 0x10000, len: 12 << 20 }, queueSize: QUEUE });
  ref.driver = driver;
  return { device, driver };
}

function frame(len: number, dst: Uint8Array, src: Uint8Array): Uint8Array {
  const f = new Uint8Array(len);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  for (let i = 14; i < len; i++) f[i] = i & 0xff;
  return f;
}

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Guest → guest through virtio-net: frames per second. */
async function viaVirtio(a: Vm, b: Vm, len: number, n: number): Promise<number> {
  const f = frame(len, b.device.mac, a.device.mac);
  let received = 0;
  let bad = 0;
  b.driver.onFrame((fr) => {
    received++;
    if (fr.length !== len) bad++;
  });
  const drops0 = b.device.netStats.rxNoBuffers;
  let sent = 0;
  const t0 = performance.now();
  while (received < n) {
    while (sent < n && sent - received < WINDOW && a.driver.send(f)) sent++;
    await turn();
  }
  const ms = performance.now() - t0;
  if (bad > 0 || b.device.netStats.rxNoBuffers !== drops0) throw new Error(`virtio path: ${bad} bad frames, ${b.device.netStats.rxNoBuffers - drops0} drops`);
  return n / (ms / 1000);
}

/** The loopback back-end alone: the same frames, sent in batches, counted by the receive callback. */
async function viaLoopback(pair: LoopbackPair, len: number, n: number): Promise<number> {
  const f = frame(len, Uint8Array.of(0x52, 0x54, 0, 0, 0, 2), Uint8Array.of(0x52, 0x54, 0, 0, 0, 1));
  const batch = Array.from({ length: 64 }, () => f);
  let received = 0;
  pair.b.onReceive((fr) => {
    if (fr.length === len) received++;
  });
  let sent = 0;
  const t0 = performance.now();
  while (received < n) {
    while (sent < n && sent - received < WINDOW) {
      const k = pair.a.send(batch, Math.min(batch.length, n - sent, WINDOW - (sent - received)));
      if (k === 0) break;
      sent += k;
    }
    await turn();
  }
  const ms = performance.now() - t0;
  pair.b.onReceive(null);
  return n / (ms / 1000);
}

function stats(xs: number[]): { median: number; min: number; max: number } {
  const s = [...xs].sort((x, y) => x - y);
  return { median: s[Math.floor(s.length / 2)]!, min: s[0]!, max: s[s.length - 1]! };
}

const fmt = (v: number): string => (v >= 1e6 ? `${(v / 1e6).toFixed(2)} M` : `${(v / 1e3).toFixed(0)} k`);

async function main(): Promise<void> {
  console.log(`virtio-net guest → guest vs loopback alone; ${RUNS} runs, ${PACKED ? 'packed' : 'split'} rings, queue ${QUEUE}, window ${WINDOW}, node ${process.version}`);
  for (const [len, n] of SIZES) {
    const virtio: number[] = [];
    const loop: number[] = [];
    // Warm-up, not counted.
    {
      const p = createLoopbackPair();
      const a = await vm(p, 'a');
      const b = await vm(p, 'b');
      await viaVirtio(a, b, len, n / 4);
      await a.driver.close();
      await b.driver.close();
      a.device.detach();
      b.device.detach();
      await viaLoopback(p, len, n / 4);
      await p.a.close();
      await p.b.close();
    }
    for (let r = 0; r < RUNS; r++) {
      for (const which of r % 2 === 0 ? ['virtio', 'loop'] : ['loop', 'virtio']) {
        const p = createLoopbackPair();
        if (which === 'virtio') {
          const a = await vm(p, 'a');
          const b = await vm(p, 'b');
          virtio.push(await viaVirtio(a, b, len, n));
          await a.driver.close();
          await b.driver.close();
          a.device.detach();
          b.device.detach();
        } else loop.push(await viaLoopback(p, len, n));
        await p.a.close();
        await p.b.close();
      }
    }
    const v = stats(virtio);
    const l = stats(loop);
    console.log(
      `${String(len).padStart(5)} B  virtio-net guest→guest ${fmt(v.median)}fps (${fmt(v.min)}–${fmt(v.max)})  ` +
        `loopback alone ${fmt(l.median)}fps (${fmt(l.min)}–${fmt(l.max)})  ratio ${(v.median / l.median).toFixed(2)}  ` +
        `[${((v.median * len * 8) / 1e9).toFixed(2)} Gbit/s vs ${((l.median * len * 8) / 1e9).toFixed(2)}]`,
    );
  }
}

await main();
