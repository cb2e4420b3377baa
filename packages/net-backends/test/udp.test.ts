import { describe, expect, it } from 'vitest';
import { NetBackendError, UdpBackend } from '../src/index.js';
import { testFrame, testNetBackend, waitFor } from '../src/testing.js';

async function udpPair(): Promise<{ a: UdpBackend; b: UdpBackend }> {
  // Bind b first on an ephemeral port, then a to b, then point b at a.
  const probe = await UdpBackend.open({ local: { address: '127.0.0.1' }, remote: { address: '127.0.0.1', port: 9 } });
  const bPort = probe.local.port;
  await probe.close();
  const a = await UdpBackend.open({ local: { address: '127.0.0.1' }, remote: { address: '127.0.0.1', port: bPort } });
  const b = await UdpBackend.open({ local: { address: '127.0.0.1', port: bPort }, remote: { address: '127.0.0.1', port: a.local.port } });
  return { a, b };
}

testNetBackend('UDP (one frame per datagram)', udpPair, { lossless: false, peerSeesClose: false });

describe('UDP specifics', () => {
  it('drops and counts datagrams from a foreign source', async () => {
    const { a, b } = await udpPair();
    const stranger = await UdpBackend.open({ local: { address: '127.0.0.1' }, remote: { address: '127.0.0.1', port: b.local.port } });
    try {
      let got = 0;
      b.onReceive(() => got++);
      stranger.send([testFrame(64, 1, 1)]);
      await waitFor(() => b.stats.rxDrops === 1, 'the foreign datagram to be dropped');
      expect(got).toBe(0);
    } finally {
      await Promise.all([a.close(), b.close(), stranger.close()]);
    }
  });

  it('rejects bad configuration with typed errors', async () => {
    await expect(UdpBackend.open({ local: { address: 'nope' }, remote: { address: '127.0.0.1', port: 1 } })).rejects.toThrow(NetBackendError);
    await expect(UdpBackend.open({ local: { address: '127.0.0.1' }, remote: { address: '127.0.0.1', port: 0 } })).rejects.toMatchObject({ kind: 'invalid-config', field: 'remote.port' });
    await expect(UdpBackend.open({ local: { address: '127.0.0.1' }, remote: { address: '::1', port: 5 } })).rejects.toMatchObject({ kind: 'invalid-config' });
    await expect(UdpBackend.open({ local: { address: '192.0.2.77' }, remote: { address: '127.0.0.1', port: 5 } })).rejects.toMatchObject({ kind: 'io', field: 'bind' });
  });
});

testNetBackend('UDP over IPv6 (::1)', async () => {
  const b0 = await UdpBackend.open({ local: { address: '::1' }, remote: { address: '::1', port: 9 } });
  const port = b0.local.port;
  await b0.close();
  const a = await UdpBackend.open({ local: { address: '::1' }, remote: { address: '::1', port } });
  const b = await UdpBackend.open({ local: { address: '::1', port }, remote: { address: '::1', port: a.local.port } });
  return { a, b };
}, { lossless: false, peerSeesClose: false });
