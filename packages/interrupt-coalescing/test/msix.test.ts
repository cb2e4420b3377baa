import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  CoalescingError,
  FixedPolicy,
  MSIX_CTRL_ENABLE,
  MSIX_CTRL_FUNCTION_MASK,
  MSIX_ENTRY_VECTOR_CTRL,
  MsixSignal,
  MsixTable,
  NO_VECTOR,
  QueueVectors,
} from '../src/index.js';
import { US, harness } from './harness.js';

interface Msg {
  vector: number;
  lo: number;
  hi: number;
  data: number;
}

function table(vectors = 4, extra: Partial<ConstructorParameters<typeof MsixTable>[0]> = {}) {
  const sent: Msg[] = [];
  const t = new MsixTable({ vectors, send: (vector, lo, hi, data) => sent.push({ vector, lo, hi, data }), ...extra });
  return { t, sent };
}

describe('MSI-X table layout (PCI 3.0 §6.8.2)', () => {
  it('resets with every vector masked, nothing pending, MSI-X disabled', () => {
    const { t } = table(4);
    expect(t.tableBytes.length).toBe(64);
    expect(t.pbaBytes.length).toBe(8);
    for (let v = 0; v < 4; v++) expect(t.read('table', v * 16 + MSIX_ENTRY_VECTOR_CTRL, 4)).toBe(1);
    expect(t.messageControl).toBe(3); // Table Size N-1, Enable and Function Mask clear
    expect(t.pbaOffset).toBe(0x800);
    expect(table(200).t.pbaOffset).toBe(0x1000);
    expect(table(65).t.pbaBytes.length).toBe(16);
  });

  it('guest DWORD/QWORD writes land at the spec offsets, little-endian; reserved bits read 0', () => {
    const { t } = table(2);
    t.write('table', 16, 4, 0xfee0_100f); // entry 1 Message Address: bits 1:0 are not writable
    t.write('table', 20, 4, 0x0000_0001);
    t.write('table', 24, 4, 0x4041);
    t.write('table', 28, 4, 0xffff_fffe); // Vector Control: reserved bits stay 0, mask bit cleared
    expect(Array.from(t.tableBytes.subarray(16, 32))).toEqual([0x0c, 0x10, 0xe0, 0xfe, 1, 0, 0, 0, 0x41, 0x40, 0, 0, 0, 0, 0, 0]);
    expect(t.read('table', 16, 4)).toBe(0xfee0_100c);
    expect(t.read64('table', 16)).toBe(0x1_fee0_100cn);
    t.write64('table', 0, 0xaabb_ccdd_1122_3344n);
    expect(t.read('table', 0, 2)).toBe(0x3344);
    expect(t.read('table', 4, 4)).toBe(0xaabb_ccdd);
  });

  it('ignores writes to the PBA and accesses outside the regions', () => {
    const { t } = table(2);
    t.write('pba', 0, 4, 0xffff_ffff);
    expect(t.read('pba', 0, 4)).toBe(0);
    expect(t.read('table', 32, 4)).toBe(0);
    t.write('table', 30, 4, 1);
    t.write('table', -4, 4, 1);
    expect(t.read('table', 0.5, 1)).toBe(0);
    expect(t.ignoredAccesses).toBe(5);
  });

  it('validates its layout', () => {
    expect(() => table(0)).toThrow(CoalescingError);
    expect(() => table(2049)).toThrow(/vectors/);
    expect(() => table(4, { tableOffset: 4 })).toThrow(/aligned/);
    expect(() => table(4, { pbaOffset: 0x20 })).toThrow(/overlap/);
    expect(() => table(4, { tableBir: 6 })).toThrow(/tableBir/);
    expect(table(4, { pbaBir: 2, pbaOffset: 0 }).t.pbaOffset).toBe(0);
  });
});

