export { ConfigSpace, type AccessSize, type WriteHook, type CapabilityType, type ExtendedCapabilityType, type CapabilityEntry } from './config-space.js';
export { type BarSpec, type Bar, type BarKind, installBar, readBarAddress } from './bar.js';
export { powerManagementCapability, type PowerManagement, type PowerManagementParams, type PowerState } from './capabilities/power-management.js';
export { msixCapability, Msix, type MsixParams, type MsixDeliver, type MsixSignal } from './capabilities/msix.js';
export { expressCapability, type Express, type ExpressParams } from './capabilities/express.js';
export { ariCapability, type Ari, type AriParams } from './capabilities/ari.js';
export { aerCapability, type Aer } from './capabilities/aer.js';
export { serialNumberCapability, type SerialNumberParams } from './capabilities/serial-number.js';
export {
  sriovCapability,
  Sriov,
  type SriovParams,
  type SriovInit,
  type SriovHost,
  type SriovConfigErrorKind,
  type VfLayout,
  type VfLayoutFn,
  type VfBarSpec,
} from './capabilities/sriov.js';
export { PciFunction, type PciFunctionOptions, type FunctionIdentity, type FunctionKind, type MmioHandler, type Placed } from './pci-function.js';
export { PhysicalFunction, type PhysicalFunctionOptions, type PhysicalFunctionEvents, type SriovSysfsAttribute } from './physical-function.js';
export { VirtualFunction, type VfTemplate } from './virtual-function.js';
export { type VfConfig, type VfLinkState, DEFAULT_VF_CONFIG } from './vf-settings.js';
export { PciSegment, ECAM_WINDOW_SIZE } from './segment.js';
export { lspciDump, className, type LspciDumpOptions } from './lspci.js';
export { intel82599LikePf, intelE810LikePf, type PresetOptions } from './presets.js';
export { type RoutingId, type PciAddressInput, makeRid, formatRid, parseAddress, ridBus, ridDevice, ridFunction, ridDevfn } from './routing-id.js';
export { SrIovError, type SrIovErrorKind, type Errno } from './errors.js';
export * as defs from './defs.js';
