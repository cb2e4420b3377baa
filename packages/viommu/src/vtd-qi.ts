import type { GuestMemory, Region } from '@ioplane/guest-memory';
import { ViommuError } from './errors.js';
import type { VtdRemapper } from './vtd.js';
import type { VtdInvalidator } from './vtd-driver.js';

/*
 * VT-d queued invalidation (Intel VT-d spec §6.5.2; QEMU hw/i386/intel_iommu.c
 * and Linux drivers/iommu/intel/dmar.c `qi_submit_sync` checked for
 * behaviour): software writes 128-bit invalidation descriptors into a ring in
 * its own memory and moves the tail register; the unit executes them from its
 * head and signals completion by an invalidation wait descriptor whose status
 * write lands in guest memory. That is how a guest and a remapping unit on two
 * threads talk: the ring and the status dword live in the shared guest RAM,
 * and the few registers in a small shared block (`VtdQiRegisters`).
 *
 * Registers modelled (one Int32 cell each, `QI_REG`):
 *   IQA  (IQA_REG, §10.4.23): bits 63:12 base (4 KiB aligned), bit 11 DW (0: 128-bit
 *        descriptors, the only width here), bits 2:0 QS — the ring holds 256 × 2^QS descriptors.
 *   IQH  (IQH_REG): bits 18:4, the index of the next descriptor the unit fetches (unit-owned).
 *   IQT  (IQT_REG): bits 18:4, one past the last descriptor software wrote (software-owned).
 *   FSTS.IQE (bit 4): the unit stopped on the descriptor at IQH; software clears it (write 1).
 *   ICS.IWC (bit 0): a wait descriptor with IF completed.
 *   GCMD/GSTS: QIE (bit 26) enables the queue; SRTP (bit 30) latches RTADDR; TE (bit 31).
 *   RTADDR: the root-table address (bits 11:10, TTM, must be 0: legacy mode).
 * Beside them, cells that an MMIO write (or a spinning CPU) would make unnecessary on hardware:
 *   CMD_SEQ/CMD_ACK: software bumps CMD_SEQ after writing GCMD (a register write is one event
 *     on hardware; across threads it must be sequenced), the unit copies it to CMD_ACK when
 *     GSTS reflects the command. BELL: a counter rung after every register write (the MMIO
 *     trap), which the unit's thread waits on. IQE_INFO: why the unit stopped (`QI_ERRORS`).
 *   SLEEPERS: how many software threads sleep on the status dword, IQH or CMD_ACK (a thread
 *     that blocks counts itself in first; the unit wakes them only then).
 *
 * Descriptors (128-bit, two little-endian qwords lo, hi; type = lo bits 3:0 | bits 11:9 << 4):
 *   1 context-cache: lo G 5:4 (1 global, 2 domain, 3 device), DID 31:16, SID 47:32, FM 49:48;
 *     reserved lo 8:6, 15:12, 63:50 and all of hi.
 *   2 IOTLB: lo G 5:4 (1 global, 2 domain, 3 page), DR 7, DW 6, DID 31:16; hi ADDR 63:12,
 *     IH 6, AM 5:0; reserved lo 8, 15:12, 63:32 and hi 11:7.
 *   5 invalidation wait: lo IF 4, SW 5, FN 6, status data 63:32; hi status address 63:2;
 *     reserved lo 8:7 (PD is a page-request drain, not modelled), 31:12, and hi 1:0.
 * The reserved masks are QEMU's (VTD_INV_DESC_*_RSVD). Anything else — device-TLB (type 3:
 * no ATS, ECAP.DT = 0), interrupt-entry cache (type 4: no interrupt remapping, ECAP.IR = 0),
 * the scalable-mode types 6–8 — is an invalid descriptor here, as on a unit without them.
 */

/** Cell indices in the register block. */
export const QI_REG = {
  GCMD: 0,
  GSTS: 1,
  RTADDR_LO: 2,
  RTADDR_HI: 3,
  IQA_LO: 4,
  IQA_HI: 5,
  IQH: 6,
  IQT: 7,
  FSTS: 8,
  ICS: 9,
  CMD_SEQ: 10,
  CMD_ACK: 11,
  BELL: 12,
  IQE_INFO: 13,
  /** Why the last command was refused (`QI_ERRORS` code), 0 if it was applied. */
  CMD_ERR: 14,
  /**
   * Software threads blocked (`Atomics.wait`) on the status dword, IQH or
   * CMD_ACK: each adds 1 before it blocks and takes it back after. The unit
   * wakes sleepers only while it is nonzero — a wake is a futex call costing
   * the unit's thread ~0.5 µs beside a guest thread — so software that spins
   * (as Linux's `qi_submit_sync` does) costs it nothing.
   */
  SLEEPERS: 15,
} as const;
const REG_CELLS = 16;

/** GCMD/GSTS bits (VT-d §10.4.4–10.4.5). */
export const GCMD_TE = 1 << 31;
export const GCMD_SRTP = 1 << 30;
export const GCMD_QIE = 1 << 26;
/** FSTS.IQE (bit 4) and ICS.IWC (bit 0). */
export const FSTS_IQE = 1 << 4;
export const ICS_IWC = 1;

/** Descriptor types (lo bits 3:0). */
export const QI_TYPE = { context: 1, iotlb: 2, deviceTlb: 3, interruptEntry: 4, wait: 5 } as const;
/** Wait descriptor flags (lo). */
export const QI_WAIT_IF = 1 << 4;
export const QI_WAIT_SW = 1 << 5;
export const QI_WAIT_FN = 1 << 6;

const PAGE = 4096;
const U32 = 0x1_0000_0000;
const DESC = 16;
/** Reserved bits, as two 32-bit halves per qword (QEMU's masks). */
const CC_RSVD_LO0 = 0xf1c0;
const CC_RSVD_LO1 = 0xfffc_0000;
const IOTLB_RSVD_LO0 = 0xf100;
const IOTLB_RSVD_HI0 = 0xf80;
const WAIT_RSVD_LO0 = 0xffff_f180;
const WAIT_RSVD_HI0 = 3;

