import type { MessagePort } from 'node:worker_threads';
import type { Doorbell } from '@ioplane/virtqueue';
import type { AccessSize, VirtioTransportTarget } from './device.js';
import { VirtioError } from './errors.js';

/**
 * A device as a guest driver reaches it: the control path asynchronous (a
 * register access may cross threads or a socket), the notification
 * synchronous (a doorbell write).
 */
export interface DriverTransport {
  numQueues(): Promise<number>;
  deviceFeatures(): Promise<bigint>;
  setDriverFeatures(features: bigint): Promise<void>;
  status(): Promise<number>;
  setStatus(value: number): Promise<void>;
  configGeneration(): Promise<number>;
  readConfig(offset: number, size: AccessSize): Promise<number>;
  writeConfig(offset: number, size: AccessSize, value: number): Promise<void>;
  queueMaxSize(q: number): Promise<number>;
  setQueueSize(q: number, size: number): Promise<void>;
  setQueueAddresses(q: number, descAddr: number, driverAddr: number, deviceAddr: number): Promise<void>;
  enableQueue(q: number): Promise<void>;
  /** An available buffer notification for queue `q`. */
  notify(q: number): void;
}

type Op =
  | ['numQueues']
  | ['deviceFeatures']
  | ['setDriverFeatures', bigint]
  | ['status']
  | ['setStatus', number]
  | ['configGeneration']
  | ['readConfig', number, AccessSize]
  | ['writeConfig', number, AccessSize, number]
  | ['queueMaxSize', number]
  | ['setQueueSize', number, number]
  | ['setQueueAddresses', number, number, number, number]
  | ['enableQueue', number]
  | ['notify', number];

/** Executes one control operation on a device (what a transport's register file does). */
export function applyOp(dev: VirtioTransportTarget, op: Op): number | bigint | undefined {
  switch (op[0]) {
    case 'numQueues':
      return dev.numQueues;
    case 'deviceFeatures':
      return BigInt(dev.readDeviceFeatures(0)) | (BigInt(dev.readDeviceFeatures(1)) << 32n);
    case 'setDriverFeatures':
      dev.writeDriverFeatures(0, Number(op[1] & 0xffff_ffffn));
      dev.writeDriverFeatures(1, Number((op[1] >> 32n) & 0xffff_ffffn));
      return undefined;
    case 'status':
      return dev.status;
    case 'setStatus':
      dev.setStatus(op[1]);
      return undefined;
    case 'configGeneration':
      return dev.configGeneration;
    case 'readConfig':
      return dev.readConfig(op[1], op[2]);
    case 'writeConfig':
      dev.writeConfig(op[1], op[2], op[3]);
      return undefined;
    case 'queueMaxSize':
      return dev.queueMaxSize(op[1]);
    case 'setQueueSize':
      dev.setQueueSize(op[1], op[2]);
      return undefined;
    case 'setQueueAddresses':
      dev.setQueueAddresses(op[1], op[2], op[3], op[4]);
      return undefined;
    case 'enableQueue':
      dev.enableQueue(op[1]);
      return undefined;
    case 'notify':
      dev.notify(op[1]);
      return undefined;
  }
}

/** Common shape of both transports: every control call is one `Op`. */
abstract class OpTransport implements DriverTransport {
  protected abstract call(op: Op): Promise<number | bigint | undefined>;
  abstract notify(q: number): void;
  async numQueues(): Promise<number> {
    return Number(await this.call(['numQueues']));
  }
  async deviceFeatures(): Promise<bigint> {
    return BigInt((await this.call(['deviceFeatures'])) ?? 0);
  }
  async setDriverFeatures(f: bigint): Promise<void> {
    await this.call(['setDriverFeatures', f]);
  }
  async status(): Promise<number> {
    return Number(await this.call(['status']));
  }
  async setStatus(v: number): Promise<void> {
    await this.call(['setStatus', v]);
  }
  async configGeneration(): Promise<number> {
    return Number(await this.call(['configGeneration']));
  }
  async readConfig(offset: number, size: AccessSize): Promise<number> {
    return Number(await this.call(['readConfig', offset, size]));
  }
  async writeConfig(offset: number, size: AccessSize, value: number): Promise<void> {
    await this.call(['writeConfig', offset, size, value]);
  }
  async queueMaxSize(q: number): Promise<number> {
    return Number(await this.call(['queueMaxSize', q]));
  }
  async setQueueSize(q: number, size: number): Promise<void> {
    await this.call(['setQueueSize', q, size]);
  }
  async setQueueAddresses(q: number, d: number, dr: number, dv: number): Promise<void> {
    await this.call(['setQueueAddresses', q, d, dr, dv]);
  }
  async enableQueue(q: number): Promise<void> {
    await this.call(['enableQueue', q]);
  }
}

