import { describe, expect, it } from 'vitest';
import {
  CONFIG_SIZE,
  DEFAULT_FEATURES,
  VIRTIO_IOMMU_ATTACH_F_BYPASS,
  VIRTIO_IOMMU_F_BYPASS,
  VIRTIO_IOMMU_F_BYPASS_CONFIG,
  VIRTIO_IOMMU_F_DOMAIN_RANGE,
  VIRTIO_IOMMU_F_INPUT_RANGE,
  VIRTIO_IOMMU_F_MAP_UNMAP,
  VIRTIO_IOMMU_F_MMIO,
  VIRTIO_IOMMU_F_PROBE,
  VIRTIO_IOMMU_MAP_F_MMIO,
  VIRTIO_IOMMU_RESV_MEM_T_MSI,
  VIRTIO_IOMMU_S_INVAL,
  VIRTIO_IOMMU_S_IOERR,
  VIRTIO_IOMMU_S_NOENT,
  VIRTIO_IOMMU_S_NOMEM,
  VIRTIO_IOMMU_S_OK,
  VIRTIO_IOMMU_S_RANGE,
  VIRTIO_IOMMU_S_UNSUPP,
  U64_MAX,
  ViommuError,
  VirtioIommu,
  attachRequest,
  detachRequest,
  mapRequest,
  parseConfig,
  parseProbeProperties,
  probeRequest,
  unmapRequest,
} from '../src/index.js';
import { RW, W, attach, device, map, raw, send, status, unmap } from './helpers.js';

const bit = (n: number) => 1n << BigInt(n);

describe('feature bits and config space (VirtIO 1.2 §5.13.3, §5.13.4)', () => {
  it('offers INPUT_RANGE, DOMAIN_RANGE, MAP_UNMAP, PROBE, MMIO and BYPASS_CONFIG, never BYPASS', () => {
    expect(DEFAULT_FEATURES).toBe(bit(0) | bit(1) | bit(2) | bit(4) | bit(5) | bit(6));
    expect([VIRTIO_IOMMU_F_INPUT_RANGE, VIRTIO_IOMMU_F_DOMAIN_RANGE, VIRTIO_IOMMU_F_MAP_UNMAP, VIRTIO_IOMMU_F_BYPASS, VIRTIO_IOMMU_F_PROBE, VIRTIO_IOMMU_F_MMIO, VIRTIO_IOMMU_F_BYPASS_CONFIG]).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(() => new VirtioIommu({ features: DEFAULT_FEATURES | bit(VIRTIO_IOMMU_F_BYPASS) })).toThrow(ViommuError);
    expect(() => new VirtioIommu({ features: bit(40) })).toThrow(/does not implement/);
  });

  it('lays the config out byte for byte', () => {
    const dev = new VirtioIommu({ pageSizeMask: 0x40201000n, inputRange: { start: 0x1000n, end: 0xffff_ffff_ffffn }, domainRange: { start: 1, end: 0xfffe }, probeSize: 256, bypass: true });
    const c = dev.config;
    expect(c.length).toBe(CONFIG_SIZE);
    const v = new DataView(c.buffer);
    expect(v.getBigUint64(0, true)).toBe(0x40201000n);
    expect(v.getBigUint64(8, true)).toBe(0x1000n);
    expect(v.getBigUint64(16, true)).toBe(0xffff_ffff_ffffn);
    expect(v.getUint32(24, true)).toBe(1);
    expect(v.getUint32(28, true)).toBe(0xfffe);
    expect(v.getUint32(32, true)).toBe(256);
    expect(c[36]).toBe(1);
    expect([c[37], c[38], c[39]]).toEqual([0, 0, 0]);
    expect(parseConfig(c)).toEqual({ pageSizeMask: 0x40201000n, inputRange: { start: 0x1000n, end: 0xffff_ffff_ffffn }, domainRange: { start: 1, end: 0xfffe }, probeSize: 256, bypass: 1 });
    expect(dev.granule).toBe(0x1000n);
  });

  it('lets the driver write only bypass, only with BYPASS_CONFIG negotiated, presenting 0 or 1 (§5.13.4.1–2)', () => {
    const dev = device();
    dev.writeConfig(36, Uint8Array.of(0xff));
    expect(dev.config[36]).toBe(1);
    expect(dev.bypass).toBe(true);
    dev.writeConfig(36, Uint8Array.of(2)); // bit 1 only: bits 1-7 are ignored
    expect(dev.config[36]).toBe(0);
    dev.writeConfig(0, Uint8Array.of(0xaa, 0xbb));
    expect(dev.config[0]).toBe(0);
    expect(dev.stats.badConfigWrites).toBe(2);
    dev.ackFeatures(DEFAULT_FEATURES & ~bit(VIRTIO_IOMMU_F_BYPASS_CONFIG));
    dev.writeConfig(36, Uint8Array.of(1));
    expect(dev.config[36]).toBe(0);
  });

  it('keeps bypass across device reset and restores it on system reset', () => {
    const dev = device({ bypass: false });
    dev.writeConfig(36, Uint8Array.of(1));
    expect(attach(dev, 1, 1)).toBe(VIRTIO_IOMMU_S_OK);
    dev.reset();
    expect(dev.config[36]).toBe(1);
    expect(dev.endpoint(1)!.domain).toBeUndefined();
    expect(dev.domain(1)).toBeUndefined();
    dev.systemReset();
    expect(dev.config[36]).toBe(0);
  });

  it('rejects bad options with ViommuError naming them', () => {
    expect(() => new VirtioIommu({ pageSizeMask: 0n })).toThrow(/pageSizeMask/);
    expect(() => new VirtioIommu({ iotlbEntries: 3 })).toThrow(/power of two/);
    expect(() => new VirtioIommu({ domainRange: { start: 5, end: 4 } })).toThrow(/domainRange/);
    const dev = device({ probeSize: 24 });
    expect(() => dev.addEndpoint(1)).toThrow(/already registered/);
    expect(() => dev.addEndpoint(9, { reserved: [{ start: 0n, end: 1n }, { start: 4n, end: 5n }] })).toThrow(/probeSize/);
    expect(() => dev.addEndpoint(-1)).toThrow(ViommuError);
    expect(() => dev.dmaMemory(77, undefined as never)).toThrow(/not registered/);
  });
});