/**
 * Why the unit stopped (IQE) or refused a command; the index is the code kept in IQE_INFO /
 * CMD_ERR, so the other thread can name it. Our codes, not the spec's IQERCD.IQEI values.
 */
export const QI_ERRORS = [
  'none',
  /** A descriptor type this unit does not implement (or a reserved one). */
  'unsupported-type',
  /** A reserved field of the descriptor is not zero. */
  'reserved-bits',
  /** Granularity 0 (reserved) in a context-cache or IOTLB descriptor. */
  'granularity',
  /** A page-selective invalidation's address mask above the unit's MAMV. */
  'address-mask',
  /** A page-selective invalidation's address at or above 2^MGAW. */
  'address',
  /** A wait descriptor's status address is not guest memory (or read-only). */
  'status-address',
  /** IQT beyond the ring, or not on a descriptor boundary. */
  'tail',
  /** IQA: DW = 1, reserved bits, or a ring that is not inside one region of guest memory. */
  'queue-address',
  /** RTADDR: TTM not legacy, or not an address the unit accepts. */
  'root-table',
] as const;
export type VtdQiErrorReason = (typeof QI_ERRORS)[number];
const E_TYPE = 1;
const E_RESERVED = 2;
const E_GRANULARITY = 3;
const E_AM = 4;
const E_ADDRESS = 5;
const E_STATUS = 6;
const E_TAIL = 7;
const E_IQA = 8;
const E_ROOT = 9;

/** What the unit recorded when it stopped (IQE) or refused a command. */
export interface VtdQiFault {
  readonly reason: VtdQiErrorReason;
  /** The ring index of the descriptor at fault (IQH), −1 for a register. */
  readonly index: number;
  /** The descriptor's qwords (0n for a register error). */
  readonly lo: bigint;
  readonly hi: bigint;
  readonly message: string;
}

/**
 * The invalidation-queue registers, in a small `SharedArrayBuffer` both
 * threads map (give `array` to the other thread and wrap it there with
 * `new VtdQiRegisters(array)`). `ring()` is the doorbell: every register write
 * by software is followed by one, as an MMIO write traps to the device model.
 */
export class VtdQiRegisters {
  readonly array: Int32Array;

  constructor(array: Int32Array) {
    if (!(array.buffer instanceof SharedArrayBuffer) || array.length < REG_CELLS) {
      throw new ViommuError('invalid-option', `VT-d QI registers need an Int32Array of ${REG_CELLS} cells over a SharedArrayBuffer`, array.length);
    }
    this.array = array;
  }

  static create(): VtdQiRegisters {
    return new VtdQiRegisters(new Int32Array(new SharedArrayBuffer(REG_CELLS * 4)));
  }

  load(cell: number): number {
    return Atomics.load(this.array, cell);
  }

  store(cell: number, value: number): void {
    Atomics.store(this.array, cell, value | 0);
    Atomics.notify(this.array, cell);
  }

  /** Rings the doorbell: bumps BELL and wakes its waiter. */
  ring(): void {
    Atomics.add(this.array, QI_REG.BELL, 1);
    Atomics.notify(this.array, QI_REG.BELL);
  }

  get bell(): number {
    return Atomics.load(this.array, QI_REG.BELL);
  }

  /** IQH as a descriptor index. */
  get head(): number {
    return Atomics.load(this.array, QI_REG.IQH) >>> 4;
  }

  /** Whether the unit stopped on an invalid descriptor (FSTS.IQE). */
  get queueError(): boolean {
    return (Atomics.load(this.array, QI_REG.FSTS) & FSTS_IQE) !== 0;
  }

  /** The reason of the last IQE. */
  get queueErrorReason(): VtdQiErrorReason {
    return QI_ERRORS[Atomics.load(this.array, QI_REG.IQE_INFO)] ?? 'none';
  }

  /** Software clears FSTS.IQE (write-1-to-clear) and rings, so the unit resumes at IQH. */
  clearQueueError(): void {
    Atomics.and(this.array, QI_REG.FSTS, ~FSTS_IQE);
    this.ring();
  }

  /** Software clears ICS.IWC (write-1-to-clear). */
  clearWaitComplete(): void {
    Atomics.and(this.array, QI_REG.ICS, ~ICS_IWC);
  }
}

export interface VtdInvalidationQueueOptions {
  /** CAP.MAMV: the largest address mask of a page-selective invalidation. Default 18 (QEMU's). */
  mamv?: number;
  /** CAP.MGAW + 1: page-selective addresses must be below 2^mgaw. Default 48. */
  mgaw?: number;
  /** Called when a wait descriptor with IF completes (the invalidation completion event). */
  onWaitComplete?: () => void;
  /** Called when the unit stops on an invalid descriptor (IQE) or refuses a command. */
  onError?: (fault: VtdQiFault) => void;
}

/**
 * The unit side of queued invalidation, attached to a `VtdRemapper` and the
 * guest memory holding the ring. Call `process()` (or `poll()`, or `serve()`)
 * on the unit's thread; it executes descriptors from IQH to IQT and applies
 * register commands (QIE, SRTP, TE).
 */
export class VtdInvalidationQueue {
  readonly regs: VtdQiRegisters;
  /** Set when the unit stopped (IQE) or refused the last command; cleared when software clears IQE. */
  error: VtdQiFault | undefined;
  readonly stats = { descriptors: 0, waits: 0, statusWrites: 0, errors: 0, commands: 0, polls: 0 };
  private readonly a: Int32Array;
  private readonly mamv: number;
  private readonly mgaw: number;
  /** 2^mgaw, which page-selective addresses must be below. */
  private readonly addressLimit: number;
  private readonly onWaitComplete: (() => void) | undefined;
  private readonly onError: ((f: VtdQiFault) => void) | undefined;
  private enabled = false;
  /** Ring size in descriptors, and its bytes: the region's view and the ring's offset in it. */
  private size = 0;
  private view: DataView | undefined;
  private viewOff = 0;
  /** IQH as a descriptor index (the register holds it × 16). */
  private head = 0;
  private cmdSeen = 0;
  private lastGcmd = 0;
  private iqe = false;
  private running = false;
  private loop: Promise<void> | undefined;

