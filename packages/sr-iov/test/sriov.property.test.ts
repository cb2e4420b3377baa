import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PciSegment, PhysicalFunction, SrIovError, type VirtualFunction, defs, formatRid, intelE810LikePf } from '../src/index.js';

type Op =
  | { t: 'numvfs'; n: number }
  | { t: 'raw-num'; n: number }
  | { t: 'raw-ctrl'; v: number }
  | { t: 'flr' }
  | { t: 'vf-flr'; i: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ t: fc.constant('numvfs' as const), n: fc.oneof(fc.nat(8), fc.integer({ min: 240, max: 260 })) }),
  fc.record({ t: fc.constant('raw-num' as const), n: fc.oneof(fc.nat(8), fc.integer({ min: 250, max: 300 })) }),
  fc.record({ t: fc.constant('raw-ctrl' as const), v: fc.nat(0x1f) }),
  fc.record({ t: fc.constant('flr' as const) }),
  fc.record({ t: fc.constant('vf-flr' as const), i: fc.nat(8) }),
);

describe('VF enable/disable cycles', () => {
  it('leave no stale functions: the segment holds exactly the PF and its live VFs, each at its RID', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 30 }), fc.boolean(), (ops, tightBus) => {
        const seg = new PciSegment();
        const pf = intelE810LikePf(tightBus ? { subordinateBus: 0x17 } : {});
        seg.add(pf);
        const live = new Set<VirtualFunction>();
        const everRemoved = new Set<VirtualFunction>();
        pf.on('vf-added', (vf) => {
          expect(live.has(vf)).toBe(false);
          live.add(vf);
        });
        pf.on('vf-removed', (vf) => {
          expect(live.delete(vf)).toBe(true);
          everRemoved.add(vf);
        });
        const ctrl = pf.sriov.offset + defs.PCI_SRIOV_CTRL;
        for (const o of ops) {
          try {
            if (o.t === 'numvfs') pf.setSriovNumVfs(o.n);
            else if (o.t === 'raw-num') pf.configWrite(pf.sriov.offset + defs.PCI_SRIOV_NUM_VF, 2, o.n);
            else if (o.t === 'raw-ctrl') pf.configWrite(ctrl, 2, o.v);
            else if (o.t === 'flr') pf.functionLevelReset();
            else if (pf.vfs[o.i]) pf.vfs[o.i]!.functionLevelReset();
          } catch (e) {
            if (!(e instanceof SrIovError)) throw e;
            expect(['range', 'busy', 'no-bus-numbers', 'invalid-input']).toContain(e.kind);
          }
          // The reference: VFs exist iff VF Enable is set; there are NumVFs of them at PF + offset + n × stride.
          const enabled = (pf.configRead(ctrl, 2) & defs.PCI_SRIOV_CTRL_VFE) !== 0;
          const n = enabled ? pf.configRead(pf.sriov.offset + defs.PCI_SRIOV_NUM_VF, 2) : 0;
          expect(pf.vfs.length).toBe(n);
          expect(live.size).toBe(n);
          const expected = [pf.address, ...pf.vfs.map((_, i) => formatRid(pf.rid + pf.sriovOffset + i * pf.sriovStride))].sort();
          expect(seg.functions().map((f) => f.address).sort()).toEqual(expected);
          for (const vf of pf.vfs) {
            expect(live.has(vf)).toBe(true);
            expect(vf.removed).toBe(false);
            expect(seg.get(vf.rid)).toBe(vf);
          }
          for (const vf of everRemoved) {
            expect(vf.removed).toBe(true);
            expect(seg.get(vf.rid)).not.toBe(vf);
            expect(vf.memoryEnabled).toBe(false);
          }
        }
      }),
      { numRuns: 150 },
    );
  });
});

describe('routing IDs across bus boundaries', () => {
  it('VF n is at RID(PF) + offset + n × stride, carrying into the bus number; past the bus range it is refused', () => {
    fc.assert(
      fc.property(
        fc.record({
          bus: fc.nat(255),
          devfn: fc.nat(255),
          offset: fc.integer({ min: 1, max: 600 }),
          stride: fc.integer({ min: 1, max: 300 }),
          total: fc.integer({ min: 1, max: 300 }),
          extraBuses: fc.nat(8),
        }),
        fc.nat(300),
        ({ bus, devfn, offset, stride, total, extraBuses }, want) => {
          const rid = (bus << 8) | devfn;
          const sub = Math.min(255, bus + extraBuses);
          const pf = new PhysicalFunction({
            address: rid,
            vendorId: 0x1d0f,
            deviceId: 0xefa0,
            classCode: 0x020000,
            subordinateBus: sub,
            sriov: { totalVfs: total, vfDeviceId: 0xefa1, layout: { firstVfOffset: offset, vfStride: stride } },
          });
          const n = Math.min(want, total);
          const last = rid + offset + (n - 1) * stride;
          if (n > 0 && (last > 0xffff || last >> 8 > sub)) {
            expect(() => pf.setSriovNumVfs(n)).toThrow(SrIovError);
            expect(pf.vfs.length).toBe(0);
            return;
          }
          pf.setSriovNumVfs(n);
          expect(pf.vfs.length).toBe(n);
          pf.vfs.forEach((vf, i) => {
            const r = rid + offset + i * stride;
            expect(vf.rid).toBe(r);
            expect(vf.address).toBe(formatRid(r));
            // Linux's virtfn_bus / virtfn_devfn.
            expect(vf.rid >> 8).toBe(bus + ((devfn + offset + stride * i) >> 8));
            expect(vf.rid & 0xff).toBe((devfn + offset + stride * i) & 0xff);
          });
        },
      ),
      { numRuns: 400 },
    );
  });
});
