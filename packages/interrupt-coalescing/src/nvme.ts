import { checkInt } from './errors.js';

/** NVMe Set/Get Features identifiers (NVMe Base Specification, Feature Identifiers). */
export const NVME_FEAT_INTERRUPT_COALESCING = 0x08;
export const NVME_FEAT_INTERRUPT_VECTOR_CONFIG = 0x09;

/** Interrupt Coalescing, Command Dword 11: bits 7:0 THR (0's based), bits 15:8 TIME (100 µs units); 31:16 reserved. */
export interface NvmeInterruptCoalescing {
  thr: number;
  time: number;
}

export function decodeNvmeInterruptCoalescing(cdw11: number): NvmeInterruptCoalescing {
  const v = checkInt('cdw11', cdw11, 0, 0xffff_ffff);
  return { thr: v & 0xff, time: (v >>> 8) & 0xff };
}

export function encodeNvmeInterruptCoalescing(value: NvmeInterruptCoalescing): number {
  return (checkInt('thr', value.thr, 0, 0xff) | (checkInt('time', value.time, 0, 0xff) << 8)) >>> 0;
}

/** Interrupt Vector Configuration, Command Dword 11: bits 15:0 IV (vector), bit 16 CD (Coalescing Disable). */
export interface NvmeInterruptVectorConfig {
  iv: number;
  coalescingDisable: boolean;
}

export function decodeNvmeInterruptVectorConfig(cdw11: number): NvmeInterruptVectorConfig {
  const v = checkInt('cdw11', cdw11, 0, 0xffff_ffff);
  return { iv: v & 0xffff, coalescingDisable: ((v >>> 16) & 1) === 1 };
}

export function encodeNvmeInterruptVectorConfig(value: NvmeInterruptVectorConfig): number {
  return (checkInt('iv', value.iv, 0, 0xffff) | (value.coalescingDisable ? 0x1_0000 : 0)) >>> 0;
}
