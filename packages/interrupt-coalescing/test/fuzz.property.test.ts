import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  AdaptivePolicy,
  FixedPolicy,
  MsixTable,
  NO_COALESCING,
  NetDimPolicy,
  NonePolicy,
  VIRTIO_NET_ERR,
  VIRTIO_NET_OK,
  VicPolicy,
  VirtioNetNotfCoal,
  simulate,
  type CoalescingPolicy,
} from '../src/index.js';
import { harness } from './harness.js';

describe('hostile guest input never throws', () => {
  it('NOTF_COAL: any command byte and any data answers OK or ERR, and OK leaves valid parameters', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ cmd: fc.integer({ min: 0, max: 255 }), data: fc.uint8Array({ maxLength: 16 }), reply: fc.option(fc.uint8Array({ minLength: 0, maxLength: 12 })) }), { maxLength: 40 }),
        fc.boolean(),
        fc.boolean(),
        (cmds, notfCoal, vqNotfCoal) => {
          const policy = new FixedPolicy(NO_COALESCING);
          const h = harness(policy, 9);
          const ctl = new VirtioNetNotfCoal({ policy, coalescer: h.coalescer, queuePairs: 4, notfCoal, vqNotfCoal });
          for (const c of cmds) {
            const ack = ctl.handle(c.cmd, c.data, c.reply ?? undefined);
            expect([VIRTIO_NET_OK, VIRTIO_NET_ERR]).toContain(ack);
          }
          for (let vq = 0; vq < 8; vq++) {
            const { maxFrames, maxUsecs } = policy.params(vq);
            expect(maxFrames > 0 || maxUsecs > 0).toBe(true);
          }
        },
      ),
      { numRuns: 300 },
    );
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
  const makers: ((seed: number) => CoalescingPolicy)[] = [
    () => new NonePolicy(),
    (s) => new FixedPolicy({ maxFrames: 1 + (s % 20), maxUsecs: s % 3 === 0 ? 0 : 10 + (s % 90) }),
    (s) => new VicPolicy({ cifThreshold: 1 + (s % 8), epochPeriodUs: 100, backstopUs: 50 + (s % 500) }),
    (s) => new AdaptivePolicy({ nEvents: 1 + (s % 32) }),
    (s) => new NetDimPolicy({ nEvents: 1 + (s % 32) }),
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
          const policy = makers[which]!(seed);
          const r = simulate({ workload: { arrivalsNs, serviceNs }, queueDepth: qd, parallelism: par, policy, interruptCostNs: irqNs, perCompletionCostNs: irqNs / 4 });
          expect(r.ios).toBe(reqs.length);
          expect(r.interrupts).toBeLessThanOrEqual(reqs.length);
          expect(r.interrupts).toBeGreaterThan(0);
          const bound = policy.maxDelayNs(0) / 1000;
          // A frames-only fixed policy has no bound; the end of the run flushes it.
          if (Number.isFinite(bound)) expect(r.addedMaxUs).toBeLessThanOrEqual(bound + 1e-9);
        },
      ),
      { numRuns: 200 },
    );
  });
});
