import { BaseNetBackend, DEFAULT_MTU } from './backend.js';
import { NetBackendError } from './errors.js';

/*
 * Linux TAP through /dev/net/tun (Documentation/networking/tuntap.rst): open the
 * clone device, TUNSETIFF with IFF_TAP | IFF_NO_PI attaches a new TAP interface to
 * the file; every read() returns one Ethernet frame, every write() sends one. The
 * file is non-blocking; readiness comes from poll(2) run on koffi's worker thread
 * (one poll for every TAP of the process, woken through an eventfd), so the event
 * loop never blocks.
 *
 * Why koffi: TUNSETIFF is an ioctl, which Node cannot issue. koffi is a maintained
 * FFI package with prebuilt binaries for Linux x64/arm64 (no compiler at install),
 * and its `.async` calls run a blocking poll(2) off the main thread. A hand-written
 * addon would need node-gyp and a toolchain on every machine.
 */

/** <linux/if_tun.h>: TUNSETIFF = _IOW('T', 202, int). */
const TUNSETIFF = 0x400454ca;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
/** <linux/if.h>: IFNAMSIZ; sizeof(struct ifreq) on 64-bit Linux. */
const IFNAMSIZ = 16;
const IFREQ_SIZE = 40;
/** <asm-generic/fcntl.h> (x86-64, arm64). */
const O_RDWR = 2;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
/** <sys/eventfd.h>. */
const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
/** <poll.h>. */
const POLLIN = 0x1;
const POLLERR = 0x8;
const POLLHUP = 0x10;
const POLLNVAL = 0x20;
const EAGAIN = 11;
const EINTR = 4;
/** Frames read per readiness event before yielding to the event loop. */
const READ_BURST = 256;
/** A read buffer larger than any frame the kernel will hand us (64 KiB TAP max), so nothing is cut. */
const READ_BUFFER = 65536 + 64;

interface Libc {
  open(path: string, flags: number): number;
  ioctl(fd: number, req: number, type: string, arg: Buffer): number;
  read(fd: number, buf: Uint8Array, n: number): number;
  write(fd: number, buf: Uint8Array, n: number): number;
  close(fd: number): number;
  eventfd(init: number, flags: number): number;
  poll: { async(fds: Buffer, n: number, timeout: number, cb: (err: unknown, res: number) => void): void };
  errno(): number;
}

let libc: Libc | undefined;

async function loadLibc(): Promise<Libc> {
  if (libc) return libc;
  if (process.platform !== 'linux') throw new NetBackendError('unsupported', `TAP needs Linux, not ${process.platform}`, 'platform', process.platform);
  interface Koffi {
    load(path: string): { func(decl: string): (...args: unknown[]) => unknown };
    errno(): number;
  }
  let koffi: Koffi;
  try {
    const mod: { default: unknown } = await import('koffi');
    koffi = mod.default as Koffi;
  } catch (e) {
    throw new NetBackendError('unsupported', `koffi (the FFI used for TUNSETIFF) did not load: ${(e as Error).message}`, 'koffi');
  }
  const lib = koffi.load('libc.so.6');
  const open = lib.func('int open(const char *path, int flags, ...)');
  const ioctl = lib.func('int ioctl(int fd, unsigned long req, ...)');
  const read = lib.func('long read(int fd, _Out_ void *buf, unsigned long n)');
  const write = lib.func('long write(int fd, const void *buf, unsigned long n)');
  const close = lib.func('int close(int fd)');
  const eventfd = lib.func('int eventfd(unsigned int init, int flags)');
  const poll = lib.func('int poll(_Inout_ void *fds, unsigned long n, int timeout)');
  libc = {
    open: (p, f) => open(p, f) as number,
    ioctl: (fd, req, t, arg) => ioctl(fd, req, t, arg) as number,
    read: (fd, b, n) => Number(read(fd, b, n)),
    write: (fd, b, n) => Number(write(fd, b, n)),
    close: (fd) => close(fd) as number,
    eventfd: (i, f) => eventfd(i, f) as number,
    poll: poll as unknown as Libc['poll'],
    errno: () => koffi.errno(),
  };
  return libc;
}

