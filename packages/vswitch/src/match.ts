import { parseIpv4, parseIpv6, parseMac } from '@ioplane/packet';
import { KEY_WORDS, META_HI, REG_BASE, TUN_HI } from './constants.js';
import { VswitchError } from './errors.js';

/** A value with an explicit mask (bits of the mask set = bits compared). */
export interface Masked<T> {
  value: T;
  mask: T;
}

/**
 * A flow match, with OpenFlow 1.3 OXM field names (§7.2.3.7) plus Open vSwitch's
 * registers (`reg0`..`reg7`) and tunnel endpoints (`tun_src`, `tun_dst`). A
 * field left out is wildcarded. Maskable fields (§7.2.3.7 Table 12) take
 * `{ value, mask }`; addresses also take the usual text forms
 * (`'10.0.0.0/8'`, `'2001:db8::/32'`, `'02:00:00:00:00:00/ff:ff:ff:00:00:00'`).
 */
export interface Match {
  in_port?: number;
  eth_dst?: string | Masked<string>;
  eth_src?: string | Masked<string>;
  eth_type?: number;
  /** OFPVID_PRESENT (0x1000) | vid for a tagged frame, OFPVID_NONE (0) for untagged; `{value: 0x1000, mask: 0x1000}` is any tag. */
  vlan_vid?: number | Masked<number>;
  vlan_pcp?: number;
  ip_dscp?: number;
  ip_ecn?: number;
  ip_proto?: number;
  ipv4_src?: string | number | Masked<number>;
  ipv4_dst?: string | number | Masked<number>;
  tcp_src?: number;
  tcp_dst?: number;
  udp_src?: number;
  udp_dst?: number;
  icmpv4_type?: number;
  icmpv4_code?: number;
  arp_op?: number;
  arp_spa?: string | number | Masked<number>;
  arp_tpa?: string | number | Masked<number>;
  arp_sha?: string | Masked<string>;
  arp_tha?: string | Masked<string>;
  ipv6_src?: string | Masked<string>;
  ipv6_dst?: string | Masked<string>;
  /** The IPv6 flow label (20 bits, maskable; RFC 8200 §3, OXM_OF_IPV6_FLABEL). */
  ipv6_flabel?: number | Masked<number>;
  icmpv6_type?: number;
  icmpv6_code?: number;
  metadata?: bigint | Masked<bigint>;
  /** OpenFlow's 64-bit tunnel_id (maskable); a packet received on a VXLAN port carries its 24-bit VNI here. */
  tunnel_id?: number | bigint | Masked<number | bigint>;
  tun_src?: string | number | Masked<number>;
  tun_dst?: string | number | Masked<number>;
  reg0?: number | Masked<number>;
  reg1?: number | Masked<number>;
  reg2?: number | Masked<number>;
  reg3?: number | Masked<number>;
  reg4?: number | Masked<number>;
  reg5?: number | Masked<number>;
  reg6?: number | Masked<number>;
  reg7?: number | Masked<number>;
}

export type MatchField = keyof Match;

/** The match compiled onto the pipeline key: `(key & mask) === value`, value already masked. */
export interface CompiledMatch {
  readonly value: Uint32Array;
  readonly mask: Uint32Array;
}

type Kind = 'int' | 'ipv4' | 'mac' | 'ipv6' | 'meta' | 'tun';

interface FieldDef {
  kind: Kind;
  /** For 'int' and 'ipv4': word, shift, bits. For 'mac'/'ipv6'/'meta': byte offset into the key as a big-endian byte stream. */
  word: number;
  shift: number;
  bits: number;
  maskable: boolean;
  /** OpenFlow 1.3.5 §7.2.3.6: what the match must also say. Returns the missing prerequisite or null. */
  prereq?: (m: Match) => string | null;
}

