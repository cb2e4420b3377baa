import { GuestMemory } from '@ioplane/guest-memory';
import { DirectTransport, VirtioIommuDevice, VirtioIommuDriver } from '../src/index.js';
const mem = GuestMemory.create(32 << 20);
const ref: { iommu?: VirtioIommuDriver } = {};
const dev = new VirtioIommuDevice({ mem, interrupts: { queue: (q) => void ref.iommu?.handleInterrupt(q), config: () => undefined } });
dev.iommu.addEndpoint(8);
const iommu = await VirtioIommuDriver.create({ transport: new DirectTransport(dev), mem, area: { addr: 0x10000, len: VirtioIommuDriver.areaSize() }, now: () => performance.now() });
ref.iommu = iommu;
const dom = iommu.iommu.attach(8, { mode: 'deferred' });
dom.mapAt(0x100000, 0x100000, 3 << 20, 'bidirectional');
const dma = dev.iommu.dmaMemory(8, mem);
const W = Number(process.env.W ?? 28);
const iovas = new Array<number>(W).fill(0);
const out: Uint8Array[] = [];
for (let r = 0; r < 8; r++) {
  const n = 400000 / W;
  const t0 = performance.now();
  for (let k = 0; k < n; k++) {
    for (let i = 0; i < W; i++) iovas[i] = dom.queueMap((8 << 20) + i * 4096, 4096, 'from-device');
    dom.syncMaps();
    for (let i = 0; i < W; i++) { dma.checkRange(iovas[i]!, 4096, 'write'); }
    for (let i = 0; i < W; i++) { out.length = 0; dma.slices(iovas[i]!, 4096, 'write', out); }
    for (let i = 0; i < W; i++) dom.unmap(iovas[i]!);
  }
  console.log('W', W, (((performance.now() - t0) * 1e6) / (n * W)).toFixed(0), 'ns per map+dma+unmap');
}
