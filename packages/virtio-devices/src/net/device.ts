import type { NetBackend } from '@ioplane/net-backends';
import { Layer, PacketInfo, completePartialChecksum, parsePacket, segmentTcp, verifyL4Checksum } from '@ioplane/packet';
import type { DescriptorChain, DeviceQueue, RingFeatures } from '@ioplane/virtqueue';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED, VIRTIO_ID_NET, bit } from '../defs.js';
import { VirtioDevice, type VirtioDeviceOptions } from '../device.js';
import { VirtioError } from '../errors.js';
import {
  NET_CFG_MAC,
  NET_CFG_MAX_VIRTQUEUE_PAIRS,
  NET_CFG_MTU,
  NET_CFG_SIZE,
  NET_CFG_STATUS,
  NET_HDR_SIZE,
  NET_MAC_TABLE_ENTRIES,
  NET_MAX_VLAN,
  VIRTIO_NET_CTRL_ANNOUNCE,
  VIRTIO_NET_CTRL_ANNOUNCE_ACK,
  VIRTIO_NET_CTRL_MAC,
  VIRTIO_NET_CTRL_MAC_ADDR_SET,
  VIRTIO_NET_CTRL_MAC_TABLE_SET,
  VIRTIO_NET_CTRL_MQ,
  VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX,
  VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
  VIRTIO_NET_CTRL_RX,
  VIRTIO_NET_CTRL_RX_ALLMULTI,
  VIRTIO_NET_CTRL_RX_ALLUNI,
  VIRTIO_NET_CTRL_RX_NOBCAST,
  VIRTIO_NET_CTRL_RX_NOMULTI,
  VIRTIO_NET_CTRL_RX_NOUNI,
  VIRTIO_NET_CTRL_RX_PROMISC,
  VIRTIO_NET_CTRL_VLAN,
  VIRTIO_NET_CTRL_VLAN_ADD,
  VIRTIO_NET_CTRL_VLAN_DEL,
  VIRTIO_NET_ERR,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_CTRL_MAC_ADDR,
  VIRTIO_NET_F_CTRL_RX,
  VIRTIO_NET_F_CTRL_RX_EXTRA,
  VIRTIO_NET_F_CTRL_VLAN,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_GUEST_ANNOUNCE,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_ECN,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_GUEST_UFO,
  VIRTIO_NET_F_HOST_ECN,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_HOST_UFO,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6,
  VIRTIO_NET_OK,
  VIRTIO_NET_S_ANNOUNCE,
  VIRTIO_NET_S_LINK_UP,
} from './defs.js';
import { RxFilter } from './filter.js';
import { NetHdr, type TxHdrLimits, validateTxHdr } from './header.js';

export interface VirtioNetOptions extends VirtioDeviceOptions {
  backend: NetBackend;
  /** The MAC address offered in config space (VIRTIO_NET_F_MAC); default 52:54:00:12:34:56. */
  mac?: Uint8Array;
  /** Queue pairs (default 1). More than one offers VIRTIO_NET_F_MQ (§5.1.5). */
  queuePairs?: number;
  /** Largest queue size the driver may choose (default 256). */
  queueSize?: number;
  /** Ring features offered (default: indirect, event index, packed). IN_ORDER is never offered. */
  ring?: Partial<Omit<RingFeatures, 'inOrder'>>;
  /** Offer CSUM and HOST_TSO4/6 (TX offloads done in software here; default true). */
  txOffloads?: boolean;
  /** Offer GUEST_CSUM: received TCP/UDP checksums are verified and marked DATA_VALID (default true). */
  guestCsum?: boolean;
  /** Offer MRG_RXBUF (default true). */
  mergeable?: boolean;
  /** Offer the control virtqueue and its classes (default true). */
  ctrl?: boolean;
}

/** Counters of a virtio-net device (besides the framework's `stats`). */
export interface NetDeviceStats {
  txPackets: number;
  txBytes: number;
  /** TX chains dropped as malformed (bad shape, bad header, bad checksum offsets, bad GSO frame), chain returned. */
  txMalformed: number;
  /** Frames of NEEDS_CSUM packets whose checksum the device completed. */
  txCsumCompleted: number;
  /** TSO packets segmented in software, and the segments sent. */
  txGsoPackets: number;
  txGsoSegments: number;
  /** Frames sent zero-copy (a view of guest memory handed to the back-end). */
  txZeroCopy: number;
  /** Times the back-end refused frames (back-pressure); the queue waited for `writable()`. */
  txBackpressure: number;
  rxPackets: number;
  rxBytes: number;
  /** Frames dropped because the target receive queue had no (or too small) buffers posted. */
  rxNoBuffers: number;
  /** Frames the receive filter refused (MAC table, RX modes, VLAN filter). */
  rxFiltered: number;
  /** Frames dropped because the device was not running. */
  rxNotRunning: number;
  /** RX chains the driver posted malformed (device-readable parts, header not fitting), returned unused. */
  rxMalformed: number;
  /** Frames marked DATA_VALID after checksum verification. */
  rxCsumValid: number;
  ctrlCommands: number;
  /** Control commands answered VIRTIO_NET_ERR. */
  ctrlErrors: number;
}