const isIp = (m: Match): string | null => (m.eth_type === 0x0800 || m.eth_type === 0x86dd ? null : 'eth_type=0x0800 or 0x86dd');
const isIpv4 = (m: Match): string | null => (m.eth_type === 0x0800 ? null : 'eth_type=0x0800');
const isIpv6 = (m: Match): string | null => (m.eth_type === 0x86dd ? null : 'eth_type=0x86dd');
const isArp = (m: Match): string | null => (m.eth_type === 0x0806 ? null : 'eth_type=0x0806');
const proto = (p: number, l3: (m: Match) => string | null) => (m: Match): string | null => l3(m) ?? (m.ip_proto === p ? null : `ip_proto=${p}`);
const vlanPresent = (m: Match): string | null => {
  const v = m.vlan_vid;
  if (v === undefined) return 'vlan_vid with OFPVID_PRESENT';
  const present = typeof v === 'number' ? (v & 0x1000) !== 0 : (v.value & v.mask & 0x1000) !== 0;
  return present ? null : 'vlan_vid with OFPVID_PRESENT';
};

const int = (word: number, shift: number, bits: number, maskable = false, prereq?: FieldDef['prereq']): FieldDef => ({ kind: 'int', word, shift, bits, maskable, prereq });
const ipv4 = (word: number, prereq?: FieldDef['prereq']): FieldDef => ({ kind: 'ipv4', word, shift: 0, bits: 32, maskable: true, prereq });
const bytes = (kind: Kind, byte: number, prereq?: FieldDef['prereq']): FieldDef => ({ kind, word: byte, shift: 0, bits: 0, maskable: true, prereq });

/** Where each field lives in the pipeline key (see `@ioplane/packet`'s flow-key layout). */
export const FIELDS: Readonly<Record<MatchField, FieldDef>> = {
  in_port: int(0, 0, 32),
  // 64 bits: the low half in word 1 (the ingress key), the high half in the pipeline word TUN_HI.
  tunnel_id: { kind: 'tun', word: 1, shift: 0, bits: 64, maskable: true },
  tun_src: ipv4(2),
  tun_dst: ipv4(3),
  eth_dst: bytes('mac', 16),
  eth_src: bytes('mac', 22),
  eth_type: int(7, 16, 16),
  // OpenFlow's VID field carries OFPVID_PRESENT in bit 12, exactly as the key does.
  vlan_vid: int(7, 0, 13, true),
  vlan_pcp: int(7, 13, 3, false, vlanPresent),
  ip_ecn: int(9, 16, 2, false, isIp),
  ip_dscp: int(9, 18, 6, false, isIp),
  ip_proto: int(9, 24, 8, false, isIp),
  arp_op: int(9, 24, 8, false, isArp),
  ipv4_src: ipv4(10, isIpv4),
  ipv4_dst: ipv4(14, isIpv4),
  arp_spa: ipv4(10, isArp),
  arp_tpa: ipv4(14, isArp),
  ipv6_src: bytes('ipv6', 40, isIpv6),
  ipv6_dst: bytes('ipv6', 56, isIpv6),
  ipv6_flabel: int(19, 0, 20, true, isIpv6),
  tcp_src: int(18, 16, 16, false, proto(6, isIp)),
  tcp_dst: int(18, 0, 16, false, proto(6, isIp)),
  udp_src: int(18, 16, 16, false, proto(17, isIp)),
  udp_dst: int(18, 0, 16, false, proto(17, isIp)),
  icmpv4_type: int(18, 16, 8, false, proto(1, isIpv4)),
  icmpv4_code: int(18, 0, 8, false, proto(1, isIpv4)),
  icmpv6_type: int(18, 16, 8, false, proto(58, isIpv6)),
  icmpv6_code: int(18, 0, 8, false, proto(58, isIpv6)),
  arp_sha: bytes('mac', 80, isArp),
  arp_tha: bytes('mac', 86, isArp),
  metadata: bytes('meta', META_HI * 4),
  reg0: int(REG_BASE, 0, 32, true),
  reg1: int(REG_BASE + 1, 0, 32, true),
  reg2: int(REG_BASE + 2, 0, 32, true),
  reg3: int(REG_BASE + 3, 0, 32, true),
  reg4: int(REG_BASE + 4, 0, 32, true),
  reg5: int(REG_BASE + 5, 0, 32, true),
  reg6: int(REG_BASE + 6, 0, 32, true),
  reg7: int(REG_BASE + 7, 0, 32, true),
};

