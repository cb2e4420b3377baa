/**
 * Real Linux peers (root): a kernel VXLAN device and a TAP interface, each in
 * namespaces the test creates and deletes, ping an ioplane ARP/ICMP responder.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { ArpIcmpResponder, formatMac, parseIpv4, parseIpv6, parseMac } from '@ioplane/packet';
import { describe, expect, it } from 'vitest';
import { capture, TapBackend } from '../src/index.js';
import { Netns, requireRootAndTools, sh, subnet, uniq } from './netns.js';

const run = promisify(execFile);
const PKG = new URL('..', import.meta.url).pathname;

/** ping from inside a namespace without blocking the event loop (our responder runs on it). */
async function ping(ns: Netns, ip: string, count = 3, size = 56): Promise<string> {
  const { stdout } = await run('ip', ['netns', 'exec', ns.name, 'ping', ...(ip.includes(':') ? ['-6'] : []), '-n', '-c', String(count), '-s', String(size), '-i', '0.2', '-W', '3', ip], { timeout: 30_000 });
  return stdout;
}

function received(out: string): number {
  return Number(/(\d+) received/.exec(out)?.[1] ?? -1);
}

/** Reads JSON lines from a child's stdout. */
function lines(child: ChildProcess): () => Promise<Record<string, unknown>> {
  const queue: string[] = [];
  let wake: (() => void) | undefined;
  createInterface({ input: child.stdout! }).on('line', (l) => {
    queue.push(l);
    wake?.();
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return async () => {
    const deadline = Date.now() + 20_000;
    while (queue.length === 0) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`the ioplane endpoint did not answer: ${stderr}`);
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 100);
      });
    }
    return JSON.parse(queue.shift()!) as Record<string, unknown>;
  };
}