const DEFAULT_MAC = new Uint8Array([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const DEFAULT_RING: Omit<RingFeatures, 'inOrder'> = { indirect: true, eventIdx: true, packed: true };
/** TX chains taken per batch handed to the back-end. */
const TX_BATCH = 64;
/** Frames per batch (GSO packets become many). */
const TX_FRAMES = 1024;
/** Most segments one TSO packet may become (a guard against a hostile gso_size). */
const MAX_GSO_SEGMENTS = 256;
/** Largest TSO packet: 64 KiB of IP plus an Ethernet header with two tags. */
const MAX_GSO_FRAME = 65535 + 22;
/** Most bytes the segments of one TSO packet may take (payload plus each segment's copy of the headers). */
const MAX_GSO_OUTPUT = MAX_GSO_FRAME + MAX_GSO_SEGMENTS * 256;
/** Staging room kept free before taking a chain: its frame copied, then its segments. */
const TX_RESERVE = MAX_GSO_FRAME + MAX_GSO_OUTPUT;
const TX_STAGING = 4 * TX_RESERVE;
const CTRL_MAX = 2 + 8 + 2 * NET_MAC_TABLE_ENTRIES * 6 + 1024;
/** Flows remembered for automatic receive steering (§5.1.6.5.6.1). */
const STEER_SLOTS = 1024;

interface TxState {
  q: number;
  dq: DeviceQueue;
  chains: DescriptorChain[];
  nChains: number;
  frames: Uint8Array[];
  nFrames: number;
  staging: Uint8Array;
  stagingUsed: number;
  blocked: boolean;
  processing: boolean;
  epoch: number;
  resume: () => void;
}

interface RxState {
  q: number;
  dq: DeviceQueue;
  /** Popped chains: [0, held) are taken from the ring but not used yet (kept for the next frame). */
  pool: DescriptorChain[];
  held: number;
  dirty: boolean;
}

/**
 * virtio-net (VirtIO 1.2 §5.1) in front of any `NetBackend`: TX and RX
 * queue pairs (MQ with automatic receive steering), mergeable receive
 * buffers, TX checksum completion and TCP segmentation in software, the
 * control virtqueue (RX modes, MAC table, MAC address, VLAN filter,
 * announce, queue pairs) with the receive filter applied, and link status.
 *
 * Guest errors never throw: a malformed TX chain or header is dropped,
 * counted in `netStats.txMalformed` and its chain returned; a frame for a
 * receive queue with no buffers posted is dropped and counted, and never
 * holds up the other queues.
 */
export class VirtioNetDevice extends VirtioDevice {
  readonly backend: NetBackend;
  readonly maxPairs: number;
  readonly filter = new RxFilter();
  readonly netStats: NetDeviceStats = {
    txPackets: 0, txBytes: 0, txMalformed: 0, txCsumCompleted: 0, txGsoPackets: 0, txGsoSegments: 0, txZeroCopy: 0, txBackpressure: 0,
    rxPackets: 0, rxBytes: 0, rxNoBuffers: 0, rxFiltered: 0, rxNotRunning: 0, rxMalformed: 0, rxCsumValid: 0, ctrlCommands: 0, ctrlErrors: 0,
  };
  #pairs = 1;
  #ctrlQueue = -1;
  #tx: (TxState | undefined)[] = [];
  #rx: (RxState | undefined)[] = [];
  #mergeable = false;
  #guestCsum = false;
  #limits: TxHdrLimits;
  readonly #hdr = new NetHdr();
  readonly #hdrBytes = new Uint8Array(NET_HDR_SIZE);
  readonly #txInfo = new PacketInfo();
  readonly #rxInfo = new PacketInfo();
  readonly #segOut = new Uint8Array(MAX_GSO_FRAME);
  readonly #ctrlBuf = new Uint8Array(CTRL_MAX);
  readonly #ack = new Uint8Array(1);
  readonly #steer = new Int16Array(STEER_SLOTS);
  #ctrlChain: DescriptorChain | undefined;
  #gsoTarget: TxState | undefined;
  #publishScheduled = false;
  readonly #publish = (): void => this.publishAll();
  readonly #onFrame = (f: Uint8Array): void => this.receive(f);
  readonly #emitSegment = (seg: Uint8Array, len: number): void => this.stageSegment(seg, len);
  readonly #offLink: () => void;

  constructor(options: VirtioNetOptions) {
    const pairs = options.queuePairs ?? 1;
    if (!Number.isInteger(pairs) || pairs < 1 || pairs > VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX) {
      throw new VirtioError('invalid-argument', `queue pairs ${pairs} is outside 1..${VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX} (§5.1.4.1)`, { queuePairs: pairs });
    }
    const mac = options.mac ?? DEFAULT_MAC;
    if (mac.length !== 6) throw new VirtioError('invalid-argument', `a MAC address has 6 bytes, not ${mac.length}`, { mac: mac.length });
    if ((mac[0]! & 1) !== 0) throw new VirtioError('invalid-argument', 'the device MAC must be unicast (I/G bit clear)', { mac: Array.from(mac) });
    const b = options.backend;
    if (b.mtu > 0xffff) throw new VirtioError('invalid-argument', `back-end MTU ${b.mtu} does not fit config space's le16 mtu`, { mtu: b.mtu });
    const ring = { ...DEFAULT_RING, ...options.ring };
    const ctrl = options.ctrl ?? true;
    let f = bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS) | bit(VIRTIO_NET_F_MTU);
    if (options.txOffloads ?? true) f |= bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6);
    if (options.guestCsum ?? true) f |= bit(VIRTIO_NET_F_GUEST_CSUM);
    if (options.mergeable ?? true) f |= bit(VIRTIO_NET_F_MRG_RXBUF);
    if (ctrl) {
      f |= bit(VIRTIO_NET_F_CTRL_VQ) | bit(VIRTIO_NET_F_CTRL_RX) | bit(VIRTIO_NET_F_CTRL_RX_EXTRA) | bit(VIRTIO_NET_F_CTRL_VLAN);
      f |= bit(VIRTIO_NET_F_CTRL_MAC_ADDR) | bit(VIRTIO_NET_F_GUEST_ANNOUNCE);
      if (pairs > 1) f |= bit(VIRTIO_NET_F_MQ);
    } else if (pairs > 1) {
      throw new VirtioError('invalid-argument', 'more than one queue pair needs the control virtqueue (VIRTIO_NET_F_MQ requires CTRL_VQ, §5.1.3.1)', { queuePairs: pairs });
    }
    if (ring.indirect) f |= bit(VIRTIO_F_INDIRECT_DESC);
    if (ring.eventIdx) f |= bit(VIRTIO_F_EVENT_IDX);
    if (ring.packed) f |= bit(VIRTIO_F_RING_PACKED);
    // §5.1.2: receiveq1..N, transmitq1..N, then controlq.
    super(VIRTIO_ID_NET, f, 2 * pairs + (ctrl ? 1 : 0), options.queueSize ?? 256, NET_CFG_SIZE, options);
    this.backend = b;
    this.maxPairs = pairs;
    this.#limits = { features: 0n, maxFrame: b.maxFrameSize, maxGsoFrame: MAX_GSO_FRAME };
    this.filter.mac.set(mac);
    // struct virtio_net_config at the offsets of §5.1.4.
    this.config.set(mac, NET_CFG_MAC);
    this.configView.setUint16(NET_CFG_STATUS, b.linkUp ? VIRTIO_NET_S_LINK_UP : 0, true);
    this.configView.setUint16(NET_CFG_MAX_VIRTQUEUE_PAIRS, pairs, true);
    this.configView.setUint16(NET_CFG_MTU, b.mtu, true);
    this.#offLink = b.onLinkChange((up) => this.linkChanged(up));
  }

  /** Queue pairs in use (VQ_PAIRS_SET, §5.1.6.5.5). */
  get queuePairs(): number {
    return this.#pairs;
  }

  /** Index of the control virtqueue for the negotiated features, or -1. */
  get controlQueue(): number {
    return this.#ctrlQueue;
  }

  get mac(): Uint8Array {
    return this.filter.mac;
  }

  /** Stops listening to the back-end (does not close it). */
  detach(): void {
    this.#offLink();
    this.backend.onReceive(null);
  }

  /**
   * Asks the driver to announce itself (after a migration): sets
   * VIRTIO_NET_S_ANNOUNCE and sends a configuration change notification
   * (§5.1.6.5.4). Returns false when GUEST_ANNOUNCE was not negotiated.
   */
  announce(): boolean {
    if (!this.running || !this.hasFeature(VIRTIO_NET_F_GUEST_ANNOUNCE)) return false;
    this.setStatusBits(this.configView.getUint16(NET_CFG_STATUS, true) | VIRTIO_NET_S_ANNOUNCE);
    return true;
  }

  private linkChanged(up: boolean): void {
    const s = this.configView.getUint16(NET_CFG_STATUS, true);
    this.setStatusBits(up ? s | VIRTIO_NET_S_LINK_UP : s & ~VIRTIO_NET_S_LINK_UP);
  }

  private setStatusBits(s: number): void {
    if (s === this.configView.getUint16(NET_CFG_STATUS, true)) return;
    this.configView.setUint16(NET_CFG_STATUS, s, true);
    this.configChanged();
  }

  protected override validateFeatures(f: bigint): string | undefined {
    const h = (n: number): boolean => (f & bit(n)) !== 0n;
    // §5.1.3.1 feature bit requirements.
    if ((h(VIRTIO_NET_F_GUEST_TSO4) || h(VIRTIO_NET_F_GUEST_TSO6) || h(VIRTIO_NET_F_GUEST_UFO)) && !h(VIRTIO_NET_F_GUEST_CSUM)) return 'GUEST_TSO/UFO require GUEST_CSUM (§5.1.3.1)';
    if (h(VIRTIO_NET_F_GUEST_ECN) && !(h(VIRTIO_NET_F_GUEST_TSO4) || h(VIRTIO_NET_F_GUEST_TSO6))) return 'GUEST_ECN requires GUEST_TSO4 or GUEST_TSO6 (§5.1.3.1)';
    if ((h(VIRTIO_NET_F_HOST_TSO4) || h(VIRTIO_NET_F_HOST_TSO6) || h(VIRTIO_NET_F_HOST_UFO)) && !h(VIRTIO_NET_F_CSUM)) return 'HOST_TSO/UFO require CSUM (§5.1.3.1)';
    if (h(VIRTIO_NET_F_HOST_ECN) && !(h(VIRTIO_NET_F_HOST_TSO4) || h(VIRTIO_NET_F_HOST_TSO6))) return 'HOST_ECN requires HOST_TSO4 or HOST_TSO6 (§5.1.3.1)';
    for (const n of [VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VLAN, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_MQ, VIRTIO_NET_F_CTRL_MAC_ADDR]) {
      if (h(n) && !h(VIRTIO_NET_F_CTRL_VQ)) return `feature ${n} requires CTRL_VQ (§5.1.3.1)`;
    }
    if (h(VIRTIO_NET_F_CTRL_RX_EXTRA) && !h(VIRTIO_NET_F_CTRL_RX)) return 'CTRL_RX_EXTRA requires CTRL_RX (§5.1.3.1)';
    return undefined;
  }

  protected override activate(): void {
    const features = this.driverFeatures;
    this.#limits = { features, maxFrame: this.backend.maxFrameSize, maxGsoFrame: MAX_GSO_FRAME };
    this.#mergeable = this.hasFeature(VIRTIO_NET_F_MRG_RXBUF);
    this.#guestCsum = this.hasFeature(VIRTIO_NET_F_GUEST_CSUM);
    const mq = this.hasFeature(VIRTIO_NET_F_MQ);
    const ctrl = this.hasFeature(VIRTIO_NET_F_CTRL_VQ);
    // §5.1.2: the control queue is 2N with MQ, else 2; §5.1.6.5.5: one pair until VQ_PAIRS_SET.
    this.#ctrlQueue = ctrl ? (mq ? 2 * this.maxPairs : 2) : -1;
    this.#pairs = 1;
    const usable = mq ? this.maxPairs : 1;
    this.filter.reset();
    this.filter.mac.set(this.config.subarray(NET_CFG_MAC, NET_CFG_MAC + 6));
    // Without CTRL_RX the device is promiscuous (QEMU's reset state, which the driver cannot change);
    // with CTRL_VLAN the VLAN table starts empty: tagged frames pass once their VID is added.
    this.filter.vlanFiltering = this.hasFeature(VIRTIO_NET_F_CTRL_VLAN);
    this.#steer.fill(0);
    this.#tx = [];
    this.#rx = [];
    for (let p = 0; p < usable; p++) {
      const rq = this.queues[2 * p];
      const tq = this.queues[2 * p + 1];
      if (rq !== undefined) this.#rx[p] = { q: 2 * p, dq: rq, pool: Array.from({ length: rq.size }, () => rq.createChain()), held: 0, dirty: false };
      if (tq !== undefined) {
        const st: TxState = {
          q: 2 * p + 1, dq: tq, chains: Array.from({ length: TX_BATCH }, () => tq.createChain()), nChains: 0,
          frames: new Array<Uint8Array>(TX_FRAMES), nFrames: 0, staging: new Uint8Array(TX_STAGING), stagingUsed: 0,
          blocked: false, processing: false, epoch: this.epoch, resume: () => undefined,
        };
        st.resume = () => {
          st.blocked = false;
          if (st.epoch === this.epoch && this.running) this.processTx(st);
        };
        this.#tx[p] = st;
      }
    }
    const cq = this.#ctrlQueue >= 0 ? this.queues[this.#ctrlQueue] : undefined;
    this.#ctrlChain = cq?.createChain();
    const s = this.configView.getUint16(NET_CFG_STATUS, true);
    this.configView.setUint16(NET_CFG_STATUS, (s & ~VIRTIO_NET_S_ANNOUNCE & ~VIRTIO_NET_S_LINK_UP) | (this.backend.linkUp ? VIRTIO_NET_S_LINK_UP : 0), true);
    this.backend.onReceive(this.#onFrame);
  }

  protected override quiesce(): Promise<void> | undefined {
    // The back-end never keeps a frame after `send` returns, and receive is synchronous:
    // nothing touches guest memory once the queues are forgotten.
    this.backend.onReceive(null);
    this.#tx = [];
    this.#rx = [];
    this.#ctrlQueue = -1;
    this.#ctrlChain = undefined;
    this.#pairs = 1;
    this.filter.reset();
    return undefined;
  }

  protected override processQueue(q: number): void {
    if (q === this.#ctrlQueue) {
      this.processCtrl(q);
      return;
    }
    if ((q & 1) === 1) {
      const st = this.#tx[q >> 1];
      if (st !== undefined) this.processTx(st);
    }
    // An RX kick means buffers were posted: frames arrive from the back-end and use them then.
  }

  // ── Transmit (§5.1.6.2) ──

  private processTx(st: TxState): void {
    if (st.processing || st.blocked) return;
    st.processing = true;
    const dq = st.dq;
    try {
      dq.disableNotifications();
      for (;;) {
        while (st.nChains < TX_BATCH && st.nFrames + MAX_GSO_SEGMENTS <= TX_FRAMES && st.staging.length - st.stagingUsed >= TX_RESERVE) {
          const chain = st.chains[st.nChains]!;
          let got: boolean;
          try {
            got = dq.pop(chain);
          } catch (e) {
            this.queueBroken(st.q, e);
            return;
          }
          if (!got) break;
          st.nChains++;
          this.txChain(st, chain);
        }
        if (st.nChains === 0) {
          // §2.7.10 / §2.8.21: re-enable, then re-check for buffers added meanwhile.
          if (!dq.enableNotifications()) return;
          dq.disableNotifications();
          continue;
        }
        if (!this.flushTx(st)) return;
      }
    } finally {
      st.processing = false;
    }
  }

  /** Sends the batch's frames; returns their chains once all are taken. False: the back-end pushed back. */
  private flushTx(st: TxState): boolean {
    if (st.nFrames > 0) {
      const k = this.backend.send(st.frames, st.nFrames);
      if (k < st.nFrames) {
        // Keep the rest (and every chain: zero-copy frames still point into them) until the back-end drains.
        const f = st.frames;
        for (let i = k; i < st.nFrames; i++) f[i - k] = f[i]!;
        st.nFrames -= k;
        this.netStats.txBackpressure++;
        st.blocked = true;
        void this.backend.writable().then(st.resume);
        return false;
      }
      st.nFrames = 0;
    }
    for (let i = 0; i < st.nChains; i++) st.dq.pushUsed(st.chains[i]!, 0);
    st.nChains = 0;
    st.stagingUsed = 0;
    st.dq.publishUsed();
    if (st.dq.needsInterrupt()) this.raiseQueueInterrupt(st.q);
    return true;
  }

  private txMalformed(st: TxState, why: string): void {
    this.netStats.txMalformed++;
    if (this.listensForGuestErrors) this.guestError('bad-request', `virtio-net TX on queue ${st.q}: ${why}; packet dropped`, { queue: st.q, error: why });
    else this.stats.guestErrors++;
  }

  /** One transmitted chain: header, validation, then zero-copy, copy + checksum, or segmentation. */
  private txChain(st: TxState, chain: DescriptorChain): void {
    // §5.1.6.2: a TX buffer is the header and the packet, all device-readable.
    if (chain.count !== chain.readableCount) return this.txMalformed(st, 'device-writable descriptor in a TX chain');
    if (chain.readableBytes < NET_HDR_SIZE) return this.txMalformed(st, `chain of ${chain.readableBytes} bytes is shorter than the 12-byte header`);
    const mem = this.mem;
    const hdr = this.#hdr;
    const len = chain.readableBytes - NET_HDR_SIZE;
    try {
      chain.readInto(mem, 0, this.#hdrBytes);
    } catch {
      return this.txMalformed(st, 'header not readable');
    }
    hdr.decode(this.#hdrBytes);
    const bad = validateTxHdr(hdr, len, this.#limits);
    if (bad !== undefined) return this.txMalformed(st, bad);
    let frame: Uint8Array | undefined;
    try {
      if ((hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) === 0 && hdr.gsoType === VIRTIO_NET_HDR_GSO_NONE) {
        // Zero-copy when the packet is one contiguous piece of guest memory.
        let skip = NET_HDR_SIZE;
        let i = 0;
        while (i < chain.count && chain.lens[i]! <= skip) skip -= chain.lens[i++]!;
        if (i < chain.count && chain.lens[i]! - skip >= len) frame = mem.tryView(chain.addrs[i]! + skip, len, 'read');
        if (frame !== undefined) this.netStats.txZeroCopy++;
      }
      if (frame === undefined) {
        frame = st.staging.subarray(st.stagingUsed, st.stagingUsed + len);
        chain.readInto(mem, NET_HDR_SIZE, frame);
        st.stagingUsed += len;
      }
    } catch {
      return this.txMalformed(st, 'packet not readable');
    }
    const gso = hdr.gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
    if (gso === VIRTIO_NET_HDR_GSO_TCPV4 || gso === VIRTIO_NET_HDR_GSO_TCPV6) {
      // The back-end cannot take TSO frames: segment in software (segmentTcp fills every checksum).
      const info = parsePacket(frame, this.#txInfo, len, 0);
      if (info.ipVersion !== (gso === VIRTIO_NET_HDR_GSO_TCPV4 ? 4 : 6) || (info.layers & Layer.TCP) === 0) return this.txMalformed(st, 'gso_type does not match the packet');
      const payload = info.ipEnd - info.payloadOffset;
      const count = Math.max(1, Math.ceil(payload / hdr.gsoSize));
      if (count > MAX_GSO_SEGMENTS) return this.txMalformed(st, `gso_size ${hdr.gsoSize} makes more than ${MAX_GSO_SEGMENTS} segments`);
      // Bounded output: the headers (IPv6 extension headers can be long) are copied into every segment.
      if (payload + count * info.payloadOffset > MAX_GSO_OUTPUT) return this.txMalformed(st, `${count} segments of ${info.payloadOffset} header bytes each exceed ${MAX_GSO_OUTPUT} bytes`);
      this.#gsoTarget = st;
      let n: number;
      try {
        n = segmentTcp(frame, hdr.gsoSize, this.#segOut, this.#emitSegment, this.#txInfo, len);
      } catch {
        n = -1;
      } finally {
        this.#gsoTarget = undefined;
      }
      if (n < 0) return this.txMalformed(st, 'TSO packet is not a whole, unfragmented TCP segment');
      this.netStats.txGsoPackets++;
      this.netStats.txGsoSegments += n;
      return;
    }
    if ((hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0) {
      // §5.1.6.2: sum from csum_start to the end, store at csum_start + csum_offset.
      if (!completePartialChecksum(frame, hdr.csumStart, hdr.csumOffset, len)) return this.txMalformed(st, 'csum_start + csum_offset + 2 past the frame');
      this.netStats.txCsumCompleted++;
    }
    this.addTxFrame(st, frame);
  }

  private stageSegment(seg: Uint8Array, len: number): void {
    const st = this.#gsoTarget!;
    const at = st.stagingUsed;
    st.staging.set(seg.subarray(0, len), at);
    st.stagingUsed += len;
    this.addTxFrame(st, st.staging.subarray(at, at + len));
  }

  private addTxFrame(st: TxState, frame: Uint8Array): void {
    st.frames[st.nFrames++] = frame;
    this.netStats.txPackets++;
    this.netStats.txBytes += frame.length;
    if (this.#pairs > 1) this.learnFlow(frame, st.q >> 1);
  }

  // ── Receive steering (§5.1.6.5.6.1): a flow's packets go to the receiveq of the transmitq it last used ──

  private flowSlot(frame: Uint8Array): number {
    const info = parsePacket(frame, this.#rxInfo, frame.length, 0);
    let h = info.etherType;
    if (info.ipVersion === 4) {
      const l3 = info.l3Offset;
      for (let i = 0; i < 4; i++) h = Math.imul(h ^ (frame[l3 + 12 + i]! ^ frame[l3 + 16 + i]!), 0x01000193);
    } else if (info.ipVersion === 6) {
      const l3 = info.l3Offset;
      for (let i = 0; i < 16; i++) h = Math.imul(h ^ (frame[l3 + 8 + i]! ^ frame[l3 + 24 + i]!), 0x01000193);
    } else return -1;
    if (info.l4Offset >= 0 && (info.layers & (Layer.TCP | Layer.UDP)) !== 0) {
      const l4 = info.l4Offset;
      h = Math.imul(h ^ ((frame[l4]! ^ frame[l4 + 2]!) << 8) ^ (frame[l4 + 1]! ^ frame[l4 + 3]!), 0x01000193);
    }
    // Symmetric in source and destination: the reply flow maps to the same slot.
    return ((h ^ (h >>> 15)) >>> 0) % STEER_SLOTS;
  }

  private learnFlow(frame: Uint8Array, pair: number): void {
    const s = this.flowSlot(frame);
    if (s >= 0) this.#steer[s] = pair + 1;
  }

  private rxPair(frame: Uint8Array): number {
    const s = this.flowSlot(frame);
    if (s < 0) return 0;
    const p = this.#steer[s]! - 1;
    return p >= 0 && p < this.#pairs ? p : s % this.#pairs;
  }

  // ── Receive (§5.1.6.3, §5.1.6.4) ──

  private receive(frame: Uint8Array): void {
    const ns = this.netStats;
    if (!this.running) {
      ns.rxNotRunning++;
      return;
    }
    if (!this.filter.accepts(frame)) {
      ns.rxFiltered++;
      return;
    }
    const st = this.#rx[this.#pairs > 1 ? this.rxPair(frame) : 0];
    if (st === undefined) {
      ns.rxNoBuffers++;
      return;
    }
    const hdr = this.#hdr.clear();
    if (this.#guestCsum) {
      // RX checksum offload: a verified TCP/UDP checksum is reported as DATA_VALID (§5.1.6.4).
      const info = parsePacket(frame, this.#rxInfo, frame.length, 0);
      if ((info.layers & (Layer.TCP | Layer.UDP)) !== 0 && info.anomalies === 0 && info.fragment === 0 && verifyL4Checksum(frame, info)) {
        hdr.flags = VIRTIO_NET_HDR_F_DATA_VALID;
        ns.rxCsumValid++;
      }
    }
    const total = NET_HDR_SIZE + frame.length;
    const dq = st.dq;
    const pool = st.pool;
    // Gather enough chains: one without MRG_RXBUF, as many as needed with it (§5.1.6.3.2).
    let n = 0;
    let room = 0;
    while (room < total) {
      if (n > 0 && !this.#mergeable) {
        // Without MRG_RXBUF one buffer must hold the packet: this one is too small (kept for a smaller frame).
        ns.rxNoBuffers++;
        return;
      }
      if (n === pool.length) {
        ns.rxNoBuffers++;
        st.held = n;
        return;
      }
      const c = pool[n]!;
      if (n >= st.held) {
        let got: boolean;
        try {
          got = dq.pop(c);
        } catch (e) {
          this.queueBroken(st.q, e);
          return;
        }
        if (!got) {
          st.held = n;
          ns.rxNoBuffers++;
          return;
        }
        // An RX buffer is device-writable only, at least a header long (§5.1.6.3.1).
        if (c.readableCount !== 0 || c.writableBytes < NET_HDR_SIZE) {
          ns.rxMalformed++;
          this.stats.guestErrors++;
          dq.pushUsed(c, 0);
          st.dirty = true;
          this.schedulePublish();
          continue;
        }
        st.held = n + 1;
      }
      room += c.writableBytes;
      n++;
    }
    hdr.numBuffers = n;
    hdr.encode(this.#hdrBytes);
    const mem = this.mem;
    let off = 0;
    try {
      for (let i = 0; i < n; i++) {
        const c = pool[i]!;
        let w = 0;
        if (i === 0) w = NET_HDR_SIZE;
        const take = Math.min(c.writableBytes - w, frame.length - off);
        // One writable descriptor (what drivers post): write through a view of it, else scatter.
        const v = c.count === 1 ? mem.tryView(c.addrs[0]!, w + take, 'write') : undefined;
        if (v !== undefined) {
          if (w > 0) v.set(this.#hdrBytes, 0);
          if (take > 0) v.set(take === frame.length ? frame : frame.subarray(off, off + take), w);
        } else {
          if (w > 0) c.writeFrom(mem, 0, this.#hdrBytes);
          if (take > 0) c.writeFrom(mem, w, take === frame.length ? frame : frame.subarray(off, off + take));
        }
        off += take;
        dq.pushUsed(c, w + take);
      }
    } catch (e) {
      this.needsReset(new VirtioError('queue-broken', `queue ${st.q}: a receive buffer is not writable`, { queue: st.q }, { cause: e }));
      return;
    }
    // Chains popped beyond the ones used stay held, moved to the front (no allocation).
    const held = st.held;
    for (let j = n; j < held; j++) {
      const t = pool[j - n]!;
      pool[j - n] = pool[j]!;
      pool[j] = t;
    }
    st.held = held - n;
    ns.rxPackets++;
    ns.rxBytes += frame.length;
    st.dirty = true;
    this.schedulePublish();
  }

  private schedulePublish(): void {
    if (!this.#publishScheduled) {
      this.#publishScheduled = true;
      queueMicrotask(this.#publish);
    }
  }

  /** Every frame of this turn becomes visible at once: the driver never sees part of a merged packet. */
  private publishAll(): void {
    this.#publishScheduled = false;
    const rx = this.#rx;
    for (let p = 0; p < rx.length; p++) {
      const st = rx[p];
      if (st === undefined || !st.dirty) continue;
      st.dirty = false;
      st.dq.publishUsed();
      if (st.dq.needsInterrupt()) this.raiseQueueInterrupt(st.q);
    }
  }

  // ── Control virtqueue (§5.1.6.5) ──

  private processCtrl(q: number): void {
    const dq = this.queues[q];
    const chain = this.#ctrlChain;
    if (dq === undefined || chain === undefined) return;
    for (let budget = dq.size; budget > 0; budget--) {
      let got: boolean;
      try {
        got = dq.pop(chain);
      } catch (e) {
        this.queueBroken(q, e);
        return;
      }
      if (!got) {
        if (dq.enableNotifications()) continue;
        break;
      }
      this.netStats.ctrlCommands++;
      // struct virtio_net_ctrl: class, command, data (device-readable); ack (device-writable, 1 byte).
      let ack: number = VIRTIO_NET_ERR;
      let why: string;
      if (chain.readableBytes < 2 || chain.writableBytes < 1) why = `command of ${chain.readableBytes} readable / ${chain.writableBytes} writable bytes (needs ≥ 2 and ≥ 1)`;
      else if (chain.readableBytes > CTRL_MAX) why = `command of ${chain.readableBytes} bytes is longer than ${CTRL_MAX}`;
      else {
        const buf = this.#ctrlBuf.subarray(0, chain.readableBytes);
        try {
          chain.readInto(this.mem, 0, buf);
          why = this.command(buf[0]!, buf[1]!, buf.subarray(2));
        } catch {
          why = 'command not readable';
        }
        if (why === '') ack = VIRTIO_NET_OK;
      }
      let len = 0;
      if (chain.writableBytes >= 1) {
        this.#ack[0] = ack;
        try {
          len = chain.writeFrom(this.mem, 0, this.#ack);
        } catch {
          len = 0;
        }
      }
      if (ack !== VIRTIO_NET_OK) {
        this.netStats.ctrlErrors++;
        this.guestError('bad-request', `virtio-net control command answered VIRTIO_NET_ERR: ${why}`, { error: why });
      }
      dq.pushUsed(chain, len);
      dq.publishUsed();
      if (dq.needsInterrupt()) this.raiseQueueInterrupt(q);
      if (!this.running) return;
    }
  }

  /** Runs one control command; '' for OK, else why it is answered ERR. */
  private command(cls: number, cmd: number, data: Uint8Array): string {
    const f = this.filter;
    const has = (n: number): boolean => this.hasFeature(n);
    const le16 = (o: number): number => data[o]! | (data[o + 1]! << 8);
    const le32 = (o: number): number => (data[o]! | (data[o + 1]! << 8) | (data[o + 2]! << 16) | (data[o + 3]! << 24)) >>> 0;
    switch (cls) {
      case VIRTIO_NET_CTRL_RX: {
        // §5.1.6.5.1: one byte, zero disables, non-zero enables.
        if (!has(VIRTIO_NET_F_CTRL_RX)) return 'CTRL_RX not negotiated';
        if (cmd > VIRTIO_NET_CTRL_RX_ALLMULTI && !has(VIRTIO_NET_F_CTRL_RX_EXTRA)) return `RX command ${cmd} needs CTRL_RX_EXTRA`;
        if (data.length !== 1) return `RX command with ${data.length} data bytes (needs 1)`;
        const on = data[0] !== 0;
        switch (cmd) {
          case VIRTIO_NET_CTRL_RX_PROMISC: f.promisc = on; return '';
          case VIRTIO_NET_CTRL_RX_ALLMULTI: f.allMulti = on; return '';
          case VIRTIO_NET_CTRL_RX_ALLUNI: f.allUni = on; return '';
          case VIRTIO_NET_CTRL_RX_NOMULTI: f.noMulti = on; return '';
          case VIRTIO_NET_CTRL_RX_NOUNI: f.noUni = on; return '';
          case VIRTIO_NET_CTRL_RX_NOBCAST: f.noBcast = on; return '';
          default: return `unknown RX command ${cmd}`;
        }
      }
      case VIRTIO_NET_CTRL_MAC: {
        if (cmd === VIRTIO_NET_CTRL_MAC_TABLE_SET) {
          // §5.1.6.5.2: two struct virtio_net_ctrl_mac { le32 entries; u8 macs[entries][6]; }: unicast, then multicast.
          if (!has(VIRTIO_NET_F_CTRL_RX)) return 'MAC_TABLE_SET needs CTRL_RX';
          if (data.length < 8) return 'MAC table shorter than two entry counts';
          const n1 = le32(0);
          if (n1 > (data.length - 8) / 6) return `unicast table of ${n1} entries does not fit ${data.length} bytes`;
          const at2 = 4 + n1 * 6;
          const n2 = le32(at2);
          if (at2 + 4 + n2 * 6 !== data.length) return `multicast table of ${n2} entries does not match ${data.length} bytes`;
          f.uniCount = f.multiCount = 0;
          f.uniOverflow = n1 > NET_MAC_TABLE_ENTRIES;
          if (!f.uniOverflow) {
            f.table.set(data.subarray(4, 4 + n1 * 6), 0);
            f.uniCount = n1;
          }
          f.multiOverflow = f.uniCount + n2 > NET_MAC_TABLE_ENTRIES;
          if (!f.multiOverflow) {
            f.table.set(data.subarray(at2 + 4, at2 + 4 + n2 * 6), f.uniCount * 6);
            f.multiCount = n2;
          }
          return '';
        }
        if (cmd === VIRTIO_NET_CTRL_MAC_ADDR_SET) {
          if (!has(VIRTIO_NET_F_CTRL_MAC_ADDR)) return 'MAC_ADDR_SET needs CTRL_MAC_ADDR';
          if (data.length !== 6) return `MAC address of ${data.length} bytes`;
          if ((data[0]! & 1) !== 0) return 'MAC address is multicast';
          f.mac.set(data);
          // The default MAC is the one config space shows (§5.1.6.5.2).
          this.config.set(data, NET_CFG_MAC);
          this.configChanged();
          return '';
        }
        return `unknown MAC command ${cmd}`;
      }
      case VIRTIO_NET_CTRL_VLAN: {
        if (!has(VIRTIO_NET_F_CTRL_VLAN)) return 'CTRL_VLAN not negotiated';
        if (data.length !== 2) return `VLAN command with ${data.length} data bytes (needs le16 id)`;
        const vid = le16(0);
        if (vid >= NET_MAX_VLAN) return `VLAN id ${vid} is above 4095`;
        if (cmd === VIRTIO_NET_CTRL_VLAN_ADD) f.addVlan(vid);
        else if (cmd === VIRTIO_NET_CTRL_VLAN_DEL) f.delVlan(vid);
        else return `unknown VLAN command ${cmd}`;
        return '';
      }
      case VIRTIO_NET_CTRL_ANNOUNCE: {
        if (!has(VIRTIO_NET_F_GUEST_ANNOUNCE)) return 'GUEST_ANNOUNCE not negotiated';
        if (cmd !== VIRTIO_NET_CTRL_ANNOUNCE_ACK || data.length !== 0) return `bad announce command ${cmd}`;
        // §5.1.6.5.4: the ack clears VIRTIO_NET_S_ANNOUNCE.
        const s = this.configView.getUint16(NET_CFG_STATUS, true);
        if ((s & VIRTIO_NET_S_ANNOUNCE) !== 0) {
          this.configView.setUint16(NET_CFG_STATUS, s & ~VIRTIO_NET_S_ANNOUNCE, true);
          this.configChanged();
        }
        return '';
      }
      case VIRTIO_NET_CTRL_MQ: {
        if (!has(VIRTIO_NET_F_MQ)) return 'MQ not negotiated';
        if (cmd !== VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) return `unknown MQ command ${cmd}`;
        if (data.length !== 2) return `VQ_PAIRS_SET with ${data.length} data bytes (needs le16)`;
        const n = le16(0);
        // §5.1.6.5.5: 1..max_virtqueue_pairs, and each pair's queues enabled.
        if (n < 1 || n > this.maxPairs) return `virtqueue_pairs ${n} is outside 1..${this.maxPairs}`;
        for (let p = 0; p < n; p++) if (this.#rx[p] === undefined || this.#tx[p] === undefined) return `queue pair ${p} is not enabled`;
        this.#pairs = n;
        this.#steer.fill(0);
        return '';
      }
      default:
        return `unknown class ${cls}`;
    }
  }
}
