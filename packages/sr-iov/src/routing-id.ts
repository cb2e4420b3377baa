import { SrIovError } from './errors.js';

/**
 * A Routing ID (RID) is the 16-bit requester/completer ID of a function:
 * Bus[15:8] Device[7:3] Function[2:0], or with ARI Bus[15:8] Function[7:0]
 * (PCIe Base 6.0 §2.2.4.2, §6.13). Adding an offset to a RID carries into the
 * bus number, which is how VFs spill onto the next bus (§9.2.1.2).
 */
export type RoutingId = number;

export function makeRid(bus: number, device: number, fn: number): RoutingId {
  if (!Number.isInteger(bus) || bus < 0 || bus > 0xff) throw new SrIovError('invalid-argument', `bus ${String(bus)} is not 0..255`, bus);
  if (!Number.isInteger(device) || device < 0 || device > 31) throw new SrIovError('invalid-argument', `device ${String(device)} is not 0..31`, device);
  if (!Number.isInteger(fn) || fn < 0 || fn > 7) throw new SrIovError('invalid-argument', `function ${String(fn)} is not 0..7`, fn);
  return (bus << 8) | (device << 3) | fn;
}

export const ridBus = (rid: RoutingId): number => rid >>> 8;
export const ridDevfn = (rid: RoutingId): number => rid & 0xff;
export const ridDevice = (rid: RoutingId): number => (rid >>> 3) & 0x1f;
export const ridFunction = (rid: RoutingId): number => rid & 7;

/** `bb:dd.f`, with a `dddd:` domain prefix when the domain is not 0 or `withDomain` (lspci's format). */
export function formatRid(rid: RoutingId, domain = 0, withDomain = false): string {
  const h = (v: number, w: number) => v.toString(16).padStart(w, '0');
  const bdf = `${h(ridBus(rid), 2)}:${h(ridDevice(rid), 2)}.${ridFunction(rid)}`;
  return domain !== 0 || withDomain ? `${h(domain, 4)}:${bdf}` : bdf;
}

/** Parses `bb:dd.f` or `dddd:bb:dd.f` (hex bus/device/domain as lspci prints them). */
export function parseAddress(text: string): { domain: number; rid: RoutingId } {
  const m = /^(?:([0-9a-fA-F]{1,5}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$/.exec(text);
  if (!m) throw new SrIovError('invalid-argument', `PCI address ${JSON.stringify(text)} is not [dddd:]bb:dd.f`, text);
  const domain = m[1] === undefined ? 0 : parseInt(m[1], 16);
  if (domain > 0xffff) throw new SrIovError('invalid-argument', `PCI domain ${m[1]} is above ffff`, text);
  return { domain, rid: makeRid(parseInt(m[2]!, 16), parseInt(m[3]!, 16), Number(m[4])) };
}

/** A PCI address as a string, or a RID number (0..65535). */
export type PciAddressInput = string | RoutingId;

export function toRid(address: PciAddressInput): { domain: number; rid: RoutingId } {
  if (typeof address === 'string') return parseAddress(address);
  if (!Number.isInteger(address) || address < 0 || address > 0xffff) throw new SrIovError('invalid-argument', `routing ID ${String(address)} is not 0..65535`, address);
  return { domain: 0, rid: address };
}
