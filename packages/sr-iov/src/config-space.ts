import {
  CONFIG_SPACE_SIZE,
  EXTENDED_CONFIG_START,
  PCI_CAPABILITY_LIST,
  PCI_STATUS,
  PCI_STATUS_CAP_LIST,
  PCI_STD_HEADER_SIZE,
} from './defs.js';
import { SrIovError, hex } from './errors.js';

export type AccessSize = 1 | 2 | 4;

/**
 * Called after a configuration write has been applied through the masks, for
 * the registers a capability watches. `offset`/`size` are the access,
 * `previous` is what those bytes held before the write, `written` the raw
 * value the requester sent (before masking). A hook may change bytes (to
 * discard a value the spec says is ignored) and run side effects.
 */
export type WriteHook = (offset: number, size: AccessSize, previous: number, written: number) => void;

/** One entry of a capability list, as found when walking it. */
export interface CapabilityEntry {
  readonly id: number;
  readonly offset: number;
  readonly size: number;
  readonly name: string;
  readonly extended: boolean;
  /** Extended capabilities only: the Capability Version field. */
  readonly version?: number;
}

/**
 * A capability structure in the PCI-compatible list (§7.5.2.x, §7.5.3, §7.7).
 * `init` fills its registers and write masks at `offset` (the ID and Next
 * Pointer bytes are the core's) and returns whatever handle the device needs.
 */
export interface CapabilityType<P, R> {
  readonly id: number;
  readonly name: string;
  size(params: P): number;
  init(space: ConfigSpace, offset: number, params: P): R;
}

/**
 * An extended capability (§7.6). Anyone can define one — nothing in the core
 * names SR-IOV or ARI; they are definitions like this one.
 */
export interface ExtendedCapabilityType<P, R> {
  readonly id: number;
  readonly version: number;
  readonly name: string;
  size(params: P): number;
  init(space: ConfigSpace, offset: number, params: P): R;
}

const NO_HOOK = 0;
/** At most 48 capabilities fit in 40h..FFh (each at least 4 bytes, §7.5.1.1.x list rules). */
const MAX_CAPS = (EXTENDED_CONFIG_START - PCI_STD_HEADER_SIZE) / 4;
/** At most 960 extended capabilities fit in 100h..FFFh. */
const MAX_EXT_CAPS = (CONFIG_SPACE_SIZE - EXTENDED_CONFIG_START) / 4;

/**
 * The 4 KiB configuration space of one PCI Express function.
 *
 * Every byte has a write mask (bits a requester may change: RW) and a
 * write-1-to-clear mask (RW1C). A write of value `v` to byte `b` stores
 * `((b & ~wmask) | (v & wmask)) & ~(v & w1cmask)`: read-only bits never
 * change, RW1C bits clear only where a 1 was written. This is QEMU's
 * `wmask`/`w1cmask` model; masks may change at run time (NumVFs turns
 * read-only while VF Enable is set).
 *
 * Accesses are 1, 2 or 4 bytes, naturally aligned (a configuration request
 * carries byte enables within one DW, PCIe Base 6.0 §2.2.7 and §7.2.2).
 */
export class ConfigSpace {
  readonly bytes = new Uint8Array(CONFIG_SPACE_SIZE);
  readonly wmask = new Uint8Array(CONFIG_SPACE_SIZE);
  readonly w1cmask = new Uint8Array(CONFIG_SPACE_SIZE);
  private readonly dv = new DataView(this.bytes.buffer);
  private readonly wdv = new DataView(this.wmask.buffer);
  private readonly cdv = new DataView(this.w1cmask.buffer);
  /** Per DW: index into `hooks`, 0 for none. */
  private readonly hookAt = new Uint16Array(CONFIG_SPACE_SIZE / 4);
  private readonly hooks: WriteHook[] = [() => undefined];
  /** Per byte: 1 if the header or a capability owns it. */
  private readonly owned = new Uint8Array(CONFIG_SPACE_SIZE);
  private readonly entries: CapabilityEntry[] = [];
  private lastCap = 0;
  private lastExtCap = 0;
  private readonly resetBytes = new Uint8Array(CONFIG_SPACE_SIZE);
  private readonly resetWmask = new Uint8Array(CONFIG_SPACE_SIZE);
  private readonly resetW1cmask = new Uint8Array(CONFIG_SPACE_SIZE);
  private readonly resetListeners: (() => void)[] = [];

