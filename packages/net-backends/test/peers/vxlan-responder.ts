// Runs inside a network namespace (ip netns exec): an ioplane VXLAN endpoint with an
// ARP/ICMP responder behind it. Prints one JSON line when ready; on SIGTERM prints its
// counters and forwarding table as a second JSON line and exits.
import { ArpIcmpResponder, parseIpv4, parseMac } from '@ioplane/packet';
import { VxlanEndpoint } from '../../src/index.js';

const [local, remote, vniText, hostIp, hostMac] = process.argv.slice(2) as [string, string, string, string, string];
const ep = await VxlanEndpoint.open({ local: { address: local }, sourceSockets: 4 });
const net = ep.attach({ vni: Number(vniText), remotes: [{ address: remote }] });
const responder = new ArpIcmpResponder(parseMac(hostMac), parseIpv4(hostIp));
const out = new Uint8Array(2048);
net.onReceive((f) => {
  const n = responder.respond(f, out);
  if (n > 0) net.send([out.subarray(0, n)]);
});
process.stdout.write(`${JSON.stringify({ ready: true, local: ep.local, sourcePorts: ep.sourcePorts })}\n`);
process.on('SIGTERM', () => {
  process.stdout.write(`${JSON.stringify({ responder: responder.stats, fdb: net.fdbEntries(), endpoint: ep.stats, stats: net.stats })}\n`);
  void ep.close().then(() => process.exit(0));
});