/** The driver and the device in one thread: calls go straight to the device. */
export class DirectTransport extends OpTransport {
  constructor(readonly device: VirtioTransportTarget) {
    super();
  }
  protected call(op: Op): Promise<number | bigint | undefined> {
    return Promise.resolve(applyOp(this.device, op));
  }
  notify(q: number): void {
    this.device.notify(q);
  }
}

interface Request {
  id: number;
  op: Op;
}
interface Reply {
  id: number;
  value?: number | bigint | undefined;
  error?: string;
}

/**
 * The driver side across threads: control operations as messages on a
 * `MessagePort` (answered by `serveTransport` in the device's thread), kicks
 * as `Doorbell`s in shared memory, one per queue.
 */
export class MessagePortTransport extends OpTransport {
  #next = 1;
  readonly #pending = new Map<number, { resolve: (v: number | bigint | undefined) => void; reject: (e: Error) => void; timer: ReturnType<typeof setTimeout> }>();

  constructor(
    readonly port: MessagePort,
    readonly kicks: readonly Doorbell[],
    readonly timeoutMs = 10_000,
  ) {
    super();
    port.on('message', (m: Reply) => {
      const p = this.#pending.get(m.id);
      if (p === undefined) return;
      this.#pending.delete(m.id);
      clearTimeout(p.timer);
      if (m.error !== undefined) p.reject(new VirtioError('transport', m.error, { id: m.id }));
      else p.resolve(m.value);
    });
  }

  protected call(op: Op): Promise<number | bigint | undefined> {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new VirtioError('transport', `control operation ${op[0]} got no answer within ${this.timeoutMs} ms`, { op: op[0] }));
      }, this.timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      this.port.postMessage({ id, op } satisfies Request);
    });
  }

  notify(q: number): void {
    const bell = this.kicks[q];
    if (bell === undefined) throw new VirtioError('invalid-argument', `no doorbell for queue ${q}`, { queue: q });
    bell.ring();
  }

  close(): void {
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(new VirtioError('cancelled', 'transport closed', { id }));
    }
    this.#pending.clear();
    this.port.close();
  }
}

/** Handle of a served device: stop the doorbell loops. */
export interface ServedDevice {
  stop(): Promise<void>;
}

/**
 * The device side across threads: answers `MessagePortTransport` control
 * messages on `port`, and turns each queue's kick `Doorbell` into
 * `device.notify(q)` (a wait on shared memory, like an ioeventfd).
 */
export function serveTransport(device: VirtioTransportTarget, port: MessagePort, kicks: readonly Doorbell[], pollMs = 50): ServedDevice {
  // Kick counts already acted on, per queue (shared with the reset below).
  const seen = kicks.map((bell) => bell.count);
  port.on('message', (m: Request) => {
    let reply: Reply;
    if (m.op[0] === 'setStatus' && m.op[1] === 0) {
      // A reset: kicks rung before it (the driver rang them before sending this message, so
      // they are in the counts now) were for rings the reset throws away. Mark them handled,
      // so a kick loop that wakes late does not deliver them to the reset device.
      for (let q = 0; q < kicks.length; q++) seen[q] = kicks[q]!.count;
    }
    try {
      reply = { id: m.id, value: applyOp(device, m.op) };
    } catch (e) {
      reply = { id: m.id, error: e instanceof Error ? e.message : String(e) };
    }
    port.postMessage(reply);
  });
  let running = true;
  const loops = kicks.map(async (bell, q) => {
    // Read the count before acting on it: a kick that lands while the device
    // processes moves the count past `seen`, so the next wait returns at once.
    while (running) {
      await bell.waitAsync(seen[q]!, pollMs);
      const now = bell.count;
      if (running && now !== seen[q]) {
        seen[q] = now;
        device.notify(q);
      }
    }
  });
  return {
    async stop() {
      running = false;
      // Wake the loops now (a pending Atomics.waitAsync does not keep Node's event loop alive).
      for (const bell of kicks) bell.ring();
      await Promise.all(loops);
      port.close();
    },
  };
}
