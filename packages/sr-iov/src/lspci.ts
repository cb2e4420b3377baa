import { barFlags } from './bar.js';
import { CONFIG_SPACE_SIZE, PCI_BASE_ADDRESS_0, PCI_COMMAND, PCI_COMMAND_MEMORY, PCI_DEVICE_ID, PCI_VENDOR_ID } from './defs.js';
import type { PciFunction } from './pci-function.js';
import { formatRid } from './routing-id.js';
import { VirtualFunction } from './virtual-function.js';

export interface LspciDumpOptions {
  /**
   * `config` (default): the bytes a configuration read returns — a VF's Vendor
   * and Device ID read FFFFh and its BARs 0 (§9.3.4.1), as `lspci -xxxx` shows a
   * VF on the host. `os`: a VF as the OS presents it — the PF's Vendor ID, the
   * VF Device ID, BARs carved from the VF BAR windows and Memory Space showing
   * VF MSE — as vfio-pci virtualizes a VF's header for a guest.
   */
  readonly view?: 'config' | 'os';
}

const CLASS_NAMES: Record<number, string> = {
  0x0000: 'Non-VGA unclassified device',
  0x0100: 'SCSI storage controller',
  0x0106: 'SATA controller',
  0x0108: 'Non-Volatile memory controller',
  0x0200: 'Ethernet controller',
  0x0207: 'Infiniband controller',
  0x0280: 'Network controller',
  0x0300: 'VGA compatible controller',
  0x0302: '3D controller',
  0x0604: 'PCI bridge',
  0x0c03: 'USB controller',
  0x1200: 'Processing accelerators',
};

/** The class text lspci prints before the colon ("Ethernet controller"). */
export function className(classCode: number): string {
  const sub = classCode >>> 8;
  return CLASS_NAMES[sub] ?? `Class ${sub.toString(16).padStart(4, '0')}`;
}

/**
 * `lspci -xxxx` text for `functions`: per function, a header line
 * (`03:00.0 Ethernet controller: …`) and 256 rows of 16 bytes of its 4 KiB
 * configuration space, then a blank line. `lspci -F FILE -vvv` decodes it.
 */
export function lspciDump(functions: Iterable<PciFunction>, options: LspciDumpOptions = {}): string {
  const list = [...functions].sort((a, b) => a.domain - b.domain || a.rid - b.rid);
  const withDomain = list.some((f) => f.domain !== 0);
  const out: string[] = [];
  for (const fn of list) {
    const bytes = configBytes(fn, options.view ?? 'config');
    const rev = bytes[8]!;
    out.push(`${formatRid(fn.rid, fn.domain, withDomain)} ${className(fn.classCode)}: ${fn.name}${rev ? ` (rev ${rev.toString(16).padStart(2, '0')})` : ''}`);
    for (let row = 0; row < CONFIG_SPACE_SIZE; row += 16) {
      let line = `${row.toString(16).padStart(2, '0')}:`;
      for (let i = 0; i < 16; i++) line += ` ${bytes[row + i]!.toString(16).padStart(2, '0')}`;
      out.push(line);
    }
    out.push('');
  }
  return out.join('\n') + (out.length ? '\n' : '');
}

function configBytes(fn: PciFunction, view: 'config' | 'os'): Uint8Array {
  const bytes = fn.config.bytes.slice();
  if (view === 'os' && fn instanceof VirtualFunction) {
    const dv = new DataView(bytes.buffer);
    dv.setUint16(PCI_VENDOR_ID, fn.osVendorId, true);
    dv.setUint16(PCI_DEVICE_ID, fn.osDeviceId, true);
    for (const bar of fn.implementedBars()) {
      const a = fn.barAddress(bar.index);
      dv.setUint32(PCI_BASE_ADDRESS_0 + 4 * bar.index, Number(a & 0xffffffffn) | barFlags(bar), true);
      if (bar.kind === 'mem64') dv.setUint32(PCI_BASE_ADDRESS_0 + 4 * bar.index + 4, Number(a >> 32n), true);
    }
    if (fn.memoryEnabled) dv.setUint16(PCI_COMMAND, dv.getUint16(PCI_COMMAND, true) | PCI_COMMAND_MEMORY, true);
  }
  return bytes;
}
