import { MemoryBackend } from '@ioplane/blk-backends';
import { GuestMemory } from '@ioplane/guest-memory';
import { type DmaDomainOptions, type TranslatingMemory, VIRTIO_IOMMU_FAULT_F_ADDRESS, VIRTIO_IOMMU_FAULT_F_WRITE, VIRTIO_IOMMU_FAULT_R_MAPPING } from '@ioplane/viommu';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { DirectTransport, VirtioBlkDevice, VirtioBlkDriver, type VirtioError, VirtioIommuDevice, VirtioIommuDriver, type VirtioTransportTarget } from '../src/index.js';
import { pattern } from './harness.js';
import { BLK_AREA, BLK_ENDPOINT, IOMMU_AREA, MEM } from './iommu-harness.js';

const DATA = 0x800000;

/** DirectTransport whose kicks can be held back: the guest makes requests available, the device sees them on `release()`. */
class GatedTransport extends DirectTransport {
  hold = false;
  private readonly held: number[] = [];
  constructor(device: VirtioTransportTarget) {
    super(device);
  }
  override notify(q: number): void {
    if (this.hold) this.held.push(q);
    else super.notify(q);
  }
  release(): void {
    this.hold = false;
    for (const q of this.held.splice(0)) super.notify(q);
  }
}

/** A back-end whose reads wait until the test lets them finish (requests stay in flight). */
class HeldBackend extends MemoryBackend {
  hold = false;
  private readonly waiting: (() => void)[] = [];
  override async read(offset: number, bufs: Uint8Array[]): Promise<void> {
    if (this.hold) await new Promise<void>((r) => this.waiting.push(r));
    return super.read(offset, bufs);
  }
  finish(): void {
    this.hold = false;
    for (const r of this.waiting.splice(0)) r();
  }
}

interface Rig {
  mem: GuestMemory;
  backend: HeldBackend;
  iommu: VirtioIommuDriver;
  domain: ReturnType<VirtioIommuDriver['iommu']['attach']>;
  dma: TranslatingMemory;
  gate: GatedTransport;
  blk: VirtioBlkDriver;
  errors: VirtioError[];
}

let open: Rig | undefined;
afterEach(async () => {
  await open?.blk.close();
  open = undefined;
});

async function rig(domainOpts: DmaDomainOptions = {}, now?: () => number): Promise<Rig> {
  const mem = GuestMemory.create(MEM);
  const errors: VirtioError[] = [];
  const ref: { iommu?: VirtioIommuDriver; blk?: VirtioBlkDriver } = {};
  const iommuDev = new VirtioIommuDevice({ mem, interrupts: { queue: (q) => void ref.iommu?.handleInterrupt(q), config: () => undefined }, onGuestError: (e) => errors.push(e) });
  iommuDev.iommu.addEndpoint(BLK_ENDPOINT);
  const iommu = await VirtioIommuDriver.create({ transport: new DirectTransport(iommuDev), mem, area: { addr: IOMMU_AREA, len: VirtioIommuDriver.areaSize() }, ...(now ? { now } : {}) });
  ref.iommu = iommu;
  const domain = iommu.iommu.attach(BLK_ENDPOINT, domainOpts);
  domain.mapAt(BLK_AREA.addr, BLK_AREA.addr, BLK_AREA.len, 'bidirectional');
  const backend = new HeldBackend({ size: 1 << 20 });
  await backend.write(0, [pattern(1 << 20, 5)]);
  const dma = iommuDev.iommu.dmaMemory(BLK_ENDPOINT, mem);
  const dev = new VirtioBlkDevice({ mem: dma, backend, interrupts: { queue: (q) => void ref.blk?.handleInterrupt(q), config: () => undefined }, onGuestError: (e) => errors.push(e) });
  const gate = new GatedTransport(dev);
  const blk = await VirtioBlkDriver.create({ transport: gate, mem, area: BLK_AREA });
  ref.blk = blk;
  open = { mem, backend, iommu, domain, dma, gate, blk, errors };
  return open;
}

const disk = pattern(1 << 20, 5);
const sectorData = (sector: number, len: number): Uint8Array => disk.subarray(sector * 512, sector * 512 + len);

