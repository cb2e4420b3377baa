/**
 * The conformance suite every NetBackend runs (STYLE.md 15): `testNetBackend(name,
 * factory)` declares vitest tests over a pair of back-ends wired to each other
 * (what `a` sends, `b` receives, and back). Test frames use the IEEE local
 * experimental EtherType 0x88B5 and carry a per-run marker, so noise from a real
 * network (IPv6 neighbour discovery on a TAP) is ignored.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { NetBackend } from './backend.js';

export interface NetBackendPair {
  a: NetBackend;
  b: NetBackend;
  /** Frees what the factory made (namespaces, sockets); called even when a test fails. */
  cleanup?: () => Promise<void> | void;
}

export interface NetBackendSuiteOptions {
  /** The peer can hold frames while the sender waits: a burst with back-pressure loses nothing (default true). Kernel-socket back-ends pass false. */
  lossless?: boolean;
  /** The other end sees the link go down when one end closes (default true; false for UDP/VXLAN/TAP, which have no carrier from the peer). */
  peerSeesClose?: boolean;
  /** Bound on every wait, in ms (default 5000). */
  timeoutMs?: number;
}

const ETHERTYPE = 0x88b5;
const MAGIC = [0x69, 0x6f, 0x70, 0x6c]; // 'iopl'
const HEADER = 14 + 4 + 4 + 4; // Ethernet, magic, run, sequence

let runCounter = (process.pid * 65536) >>> 0;

/** A test frame of `size` bytes (at least 14): marker, run id and sequence number when they fit. */
export function testFrame(size: number, run: number, seq: number, fill = seq & 0xff): Uint8Array {
  const f = new Uint8Array(size);
  f.set([0x02, 0x10, 0x00, 0x00, 0x00, 0x02, 0x02, 0x10, 0x00, 0x00, 0x00, 0x01], 0);
  f[12] = ETHERTYPE >> 8;
  f[13] = ETHERTYPE & 0xff;
  for (let i = 14; i < size; i++) f[i] = (fill + i) & 0xff;
  if (size >= HEADER) {
    f.set(MAGIC, 14);
    new DataView(f.buffer).setUint32(18, run);
    new DataView(f.buffer).setUint32(22, seq);
  }
  return f;
}

/** The sequence number of a test frame of this run, or -1 for anything else. */
export function testFrameSeq(f: Uint8Array, run: number): number {
  if (f.length < HEADER || f[12] !== ETHERTYPE >> 8 || f[13] !== (ETHERTYPE & 0xff)) return -1;
  for (let i = 0; i < 4; i++) if (f[14 + i] !== MAGIC[i]) return -1;
  const dv = new DataView(f.buffer, f.byteOffset, f.byteLength);
  return dv.getUint32(18) === run ? dv.getUint32(22) : -1;
}

