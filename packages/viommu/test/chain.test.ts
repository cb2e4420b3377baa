import { GuestMemory } from '@ioplane/guest-memory';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DmaFault, VIRTIO_IOMMU_S_OK, VIRTIO_IOMMU_S_INVAL, VirtioIommu, attachRequest, mapRequest, parseFaultEvent, parseProbeProperties, probeRequest } from '../src/index.js';

/** Puts `bytes` into guest memory cut at `cuts`, one segment per piece, 0x100 apart from `base`. */
function segments(mem: GuestMemory, base: number, bytes: Uint8Array, cuts: number[]): { addr: number; len: number }[] {
  const out: { addr: number; len: number }[] = [];
  let from = 0;
  let at = base;
  for (const to of [...cuts, bytes.length]) {
    mem.writeFrom(at, bytes.subarray(from, to));
    out.push({ addr: at, len: to - from });
    at += 0x100;
    from = to;
  }
  return out;
}

describe('descriptor chains in guest memory (processChain / processEvent)', () => {
  it('gathers a request split over several readable descriptors and scatters the answer', () => {
    const mem = GuestMemory.create(0x10000);
    const dev = new VirtioIommu({ probeSize: 48 });
    dev.addEndpoint(3, { reserved: [{ start: 0x1000n, end: 0x1fffn }] });
    const attach = attachRequest(1, 3);
    const used = dev.processChain(mem, segments(mem, 0x1000, attach.readable, [1, 7]), [{ addr: 0x2000, len: 2 }, { addr: 0x2100, len: 2 }]);
    expect(used).toBe(4);
    expect([mem.readU8(0x2000), mem.readU8(0x2001), mem.readU8(0x2100), mem.readU8(0x2101)]).toEqual([VIRTIO_IOMMU_S_OK, 0, 0, 0]);
    expect(dev.endpoint(3)!.domain!.id).toBe(1);

    const probe = probeRequest(3, 48);
    mem.fill(0x3000, 0x400, 0xcc);
    const writable = [{ addr: 0x3000, len: 30 }, { addr: 0x3100, len: 22 }];
    expect(dev.processChain(mem, segments(mem, 0x1000, probe.readable, [4, 8]), writable)).toBe(52);
    const props = new Uint8Array(48);
    mem.readInto(0x3000, props.subarray(0, 30));
    mem.readInto(0x3100, props.subarray(30, 48));
    expect(parseProbeProperties(props)).toEqual([{ subtype: 0, start: 0x1000n, end: 0x1fffn }]);
    expect(mem.readU8(0x3100 + 18)).toBe(VIRTIO_IOMMU_S_OK); // the tail, after 48 bytes of properties
    expect(mem.readU8(0x3100 + 22)).toBe(0xcc); // nothing past the used length

    const map = mapRequest(1, 0x1000n, 0x1fffn, 0n, 3); // inside the reserved region
    expect(dev.processChain(mem, segments(mem, 0x1000, map.readable, [20]), [{ addr: 0x4000, len: 4 }])).toBe(4);
    expect(mem.readU8(0x4000)).not.toBe(VIRTIO_IOMMU_S_OK);
  });

  it('ignores readable bytes past 128, and reports a short payload', () => {
    const mem = GuestMemory.create(0x10000);
    const dev = new VirtioIommu();
    dev.addEndpoint(1);
    const long = new Uint8Array(4000);
    long.set(attachRequest(2, 1).readable);
    expect(dev.processChain(mem, segments(mem, 0x1000, long, [2000]), [{ addr: 0x8000, len: 4 }])).toBe(4);
    expect(mem.readU8(0x8000)).toBe(VIRTIO_IOMMU_S_OK);
    const short = attachRequest(2, 1).readable.subarray(0, 10);
    expect(dev.processChain(mem, segments(mem, 0x1000, short, [4]), [{ addr: 0x8000, len: 4 }])).toBe(4);
    expect(mem.readU8(0x8000)).toBe(VIRTIO_IOMMU_S_INVAL);
  });

  it('fills event buffers with fault reports, split or not, and leaves short ones unused', () => {
    const mem = GuestMemory.create(0x10000);
    const dev = new VirtioIommu();
    dev.addEndpoint(1);
    const dma = dev.dmaMemory(1, mem);
    expect(() => dma.readU8(0x1234)).toThrow(DmaFault);
    expect(() => dma.writeU8(0x5678, 0)).toThrow(DmaFault);
    expect(dev.processEvent(mem, [{ addr: 0x100, len: 16 }])).toBe(0);
    expect(dev.processEvent(mem, [{ addr: 0x100, len: 10 }, { addr: 0x200, len: 14 }])).toBe(24);
    const ev = new Uint8Array(24);
    mem.readInto(0x100, ev.subarray(0, 10));
    mem.readInto(0x200, ev.subarray(10));
    expect(parseFaultEvent(ev)).toMatchObject({ endpoint: 1, address: 0x1234n });
    expect(dev.processEvent(mem, [{ addr: 0x300, len: 64 }])).toBe(24);
    mem.readInto(0x300, ev);
    expect(parseFaultEvent(ev)).toMatchObject({ endpoint: 1, address: 0x5678n });
    expect(dev.processEvent(mem, [{ addr: 0x300, len: 64 }])).toBe(0);
  });
});

