import { PacketError } from './errors.js';

/** Parses `aa:bb:cc:dd:ee:ff` (or `-` separated) into 6 bytes. */
export function parseMac(text: string, out: Uint8Array = new Uint8Array(6)): Uint8Array {
  const m = /^([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})$/i.exec(text);
  if (!m) throw new PacketError('invalid-address', `not a MAC address: ${JSON.stringify(text)}`, 'mac', text);
  for (let i = 0; i < 6; i++) out[i] = parseInt(m[i + 1]!, 16);
  return out;
}

export function formatMac(bytes: Uint8Array, offset = 0): string {
  let s = '';
  for (let i = 0; i < 6; i++) s += (i ? ':' : '') + (bytes[offset + i] ?? 0).toString(16).padStart(2, '0');
  return s;
}

/** Dotted quad to an unsigned 32-bit number (network order read as big-endian). */
export function parseIpv4(text: string): number {
  const parts = text.split('.');
  if (parts.length !== 4) throw new PacketError('invalid-address', `not an IPv4 address: ${JSON.stringify(text)}`, 'ipv4', text);
  let v = 0;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) throw new PacketError('invalid-address', `not an IPv4 address: ${JSON.stringify(text)}`, 'ipv4', text);
    v = v * 256 + Number(p);
  }
  return v >>> 0;
}

export function formatIpv4(v: number): string {
  return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

/** Reads a big-endian IPv4 address at `offset`. */
export function readIpv4(bytes: Uint8Array, offset: number): number {
  return ((bytes[offset]! << 24) | (bytes[offset + 1]! << 16) | (bytes[offset + 2]! << 8) | bytes[offset + 3]!) >>> 0;
}

export function writeIpv4(bytes: Uint8Array, offset: number, v: number): void {
  bytes[offset] = v >>> 24;
  bytes[offset + 1] = v >>> 16;
  bytes[offset + 2] = v >>> 8;
  bytes[offset + 3] = v;
}

/** RFC 4291 §2.2 text forms (with `::` and an embedded dotted quad) to 16 bytes. */
export function parseIpv6(text: string, out: Uint8Array = new Uint8Array(16)): Uint8Array {
  const bad = (): PacketError => new PacketError('invalid-address', `not an IPv6 address: ${JSON.stringify(text)}`, 'ipv6', text);
  let s = text;
  const tail: number[] = [];
  const dq = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (dq) {
    const v = parseIpv4(dq[1]!);
    tail.push(v >>> 16, v & 0xffff);
    s = s.slice(0, -dq[1]!.length);
    if (s.endsWith(':') && !s.endsWith('::')) s = s.slice(0, -1);
  }
  const halves = s.split('::');
  if (halves.length > 2) throw bad();
  const group = (h: string): number[] =>
    h === '' ? [] : h.split(':').map((g) => {
      if (!/^[0-9a-f]{1,4}$/i.test(g)) throw bad();
      return parseInt(g, 16);
    });
  const head = group(halves[0]!);
  const rest = halves.length === 2 ? group(halves[1]!) : [];
  const words = halves.length === 2 ? [...head, ...new Array<number>(8 - head.length - rest.length - tail.length).fill(0), ...rest, ...tail] : [...head, ...tail];
  if (words.length !== 8 || (halves.length === 2 && head.length + rest.length + tail.length > 7)) throw bad();
  words.forEach((w, i) => {
    out[2 * i] = w >>> 8;
    out[2 * i + 1] = w & 0xff;
  });
  return out;
}

/** RFC 5952 canonical text (lower case, longest zero run as `::`). */
export function formatIpv6(bytes: Uint8Array, offset = 0): string {
  const w: number[] = [];
  for (let i = 0; i < 8; i++) w.push((bytes[offset + 2 * i]! << 8) | bytes[offset + 2 * i + 1]!);
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (w[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && w[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (a: number[]): string => a.map((x) => x.toString(16)).join(':');
  if (best < 0) return hex(w);
  return `${hex(w.slice(0, best))}::${hex(w.slice(best + bestLen))}`;
}

/** A MAC as a number (48 bits fit exactly in a double): a cheap Map key. */
export function macToNumber(bytes: Uint8Array, offset = 0): number {
  return ((bytes[offset]! << 8) | bytes[offset + 1]!) * 0x1_0000_0000 + readIpv4(bytes, offset + 2);
}

export function isMulticastMac(bytes: Uint8Array, offset = 0): boolean {
  return (bytes[offset]! & 1) === 1;
}
