import { describe, expect, it } from 'vitest';
import { PciSegment, type PhysicalFunction, formatRid, intel82599LikePf, intelE810LikePf, lspciDump } from '../src/index.js';
import { INSTALL_HINT, field, parseLspci, runLspci } from './lspci-helper.js';

function sriovBlock(dev: { text: string }): string {
  const at = dev.text.indexOf('Single Root I/O Virtualization (SR-IOV)');
  if (at < 0) throw new Error('no SR-IOV capability decoded');
  return dev.text.slice(at);
}

function checkPf(pf: PhysicalFunction, out: Map<string, { text: string; title: string; address: string; lines: readonly string[] }>, vfDevice: string, numVfs: number) {
  const dev = out.get(pf.address)!;
  expect(dev, `PF ${pf.address} missing from lspci output`).toBeDefined();
  const iov = sriovBlock(dev);
  const counts = /Initial VFs: (\d+), Total VFs: (\d+), Number of VFs: (\d+), Function Dependency Link: ([0-9a-f]{2})/.exec(iov);
  expect(counts?.slice(1)).toEqual([String(pf.sriov.initialVfs), String(pf.sriov.totalVfs), String(numVfs), `0${pf.rid & 7}`]);
  const os = /VF offset: (\d+), stride: (\d+), Device ID: ([0-9a-f]{4})/.exec(iov);
  expect(os?.slice(1)).toEqual([String(pf.sriovOffset), String(pf.sriovStride), vfDevice]);
  expect(iov).toMatch(new RegExp(`IOVCtl:\\s+Enable${numVfs ? '\\+' : '-'} Migration- Interrupt- MSE${numVfs ? '\\+' : '-'} ARIHierarchy${pf.sriov.ariCapableHierarchy ? '\\+' : '-'}`));
  expect(iov).toMatch(/Supported Page Size: 00000553, System Page Size: 00000001/);
  // VF BARs: lspci prints "Region N: Memory at <hex 16> (64-bit, prefetchable)".
  const regions = [...iov.matchAll(/Region (\d): Memory at ([0-9a-f]+) \((\d\d)-bit, (non-)?prefetchable\)/g)].map((m) => ({ index: Number(m[1]), address: BigInt(`0x${m[2]!}`), bits: m[3], prefetchable: !m[4] }));
  expect(regions).toEqual(pf.sriov.vfBars.map((b) => ({ index: b.index, address: pf.sriov.vfBarAddress(b.index), bits: b.kind === 'mem64' ? '64' : '32', prefetchable: b.prefetchable })));
}

