import { parseIpv4, parseIpv6, parseMac } from '@ioplane/packet';
import { Port, REG_BASE, TABLE_MAX, NO_BUFFER } from './constants.js';
import { VswitchError } from './errors.js';
import type { Match } from './match.js';

/** Fields a set_field action can write (OpenFlow 1.3.5 §7.2.5 OFPAT_SET_FIELD; registers and tun_dst as Open vSwitch). */
export type SetField =
  | 'eth_dst' | 'eth_src' | 'vlan_vid' | 'vlan_pcp' | 'ip_dscp' | 'ip_ecn' | 'ipv4_src' | 'ipv4_dst'
  | 'tcp_src' | 'tcp_dst' | 'udp_src' | 'udp_dst' | 'tunnel_id' | 'tun_dst'
  | 'ipv6_src' | 'ipv6_dst' | 'ipv6_flabel'
  | 'arp_op' | 'arp_spa' | 'arp_tpa' | 'arp_sha' | 'arp_tha'
  | 'icmpv4_type' | 'icmpv4_code' | 'icmpv6_type' | 'icmpv6_code'
  | 'reg0' | 'reg1' | 'reg2' | 'reg3' | 'reg4' | 'reg5' | 'reg6' | 'reg7';

/** Actions (§5.12, §7.2.5). An empty list, or `drop`, drops. */
export type Action =
  | { type: 'output'; port: number; /** Bytes sent to the controller (OFPCML_NO_BUFFER = 0xffff for all). */ maxLen?: number }
  | { type: 'group'; groupId: number }
  | { type: 'set_field'; field: SetField; /** A number or text; tunnel_id takes a bigint for values past 2^53. */ value: number | string | bigint }
  | { type: 'push_vlan'; /** 0x8100 (default) or 0x88a8 (§5.12 Push-Tag). */ ethertype?: number }
  | { type: 'pop_vlan' }
  | { type: 'drop' };

/** Instructions (§5.9). At most one of each per flow entry. */
export type Instruction =
  | { type: 'meter'; meterId: number }
  | { type: 'apply_actions'; actions: Action[] }
  | { type: 'clear_actions' }
  | { type: 'write_actions'; actions: Action[] }
  | { type: 'write_metadata'; value: bigint; mask?: bigint }
  | { type: 'goto_table'; tableId: number };

/** Action kinds, numbered in action-set execution order (§5.10). */
export const A = {
  POP_VLAN: 1,
  PUSH_VLAN: 2,
  SET_FIELD: 3,
  GROUP: 4,
  OUTPUT: 5,
} as const;
export type A = (typeof A)[keyof typeof A];

/** A validated action with its operands decoded once. */
export interface CAction {
  kind: A;
  /** output: port; group: id; push: ethertype; set_field: the value (32 bits, or the first 4 MAC bytes). */
  a: number;
  /** output: maxLen; set_field: the last two MAC bytes. */
  b: number;
  field: SetField | null;
  /** set_field of ipv6_src/ipv6_dst: the address as four big-endian words (key words 10–13 / 14–17). */
  v6?: Uint32Array;
}

/** A validated instruction list in §5.9 execution order. */
export interface CInstructions {
  meterId: number;
  apply: CAction[] | null;
  clear: boolean;
  write: CAction[] | null;
  metaValue: bigint;
  metaMask: bigint;
  hasMeta: boolean;
  gotoTable: number;
}

const isIcmp = (m: Match): boolean => m.eth_type === 0x0800 && m.ip_proto === 1;
const isIcmp6 = (m: Match): boolean => m.eth_type === 0x86dd && m.ip_proto === 58;

