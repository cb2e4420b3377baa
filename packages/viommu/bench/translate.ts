/**
 * Translation throughput of @ioplane/viommu against direct guest-memory
 * access, measured in the same run: `pnpm --filter @ioplane/viommu bench`.
 *
 * Scenarios (each run alternates all of them; medians over RUNS runs):
 *  - direct          GuestMemory.readU32, the baseline
 *  - one page        readU32 within one page, direct and translated (TranslatingMemory's run cache)
 *  - iotlb-hit       readU32 through a virtio-iommu domain, working set (64 pages) inside the IOTLB
 *  - iotlb-miss      4096 single-page mappings visited in a scattered order with a 512-entry IOTLB
 *  - no-iotlb        the same 4096 mappings with the IOTLB off (every access walks the table)
 *  - vtd-hit/-miss   the VT-d walker (4-level tables) with its IOTLB hit / missing every time, the
 *                    miss either under a cached page-directory entry (4096 leaves in 8 page tables:
 *                    one 8-byte read) or not (2048 leaves, one per 2 MiB: the whole walk)
 *  - 4k-direct/-iommu readInto of 4 KiB, direct vs translated (one chunk)
 *  - per-request map + 4 KiB DMA + unmap, vIOMMU off / static mapping / strict / deferred / optimistic
 *    (a proxy for the virtio-blk IOPS comparison of the issue: no virtqueue and no block device yet)
 */
import { GuestMemory } from '@ioplane/guest-memory';
import { GuestIommuDriver, VirtioIommu, VtdRemapper, attachRequest, directTransport, mapRequest, parseConfig } from '../src/index.js';

const RUNS = Number(process.env.RUNS ?? 15);
const OPS = 1 << 20;
const PAGE = 4096;

const ram = GuestMemory.create(64 << 20);

function virtio(iotlbEntries: number, pages: number): { dma: ReturnType<VirtioIommu['dmaMemory']>; addrs: Float64Array } {
  const dev = new VirtioIommu({ iotlbEntries });
  dev.addEndpoint(1);
  const go = (r: ReturnType<typeof mapRequest>) => dev.handleRequest(r.readable, r.writable);
  go(attachRequest(1, 1));
  // Every other IOVA page, so that no two mappings merge and each is its own table entry.
  for (let i = 0; i < pages; i++) go(mapRequest(1, BigInt(0x1000_0000 + i * 2 * PAGE), BigInt(0x1000_0000 + i * 2 * PAGE + PAGE - 1), BigInt(i * PAGE), 3));
  const addrs = new Float64Array(OPS);
  // A scattered visiting order (multiplicative stride), so successive accesses hit different pages.
  for (let i = 0; i < OPS; i++) addrs[i] = 0x1000_0000 + ((i * 2654435761) % pages) * 2 * PAGE + ((i * 4) % PAGE);
  return { dma: dev.dmaMemory(1, ram), addrs };
}

/**
 * A VT-d unit over 4-level tables built at guest-physical `base` (bump-allocated, in the top
 * 16 MiB of `ram`), with `pages` 4 KiB leaves at IOVA i × `stride` → GPA i × 4 KiB. A stride of
 * 4 KiB packs 512 leaves per page table (a miss in the IOTLB finds its page-directory entry
 * cached); a stride of 2 MiB gives every leaf its own page table and PDE.
 */
