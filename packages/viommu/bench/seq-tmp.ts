import { GuestMemory } from '@ioplane/guest-memory';
import { VirtioIommu, GuestIommuDriver, directTransport, parseConfig } from '../src/index.js';
const ram = GuestMemory.create(32 << 20);
const iommu = new VirtioIommu();
iommu.addEndpoint(8);
const dma = iommu.dmaMemory(8, ram);
const drv = new GuestIommuDriver(directTransport(iommu), parseConfig(iommu.config));
const dom = drv.attach(8, { mode: 'strict' });
const BLK = 0x100000;
dom.mapAt(BLK, BLK, 3 << 20, 'bidirectional');
const fixed: number[] = [];
for (let i = 0; i < 32; i++) fixed.push(dom.map((8 << 20) + i * 4096, 4096, 'from-device'));
const hdr = new Uint8Array(16);
const out: Uint8Array[] = [];
function seq(m: any, addrs: number[], n: number): number {
  let x = 0;
  for (let k = 0; k < n; k++) {
    const slot = k & 31;
    const t = BLK + 0x1000 + slot * 64;
    const v = m.tryView(t, 48, 'read'); x += v.length;
    m.checkRange(t + 1024, 16, 'read');
    m.checkRange(addrs[slot], 4096, 'write');
    m.checkRange(t + 2048, 1, 'write');
    m.readInto(t + 1024, hdr);
    out.length = 0; m.slices(addrs[slot], 4096, 'write', out);
    m.writeU8(t + 2048, 0);
  }
  return x;
}
const direct = Array.from({ length: 32 }, (_, i) => (8 << 20) + i * 4096);
for (let r = 0; r < 6; r++) {
  for (const [name, m, a] of [['direct', ram, direct], ['iommu', dma, fixed]] as const) {
    const n = 1_000_000; const t0 = performance.now(); seq(m, a as number[], n); const ns = ((performance.now() - t0) * 1e6) / n;
    console.log(name, ns.toFixed(0), 'ns/request');
  }
}