  constructor(
    readonly unit: VtdRemapper,
    readonly mem: GuestMemory,
    regs: VtdQiRegisters = VtdQiRegisters.create(),
    options: VtdInvalidationQueueOptions = {},
  ) {
    this.regs = regs;
    this.a = regs.array;
    this.mamv = options.mamv ?? 18;
    this.mgaw = options.mgaw ?? 48;
    if (!Number.isInteger(this.mamv) || this.mamv < 0 || this.mamv > 52) throw new ViommuError('invalid-option', `MAMV ${String(this.mamv)} is not between 0 and 52`, this.mamv);
    if (!Number.isInteger(this.mgaw) || this.mgaw < 32 || this.mgaw > 52) throw new ViommuError('invalid-option', `MGAW ${String(this.mgaw)} is not between 32 and 52 bits`, this.mgaw);
    this.addressLimit = 2 ** this.mgaw;
    this.onWaitComplete = options.onWaitComplete;
    this.onError = options.onError;
    this.cmdSeen = Atomics.load(this.a, QI_REG.CMD_SEQ);
  }

  /** Whether the queue is enabled (GSTS.QIES). */
  get queueEnabled(): boolean {
    return this.enabled;
  }

  /** Ring size in descriptors (0 while disabled). */
  get queueSize(): number {
    return this.size;
  }

  /**
   * The cheap check for a device thread's own loop: one load of IQT against
   * the head and one of CMD_SEQ; processes only when something moved.
   */
  poll(): number {
    const a = this.a;
    if (Atomics.load(a, QI_REG.IQT) === this.head * DESC && Atomics.load(a, QI_REG.CMD_SEQ) === this.cmdSeen && !this.iqe) return 0;
    this.stats.polls++;
    return this.process();
  }

  /**
   * Applies a pending register command, then executes descriptors from IQH
   * to IQT unless stopped by an IQE. Returns the number executed. At most one
   * ring's worth per call: the tail is below the ring size, so the head meets
   * it within `size` steps.
   */
  process(): number {
    const a = this.a;
    if (Atomics.load(a, QI_REG.CMD_SEQ) !== this.cmdSeen) this.command();
    if (!this.enabled) return 0;
    if (this.iqe) {
      // Stopped until software clears FSTS.IQE (after fixing the descriptor at IQH).
      if ((Atomics.load(a, QI_REG.FSTS) & FSTS_IQE) !== 0) return 0;
      this.iqe = false;
      this.error = undefined;
      Atomics.store(a, QI_REG.IQE_INFO, 0);
    }
    const tailReg = Atomics.load(a, QI_REG.IQT);
    // QT is bits 18:4; a tail off a descriptor boundary or past the ring is an IQE (QEMU: "invalid tail").
    if ((tailReg & 0xf) !== 0 || tailReg >>> 4 >= this.size) {
      this.raise(E_TAIL, this.head, 0, 0, 0, 0, `IQT 0x${(tailReg >>> 0).toString(16)} is not a descriptor index below the ring size ${this.size}`);
      return 0;
    }
    const tail = tailReg >>> 4;
    const v = this.view!;
    const base = this.viewOff;
    let h = this.head;
    let n = 0;
    while (h !== tail) {
      const off = base + h * DESC;
      const lo0 = v.getUint32(off, true);
      const lo1 = v.getUint32(off + 4, true);
      const hi0 = v.getUint32(off + 8, true);
      const hi1 = v.getUint32(off + 12, true);
      const next = h + 1 === this.size ? 0 : h + 1;
      // IQH passes a wait descriptor before its status write is seen: software that wakes on
      // the status then reads a head past it (on an error IQH is set back to the descriptor).
      if ((lo0 & 0xf) === QI_TYPE.wait) Atomics.store(a, QI_REG.IQH, next * DESC);
      const e = this.execute(lo0, lo1, hi0, hi1);
      if (e !== 0) {
        this.head = h;
        Atomics.store(a, QI_REG.IQH, h * DESC);
        this.raise(e, h, lo0, lo1, hi0, hi1, this.describe(e, lo0, lo1, hi0, hi1));
        return n;
      }
      n++;
      h = next;
    }
    this.head = h;
    Atomics.store(a, QI_REG.IQH, h * DESC);
    if (n > 0 && Atomics.load(a, QI_REG.SLEEPERS) !== 0) Atomics.notify(a, QI_REG.IQH);
    this.stats.descriptors += n;
    return n;
  }

  /**
   * Executes one descriptor from its four 32-bit words; returns 0 or a
   * `QI_ERRORS` code (then nothing was done). No bigint, no allocation.
   */
  private execute(lo0: number, lo1: number, hi0: number, hi1: number): number {
    const type = (lo0 & 0xf) | ((lo0 >>> 5) & 0x70);
    const g = (lo0 >>> 4) & 3;
    const unit = this.unit;
    if (type === QI_TYPE.iotlb) {
      if ((lo0 & IOTLB_RSVD_LO0) !== 0 || lo1 !== 0 || (hi0 & IOTLB_RSVD_HI0) !== 0) return E_RESERVED;
      const did = lo0 >>> 16;
      if (g === 1) unit.invalidateIotlbGlobal();
      else if (g === 2) unit.invalidateIotlbDomain(did);
      else if (g === 3) {
        const am = hi0 & 0x3f;
        if (am > this.mamv) return E_AM;
        const addr = hi1 * U32 + ((hi0 & 0xffff_f000) >>> 0);
        if (addr >= this.addressLimit) return E_ADDRESS;
        // DR/DW (drain reads/writes) are satisfied: requests are translated in order on one thread.
        unit.invalidateIotlbPages(did, addr, am, (hi0 & 0x40) !== 0);
      } else return E_GRANULARITY;
      return 0;
    }
    if (type === QI_TYPE.wait) {
      if ((lo0 & WAIT_RSVD_LO0) !== 0 || (hi0 & WAIT_RSVD_HI0) !== 0) return E_RESERVED;
      // FN (fence): every earlier descriptor has completed already; descriptors run in order.
      if ((lo0 & QI_WAIT_SW) !== 0 && !this.statusWrite(hi1 * U32 + hi0, lo1)) return E_STATUS;
      if ((lo0 & QI_WAIT_IF) !== 0) {
        Atomics.or(this.a, QI_REG.ICS, ICS_IWC);
        Atomics.notify(this.a, QI_REG.ICS);
        this.onWaitComplete?.();
      }
      this.stats.waits++;
      return 0;
    }
    if (type === QI_TYPE.context) {
      if ((lo0 & CC_RSVD_LO0) !== 0 || (lo1 & CC_RSVD_LO1) !== 0 || hi0 !== 0 || hi1 !== 0) return E_RESERVED;
      if (g === 1) unit.invalidateContextGlobal();
      else if (g === 2) unit.invalidateContextDomain(lo0 >>> 16);
      else if (g === 3) {
        // FM masks the low 1, 2 or 3 bits of the function number (VT-d §6.5.2.1).
        const fm = (lo1 >>> 16) & 3;
        const mask = fm === 0 ? 0 : (1 << fm) - 1;
        const first = lo1 & 0xffff & ~mask;
        for (let s = 0; s <= mask; s++) unit.invalidateContextDevice(first | s);
      } else return E_GRANULARITY;
      return 0;
    }
    return E_TYPE;
  }

