import { GuestMemory } from '@ioplane/guest-memory';
import { GuestIommuDriver, IommuRequest, VirtioIommu, type VirtioIommuOptions, attachRequest, directTransport, mapRequest, parseConfig, unmapRequest } from '../src/index.js';

/** Sends one request to `dev` and returns [status, used]. */
export function send(dev: VirtioIommu, r: IommuRequest): [number, number] {
  r.used = dev.handleRequest(r.readable, r.writable);
  return [r.status, r.used];
}

export function status(dev: VirtioIommu, r: IommuRequest): number {
  return send(dev, r)[0];
}

/** A device with endpoints 1..n registered. */
export function device(options: VirtioIommuOptions = {}, endpoints = 2): VirtioIommu {
  const dev = new VirtioIommu(options);
  for (let i = 1; i <= endpoints; i++) dev.addEndpoint(i);
  return dev;
}

export const RW = 3;
export const R = 1;
export const W = 2;

export function attach(dev: VirtioIommu, domain: number, ep: number, flags = 0): number {
  return status(dev, attachRequest(domain, ep, flags));
}

export function map(dev: VirtioIommu, domain: number, start: bigint, end: bigint, phys: bigint, flags = RW): number {
  return status(dev, mapRequest(domain, start, end, phys, flags));
}

export function unmap(dev: VirtioIommu, domain: number, start: bigint, end: bigint): number {
  return status(dev, unmapRequest(domain, start, end));
}

/** A raw request with `readable` bytes and a `writable` buffer. */
export function raw(readable: number[] | Uint8Array, writable = 4): IommuRequest {
  return new IommuRequest(Uint8Array.from(readable), new Uint8Array(writable));
}

/**
 * A virtio-iommu device with endpoint 1 (optionally with reserved regions),
 * 1 MiB of RAM behind it, and the guest driver over a direct transport on an
 * injected clock (`tick` moves it).
 */
export function driverRig(options: VirtioIommuOptions = {}, reserved: { start: bigint; end: bigint }[] = []) {
  const dev = new VirtioIommu({ domainRange: { start: 1, end: 1000 }, ...options });
  dev.addEndpoint(1, { reserved });
  const ram = GuestMemory.create(0x100000);
  const dma = dev.dmaMemory(1, ram);
  let now = 0;
  const transport = directTransport(dev);
  const driver = new GuestIommuDriver(transport, parseConfig(dev.config), () => now);
  return { dev, ram, dma, transport, driver, tick: (ms: number) => (now += ms) };
}