describe('real lspci decodes an 82599-like PF and its VFs', () => {
  it('before VF Enable: the SR-IOV capability with TotalVFs 64, offset 128, stride 2, VF device 10ed, no VFs', () => {
    const pf = intel82599LikePf();
    const out = parseLspci(runLspci(lspciDump([pf])));
    expect([...out.keys()]).toEqual(['03:00.0']);
    const dev = out.get('03:00.0')!;
    expect(dev.title).toBe('Ethernet controller: Intel Corporation 82599ES 10-Gigabit SFI/SFP+ Network Connection (rev 01)');
    expect(field(dev, /Capabilities: \[40\] (Power Management version \d)/)).toBe('Power Management version 3');
    expect(field(dev, /Capabilities: \[70\] MSI-X: Enable- (Count=\d+)/)).toBe('Count=64');
    expect(field(dev, /Capabilities: \[a0\] (Express \(v2\) Endpoint)/)).toBe('Express (v2) Endpoint');
    expect(field(dev, /Capabilities: \[150 v1\] (Alternative Routing-ID Interpretation \(ARI\))/)).toBeTruthy();
    expect(field(dev, /Capabilities: \[160 v1\] (Single Root I\/O Virtualization \(SR-IOV\))/)).toBeTruthy();
    expect(field(dev, /(Region 0: Memory at f0000000 \(64-bit, non-prefetchable\))/)).toBeTruthy();
    expect(field(dev, /(Region 2: I\/O ports at e000)/)).toBeTruthy();
    checkPf(pf, out, '10ed', 0);
    expect(sriovBlock(dev)).toMatch(/Initial VFs: 64, Total VFs: 64, Number of VFs: 0,[^\n]*\n\s+VF offset: 128, stride: 2, Device ID: 10ed/);
  });

  it('with 64 VFs: every VF at PF + 128 + 2n, decoded with its own MSI-X; IDs read FFFF on the host view', () => {
    const seg = new PciSegment();
    const pf = intel82599LikePf();
    seg.add(pf);
    pf.setSriovNumVfs(64);
    const out = parseLspci(runLspci(lspciDump(seg.functions())));
    checkPf(pf, out, '10ed', 64);
    const expected = Array.from({ length: 64 }, (_, n) => formatRid(0x0300 + 128 + 2 * n));
    expect(expected[0]).toBe('03:10.0');
    expect(expected[63]).toBe('03:1f.6');
    expect([...out.keys()]).toEqual(['03:00.0', ...expected]);
    for (const a of expected) {
      const vf = out.get(a)!;
      // The host view is the raw configuration space: Vendor and Device ID read FFFFh (§9.3.4.1.1-2).
      expect(vf.title).toMatch(/^Ethernet controller: Illegal Vendor ID Device ffff \(rev 01\)$/);
      expect(field(vf, /MSI-X: Enable- (Count=\d+)/)).toBe('Count=3');
      expect(field(vf, /Vector table: (BAR=3 offset=00000000)/)).toBeTruthy();
      expect(field(vf, /DevCap:[^\n]*\n[^\n]*(FLReset\+)/)).toBe('FLReset+');
      expect(vf.text).not.toMatch(/Region \d/); // VF BARs in the VF header are RO 0 (§9.3.4.1.11)
      expect(vf.text).not.toMatch(/Interrupt: pin/);
    }
  });

  it('the OS view: VFs show 8086:10ed and BARs carved from the VF BAR windows (base + n × 16K)', () => {
    const pf = intel82599LikePf();
    pf.setSriovNumVfs(8);
    const out = parseLspci(runLspci(lspciDump([pf, ...pf.vfs], { view: 'os' }), ['-vvv', '-nn']));
    for (const vf of pf.vfs) {
      const dev = out.get(vf.address)!;
      expect(dev.title).toContain('[8086:10ed]');
      expect(dev.title).toContain('82599 Ethernet Controller Virtual Function');
      expect(field(dev, /Control: I\/O- (Mem[+-])/)).toBe('Mem+');
      const bar0 = BigInt(`0x${field(dev, /Region 0: Memory at ([0-9a-f]+) \(64-bit, prefetchable\)/)}`);
      const bar3 = BigInt(`0x${field(dev, /Region 3: Memory at ([0-9a-f]+) \(64-bit, prefetchable\)/)}`);
      expect(bar0).toBe(0xe0000000n + BigInt(vf.index) * 0x4000n);
      expect(bar3).toBe(0xe0100000n + BigInt(vf.index) * 0x4000n);
    }
  });

  it('two PFs of the dual-port device interleave their VFs (offset 128, stride 2 from 00.0 and 00.1)', () => {
    const seg = new PciSegment();
    const pf0 = intel82599LikePf({ address: '03:00.0' });
    const pf1 = intel82599LikePf({ address: '03:00.1' });
    seg.add(pf0);
    seg.add(pf1);
    pf0.setSriovNumVfs(4);
    pf1.setSriovNumVfs(4);
    const out = parseLspci(runLspci(lspciDump(seg.functions())));
    expect([...out.keys()]).toEqual(['03:00.0', '03:00.1', '03:10.0', '03:10.1', '03:10.2', '03:10.3', '03:10.4', '03:10.5', '03:10.6', '03:10.7']);
    checkPf(pf1, out, '10ed', 4);
    expect(sriovBlock(out.get('03:00.1')!)).toContain('Function Dependency Link: 01');
  });
});

describe('real lspci decodes an E810-like PF with 256 VFs and ARI', () => {
  it('ARI Capable Hierarchy set by the OS: offset 8, stride 1, VFs spill from bus 17 onto bus 18', () => {
    const seg = new PciSegment();
    const pf = intelE810LikePf();
    seg.add(pf);
    pf.setSriovNumVfs(256);
    expect(pf.sriov.ariCapableHierarchy).toBe(true);
    const out = parseLspci(runLspci(lspciDump(seg.functions(), { view: 'os' }), ['-vvv', '-nn']));
    checkPf(pf, out, '1889', 256);
    expect(sriovBlock(out.get('17:00.0')!)).toMatch(/Total VFs: 256, Number of VFs: 256,[^\n]*\n\s+VF offset: 8, stride: 1, Device ID: 1889/);
    expect(out.size).toBe(257);
    for (let n = 0; n < 256; n++) {
      const rid = 0x1700 + 8 + n;
      const a = formatRid(rid);
      const dev = out.get(a);
      expect(dev, `VF ${n} missing at ${a}`).toBeDefined();
      expect(dev!.title).toContain('[8086:1889]');
      const bar0 = BigInt(`0x${field(dev!, /Region 0: Memory at ([0-9a-f]+) \(64-bit, prefetchable\)/)}`);
      expect(bar0).toBe(0x3800000000n + BigInt(n) * 0x20000n);
      const bar3 = BigInt(`0x${field(dev!, /Region 3: Memory at ([0-9a-f]+) \(64-bit, prefetchable\)/)}`);
      expect(bar3).toBe(0x3802000000n + BigInt(n) * 0x4000n);
      expect(field(dev!, /MSI-X: Enable- (Count=\d+)/)).toBe('Count=17');
      expect(field(dev!, /(Alternative Routing-ID Interpretation \(ARI\))/)).toBeTruthy();
    }
    expect(out.has('17:01.0')).toBe(true);
    expect(out.has('17:1f.7')).toBe(true);
    expect(out.has('18:00.0')).toBe(true);
    expect(out.has('18:00.7')).toBe(true);
    expect(out.has('18:01.0')).toBe(false);
  });

  it('without ARI the layout the device reports changes (offset 128) and lspci shows it', () => {
    const pf = intelE810LikePf({ ariForwarding: false });
    pf.setSriovNumVfs(16);
    const out = parseLspci(runLspci(lspciDump([pf, ...pf.vfs])));
    checkPf(pf, out, '1889', 16);
    expect(pf.sriovOffset).toBe(128);
    expect([...out.keys()].slice(1)).toEqual(Array.from({ length: 16 }, (_, n) => formatRid(0x1700 + 128 + n)));
  });

  it('after disabling, lspci sees the PF alone with Number of VFs 0', () => {
    const seg = new PciSegment();
    const pf = intelE810LikePf();
    seg.add(pf);
    pf.setSriovNumVfs(256);
    pf.setSriovNumVfs(0);
    const out = parseLspci(runLspci(lspciDump(seg.functions())));
    expect([...out.keys()]).toEqual(['17:00.0']);
    checkPf(pf, out, '1889', 0);
  });
});