  /**
   * The wait descriptor's status write: a dword of guest memory (untranslated).
   * Over a shared region an atomic store and a notify, so a guest thread
   * waiting on that dword wakes. False when it is not writable guest memory.
   */
  private statusWrite(addr: number, data: number): boolean {
    const r: Region | undefined = this.mem.findRegion(addr);
    if (r === undefined || addr + 4 > r.end || r.readonly) return false;
    const host = r.hostOffset + (addr - r.gpa);
    if (r.shared && host % 4 === 0) {
      Atomics.store(r.i32, host / 4, data | 0);
      // Stored before SLEEPERS is read (both sequentially consistent): a thread counted in after the
      // read sees the status before it blocks; one counted in before is woken.
      if (Atomics.load(this.a, QI_REG.SLEEPERS) !== 0) Atomics.notify(r.i32, host / 4);
    } else r.view.setUint32(addr - r.gpa, data, true);
    this.stats.statusWrites++;
    return true;
  }

  /** Invalidation queue error: stop at `index`, raise FSTS.IQE, record why. */
  private raise(code: number, index: number, lo0: number, lo1: number, hi0: number, hi1: number, message: string): void {
    const a = this.a;
    this.iqe = true;
    this.stats.errors++;
    Atomics.store(a, QI_REG.IQE_INFO, code);
    Atomics.or(a, QI_REG.FSTS, FSTS_IQE);
    Atomics.notify(a, QI_REG.FSTS);
    const fault: VtdQiFault = {
      reason: QI_ERRORS[code]!,
      index,
      lo: (BigInt(lo1) << 32n) | BigInt(lo0),
      hi: (BigInt(hi1) << 32n) | BigInt(hi0),
      message: `invalidation queue error at descriptor ${index}: ${message}`,
    };
    this.error = fault;
    this.onError?.(fault);
  }

  private describe(code: number, lo0: number, lo1: number, hi0: number, hi1: number): string {
    const type = (lo0 & 0xf) | ((lo0 >>> 5) & 0x70);
    const words = `lo=0x${lo1.toString(16).padStart(8, '0')}${lo0.toString(16).padStart(8, '0')} hi=0x${hi1.toString(16).padStart(8, '0')}${hi0.toString(16).padStart(8, '0')}`;
    switch (code) {
      case E_TYPE:
        return `descriptor type ${type} is not supported (${words})`;
      case E_RESERVED:
        return `reserved bits set in a type ${type} descriptor (${words})`;
      case E_GRANULARITY:
        return `granularity 0 is reserved (${words})`;
      case E_AM:
        return `address mask ${hi0 & 0x3f} is above MAMV ${this.mamv} (${words})`;
      case E_ADDRESS:
        return `page-selective address is not below 2^${this.mgaw} (${words})`;
      default:
        return `status address 0x${(hi1 * U32 + hi0).toString(16)} is not writable guest memory (${words})`;
    }
  }

  /** Applies GCMD as software last wrote it (QIE, SRTP, TE), then acknowledges the command. */
  private command(): void {
    const a = this.a;
    const seq = Atomics.load(a, QI_REG.CMD_SEQ);
    this.cmdSeen = seq;
    this.stats.commands++;
    const gcmd = Atomics.load(a, QI_REG.GCMD);
    let err = 0;
    let message = '';
    if ((gcmd & GCMD_QIE) !== 0 && !this.enabled) {
      const lo = Atomics.load(a, QI_REG.IQA_LO) >>> 0;
      const hi = Atomics.load(a, QI_REG.IQA_HI) >>> 0;
      const qs = lo & 7;
      const base = hi * U32 + (lo & 0xffff_f000);
      const size = 256 * 2 ** qs;
      const r = this.mem.findRegion(base);
      // Validate once, at enable: the whole ring in one region, so fetches need no checks.
      if ((lo & 0xff8) !== 0 || hi >= 0x20_0000) {
        err = E_IQA;
        message = `IQA 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')}: DW = 1 (256-bit descriptors) or reserved bits set`;
      } else if (r === undefined || base + size * DESC > r.end) {
        err = E_IQA;
        message = `the invalidation queue at 0x${base.toString(16)} (${size} descriptors) is not inside one region of guest memory`;
      } else {
        this.enabled = true;
        this.size = size;
        this.view = r.view;
        this.viewOff = base - r.gpa;
        this.head = 0;
        Atomics.store(a, QI_REG.IQH, 0);
      }
    } else if ((gcmd & GCMD_QIE) === 0 && this.enabled) {
      // Disabling resets IQH (and clears nothing else); a pending IQE goes with the queue.
      this.enabled = false;
      this.size = 0;
      this.view = undefined;
      this.head = 0;
      this.iqe = false;
      Atomics.store(a, QI_REG.IQH, 0);
    }
    if ((gcmd & GCMD_SRTP) !== 0) {
      const lo = Atomics.load(a, QI_REG.RTADDR_LO) >>> 0;
      const hi = Atomics.load(a, QI_REG.RTADDR_HI) >>> 0;
      const root = hi * U32 + (lo & 0xffff_f000);
      if ((lo & 0xfff) !== 0) {
        err = E_ROOT;
        message = `RTADDR 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')}: TTM or reserved bits set (only legacy mode is modelled)`;
      } else {
        try {
          // The remapper has no separate TE: latching a root table turns translation on.
          this.unit.setRootTable(root);
        } catch (e) {
          err = E_ROOT;
          message = e instanceof Error ? e.message : String(e);
        }
      }
    }
    // TE going from set to clear turns translation off (only a transition: a GCMD write that never set TE leaves it alone).
    if ((this.lastGcmd & GCMD_TE) !== 0 && (gcmd & GCMD_TE) === 0 && this.unit.translationEnabled) this.unit.disable();
    this.lastGcmd = gcmd;
    let gsts = 0;
    if (this.enabled) gsts |= GCMD_QIE;
    if (this.unit.translationEnabled) gsts |= GCMD_TE | GCMD_SRTP;
    Atomics.store(a, QI_REG.GSTS, gsts);
    Atomics.store(a, QI_REG.CMD_ERR, err);
    if (err !== 0) {
      this.stats.errors++;
      const fault: VtdQiFault = { reason: QI_ERRORS[err]!, index: -1, lo: 0n, hi: 0n, message };
      if (!this.iqe) this.error = fault;
      this.onError?.(fault);
    }
    Atomics.store(a, QI_REG.CMD_ACK, seq);
    Atomics.notify(a, QI_REG.CMD_ACK);
  }