const SET_FIELDS: Record<SetField, { bits: number; kind: 'int' | 'mac' | 'ipv4' | 'ipv6'; prereq?: (m: Match) => boolean }> = {
  eth_dst: { bits: 48, kind: 'mac' },
  eth_src: { bits: 48, kind: 'mac' },
  vlan_vid: { bits: 12, kind: 'int' },
  vlan_pcp: { bits: 3, kind: 'int' },
  ip_dscp: { bits: 6, kind: 'int', prereq: (m) => m.eth_type === 0x0800 || m.eth_type === 0x86dd },
  ip_ecn: { bits: 2, kind: 'int', prereq: (m) => m.eth_type === 0x0800 || m.eth_type === 0x86dd },
  ipv4_src: { bits: 32, kind: 'ipv4', prereq: (m) => m.eth_type === 0x0800 },
  ipv4_dst: { bits: 32, kind: 'ipv4', prereq: (m) => m.eth_type === 0x0800 },
  tcp_src: { bits: 16, kind: 'int', prereq: (m) => m.ip_proto === 6 },
  tcp_dst: { bits: 16, kind: 'int', prereq: (m) => m.ip_proto === 6 },
  udp_src: { bits: 16, kind: 'int', prereq: (m) => m.ip_proto === 17 },
  udp_dst: { bits: 16, kind: 'int', prereq: (m) => m.ip_proto === 17 },
  // §7.2.3.8 Table 12: IPV6_SRC/DST and IPV6_FLABEL need ETH_TYPE=0x86dd; ARP_* need ETH_TYPE=0x0806;
  // ICMPV4_* need IP_PROTO=1 (over 0x0800), ICMPV6_* IP_PROTO=58 (over 0x86dd).
  ipv6_src: { bits: 128, kind: 'ipv6', prereq: (m) => m.eth_type === 0x86dd },
  ipv6_dst: { bits: 128, kind: 'ipv6', prereq: (m) => m.eth_type === 0x86dd },
  ipv6_flabel: { bits: 20, kind: 'int', prereq: (m) => m.eth_type === 0x86dd },
  // The flow key keeps the ARP opcode in 8 bits (as Open vSwitch's nw_proto, and as the arp_op match does).
  arp_op: { bits: 8, kind: 'int', prereq: (m) => m.eth_type === 0x0806 },
  arp_spa: { bits: 32, kind: 'ipv4', prereq: (m) => m.eth_type === 0x0806 },
  arp_tpa: { bits: 32, kind: 'ipv4', prereq: (m) => m.eth_type === 0x0806 },
  arp_sha: { bits: 48, kind: 'mac', prereq: (m) => m.eth_type === 0x0806 },
  arp_tha: { bits: 48, kind: 'mac', prereq: (m) => m.eth_type === 0x0806 },
  icmpv4_type: { bits: 8, kind: 'int', prereq: isIcmp },
  icmpv4_code: { bits: 8, kind: 'int', prereq: isIcmp },
  icmpv6_type: { bits: 8, kind: 'int', prereq: isIcmp6 },
  icmpv6_code: { bits: 8, kind: 'int', prereq: isIcmp6 },
  tunnel_id: { bits: 64, kind: 'int' },
  tun_dst: { bits: 32, kind: 'ipv4' },
  reg0: { bits: 32, kind: 'int' },
  reg1: { bits: 32, kind: 'int' },
  reg2: { bits: 32, kind: 'int' },
  reg3: { bits: 32, kind: 'int' },
  reg4: { bits: 32, kind: 'int' },
  reg5: { bits: 32, kind: 'int' },
  reg6: { bits: 32, kind: 'int' },
  reg7: { bits: 32, kind: 'int' },
};

/** Key word of a register set_field. */
export function regWord(field: SetField): number {
  return REG_BASE + Number(field.slice(3));
}

export interface ActionContext {
  /** The flow's match, to check set_field prerequisites against (none for group buckets and packet-out). */
  match: Match | null;
  groupExists(id: number): boolean;
  /** Packet-out may output to TABLE. */
  allowTable: boolean;
}

function badAction(msg: string, field: string, value: unknown): VswitchError {
  return new VswitchError('bad-action', msg, field, value);
}