describe('MSI-X masking and pending bits', () => {
  it('a masked vector sets its pending bit and fires exactly once on unmask, with the address/data then programmed', () => {
    const { t, sent } = table(4);
    t.writeMessageControl(MSIX_CTRL_ENABLE);
    t.program(2, 0xfee0_0000, 0, 0x31, true);
    expect(t.signal(2)).toBe(MsixSignal.Pending);
    expect(t.signal(2)).toBe(MsixSignal.Pending);
    expect(t.signal(2)).toBe(MsixSignal.Pending);
    expect(t.isPending(2)).toBe(true);
    expect(t.read('pba', 0, 4)).toBe(0b100);
    expect(sent).toHaveLength(0);
    t.write('table', 2 * 16 + 8, 4, 0x32); // reprogram data while masked
    t.write('table', 2 * 16 + 12, 4, 0); // unmask
    expect(sent).toEqual([{ vector: 2, lo: 0xfee0_0000, hi: 0, data: 0x32 }]);
    expect(t.isPending(2)).toBe(false);
    t.write('table', 2 * 16 + 12, 4, 0); // unmasking again sends nothing
    expect(sent).toHaveLength(1);
    expect(t.signal(2)).toBe(MsixSignal.Sent);
    expect(sent).toHaveLength(2);
  });

  it('the function mask holds every vector; clearing it sends each pending one once', () => {
    const { t, sent } = table(4);
    t.writeMessageControl(MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK);
    for (let v = 0; v < 4; v++) t.program(v, 0xfee0_0000, 0, v, v === 3);
    t.signal(0);
    t.signal(1);
    t.signal(1);
    t.signal(3);
    expect(t.read('pba', 0, 1)).toBe(0b1011);
    t.writeMessageControl(MSIX_CTRL_ENABLE);
    expect(sent.map((m) => m.vector)).toEqual([0, 1]);
    expect(t.isPending(3)).toBe(true); // still masked by its own bit
    t.write('table', 3 * 16 + 12, 1, 0);
    expect(sent.map((m) => m.vector)).toEqual([0, 1, 3]);
  });

  it('with MSI-X disabled nothing is sent or made pending; the INTx hook is told', () => {
    const { t, sent } = table(2);
    const intx: number[] = [];
    t.onIntx = (v) => intx.push(v);
    t.program(0, 0xfee0_0000, 0, 1);
    expect(t.signal(0)).toBe(MsixSignal.Disabled);
    expect(t.isPending(0)).toBe(false);
    expect(intx).toEqual([0]);
    t.writeMessageControl(MSIX_CTRL_ENABLE);
    expect(sent).toHaveLength(0);
    expect(() => t.signal(2)).toThrow(CoalescingError);
  });

  it('coalescer → MSI-X: a coalesced interrupt on a masked vector is delivered once on unmask', () => {
    const { t, sent } = table(2);
    t.writeMessageControl(MSIX_CTRL_ENABLE);
    t.program(1, 0xfee0_0000, 0, 0x41, true);
    const vectors = new QueueVectors(1, 2);
    vectors.set(0, 1);
    const h = harness(new FixedPolicy({ maxFrames: 2, maxUsecs: 50 }), 1, { vectors, deliver: (v) => void t.signal(v) });
    for (let i = 0; i < 6; i++) h.coalescer.onCompletion(0, 4);
    h.coalescer.onCompletion(0, 4);
    h.at(100 * US);
    expect(h.coalescer.stats.interrupts).toBe(4);
    expect(sent).toHaveLength(0);
    t.write('table', 16 + 12, 4, 0);
    expect(sent).toEqual([{ vector: 1, lo: 0xfee0_0000, hi: 0, data: 0x41 }]);
  });

  it('queue_msix_vector semantics: an unmappable vector reads back NO_VECTOR', () => {
    const q = new QueueVectors(2, 4);
    expect(q.get(0)).toBe(NO_VECTOR);
    expect(q.set(0, 3)).toBe(3);
    expect(q.set(1, 4)).toBe(NO_VECTOR);
    expect(q.set(1, -1)).toBe(NO_VECTOR);
    expect(q.setConfig(0)).toBe(0);
    expect(q.shares(0)).toBe(false);
    q.set(1, 3);
    expect(q.shares(0)).toBe(true);
    expect(() => q.set(2, 0)).toThrow(CoalescingError);
    q.reset();
    expect([q.get(0), q.get(1), q.config]).toEqual([NO_VECTOR, NO_VECTOR, NO_VECTOR]);
  });
});

/** The type-0 header of a virtio-net PCI function with only our MSI-X capability, in `lspci -xxx` form. */
function configDump(t: MsixTable): string {
  const cfg = new DataView(new ArrayBuffer(256));
  cfg.setUint16(0x00, 0x1af4, true); // Red Hat, Inc. (virtio)
  cfg.setUint16(0x02, 0x1041, true); // virtio 1.0 network device
  cfg.setUint16(0x06, 0x0010, true); // Status: Capabilities List
  cfg.setUint8(0x0b, 0x02); // class: network controller
  cfg.setUint8(0x34, 0x40); // Capabilities Pointer
  t.writeCapability(cfg, 0x40, 0);
  const lines = ['00:03.0 Ethernet controller: ioplane test function'];
  for (let off = 0; off < 256; off += 16) {
    const bytes = Array.from(new Uint8Array(cfg.buffer, off, 16), (b) => b.toString(16).padStart(2, '0'));
    lines.push(`${off.toString(16).padStart(2, '0')}: ${bytes.join(' ')}`);
  }
  return `${lines.join('\n')}\n`;
}

function lspci(dump: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'ioplane-msix-'));
  try {
    const file = join(dir, 'config.txt');
    writeFileSync(file, dump);
    try {
      return execFileSync('lspci', ['-F', file, '-vvv'], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new Error('lspci not found: apt-get install -y --no-install-recommends pciutils', { cause: e });
      }
      throw e;
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('the real lspci decodes our MSI-X capability', () => {
  it('Enable, Count, Function Mask, table and PBA BAR/offset', () => {
    const { t } = table(5, { tableBir: 1, tableOffset: 0x2000 });
    t.writeMessageControl(MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK);
    const out = lspci(configDump(t));
    expect(out).toMatch(/Capabilities: \[40\] MSI-X: Enable\+ Count=5 Masked\+/);
    expect(out).toContain('Vector table: BAR=1 offset=00002000');
    expect(out).toContain('PBA: BAR=1 offset=00002800');

    const b = table(2048, { tableBir: 2, tableOffset: 0, pbaBir: 4, pbaOffset: 0x10 }).t;
    const out2 = lspci(configDump(b));
    expect(out2).toMatch(/MSI-X: Enable- Count=2048 Masked-/);
    expect(out2).toContain('Vector table: BAR=2 offset=00000000');
    expect(out2).toContain('PBA: BAR=4 offset=00000010');
  });
});
