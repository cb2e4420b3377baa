/**
 * The virtio-iommu MAP/UNMAP request path alone, without virtio-blk: waves of
 * QD maps (`queueMap` + one `syncMaps`) and QD unmaps through
 * `VirtioIommuDriver` → request virtqueue → `VirtioIommuDevice`, as the
 * bench:iommu loop does per wave. `vtd-…` modes: the same on the VT-d unit
 * (`VtdGuestDriver` writing page tables, unmaps as IOTLB invalidations).
 * Prints ns per map+unmap pair, median of ROUNDS.
 *   tsx --conditions=@ioplane/source bench/iommu-path.ts   (ROUNDS=9 WAVES=4000 QD=32 TOUCH=1 MODES=strict,deferred,strict-batch,vtd-strict,vtd-deferred,vtd-strict-batch)
 */
import { GuestMemory } from '@ioplane/guest-memory';
import { type DmaMapper, VtdGuestDriver, VtdRemapper } from '@ioplane/viommu';
import { DirectTransport, VirtioIommuDevice, VirtioIommuDriver } from '../src/index.js';

const ROUNDS = Number(process.env.ROUNDS ?? 9);
const WAVES = Number(process.env.WAVES ?? 4000);
const QD = Number(process.env.QD ?? 32);
/** TOUCH=1: after each wave's syncMaps, translate each new buffer once as a virtqueue pop does (translateRange). */
const TOUCH = process.env.TOUCH === '1';
const MODES = (process.env.MODES ?? 'strict,strict-batch,deferred').split(',');
const DATA = 8 << 20;
const EP = 8;

async function rig(mode: string): Promise<{ domain: DmaMapper; dma: ReturnType<VtdRemapper['dmaMemory']> }> {
  const mem = GuestMemory.create(32 << 20);
  if (mode.startsWith('vtd-')) {
    const vtd = new VtdRemapper({ memory: mem });
    const drv = new VtdGuestDriver({ unit: vtd, mem, area: { addr: 0x600000, len: 1 << 20 }, now: process.env.CLOCK === '0' ? () => 0 : () => performance.now() });
    const m = mode.slice(4);
    return { domain: drv.attach(EP, { mode: m === 'strict-batch' ? 'strict' : (m as 'strict' | 'deferred') }), dma: vtd.dmaMemory(EP, mem) };
  }
  const ref: { iommu?: VirtioIommuDriver } = {};
  const dev = new VirtioIommuDevice({ mem, interrupts: { queue: (q) => void ref.iommu?.handleInterrupt(q), config: () => undefined } });
  dev.iommu.addEndpoint(EP);
  const iommu = await VirtioIommuDriver.create({ transport: new DirectTransport(dev), mem, area: { addr: 0x10000, len: VirtioIommuDriver.areaSize() }, now: () => performance.now() });
  ref.iommu = iommu;
  const domain = iommu.iommu.attach(EP, { mode: mode === 'strict-batch' ? 'strict' : (mode as 'strict' | 'deferred') });
  return { domain, dma: dev.iommu.dmaMemory(EP, mem) };
}

const iovas = new Array<number>(QD).fill(0);
for (const mode of MODES) {
  const { domain, dma } = await rig(mode);
  const batch = mode.endsWith('strict-batch');
  const res: number[] = [];
  for (let r = -1; r < ROUNDS; r++) {
    const t0 = performance.now();
    for (let w = 0; w < WAVES; w++) {
      for (let i = 0; i < QD; i++) iovas[i] = domain.queueMap(DATA + i * 4096, 4096, 'from-device');
      domain.syncMaps();
      if (TOUCH) for (let i = 0; i < QD; i++) dma.translateRange(iovas[i]!, 4096, 'write');
      if (batch) domain.unmapMany(iovas, QD);
      else for (let i = 0; i < QD; i++) domain.unmap(iovas[i]!);
    }
    const ns = ((performance.now() - t0) * 1e6) / (WAVES * QD);
    if (r >= 0) res.push(ns);
  }
  res.sort((a, b) => a - b);
  console.log(`${mode}: ${res[res.length >> 1]!.toFixed(0)} ns per map+unmap (min ${res[0]!.toFixed(0)}, max ${res[res.length - 1]!.toFixed(0)}), ${(domain.stats.requests / domain.stats.batches).toFixed(1)} requests per submission`);
}
