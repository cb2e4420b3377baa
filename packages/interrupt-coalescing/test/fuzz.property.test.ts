import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  AdaptivePolicy,
  BLOCK_PROFILES,
  FixedPolicy,
  MsixTable,
  NET_DIM_RX_EQE_PROFILES,
  NO_COALESCING,
  NetDimPolicy,
  NonePolicy,
  VIRTIO_NET_CTRL_NOTF_COAL_RX_SET,
  VIRTIO_NET_CTRL_NOTF_COAL_TX_SET,
  VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET,
  VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET,
  VIRTIO_NET_ERR,
  VIRTIO_NET_OK,
  VicPolicy,
  VirtioNetNotfCoal,
  simulate,
  type CoalescingPolicy,
} from '../src/index.js';
import { harness } from './harness.js';

const MAX_PAIRS = 4;

/** Little-endian bytes of `[value, width]` fields, written out by hand so the test does not share the device's DataView code. */
function le(fields: [number, number][]): Uint8Array {
  const out: number[] = [];
  for (const [value, width] of fields) for (let i = 0; i < width; i++) out.push(Math.floor(value / 2 ** (8 * i)) % 256);
  return Uint8Array.from(out);
}

function readLe(data: Uint8Array, at: number, width: number): number {
  let v = 0;
  for (let i = width - 1; i >= 0; i--) v = v * 256 + data[at + i]!;
  return v;
}

type CtrlOp = { kind: 'cmd'; cmd: number; data: Uint8Array; reply: Uint8Array | null } | { kind: 'pairs'; pairs: number } | { kind: 'reenable'; vq: number };

// 0, 1 and the u32 maximum are where unit and "0 means off" mistakes show.
const u32 = fc.oneof(fc.constantFrom(0, 1, 0xffff_ffff), fc.integer({ min: 0, max: 0xffff_ffff }));
const vqIndex = fc.integer({ min: 0, max: 2 * MAX_PAIRS - 1 });
const reserved = fc.integer({ min: 0, max: 0xffff });
const coalData = fc.tuple(u32, u32).map(([packets, usecs]) => le([[packets, 4], [usecs, 4]]));

const wellFormed: fc.Arbitrary<CtrlOp> = fc.oneof(
  fc.record({ kind: fc.constant('cmd' as const), cmd: fc.constantFrom(VIRTIO_NET_CTRL_NOTF_COAL_TX_SET, VIRTIO_NET_CTRL_NOTF_COAL_RX_SET), data: coalData, reply: fc.constant(null) }),
  fc.record({
    kind: fc.constant('cmd' as const),
    cmd: fc.constant(VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET),
    data: fc.tuple(vqIndex, reserved, u32, u32).map(([vq, r, packets, usecs]) => le([[vq, 2], [r, 2], [packets, 4], [usecs, 4]])),
    reply: fc.constant(null),
  }),
  fc.record({
    kind: fc.constant('cmd' as const),
    cmd: fc.constant(VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET),
    data: fc.tuple(vqIndex, reserved).map(([vq, r]) => le([[vq, 2], [r, 2]])),
    reply: fc.uint8Array({ minLength: 8, maxLength: 12 }),
  }),
);

const fullyRandom: fc.Arbitrary<CtrlOp> = fc.record({
  kind: fc.constant('cmd' as const),
  cmd: fc.oneof(fc.integer({ min: 0, max: 4 }), fc.integer({ min: 0, max: 255 })),
  data: fc.uint8Array({ maxLength: 16 }),
  reply: fc.option(fc.uint8Array({ maxLength: 12 }), { nil: null }),
});

const ctrlOp: fc.Arbitrary<CtrlOp> = fc.oneof(
  { arbitrary: wellFormed, weight: 14 },
  { arbitrary: fullyRandom, weight: 4 },
  { arbitrary: fc.record({ kind: fc.constant('pairs' as const), pairs: fc.integer({ min: 1, max: MAX_PAIRS }) }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant('reenable' as const), vq: vqIndex }), weight: 1 },
);

// Mostly negotiated, so the OK half of the commands runs; sometimes not, so the refusal does too.
const featureOn = fc.oneof({ arbitrary: fc.constant(true), weight: 5 }, { arbitrary: fc.constant(false), weight: 1 });

/** The NOTF_COAL rules of VirtIO 1.3 §5.1.6.5.9, written out plainly. */
class NotfCoalModel {
  pairs = MAX_PAIRS;
  private readonly packets: number[] = Array<number>(2 * MAX_PAIRS).fill(0);
  private readonly usecs: number[] = Array<number>(2 * MAX_PAIRS).fill(0);
  private rx: [number, number] = [0, 0];
  private tx: [number, number] = [0, 0];