function vtd(iotlbEntries: number, pages: number, base: number, stride = PAGE): { dma: ReturnType<VtdRemapper['dmaMemory']>; addrs: Float64Array } {
  let next = base;
  const alloc = () => {
    const a = next;
    next += PAGE;
    ram.fill(a, PAGE, 0);
    return a;
  };
  const root = alloc();
  const ctx = alloc();
  const pml4 = alloc();
  ram.writeU64(root, BigInt(ctx) | 1n);
  ram.writeU64(ctx + 8 * 16, BigInt(pml4) | 1n);
  ram.writeU64(ctx + 8 * 16 + 8, 2n | (1n << 8n));
  for (let i = 0; i < pages; i++) {
    const iova = i * stride;
    let t = pml4;
    for (let l = 4; l > 1; l--) {
      const at = t + (Math.floor(iova / 2 ** (12 + 9 * (l - 1))) % 512) * 8;
      let e = ram.readU53(at);
      if ((e & 3) === 0) ram.writeU53(at, (e = alloc() + 3));
      t = e - (e % PAGE);
    }
    ram.writeU53(t + (Math.floor(iova / PAGE) % 512) * 8, i * PAGE + 3);
  }
  if (next > ram.size) throw new Error('VT-d bench tables do not fit');
  const unit = new VtdRemapper({ memory: ram, iotlbEntries });
  unit.setRootTable(root);
  const addrs = new Float64Array(OPS);
  for (let i = 0; i < OPS; i++) addrs[i] = ((i * 2654435761) % pages) * stride + ((i * 4) % PAGE);
  return { dma: unit.dmaMemory(8, ram), addrs };
}

type Reader = { readU32(a: number): number };
function scalarLoop(m: Reader, addrs: Float64Array): number {
  let sum = 0;
  for (let i = 0; i < addrs.length; i++) sum = (sum + m.readU32(addrs[i]!)) | 0;
  return sum;
}

const directAddrs = new Float64Array(OPS);
for (let i = 0; i < OPS; i++) directAddrs[i] = ((i * 2654435761) % 64) * PAGE + ((i * 4) % PAGE);

const hit = virtio(512, 64);
// Ring-like: every access in one 4 KiB page (the one-entry run cache of TranslatingMemory).
const samePage = new Float64Array(OPS);
for (let i = 0; i < OPS; i++) samePage[i] = 0x1000_0000 + ((i * 4) % PAGE);
const directSamePage = new Float64Array(OPS);
for (let i = 0; i < OPS; i++) directSamePage[i] = (i * 4) % PAGE;
const miss = virtio(512, 4096);
const none = virtio(0, 4096);
const vHit = vtd(512, 64, 48 << 20);
const vMiss = vtd(512, 4096, 49 << 20);
// One leaf per 2 MiB (4 GiB of IOVA): 2048 page tables, 8 MiB of tables below the 64 MiB of RAM.
const vMissFar = vtd(512, 2048, 50 << 20, 0x20_0000);

const buf = new Uint8Array(PAGE);
const BULK = 1 << 16;
function bulk(m: { readInto(a: number, d: Uint8Array): void }, base: number): number {
  for (let i = 0; i < BULK; i++) m.readInto(base + (i % 64) * 2 * PAGE, buf);
  return buf[0]!;
}
function bulkDirect(): number {
  for (let i = 0; i < BULK; i++) ram.readInto((i % 64) * PAGE, buf);
  return buf[0]!;
}

// Per-request DMA path proxy: a guest maps a 4 KiB buffer, the device writes it, the guest unmaps.
const REQS = 1 << 14;
function pathRig(mode: 'strict' | 'deferred' | 'optimistic' | 'static' | 'off'): () => number {
  const dev = new VirtioIommu();
  dev.addEndpoint(1);
  const driver = new GuestIommuDriver(directTransport(dev), parseConfig(dev.config));
  const dom = driver.attach(1, { mode: mode === 'static' || mode === 'off' ? 'strict' : mode, batchSize: 256 });
  const dma = dev.dmaMemory(1, ram);
  const data = new Uint8Array(PAGE).fill(7);
  const staticIova = dom.map(0, 256 * PAGE, 'bidirectional');
  return () => {
    for (let i = 0; i < REQS; i++) {
      const gpa = (i % 256) * PAGE;
      if (mode === 'off') ram.writeFrom(gpa, data);
      else if (mode === 'static') dma.writeFrom(staticIova + gpa, data);
      else {
        const iova = dom.map(gpa, PAGE, 'from-device');
        dma.writeFrom(iova, data);
        dom.unmap(iova);
      }
    }
    return REQS;
  };
}

