import { expect } from 'vitest';
import { SrIovError } from '../src/index.js';

export function expectSrIovError(fn: () => unknown, kind: string, value?: number | string): SrIovError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(SrIovError);
    const err = e as SrIovError;
    expect(err.kind).toBe(kind);
    if (value !== undefined) expect(err.value).toBe(value);
    return err;
  }
  throw new Error(`expected an SrIovError of kind ${kind}`);
}