describe('ATTACH and DETACH (§5.13.6.1, §5.13.6.2)', () => {
  it('creates the domain on first attach and removes it when its last endpoint leaves', () => {
    const dev = device();
    expect(attach(dev, 7, 1)).toBe(VIRTIO_IOMMU_S_OK);
    expect(attach(dev, 7, 2)).toBe(VIRTIO_IOMMU_S_OK);
    expect(dev.domain(7)!.endpoints.size).toBe(2);
    expect(map(dev, 7, 0x1000n, 0x1fffn, 0x5000n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(status(dev, detachRequest(7, 1))).toBe(VIRTIO_IOMMU_S_OK);
    expect(dev.domain(7)!.mappings.size).toBe(1);
    expect(status(dev, detachRequest(7, 2))).toBe(VIRTIO_IOMMU_S_OK);
    expect(dev.domain(7)).toBeUndefined();
    // The ID can be reused: a fresh domain has no mappings.
    expect(attach(dev, 7, 1)).toBe(VIRTIO_IOMMU_S_OK);
    expect(dev.domain(7)!.mappings.size).toBe(0);
  });

  it('moves an endpoint attached elsewhere, as DETACH then ATTACH', () => {
    const dev = device();
    attach(dev, 1, 1);
    map(dev, 1, 0x1000n, 0x1fffn, 0n);
    expect(attach(dev, 2, 1)).toBe(VIRTIO_IOMMU_S_OK);
    expect(dev.domain(1)).toBeUndefined();
    expect(dev.endpoint(1)!.domain!.id).toBe(2);
    expect(attach(dev, 2, 1)).toBe(VIRTIO_IOMMU_S_OK); // already there: no change
  });

  it('answers NOENT for an unknown endpoint, INVAL for reserved bytes or unknown flags', () => {
    const dev = device();
    expect(attach(dev, 1, 99)).toBe(VIRTIO_IOMMU_S_NOENT);
    const r = attachRequest(1, 1);
    r.readable[16] = 1;
    expect(status(dev, r)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(attach(dev, 1, 1, 1 << 5)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(dev.domain(1)).toBeUndefined();
  });

  it('rejects a bypass flag inconsistent with the existing domain without detaching the endpoint', () => {
    const dev = device();
    expect(attach(dev, 1, 1)).toBe(VIRTIO_IOMMU_S_OK);
    expect(attach(dev, 2, 2, VIRTIO_IOMMU_ATTACH_F_BYPASS)).toBe(VIRTIO_IOMMU_S_OK);
    expect(attach(dev, 2, 1)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(dev.endpoint(1)!.domain!.id).toBe(1);
    expect(attach(dev, 1, 2, VIRTIO_IOMMU_ATTACH_F_BYPASS)).toBe(VIRTIO_IOMMU_S_INVAL);
    // Without BYPASS_CONFIG negotiated the flag is not recognized.
    dev.ackFeatures(DEFAULT_FEATURES & ~bit(VIRTIO_IOMMU_F_BYPASS_CONFIG));
    expect(attach(dev, 3, 1, VIRTIO_IOMMU_ATTACH_F_BYPASS)).toBe(VIRTIO_IOMMU_S_INVAL);
  });

  it('limits domain IDs to domain_range when DOMAIN_RANGE is negotiated (RANGE), any u32 otherwise', () => {
    const dev = device({ domainRange: { start: 1, end: 10 } });
    expect(attach(dev, 0, 1)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(attach(dev, 11, 1)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(attach(dev, 10, 1)).toBe(VIRTIO_IOMMU_S_OK);
    dev.ackFeatures(DEFAULT_FEATURES & ~bit(VIRTIO_IOMMU_F_DOMAIN_RANGE));
    expect(attach(dev, 0xffff_ffff, 1)).toBe(VIRTIO_IOMMU_S_OK);
  });

  it('answers NOMEM beyond maxDomains, counting a domain the move frees', () => {
    const dev = device({ maxDomains: 1 });
    expect(attach(dev, 1, 1)).toBe(VIRTIO_IOMMU_S_OK);
    expect(attach(dev, 2, 2)).toBe(VIRTIO_IOMMU_S_NOMEM);
    expect(attach(dev, 2, 1)).toBe(VIRTIO_IOMMU_S_OK); // domain 1 goes away as 2 is made
  });

  it('refuses (UNSUPP) an endpoint whose reserved regions the domain maps', () => {
    const dev = device();
    dev.addEndpoint(3, { reserved: [{ start: 0x8000n, end: 0x8fffn }] });
    attach(dev, 1, 1);
    map(dev, 1, 0x8000n, 0x8fffn, 0n);
    expect(attach(dev, 1, 3)).toBe(VIRTIO_IOMMU_S_UNSUPP);
    expect(attach(dev, 2, 3)).toBe(VIRTIO_IOMMU_S_OK);
  });

  it('DETACH: NOENT for an unknown endpoint, INVAL for the wrong domain or an unattached endpoint; reserved ignored', () => {
    const dev = device();
    attach(dev, 1, 1);
    expect(status(dev, detachRequest(1, 42))).toBe(VIRTIO_IOMMU_S_NOENT);
    expect(status(dev, detachRequest(2, 1))).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(status(dev, detachRequest(1, 2))).toBe(VIRTIO_IOMMU_S_INVAL);
    const r = detachRequest(1, 1);
    r.readable.fill(0xee, 12, 20);
    expect(status(dev, r)).toBe(VIRTIO_IOMMU_S_OK);
  });
});

describe('MAP (§5.13.6.3)', () => {
  it('maps and refuses any overlap with INVAL', () => {
    const dev = device();
    attach(dev, 1, 1);
    expect(map(dev, 1, 0x1000n, 0x2fffn, 0x10000n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(map(dev, 1, 0x2000n, 0x3fffn, 0n)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(map(dev, 1, 0x0n, 0x1fffn, 0n)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(map(dev, 1, 0x0n, 0xffffn, 0n)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(map(dev, 1, 0x3000n, 0x3fffn, 0n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(dev.domain(1)!.mappings.size).toBe(2);
  });

  it('answers RANGE for misaligned virt_start, phys_start or virt_end + 1', () => {
    const dev = device();
    attach(dev, 1, 1);
    expect(map(dev, 1, 0x1001n, 0x1fffn, 0n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(map(dev, 1, 0x1000n, 0x1ffen, 0n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(map(dev, 1, 0x1000n, 0x1fffn, 0x800n)).toBe(VIRTIO_IOMMU_S_RANGE);
    // A one-byte granule accepts a one-byte mapping.
    const fine = device({ pageSizeMask: 1n });
    attach(fine, 1, 1);
    expect(map(fine, 1, 5n, 5n, 9n)).toBe(VIRTIO_IOMMU_S_OK);
  });

  it('handles the top of the 64-bit space exactly', () => {
    const dev = device();
    attach(dev, 1, 1);
    expect(map(dev, 1, U64_MAX - 0xfffn, U64_MAX, 0x1000n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(map(dev, 1, U64_MAX - 0x1fffn, U64_MAX - 0x1000n, 0x2000n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(map(dev, 1, U64_MAX - 0x1fffn, U64_MAX - 0x1000n, 0x2000n)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(dev.domain(1)!.mappings.find(U64_MAX)!.physStart).toBe(0x1000n);
    expect(dev.domain(1)!.mappings.find(U64_MAX - 0x1000n)!.physStart).toBe(0x2000n);
    // phys_end past 2^64 − 1
    expect(map(dev, 1, 0x0n, 0x1fffn, U64_MAX - 0xfffn)).toBe(VIRTIO_IOMMU_S_RANGE);
  });

  it('answers INVAL for virt_end < virt_start and for unknown flags; MMIO only with F_MMIO', () => {
    const dev = device();
    attach(dev, 1, 1);
    expect(map(dev, 1, 0x2000n, 0xfffn, 0n)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(map(dev, 1, 0x1000n, 0x1fffn, 0n, 8)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(map(dev, 1, 0x1000n, 0x1fffn, 0n, VIRTIO_IOMMU_MAP_F_MMIO | W)).toBe(VIRTIO_IOMMU_S_OK);
    dev.ackFeatures(DEFAULT_FEATURES & ~bit(VIRTIO_IOMMU_F_MMIO));
    expect(map(dev, 1, 0x2000n, 0x2fffn, 0n, VIRTIO_IOMMU_MAP_F_MMIO | W)).toBe(VIRTIO_IOMMU_S_INVAL);
  });

  it('answers NOENT for an unknown domain and INVAL for a bypass domain', () => {
    const dev = device();
    expect(map(dev, 5, 0x1000n, 0x1fffn, 0n)).toBe(VIRTIO_IOMMU_S_NOENT);
    attach(dev, 2, 1, VIRTIO_IOMMU_ATTACH_F_BYPASS);
    expect(map(dev, 2, 0x1000n, 0x1fffn, 0n)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(unmap(dev, 2, 0x1000n, 0x1fffn)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(unmap(dev, 5, 0x1000n, 0x1fffn)).toBe(VIRTIO_IOMMU_S_NOENT);
  });

  it('answers RANGE outside input_range when negotiated, and for a phys range past physLimit', () => {
    const dev = device({ inputRange: { start: 0x10000n, end: 0xfffff_ffffn }, physLimit: 0xffff_ffffn });
    attach(dev, 1, 1);
    expect(map(dev, 1, 0xf000n, 0xffffn, 0n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(map(dev, 1, 0xfffff_f000n, 0x1_00000_0fffn, 0n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(map(dev, 1, 0x10000n, 0x10fffn, 0xffff_f000n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(map(dev, 1, 0x20000n, 0x21fffn, 0xffff_f000n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(unmap(dev, 1, 0n, 0xfffn)).toBe(VIRTIO_IOMMU_S_RANGE);
    dev.ackFeatures(DEFAULT_FEATURES & ~bit(VIRTIO_IOMMU_F_INPUT_RANGE));
    expect(map(dev, 1, 0xf000n, 0xffffn, 0n)).toBe(VIRTIO_IOMMU_S_OK);
  });

  it('answers RANGE for a MAP over a RESV_MEM region of an attached endpoint (§5.13.6.6.1)', () => {
    const dev = device();
    dev.addEndpoint(3, { reserved: [{ start: 0xfee0_0000n, end: 0xfeef_ffffn, subtype: VIRTIO_IOMMU_RESV_MEM_T_MSI }] });
    attach(dev, 1, 3);
    expect(map(dev, 1, 0xfee0_0000n, 0xfee0_0fffn, 0n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(map(dev, 1, 0xfed0_0000n, 0xfee0_0fffn, 0n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(map(dev, 1, 0xfef0_0000n, 0xfef0_0fffn, 0n)).toBe(VIRTIO_IOMMU_S_OK);
  });

  it('answers NOMEM beyond maxMappingsPerDomain', () => {
    const dev = device({ maxMappingsPerDomain: 2 });
    attach(dev, 1, 1);
    expect(map(dev, 1, 0x1000n, 0x1fffn, 0n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(map(dev, 1, 0x2000n, 0x2fffn, 0n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(map(dev, 1, 0x3000n, 0x3fffn, 0n)).toBe(VIRTIO_IOMMU_S_NOMEM);
    expect(unmap(dev, 1, 0x1000n, 0x1fffn)).toBe(VIRTIO_IOMMU_S_OK);
    expect(map(dev, 1, 0x3000n, 0x3fffn, 0n)).toBe(VIRTIO_IOMMU_S_OK);
  });

  it('answers UNSUPP for MAP and UNMAP when MAP_UNMAP is not negotiated', () => {
    const dev = device();
    attach(dev, 1, 1);
    dev.ackFeatures(DEFAULT_FEATURES & ~bit(VIRTIO_IOMMU_F_MAP_UNMAP));
    expect(map(dev, 1, 0x1000n, 0x1fffn, 0n)).toBe(VIRTIO_IOMMU_S_UNSUPP);
    expect(unmap(dev, 1, 0x1000n, 0x1fffn)).toBe(VIRTIO_IOMMU_S_UNSUPP);
  });
});

describe('UNMAP (§5.13.6.4): the seven examples of the specification', () => {
  const K = 0x1000n;
  // Addresses in the spec's examples are in units; a unit here is one 4 KiB page.
  const mp = (dev: VirtioIommu, a: bigint, b: bigint) => map(dev, 1, a * K, b * K + K - 1n, a * K);
  const um = (dev: VirtioIommu, a: bigint, b: bigint) => unmap(dev, 1, a * K, b * K + K - 1n);
  const fresh = () => {
    const dev = device();
    attach(dev, 1, 1);
    return dev;
  };
  const count = (dev: VirtioIommu) => dev.domain(1)!.mappings.size;

  it('(1) unmap(0,4) on a blank space succeeds', () => {
    const dev = fresh();
    expect(um(dev, 0n, 4n)).toBe(VIRTIO_IOMMU_S_OK);
  });
  it('(2) map(0,9); unmap(0,9) unmaps it', () => {
    const dev = fresh();
    mp(dev, 0n, 9n);
    expect(um(dev, 0n, 9n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(count(dev)).toBe(0);
  });
  it('(3) map(0,4), map(5,9); unmap(0,9) unmaps both', () => {
    const dev = fresh();
    mp(dev, 0n, 4n);
    mp(dev, 5n, 9n);
    expect(um(dev, 0n, 9n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(count(dev)).toBe(0);
  });
  it('(4) map(0,9); unmap(0,4) fails with RANGE and unmaps nothing', () => {
    const dev = fresh();
    mp(dev, 0n, 9n);
    expect(um(dev, 0n, 4n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(count(dev)).toBe(1);
  });
  it('(5) map(0,4), map(5,9); unmap(0,4) unmaps only the first', () => {
    const dev = fresh();
    mp(dev, 0n, 4n);
    mp(dev, 5n, 9n);
    expect(um(dev, 0n, 4n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(count(dev)).toBe(1);
    expect(dev.domain(1)!.mappings.find(5n * K)).toBeDefined();
  });
  it('(6) map(0,4); unmap(0,9) unmaps it', () => {
    const dev = fresh();
    mp(dev, 0n, 4n);
    expect(um(dev, 0n, 9n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(count(dev)).toBe(0);
  });
  it('(7) map(0,4), map(10,14); unmap(0,14) unmaps both', () => {
    const dev = fresh();
    mp(dev, 0n, 4n);
    mp(dev, 10n, 14n);
    expect(um(dev, 0n, 14n)).toBe(VIRTIO_IOMMU_S_OK);
    expect(count(dev)).toBe(0);
  });
  it('removes nothing when the last mapping of the range would be split (unlike QEMU, which removes up to it)', () => {
    const dev = fresh();
    mp(dev, 0n, 4n);
    mp(dev, 5n, 9n);
    expect(um(dev, 0n, 7n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(count(dev)).toBe(2);
    expect(um(dev, 2n, 9n)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(count(dev)).toBe(2);
  });
  it('answers INVAL (and unmaps nothing) for nonzero reserved bytes, and for virt_end < virt_start', () => {
    const dev = fresh();
    mp(dev, 0n, 0n);
    const r = unmapRequest(1, 0n, 0xfffn);
    r.readable[25] = 1;
    expect(status(dev, r)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(count(dev)).toBe(1);
    expect(unmap(dev, 1, 0x1000n, 0n)).toBe(VIRTIO_IOMMU_S_INVAL);
  });
  it('unmaps the whole 64-bit space in one request', () => {
    const dev = fresh();
    mp(dev, 0n, 0n);
    map(dev, 1, U64_MAX - 0xfffn, U64_MAX, 0n);
    expect(unmap(dev, 1, 0n, U64_MAX)).toBe(VIRTIO_IOMMU_S_OK);
    expect(count(dev)).toBe(0);
  });
});

describe('PROBE (§5.13.6.5) with RESV_MEM properties', () => {
  it('lists the reserved regions, zero-fills the rest and puts the tail after probe_size', () => {
    const dev = device({ probeSize: 64 });
    dev.addEndpoint(5, { reserved: [{ start: 0xfee0_0000n, end: 0xfeef_ffffn, subtype: VIRTIO_IOMMU_RESV_MEM_T_MSI }, { start: 0n, end: 0xfffn }] });
    const r = probeRequest(5, 64);
    r.writable.fill(0xcc);
    const [st, used] = send(dev, r);
    expect(st).toBe(VIRTIO_IOMMU_S_OK);
    expect(used).toBe(68);
    const w = r.writable;
    // Sorted by start: [0, 0xfff] RESERVED first, then the MSI doorbell.
    expect([...w.subarray(0, 8)]).toEqual([1, 0, 20, 0, 0, 0, 0, 0]);
    expect([...w.subarray(24, 32)]).toEqual([1, 0, 20, 0, 1, 0, 0, 0]);
    expect([...w.subarray(48, 64)].every((b) => b === 0)).toBe(true);
    expect(parseProbeProperties(w.subarray(0, 64))).toEqual([
      { subtype: 0, start: 0n, end: 0xfffn },
      { subtype: 1, start: 0xfee0_0000n, end: 0xfeef_ffffn },
    ]);
  });

  it('NOENT for an unknown endpoint; INVAL, with no property written, for a short properties buffer', () => {
    const dev = device({ probeSize: 64 });
    expect(send(dev, probeRequest(99, 64))).toEqual([VIRTIO_IOMMU_S_NOENT, 68]);
    const short = probeRequest(1, 32);
    short.writable.fill(0xcc);
    const [st, used] = send(dev, short);
    expect([st, used]).toEqual([VIRTIO_IOMMU_S_INVAL, 36]);
    expect([...short.writable.subarray(0, 32)].every((b) => b === 0)).toBe(true);
    const shortRead = raw([5, 0, 0, 0, 1, 0, 0, 0], 68);
    expect(send(dev, shortRead)).toEqual([VIRTIO_IOMMU_S_INVAL, 68]);
  });

  it('is not written (used length 0) when the device does not offer PROBE', () => {
    const dev = device({ features: DEFAULT_FEATURES & ~bit(VIRTIO_IOMMU_F_PROBE) });
    expect(dev.config[32]).toBe(0);
    const r = probeRequest(1, 512);
    expect(send(dev, r)[1]).toBe(0);
    expect(r.writable.every((b) => b === 0)).toBe(true);
  });
});

describe('malformed requests', () => {
  it('a request too short to hold a head, or an unknown type, is returned unwritten with used length 0', () => {
    const dev = device();
    for (const r of [raw([], 4), raw([1, 0], 4), raw([0, 0, 0, 0], 4), raw([6, 0, 0, 0, 0, 0, 0, 0], 4), raw([0xff, 0, 0, 0], 4)]) {
      r.writable.fill(0xcc);
      const [st, used] = send(dev, r);
      expect(used).toBe(0);
      expect(st).toBe(VIRTIO_IOMMU_S_IOERR); // how the driver reads used length 0
      expect(r.writable.every((b) => b === 0xcc)).toBe(true);
    }
    expect(dev.stats.dropped).toBe(5);
  });

  it('a known type whose payload is short gets INVAL and changes nothing', () => {
    const dev = device();
    attach(dev, 1, 1);
    for (const full of [attachRequest(2, 2), detachRequest(1, 1), mapRequest(1, 0n, 0xfffn, 0n, RW), unmapRequest(1, 0n, 0xfffn)]) {
      for (const cut of [4, full.readable.length - 1]) {
        const r = raw(full.readable.subarray(0, cut));
        expect(send(dev, r)).toEqual([VIRTIO_IOMMU_S_INVAL, 4]);
      }
    }
    expect(dev.endpoint(1)!.domain!.id).toBe(1);
    expect(dev.endpoint(2)!.domain).toBeUndefined();
    expect(dev.domain(1)!.mappings.size).toBe(0);
  });

  it('no room for the tail: nothing written, used length 0', () => {
    const dev = device();
    const r = attachRequest(1, 1);
    const noTail = raw(r.readable, 3);
    expect(send(dev, noTail)[1]).toBe(0);
    expect(dev.endpoint(1)!.domain).toBeUndefined();
  });

  it('extra readable bytes are ignored; the tail reserved bytes are zeroed; head reserved bytes ignored', () => {
    const dev = device();
    const r = attachRequest(1, 1);
    const longer = new Uint8Array(40);
    longer.set(r.readable);
    longer[1] = 0xff;
    const req = raw(longer, 8);
    req.writable.fill(0xcc);
    expect(send(dev, req)).toEqual([VIRTIO_IOMMU_S_OK, 4]);
    expect([...req.writable]).toEqual([0, 0, 0, 0, 0xcc, 0xcc, 0xcc, 0xcc]);
  });

  it('counts statuses', () => {
    const dev = device();
    attach(dev, 1, 1);
    map(dev, 9, 0n, 0xfffn, 0n);
    expect(dev.stats.statuses[VIRTIO_IOMMU_S_OK]).toBe(1);
    expect(dev.stats.statuses[VIRTIO_IOMMU_S_NOENT]).toBe(1);
    expect(dev.stats.requests).toBe(2);
  });
});
