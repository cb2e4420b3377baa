import type { ConfigSpace } from './config-space.js';
import { PCI_BASE_ADDRESS_MEM_PREFETCH, PCI_BASE_ADDRESS_MEM_TYPE_64, PCI_BASE_ADDRESS_SPACE_IO } from './defs.js';
import { SrIovError, hex } from './errors.js';

export type BarKind = 'mem32' | 'mem64' | 'io';

/** A Base Address Register as the device implements it (PCIe Base 6.0 §7.5.1.2.1). */
export interface BarSpec {
  /** BAR number 0..5; a 64-bit BAR also uses `index + 1`. */
  readonly index: number;
  readonly kind: BarKind;
  /** Bytes decoded: a power of two, ≥ 16 for memory, 4..256 for I/O. */
  readonly size: number | bigint;
  readonly prefetchable?: boolean;
  /** The address firmware assigned at power-on, if any (a host may reprogram it). */
  readonly address?: number | bigint;
}

/** A BAR after validation: sizes and addresses as bigint. */
export interface Bar {
  readonly index: number;
  readonly kind: BarKind;
  readonly size: bigint;
  readonly prefetchable: boolean;
}

const U32 = 0xffffffffn;

/** Validates a set of BAR specs (no overlap of 64-bit pairs, sizes, kinds) and returns them by index. */
export function validateBars(specs: readonly BarSpec[], where: string, allowIo: boolean): Bar[] {
  const used = new Set<number>();
  const out: Bar[] = [];
  for (const s of specs) {
    if (!Number.isInteger(s.index) || s.index < 0 || s.index > 5) throw new SrIovError('invalid-argument', `${where} BAR ${String(s.index)}: the index is not 0..5`, String(s.index));
    const slots = s.kind === 'mem64' ? [s.index, s.index + 1] : [s.index];
    if (s.kind === 'mem64' && s.index === 5) throw new SrIovError('invalid-argument', `${where} BAR 5 cannot be 64-bit: it has no upper half`, 5);
    for (const slot of slots) {
      if (used.has(slot)) throw new SrIovError('invalid-argument', `${where} BAR ${slot} is used twice`, slot);
      used.add(slot);
    }
    if (s.kind !== 'mem32' && s.kind !== 'mem64' && s.kind !== 'io') throw new SrIovError('invalid-argument', `${where} BAR ${s.index}: unknown kind ${String(s.kind)}`, String(s.kind));
    if (s.kind === 'io' && !allowIo) throw new SrIovError('invalid-argument', `${where} BAR ${s.index}: VFs do not decode I/O space (§9.3.4.1.3)`, s.index);
    const size = BigInt(s.size);
    const max = s.kind === 'io' ? 256n : s.kind === 'mem32' ? 1n << 31n : 1n << 63n;
    const min = s.kind === 'io' ? 4n : 16n;
    if (size < min || size > max || (size & (size - 1n)) !== 0n) {
      throw new SrIovError('invalid-argument', `${where} BAR ${s.index}: size ${size} is not a power of two in ${min}..${max}`, String(size));
    }
    if (s.kind === 'io' && s.prefetchable) throw new SrIovError('invalid-argument', `${where} BAR ${s.index}: an I/O BAR cannot be prefetchable`, s.index);
    out.push({ index: s.index, kind: s.kind, size, prefetchable: s.prefetchable === true });
  }
  return out.sort((a, b) => a.index - b.index);
}

/** The read-only low bits of a BAR: space, type, prefetchable (§7.5.1.2.1). */
export function barFlags(bar: Bar): number {
  if (bar.kind === 'io') return PCI_BASE_ADDRESS_SPACE_IO;
  return (bar.kind === 'mem64' ? PCI_BASE_ADDRESS_MEM_TYPE_64 : 0) | (bar.prefetchable ? PCI_BASE_ADDRESS_MEM_PREFETCH : 0);
}

/**
 * Lays out one BAR at `offset` in `space`: the flag bits read-only, the
 * address bits below the size read-only zero, the rest read-write. Writing all
 * ones and reading back thus yields the size mask (§7.5.1.2.1, "sizing").
 * `size` may exceed the BAR's own size (VF BARs grow to the System Page Size).
 */
export function installBar(space: ConfigSpace, offset: number, bar: Bar, size: bigint = bar.size, address?: number | bigint): void {
  const flags = barFlags(bar);
  const low = bar.kind === 'io' ? 0x3 : 0xf;
  const addrMask = ~(size - 1n);
  space.setWritable(offset, 4, Number(addrMask & U32) & ~low);
  if (bar.kind === 'mem64') space.setWritable(offset + 4, 4, Number((addrMask >> 32n) & U32));
  let a = address === undefined ? 0n : BigInt(address);
  if (a < 0n || a & (size - 1n) || (bar.kind === 'mem64' ? a >> 64n : a >> 32n)) {
    throw new SrIovError('invalid-argument', `BAR ${bar.index}: address ${hex(Number(a & U32))} is not aligned to its size ${size} or does not fit`, String(a));
  }
  a &= addrMask;
  space.setU32(offset, Number(a & U32) | flags);
  if (bar.kind === 'mem64') space.setU32(offset + 4, Number(a >> 32n));
}

/** Re-sizes a BAR in place (keeps the address bits still writable). */
export function resizeBar(space: ConfigSpace, offset: number, bar: Bar, size: bigint): void {
  const current = readBarAddress(space, offset, bar);
  installBar(space, offset, bar, size, current & ~(size - 1n));
}

/** The address a BAR holds now, as bigint (flag bits removed). */
export function readBarAddress(space: ConfigSpace, offset: number, bar: Bar): bigint {
  const lo = space.getU32(offset);
  if (bar.kind === 'io') return BigInt(lo & ~0x3);
  const base = BigInt((lo & ~0xf) >>> 0);
  return bar.kind === 'mem64' ? base | (BigInt(space.getU32(offset + 4)) << 32n) : base;
}

/** The address a BAR holds now as a number, or -1 when it is not below 2^53. No allocation. */
export function readBarAddressNumber(space: ConfigSpace, offset: number, bar: Bar): number {
  const lo = space.getU32(offset);
  if (bar.kind === 'io') return (lo & ~0x3) >>> 0;
  const base = (lo & ~0xf) >>> 0;
  if (bar.kind !== 'mem64') return base;
  const hi = space.getU32(offset + 4);
  if (hi >= 0x200000) return -1;
  return hi * 0x100000000 + base;
}
