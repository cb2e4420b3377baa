import { IommuRequest, VirtioIommu, type VirtioIommuOptions, attachRequest, mapRequest, unmapRequest } from '../src/index.js';

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
