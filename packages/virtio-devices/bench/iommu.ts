/**
 * virtio-blk behind the vIOMMU: 4 KiB random reads through the whole path —
 * VirtioBlkDriver → virtqueue → VirtioBlkDevice → a raw file on a warm page
 * cache (the threadpool engine; BACKEND=raw-sync: the sync engine, reads
 * done inline; BACKEND=memory: a MemoryBackend, the cheapest back-end, so the
 * harshest ratio), every device
 * access to guest memory through the endpoint's translating DmaMemory — with
 * the vIOMMU off (the device on plain RAM: the baseline), on with static
 * mappings (the data buffers mapped once), and on with map before / unmap
 * after every request in each invalidation mode (strict, deferred,
 * optimistic), MAP and UNMAP going over the virtio-iommu request queue.
 * One thread (driver, devices and back-end share the event loop).
 *
 * Pairing: a round gives every scenario OPS reads, cut into SLICES slices;
 * the slices of all scenarios are interleaved (slice 1 of each scenario in a
 * rotating order, then slice 2, …), so every scenario of a round samples the
 * same stretch of machine time and slow drift (frequency, other tenants,
 * page cache) falls on all of them alike. A scenario's IOPS in a round is
 * OPS / the sum of its slice times; its ratio is that / off's IOPS in the same
 * round; the figure is the median over ROUNDS rounds, with the interquartile
 * range and the full min–max spread beside it.
 *   pnpm --filter @ioplane/virtio-devices bench:iommu   (ROUNDS=11 OPS=40000 SLICES=20 QD=1,32 BACKEND=raw|raw-sync|memory ONLY=off,static,strict,strict-many,… FQ_TIMER=0: the guest drivers read the clock at every map instead of a flush-queue timer)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type BlockBackend, MemoryBackend, RawFileBackend } from '@ioplane/blk-backends';
import { GuestMemory } from '@ioplane/guest-memory';
import { type DmaMapper, type InvalidationMode, VtdGuestDriver, VtdRemapper } from '@ioplane/viommu';
import { DirectTransport, VirtioBlkDevice, VirtioBlkDriver, VirtioIommuDevice, VirtioIommuDriver } from '../src/index.js';
import { rng } from './common.js';

const ROUNDS = Number(process.env.ROUNDS ?? 11);
const OPS = Number(process.env.OPS ?? 40000);
const SLICES = Number(process.env.SLICES ?? 20);
const QDS = (process.env.QD ?? '1,32').split(',').map(Number);
const DISK = 16 << 20;
const BACKEND = process.env.BACKEND ?? 'raw';
/** The guest drivers' flush-queue timer (Linux's fq_timer), so maps read no clock; FQ_TIMER=0: every map reads it. */
const FQ_TIMER = process.env.FQ_TIMER === '0' ? {} : { schedule: (cb: () => void, ms: number): void => void setTimeout(cb, ms) };
const BS = 4096;
const MEM = 32 << 20;
const IOMMU_AREA = 0x10000;
const BLK_AREA = { addr: 0x100000, len: 3 << 20 };
const DATA = 8 << 20;
const EP = 8;
/** VT-d: the device's source-id (00:01.0) and where the guest keeps its translation tables. */
const SID = 0x08;
const VTD_TABLES = { addr: 0x600000, len: 1 << 20 };

/** `off-again`: a second vIOMMU-off rig, the A/A control — its ratio shows what the pairing cannot tell from noise. */
/** `strict-many`: strict, but a wave's completed requests are unmapped by one `unmapMany` call (one submission). */
/**
 * `vtd-…`: the same on the VT-d unit: the guest writes its mappings in page
 * tables (no request, no notification), and unmaps reach the unit as IOTLB
 * invalidations — page-selective per strict unmap, domain-selective per batch.
 */
type Base = 'static' | 'strict-many' | InvalidationMode;
type Scenario = 'off' | 'off-again' | Base | `vtd-${Base}`;
const SCENARIOS: Scenario[] = (process.env.ONLY?.split(',') as Scenario[] | undefined) ?? [
  'off',
  'off-again',
  'static',
  'strict',
  'strict-many',
  'deferred',
  'optimistic',
  'vtd-static',
  'vtd-strict',
  'vtd-deferred',
  'vtd-optimistic',
];