  /**
   * Processes whenever the doorbell rings (Atomics.waitAsync on BELL, at most
   * `pollMs` per wait, like `serveTransport`'s kick loops) until `stop()`.
   * A pending waitAsync does not keep Node's event loop alive.
   */
  serve(pollMs = 50): void {
    if (this.running) return;
    this.running = true;
    const a = this.a;
    this.loop = (async () => {
      while (this.running) {
        // Read the count before processing: a ring during `process` makes the next wait return at once.
        const seen = Atomics.load(a, QI_REG.BELL);
        this.process();
        const w = Atomics.waitAsync(a, QI_REG.BELL, seen, pollMs);
        if (w.async) await w.value;
      }
    })();
  }

  /** Ends `serve()`: wakes the loop and waits for it. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.regs.ring();
    await this.loop;
    this.loop = undefined;
  }
}

/** Wait sequence numbers run 1 … 2^30 − 1 and wrap (0 is "no status yet"). */
export const SEQ_SPAN = 0x3fff_ffff;

export function nextSeq(seq: number): number {
  return seq >= SEQ_SPAN ? 1 : seq + 1;
}

/** Whether sequence number `s` is `t` or follows it (within half the span: older ones are long done). */
export function seqReached(s: number, t: number): boolean {
  let d = s - t;
  if (d < 0) d += SEQ_SPAN;
  return d < SEQ_SPAN / 2;
}

export interface VtdQueuedInvalidatorOptions {
  /** Guest memory holding the ring and the status dword (shared, for a unit on another thread). */
  mem: GuestMemory;
  regs: VtdQiRegisters;
  /** The ring: 4 KiB-aligned guest-physical address; QS (0–7): 256 × 2^QS descriptors. Default QS 0. */
  queue: { addr: number; qs?: number };
  /** Guest-physical address of the status dword the wait descriptors write (4-byte aligned, outside the ring). */
  status: number;
  /**
   * Called after every register write, in place of `regs.ring()`: a test on
   * one thread passes `() => queue.process()` so each submission completes inline.
   */
  notify?: () => void;
  /** Longest wait for a submission or command, in milliseconds. Default 5000. */
  timeoutMs?: number;
  /** Each blocking wait lasts at most this long before the error flags are looked at again. Default 5. */
  sliceMs?: number;
  /**
   * How long a submission spins on the status dword before it sleeps on it,
   * in milliseconds. Linux's `qi_submit_sync` only spins: a unit on another
   * thread answers within microseconds when it polls, and a futex sleep and
   * wake-up costs tens of them on a VM. Default 0.05 (50 µs); 0 sleeps at once.
   */
  spinMs?: number;
  /** Milliseconds, monotonic, for the timeout. Default `performance.now`. */
  now?: () => number;
}

/**
 * The guest side: a `VtdInvalidator` that sends each invalidation through the
 * queue and waits for it, as Linux's `qi_submit_sync` does — the descriptors,
 * then a wait descriptor with a status write, then IQT, then the doorbell, and
 * a bounded wait for the status dword. Blocking waits (`Atomics.wait`) belong
 * on a worker thread or on Node's main thread; with `notify` processing
 * inline, nothing blocks.
 */
export class VtdQueuedInvalidator implements VtdInvalidator {
  readonly regs: VtdQiRegisters;
  readonly mem: GuestMemory;
  readonly size: number;
  readonly stats = { submissions: 0, descriptors: 0, waits: 0, commands: 0 };
  private readonly a: Int32Array;
  private readonly ring: DataView;
  private readonly ringOff: number;
  private readonly statusAddr: number;
  private readonly statusArray: Int32Array | undefined;
  private readonly statusIndex: number;
  private readonly notify: () => void;
  private readonly timeoutMs: number;
  private readonly sliceMs: number;
  private readonly spinMs: number;
  private readonly now: () => number;
  /** Software's copy of IQT, as a descriptor index. */
  private tail = 0;
  /** Descriptors written since the last wait (a batch). */
  private pending = 0;
  private batching = 0;
  private seq = 0;
  private gcmd = 0;
  /** The last wait sequence number known to be done (0: none). */
  private done = 0;
  /** The sequence number of the last wait posted without waiting for it. */
  private posted = 0;
  /** Descriptors posted (wait included) that the unit may not have consumed yet. */
  private inFlight = 0;

