import { MemoryBackend, type BlockBackend, type Extent, type Segments } from '@ioplane/blk-backends';
import { GuestMemory } from '@ioplane/guest-memory';
import { DirectTransport, VirtioBlkDevice, VirtioBlkDriver, type VirtioBlkDriverOptions, type VirtioBlkOptions, type VirtioError } from '../src/index.js';

export const MEM_SIZE = 8 << 20;
/** Driver-owned area (rings, headers) and a data area for test buffers. */
export const AREA = { addr: 0x1000, len: 3 << 20 };
export const DATA = 4 << 20;

export interface Harness {
  mem: GuestMemory;
  backend: BlockBackend;
  device: VirtioBlkDevice;
  driver: VirtioBlkDriver;
  errors: VirtioError[];
  interrupts: number[];
}

/** One thread: a virtio-blk device on a memory back-end, driven by the guest driver through a DirectTransport. */
export async function harness(
  opts: { device?: Partial<VirtioBlkOptions>; driver?: Partial<VirtioBlkDriverOptions>; size?: number; backend?: BlockBackend } = {},
): Promise<Harness> {
  const mem = GuestMemory.create(MEM_SIZE);
  const backend = opts.backend ?? new MemoryBackend({ size: opts.size ?? 1 << 20 });
  const errors: VirtioError[] = [];
  const interrupts: number[] = [];
  const ref: { driver?: VirtioBlkDriver } = {};
  const device = new VirtioBlkDevice({
    mem,
    backend,
    interrupts: {
      queue: (q) => {
        interrupts.push(q);
        ref.driver?.handleInterrupt(q);
      },
      config: () => void ref.driver?.handleConfigChange(),
    },
    onGuestError: (e) => errors.push(e),
    ...opts.device,
  });
  const driver = await VirtioBlkDriver.create({ transport: new DirectTransport(device), mem, area: AREA, ...opts.driver });
  ref.driver = driver;
  return { mem, backend, device, driver, errors, interrupts };
}

export function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  let x = (seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < len; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

/** A back-end that hands every call to a MemoryBackend: tests extend it to record, hold or fail calls. */
export class DelegatingBackend implements BlockBackend {
  readonly inner: MemoryBackend;
  readOnly = false;
  constructor(size: number) {
    this.inner = new MemoryBackend({ size });
  }
  get size(): number {
    return this.inner.size;
  }
  get logicalBlockSize(): number {
    return 512;
  }
  get physicalBlockSize(): number {
    return 4096;
  }
  read(o: number, s: Segments): Promise<void> {
    return this.inner.read(o, s);
  }
  write(o: number, s: Segments): Promise<void> {
    return this.inner.write(o, s);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  discard(o: number, l: number): Promise<void> {
    return this.inner.discard(o, l);
  }
  writeZeroes(o: number, l: number, u: boolean): Promise<void> {
    return this.inner.writeZeroes(o, l, u);
  }
  blockStatus(o: number, l: number): Promise<Extent[]> {
    return this.inner.blockStatus(o, l);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
