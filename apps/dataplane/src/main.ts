#!/usr/bin/env node
/**
 * ioplane-dataplane. Until the data plane's VM configuration lands, running
 * it with no arguments runs the embedded default: a simulated guest in a
 * worker thread drives a checksum device over a split and then a packed
 * virtqueue in shared memory, and the figures are printed.
 */
import { parseArgs } from 'node:util';
import { runDemo } from './demo.js';

const { values } = parseArgs({
  options: {
    chains: { type: 'string', default: '200000' },
    'queue-size': { type: 'string', default: '256' },
    format: { type: 'string', default: 'both' },
    'event-idx': { type: 'boolean', default: true },
    'no-event-idx': { type: 'boolean', default: false },
    indirect: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

if (values.help) {
  console.log(`usage: ioplane-dataplane [--chains N] [--queue-size N] [--format split|packed|both] [--no-event-idx] [--indirect] [--json]

Runs the virtqueue demo: a guest in a worker thread sends checksum requests (a
128-byte payload in two readable segments, a 4-byte writable reply) and this
process, as the device, answers them.`);
  process.exit(0);
}

const chains = Number(values.chains);
const queueSize = Number(values['queue-size']);
if (!Number.isSafeInteger(chains) || chains <= 0) fail(`--chains must be a positive integer, not ${values.chains}`);
if (!Number.isSafeInteger(queueSize) || queueSize <= 0 || queueSize > 32768) fail(`--queue-size must be 1..32768, not ${values['queue-size']}`);
if (!['split', 'packed', 'both'].includes(values.format)) fail(`--format must be split, packed or both, not ${values.format}`);
const formats = values.format === 'both' ? [false, true] : [values.format === 'packed'];
if (formats.includes(false) && (queueSize & (queueSize - 1)) !== 0) fail(`a split queue needs a power-of-two size, not ${queueSize}`);

function fail(msg: string): never {
  console.error(`ioplane-dataplane: ${msg}`);
  process.exit(2);
}

const results = [];
if (!values.json) console.log(`ioplane data plane — virtqueue demo (${chains} chains per format, queue size ${queueSize})`);
for (const packed of formats) {
  const r = await runDemo({ features: { packed, eventIdx: !values['no-event-idx'], indirect: values.indirect, inOrder: false }, queueSize, chains });
  results.push(r);
  if (!values.json) {
    console.log(
      `  ${r.format.padEnd(6)} ${r.chains} chains in ${r.seconds.toFixed(3)} s = ${(r.chainsPerSecond / 1e6).toFixed(2)} M chains/s; ` +
        `checksums wrong: ${r.mismatches}; kicks ${r.kicks} (${((100 * r.kicks) / r.chains).toFixed(2)} %), interrupts ${r.interrupts} (${((100 * r.interrupts) / r.chains).toFixed(2)} %)` +
        (r.error ? `; queue stopped: ${r.error}` : ''),
    );
  }
}
if (values.json) console.log(JSON.stringify(results, null, 2));
const bad = results.some((r) => r.mismatches > 0 || r.error !== undefined || r.chains !== chains);
process.exit(bad ? 1 : 0);