const ERRNO_NAMES: Record<number, string> = { 1: 'EPERM', 2: 'ENOENT', 5: 'EIO', 9: 'EBADF', 13: 'EACCES', 16: 'EBUSY', 19: 'ENODEV', 22: 'EINVAL', 24: 'EMFILE' };
function errnoName(e: number): string {
  return ERRNO_NAMES[e] ?? `errno ${e}`;
}

/**
 * One poll(2) for every TAP fd of the process, run on a koffi worker thread; an
 * eventfd wakes it when the set changes or the process is done with it.
 */
class TapPoller {
  private readonly members = new Set<TapBackend>();
  private pollBuf = Buffer.alloc(8);
  private order: TapBackend[] = [];
  private running = false;
  private dirty = true;
  private readonly wakeBuf = Buffer.alloc(8);
  private readonly drainBuf = Buffer.alloc(8);
  constructor(
    private readonly c: Libc,
    private readonly wakeFd: number,
  ) {
    this.wakeBuf.writeBigUInt64LE(1n);
  }

  add(t: TapBackend): void {
    this.members.add(t);
    this.changed();
  }

  /** Removes a member; `then` runs once no pending poll can still be watching its fd. */
  remove(t: TapBackend, then: () => void): void {
    this.members.delete(t);
    if (this.running && this.order.includes(t)) {
      this.afterPoll.push(then);
      this.changed();
    } else {
      then();
      this.changed();
    }
  }

  private afterPoll: (() => void)[] = [];

  /** The set or a member's interest changed: rebuild, and wake a pending poll. */
  changed(): void {
    this.dirty = true;
    if (this.running) this.c.write(this.wakeFd, this.wakeBuf, 8);
    else this.arm();
  }

  private rebuild(): void {
    this.order = [...this.members].filter((t) => t.wantsRead());
    this.pollBuf = Buffer.alloc(8 * (this.order.length + 1));
    this.pollBuf.writeInt32LE(this.wakeFd, 0);
    this.pollBuf.writeInt16LE(POLLIN, 4);
    this.order.forEach((t, i) => {
      this.pollBuf.writeInt32LE(t.fd, 8 * (i + 1));
      this.pollBuf.writeInt16LE(POLLIN, 8 * (i + 1) + 4);
    });
    this.dirty = false;
  }

  private arm(): void {
    if (this.running) return;
    if (this.dirty) this.rebuild();
    if (this.order.length === 0) return; // nothing to wait for: no async call keeps the process alive
    this.running = true;
    const buf = this.pollBuf;
    const order = this.order;
    this.c.poll.async(buf, order.length + 1, -1, (err, res) => {
      this.running = false;
      const after = this.afterPoll;
      this.afterPoll = [];
      if (!err && res > 0) {
        if (buf.readInt16LE(6) & POLLIN) this.c.read(this.wakeFd, this.drainBuf, 8);
        order.forEach((t, i) => {
          const rev = buf.readInt16LE(8 * (i + 1) + 6);
          buf.writeInt16LE(0, 8 * (i + 1) + 6);
          if (rev !== 0 && this.members.has(t)) t.ready(rev);
        });
      }
      buf.writeInt16LE(0, 6);
      for (const f of after) f();
      // EINTR and spurious wake-ups simply re-arm.
      setImmediate(() => this.arm());
    });
  }
}

let poller: TapPoller | undefined;

export interface TapBackendOptions {
  /** Interface name or pattern (`iop%d`, the default, lets the kernel number it). At most 15 bytes. */
  name?: string;
  /** L3 MTU (default 1500). Set the interface's MTU to match with `ip link set <name> mtu <n>`. */
  mtu?: number;
}

/**
 * A Linux TAP interface as a NetBackend: a real Linux network stack is the peer.
 * Needs CAP_NET_ADMIN (root) and /dev/net/tun. The interface exists while the
 * back-end is open; bring it up and address it with iproute2.
 */
export class TapBackend extends BaseNetBackend {
  readonly kind = 'tap';
  private readonly rxBuf = new Uint8Array(READ_BUFFER);