/** Fields that may share key bits only when their prerequisites exclude each other. */
const EXCLUSIVE: readonly (readonly MatchField[])[] = [
  ['ip_proto', 'arp_op'],
  ['ipv4_src', 'arp_spa'],
  ['ipv4_dst', 'arp_tpa'],
  ['tcp_src', 'udp_src', 'icmpv4_type', 'icmpv6_type'],
  ['tcp_dst', 'udp_dst', 'icmpv4_code', 'icmpv6_code'],
];

/** Writes byte `b` at byte position `pos` of a key read as a big-endian byte stream. */
export function setKeyByte(w: Uint32Array, pos: number, b: number): void {
  const word = pos >> 2;
  const shift = 24 - 8 * (pos & 3);
  w[word] = ((w[word]! & ~(0xff << shift)) | ((b & 0xff) << shift)) >>> 0;
}

export function getKeyByte(w: Uint32Array, pos: number): number {
  return (w[pos >> 2]! >>> (24 - 8 * (pos & 3))) & 0xff;
}

function bad(field: string, value: unknown, why: string): VswitchError {
  return new VswitchError('bad-match', `match field ${field}: ${why}`, field, value);
}

function checkUint(field: string, v: unknown, bits: number): number {
  const max = bits === 32 ? 0xffffffff : 2 ** bits - 1;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) throw bad(field, v, `${String(v)} is not an integer in 0..${max}`);
  return v;
}

function ipv4Value(field: string, v: unknown): [number, number] {
  if (typeof v === 'number') return [checkUint(field, v, 32), 0xffffffff];
  if (typeof v === 'string') {
    const slash = v.indexOf('/');
    try {
      if (slash < 0) return [parseIpv4(v), 0xffffffff];
      const addr = parseIpv4(v.slice(0, slash));
      const m = v.slice(slash + 1);
      if (m.includes('.')) return [addr, parseIpv4(m)];
      const len = Number(m);
      if (!Number.isInteger(len) || len < 0 || len > 32) throw bad(field, v, `prefix length ${m} is not in 0..32`);
      return [addr, len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0];
    } catch (e) {
      if (e instanceof VswitchError) throw e;
      throw bad(field, v, `${v} is not an IPv4 address or prefix`);
    }
  }
  if (typeof v === 'object' && v !== null && 'value' in v && 'mask' in v) {
    const o = v as Masked<unknown>;
    return [checkUint(field, o.value, 32), checkUint(field, o.mask, 32)];
  }
  throw bad(field, v, 'expected an IPv4 address');
}

function macBytes(field: string, text: unknown): Uint8Array {
  if (typeof text !== 'string') throw bad(field, text, 'expected a MAC address as text');
  try {
    return parseMac(text);
  } catch {
    throw bad(field, text, `${text} is not a MAC address`);
  }
}

function macValue(field: string, v: unknown): [Uint8Array, Uint8Array] {
  if (typeof v === 'string') {
    const slash = v.indexOf('/');
    if (slash < 0) return [macBytes(field, v), new Uint8Array(6).fill(0xff)];
    return [macBytes(field, v.slice(0, slash)), macBytes(field, v.slice(slash + 1))];
  }
  if (typeof v === 'object' && v !== null && 'value' in v && 'mask' in v) {
    const o = v as Masked<unknown>;
    return [macBytes(field, o.value), macBytes(field, o.mask)];
  }
  throw bad(field, v, 'expected a MAC address');
}

function ipv6Bytes(field: string, text: unknown): Uint8Array {
  if (typeof text !== 'string') throw bad(field, text, 'expected an IPv6 address as text');
  try {
    return parseIpv6(text);
  } catch {
    throw bad(field, text, `${text} is not an IPv6 address`);
  }
}