  constructor() {
    this.owned.fill(1, 0, PCI_STD_HEADER_SIZE);
  }

  // ── Requester side: what a configuration read or write TLP does ──────────

  /** A configuration read; the value is unsigned. */
  read(offset: number, size: AccessSize): number {
    checkAccess(offset, size);
    return this.readUnchecked(offset, size);
  }

  /** A read after the caller has checked offset, size and alignment. */
  readUnchecked(offset: number, size: AccessSize): number {
    if (size === 4) return this.dv.getUint32(offset, true);
    if (size === 2) return this.dv.getUint16(offset, true);
    return this.bytes[offset]!;
  }

  /** A configuration write, through the masks, then the watching capability's hook. */
  write(offset: number, size: AccessSize, value: number): void {
    checkAccess(offset, size);
    if (!Number.isInteger(value)) throw new SrIovError('invalid-argument', `configuration write of ${String(value)} at ${hex(offset)}: not an integer`, offset);
    this.writeUnchecked(offset, size, value);
  }

  /** A write after the caller has checked offset, size, alignment and that value is an integer. */
  writeUnchecked(offset: number, size: AccessSize, value: number): void {
    const hook = this.hookAt[offset >>> 2]!;
    const previous = hook === NO_HOOK ? 0 : this.readUnchecked(offset, size);
    // The per-byte rule is bitwise, so it applies to a whole DW or word at once.
    if (size === 4) {
      const w = this.wdv.getUint32(offset, true);
      const c = this.cdv.getUint32(offset, true);
      this.dv.setUint32(offset, (((this.dv.getUint32(offset, true) & ~w) | (value & w)) & ~(value & c)) >>> 0, true);
    } else if (size === 2) {
      const w = this.wdv.getUint16(offset, true);
      const c = this.cdv.getUint16(offset, true);
      this.dv.setUint16(offset, ((this.dv.getUint16(offset, true) & ~w) | (value & w)) & ~(value & c) & 0xffff, true);
    } else {
      const w = this.wmask[offset]!;
      this.bytes[offset] = ((this.bytes[offset]! & ~w) | (value & w)) & ~(value & this.w1cmask[offset]!) & 0xff;
    }
    if (hook !== NO_HOOK) this.hooks[hook]!(offset, size, previous, size === 4 ? value >>> 0 : value & ((1 << (8 * size)) - 1));
  }

  // ── Device side: how the model lays out registers ────────────────────────

  /** Little-endian getters that ignore masks (the device's own view). */
  getU8(offset: number): number {
    return this.bytes[offset]!;
  }
  getU16(offset: number): number {
    return this.dv.getUint16(offset, true);
  }
  getU32(offset: number): number {
    return this.dv.getUint32(offset, true);
  }
  /** Setters that ignore masks: the device sets its read-only values and status bits. */
  setU8(offset: number, value: number): void {
    this.bytes[offset] = value;
  }
  setU16(offset: number, value: number): void {
    this.dv.setUint16(offset, value, true);
  }
  setU32(offset: number, value: number): void {
    this.dv.setUint32(offset, value >>> 0, true);
  }

  /** Makes `mask` the read-write bits of the `size`-byte register at `offset` (the rest read-only). */
  setWritable(offset: number, size: 1 | 2 | 4, mask: number): void {
    for (let i = 0; i < size; i++) {
      const m = (mask >>> (8 * i)) & 0xff;
      if (m & this.w1cmask[offset + i]!) throw new SrIovError('invalid-argument', `bit(s) ${hex(m & this.w1cmask[offset + i]!)} at ${hex(offset + i)} would be both RW and RW1C`, offset + i);
      this.wmask[offset + i] = m;
    }
  }

  /** Makes `mask` the write-1-to-clear bits of the register at `offset`. */
  setWriteOneToClear(offset: number, size: 1 | 2 | 4, mask: number): void {
    for (let i = 0; i < size; i++) {
      const m = (mask >>> (8 * i)) & 0xff;
      if (m & this.wmask[offset + i]!) throw new SrIovError('invalid-argument', `bit(s) ${hex(m & this.wmask[offset + i]!)} at ${hex(offset + i)} would be both RW and RW1C`, offset + i);
      this.w1cmask[offset + i] = m;
    }
  }

