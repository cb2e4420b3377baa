import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '@ioplane/virtqueue';
import { describe, expect, it } from 'vitest';
import { AREA, DATA, harness, pattern } from './harness.js';

/** The driver's first queue: a split ring's descriptor table starts at the area's first 4 KiB boundary. */
const DESC = Math.ceil(AREA.addr / 4096) * 4096;

describe('virtio-blk driver: ring descriptors or an indirect table (indirectFrom)', () => {
  it('by default a one-buffer read takes three ring descriptors (header, data, status); two buffers go in a table', async () => {
    const h = await harness({ driver: { ring: { packed: false } } });
    await h.backend.write(0, [pattern(8192, 3)]);
    await h.driver.read(0, DATA, 4096);
    // Head 0: header (readable, NEXT), then data (writable, NEXT), then status (writable).
    expect(h.mem.readU16(DESC + 12)).toBe(VIRTQ_DESC_F_NEXT);
    const data = h.mem.readU16(DESC + 14);
    expect(h.mem.readU16(DESC + data * 16 + 12)).toBe(VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE);
    const status = h.mem.readU16(DESC + data * 16 + 14);
    expect(h.mem.readU16(DESC + status * 16 + 12)).toBe(VIRTQ_DESC_F_WRITE);
    expect(h.mem.view(DATA, 4096, 'read')).toEqual(pattern(8192, 3).subarray(0, 4096));
    // Four descriptors: one, for an indirect table (the free list hands out descriptor 3 next).
    await h.driver.readv(0, [{ addr: DATA, len: 4096 }, { addr: DATA + 8192, len: 4096 }]);
    expect(h.mem.readU16(DESC + 3 * 16 + 12)).toBe(VIRTQ_DESC_F_INDIRECT);
    expect(h.mem.view(DATA + 8192, 4096, 'read')).toEqual(pattern(8192, 3).subarray(4096));
  });

  it('indirectFrom 2: a one-buffer read goes in an indirect table, as Linux does', async () => {
    const h = await harness({ driver: { ring: { packed: false }, indirectFrom: 2 } });
    await h.driver.read(0, DATA, 4096);
    expect(h.mem.readU16(DESC + 12)).toBe(VIRTQ_DESC_F_INDIRECT);
  });
});
