import { describe, expect, it } from 'vitest';
import { DATA, harness, pattern } from './harness.js';

describe('smoke', () => {
  it('writes, flushes and reads back', async () => {
    const h = await harness({ device: { serial: 'ioplane-disk-1' } });
    const data = pattern(8192, 1);
    h.mem.writeFrom(DATA, data);
    await h.driver.write(8, DATA, 8192);
    await h.driver.flush();
    await h.driver.read(8, DATA + 65536, 8192);
    expect(h.mem.view(DATA + 65536, 8192, 'read')).toEqual(data);
    expect(await h.driver.getId()).toBe('ioplane-disk-1');
    expect(h.errors).toEqual([]);
  });
});
