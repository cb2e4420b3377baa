/** Test helpers: hex in/out and an independent, obviously-correct checksum reference. */
export function hex(s: string): Uint8Array {
  const clean = s.replace(/[^0-9a-f]/gi, '');
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

/** RFC 1071 by the letter: sum 16-bit big-endian words, odd byte padded, fold with end-around carry. */
export function refSum(bytes: ArrayLike<number>, start = 0, end = bytes.length): number {
  let s = 0;
  for (let i = start; i < end; i += 2) {
    s += (bytes[i]! << 8) + (i + 1 < end ? bytes[i + 1]! : 0);
    s = (s & 0xffff) + (s >>> 16);
  }
  return s;
}

export function refChecksum(bytes: ArrayLike<number>, start = 0, end = bytes.length): number {
  return ~refSum(bytes, start, end) & 0xffff;
}
