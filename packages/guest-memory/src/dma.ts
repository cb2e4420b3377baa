import type { Access } from './errors.js';

/**
 * Memory as a device sees it when it does DMA. Every device model and every
 * virtqueue reads and writes guest memory only through this interface, so a
 * vIOMMU can stand in front of plain RAM (see rust-vmm `vm-memory`'s
 * `IommuMemory`) without the device noticing.
 *
 * Directions are from the device's side: `read` means the device reads
 * guest memory (the guest's buffer is device-readable), `write` means the
 * device writes it. Addresses are bus addresses: guest-physical for plain
 * RAM, IOVAs behind an IOMMU. They are numbers and must be safe integers;
 * every method throws a `GuestMemoryError` naming the address and length
 * when a single byte of the range is not accessible in that direction, and
 * in that case touches nothing.
 */
export interface DmaMemory {
  /** Throws unless every byte of [addr, addr+len) is accessible for `access`. */
  checkRange(addr: number, len: number, access: Access): void;

  readU8(addr: number): number;
  readU16(addr: number): number;
  readU32(addr: number): number;
  readU64(addr: number): bigint;
  /** A u64 that must fit in 53 bits (addresses, lengths); throws `too-large` otherwise. */
  readU53(addr: number): number;

  writeU8(addr: number, value: number): void;
  writeU16(addr: number, value: number): void;
  writeU32(addr: number, value: number): void;
  writeU64(addr: number, value: bigint): void;
  writeU53(addr: number, value: number): void;

  /** Copies guest memory at `addr` into `dest` (all of it), across regions as needed. */
  readInto(addr: number, dest: Uint8Array): void;
  /** Copies `src` into guest memory at `addr`, across regions as needed. */
  writeFrom(addr: number, src: Uint8Array): void;
  /** Sets `len` bytes at `addr` to `value`. */
  fill(addr: number, len: number, value: number): void;

  /**
   * A zero-copy view of [addr, addr+len) if it lies in one contiguous piece of
   * host memory, else `undefined`. Throws if the range is not accessible.
   */
  tryView(addr: number, len: number, access: Access): Uint8Array | undefined;

  /**
   * Zero-copy views covering [addr, addr+len) in order (scatter/gather), pushed
   * onto `out`, which is returned. Throws if the range is not accessible; then
   * `out` is left as it was.
   */
  slices(addr: number, len: number, access: Access, out?: Uint8Array[]): Uint8Array[];
}

/**
 * Guest memory that also offers the atomic accessors shared rings need.
 * Ring indices and flags are read with acquire and written with release
 * semantics (JavaScript `Atomics` are sequentially consistent, which is
 * stronger): a write the guest made before it published an index with a
 * release store is visible to whoever loads that index with an acquire load.
 * That is exactly the pairing of the VirtIO barriers (VirtIO 1.2 §2.7.13.3.1,
 * "virtio_wmb" before the idx update; §2.7.13.4 the read barrier after).
 */
export interface AtomicMemory {
  loadU16Acquire(addr: number): number;
  storeU16Release(addr: number, value: number): void;
  loadU32Acquire(addr: number): number;
  storeU32Release(addr: number, value: number): void;
  /** A full fence: orders every earlier access before every later one (virtio_mb). */
  fence(): void;
}