  get(vq: number): { maxPackets: number; maxUsecs: number } {
    return { maxPackets: this.packets[vq]!, maxUsecs: this.usecs[vq]! };
  }

  /** A re-enabled queue takes the last TX_SET/RX_SET values of its direction, or 0. */
  reenable(vq: number): void {
    [this.packets[vq], this.usecs[vq]] = vq % 2 === 0 ? this.rx : this.tx;
  }

  handle(cmd: number, data: Uint8Array, replyLength: number | undefined, notfCoal: boolean, vqNotfCoal: boolean): { ack: number; reply?: Uint8Array; zero?: boolean } {
    const err = { ack: VIRTIO_NET_ERR };
    const enabledDataVq = (vq: number): boolean => vq < 2 * this.pairs;
    if (cmd === VIRTIO_NET_CTRL_NOTF_COAL_TX_SET || cmd === VIRTIO_NET_CTRL_NOTF_COAL_RX_SET) {
      if (!notfCoal || data.length !== 8) return err;
      const p: [number, number] = [readLe(data, 0, 4), readLe(data, 4, 4)];
      // receiveqN is virtqueue 2(N−1), transmitqN 2(N−1)+1.
      const parity = cmd === VIRTIO_NET_CTRL_NOTF_COAL_RX_SET ? 0 : 1;
      if (parity === 0) this.rx = p;
      else this.tx = p;
      for (let vq = parity; vq < 2 * MAX_PAIRS; vq += 2) [this.packets[vq], this.usecs[vq]] = p;
      return { ack: VIRTIO_NET_OK, zero: p[0] === 0 || p[1] === 0 };
    }
    if (cmd === VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET) {
      if (!vqNotfCoal || data.length !== 12) return err;
      const vq = readLe(data, 0, 2);
      if (!enabledDataVq(vq)) return err;
      this.packets[vq] = readLe(data, 4, 4);
      this.usecs[vq] = readLe(data, 8, 4);
      return { ack: VIRTIO_NET_OK, zero: this.packets[vq] === 0 || this.usecs[vq] === 0 };
    }
    if (cmd === VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET) {
      if (!vqNotfCoal || data.length !== 4 || replyLength === undefined || replyLength < 8) return err;
      const vq = readLe(data, 0, 2);
      if (!enabledDataVq(vq)) return err;
      return { ack: VIRTIO_NET_OK, reply: le([[this.packets[vq]!, 4], [this.usecs[vq]!, 4]]) };
    }
    return err;
  }
}