describe('lspciDump format', () => {
  it('round-trips through lspci -xxxx byte for byte (all 4 KiB of every function)', () => {
    const pf = intelE810LikePf();
    pf.setSriovNumVfs(3);
    pf.configWrite(0x04, 2, 0x0406);
    const dump = lspciDump([pf, ...pf.vfs]);
    const back = runLspci(dump, ['-xxxx']);
    const strip = (t: string) => t.split('\n').filter((l) => /^[0-9a-f]{2,3}: /.test(l)).join('\n');
    expect(strip(back)).toBe(strip(dump));
    expect(strip(back).split('\n').length).toBe(4 * 256);
  });

  it('writes a header line with text after the address and 256 rows of 16 bytes per function', () => {
    const pf = intel82599LikePf();
    const lines = lspciDump([pf]).split('\n');
    expect(lines[0]).toMatch(/^03:00\.0 Ethernet controller: /);
    expect(lines[1]).toBe('00: 86 80 fb 10 00 00 10 00 01 00 00 02 00 00 80 00');
    expect(lines[16]).toMatch(/^f0: /);
    expect(lines[17]).toMatch(/^100: /);
    expect(lines[256]).toMatch(/^ff0: /);
    expect(lines[257]).toBe('');
    expect(lines.length).toBe(259);
  });

  it('prints the domain for every function when one is not 0, and lspci accepts it', () => {
    const pf = intel82599LikePf({ address: '0001:03:00.0' });
    pf.setSriovNumVfs(2);
    const dump = lspciDump([pf, ...pf.vfs]);
    expect(dump.split('\n')[0]).toMatch(/^0001:03:00\.0 /);
    const out = parseLspci(runLspci(dump));
    expect([...out.keys()]).toEqual(['0001:03:00.0', '0001:03:10.0', '0001:03:10.2']);
  });
});

describe('the lspci harness', () => {
  it('fails naming the apt-get line when lspci is missing (never skips)', () => {
    expect(() => runLspci('', ['-vvv'], '/nonexistent/lspci')).toThrow(INSTALL_HINT);
    expect(INSTALL_HINT).toContain('apt-get install -y --no-install-recommends pciutils');
  });

  it('reports lspci rejecting a malformed dump', () => {
    expect(() => runLspci('03:00.0 x\n00: zz\n')).toThrow(/lspci failed|Malformed/);
  });
});

describe('real lspci decodes what configuration writes did', () => {
  it('Command, PM state, MSI-X enable/mask, System Page Size, relocated VF BARs, Device Status', () => {
    const pf = intel82599LikePf();
    pf.configWrite(0x04, 2, 0x0006); // Mem+ BusMaster+
    pf.configWrite(0x44, 2, 3); // D3hot
    pf.configWrite(0x72, 2, 0xc000); // MSI-X Enable+ Masked+
    const S = pf.sriov.offset;
    pf.configWrite(S + 0x20, 4, 1 << 4); // 64 KiB system pages
    pf.configWrite(S + 0x24, 4, 0xd0000000);
    pf.configWrite(S + 0x28, 4, 0x1);
    pf.express!.reportError(0b0001);
    pf.setSriovNumVfs(2);
    const out = parseLspci(runLspci(lspciDump([pf, ...pf.vfs], { view: 'os' })));
    const dev = out.get('03:00.0')!;
    expect(dev.text).toMatch(/Control: I\/O- Mem\+ BusMaster\+/);
    expect(dev.text).toMatch(/Status: D3 NoSoftRst\+/);
    expect(dev.text).toMatch(/MSI-X: Enable\+ Count=64 Masked\+/);
    expect(dev.text).toMatch(/DevSta:\tCorrErr\+ NonFatalErr- FatalErr- UnsupReq-/);
    const iov = dev.text.slice(dev.text.indexOf('SR-IOV'));
    expect(iov).toMatch(/System Page Size: 00000010/);
    expect(iov).toMatch(/Region 0: Memory at 00000001d0000000 \(64-bit, prefetchable\)/);
    // VFs are carved with the 64 KiB aperture the page size imposes.
    const vf1 = out.get('03:10.2')!;
    expect(vf1.text).toMatch(/Region 0: Memory at 1d0010000 \(64-bit, prefetchable\)/);
  });
});
