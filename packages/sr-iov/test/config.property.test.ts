import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ConfigSpace, type PhysicalFunction, defs, intel82599LikePf, intelE810LikePf, type PciFunction } from '../src/index.js';

/** The reference model of one byte under a write: RW takes the value, RW1C clears where 1 is written, RO stays. */
function modelByte(old: number, v: number, w: number, c: number): number {
  return ((old & ~w) | (v & w)) & ~(v & c) & 0xff;
}

const access = fc.constantFrom<1 | 2 | 4>(1, 2, 4).chain((size) =>
  fc.record({ size: fc.constant(size), offset: fc.nat(4096 / size - 1).map((i) => i * size), value: fc.nat(0xffffffff) }),
);

describe('ConfigSpace against a per-byte mask model', () => {
  it('every write agrees with the model: RO bits never change, RW1C clears only what was written', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ at: fc.nat(4095), rw: fc.nat(255), w1c: fc.nat(255), init: fc.nat(255) }), { maxLength: 200 }),
        fc.array(access, { maxLength: 200 }),
        (bytes, writes) => {
          const c = new ConfigSpace();
          const w = new Uint8Array(4096);
          const k = new Uint8Array(4096);
          const model = new Uint8Array(4096);
          for (const b of bytes) {
            const rw = b.rw & ~b.w1c;
            c.setWritable(b.at, 1, 0);
            c.setWriteOneToClear(b.at, 1, 0);
            c.setWritable(b.at, 1, rw);
            c.setWriteOneToClear(b.at, 1, b.w1c);
            c.setU8(b.at, b.init);
            w[b.at] = rw;
            k[b.at] = b.w1c;
            model[b.at] = b.init;
          }
          for (const { offset, size, value } of writes) {
            c.write(offset, size, value);
            for (let i = 0; i < size; i++) {
              const o = offset + i;
              const v = (value >>> (8 * i)) & 0xff;
              const before = model[o]!;
              model[o] = modelByte(before, v, w[o]!, k[o]!);
              const ro = ~(w[o]! | k[o]!) & 0xff;
              const now = model[o] ?? 0;
              if ((now & ro) !== (before & ro) || now & k[o]! & ~before) throw new Error(`model broke at ${o}`);
            }
          }
          expect(Buffer.from(c.bytes).equals(Buffer.from(model))).toBe(true);
        },
      ),
      { numRuns: 200 },
    );
  });
});

/**
 * Random writes anywhere in a real PF's (and VF's) configuration space. The
 * device may change read-only registers itself only where the spec says so:
 * First VF Offset and VF Stride follow NumVFs and ARI (§9.3.3.9-10), NumVFs
 * falls back to 0 when VFs are disabled through the API. Initiate FLR is
 * left out (a reset legitimately changes everything).
 */
function checkWrites(make: () => PhysicalFunction, runs: number) {
  fc.assert(
    fc.property(fc.array(fc.tuple(access, fc.boolean()), { maxLength: 60 }), fc.nat(4), (ops, numVfs) => {
      const pf = make();
      if (numVfs) pf.setSriovNumVfs(numVfs);
      const s = pf.sriov.offset;
      const devctl = pf.express!.offset + defs.PCI_EXP_DEVCTL;
      for (const [{ offset, size, value }, onVf] of ops) {
        const fn: PciFunction = onVf && pf.vfs.length ? pf.vfs[0]! : pf;
        let v = value;
        // Keep Initiate FLR (DevCtl bit 15) clear.
        for (let i = 0; i < size; i++) if (offset + i === devctl + 1) v = (v & ~(0x80 << (8 * i))) >>> 0;
        const before = fn.config.bytes.slice();
        const wmask = fn.config.wmask.slice();
        const w1c = fn.config.w1cmask.slice();
        fn.configWrite(offset, size, v);
        for (let o = 0; o < 4096; o++) {
          const ro = ~(wmask[o]! | w1c[o]!) & 0xff;
          const after = fn.config.bytes[o]!;
          const deviceOwned = fn === pf && o >= s + defs.PCI_SRIOV_VF_OFFSET && o < s + defs.PCI_SRIOV_VF_STRIDE + 2;
          if (!deviceOwned && (after & ro) !== (before[o]! & ro)) {
            throw new Error(`${fn.address}: write ${size}@${offset.toString(16)}=${v.toString(16)} changed RO bits of byte ${o.toString(16)}: ${before[o]!.toString(16)} → ${after.toString(16)}`);
          }
          // RW1C bits are never set by a requester.
          if (after & w1c[o]! & ~before[o]!) throw new Error(`${fn.address}: write set RW1C bits of byte ${o.toString(16)}`);
        }
        const layout = pf.sriov.layoutFor(pf.sriov.numVfs, pf.sriov.ariCapableHierarchy);
        expect([pf.sriovOffset, pf.sriovStride]).toEqual([layout.firstVfOffset, layout.vfStride]);
        expect(pf.vfs.length).toBe(pf.sriov.vfEnabled ? pf.sriov.numVfs : 0);
      }
    }),
    { numRuns: runs },
  );
}

describe('random writes to real PFs and VFs', () => {
  it('82599-like: never change read-only bits; RW1C bits only clear', () => {
    checkWrites(() => intel82599LikePf(), 150);
  });
  it('E810-like (layout depends on ARI): never change read-only bits; RW1C bits only clear', () => {
    checkWrites(() => intelE810LikePf(), 100);
  });

  it('targeted: random writes into the SR-IOV capability keep the registers coherent', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ reg: fc.constantFrom(0x08, 0x0a, 0x10, 0x20, 0x24, 0x28), size: fc.constantFrom<1 | 2 | 4>(1, 2, 4), value: fc.nat(0xffffffff) }), { maxLength: 80 }),
        (ops) => {
          const pf = intelE810LikePf();
          for (const { reg, size, value } of ops) {
            const off = pf.sriov.offset + reg;
            pf.configWrite(off - (off % size), size, value);
            expect(pf.sriov.numVfs).toBeLessThanOrEqual(pf.sriov.totalVfs);
            const ps = pf.configRead(pf.sriov.offset + defs.PCI_SRIOV_SYS_PGSIZE, 4);
            expect(ps !== 0 && (ps & (ps - 1)) === 0 && (ps & 0x553) === ps).toBe(true);
            expect(pf.vfs.length).toBe(pf.sriov.vfEnabled ? pf.sriov.numVfs : 0);
            expect(pf.sriov.vfEnabled).toBe((pf.configRead(pf.sriov.offset + defs.PCI_SRIOV_CTRL, 2) & 1) === 1);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