export function compileActions(list: readonly Action[], ctx: ActionContext): CAction[] {
  const raw: unknown = list;
  if (!Array.isArray(raw)) throw badAction('actions must be an array', 'actions', list);
  if (list.length > 256) throw badAction(`${list.length} actions in one list; at most 256`, 'actions', list.length);
  const out: CAction[] = [];
  for (const act of list) {
    if (typeof act !== 'object' || act === null) throw badAction('an action must be an object', 'action', act);
    switch (act.type) {
      case 'drop':
        break;
      case 'output': {
        const p = act.port;
        if (!Number.isInteger(p) || p < 1 || p > 0xffffffff || p === Port.ANY || (p > Port.MAX && p < Port.IN_PORT)) {
          // §7.2.5: port 0 and ANY are not valid output ports (OFPBAC_BAD_OUT_PORT).
          throw badAction(`output to port ${p} is not valid`, 'port', p);
        }
        if (p === Port.TABLE && !ctx.allowTable) throw badAction('output to TABLE is only valid in a packet-out', 'port', p);
        const maxLen = act.maxLen ?? NO_BUFFER;
        if (!Number.isInteger(maxLen) || maxLen < 0 || maxLen > 0xffff) throw badAction(`maxLen ${maxLen} is not in 0..65535`, 'maxLen', maxLen);
        out.push({ kind: A.OUTPUT, a: p, b: maxLen, field: null });
        break;
      }
      case 'group':
        if (!Number.isInteger(act.groupId) || act.groupId < 0 || act.groupId > 0xffffff00) throw badAction(`group ${act.groupId} is not a valid group number`, 'groupId', act.groupId);
        // §5.6: a group action naming a group that does not exist is OFPBAC_BAD_OUT_GROUP.
        if (!ctx.groupExists(act.groupId)) throw badAction(`group ${act.groupId} does not exist`, 'groupId', act.groupId);
        out.push({ kind: A.GROUP, a: act.groupId, b: 0, field: null });
        break;
      case 'push_vlan': {
        const t = act.ethertype ?? 0x8100;
        // §5.12: "Only Ethertype 0x8100 and 0x88a8 should be used" for Push-VLAN.
        if (t !== 0x8100 && t !== 0x88a8) throw badAction(`push_vlan ethertype 0x${t.toString(16)} is not 0x8100 or 0x88a8`, 'ethertype', t);
        out.push({ kind: A.PUSH_VLAN, a: t, b: 0, field: null });
        break;
      }
      case 'pop_vlan':
        out.push({ kind: A.POP_VLAN, a: 0, b: 0, field: null });
        break;
      case 'set_field': {
        const def = (SET_FIELDS as Record<string, (typeof SET_FIELDS)[SetField] | undefined>)[act.field];
        if (!def) throw new VswitchError('unsupported', `set_field of ${String(act.field)} is not supported`, 'field', act.field);
        if (def.prereq && ctx.match && !def.prereq(ctx.match)) {
          // OFPBAC_MATCH_INCONSISTENT: the field's prerequisites are not in the flow's match.
          throw new VswitchError('bad-prerequisite', `set_field ${act.field} needs its prerequisites in the flow's match`, act.field, act.value);
        }
        let a: number;
        let b = 0;
        const v = act.value;
        if (def.kind === 'ipv6') {
          let ip: Uint8Array;
          try {
            ip = parseIpv6(String(v));
          } catch {
            throw badAction(`set_field ${act.field}: ${String(v)} is not an IPv6 address`, act.field, v);
          }
          const v6 = new Uint32Array(4);
          for (let i = 0; i < 4; i++) v6[i] = ((ip[i * 4]! << 24) | (ip[i * 4 + 1]! << 16) | (ip[i * 4 + 2]! << 8) | ip[i * 4 + 3]!) >>> 0;
          out.push({ kind: A.SET_FIELD, a: v6[0]!, b: 0, field: act.field, v6 });
          break;
        }
        if (act.field === 'tunnel_id') {
          // OXM_OF_TUNNEL_ID is 64 bits (§7.2.3.7): a = low 32, b = high 32.
          const t = typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? BigInt(v) : v;
          if (typeof t !== 'bigint' || t < 0n || t > U64) throw badAction(`set_field tunnel_id: ${String(v)} is not in 0..2^64-1`, act.field, v);
          out.push({ kind: A.SET_FIELD, a: Number(t & 0xffffffffn), b: Number(t >> 32n), field: act.field });
          break;
        }
        if (def.kind === 'mac') {
          let mac: Uint8Array;
          try {
            mac = parseMac(String(v));
          } catch {
            throw badAction(`set_field ${act.field}: ${String(v)} is not a MAC address`, act.field, v);
          }
          a = ((mac[0]! << 24) | (mac[1]! << 16) | (mac[2]! << 8) | mac[3]!) >>> 0;
          b = (mac[4]! << 8) | mac[5]!;
        } else if (def.kind === 'ipv4' && typeof v === 'string') {
          try {
            a = parseIpv4(v);
          } catch {
            throw badAction(`set_field ${act.field}: ${v} is not an IPv4 address`, act.field, v);
          }
        } else {
          const max = def.bits === 32 ? 0xffffffff : 2 ** def.bits - 1;
          if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) throw badAction(`set_field ${act.field}: ${String(v)} is not in 0..${max}`, act.field, v);
          a = v;
        }
        out.push({ kind: A.SET_FIELD, a, b, field: act.field });
        break;
      }
      default:
        throw new VswitchError('unsupported', `action ${String((act as { type: unknown }).type)} is not supported`, 'type', (act as { type: unknown }).type);
    }
  }
  return out;
}

