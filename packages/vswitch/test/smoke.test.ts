import { describe, expect, it } from 'vitest';
import { Bridge, Port } from '../src/index.js';
import { SinkBackend, udpFrame } from './helpers.js';

describe('smoke', () => {
  it('forwards by flow and caches', () => {
    const br = new Bridge({ clock: () => 0 });
    const a = new SinkBackend();
    const b = new SinkBackend();
    br.addPort(a, { portNo: 1 });
    br.addPort(b, { portNo: 2 });
    br.addFlow({ match: { in_port: 1 }, instructions: [{ type: 'apply_actions', actions: [{ type: 'output', port: 2 }] }] });
    for (let i = 0; i < 3; i++) a.inject(udpFrame(1, 2));
    expect(b.sent.length).toBe(3);
    expect(br.stats.upcalls).toBe(1);
    expect(br.stats.microflow.hits).toBe(2);
    br.addFlow({ priority: 0, match: {}, instructions: [{ type: 'apply_actions', actions: [{ type: 'output', port: Port.NORMAL }] }] });
    b.inject(udpFrame(2, 1));
    expect(a.sent.length).toBe(1);
  });
});