/** Sends every frame, honouring back-pressure (`writable()`), bounded by `timeoutMs`. */
export async function sendAll(b: NetBackend, frames: readonly Uint8Array[], timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let at = 0;
  while (at < frames.length) {
    const n = b.send(at === 0 ? frames : frames.slice(at));
    at += n;
    if (at < frames.length) {
      if (Date.now() > deadline) throw new Error(`sendAll: ${frames.length - at} frames still refused after ${timeoutMs} ms`);
      await Promise.race([b.writable(), sleep(50)]);
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Waits until `cond()` holds, polling, or throws naming `what` after `timeoutMs`. */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** Collects this run's test frames arriving at `b` (copies), in arrival order. */
export function collector(b: NetBackend, run: number): { frames: Uint8Array[]; seqs: number[] } {
  const got = { frames: [] as Uint8Array[], seqs: [] as number[] };
  b.onReceive((f) => {
    const s = testFrameSeq(f, run);
    if (s < 0) return;
    got.frames.push(f.slice());
    got.seqs.push(s);
  });
  return got;
}

export function testNetBackend(name: string, factory: () => Promise<NetBackendPair> | NetBackendPair, options: NetBackendSuiteOptions = {}): void {
  const timeout = options.timeoutMs ?? 5000;
  const lossless = options.lossless ?? true;
  const peerSeesClose = options.peerSeesClose ?? true;

  describe(`NetBackend conformance: ${name}`, () => {
    let pair: NetBackendPair | undefined;
    let run = 0;
    beforeEach(async () => {
      run = ++runCounter >>> 0;
      pair = await factory();
      const p = pair;
      await waitFor(() => p.a.linkUp && p.b.linkUp, 'both links up', timeout);
    });
    afterEach(async () => {
      const p = pair;
      pair = undefined;
      if (!p) return;
      try {
        await p.a.close();
        await p.b.close();
      } finally {
        await p.cleanup?.();
      }
    });
    const ends = (): NetBackendPair => pair!;

    it('reports its MTU, a maximum frame size of MTU + 22, and an up link', () => {
      const { a, b } = ends();
      for (const x of [a, b]) {
        expect(x.mtu).toBeGreaterThanOrEqual(68);
        expect(x.maxFrameSize).toBe(x.mtu + 22);
        expect(x.linkUp).toBe(true);
        expect(x.closed).toBe(false);
        expect(typeof x.kind).toBe('string');
      }
    });

    it('delivers a frame byte for byte and counts it on both sides', async () => {
      const { a, b } = ends();
      const got = collector(b, run);
      const f = testFrame(100, run, 1);
      const tx0 = { ...a.stats };
      const rx0 = { ...b.stats };
      expect(a.send([f])).toBe(1);
      await waitFor(() => got.frames.length === 1, 'the frame at b', timeout);
      expect([...got.frames[0]!]).toEqual([...f]);
      expect(a.stats.txPackets - tx0.txPackets).toBe(1);
      expect(a.stats.txBytes - tx0.txBytes).toBe(100);
      expect(b.stats.rxPackets - rx0.rxPackets).toBeGreaterThanOrEqual(1);
      expect(b.stats.rxBytes - rx0.rxBytes).toBeGreaterThanOrEqual(100);
    });

    it('delivers batches in order in both directions, sizes from 14 bytes to maxFrameSize', async () => {
      const { a, b } = ends();
      for (const [from, to] of [[a, b], [b, a]] as const) {
        const got = collector(to, run);
        const sizes = [HEADER, 60, 64, 128, 512, 1000, from.maxFrameSize - 1, from.maxFrameSize];
        const frames = Array.from({ length: 16 }, (_, i) => testFrame(sizes[i % sizes.length]!, run, i));
        await sendAll(from, frames, timeout);
        await waitFor(() => got.frames.length === frames.length, `${frames.length} frames`, timeout);
        expect(got.seqs).toEqual(frames.map((_, i) => i));
        got.frames.forEach((g, i) => expect(g.length).toBe(frames[i]!.length));
        expect(got.frames.every((g, i) => Buffer.compare(g, frames[i]!) === 0)).toBe(true);
        to.onReceive(null);
      }
    });

    it('takes runts and oversize frames, counts them as txErrors and delivers neither', async () => {
      const { a, b } = ends();
      const got = collector(b, run);
      const e0 = a.stats.txErrors;
      const big = testFrame(a.maxFrameSize + 1, run, 1);
      const runt = new Uint8Array(13);
      expect(a.send([runt, big, testFrame(64, run, 2)])).toBe(3);
      expect(a.stats.txErrors - e0).toBe(2);
      await waitFor(() => got.seqs.includes(2), 'the valid frame', timeout);
      await sleep(20);
      expect(got.seqs).toEqual([2]);
    });

    it('lets the sender reuse a buffer as soon as send returns', async () => {
      const { a, b } = ends();
      const got = collector(b, run);
      const f = testFrame(200, run, 7);
      const copy = f.slice();
      expect(a.send([f])).toBe(1);
      f.fill(0xee, 26);
      await waitFor(() => got.frames.length === 1, 'the frame', timeout);
      expect(Buffer.compare(got.frames[0]!, copy)).toBe(0);
    });

    it('holds frames back while paused and delivers them on resume', async () => {
      const { a, b } = ends();
      const got = collector(b, run);
      b.pause();
      expect(b.paused).toBe(true);
      await sendAll(a, Array.from({ length: 8 }, (_, i) => testFrame(80, run, i)), timeout);
      await sleep(100);
      expect(got.frames.length).toBe(0);
      b.resume();
      await waitFor(() => got.frames.length === 8, '8 frames after resume', timeout);
      expect(got.seqs).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    });

    it('receives through the async iterator, which pauses at its high-water mark', async () => {
      const { a, b } = ends();
      const frames = Array.from({ length: 12 }, (_, i) => testFrame(90, run, i));
      const seen: number[] = [];
      const reader = (async () => {
        for await (const f of b.frames({ highWaterMark: 4 })) {
          const s = testFrameSeq(f, run);
          if (s >= 0) seen.push(s);
          if (seen.length === frames.length) break;
        }
      })();
      await sendAll(a, frames, timeout);
      await Promise.race([reader, sleep(timeout).then(() => Promise.reject(new Error(`iterator saw ${seen.length} frames`)))]);
      expect(seen).toEqual(frames.map((_, i) => i));
      expect(b.paused).toBe(false);
    });

    it(lossless ? 'loses nothing in a burst when the sender honours back-pressure' : 'delivers paced rounds of frames', async () => {
      const { a, b } = ends();
      const got = collector(b, run);
      if (lossless) {
        const frames = Array.from({ length: 3000 }, (_, i) => testFrame(1000, run, i));
        await sendAll(a, frames, timeout);
        await waitFor(() => got.frames.length === frames.length, `${frames.length} frames`, timeout);
        expect(got.seqs.every((s, i) => s === i)).toBe(true);
        expect(b.stats.rxDrops).toBe(0);
      } else {
        for (let r = 0; r < 10; r++) {
          const frames = Array.from({ length: 16 }, (_, i) => testFrame(1000, run, r * 16 + i));
          await sendAll(a, frames, timeout);
          await waitFor(() => got.frames.length === (r + 1) * 16, `round ${r}`, timeout);
        }
        expect(got.seqs).toEqual(Array.from({ length: 160 }, (_, i) => i));
      }
    });

    it('counts a throwing receive handler as an error and keeps delivering', async () => {
      const { a, b } = ends();
      const seen: number[] = [];
      b.onReceive((f) => {
        const s = testFrameSeq(f, run);
        if (s < 0) return;
        seen.push(s);
        if (s === 0) throw new Error('receiver bug');
      });
      const e0 = b.stats.rxErrors;
      await sendAll(a, [testFrame(64, run, 0), testFrame(64, run, 1)], timeout);
      await waitFor(() => seen.length === 2, 'both frames', timeout);
      expect(b.stats.rxErrors - e0).toBe(1);
    });

    it('goes down on close: send is counted as dropped and never throws, iterators end, close is idempotent', async () => {
      const { a, b } = ends();
      const it = a.frames();
      const ended = it.next();
      await a.close();
      expect(a.closed).toBe(true);
      expect(a.linkUp).toBe(false);
      const d0 = a.stats.txDrops;
      expect(a.send([testFrame(64, run, 0)])).toBe(1);
      expect(a.stats.txDrops - d0).toBe(1);
      await a.close();
      expect((await Promise.race([ended, sleep(timeout).then(() => ({ done: false }))])).done).toBe(true);
      await a.writable();
      if (peerSeesClose) await waitFor(() => !b.linkUp, 'the peer to see the link down', timeout);
    });
  });
}