  private constructor(
    private readonly c: Libc,
    /** @internal */
    readonly fd: number,
    /** The interface name the kernel gave. */
    readonly name: string,
    mtu: number,
  ) {
    super(mtu);
    this.setLink(true);
  }

  static async open(options: TapBackendOptions = {}): Promise<TapBackend> {
    const name = options.name ?? 'iop%d';
    if (typeof name !== 'string' || Buffer.byteLength(name) >= IFNAMSIZ || !/^[A-Za-z0-9_.%-]+$/.test(name)) {
      throw new NetBackendError('invalid-config', `interface name ${JSON.stringify(name)} is not 1..15 bytes of [A-Za-z0-9_.%-]`, 'name', name);
    }
    const mtu = options.mtu ?? DEFAULT_MTU;
    const c = await loadLibc();
    const fd = c.open('/dev/net/tun', O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
      const e = c.errno();
      throw new NetBackendError(e === 2 || e === 19 ? 'unsupported' : 'io', `open /dev/net/tun failed: ${errnoName(e)}`, 'open', errnoName(e));
    }
    const ifr = Buffer.alloc(IFREQ_SIZE);
    ifr.write(name, 0, 'latin1');
    ifr.writeInt16LE(IFF_TAP | IFF_NO_PI, IFNAMSIZ);
    if (c.ioctl(fd, TUNSETIFF, 'void *', ifr) < 0) {
      const e = c.errno();
      c.close(fd);
      throw new NetBackendError(e === 1 ? 'unsupported' : 'io', `TUNSETIFF ${name} failed: ${errnoName(e)}${e === 1 ? ' (CAP_NET_ADMIN needed)' : ''}`, 'ioctl', errnoName(e));
    }
    const given = ifr.toString('latin1', 0, IFNAMSIZ).replace(/\0.*$/s, '');
    if (!poller) {
      const wake = c.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (wake < 0) {
        c.close(fd);
        throw new NetBackendError('io', `eventfd failed: ${errnoName(c.errno())}`, 'eventfd', errnoName(c.errno()));
      }
      poller = new TapPoller(c, wake);
    }
    const t = new TapBackend(c, fd, given, mtu);
    poller.add(t);
    return t;
  }

  /** @internal */
  wantsRead(): boolean {
    return !this.closed && !this.paused;
  }

  /** @internal the poller saw `revents` on our fd. */
  ready(revents: number): void {
    if (this.closed) return;
    if (revents & (POLLERR | POLLHUP | POLLNVAL)) this.stats.rxErrors++;
    if (!(revents & POLLIN)) return;
    const c = this.c;
    for (let k = 0; k < READ_BURST && !this.paused && !this.closed; k++) {
      const n = c.read(this.fd, this.rxBuf, READ_BUFFER);
      if (n < 0) {
        const e = c.errno();
        if (e !== EAGAIN && e !== EINTR) this.stats.rxErrors++;
        return;
      }
      if (n === 0) return;
      this.deliver(this.rxBuf.subarray(0, n));
    }
  }

  override pause(): void {
    super.pause();
    poller?.changed();
  }

  protected override onResumed(): void {
    poller?.changed();
  }

  send(frames: readonly Uint8Array[], count = frames.length): number {
    const n = Math.min(count, frames.length);
    const s = this.stats;
    const c = this.c;
    for (let i = 0; i < n; i++) {
      const f = frames[i]!;
      if (!this.admit(f)) continue;
      // One write is one frame (tuntap.rst). EAGAIN means the kernel queue is full:
      // like a NIC's full TX ring, the frame is dropped and counted.
      const w = c.write(this.fd, f, f.length);
      if (w === f.length) {
        s.txPackets++;
        s.txBytes += f.length;
      } else if (w < 0 && c.errno() === EAGAIN) {
        s.txDrops++;
      } else {
        s.txErrors++;
      }
    }
    return n;
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.markClosed();
    // The fd may be watched by the pending poll: close it only once that poll has returned
    // (closing an fd does not wake a poll(2) sleeping on it).
    return new Promise((resolve) => {
      const done = (): void => {
        this.c.close(this.fd);
        resolve();
      };
      if (poller) poller.remove(this, done);
      else done();
    });
  }
}