describe('real Linux peers', () => {
  it('(a) a kernel VXLAN device in a namespace pings an ioplane responder behind ioplane\'s VXLAN endpoint', async () => {
    requireRootAndTools('ping', 'bridge');
    const s = subnet();
    const t = (s % 250) + 1 === s ? s + 1 : (s % 250) + 1;
    const underlayIoplane = `10.200.${s}.1`;
    const underlayKernel = `10.200.${s}.2`;
    const overlayKernel = `10.200.${t}.2`;
    const overlayIoplane = `10.200.${t}.1`;
    const vni = 4000 + (s % 1000);
    const responderMac = '02:00:0a:c8:00:01';
    const nsKernel = Netns.create('iopk');
    const nsIoplane = Netns.create('iopi');
    const u = uniq();
    let child: ChildProcess | undefined;
    try {
      sh('ip', ['link', 'add', `vk${u}`, 'netns', nsKernel.name, 'type', 'veth', 'peer', 'name', `vi${u}`, 'netns', nsIoplane.name]);
      nsKernel.ip('addr', 'add', `${underlayKernel}/24`, 'dev', `vk${u}`);
      nsKernel.ip('link', 'set', `vk${u}`, 'up');
      nsIoplane.ip('addr', 'add', `${underlayIoplane}/24`, 'dev', `vi${u}`);
      nsIoplane.ip('link', 'set', `vi${u}`, 'up');
      // The kernel VTEP: its default remote is ioplane's endpoint on the veth address (RFC 7348 §4.1 unicast).
      nsKernel.ip('link', 'add', 'vx0', 'type', 'vxlan', 'id', String(vni), 'remote', underlayIoplane, 'local', underlayKernel, 'dstport', '4789', 'dev', `vk${u}`);
      nsKernel.ip('addr', 'add', `${overlayKernel}/24`, 'dev', 'vx0');
      nsKernel.ip('link', 'set', 'vx0', 'up');
      const kernelMac = /link\/ether ([0-9a-f:]+)/.exec(nsKernel.ip('link', 'show', 'vx0'))![1]!;

      child = spawn('ip', ['netns', 'exec', nsIoplane.name, process.execPath, '--conditions=@ioplane/source', '--import', 'tsx',
        join(PKG, 'test/peers/vxlan-responder.ts'), underlayIoplane, underlayKernel, String(vni), overlayIoplane, responderMac], { cwd: PKG, stdio: ['ignore', 'pipe', 'pipe'] });
      const next = lines(child);
      const ready = await next();
      expect(ready).toMatchObject({ ready: true, local: { address: underlayIoplane, port: 4789 } });

      const out = await ping(nsKernel, overlayIoplane);
      expect(received(out), out).toBe(3);
      // Near the VXLAN device's MTU (1450): 1400 bytes of data, a 1442-byte inner frame.
      const big = await ping(nsKernel, overlayIoplane, 2, 1400);
      expect(received(big), big).toBe(2);

      // The kernel learned the responder's MAC behind ioplane's endpoint ...
      expect(sh('bridge', ['-n', nsKernel.name, 'fdb', 'show', 'dev', 'vx0'])).toMatch(new RegExp(`${responderMac} dst ${underlayIoplane.replace(/\./g, '\\.')}`));
      child.kill('SIGTERM');
      const report = (await next()) as { responder: { arpReplies: number; echoReplies: number }; fdb: { mac: string; address: string; port: number }[]; endpoint: { rxBadHeader: number; rxUnknownVni: number } };
      // ... and ioplane learned the kernel VTEP's MAC at its underlay address (RFC 7348 §4.1).
      expect(report.fdb).toContainEqual(expect.objectContaining({ mac: kernelMac, address: underlayKernel, port: 4789 }));
      expect(report.responder.echoReplies).toBeGreaterThanOrEqual(5);
      expect(report.responder.arpReplies).toBeGreaterThanOrEqual(1);
      expect(report.endpoint).toMatchObject({ rxBadHeader: 0, rxUnknownVni: 0 });
    } finally {
      if (child && child.exitCode === null) {
        child.kill('SIGKILL');
        await new Promise((r) => child!.once('exit', r));
      }
      nsKernel.delete();
      nsIoplane.delete();
    }
  });

  it('(b) a TAP moved into a namespace pings (IPv4 and IPv6) an ioplane responder behind the TAP; the capture reads back in tshark', async () => {
    requireRootAndTools('ping', 'tshark');
    const s = subnet();
    const kernelIp = `10.200.${s}.2`;
    const ioplaneIp = `10.200.${s}.1`;
    const ns = Netns.create('iopp');
    const dir = mkdtempSync(join(tmpdir(), 'ioplane-tap-'));
    const tap = await TapBackend.open({ name: 'ioppt%d' });
    const cap = capture(tap, { path: join(dir, 'tap.pcapng'), timestampResolution: 'ns' });
    try {
      sh('ip', ['link', 'set', tap.name, 'netns', ns.name]);
      ns.ip('addr', 'add', `${kernelIp}/24`, 'dev', tap.name);
      // IPv6 on this link only (the namespace has it off elsewhere); no DAD delay.
      ns.exec('sysctl', ['-qw', `net.ipv6.conf.${tap.name}.disable_ipv6=0`]);
      ns.ip('-6', 'addr', 'add', `fd00:c8:${s.toString(16)}::2/64`, 'dev', tap.name, 'nodad');
      ns.ip('link', 'set', tap.name, 'up');
      const kernelMac = /link\/ether ([0-9a-f:]+)/.exec(ns.ip('link', 'show', tap.name))![1]!;
      const ioplaneIp6 = `fd00:c8:${s.toString(16)}::1`;
      const responder = new ArpIcmpResponder(parseMac('02:00:0a:c8:00:09'), parseIpv4(ioplaneIp), parseIpv6(ioplaneIp6));
      const out = new Uint8Array(2048);
      cap.onReceive((f) => {
        const n = responder.respond(f, out);
        if (n > 0) cap.send([out.subarray(0, n)]);
      });
      const res = await ping(ns, ioplaneIp);
      expect(received(res), res).toBe(3);
      // A full-MTU ping: 1472 bytes of data make a 1500-byte IP packet, a 1514-byte frame.
      const big = await ping(ns, ioplaneIp, 2, 1472);
      expect(received(big), big).toBe(2);
      // IPv6: neighbour discovery answered by the responder, then ping -6.
      const v6 = await ping(ns, ioplaneIp6, 2);
      expect(received(v6), v6).toBe(2);
      expect(responder.stats.neighborAdvertisements).toBeGreaterThanOrEqual(1);
      expect(responder.stats.echoReplies).toBeGreaterThanOrEqual(7);
      expect(ns.ip('neigh', 'show', ioplaneIp)).toContain('02:00:0a:c8:00:09');
      expect(ns.ip('-6', 'neigh', 'show', ioplaneIp6)).toContain('02:00:0a:c8:00:09');
      await cap.close();
      const rows = execFileSyncFields(join(dir, 'tap.pcapng'));
      const echoes = rows.filter((r) => r[0] === '8' || r[0] === '0');
      expect(echoes.filter((r) => r[0] === '8').length).toBeGreaterThanOrEqual(5);
      // Requests came from the kernel (inbound), replies went out; ICMP checksums good both ways.
      for (const r of echoes) {
        expect(r[1]).toBe('1');
        expect(Number(r[2])).toBe(r[0] === '8' ? 1 : 2);
        expect(r[3]).toBe(r[0] === '8' ? kernelMac : formatMac(responder.mac));
      }
    } finally {
      await cap.close();
      ns.delete();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

function execFileSyncFields(file: string): string[][] {
  return sh('tshark', ['-r', file, '-n', '-Y', 'icmp', '-T', 'fields', '-E', 'separator=|', '-e', 'icmp.type', '-e', 'icmp.checksum.status', '-e', 'frame.packet_flags_direction', '-e', 'eth.src'], 30_000)
    .trim().split('\n').filter(Boolean).map((l) => l.split('|'));
}
