import { open as fsOpen } from 'node:fs/promises';
import type { BlockBackend } from './backend.js';
import { BlockError, ioError } from './errors.js';
import { Qcow2Backend, type Qcow2CreateOptions } from './qcow2/qcow2.js';
import { QCOW_MAGIC } from './qcow2/format.js';
import { RawFileBackend } from './raw.js';
import type { IoEngine } from './file.js';

export type ImageFormat = 'raw' | 'qcow2';

export interface OpenImageOptions {
  /** 'raw' or 'qcow2'; probed from the first bytes when absent (a qcow2 magic means qcow2). */
  format?: string;
  readOnly?: boolean;
  /** Raw files only: O_DIRECT. */
  direct?: boolean;
  /** qcow2 only: do not open the backing file (one layer alone, for check/info). */
  noBacking?: boolean;
  /** Real paths of the images above, for loop detection (set by qcow2 when it opens its backing file). */
  chain?: readonly string[];
  /** How the image's file I/O is done, backing files included: 'threadpool' (default) or 'sync' (see `IoEngine`). */
  engine?: IoEngine;
}

/** Guess an image's format from its first four bytes. */
export async function probeFormat(path: string): Promise<ImageFormat> {
  let h;
  try {
    h = await fsOpen(path, 'r');
  } catch (e) {
    throw ioError(`cannot open ${path}`, e);
  }
  try {
    const b = new Uint8Array(4);
    const { bytesRead } = await h.read(b, 0, 4, 0);
    return bytesRead === 4 && new DataView(b.buffer).getUint32(0, false) === QCOW_MAGIC ? 'qcow2' : 'raw';
  } finally {
    await h.close();
  }
}

export function checkFormat(format: string): ImageFormat {
  if (format === 'raw' || format === 'qcow2') return format;
  throw new BlockError('unsupported', `image format '${format}' is not supported (raw, qcow2)`, { format });
}

/** Open an image file of any supported format; a qcow2 image's backing chain is opened read-only below it. */
export async function openImage(path: string, opts: OpenImageOptions = {}): Promise<BlockBackend> {
  const format = opts.format !== undefined ? checkFormat(opts.format) : await probeFormat(path);
  const engine = opts.engine ?? 'threadpool';
  if (format === 'raw') return RawFileBackend.open(path, { readOnly: opts.readOnly ?? false, direct: opts.direct ?? false, engine });
  return Qcow2Backend.open(path, {
    readOnly: opts.readOnly ?? false,
    noBacking: opts.noBacking ?? false,
    chain: opts.chain ?? [],
    engine,
    openBacking: (p, fmt, chain) => openImage(p, { format: fmt, readOnly: true, chain, engine }),
  });
}

export interface CreateImageOptions extends Qcow2CreateOptions {
  size?: number;
}

/** Create an empty image: raw (sparse) or qcow2. */
export async function createImage(path: string, format: string, opts: CreateImageOptions): Promise<void> {
  const f = checkFormat(format);
  if (f === 'raw') {
    if (opts.backingFile !== undefined) throw new BlockError('invalid-argument', 'raw images have no backing file');
    if (opts.size === undefined) throw new BlockError('invalid-argument', 'a raw image needs a size');
    return RawFileBackend.create(path, opts.size);
  }
  return Qcow2Backend.create(path, {
    ...opts,
    openBacking: opts.openBacking ?? ((p, fmt, chain) => openImage(p, { format: fmt, readOnly: true, chain })),
  });
}