  constructor(options: VtdQueuedInvalidatorOptions) {
    const { mem, regs, queue, status } = options;
    const qs = queue.qs ?? 0;
    if (!Number.isInteger(qs) || qs < 0 || qs > 7) throw new ViommuError('invalid-option', `QS ${String(qs)} is not between 0 and 7`, qs);
    this.size = 256 * 2 ** qs;
    const bytes = this.size * DESC;
    if (!Number.isSafeInteger(queue.addr) || queue.addr < 0 || queue.addr % PAGE !== 0 || queue.addr >= 2 ** 52) {
      throw new ViommuError('invalid-option', `invalidation queue address ${String(queue.addr)} is not 4 KiB-aligned`, queue.addr);
    }
    const r = mem.findRegion(queue.addr);
    if (r === undefined || queue.addr + bytes > r.end) throw new ViommuError('invalid-option', `invalidation queue 0x${queue.addr.toString(16)}+0x${bytes.toString(16)} is not inside one region of guest memory`, queue.addr);
    if (!Number.isSafeInteger(status) || status % 4 !== 0 || (status + 4 > queue.addr && status < queue.addr + bytes)) {
      throw new ViommuError('invalid-option', `status address ${String(status)} is not a dword-aligned address outside the queue`, status);
    }
    const sr = mem.findRegion(status);
    if (sr === undefined || status + 4 > sr.end) throw new ViommuError('invalid-option', `status address 0x${status.toString(16)} is not guest memory`, status);
    this.mem = mem;
    this.regs = regs;
    this.a = regs.array;
    this.ring = r.view;
    this.ringOff = queue.addr - r.gpa;
    this.statusAddr = status;
    if (sr.shared && (sr.hostOffset + status - sr.gpa) % 4 === 0) {
      const { array, index } = mem.int32At(status);
      this.statusArray = array;
      this.statusIndex = index;
    } else {
      this.statusArray = undefined;
      this.statusIndex = 0;
    }
    this.notify = options.notify ?? (() => regs.ring());
    this.timeoutMs = options.timeoutMs ?? 5000;
    this.sliceMs = options.sliceMs ?? 5;
    this.spinMs = options.spinMs ?? 0.05;
    if (!(this.spinMs >= 0 && this.spinMs <= 1000)) throw new ViommuError('invalid-option', `spinMs ${String(this.spinMs)} is not between 0 and 1000`, this.spinMs);
    this.now = options.now ?? (() => performance.now());
    // Linux's dmar_enable_qi: a queue left enabled (by firmware, a previous kernel, another
    // instance) is disabled first, which resets IQH; then IQT = 0, IQA, GCMD.QIE, wait for GSTS.QIES.
    const a = this.a;
    this.gcmd = Atomics.load(a, QI_REG.GSTS) & (GCMD_TE | GCMD_QIE);
    if ((this.gcmd & GCMD_QIE) !== 0) {
      this.gcmd &= ~GCMD_QIE;
      this.command(this.gcmd, 'disable the invalidation queue (GCMD.QIE = 0)');
    }
    Atomics.store(a, QI_REG.IQT, 0);
    Atomics.store(a, QI_REG.IQA_LO, (queue.addr % U32) + qs);
    Atomics.store(a, QI_REG.IQA_HI, Math.floor(queue.addr / U32));
    this.gcmd |= GCMD_QIE;
    this.command(this.gcmd, 'enable the invalidation queue (GCMD.QIE)');
    if ((Atomics.load(a, QI_REG.GSTS) & GCMD_QIE) === 0) {
      throw new ViommuError('invalidation-queue', `the unit did not enable the invalidation queue: ${this.regs.load(QI_REG.CMD_ERR) !== 0 ? QI_ERRORS[this.regs.load(QI_REG.CMD_ERR)]! : 'no reason'}`, queue.addr);
    }
    this.tail = 0;
  }

  /** Writes GCMD, bumps CMD_SEQ, rings, and waits (bounded) for the unit's acknowledgement. */
  private command(gcmd: number, what: string): void {
    const a = this.a;
    this.stats.commands++;
    Atomics.store(a, QI_REG.GCMD, gcmd);
    const seq = (Atomics.add(a, QI_REG.CMD_SEQ, 1) + 1) | 0;
    this.notify();
    const deadline = this.now() + this.timeoutMs;
    for (;;) {
      const ack = Atomics.load(a, QI_REG.CMD_ACK);
      if (ack === seq) return;
      const left = deadline - this.now();
      if (left <= 0) throw new ViommuError('timeout', `the unit did not acknowledge "${what}" within ${this.timeoutMs} ms`, gcmd);
      this.sleep(a, QI_REG.CMD_ACK, ack, Math.min(this.sliceMs, left));
    }
  }

  /**
   * RTADDR, then GCMD.SRTP (+ TE) and wait for the unit to latch it — a register
   * write, as on hardware — then a global context-cache and a global IOTLB
   * invalidation through the queue, as Linux's `iommu_set_root_entry` sends
   * when the unit does not flush on SRTP itself (no ECAP.ESRTPS). Our unit
   * does flush, so the queued pair is redundant but in the spec's order.
   */
  setRootTable(gpa: number): void {
    if (!Number.isSafeInteger(gpa) || gpa < 0 || gpa % PAGE !== 0) throw new ViommuError('invalid-option', `root table address ${String(gpa)} is not 4 KiB-aligned`, gpa);
    const a = this.a;
    Atomics.store(a, QI_REG.RTADDR_LO, gpa % U32);
    Atomics.store(a, QI_REG.RTADDR_HI, Math.floor(gpa / U32));
    this.command(this.gcmd | GCMD_SRTP | GCMD_TE, 'set the root-table pointer (GCMD.SRTP)');
    const err = Atomics.load(a, QI_REG.CMD_ERR);
    if (err !== 0 || (Atomics.load(a, QI_REG.GSTS) & GCMD_SRTP) === 0) {
      throw new ViommuError('invalidation-queue', `the unit refused root table 0x${gpa.toString(16)}: ${QI_ERRORS[err] ?? 'unknown'}`, gpa);
    }
    this.gcmd |= GCMD_TE;
    this.batch(() => {
      this.put(QI_TYPE.context | (1 << 4), 0, 0, 0);
      this.put(QI_TYPE.iotlb | (1 << 4), 0, 0, 0);
    });
  }