/** The scenario without its unit prefix. */
function base(s: Scenario): Scenario {
  return s.startsWith('vtd-') ? (s.slice(4) as Base) : s;
}

interface Rig {
  blk: VirtioBlkDriver;
  backend: BlockBackend;
  domain: DmaMapper | undefined;
  /** IOVA of each queue slot's buffer when mapped statically. */
  fixed: number[];
}

/** Guest RAM and a back-end: a scenario's devices and drivers are built over one for a round. */
interface Host {
  mem: GuestMemory;
  backend: BlockBackend;
}

async function host(disk: Uint8Array, rawPath: string): Promise<Host> {
  const mem = GuestMemory.create(MEM);
  let backend: BlockBackend;
  if (BACKEND === 'memory') {
    backend = new MemoryBackend({ size: DISK });
    await backend.write(0, [disk]);
  } else backend = await RawFileBackend.open(rawPath, { readOnly: true, engine: BACKEND === 'raw-sync' ? 'sync' : 'threadpool' });
  return { mem, backend };
}

async function rig(s: Scenario, { mem, backend }: Host, qd: number): Promise<Rig> {
  const ref: { blk?: VirtioBlkDriver; iommu?: VirtioIommuDriver } = {};
  let dma = mem as GuestMemory | ReturnType<VtdRemapper['dmaMemory']>;
  let domain: DmaMapper | undefined;
  const fixed: number[] = [];
  const b = base(s);
  const mode: InvalidationMode = b === 'static' || b === 'strict-many' ? 'strict' : (b as InvalidationMode);
  if (s.startsWith('vtd-')) {
    const vtd = new VtdRemapper({ memory: mem });
    const drv = new VtdGuestDriver({ unit: vtd, mem, area: VTD_TABLES, now: () => performance.now(), ...FQ_TIMER });
    domain = drv.attach(SID, { mode });
    dma = vtd.dmaMemory(SID, mem);
  } else if (s !== 'off' && s !== 'off-again') {
    const dev = new VirtioIommuDevice({ mem, interrupts: { queue: (q) => void ref.iommu?.handleInterrupt(q), config: () => undefined } });
    dev.iommu.addEndpoint(EP);
    const iommu = await VirtioIommuDriver.create({ transport: new DirectTransport(dev), mem, area: { addr: IOMMU_AREA, len: VirtioIommuDriver.areaSize() }, now: () => performance.now(), ...FQ_TIMER });
    ref.iommu = iommu;
    domain = iommu.iommu.attach(EP, { mode });
    dma = dev.iommu.dmaMemory(EP, mem);
  }
  if (domain !== undefined) {
    domain.mapAt(BLK_AREA.addr, BLK_AREA.addr, BLK_AREA.len, 'bidirectional');
    if (b === 'static') for (let i = 0; i < qd; i++) fixed.push(domain.map(DATA + i * BS, BS, 'from-device'));
  }
  const device = new VirtioBlkDevice({ mem: dma, backend, interrupts: { queue: (q) => void ref.blk?.handleInterrupt(q), config: () => undefined } });
  const blk = await VirtioBlkDriver.create({ transport: new DirectTransport(device), mem, area: BLK_AREA });
  ref.blk = blk;
  return { blk, backend, domain, fixed };
}

/**
 * `ops` random 4 KiB reads kept `qd` deep; returns the elapsed milliseconds.
 * The guest submits in waves, as blk-mq does: every request that completed
 * since the last wave is unmapped (the DMA API's unmap in the completion
 * path), then the wave's new requests are mapped — each MAP built at once,
 * all of them sent in one submission to the virtio-iommu request queue
 * (`syncMaps`, Linux's iotlb_sync_map) — and only then issued to the
 * virtio-blk queue (which the driver kicks once per wave). The same loop
 * drives every scenario; `off` and `static` just skip map and unmap.
 */