  /**
   * Runs `hook` after every write that touches [offset, offset+length).
   * Hooks are per DW: two hooks cannot watch the same DW.
   */
  onWrite(offset: number, length: number, hook: WriteHook): void {
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length <= 0 || offset + length > CONFIG_SPACE_SIZE) {
      throw new SrIovError('invalid-argument', `write hook range ${hex(offset)}+${length} is outside configuration space`, offset);
    }
    const first = offset >>> 2;
    const last = (offset + length - 1) >>> 2;
    for (let dw = first; dw <= last; dw++) {
      if (this.hookAt[dw] !== NO_HOOK) throw new SrIovError('invalid-argument', `DW at ${hex(dw * 4)} already has a write hook`, dw * 4);
    }
    const index = this.hooks.push(hook) - 1;
    for (let dw = first; dw <= last; dw++) this.hookAt[dw] = index;
  }

  /** Runs `listener` after a reset has restored the power-on bytes and masks (FLR, §6.6.2). */
  onReset(listener: () => void): void {
    this.resetListeners.push(listener);
  }

  /** Function Level Reset of the registers: power-on bytes and masks, then the reset listeners. */
  reset(): void {
    this.bytes.set(this.resetBytes);
    this.wmask.set(this.resetWmask);
    this.w1cmask.set(this.resetW1cmask);
    for (const l of this.resetListeners) l();
  }

  /** Records the current bytes and masks as the power-on state that `reset()` restores. */
  captureResetState(): void {
    this.resetBytes.set(this.bytes);
    this.resetWmask.set(this.wmask);
    this.resetW1cmask.set(this.w1cmask);
  }

  // ── Capability lists ──────────────────────────────────────────────────────

  /**
   * Adds a capability to the PCI-compatible list (40h..FFh), at `at` or at the
   * first free DW-aligned place, linked after the last one added.
   */
  addCapability<P, R>(type: CapabilityType<P, R>, params: P, at?: number): R {
    const size = checkedSize(type.name, type.size(params), 2);
    const offset = this.place(type.name, size, at, PCI_STD_HEADER_SIZE, EXTENDED_CONFIG_START);
    if (!Number.isInteger(type.id) || type.id < 1 || type.id > 0xff) throw new SrIovError('invalid-argument', `capability ${type.name}: ID ${type.id} is not 01h..FFh`, type.id);
    this.owned.fill(1, offset, offset + size);
    this.setU8(offset, type.id);
    this.setU8(offset + 1, 0);
    if (this.lastCap === 0) {
      this.setU8(PCI_CAPABILITY_LIST, offset);
      this.setU16(PCI_STATUS, this.getU16(PCI_STATUS) | PCI_STATUS_CAP_LIST);
    } else {
      this.setU8(this.lastCap + 1, offset);
    }
    this.lastCap = offset;
    const result = type.init(this, offset, params);
    this.entries.push({ id: type.id, offset, size, name: type.name, extended: false });
    this.captureResetState();
    return result;
  }

  /**
   * Adds an extended capability (§7.6.3): the first one is always at 100h;
   * the others at `at` or the first free DW-aligned place.
   */
  addExtendedCapability<P, R>(type: ExtendedCapabilityType<P, R>, params: P, at?: number): R {
    const size = checkedSize(type.name, type.size(params), 4);
    if (this.lastExtCap === 0 && at !== undefined && at !== EXTENDED_CONFIG_START) {
      throw new SrIovError('invalid-argument', `extended capability ${type.name}: the first extended capability must be at 100h (§7.6.3), not ${hex(at)}`, at);
    }
    const offset = this.place(type.name, size, this.lastExtCap === 0 ? EXTENDED_CONFIG_START : at, EXTENDED_CONFIG_START, CONFIG_SPACE_SIZE);
    if (!Number.isInteger(type.id) || type.id < 1 || type.id > 0xffff) throw new SrIovError('invalid-argument', `extended capability ${type.name}: ID ${type.id} is not 0001h..FFFFh`, type.id);
    if (!Number.isInteger(type.version) || type.version < 0 || type.version > 0xf) throw new SrIovError('invalid-argument', `extended capability ${type.name}: version ${type.version} is not 0..15`, type.version);
    this.owned.fill(1, offset, offset + size);
    this.setU32(offset, type.id | (type.version << 16));
    if (this.lastExtCap !== 0) {
      const prev = this.getU32(this.lastExtCap);
      this.setU32(this.lastExtCap, (prev & 0xfffff) | (offset << 20));
    }
    this.lastExtCap = offset;
    const result = type.init(this, offset, params);
    this.entries.push({ id: type.id, offset, size, name: type.name, extended: true, version: type.version });
    this.captureResetState();
    return result;
  }

  /** The capabilities added, in list order (PCI-compatible first). */
  capabilities(): readonly CapabilityEntry[] {
    return [...this.entries.filter((e) => !e.extended), ...this.entries.filter((e) => e.extended)];
  }

  /**
   * Walks the PCI-compatible list as software does (§7.5.1.1.x: pointers are
   * DW-aligned in 40h..FFh), bounded and cycle-proof; returns the offset of the
   * first capability with `id`, or 0.
   */
  findCapability(id: number): number {
    if (!(this.getU16(PCI_STATUS) & PCI_STATUS_CAP_LIST)) return 0;
    let at = this.getU8(PCI_CAPABILITY_LIST) & 0xfc;
    for (let n = 0; n < MAX_CAPS && at >= PCI_STD_HEADER_SIZE; n++) {
      if (this.getU8(at) === id) return at;
      at = this.getU8(at + 1) & 0xfc;
    }
    return 0;
  }

  /** Walks the extended list from 100h (§7.6.3), bounded; the offset of `id`, or 0. */
  findExtendedCapability(id: number): number {
    let at = EXTENDED_CONFIG_START;
    for (let n = 0; n < MAX_EXT_CAPS && at >= EXTENDED_CONFIG_START; n++) {
      const header = this.getU32(at);
      if (header === 0 || header === 0xffffffff) return 0;
      if ((header & 0xffff) === id) return at;
      at = (header >>> 20) & 0xffc;
    }
    return 0;
  }

  private place(name: string, size: number, at: number | undefined, lo: number, hi: number): number {
    if (at !== undefined) {
      if (!Number.isInteger(at) || at % 4 !== 0 || at < lo || at + size > hi) {
        throw new SrIovError('no-space', `capability ${name} (${size} bytes) cannot go at ${hex(at)}: it must be DW-aligned within ${hex(lo)}..${hex(hi - 1)}`, at, hi);
      }
      for (let i = at; i < at + size; i++) {
        if (this.owned[i]) throw new SrIovError('no-space', `capability ${name} at ${hex(at)} overlaps registers already in use at ${hex(i)}`, at);
      }
      return at;
    }
    for (let o = lo; o + size <= hi; o += 4) {
      let free = true;
      for (let i = o; i < o + size; i++) {
        if (this.owned[i]) {
          free = false;
          o = i & ~3;
          break;
        }
      }
      if (free) return o;
    }
    throw new SrIovError('no-space', `no room for capability ${name} (${size} bytes) in ${hex(lo)}..${hex(hi - 1)}`, size, hi - lo);
  }
}

function checkedSize(name: string, size: number, min: number): number {
  if (!Number.isInteger(size) || size < min || size > CONFIG_SPACE_SIZE) throw new SrIovError('invalid-argument', `capability ${name}: size ${size} is not usable`, size);
  return (size + 3) & ~3;
}

export function checkAccess(offset: number, size: number): asserts size is AccessSize {
  if (size !== 1 && size !== 2 && size !== 4) throw new SrIovError('invalid-size', `configuration access of ${size} bytes: only 1, 2 or 4`, size);
  if (!Number.isInteger(offset) || offset < 0 || offset + size > CONFIG_SPACE_SIZE) {
    throw new SrIovError('out-of-range', `configuration access of ${size} byte(s) at ${String(offset)} is outside the 4 KiB space`, offset, CONFIG_SPACE_SIZE);
  }
  if (offset & (size - 1)) throw new SrIovError('misaligned', `configuration access of ${size} bytes at ${hex(offset)} is not naturally aligned`, offset, size);
}
