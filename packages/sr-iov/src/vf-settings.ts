import { SrIovError } from './errors.js';

/** IFLA_VF_LINK_STATE_*: follow the PF's link, always up, always down. */
export type VfLinkState = 'auto' | 'enable' | 'disable';

/** The per-VF settings `ip link set PF vf N …` controls (Linux `struct ifla_vf_info`). */
export interface VfConfig {
  /** Administrative MAC, `aa:bb:cc:dd:ee:ff`; all zeros means "not set". */
  readonly mac: string;
  /** VLAN ID 0..4095 the PF inserts/strips (0 = none), with its 802.1p priority and TPID. */
  readonly vlan: number;
  readonly qos: number;
  readonly vlanProto: 0x8100 | 0x88a8;
  /** TX rate limits in Mbit/s; 0 = unlimited / no guarantee. */
  readonly minTxRate: number;
  readonly maxTxRate: number;
  readonly spoofChk: boolean;
  readonly trust: boolean;
  readonly linkState: VfLinkState;
}

export const DEFAULT_VF_CONFIG: VfConfig = Object.freeze({
  mac: '00:00:00:00:00:00',
  vlan: 0,
  qos: 0,
  vlanProto: 0x8100,
  minTxRate: 0,
  maxTxRate: 0,
  spoofChk: true,
  trust: false,
  linkState: 'auto',
});

/** Parses and checks a unicast MAC (a string or 6 bytes); multicast is refused (Linux `is_valid_ether_addr`). */
export function parseMac(mac: string | Uint8Array): string {
  let bytes: number[];
  if (typeof mac === 'string') {
    const m = /^([0-9a-fA-F]{2})(?::([0-9a-fA-F]{2})){5}$/.test(mac) ? mac.split(':') : undefined;
    if (!m) throw new SrIovError('invalid-setting', `MAC ${JSON.stringify(mac)} is not aa:bb:cc:dd:ee:ff`, mac);
    bytes = m.map((h) => parseInt(h, 16));
  } else {
    if (!(mac instanceof Uint8Array) || mac.length !== 6) throw new SrIovError('invalid-setting', 'MAC must be 6 bytes', String(mac));
    bytes = [...mac];
  }
  const zero = bytes.every((b) => b === 0);
  if (!zero && bytes[0]! & 1) throw new SrIovError('invalid-setting', `MAC ${fmt(bytes)} is a multicast address`, fmt(bytes));
  return fmt(bytes);
}

function fmt(bytes: number[]): string {
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** VLAN checks of rtnetlink `do_setvfinfo` (IFLA_VF_VLAN_LIST): VID < 4096, QoS < 8, TPID 802.1Q or 802.1ad. */
export function checkVlan(vlan: number, qos: number, proto: number): asserts proto is 0x8100 | 0x88a8 {
  if (!Number.isInteger(vlan) || vlan < 0 || vlan > 4095) throw new SrIovError('invalid-setting', `VLAN ${String(vlan)} is not 0..4095`, vlan, 4095);
  if (!Number.isInteger(qos) || qos < 0 || qos > 7) throw new SrIovError('invalid-setting', `QoS ${String(qos)} is not 0..7`, qos, 7);
  if (proto !== 0x8100 && proto !== 0x88a8) throw new SrIovError('unsupported-protocol', `VLAN protocol 0x${proto.toString(16)} is neither 802.1Q (0x8100) nor 802.1ad (0x88a8)`, proto);
}

/** Rate checks of rtnetlink (min ≤ max when max is set) and of drivers (max ≤ link speed). */
export function checkRate(minTxRate: number, maxTxRate: number, linkSpeedMbps: number): void {
  for (const [what, v] of [['min_tx_rate', minTxRate], ['max_tx_rate', maxTxRate]] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new SrIovError('invalid-setting', `${what} ${String(v)} is not a u32 in Mbit/s`, v);
  }
  if (maxTxRate !== 0 && minTxRate > maxTxRate) throw new SrIovError('invalid-setting', `min_tx_rate ${minTxRate} is above max_tx_rate ${maxTxRate}`, minTxRate, maxTxRate);
  if (maxTxRate > linkSpeedMbps) throw new SrIovError('invalid-setting', `max_tx_rate ${maxTxRate} is above the link speed ${linkSpeedMbps} Mbit/s`, maxTxRate, linkSpeedMbps);
  if (minTxRate > linkSpeedMbps) throw new SrIovError('invalid-setting', `min_tx_rate ${minTxRate} is above the link speed ${linkSpeedMbps} Mbit/s`, minTxRate, linkSpeedMbps);
}