describe('virtio-blk through the vIOMMU, each descriptor translated once', () => {
  it('strict: a buffer unmapped between avail and processing fails the request with IOERR and one fault, as before', async () => {
    const r = await rig({ mode: 'strict' });
    r.mem.fill(DATA, 4096, 0xcc);
    const iova = r.domain.map(DATA, 4096, 'from-device');
    r.gate.hold = true;
    const p = r.blk.read(8, iova, 4096);
    await Promise.resolve(); // the driver publishes in a microtask; the kick is held
    r.domain.unmap(iova); // strict: revoked when this returns
    r.gate.release();
    await expect(p).rejects.toMatchObject({ kind: 'io-error' });
    expect(r.iommu.events).toEqual([{ reason: VIRTIO_IOMMU_FAULT_R_MAPPING, flags: VIRTIO_IOMMU_FAULT_F_WRITE | VIRTIO_IOMMU_FAULT_F_ADDRESS, endpoint: BLK_ENDPOINT, address: BigInt(iova) }]);
    expect(r.mem.view(DATA, 4096, 'read').every((b) => b === 0xcc)).toBe(true);
    // The device carries on: the next request, mapped, succeeds.
    const again = r.domain.map(DATA, 4096, 'from-device');
    await r.blk.read(16, again, 4096);
    expect(r.mem.view(DATA, 4096, 'read')).toEqual(sectorData(16, 4096));
  });

  it('strict: an unmap of another request\'s buffer while one is in flight does not cost it its carried translations', async () => {
    const r = await rig({ mode: 'strict' });
    const a = r.domain.map(DATA, 4096, 'from-device');
    const b = r.domain.map(DATA + 0x1000, 4096, 'from-device');
    await r.blk.read(0, b, 4096); // warm up
    r.backend.hold = true;
    const p = r.blk.read(24, a, 4096);
    const q = r.blk.read(32, b, 4096);
    await new Promise((res) => setImmediate(res)); // both popped, parsed, in the back-end
    const writeU8 = vi.spyOn(r.dma, 'writeU8');
    const slices = vi.spyOn(r.dma, 'slices');
    r.domain.unmap(b); // strict UNMAP of the second request's buffer, while both are in flight
    r.backend.finish();
    await p;
    // The second one's data views were taken before the unmap (as with QEMU's dma_memory_map): it completes too.
    await q;
    expect(r.mem.view(DATA, 4096, 'read')).toEqual(sectorData(24, 4096));
    // Both status bytes (in the identity-mapped ring area, untouched by the UNMAP) went through their carried translation.
    expect(writeU8).not.toHaveBeenCalled();
    expect(slices).not.toHaveBeenCalled();
    expect(r.iommu.events).toHaveLength(0);
  });

  for (const mode of ['static', 'deferred', 'strict', 'optimistic'] as const) {
    it(`${mode}: 64 reads, 16 deep, land exactly where the guest asked, with no fault and nothing outside them touched`, async () => {
      let now = 0;
      const r = await rig({ mode: mode === 'static' ? 'strict' : mode }, () => now);
      r.mem.fill(DATA - 4096, 18 * 4096, 0x5a);
      const fixed = mode === 'static' ? Array.from({ length: 16 }, (_, i) => r.domain.map(DATA + i * 4096, 4096, 'from-device')) : [];
      for (let wave = 0; wave < 4; wave++) {
        const iovas = mode === 'static' ? fixed : Array.from({ length: 16 }, (_, i) => r.domain.map(DATA + i * 4096, 4096, 'from-device'));
        await Promise.all(iovas.map((iova, i) => r.blk.read((wave * 16 + i) * 8, iova, 4096)));
        for (let i = 0; i < 16; i++) expect(r.mem.view(DATA + i * 4096, 4096, 'read')).toEqual(sectorData((wave * 16 + i) * 8, 4096));
        if (mode !== 'static') for (const iova of iovas) r.domain.unmap(iova);
        now += 20;
      }
      expect(r.mem.view(DATA - 4096, 4096, 'read').every((x) => x === 0x5a)).toBe(true);
      expect(r.mem.view(DATA + 16 * 4096, 4096, 'read').every((x) => x === 0x5a)).toBe(true);
      expect(r.iommu.events).toHaveLength(0);
      expect(r.errors).toHaveLength(0);
    });
  }

  it('deferred: a buffer the guest unmapped but has not flushed is still reachable; after the flush, a request faults', async () => {
    let now = 0;
    const r = await rig({ mode: 'deferred', flushDelayMs: 10 }, () => now);
    const iova = r.domain.map(DATA, 4096, 'from-device');
    await r.blk.read(0, iova, 4096);
    r.domain.unmap(iova);
    await r.blk.read(8, iova, 4096); // the mode's documented window
    expect(r.mem.view(DATA, 4096, 'read')).toEqual(sectorData(8, 4096));
    now = 10;
    r.domain.expire();
    await expect(r.blk.read(16, iova, 4096)).rejects.toMatchObject({ kind: 'io-error' });
    expect(r.iommu.events).toHaveLength(1);
  });

  it('writes: the header and data are read through the carried translations', async () => {
    const r = await rig({ mode: 'strict' });
    const iova = r.domain.map(DATA, 8192, 'to-device');
    r.mem.writeFrom(DATA, pattern(8192, 11));
    const readInto = vi.spyOn(r.dma, 'readInto');
    const slices = vi.spyOn(r.dma, 'slices');
    await r.blk.write(64, iova, 8192);
    expect(readInto).not.toHaveBeenCalled();
    expect(slices).not.toHaveBeenCalled();
    const back = new Uint8Array(8192);
    await r.backend.read(64 * 512, [back]);
    expect(back).toEqual(pattern(8192, 11));
  });
});
