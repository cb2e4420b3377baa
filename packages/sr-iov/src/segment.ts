import { type AccessSize, checkAccess } from './config-space.js';
import { SrIovError } from './errors.js';
import type { PciFunction } from './pci-function.js';
import { PhysicalFunction } from './physical-function.js';
import { VirtualFunction } from './virtual-function.js';
import { type PciAddressInput, type RoutingId, formatRid, toRid } from './routing-id.js';

/**
 * One PCI segment (domain): the functions that answer configuration requests,
 * by routing ID. VFs join when their PF sets VF Enable and leave when it
 * clears it, so the segment never holds a stale function.
 */
export class PciSegment {
  private readonly byRid = new Map<RoutingId, PciFunction>();
  private readonly unsubscribe = new Map<PhysicalFunction, () => void>();

  constructor(readonly domain = 0) {
    if (!Number.isInteger(domain) || domain < 0 || domain > 0xffff) throw new SrIovError('invalid-argument', `PCI domain ${String(domain)} is not 0..ffff`, domain);
  }

  /** Adds a function (a PF brings its VFs along, now and later). */
  add(fn: PciFunction): void {
    if (fn.domain !== this.domain) throw new SrIovError('invalid-argument', `${fn.address} is in domain ${fn.domain}, this segment is ${this.domain}`, fn.domain);
    const clash = this.byRid.get(fn.rid);
    if (clash) throw new SrIovError('rid-collision', `${formatRid(fn.rid, this.domain)} is already taken`, fn.rid);
    if (fn instanceof PhysicalFunction) {
      for (const vf of fn.vfs) {
        if (this.byRid.has(vf.rid)) throw new SrIovError('rid-collision', `VF ${vf.address} of ${fn.address} clashes with a function already on the segment`, vf.rid);
      }
    }
    this.byRid.set(fn.rid, fn);
    if (fn instanceof PhysicalFunction) {
      for (const vf of fn.vfs) this.byRid.set(vf.rid, vf);
      const offAdd = fn.on('vf-added', (vf) => this.byRid.set(vf.rid, vf));
      const offRemove = fn.on('vf-removed', (vf) => {
        if (this.byRid.get(vf.rid) === vf) this.byRid.delete(vf.rid);
      });
      fn.attachRegistry({ isTaken: (rid, except) => {
        const f = this.byRid.get(rid);
        return f !== undefined && f !== except && !(f instanceof VirtualFunction && f.pf === except);
      } });
      this.unsubscribe.set(fn, () => {
        offAdd();
        offRemove();
        fn.attachRegistry(undefined);
      });
    }
  }

  /** Removes a function (and a PF's VFs). */
  remove(fn: PciFunction): void {
    if (this.byRid.get(fn.rid) !== fn) return;
    this.byRid.delete(fn.rid);
    if (fn instanceof PhysicalFunction) {
      for (const vf of fn.vfs) if (this.byRid.get(vf.rid) === vf) this.byRid.delete(vf.rid);
      this.unsubscribe.get(fn)?.();
      this.unsubscribe.delete(fn);
    }
  }

  /** The function at an address, if one answers there. */
  get(address: PciAddressInput): PciFunction | undefined {
    return this.byRid.get(toRid(address).rid);
  }

  /** Every function, by routing ID (what `lspci` lists). */
  functions(): PciFunction[] {
    return [...this.byRid.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]);
  }

  /**
   * A configuration read routed by RID. Nothing there: the request completes
   * with Unsupported Request and the root complex returns all ones (§2.3.2, §7.5.1.1.1).
   */
  configRead(rid: RoutingId, offset: number, size: AccessSize): number {
    checkAccess(offset, size);
    const fn = this.byRid.get(rid);
    if (!fn) return size === 4 ? 0xffffffff : size === 2 ? 0xffff : 0xff;
    return fn.config.readUnchecked(offset, size);
  }

  /**
   * A read at `offset` into this segment's ECAM window (PCIe Base 6.0 §7.2.2):
   * A[27:20] bus, A[19:15] device, A[14:12] function, A[11:0] register.
   */
  ecamRead(offset: number, size: AccessSize): number {
    const { rid, reg } = ecamDecode(offset, size);
    return this.configRead(rid, reg, size);
  }

  /** A write into the ECAM window (see `ecamRead`). */
  ecamWrite(offset: number, size: AccessSize, value: number): void {
    const { rid, reg } = ecamDecode(offset, size);
    this.configWrite(rid, reg, size, value);
  }

  /** A configuration write routed by RID; to nothing, it is dropped (Unsupported Request). */
  configWrite(rid: RoutingId, offset: number, size: AccessSize, value: number): void {
    const fn = this.byRid.get(rid);
    if (!fn) {
      checkAccess(offset, size);
      return;
    }
    fn.config.write(offset, size, value);
  }
}

/** ECAM covers 256 buses × 32 devices × 8 functions × 4 KiB = 256 MiB. */
export const ECAM_WINDOW_SIZE = 1 << 28;

const decoded = { rid: 0, reg: 0 };

function ecamDecode(offset: number, size: number): { rid: RoutingId; reg: number } {
  if (!Number.isInteger(offset) || offset < 0 || offset + size > ECAM_WINDOW_SIZE) {
    throw new SrIovError('out-of-range', `ECAM access at ${String(offset)} is outside the 256 MiB window`, offset, ECAM_WINDOW_SIZE);
  }
  decoded.rid = offset >>> 12;
  decoded.reg = offset & 0xfff;
  return decoded;
}