const U64 = (1n << 64n) - 1n;

/** Validates an instruction list (§5.9: at most one of each; goto only forward). */
export function compileInstructions(list: readonly Instruction[], tableId: number, ctx: ActionContext & { meterExists(id: number): boolean }): CInstructions {
  const raw: unknown = list;
  if (!Array.isArray(raw)) throw new VswitchError('bad-instruction', 'instructions must be an array', 'instructions', list);
  const r: CInstructions = { meterId: 0, apply: null, clear: false, write: null, metaValue: 0n, metaMask: 0n, hasMeta: false, gotoTable: -1 };
  const seen = new Set<string>();
  for (const ins of list) {
    if (typeof ins !== 'object' || ins === null) throw new VswitchError('bad-instruction', 'an instruction must be an object', 'instruction', ins);
    if (seen.has(ins.type)) throw new VswitchError('bad-instruction', `instruction ${ins.type} appears twice (OpenFlow 1.3.5 §5.9: at most one of each)`, 'type', ins.type);
    seen.add(ins.type);
    switch (ins.type) {
      case 'meter':
        if (!Number.isInteger(ins.meterId) || ins.meterId < 1 || !ctx.meterExists(ins.meterId)) {
          throw new VswitchError('bad-meter', `meter ${ins.meterId} does not exist`, 'meterId', ins.meterId);
        }
        r.meterId = ins.meterId;
        break;
      case 'apply_actions':
        r.apply = compileActions(ins.actions, ctx);
        break;
      case 'clear_actions':
        r.clear = true;
        break;
      case 'write_actions': {
        const acts = compileActions(ins.actions, ctx);
        // §5.10: an action set holds at most one action of each type (one set_field per field).
        const kinds = new Set<string>();
        for (const a of acts) {
          const k = a.kind === A.SET_FIELD ? `set:${a.field}` : String(a.kind);
          if (kinds.has(k)) throw new VswitchError('bad-action', `write_actions holds two ${a.kind === A.SET_FIELD ? `set_field ${a.field}` : 'actions of one type'}; an action set holds one of each (§5.10)`, 'actions', k);
          kinds.add(k);
        }
        r.write = acts;
        break;
      }
      case 'write_metadata': {
        const v = ins.value;
        const m = ins.mask ?? U64;
        if (typeof v !== 'bigint' || typeof m !== 'bigint' || v < 0n || v > U64 || m < 0n || m > U64) {
          throw new VswitchError('bad-instruction', 'write_metadata takes 64-bit bigint value and mask', 'value', v);
        }
        r.metaValue = v & m;
        r.metaMask = m;
        r.hasMeta = true;
        break;
      }
      case 'goto_table':
        if (!Number.isInteger(ins.tableId) || ins.tableId < 0 || ins.tableId > TABLE_MAX) throw new VswitchError('bad-table', `goto_table ${ins.tableId} is not a table (0..254)`, 'tableId', ins.tableId);
        // §5.1: "can only direct a packet to a flow table number greater than its own".
        if (ins.tableId <= tableId) throw new VswitchError('bad-instruction', `goto_table ${ins.tableId} from table ${tableId} does not go forward (§5.1)`, 'tableId', ins.tableId);
        r.gotoTable = ins.tableId;
        break;
      default:
        throw new VswitchError('unsupported', `instruction ${String((ins as { type: unknown }).type)} is not supported`, 'type', (ins as { type: unknown }).type);
    }
  }
  return r;
}

/** Whether an action list outputs to `port` (delete's out_port filter, §6.4). */
export function outputsTo(acts: readonly CAction[] | null, port: number): boolean {
  return acts?.some((a) => a.kind === A.OUTPUT && a.a === port) ?? false;
}

export function usesGroup(acts: readonly CAction[] | null, group: number): boolean {
  return acts?.some((a) => a.kind === A.GROUP && a.a === group) ?? false;
}
