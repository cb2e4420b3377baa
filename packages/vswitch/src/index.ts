export { VswitchError, type VswitchErrorKind } from './errors.js';
export { Port, Group, TABLE_MAX, TABLE_ALL, METER_MAX, NO_BUFFER, DEFAULT_MISS_SEND_LEN, KEY_WORDS, INGRESS_WORDS } from './constants.js';
export { compileMatch, FIELDS, type Match, type MatchField, type Masked, type CompiledMatch } from './match.js';
export type { Action, Instruction, SetField } from './actions.js';
export { tupleHash, type FlowFlags } from './classifier.js';
export type { CacheStats } from './cache.js';
export type { MeterBand, MeterConfig, MeterStats } from './meter.js';
export { remarkDscp } from './meter.js';
export type { PortStats, VlanMode } from './datapath.js';
export {
  Bridge,
  type BridgeOptions, type PortOptions, type BondOptions, type TunnelOptions, type PortConfig, type PortInfo, type FlowMod, type FlowStats,
  type FlowRemoved, type FlowRemovedReason, type GroupBucket, type GroupConfig, type GroupStats, type MirrorConfig, type PacketIn,
  type PacketOut, type BridgeStats,
} from './bridge.js';