describe('processRequest: the one-readable, one-writable chain', () => {
  it('answers exactly as processChain does, for any request bytes and lengths (fast-check)', () => {
    const T = [1, 2, 3, 4, 5, 99];
    const req = fc.record({
      type: fc.constantFrom(...T),
      domain: fc.constantFrom(1, 2, 0xffff_ffff),
      words: fc.array(fc.oneof(fc.constantFrom(0, 0x1000, 0x2fff, 0x3000, 0xffff_ffff, 3, 8), fc.nat()), { minLength: 16, maxLength: 16 }),
      readLen: fc.integer({ min: 0, max: 140 }),
      writeLen: fc.constantFrom(0, 2, 4, 8, 52, 60),
    });
    fc.assert(
      fc.property(fc.array(req, { minLength: 1, maxLength: 12 }), (reqs) => {
        const make = () => {
          const d = new VirtioIommu({ probeSize: 48, domainRange: { start: 1, end: 8 } });
          d.addEndpoint(3, { reserved: [{ start: 0x1000n, end: 0x1fffn }] });
          return d;
        };
        const a = make();
        const b = make();
        const ma = GuestMemory.create(0x10000);
        const mb = GuestMemory.create(0x10000);
        // Every request first attaches endpoint 3, so MAP and UNMAP have a domain to work on.
        for (const d of [a, b]) d.handleRequest(attachRequest(1, 3).readable, new Uint8Array(4));
        for (const r of reqs) {
          const bytes = new Uint8Array(160);
          const v = new DataView(bytes.buffer);
          for (let i = 0; i < 16; i++) v.setUint32(8 + 4 * i, r.words[i]!, true);
          bytes[0] = r.type;
          v.setUint32(4, r.domain, true);
          for (const m of [ma, mb]) {
            m.writeFrom(0x1000, bytes);
            m.fill(0x4000, 0x100, 0xee);
          }
          const ua = a.processChain(ma, [{ addr: 0x1000, len: r.readLen }], [{ addr: 0x4000, len: r.writeLen }]);
          const ub = b.processRequest(mb, 0x1000, r.readLen, 0x4000, r.writeLen);
          expect(ub).toBe(ua);
          expect(mb.view(0x4000, 0x100, 'read')).toEqual(ma.view(0x4000, 0x100, 'read'));
        }
        expect(b.stats).toEqual(a.stats);
        expect(b.domain(1)?.mappings.all().map((m) => m.virtStart)).toEqual(a.domain(1)?.mappings.all().map((m) => m.virtStart));
      }),
      { numRuns: 300 },
    );
  });
});
