export { BlockError, type BlockErrorKind } from './errors.js';
export {
  COMPLETED,
  checkRequest,
  segmentsLength,
  type BlockBackend,
  type Extent,
  type ExtentKind,
  type Operation,
  type Segments,
} from './backend.js';
export { MemoryBackend, type MemoryBackendOptions } from './memory.js';
export type { IoEngine } from './file.js';
export { RawFileBackend, type RawFileOptions } from './raw.js';
export {
  Qcow2Backend,
  MAX_BACKING_DEPTH,
  type BackingOpener,
  type Qcow2CheckResult,
  type Qcow2CreateOptions,
  type Qcow2OpenOptions,
} from './qcow2/qcow2.js';
export { parseHeader, serializeHeader, type Qcow2Header, type FeatureName } from './qcow2/format.js';
export { openImage, createImage, probeFormat, type ImageFormat, type OpenImageOptions, type CreateImageOptions } from './open.js';
export { parseSize } from './size.js';
export { main as imgMain, mapImage, copyImage, type MapEntry } from './img.js';
