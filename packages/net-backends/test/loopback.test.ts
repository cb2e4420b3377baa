import { describe, expect, it } from 'vitest';
import { createLoopbackPair, createSharedLoopback, NetBackendError, SharedLoopbackBackend } from '../src/index.js';
import { testNetBackend } from '../src/testing.js';

testNetBackend('in-process loopback', () => createLoopbackPair());
testNetBackend('shared-memory loopback (both ends in one thread)', () => {
  const ch = createSharedLoopback({ ringBytes: 64 * 1024 });
  return { a: SharedLoopbackBackend.open(ch, 'a'), b: SharedLoopbackBackend.open(ch, 'b') };
});
testNetBackend('in-process loopback, MTU 9000', () => createLoopbackPair({ mtu: 9000 }));

describe('loopback specifics', () => {
  it('setLink takes the link down and back up on both ends; frames sent while down are dropped and counted', async () => {
    const p = createLoopbackPair();
    const seen: boolean[] = [];
    p.a.onLinkChange((up) => seen.push(up));
    p.setLink(false);
    expect([p.a.linkUp, p.b.linkUp]).toEqual([false, false]);
    expect(p.a.send([new Uint8Array(60)])).toBe(1);
    expect(p.a.stats.txDrops).toBe(1);
    p.setLink(true);
    expect(seen).toEqual([false, true]);
    await p.a.close();
    await p.b.close();
  });

  it('a full ring makes send take fewer frames until the receiver drains', async () => {
    const p = createLoopbackPair({ ringBytes: 8192 });
    p.b.pause();
    const frames = Array.from({ length: 20 }, () => new Uint8Array(1000));
    const n = p.a.send(frames);
    expect(n).toBeGreaterThan(0);
    expect(n).toBeLessThan(20);
    const w = p.a.writable();
    let got = 0;
    p.b.onReceive(() => got++);
    p.b.resume();
    await w;
    expect(got).toBe(n);
    await p.a.close();
    await p.b.close();
  });

  it('rejects bad configuration with typed errors', () => {
    expect(() => createLoopbackPair({ mtu: 10 })).toThrow(NetBackendError);
    expect(() => createLoopbackPair({ ringBytes: 3000 })).toThrow(expect.objectContaining({ kind: 'invalid-config', field: 'ringBytes' }));
    const ch = createSharedLoopback();
    const a = SharedLoopbackBackend.open(ch, 'a');
    expect(() => SharedLoopbackBackend.open(ch, 'a')).toThrow(expect.objectContaining({ kind: 'invalid-config', field: 'side' }));
    void a.close();
    expect(() => SharedLoopbackBackend.open({ ...ch, mtu: 9000 }, 'b')).toThrow(expect.objectContaining({ kind: 'corrupt-ring' }));
  });
});