  invalidateContextDevice(sourceId: number): void {
    this.put(QI_TYPE.context | (3 << 4), sourceId & 0xffff, 0, 0);
    this.submit();
  }

  invalidateContextGlobal(): void {
    this.put(QI_TYPE.context | (1 << 4), 0, 0, 0);
    this.submit();
  }

  invalidateIotlbGlobal(): void {
    this.put(QI_TYPE.iotlb | (1 << 4), 0, 0, 0);
    this.submit();
  }

  invalidateIotlbDomain(domainId: number): void {
    this.put(QI_TYPE.iotlb | (2 << 4) | ((domainId & 0xffff) << 16), 0, 0, 0);
    this.submit();
  }

  /**
   * A domain-selective IOTLB invalidation and a wait descriptor, published
   * without waiting: the status write comes when the unit gets to it, and
   * `retired(ticket)` reads it then (VT-d §6.5.2.8 lets software poll the
   * status later). Inside `batch` it joins the batch, waited for at its end.
   */
  postIotlbDomain(domainId: number): number {
    this.put(QI_TYPE.iotlb | (2 << 4) | ((domainId & 0xffff) << 16), 0, 0, 0);
    if (this.batching > 0) return nextSeq(this.seq);
    const seq = this.appendWait();
    this.inFlight += this.pending;
    this.pending = 0;
    this.posted = seq;
    Atomics.store(this.a, QI_REG.IQT, this.tail * DESC);
    this.notify();
    return seq;
  }

  /**
   * `postIotlbDomain` for `count` page-selective invalidations instead (the
   * 2^ams[i] pages aligned around addrs[i], `ih` on each): the descriptors
   * and one wait, published without waiting. When they would fill the ring
   * past half (the unit is lagging), one domain-selective invalidation goes
   * instead: it covers them all and takes two descriptors, so a guest posting
   * faster than the unit runs does not stall on a full ring sooner.
   */
  postIotlbPages(domainId: number, addrs: readonly number[], ams: readonly number[], count: number, ih: boolean): number {
    if (this.pending + this.inFlight + count + 1 > this.size / 2) return this.postIotlbDomain(domainId);
    for (let i = 0; i < count; i++) {
      const addr = addrs[i]!;
      const am = ams[i]!;
      if (!Number.isSafeInteger(addr) || addr < 0 || !Number.isInteger(am) || am < 0 || am > 63) throw new ViommuError('invalid-option', `page-selective invalidation 0x${String(addr)} / ${String(am)} is not an address and a 6-bit mask`, addr);
      this.put(QI_TYPE.iotlb | (3 << 4) | ((domainId & 0xffff) << 16), 0, ((addr % U32) & 0xffff_f000) + (ih ? 0x40 : 0) + am, Math.floor(addr / U32));
    }
    if (this.batching > 0) return nextSeq(this.seq);
    const seq = this.appendWait();
    this.inFlight += this.pending;
    this.pending = 0;
    this.posted = seq;
    Atomics.store(this.a, QI_REG.IQT, this.tail * DESC);
    this.notify();
    return seq;
  }

  /**
   * Whether every submission up to wait `ticket` is done: the status dword
   * has reached it (wait descriptors complete in queue order). With `wait`,
   * submits an empty wait and waits for it (bounded, as any submission).
   */
  retired(ticket: number, wait: boolean): boolean {
    if (this.done !== 0 && seqReached(this.done, ticket)) return true;
    const s = this.status();
    if (s !== 0 && seqReached(s, ticket)) {
      this.done = s;
      if (seqReached(s, this.posted)) this.inFlight = 0;
      return true;
    }
    if (!wait) return false;
    this.flushSync(true);
    return true;
  }

  invalidateIotlbPages(domainId: number, addr: number, am: number, ih = false): void {
    if (!Number.isSafeInteger(addr) || addr < 0 || !Number.isInteger(am) || am < 0 || am > 63) throw new ViommuError('invalid-option', `page-selective invalidation 0x${String(addr)} / ${String(am)} is not an address and a 6-bit mask`, addr);
    this.put(QI_TYPE.iotlb | (3 << 4) | ((domainId & 0xffff) << 16), 0, ((addr % U32) & 0xffff_f000) + (ih ? 0x40 : 0) + am, Math.floor(addr / U32));
    this.submit();
  }

  /**
   * Runs `fn` with the submissions it makes queued behind one wait
   * descriptor, sent when `fn` returns (Linux: several descriptors per
   * `qi_submit_sync`). Nested batches join the outermost.
   */
  batch<T>(fn: () => T): T {
    this.batching++;
    let ok = false;
    try {
      const r = fn();
      ok = true;
      return r;
    } finally {
      this.batching--;
      // On a throw inside `fn`, what was queued still goes: the entries it covers are already cleared.
      if (this.batching === 0 && this.pending > 0) this.flushSync(ok);
    }
  }

  /**
   * Queues raw descriptors (four 32-bit words each: lo low, lo high, hi low,
   * hi high) and submits them behind a wait — for tests, and for descriptor
   * kinds this class does not build.
   */
  submitRaw(words: ArrayLike<number>): void {
    if (words.length % 4 !== 0) throw new ViommuError('invalid-option', `${words.length} words are not whole 128-bit descriptors`, words.length);
    for (let i = 0; i < words.length; i += 4) this.put(words[i]!, words[i + 1]!, words[i + 2]!, words[i + 3]!);
    this.submit();
  }

  private submit(): void {
    if (this.batching === 0) this.flushSync(true);
  }

  /** Writes one descriptor at the tail (IQT moves only with the wait, in `flushSync`). */
  private put(lo0: number, lo1: number, hi0: number, hi1: number): void {
    // One slot stays for the wait descriptor and one stays empty (tail + 1 = head means full);
    // posted descriptors the unit may not have consumed count too.
    if (this.pending + this.inFlight + 2 >= this.size) this.flushSync(true);
    const off = this.ringOff + this.tail * DESC;
    const v = this.ring;
    v.setUint32(off, lo0 >>> 0, true);
    v.setUint32(off + 4, lo1 >>> 0, true);
    v.setUint32(off + 8, hi0 >>> 0, true);
    v.setUint32(off + 12, hi1 >>> 0, true);
    this.tail = this.tail + 1 === this.size ? 0 : this.tail + 1;
    this.pending++;
    this.stats.descriptors++;
  }

