import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MessageChannel, Worker } from 'node:worker_threads';
import { GuestMemory } from '@ioplane/guest-memory';
import { capture, createLoopbackPair, type NetBackend } from '@ioplane/net-backends';
import { Doorbell } from '@ioplane/virtqueue';
import { afterEach, describe, expect, it } from 'vitest';
import { VirtioNetDevice, serveTransport, type ServedDevice, type VirtioError } from '../src/index.js';
import type { NetGuestSetup, PingResult } from './net-guest-worker.js';

const INSTALL = 'apt-get install -y --no-install-recommends tshark';

function requireTshark(): void {
  try {
    execFileSync('tshark', ['--version'], { stdio: 'ignore' });
  } catch {
    throw new Error(`tshark is not installed; this test reads its capture with it: ${INSTALL}`);
  }
}

function tshark(file: string, fields: string[]): string[][] {
  const out = execFileSync('tshark', ['-r', file, '-n', '-T', 'fields', '-E', 'separator=|', ...fields.flatMap((f) => ['-e', f])], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  return out.trim().split('\n').map((l) => l.split('|'));
}

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

interface Vm {
  device: VirtioNetDevice;
  served: ServedDevice;
  worker: Worker;
  result: Promise<PingResult>;
  /** The guest's driver is up (its receive buffers are posted). */
  ready: Promise<void>;
  errors: VirtioError[];
}

const ip = (s: string): number => s.split('.').reduce((a, b) => a * 256 + Number(b), 0);

/** A VM: its device here on `backend`, its guest (driver) in a worker thread. */
function startVm(backend: NetBackend, mac: Uint8Array, setup: Omit<NetGuestSetup, 'sab' | 'bells' | 'numQueues' | 'port'>): Vm {
  const sab = new SharedArrayBuffer(16 << 20);
  const mem = new GuestMemory([{ gpa: 0, backing: sab }]);
  const errors: VirtioError[] = [];
  const numQueues = 3;
  const bells = new Int32Array(new SharedArrayBuffer(4 * numQueues * 2));
  const kicks = Array.from({ length: numQueues }, (_, q) => new Doorbell(bells, q));
  const irqs = Array.from({ length: numQueues }, (_, q) => new Doorbell(bells, numQueues + q));
  const device = new VirtioNetDevice({ mem, backend, mac, interrupts: { queue: (q) => irqs[q]!.ring(), config: () => {} }, onGuestError: (e) => errors.push(e) });
  const { port1, port2 } = new MessageChannel();
  const served = serveTransport(device, port1, kicks, 20);
  const worker = new Worker(new URL('./ts-worker.mjs', import.meta.url), {
    execArgv: ['--conditions=@ioplane/source'],
    workerData: { ...setup, sab, bells, numQueues, port: port2, __entry: new URL('./net-guest-worker.ts', import.meta.url).href },
    transferList: [port2],
  });
  let readyResolve: () => void = () => {};
  const ready = new Promise<void>((r) => (readyResolve = r));
  const result = new Promise<PingResult>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`guest ${setup.role} did not finish within 60 s`)), 60_000);
    worker.on('message', (m: PingResult | { type: 'ready' } | { type: 'error'; message: string }) => {
      if (m.type === 'ready') {
        readyResolve();
        return;
      }
      clearTimeout(timer);
      if (m.type === 'error') reject(new Error(`guest ${setup.role}: ${m.message}`));
      else resolve(m);
    });
    worker.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
    // A guest that fails before it is ready must not leave the test waiting.
  result.catch(() => readyResolve());
  return { device, served, worker, result, ready, errors };
}

describe('two guests in worker threads, virtio-net, joined by a loopback back-end', () => {
  it('exchange ARP and ICMP echo; tshark reads the pcap and checks the fields', async () => {
    requireTshark();
    const dir = mkdtempSync(join(tmpdir(), 'ioplane-vnet-'));
    dirs.push(dir);
    const file = join(dir, 'guests.pcap');
    const pair = createLoopbackPair();
    const capA = capture(pair.a, { path: file, format: 'pcap' });
    const macA = Uint8Array.of(0x52, 0x54, 0, 0xaa, 0, 1);
    const macB = Uint8Array.of(0x52, 0x54, 0, 0xbb, 0, 2);
    const COUNT = 4;
    const b = startVm(pair.b, macB, { role: 'responder', ip: ip('10.200.0.2'), peerIp: ip('10.200.0.1'), count: 0, payloadBytes: 0 });
    await Promise.race([b.ready, b.result]);
    const a = startVm(capA, macA, { role: 'pinger', ip: ip('10.200.0.1'), peerIp: ip('10.200.0.2'), count: COUNT, payloadBytes: 56 });
    try {
      const ra = await a.result;
      b.worker.postMessage('stop');
      const rb = await b.result;
      expect(ra.peerMac).toEqual(Array.from(macB));
      expect(ra.replies).toEqual(Array.from({ length: COUNT }, (_, i) => ({ id: 0x1234, sequence: i + 1, payloadOk: true })));
      expect(rb.responder).toEqual({ arpReplies: 1, echoReplies: COUNT });
      // The responder halt-polled: every idle period ended one way or the other.
      expect(rb.haltPoll!.idle).toBeGreaterThan(0);
      expect(rb.haltPoll!.caught + rb.haltPoll!.slept).toBe(rb.haltPoll!.idle);
      expect(a.errors.map((e) => e.message)).toEqual([]);
      expect(b.errors.map((e) => e.message)).toEqual([]);
      // The responder's replies went out with NEEDS_CSUM and were completed by B's device.
      expect(b.device.netStats.txCsumCompleted).toBe(COUNT);
    } finally {
      for (const vm of [a, b]) {
        await vm.worker.terminate();
        await vm.served.stop();
        vm.device.detach();
      }
      await capA.close();
      await pair.b.close();
    }
    const rows = tshark(file, ['eth.src', 'eth.dst', 'arp.opcode', 'arp.src.proto_ipv4', 'arp.dst.proto_ipv4', 'icmp.type', 'icmp.ident', 'icmp.seq', 'icmp.checksum.status', 'ip.src', 'ip.dst']);
    expect(rows.length).toBe(2 + 2 * COUNT);
    expect(rows[0]).toEqual(['52:54:00:aa:00:01', 'ff:ff:ff:ff:ff:ff', '1', '10.200.0.1', '10.200.0.2', '', '', '', '', '', '']);
    expect(rows[1]).toEqual(['52:54:00:bb:00:02', '52:54:00:aa:00:01', '2', '10.200.0.2', '10.200.0.1', '', '', '', '', '', '']);
    for (let i = 0; i < COUNT; i++) {
      expect(rows[2 + 2 * i]).toEqual(['52:54:00:aa:00:01', '52:54:00:bb:00:02', '', '', '', '8', '4660', String(i + 1), '1', '10.200.0.1', '10.200.0.2']);
      expect(rows[3 + 2 * i]).toEqual(['52:54:00:bb:00:02', '52:54:00:aa:00:01', '', '', '', '0', '4660', String(i + 1), '1', '10.200.0.2', '10.200.0.1']);
    }
  }, 90_000);
});