function ipv6Value(field: string, v: unknown): [Uint8Array, Uint8Array] {
  if (typeof v === 'string') {
    const slash = v.indexOf('/');
    if (slash < 0) return [ipv6Bytes(field, v), new Uint8Array(16).fill(0xff)];
    const m = v.slice(slash + 1);
    const addr = ipv6Bytes(field, v.slice(0, slash));
    if (m.includes(':')) return [addr, ipv6Bytes(field, m)];
    const len = Number(m);
    if (!Number.isInteger(len) || len < 0 || len > 128) throw bad(field, v, `prefix length ${m} is not in 0..128`);
    const mask = new Uint8Array(16);
    for (let i = 0; i < 16; i++) {
      const bits = Math.max(0, Math.min(8, len - 8 * i));
      mask[i] = (0xff00 >> bits) & 0xff;
    }
    return [addr, mask];
  }
  if (typeof v === 'object' && v !== null && 'value' in v && 'mask' in v) {
    const o = v as Masked<unknown>;
    return [ipv6Bytes(field, o.value), ipv6Bytes(field, o.mask)];
  }
  throw bad(field, v, 'expected an IPv6 address');
}

const U64 = (1n << 64n) - 1n;

function metaValue(field: string, v: unknown, numbers = false): [bigint, bigint] {
  const check = (x: unknown): bigint => {
    if (numbers && typeof x === 'number' && Number.isSafeInteger(x) && x >= 0) return BigInt(x);
    if (typeof x !== 'bigint' || x < 0n || x > U64) throw bad(field, x, numbers ? 'expected a non-negative integer or bigint below 2^64' : 'expected a bigint in 0..2^64-1');
    return x;
  };
  if (typeof v === 'bigint' || (numbers && typeof v === 'number')) return [check(v), U64];
  if (typeof v === 'object' && v !== null && 'value' in v && 'mask' in v) {
    const o = v as Masked<unknown>;
    return [check(o.value), check(o.mask)];
  }
  throw bad(field, v, 'expected a bigint or { value, mask }');
}

/** Sets a masked value into key/mask arrays; the caller checked value ⊆ mask. */
function putBits(value: Uint32Array, mask: Uint32Array, word: number, shift: number, bits: number, v: number, m: number): void {
  const full = bits === 32 ? 0xffffffff : ((1 << bits) - 1) << shift;
  value[word] = ((value[word]! & ~full) | ((v << shift) & full)) >>> 0;
  mask[word] = ((mask[word]! & ~full) | ((m << shift) & full)) >>> 0;
}

function wildcardsError(field: string, v: unknown): VswitchError {
  // §7.2.3.5: a value bit set where the mask is 0 is OFPBMC_BAD_WILDCARDS.
  return new VswitchError('bad-wildcards', `match field ${field}: the value has bits set outside its mask`, field, v);
}

/**
 * Compiles a match onto the pipeline key, checking field values, masks
 * (§7.2.3.5) and prerequisites (§7.2.3.6).
 */
