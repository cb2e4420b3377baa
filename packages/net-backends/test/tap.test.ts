import { describe, expect, it } from 'vitest';
import { NetBackendError, TapBackend } from '../src/index.js';
import { testNetBackend } from '../src/testing.js';
import { Netns, requireRootAndTools, sh } from './netns.js';

/** Two TAPs moved into a fresh namespace and joined by a Linux bridge: the kernel forwards between them. */
async function tapPair(): Promise<{ a: TapBackend; b: TapBackend; cleanup: () => void }> {
  requireRootAndTools();
  const ns = Netns.create('iopt');
  const opened: TapBackend[] = [];
  try {
    const a = await TapBackend.open({ name: 'iopta%d' });
    opened.push(a);
    const b = await TapBackend.open({ name: 'ioptb%d' });
    opened.push(b);
    ns.ip('link', 'add', 'br0', 'mtu', '1508', 'type', 'bridge');
    for (const t of [a, b]) {
      // Frames up to mtu + 22 bytes carry 1508 bytes after the Ethernet header.
      sh('ip', ['link', 'set', t.name, 'netns', ns.name]);
    }
    for (const t of [a, b]) {
      ns.ip('link', 'set', t.name, 'mtu', '1508');
      ns.ip('link', 'set', t.name, 'master', 'br0');
      ns.ip('link', 'set', t.name, 'up');
    }
    ns.ip('link', 'set', 'br0', 'up');
    return { a, b, cleanup: () => ns.delete() };
  } catch (e) {
    for (const t of opened) await t.close();
    ns.delete();
    throw e;
  }
}

testNetBackend('TAP (two TAPs on a Linux bridge in a namespace)', tapPair, { lossless: false, peerSeesClose: false });

describe('TAP specifics', () => {
  it('removes the interface when closed, and rejects bad names', async () => {
    requireRootAndTools();
    const t = await TapBackend.open({ name: 'ioptz%d' });
    const ns = Netns.create('iopz');
    try {
      expect(t.name).toMatch(/^ioptz\d+$/);
      sh('ip', ['link', 'set', t.name, 'netns', ns.name]);
      expect(ns.ip('link', 'show', t.name)).toContain(t.name);
      await t.close();
      expect(() => ns.ip('link', 'show', t.name)).toThrow();
    } finally {
      await t.close();
      ns.delete();
    }
    await expect(TapBackend.open({ name: 'a-name-far-too-long' })).rejects.toThrow(NetBackendError);
    await expect(TapBackend.open({ name: 'bad name' })).rejects.toMatchObject({ kind: 'invalid-config', field: 'name' });
  });
});
