export { CoalescingError, type CoalescingErrorKind } from './errors.js';
export {
  type Clock,
  type Timer,
  type TimerScheduler,
  monotonicClock,
  FakeClock,
  FakeScheduler,
  RealScheduler,
  type RealSchedulerOptions,
} from './clock.js';
export {
  DELIVER_NOW,
  type CoalescingPolicy,
  NonePolicy,
  FixedPolicy,
  type FixedParams,
  NO_COALESCING,
  checkFixedParams,
  fromVirtioNetCoal,
  fromNvmeAggregation,
  nvmeAggregationPolicy,
} from './policy.js';
export { VicPolicy, type VicOptions, type VicRatio } from './vic.js';
export {
  AdaptivePolicy,
  type AdaptiveOptions,
  NetDimPolicy,
  type NetDimOptions,
  type Profile,
  BLOCK_PROFILES,
  NET_DIM_RX_EQE_PROFILES,
  NET_DIM_RX_CQE_PROFILES,
  NET_DIM_TX_EQE_PROFILES,
  NET_DIM_TX_CQE_PROFILES,
} from './adaptive.js';
export { InterruptCoalescer, type CoalescerOptions } from './coalescer.js';
export { CoalescingStats, DELAY_BUCKETS, delayBucketUpperUs } from './stats.js';
export {
  MsixTable,
  type MsixOptions,
  MsixSignal,
  QueueVectors,
  NO_VECTOR,
  PCI_CAP_ID_MSIX,
  MSIX_CAP_SIZE,
  MSIX_ENTRY_SIZE,
  MSIX_ENTRY_ADDR_LO,
  MSIX_ENTRY_ADDR_HI,
  MSIX_ENTRY_DATA,
  MSIX_ENTRY_VECTOR_CTRL,
  MSIX_VECTOR_CTRL_MASK,
  MSIX_CTRL_TABLE_SIZE_MASK,
  MSIX_CTRL_FUNCTION_MASK,
  MSIX_CTRL_ENABLE,
  MSIX_MAX_VECTORS,
} from './msix.js';
export {
  VirtioNetNotfCoal,
  type VirtioNetNotfCoalOptions,
  type VirtioNetCoalParams,
  VIRTIO_NET_F_VQ_NOTF_COAL,
  VIRTIO_NET_F_NOTF_COAL,
  VIRTIO_NET_CTRL_NOTF_COAL,
  VIRTIO_NET_CTRL_NOTF_COAL_TX_SET,
  VIRTIO_NET_CTRL_NOTF_COAL_RX_SET,
  VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET,
  VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET,
  VIRTIO_NET_OK,
  VIRTIO_NET_ERR,
  VIRTIO_NET_CTRL_COAL_SIZE,
  VIRTIO_NET_CTRL_COAL_VQ_SIZE,
} from './virtio-net.js';
export {
  NVME_FEAT_INTERRUPT_COALESCING,
  NVME_FEAT_INTERRUPT_VECTOR_CONFIG,
  type NvmeInterruptCoalescing,
  type NvmeInterruptVectorConfig,
  decodeNvmeInterruptCoalescing,
  encodeNvmeInterruptCoalescing,
  decodeNvmeInterruptVectorConfig,
  encodeNvmeInterruptVectorConfig,
} from './nvme.js';
export { type Trace, parseTrace, formatTrace, TRACE_FORMAT, TRACE_VERSION, TRACE_MAX_LINES, TRACE_MAX_LINE_LENGTH } from './trace.js';
export {
  Rng,
  simulate,
  type SimOptions,
  type SimResult,
  lognormalService,
  poissonArrivals,
  burstyArrivals,
} from './simulate.js';