function run(s: Scenario, r: Rig, qd: number, ops: number, seed: number): Promise<number> {
  const next = rng(seed);
  const blocks = DISK / BS;
  const b = base(s);
  const perRequest = b !== 'off' && b !== 'off-again' && b !== 'static';
  const domain = r.domain;
  const iova = new Array<number>(qd).fill(-1);
  const many = b === 'strict-many';
  const toUnmap: number[] = [];
  const ready: number[] = [];
  let issued = 0;
  let done = 0;
  let scheduled = false;
  const t0 = performance.now();
  return new Promise<number>((resolve, reject) => {
    const complete = (slot: number): void => {
      done++;
      ready.push(slot);
      if (!scheduled) {
        scheduled = true;
        queueMicrotask(wave);
      }
    };
    const wave = (): void => {
      scheduled = false;
      try {
        if (perRequest) {
          let k = 0;
          for (const slot of ready) {
            const a = iova[slot]!;
            if (a >= 0) {
              if (many) toUnmap[k++] = a;
              else domain!.unmap(a);
            }
            iova[slot] = -1;
          }
          if (k > 0) domain!.unmapMany(toUnmap, k);
        }
        if (done === ops) {
          resolve(performance.now() - t0);
          return;
        }
        const n = Math.min(ready.length, ops - issued);
        if (perRequest) for (let i = 0; i < n; i++) iova[ready[i]!] = domain!.queueMap(DATA + ready[i]! * BS, BS, 'from-device');
        if (perRequest) domain!.syncMaps();
        for (let i = 0; i < n; i++) {
          const slot = ready[i]!;
          const addr = b === 'static' ? r.fixed[slot]! : perRequest ? iova[slot]! : DATA + slot * BS;
          issued++;
          r.blk.read((next() % blocks) * (BS / 512), addr, BS).then(() => complete(slot), reject);
        }
        ready.splice(0, n);
      } catch (e) {
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    };
    for (let slot = 0; slot < qd; slot++) ready.push(slot);
    scheduled = true;
    queueMicrotask(wave);
  });
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
}

function median(xs: number[]): number {
  return quantile(xs, 0.5);
}

function fmt(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : `${(n / 1e3).toFixed(1)} k`;
}

const TARGET: Partial<Record<Scenario, number>> = { static: 0.95, deferred: 0.9, strict: 0.5, 'strict-many': 0.5, 'vtd-static': 0.95, 'vtd-deferred': 0.9, 'vtd-strict': 0.5 };
/** vIOMMU paper (Amit et al., USENIX ATC 2011), netperf on a 10 Gbps NIC, fraction of line rate. */
const PAPER: Partial<Record<Scenario, string>> = { strict: '0.43', deferred: '0.91', optimistic: '1.00', 'vtd-strict': '0.43', 'vtd-deferred': '0.91', 'vtd-optimistic': '1.00' };

async function main(): Promise<void> {
  const disk = new Uint8Array(DISK);
  const fill = rng(1);
  for (let i = 0; i < DISK; i += 4) new DataView(disk.buffer).setUint32(i, fill());
  const dir = mkdtempSync(join(tmpdir(), 'ioplane-viommu-bench-'));
  try {
    const rawPath = join(dir, 'disk.raw');
    await RawFileBackend.create(rawPath, DISK);
    const w = await RawFileBackend.open(rawPath);
    await w.write(0, [disk]);
    await w.flush();
    await w.read(0, [disk]); // warm the page cache
    await w.close();
    await bench(disk, rawPath);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function bench(disk: Uint8Array, rawPath: string): Promise<void> {
  console.log(`virtio-blk 4 KiB random reads, ${BACKEND === 'memory' ? 'MemoryBackend' : `raw file (warm page cache, ${BACKEND === 'raw-sync' ? 'sync' : 'threadpool'} engine)`} ${DISK >> 20} MiB, ${OPS} reads per scenario per round in ${SLICES} interleaved slices, ${ROUNDS} rounds, Node ${process.version}`);
  const slice = Math.max(1, Math.floor(OPS / SLICES));
  // One host (guest RAM + back-end) per scenario, handed to a different scenario every round:
  // where a buffer landed (page placement, huge pages, caches) is not one scenario's luck for the whole run.
  const hosts: Host[] = [];
  for (let i = 0; i < SCENARIOS.length; i++) hosts.push(await host(disk, rawPath));
  for (const qd of QDS) {
    const iops = new Map<Scenario, number[]>(SCENARIOS.map((s) => [s, []]));
    const ratios = new Map<Scenario, number[]>(SCENARIOS.map((s) => [s, []]));
    const batching = new Map<Scenario, { maps: number; reused: number; requests: number; batches: number }>(SCENARIOS.map((s) => [s, { maps: 0, reused: 0, requests: 0, batches: 0 }]));
    for (let round = -1; round < ROUNDS; round++) {
      // Fresh devices and drivers every round, each scenario on another host; round −1 only warms up.
      const rigs = new Map<Scenario, Rig>();
      for (let k = 0; k < SCENARIOS.length; k++) {
        const s = SCENARIOS[k]!;
        rigs.set(s, await rig(s, hosts[(k + round + 1) % hosts.length]!, qd));
      }
      for (const s of SCENARIOS) await run(s, rigs.get(s)!, qd, Math.min(slice, 2000), 99);
      const ms = new Map<Scenario, number>(SCENARIOS.map((s) => [s, 0]));
      const slices = round < 0 ? 1 : SLICES;
      for (let sl = 0; sl < slices; sl++) {
        for (let k = 0; k < SCENARIOS.length; k++) {
          const s = SCENARIOS[(k + round + sl + 1) % SCENARIOS.length]!;
          ms.set(s, ms.get(s)! + (await run(s, rigs.get(s)!, qd, slice, 1 + (round + 1) * SLICES + sl)));
        }
      }
      for (const [s, r] of rigs) {
        const st = r.domain?.stats;
        const b = batching.get(s)!;
        if (st !== undefined && round >= 0) {
          b.maps += st.maps;
          b.reused += st.reused;
          b.requests += st.requests;
          b.batches += st.batches;
        }
        await r.blk.close();
      }
      if (round < 0) continue;
      const got = new Map<Scenario, number>(SCENARIOS.map((s) => [s, (slice * SLICES) / (ms.get(s)! / 1000)]));
      for (const s of SCENARIOS) {
        iops.get(s)!.push(got.get(s)!);
        ratios.get(s)!.push(got.get(s)! / got.get('off')!);
      }
    }
    console.log(`\nQD ${qd}`);
    for (const s of SCENARIOS) {
      const b = batching.get(s)!;
      if (b.maps === 0 || base(s) === 'static') continue;
      if (s.startsWith('vtd-')) console.log(`${s}: ${(b.requests / (b.maps - b.reused || 1)).toFixed(3)} IOTLB invalidations per map, ${((b.maps - b.reused) / b.maps).toFixed(2)} page-table writes per map`);
      else console.log(`${s}: ${(b.requests / b.batches).toFixed(1)} virtio-iommu requests per submission, ${((b.maps - b.reused) / b.maps).toFixed(2)} MAP requests per map`);
    }
    console.log('| scenario | IOPS (median) | ratio vs off (median) | IQR | min–max | target | paper |');
    console.log('|---|---:|---:|---:|---:|---:|---:|');
    for (const s of SCENARIOS) {
      const rs = ratios.get(s)!;
      const t = TARGET[s];
      const verdict = t === undefined ? '' : `≥ ${t} ${median(rs) >= t ? 'met' : 'NOT met'}`;
      console.log(`| ${s} | ${fmt(median(iops.get(s)!))} | ${median(rs).toFixed(3)} | ${quantile(rs, 0.25).toFixed(2)}–${quantile(rs, 0.75).toFixed(2)} | ${Math.min(...rs).toFixed(2)}–${Math.max(...rs).toFixed(2)} | ${verdict} | ${PAPER[s] ?? ''} |`);
    }
  }
  for (const h of hosts) await h.backend.close();
}

await main();