export function compileMatch(match: Match): CompiledMatch {
  if (typeof match !== 'object' || match === null) throw bad('match', match, 'expected an object');
  const value = new Uint32Array(KEY_WORDS);
  const mask = new Uint32Array(KEY_WORDS);
  for (const name of Object.keys(match)) {
    const raw = (match as Record<string, unknown>)[name];
    if (raw === undefined) continue;
    const def = (FIELDS as Record<string, FieldDef | undefined>)[name];
    if (!def) throw bad(name, raw, 'unknown field');
    const missing = def.prereq?.(match) ?? null;
    if (missing !== null) throw new VswitchError('bad-prerequisite', `match field ${name} needs ${missing} in the match (OpenFlow 1.3.5 §7.2.3.6)`, name, raw);
    const isMaskedObject = typeof raw === 'object' && raw !== null && 'mask' in raw;
    const hasTextMask = typeof raw === 'string' && raw.includes('/');
    if ((isMaskedObject || hasTextMask) && !def.maskable) {
      throw new VswitchError('bad-wildcards', `match field ${name} takes no mask (OpenFlow 1.3.5 §7.2.3.7)`, name, raw);
    }
    switch (def.kind) {
      case 'int': {
        let v: number;
        let m: number;
        if (typeof raw === 'number') {
          v = checkUint(name, raw, def.bits);
          m = def.bits === 32 ? 0xffffffff : (1 << def.bits) - 1;
        } else if (isMaskedObject) {
          const o = raw as Masked<unknown>;
          v = checkUint(name, o.value, def.bits);
          m = checkUint(name, o.mask, def.bits);
        } else throw bad(name, raw, 'expected an integer');
        if ((v & ~m) !== 0) throw wildcardsError(name, raw);
        if (name === 'vlan_vid' && (v & 0x1000) === 0 && (v & 0xfff) !== 0) throw bad(name, raw, 'a VID without OFPVID_PRESENT (0x1000) matches no frame');
        putBits(value, mask, def.word, def.shift, def.bits, v, m);
        break;
      }
      case 'ipv4': {
        const [v, m] = ipv4Value(name, raw);
        if (((v & ~m) >>> 0) !== 0) {
          if (typeof raw === 'string') {
            // '10.1.2.3/8' is accepted as '10.0.0.0/8', as ovs-ofctl does.
            putBits(value, mask, def.word, 0, 32, (v & m) >>> 0, m);
            break;
          }
          throw wildcardsError(name, raw);
        }
        putBits(value, mask, def.word, 0, 32, v, m);
        break;
      }
      case 'mac':
      case 'ipv6': {
        const [v, m] = def.kind === 'mac' ? macValue(name, raw) : ipv6Value(name, raw);
        for (let i = 0; i < v.length; i++) {
          if ((v[i]! & ~m[i]!) !== 0) {
            if (typeof raw !== 'string') throw wildcardsError(name, raw);
          }
          setKeyByte(value, def.word + i, v[i]! & m[i]!);
          setKeyByte(mask, def.word + i, m[i]!);
        }
        break;
      }
      case 'tun': {
        const [v, m] = metaValue(name, raw, true);
        if ((v & ~m) !== 0n) throw wildcardsError(name, raw);
        value[TUN_HI] = Number(v >> 32n);
        value[1] = Number(v & 0xffffffffn);
        mask[TUN_HI] = Number(m >> 32n);
        mask[1] = Number(m & 0xffffffffn);
        break;
      }
      case 'meta': {
        const [v, m] = metaValue(name, raw);
        if ((v & ~m) !== 0n) throw wildcardsError(name, raw);
        value[META_HI] = Number(v >> 32n);
        value[META_HI + 1] = Number(v & 0xffffffffn);
        mask[META_HI] = Number(m >> 32n);
        mask[META_HI + 1] = Number(m & 0xffffffffn);
        break;
      }
    }
  }
  for (const group of EXCLUSIVE) {
    const present = group.filter((f) => match[f] !== undefined);
    if (present.length > 1) throw new VswitchError('bad-prerequisite', `match fields ${present.join(' and ')} cannot both hold (their prerequisites exclude each other)`, present[1], match[present[1]!]);
  }
  return { value, mask };
}

/** `(key & mask) === value` over all words. */
export function matchesKey(m: CompiledMatch, key: Uint32Array): boolean {
  const v = m.value;
  const k = m.mask;
  for (let i = 0; i < KEY_WORDS; i++) if (((key[i]! & k[i]!) >>> 0) !== v[i]) return false;
  return true;
}

/** OpenFlow 1.3.5 §6.4 non-strict: `rule` is at least as specific as `filter` and agrees with it. */
export function isSubsumedBy(rule: CompiledMatch, filter: CompiledMatch): boolean {
  for (let i = 0; i < KEY_WORDS; i++) {
    const fm = filter.mask[i]!;
    if (((rule.mask[i]! & fm) >>> 0) !== fm) return false;
    if (((rule.value[i]! & fm) >>> 0) !== filter.value[i]) return false;
  }
  return true;
}

/** Whether some packet could match both (§6.4 CHECK_OVERLAP). */
export function overlaps(a: CompiledMatch, b: CompiledMatch): boolean {
  for (let i = 0; i < KEY_WORDS; i++) if ((((a.value[i]! ^ b.value[i]!) & a.mask[i]! & b.mask[i]!) >>> 0) !== 0) return false;
  return true;
}

export function sameMatch(a: CompiledMatch, b: CompiledMatch): boolean {
  for (let i = 0; i < KEY_WORDS; i++) if (a.value[i] !== b.value[i] || a.mask[i] !== b.mask[i]) return false;
  return true;
}
