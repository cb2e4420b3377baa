import { createSocket, type Socket } from 'node:dgram';
import { isIP } from 'node:net';
import { BaseNetBackend, DEFAULT_MTU } from './backend.js';
import { NetBackendError } from './errors.js';
import { SendPool } from './send-pool.js';

export interface Endpoint {
  address: string;
  port: number;
}

export interface UdpBackendOptions {
  /** Where to bind; port 0 (the default) lets the kernel choose. */
  local: { address: string; port?: number };
  /** Where frames go, one per datagram. */
  remote: Endpoint;
  mtu?: number;
  /** Datagrams in flight before `send` applies back-pressure (default 256). */
  sendSlots?: number;
  /** Accept datagrams from any source, not only `remote` (default false). */
  acceptAnySource?: boolean;
}

export function checkEndpoint(field: string, e: { address: string; port?: number }, portOptional = false): void {
  if (typeof e?.address !== 'string' || isIP(e.address) === 0) {
    throw new NetBackendError('invalid-config', `${field}.address ${JSON.stringify(e?.address)} is not an IP address`, `${field}.address`, e?.address);
  }
  const p = e.port;
  if ((p === undefined && !portOptional) || (p !== undefined && (!Number.isInteger(p) || p < 0 || p > 65535 || (p === 0 && !portOptional)))) {
    throw new NetBackendError('invalid-config', `${field}.port ${String(p)} is not a UDP port`, `${field}.port`, p);
  }
}

export function bindSocket(address: string, port: number): Promise<Socket> {
  const socket = createSocket({ type: isIP(address) === 6 ? 'udp6' : 'udp4', reuseAddr: false });
  return new Promise((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException): void => {
      socket.close();
      reject(new NetBackendError('io', `cannot bind UDP ${address}:${port}: ${e.message}`, 'bind', e.code));
    };
    socket.once('error', onError);
    socket.bind(port, address, () => {
      socket.off('error', onError);
      resolve(socket);
    });
  });
}

/**
 * Frames over UDP, one Ethernet frame per datagram, to one peer (as QEMU's
 * `-netdev dgram`/`socket,udp=`). Datagrams from other sources are dropped and
 * counted, unless `acceptAnySource`.
 */
export class UdpBackend extends BaseNetBackend {
  readonly kind = 'udp';
  private readonly pool: SendPool;
  private sentErrors = 0;

  private constructor(
    private readonly socket: Socket,
    readonly remote: Endpoint,
    mtu: number,
    slots: number,
    private readonly acceptAny: boolean,
  ) {
    super(mtu);
    this.pool = new SendPool(this.maxFrameSize, slots, () => this.freed());
    socket.on('message', (msg, rinfo) => {
      if (!this.acceptAny && (rinfo.port !== this.remote.port || rinfo.address !== this.remote.address)) {
        this.stats.rxDrops++;
        return;
      }
      this.deliver(msg);
    });
    socket.on('error', () => {
      // Asynchronous socket errors (ICMP unreachable on some kernels) are counted, never thrown.
      this.stats.rxErrors++;
    });
    this.setLink(true);
  }

  static async open(options: UdpBackendOptions): Promise<UdpBackend> {
    checkEndpoint('local', options.local, true);
    checkEndpoint('remote', options.remote);
    if (isIP(options.local.address) !== isIP(options.remote.address)) {
      throw new NetBackendError('invalid-config', `local ${options.local.address} and remote ${options.remote.address} are not the same IP version`, 'remote.address', options.remote.address);
    }
    const slots = options.sendSlots ?? 256;
    if (!Number.isInteger(slots) || slots < 1 || slots > 65536) throw new NetBackendError('invalid-config', `sendSlots ${slots} is outside 1..65536`, 'sendSlots', slots);
    const mtu = options.mtu ?? DEFAULT_MTU;
    const socket = await bindSocket(options.local.address, options.local.port ?? 0);
    return new UdpBackend(socket, { ...options.remote }, mtu, slots, options.acceptAnySource ?? false);
  }

  /** The bound address and port. */
  get local(): Endpoint {
    const a = this.socket.address();
    return { address: a.address, port: a.port };
  }

  private freed(): void {
    if (this.pool.errors !== this.sentErrors) {
      this.stats.txErrors += this.pool.errors - this.sentErrors;
      this.sentErrors = this.pool.errors;
    }
    this.notifyWritable();
  }

  protected override canSend(): boolean {
    return this.pool.available > 0;
  }

  send(frames: readonly Uint8Array[], count = frames.length): number {
    const n = Math.min(count, frames.length);
    const s = this.stats;
    let i = 0;
    for (; i < n; i++) {
      const f = frames[i]!;
      if (!this.admit(f)) continue;
      const slot = this.pool.acquire();
      if (slot === undefined) break;
      slot.set(f);
      this.pool.send(this.socket, slot, f.length, this.remote.port, this.remote.address);
      s.txPackets++;
      s.txBytes += f.length;
    }
    return i;
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.markClosed();
    return new Promise((r) => this.socket.close(() => r()));
  }
}
