export {
  BaseNetBackend, receiveFrames, checkMtu, newStats, FRAME_OVERHEAD, MIN_FRAME, DEFAULT_MTU, MAX_MTU,
  type NetBackend, type NetStats, type FrameHandler, type FramesOptions,
} from './backend.js';
export { NetBackendError, type NetBackendErrorKind } from './errors.js';
export { FrameRing, ringBytes, RING_HEADER_BYTES } from './ring.js';
export {
  LoopbackBackend, SharedLoopbackBackend, createLoopbackPair, createSharedLoopback,
  type LoopbackOptions, type LoopbackPair, type SharedLoopbackChannel,
} from './loopback.js';
export { UdpBackend, type UdpBackendOptions, type Endpoint } from './udp.js';
export {
  VxlanEndpoint, VxlanBackend,
  type VxlanEndpointOptions, type VxlanNetworkOptions, type VxlanRemote, type VxlanEndpointStats, type FdbView,
} from './vxlan.js';
export { TapBackend, type TapBackendOptions } from './tap.js';
export {
  CaptureBackend, CaptureWriter, capture,
  type CaptureOptions, type CaptureStats, type CaptureTime, type CaptureDirection,
} from './capture.js';