  /**
   * Appends the wait descriptor (SW, FN, status data = a fresh sequence
   * number), publishes IQT, rings, and waits for the status dword to read
   * that number — in slices of `sliceMs`, looking at FSTS.IQE between them,
   * and no longer than `timeoutMs` in all.
   */
  private flushSync(check: boolean): void {
    const first = (this.tail - this.pending + this.size) % this.size;
    const a = this.a;
    // With posted waits outstanding the status keeps their numbers, all before this one.
    if (this.inFlight === 0) this.setStatus(0);
    const waitAt = this.tail;
    const seq = this.appendWait();
    const count = this.pending;
    this.pending = 0;
    // Release: the descriptors (plain stores into the shared ring) are visible to whoever reads this IQT.
    Atomics.store(a, QI_REG.IQT, this.tail * DESC);
    this.notify();
    const start = this.now();
    const deadline = start + this.timeoutMs;
    if (this.statusArray !== undefined && this.spinMs > 0) {
      // Spin first (bounded by the clock, read every 64 turns), as qi_submit_sync does.
      const spinEnd = start + this.spinMs;
      for (let i = 1; ; i++) {
        if (Atomics.load(this.statusArray, this.statusIndex) === seq) return this.completed(seq);
        if ((i & 63) === 0 && ((Atomics.load(a, QI_REG.FSTS) & FSTS_IQE) !== 0 || this.now() >= spinEnd)) break;
      }
    }
    for (;;) {
      const s = this.status();
      if (s === seq) return this.completed(seq);
      if ((Atomics.load(a, QI_REG.FSTS) & FSTS_IQE) !== 0) this.queueError(first, count, waitAt, check, deadline);
      const left = deadline - this.now();
      if (left <= 0 || this.statusArray === undefined) {
        throw new ViommuError('timeout', `invalidation wait (status data ${seq}) not completed within ${this.timeoutMs} ms: IQH ${this.regs.head}, IQT ${this.tail}`, seq);
      }
      this.sleep(this.statusArray, this.statusIndex, s, Math.min(this.sliceMs, left));
    }
  }

  /** Writes a wait descriptor (status write of a fresh sequence number) at the tail; returns the number. */
  private appendWait(): number {
    const seq = nextSeq(this.seq);
    this.seq = seq;
    const off = this.ringOff + this.tail * DESC;
    const v = this.ring;
    v.setUint32(off, QI_TYPE.wait | QI_WAIT_SW | QI_WAIT_FN, true);
    v.setUint32(off + 4, seq, true);
    v.setUint32(off + 8, this.statusAddr % U32, true);
    v.setUint32(off + 12, Math.floor(this.statusAddr / U32), true);
    this.tail = this.tail + 1 === this.size ? 0 : this.tail + 1;
    this.pending++;
    this.stats.submissions++;
    this.stats.waits++;
    return seq;
  }

  /** Wait `seq` is done, and with it everything queued before it. */
  private completed(seq: number): void {
    this.done = seq;
    this.inFlight = 0;
  }

  /**
   * The unit stopped. If it stopped on one of this submission's descriptors,
   * do what Linux's `qi_check_fault` does: copy the wait descriptor over the
   * bad one (so the status still gets written and nothing waits forever),
   * clear IQE, and throw; the unit resumes at IQH with the copy.
   */
  private queueError(first: number, count: number, waitAt: number, check: boolean, deadline: number): never {
    const head = this.regs.head;
    const reason = this.regs.queueErrorReason;
    const within = (head - first + this.size) % this.size < count;
    if (within && head !== waitAt) {
      const v = this.ring;
      const src = this.ringOff + waitAt * DESC;
      const dst = this.ringOff + head * DESC;
      for (let i = 0; i < DESC; i += 4) v.setUint32(dst + i, v.getUint32(src + i, true), true);
      Atomics.and(this.a, QI_REG.FSTS, ~FSTS_IQE);
      this.notify();
      // Let the unit finish this submission before anything new is written behind it.
      this.waitIdle(deadline);
    }
    throw new ViommuError(
      'invalidation-queue',
      `invalidation queue error (${reason}) at descriptor ${head}${within ? (head === waitAt ? ', the wait descriptor itself' : ', replaced by a wait and cleared') : ', not one of this submission'}${check ? '' : ' (while sending a batch whose body threw)'}`,
      head,
    );
  }

  /** Waits (bounded) until IQH reaches IQT or the unit stops again. */
  private waitIdle(deadline: number): void {
    const a = this.a;
    for (;;) {
      const h = Atomics.load(a, QI_REG.IQH);
      if (h === this.tail * DESC || (Atomics.load(a, QI_REG.FSTS) & FSTS_IQE) !== 0) return;
      const left = deadline - this.now();
      if (left <= 0) return;
      this.sleep(a, QI_REG.IQH, h, Math.min(this.sliceMs, left));
    }
  }

  /**
   * Blocks while `array[index]` is `seen`, for at most `ms`, counted in
   * SLEEPERS meanwhile (the unit wakes sleepers only when it is nonzero).
   * Counted in before the value is compared, so a store the unit makes
   * after reading SLEEPERS as 0 is one the comparison sees.
   */
  private sleep(array: Int32Array, index: number, seen: number, ms: number): void {
    const a = this.a;
    Atomics.add(a, QI_REG.SLEEPERS, 1);
    try {
      Atomics.wait(array, index, seen, ms);
    } finally {
      Atomics.sub(a, QI_REG.SLEEPERS, 1);
    }
  }

  private status(): number {
    const arr = this.statusArray;
    return arr !== undefined ? Atomics.load(arr, this.statusIndex) : this.mem.readU32(this.statusAddr) | 0;
  }

  private setStatus(value: number): void {
    const arr = this.statusArray;
    if (arr !== undefined) Atomics.store(arr, this.statusIndex, value);
    else this.mem.writeU32(this.statusAddr, value);
  }
}
