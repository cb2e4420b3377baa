import { MemoryBackend, type BlockBackend } from '@ioplane/blk-backends';
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
