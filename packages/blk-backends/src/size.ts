import { BlockError } from './errors.js';

const SUFFIX: Record<string, number> = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4, p: 1024 ** 5, e: 1024 ** 6 };

/** A size as qemu-img takes it: bytes, or a number with a k/M/G/T/P/E suffix (powers of 1024). */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkmgtpe]?)\s*$/i.exec(text);
  const mult = m ? SUFFIX[m[2]!.toLowerCase()] : undefined;
  if (!m || mult === undefined) throw new BlockError('invalid-argument', `'${text}' is not a size (a number with an optional k, M, G, T suffix)`, { text });
  const v = Math.round(Number(m[1]) * mult);
  if (!Number.isSafeInteger(v)) throw new BlockError('invalid-argument', `size '${text}' is too large`, { text });
  return v;
}
