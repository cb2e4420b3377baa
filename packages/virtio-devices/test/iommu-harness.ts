import { MemoryBackend } from '@ioplane/blk-backends';
import { GuestMemory } from '@ioplane/guest-memory';
import type { DmaDomain, DmaDomainOptions } from '@ioplane/viommu';
import { DirectTransport, VirtioBlkDevice, VirtioBlkDriver, type VirtioError, VirtioIommuDevice, VirtioIommuDriver } from '../src/index.js';

/** Guest memory layout of the harness: the virtio-iommu driver's area, the virtio-blk driver's area, data. */
export const MEM = 16 << 20;
export const IOMMU_AREA = 0x10000;
export const BLK_AREA = { addr: 0x100000, len: 3 << 20 };
export const BLK_ENDPOINT = 8; // 00:01.0

export interface IommuHarness {
  mem: GuestMemory;
  backend: MemoryBackend;
  iommuDev: VirtioIommuDevice;
  iommu: VirtioIommuDriver;
  /** The domain the virtio-blk endpoint is attached to; the blk driver's area is identity-mapped in it. */
  domain: DmaDomain;
  blkDev: VirtioBlkDevice;
  blk: VirtioBlkDriver;
  errors: VirtioError[];
  close(): Promise<void>;
}

/**
 * One thread, two devices: a virtio-iommu device driven over its virtqueues
 * by `VirtioIommuDriver`, and a virtio-blk device (endpoint 8) whose every
 * access to guest memory — rings and buffers — goes through
 * `iommu.dmaMemory(8, ram)`. The guest attaches the endpoint to a domain and
 * identity-maps the blk driver's area (rings, headers, status bytes) before
 * the blk driver starts; data buffers are mapped by the test.
 */
export async function iommuHarness(opts: { domain?: DmaDomainOptions; now?: () => number; backendSize?: number } = {}): Promise<IommuHarness> {
  const mem = GuestMemory.create(MEM);
  const errors: VirtioError[] = [];
  const ref: { iommu?: VirtioIommuDriver; blk?: VirtioBlkDriver } = {};
  const iommuDev = new VirtioIommuDevice({
    mem,
    interrupts: { queue: (q) => void ref.iommu?.handleInterrupt(q), config: () => undefined },
    onGuestError: (e) => errors.push(e),
  });
  iommuDev.iommu.addEndpoint(BLK_ENDPOINT);
  const iommu = await VirtioIommuDriver.create({
    transport: new DirectTransport(iommuDev),
    mem,
    area: { addr: IOMMU_AREA, len: VirtioIommuDriver.areaSize() },
    ...(opts.now ? { now: opts.now } : {}),
  });
  ref.iommu = iommu;
  const domain = iommu.iommu.attach(BLK_ENDPOINT, opts.domain);
  domain.mapAt(BLK_AREA.addr, BLK_AREA.addr, BLK_AREA.len, 'bidirectional');
  const backend = new MemoryBackend({ size: opts.backendSize ?? 1 << 20 });
  const blkDev = new VirtioBlkDevice({
    mem: iommuDev.iommu.dmaMemory(BLK_ENDPOINT, mem),
    backend,
    interrupts: { queue: (q) => void ref.blk?.handleInterrupt(q), config: () => void ref.blk?.handleConfigChange() },
    onGuestError: (e) => errors.push(e),
  });
  const blk = await VirtioBlkDriver.create({ transport: new DirectTransport(blkDev), mem, area: BLK_AREA });
  ref.blk = blk;
  return {
    mem,
    backend,
    iommuDev,
    iommu,
    domain,
    blkDev,
    blk,
    errors,
    close: () => blk.close(),
  };
}
