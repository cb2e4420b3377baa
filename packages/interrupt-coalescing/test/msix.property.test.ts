import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MSIX_CTRL_ENABLE, MSIX_CTRL_FUNCTION_MASK, MsixTable } from '../src/index.js';

const N = 10;

type Op =
  | { op: 'signal'; v: number }
  | { op: 'mask'; v: number; masked: boolean }
  | { op: 'data'; v: number; data: number }
  | { op: 'control'; enable: boolean; fm: boolean };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant('signal' as const), v: fc.integer({ min: 0, max: N - 1 }) }),
  fc.record({ op: fc.constant('signal' as const), v: fc.integer({ min: 0, max: N - 1 }) }),
  fc.record({ op: fc.constant('mask' as const), v: fc.integer({ min: 0, max: N - 1 }), masked: fc.boolean() }),
  fc.record({ op: fc.constant('data' as const), v: fc.integer({ min: 0, max: N - 1 }), data: fc.integer({ min: 0, max: 0xffff }) }),
  fc.record({ op: fc.constant('control' as const), enable: fc.boolean(), fm: fc.boolean() }),
);

/** The reference: PCI's rules in their plainest form. */
class Model {
  masked = Array<boolean>(N).fill(true);
  pending = Array<boolean>(N).fill(false);
  data = Array<number>(N).fill(0);
  enable = false;
  fm = false;
  sent: { v: number; data: number }[] = [];
  private flush(): void {
    if (!this.enable || this.fm) return;
    for (let v = 0; v < N; v++) {
      if (this.pending[v] && !this.masked[v]) {
        this.pending[v] = false;
        this.sent.push({ v, data: this.data[v]! });
      }
    }
  }
  apply(o: Op): void {
    switch (o.op) {
      case 'signal':
        if (!this.enable) return;
        if (this.fm || this.masked[o.v]) this.pending[o.v] = true;
        else this.sent.push({ v: o.v, data: this.data[o.v]! });
        return;
      case 'mask':
        this.masked[o.v] = o.masked;
        this.flush();
        return;
      case 'data':
        this.data[o.v] = o.data;
        this.flush();
        return;
      case 'control':
        this.enable = o.enable;
        this.fm = o.fm;
        this.flush();
    }
  }
}

describe('MSI-X table against the reference model', () => {
  it('sends the same messages, in the same order, and holds the same pending bits', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 200 }), (ops) => {
        const sent: { v: number; data: number }[] = [];
        const t = new MsixTable({ vectors: N, send: (v, _lo, _hi, data) => sent.push({ v, data }) });
        const m = new Model();
        for (const o of ops) {
          if (o.op === 'signal') t.signal(o.v);
          else if (o.op === 'mask') t.write('table', o.v * 16 + 12, 4, o.masked ? 1 : 0);
          else if (o.op === 'data') t.write('table', o.v * 16 + 8, 4, o.data);
          else t.writeMessageControl((o.enable ? MSIX_CTRL_ENABLE : 0) | (o.fm ? MSIX_CTRL_FUNCTION_MASK : 0));
          m.apply(o);
          expect(sent).toEqual(m.sent);
        }
        for (let v = 0; v < N; v++) expect(t.isPending(v)).toBe(m.pending[v]);
      }),
      { numRuns: 500 },
    );
  });
});
