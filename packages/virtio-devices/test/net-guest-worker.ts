// A simulated guest of the ARP + ICMP test: a virtio-net driver in its own
// thread over shared guest memory; the device lives in the test's thread,
// reached through a MessagePort (control) and Doorbells (kicks, interrupts).
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { GuestMemory } from '@ioplane/guest-memory';
import { ArpIcmpResponder, Layer, PacketInfo, buildArpRequest, buildIcmpEcho, parsePacket, readIpv4 } from '@ioplane/packet';
import { Doorbell } from '@ioplane/virtqueue';
import { HaltPollGovernor, MessagePortTransport, VirtioNetDriver } from '../src/index.js';

export interface NetGuestSetup {
  sab: SharedArrayBuffer;
  bells: Int32Array;
  numQueues: number;
  port: MessagePort;
  role: 'pinger' | 'responder';
  ip: number;
  peerIp: number;
  /** Echo requests to send (pinger). */
  count: number;
  payloadBytes: number;
}

export interface PingResult {
  type: 'done';
  peerMac: number[];
  replies: { id: number; sequence: number; payloadOk: boolean }[];
  responder?: { arpReplies: number; echoReplies: number };
  /** The responder's thread halt-polls: its idle periods, each ended while polling or after a sleep. */
  haltPoll?: { idle: number; caught: number; slept: number };
}

const setup = workerData as NetGuestSetup;
const mem = new GuestMemory([{ gpa: 0, backing: setup.sab }]);
const kicks = Array.from({ length: setup.numQueues }, (_, q) => new Doorbell(setup.bells, q));
const irqs = Array.from({ length: setup.numQueues }, (_, q) => new Doorbell(setup.bells, setup.numQueues + q));
const transport = new MessagePortTransport(setup.port, kicks);

function deadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([p, new Promise<T>((_, rej) => (t = setTimeout(() => rej(new Error(`no ${what} within ${ms} ms`)), ms)))]).finally(() => clearTimeout(t));
}

async function main(): Promise<void> {
  const driver = await VirtioNetDriver.create({ transport, mem, area: { addr: 0x10000, len: 12 << 20 } });
  // The responder's thread halt-polls before it sleeps; the pinger's sleeps at once.
  const haltPoll = setup.role === 'responder' ? new HaltPollGovernor() : undefined;
  const listening = driver.listen(irqs, haltPoll === undefined ? 20 : { pollMs: 20, haltPoll });
  const mac = driver.info.mac;
  const out = new Uint8Array(2048);
  const info = new PacketInfo();
  let result: PingResult;
  if (setup.role === 'responder') {
    const responder = new ArpIcmpResponder(mac, setup.ip);
    driver.onFrame((frame) => {
      const n = responder.respond(frame, out);
      if (n > 0) driver.send(out.subarray(0, n), { offloadChecksum: true });
    });
    const stopped = new Promise<void>((resolve) => parentPort!.once('message', () => resolve()));
    parentPort!.postMessage({ type: 'ready' });
    await stopped;
    result = { type: 'done', peerMac: [], replies: [], responder: { arpReplies: responder.stats.arpReplies, echoReplies: responder.stats.echoReplies }, haltPoll: { ...haltPoll!.stats } };
  } else {
    // ARP: who has peerIp? (RFC 826)
    let peerMac: Uint8Array | undefined;
    let arpDone: () => void = () => {};
    const arp = new Promise<void>((r) => (arpDone = r));
    const replies: PingResult['replies'] = [];
    let replyWake: () => void = () => {};
    const payload = new Uint8Array(setup.payloadBytes);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 31) & 0xff;
    driver.onFrame((frame) => {
      parsePacket(frame, info);
      const l3 = info.l3Offset;
      if ((info.layers & Layer.ARP) !== 0 && frame[l3 + 7] === 2 && readIpv4(frame, l3 + 14) === setup.peerIp) {
        peerMac = frame.slice(l3 + 8, l3 + 14);
        arpDone();
      } else if ((info.layers & Layer.ICMP) !== 0 && frame[info.l4Offset] === 0) {
        const l4 = info.l4Offset;
        const got = frame.subarray(l4 + 8, info.ipEnd);
        replies.push({ id: (frame[l4 + 4]! << 8) | frame[l4 + 5]!, sequence: (frame[l4 + 6]! << 8) | frame[l4 + 7]!, payloadOk: Buffer.from(got).equals(Buffer.from(payload)) });
        replyWake();
      }
    });
    const n = buildArpRequest(out, { srcMac: mac, srcIp: setup.ip, targetIp: setup.peerIp, padToMinimum: true });
    driver.send(out.subarray(0, n));
    await deadline(arp, 10_000, 'ARP reply');
    for (let seq = 1; seq <= setup.count; seq++) {
      const wait = new Promise<void>((r) => (replyWake = r));
      const len = buildIcmpEcho(out, { srcMac: mac, dstMac: peerMac!, srcIp: setup.ip, dstIp: setup.peerIp, id: 0x1234, sequence: seq, payload });
      driver.send(out.subarray(0, len));
      await deadline(wait, 10_000, `echo reply ${seq}`);
    }
    result = { type: 'done', peerMac: Array.from(peerMac!), replies };
  }
  await driver.close();
  await listening;
  transport.close();
  parentPort!.postMessage(result);
}

main().catch((e: unknown) => {
  parentPort!.postMessage({ type: 'error', message: e instanceof Error ? `${e.name}: ${e.message}\n${e.stack}` : String(e) });
});