const scenarios: { name: string; ops: number; run: () => number; base: string }[] = [
  { name: 'direct readU32', ops: OPS, run: () => scalarLoop(ram, directAddrs), base: 'direct readU32' },
  { name: 'direct readU32, one page', ops: OPS, run: () => scalarLoop(ram, directSamePage), base: 'direct readU32, one page' },
  { name: 'virtio-iommu, one page (run cache)', ops: OPS, run: () => scalarLoop(hit.dma, samePage), base: 'direct readU32, one page' },
  { name: 'virtio-iommu IOTLB hit', ops: OPS, run: () => scalarLoop(hit.dma, hit.addrs), base: 'direct readU32' },
  { name: 'virtio-iommu IOTLB miss', ops: OPS, run: () => scalarLoop(miss.dma, miss.addrs), base: 'direct readU32' },
  { name: 'virtio-iommu no IOTLB', ops: OPS, run: () => scalarLoop(none.dma, none.addrs), base: 'direct readU32' },
  { name: 'VT-d IOTLB hit', ops: OPS, run: () => scalarLoop(vHit.dma, vHit.addrs), base: 'direct readU32' },
  { name: 'VT-d IOTLB miss, PDE cached', ops: OPS, run: () => scalarLoop(vMiss.dma, vMiss.addrs), base: 'direct readU32' },
  { name: 'VT-d IOTLB miss, PDE miss (4-level walk)', ops: OPS, run: () => scalarLoop(vMissFar.dma, vMissFar.addrs), base: 'direct readU32' },
  { name: 'direct readInto 4 KiB', ops: BULK, run: bulkDirect, base: 'direct readInto 4 KiB' },
  { name: 'virtio-iommu readInto 4 KiB (hit)', ops: BULK, run: () => bulk(hit.dma, 0x1000_0000), base: 'direct readInto 4 KiB' },
  { name: 'path: vIOMMU off', ops: REQS, run: pathRig('off'), base: 'path: vIOMMU off' },
  { name: 'path: static mapping', ops: REQS, run: pathRig('static'), base: 'path: vIOMMU off' },
  { name: 'path: map/unmap strict', ops: REQS, run: pathRig('strict'), base: 'path: vIOMMU off' },
  { name: 'path: map/unmap deferred', ops: REQS, run: pathRig('deferred'), base: 'path: vIOMMU off' },
  { name: 'path: map/unmap optimistic', ops: REQS, run: pathRig('optimistic'), base: 'path: vIOMMU off' },
];

const samples = new Map<string, number[]>(scenarios.map((s) => [s.name, []]));
let sink = 0;
for (let r = 0; r < RUNS + 1; r++) {
  for (const s of scenarios) {
    const t0 = process.hrtime.bigint();
    sink ^= s.run();
    const ns = Number(process.hrtime.bigint() - t0);
    if (r > 0) samples.get(s.name)!.push((s.ops / ns) * 1e9); // run 0 warms up the JIT
  }
}

const median = (xs: number[]) => {
  const v = [...xs].sort((a, b) => a - b);
  return v[v.length >> 1]!;
};
console.log(`@ioplane/viommu translation benchmark — ${RUNS} rounds, each running every scenario once (node ${process.version})`);
console.log('ratio = median over rounds of (scenario / its baseline in the same round); spread = min..max of those ratios');
console.log('scenario'.padEnd(40), 'ops/s'.padStart(10), 'ratio'.padStart(8), 'spread'.padStart(14));
const fmt = (x: number) => (x >= 1e6 ? `${(x / 1e6).toFixed(2)}M` : `${(x / 1e3).toFixed(1)}k`);
for (const s of scenarios) {
  const xs = samples.get(s.name)!;
  const bs = samples.get(s.base)!;
  const ratios = xs.map((x, i) => x / bs[i]!);
  console.log(s.name.padEnd(40), fmt(median(xs)).padStart(10), median(ratios).toFixed(3).padStart(8), `${Math.min(...ratios).toFixed(2)}..${Math.max(...ratios).toFixed(2)}`.padStart(14));
}
if (sink === 0.5) console.log(sink);
