import type { Access, DmaMemory } from '@ioplane/guest-memory';

/**
 * An optional capability of a `DmaMemory` that translates addresses (a
 * vIOMMU's per-device memory): translate a range once, when the queue walks
 * a descriptor chain, and let the device use the guest-physical address it
 * got for as long as nothing was revoked meanwhile. A queue whose memory has
 * it stores, per segment of a popped chain, the translated address and the
 * generation it was made under (`BufferList.gpas` / `gens`); the device then
 * reads and writes the buffer through `physical` with no second translation.
 *
 * Without it (plain guest RAM, or a translating memory that does not offer
 * it) nothing changes: every access goes through the memory as before.
 * `@ioplane/viommu`'s `TranslatingMemory` implements it.
 */
export interface TranslatingDma extends DmaMemory {
  /** The untranslated (guest-physical) memory that translated addresses name. */
  readonly physical: DmaMemory;
  /**
   * Changes whenever a translation given out may have been revoked (an UNMAP,
   * DETACH, an invalidation). A translation made under the current value is
   * valid; one made under an older value must pass `stillValid` first.
   */
  readonly translationGeneration: number;
  /**
   * Translates [addr, addr+len) for `access` as `checkRange` checks it —
   * throwing the same typed error (a `GuestMemoryError`; of kind `fault` for
   * an IOMMU fault) and, like it, recording no fault: it is a probe, the
   * device's access that follows is the DMA. Returns the guest-physical
   * address of the whole range when it is one contiguous run verified
   * accessible in `physical` for `access`, else -1 (the caller then goes
   * through this memory for every access, as without the capability).
   */
  translateRange(addr: number, len: number, access: Access): number;
  /**
   * Whether a translation of [addr, addr+len) made under generation
   * `generation` is still what a new translation would give: nothing that
   * happened since could have affected the range. May be conservative
   * (false when unsure); never true for a range an UNMAP touched.
   */
  stillValid(addr: number, len: number, generation: number): boolean;
}

/** Whether `mem` offers the `TranslatingDma` capability. */
export function isTranslatingDma(mem: DmaMemory): mem is TranslatingDma {
  const m = mem as Partial<TranslatingDma>;
  return typeof m.translateRange === 'function' && typeof m.stillValid === 'function' && typeof m.physical === 'object' && m.physical !== null;
}
