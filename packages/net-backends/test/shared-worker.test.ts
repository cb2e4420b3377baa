import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildArpRequest, buildIcmpEcho, parseIpv4, parseMac } from '@ioplane/packet';
import { capture, createSharedLoopback, SharedLoopbackBackend, type NetStats } from '../src/index.js';
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

  it('a worker-thread host answers ARP and ping over the shared loopback; the capture reads back in tshark', async () => {
    try {
      execFileSync('tshark', ['--version'], { stdio: 'ignore' });
    } catch (e) {
      throw new Error('tshark is missing: apt-get install -y --no-install-recommends tshark', { cause: e });
    }
    const channel = createSharedLoopback();
    const { w, next } = startWorker(channel, 'responder');
    const dir = mkdtempSync(join(tmpdir(), 'ioplane-xthread-'));
    const a = capture(SharedLoopbackBackend.open(channel, 'a'), { path: join(dir, 'guest.pcapng'), interfaceName: 'guest-a' });
    try {
      expect(await next()).toBe('ready');
      await waitFor(() => a.linkUp, 'link up');
      const replies: Uint8Array[] = [];
      a.onReceive((f) => replies.push(f.slice()));
      const me = parseMac('02:00:0a:c8:07:01');
      const buf = new Uint8Array(1600);
      a.send([buf.subarray(0, buildArpRequest(buf, { srcMac: me, srcIp: parseIpv4('10.200.7.1'), targetIp: parseIpv4('10.200.7.2') }))]);
      await waitFor(() => replies.length === 1, 'the ARP reply');
      const peerMac = replies[0]!.subarray(6, 12);
      for (let seq = 1; seq <= 4; seq++) {
        a.send([buf.subarray(0, buildIcmpEcho(buf, { srcMac: me, dstMac: peerMac, srcIp: parseIpv4('10.200.7.1'), dstIp: parseIpv4('10.200.7.2'), id: 99, sequence: seq, payload: new Uint8Array(48).fill(seq) }))]);
      }
      await waitFor(() => replies.length === 5, 'four echo replies');
      w.postMessage('stop');
      expect(await next()).toMatchObject({ stats: { arpReplies: 1, echoReplies: 4, errors: 0 } });
      await a.close();
      const rows = execFileSync('tshark', ['-r', join(dir, 'guest.pcapng'), '-n', '-o', 'ip.check_checksum:TRUE', '-T', 'fields', '-E', 'separator=|',
        '-e', 'frame.interface_name', '-e', 'frame.packet_flags_direction', '-e', 'arp.opcode', '-e', 'icmp.type', '-e', 'icmp.seq', '-e', 'icmp.checksum.status', '-e', 'ip.checksum.status'],
      { encoding: 'utf8', timeout: 30_000 }).trim().split('\n').map((l) => l.split('|'));
      expect(rows.length).toBe(10);
      expect(rows.every((r) => r[0] === 'guest-a')).toBe(true);
      expect(rows.slice(0, 2).map((r) => [Number(r[1]), r[2]])).toEqual([[2, '1'], [1, '2']]);
      const echoes = rows.slice(2).map((r) => [Number(r[1]), r[3], r[4], r[5], r[6]]);
      // Requests go out and replies come in; sequence numbers match; checksums good.
      expect(echoes.filter((e) => e[0] === 2).map((e) => e.slice(1))).toEqual([1, 2, 3, 4].map((s) => ['8', String(s), '1', '1']));
      expect(echoes.filter((e) => e[0] === 1).map((e) => e.slice(1))).toEqual([1, 2, 3, 4].map((s) => ['0', String(s), '1', '1']));
    } finally {
      await a.close();
      await w.terminate();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