describe('hostile guest input never throws', () => {
  it('NOTF_COAL: any command answers exactly as the spec model does, and OK leaves the parameters it set', () => {
    // Counted over every run, so the OK half of each command is known to have been exercised.
    const okAcks = new Map<number, number>();
    let zeroSetsOk = 0;
    let errAcks = 0;
    fc.assert(
      fc.property(fc.array(ctrlOp, { maxLength: 40 }), featureOn, featureOn, (ops, notfCoal, vqNotfCoal) => {
        const policy = new FixedPolicy(NO_COALESCING);
        const h = harness(policy, 2 * MAX_PAIRS);
        const ctl = new VirtioNetNotfCoal({ policy, coalescer: h.coalescer, queuePairs: MAX_PAIRS, notfCoal, vqNotfCoal });
        const m = new NotfCoalModel();
        for (const o of ops) {
          if (o.kind === 'pairs') {
            ctl.setQueuePairs(o.pairs);
            m.pairs = o.pairs;
          } else if (o.kind === 'reenable') {
            ctl.queueReenabled(o.vq);
            m.reenable(o.vq);
          } else {
            const reply = o.reply === null ? undefined : o.reply.slice();
            const ack = ctl.handle(o.cmd, o.data, reply);
            const want = m.handle(o.cmd, o.data, reply?.length, notfCoal, vqNotfCoal);
            expect(ack).toBe(want.ack);
            if (ack === VIRTIO_NET_ERR) errAcks++;
            else {
              okAcks.set(o.cmd, (okAcks.get(o.cmd) ?? 0) + 1);
              if (want.zero) zeroSetsOk++;
            }
            if (want.reply && reply) {
              // VQ_GET writes exactly the 8-byte virtio_net_ctrl_coal; the rest of the buffer is the driver's.
              const expected = o.reply!.slice();
              expected.set(want.reply);
              expect(reply).toEqual(expected);
            } else if (reply) {
              expect(reply).toEqual(o.reply);
            }
          }
          for (let vq = 0; vq < 2 * MAX_PAIRS; vq++) {
            const want = m.get(vq);
            expect(ctl.get(vq)).toEqual(want);
            // "max_usecs = 0 or max_packets = 0": notify after every packet.
            expect(policy.params(vq)).toEqual(want.maxPackets === 0 || want.maxUsecs === 0 ? { maxFrames: 1, maxUsecs: 0 } : { maxFrames: want.maxPackets, maxUsecs: want.maxUsecs });
          }
        }
      }),
      { numRuns: 300 },
    );
    // Random seeds; over 12 of them the lowest counts were 462 OK acks of a command kind, 564
    // zero sets and 1,947 error acks.
    for (const cmd of [VIRTIO_NET_CTRL_NOTF_COAL_TX_SET, VIRTIO_NET_CTRL_NOTF_COAL_RX_SET, VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET, VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET]) {
      expect(okAcks.get(cmd) ?? 0, `OK acks of command ${cmd}`).toBeGreaterThan(200);
    }
    expect(zeroSetsOk).toBeGreaterThan(200);
    expect(errAcks).toBeGreaterThan(200);
  });

  it('MSI-X: any guest access of any size at any offset is answered or ignored', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            write: fc.boolean(),
            region: fc.constantFrom('table' as const, 'pba' as const),
            offset: fc.oneof(fc.integer({ min: -8, max: 200 }), fc.double({ noNaN: false })),
            size: fc.constantFrom(1 as const, 2 as const, 4 as const, 3 as 1, 8 as 4),
            value: fc.integer({ min: -(2 ** 31), max: 2 ** 32 - 1 }),
          }),
          { maxLength: 100 },
        ),
        (ops) => {
          const t = new MsixTable({ vectors: 7, send: () => {} });
          for (const o of ops) {
            if (o.write) t.write(o.region, o.offset, o.size, o.value);
            else expect(Number.isInteger(t.read(o.region, o.offset, o.size))).toBe(true);
          }
          // Reserved bits stay zero whatever was written.
          for (let v = 0; v < 7; v++) expect(t.read('table', v * 16 + 12, 4) & ~1).toBe(0);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('simulator × policies', () => {
  // Each maker also gives the delay bound its parameters imply, in µs, so a unit error shared by a policy's timer and its `maxDelayNs` cannot pass.
  const makers: ((seed: number) => { policy: CoalescingPolicy; boundUs: number })[] = [
    () => ({ policy: new NonePolicy(), boundUs: 0 }),
    (s) => {
      const maxFrames = 1 + (s % 20);
      const maxUsecs = s % 3 === 0 ? 0 : 10 + (s % 90);
      // Frames-only has no time bound (the end of the run flushes it), except 1 frame, which never waits.
      return { policy: new FixedPolicy({ maxFrames, maxUsecs }), boundUs: maxUsecs > 0 ? maxUsecs : maxFrames === 1 ? 0 : Infinity };
    },
    (s) => {
      const backstopUs = 50 + (s % 500);
      return { policy: new VicPolicy({ cifThreshold: 1 + (s % 8), epochPeriodUs: 100, backstopUs }), boundUs: backstopUs };
    },
    (s) => ({ policy: new AdaptivePolicy({ nEvents: 1 + (s % 32) }), boundUs: Math.max(...BLOCK_PROFILES.map((p) => p.maxUsecs)) }),
    (s) => ({ policy: new NetDimPolicy({ nEvents: 1 + (s % 32) }), boundUs: Math.max(...NET_DIM_RX_EQE_PROFILES.map((p) => p.maxUsecs)) }),
  ];

  it('every request is delivered, interrupts never outnumber completions, and the added delay respects the policy bound', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: makers.length - 1 }),
        fc.integer({ min: 0, max: 1_000_000 }),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 50_000 }), fc.integer({ min: 1_000, max: 300_000 })), { minLength: 1, maxLength: 400 }),
        fc.integer({ min: 1, max: 64 }),
        fc.integer({ min: 1, max: 16 }),
        fc.constantFrom(0, 2000),
        (which, seed, reqs, qd, par, irqNs) => {
          let t = 0;
          const arrivalsNs = Float64Array.from(reqs, ([gap]) => (t += gap));
          const serviceNs = Float64Array.from(reqs, ([, s]) => s);
          const { policy, boundUs } = makers[which]!(seed);
          const r = simulate({ workload: { arrivalsNs, serviceNs }, queueDepth: qd, parallelism: par, policy, interruptCostNs: irqNs, perCompletionCostNs: irqNs / 4 });
          expect(r.ios).toBe(reqs.length);
          expect(r.interrupts).toBeLessThanOrEqual(reqs.length);
          expect(r.interrupts).toBeGreaterThan(0);
          if (Number.isFinite(boundUs)) expect(r.addedMaxUs).toBeLessThanOrEqual(boundUs + 1e-9);
        },
      ),
      { numRuns: 200 },
    );
  });
});
