import type { InterruptCoalescer } from './coalescer.js';
import { CoalescingError, checkInt } from './errors.js';
import { fromVirtioNetCoal, type FixedPolicy } from './policy.js';

/**
 * The virtio-net notification coalescing commands, VirtIO 1.3 §5.1 "Network
 * Device", Control Virtqueue, "Notifications Coalescing":
 *
 *   struct virtio_net_ctrl_coal    { le32 max_packets; le32 max_usecs; };            // 8 bytes
 *   struct virtio_net_ctrl_coal_vq { le16 vq_index; le16 reserved; struct virtio_net_ctrl_coal coal; }; // 12 bytes
 *
 * A Linux guest sends them for `ethtool -C eth0 rx-usecs U rx-frames N`
 * (rx-frames → max_packets, rx-usecs → max_usecs).
 */
export const VIRTIO_NET_F_VQ_NOTF_COAL = 52;
export const VIRTIO_NET_F_NOTF_COAL = 53;
export const VIRTIO_NET_CTRL_NOTF_COAL = 6;
export const VIRTIO_NET_CTRL_NOTF_COAL_TX_SET = 0;
export const VIRTIO_NET_CTRL_NOTF_COAL_RX_SET = 1;
export const VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET = 2;
export const VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET = 3;
/** The ack byte of a control command. */
export const VIRTIO_NET_OK = 0;
export const VIRTIO_NET_ERR = 1;
export const VIRTIO_NET_CTRL_COAL_SIZE = 8;
export const VIRTIO_NET_CTRL_COAL_VQ_SIZE = 12;

export interface VirtioNetCoalParams {
  maxPackets: number;
  maxUsecs: number;
}

export interface VirtioNetNotfCoalOptions {
  /**
   * The fixed policy that runs the data virtqueues' coalescing; its queue
   * index is the virtqueue index (receiveqN = 2(N−1), transmitqN = 2(N−1)+1).
   */
  policy: FixedPolicy;
  /** Re-evaluated after a change, so a condition met by the new parameters notifies at once. */
  coalescer?: InterruptCoalescer;
  /** Virtqueue pairs currently enabled (1 unless VIRTIO_NET_F_MQ/RSS set more). */
  queuePairs: number;
  /** Negotiated VIRTIO_NET_F_NOTF_COAL (TX_SET, RX_SET). */
  notfCoal: boolean;
  /** Negotiated VIRTIO_NET_F_VQ_NOTF_COAL (VQ_SET, VQ_GET). */
  vqNotfCoal: boolean;
}

/**
 * The device side of the VIRTIO_NET_CTRL_NOTF_COAL class: parses the
 * driver's command-specific data (hostile: every length and index checked),
 * keeps the per-virtqueue parameters, and applies them to a {@link FixedPolicy}.
 * Answers are the ack byte the device writes: VIRTIO_NET_OK or VIRTIO_NET_ERR.
 */
export class VirtioNetNotfCoal {
  private readonly policy: FixedPolicy;
  private readonly coalescer: InterruptCoalescer | undefined;
  private pairs: number;
  notfCoal: boolean;
  vqNotfCoal: boolean;
  /** Raw (max_packets, max_usecs) per data virtqueue, as the driver set them. */
  private readonly packets: Uint32Array;
  private readonly usecs: Uint32Array;
  /** The last TX_SET / RX_SET values: a re-enabled queue returns to them (or to 0). */
  private tx: VirtioNetCoalParams = { maxPackets: 0, maxUsecs: 0 };
  private rx: VirtioNetCoalParams = { maxPackets: 0, maxUsecs: 0 };
  /** Commands answered VIRTIO_NET_ERR, for statistics. */
  errors = 0;

  constructor(options: VirtioNetNotfCoalOptions) {
    this.policy = options.policy;
    this.coalescer = options.coalescer;
    this.pairs = checkInt('queuePairs', options.queuePairs, 1, 0x8000);
    this.notfCoal = options.notfCoal;
    this.vqNotfCoal = options.vqNotfCoal;
    this.packets = new Uint32Array(this.pairs * 2);
    this.usecs = new Uint32Array(this.pairs * 2);
    this.reset();
  }

  /** Number of enabled virtqueue pairs (after VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET). */
  setQueuePairs(pairs: number): void {
    const max = this.packets.length / 2;
    this.pairs = checkInt('queuePairs', pairs, 1, max);
  }

  /**
   * Handles one command of the class. `data` is the command-specific data the
   * driver wrote; `reply` is the device-writable buffer before the ack (VQ_GET
   * writes the 8-byte virtio_net_ctrl_coal there). Returns the ack byte.
   */
  handle(command: number, data: Uint8Array, reply?: Uint8Array): number {
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    switch (command) {
      case VIRTIO_NET_CTRL_NOTF_COAL_TX_SET:
      case VIRTIO_NET_CTRL_NOTF_COAL_RX_SET: {
        // "The driver MUST have negotiated the VIRTIO_NET_F_NOTF_COAL feature when issuing" TX_SET/RX_SET.
        if (!this.notfCoal || data.byteLength !== VIRTIO_NET_CTRL_COAL_SIZE) return this.err();
        const p = { maxPackets: dv.getUint32(0, true), maxUsecs: dv.getUint32(4, true) };
        const first = command === VIRTIO_NET_CTRL_NOTF_COAL_RX_SET ? 0 : 1;
        if (first === 0) this.rx = p;
        else this.tx = p;
        // Applies to every receive (even) or transmit (odd) virtqueue.
        for (let vq = first; vq < this.packets.length; vq += 2) this.apply(vq, p.maxPackets, p.maxUsecs);
        return VIRTIO_NET_OK;
      }
      case VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET: {
        if (!this.vqNotfCoal || data.byteLength !== VIRTIO_NET_CTRL_COAL_VQ_SIZE) return this.err();
        const vq = dv.getUint16(0, true); // reserved (bytes 2..3): "The device MUST ignore reserved."
        // "MUST respond ... with VIRTIO_NET_ERR if the designated virtqueue is not an enabled transmit or receive virtqueue."
        if (!this.isDataQueue(vq)) return this.err();
        this.apply(vq, dv.getUint32(4, true), dv.getUint32(8, true));
        return VIRTIO_NET_OK;
      }
      case VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET: {
        if (!this.vqNotfCoal || data.byteLength !== 4 || !reply || reply.byteLength < VIRTIO_NET_CTRL_COAL_SIZE) return this.err();
        const vq = dv.getUint16(0, true);
        if (!this.isDataQueue(vq)) return this.err();
        const out = new DataView(reply.buffer, reply.byteOffset, VIRTIO_NET_CTRL_COAL_SIZE);
        out.setUint32(0, this.packets[vq]!, true);
        out.setUint32(4, this.usecs[vq]!, true);
        return VIRTIO_NET_OK;
      }
      default:
        return this.err();
    }
  }

  /** The parameters of data virtqueue `vq`, as the driver set them. */
  get(vq: number): VirtioNetCoalParams {
    if (!Number.isInteger(vq) || vq < 0 || vq >= this.packets.length) {
      throw new CoalescingError('invalid-queue', `virtqueue ${vq} is not a data virtqueue`, 'vq', vq);
    }
    return { maxPackets: this.packets[vq]!, maxUsecs: this.usecs[vq]! };
  }

  /**
   * "Upon disabling and re-enabling a transmit [receive] virtqueue, the device
   * MUST set the coalescing parameters of the virtqueue to those configured
   * through the VIRTIO_NET_CTRL_NOTF_COAL_TX_SET [RX_SET] command, or, if the
   * driver did not set any ..., to 0."
   */
  queueReenabled(vq: number): void {
    this.get(vq);
    const p = vq % 2 === 0 ? this.rx : this.tx;
    this.apply(vq, p.maxPackets, p.maxUsecs);
  }

  /** "Upon reset, a device MUST initialize all coalescing parameters to 0." */
  reset(): void {
    this.tx = { maxPackets: 0, maxUsecs: 0 };
    this.rx = { maxPackets: 0, maxUsecs: 0 };
    for (let vq = 0; vq < this.packets.length; vq++) this.apply(vq, 0, 0);
  }

  private isDataQueue(vq: number): boolean {
    return vq < this.pairs * 2;
  }

  private apply(vq: number, maxPackets: number, maxUsecs: number): void {
    this.packets[vq] = maxPackets;
    this.usecs[vq] = maxUsecs;
    this.policy.setParams(vq, fromVirtioNetCoal(maxPackets, maxUsecs));
    // "When the coalescing parameters of a device change, the device needs to
    // check if the new notification conditions are met and send a used buffer
    // notification if so."
    this.coalescer?.reevaluate(vq);
  }

  private err(): number {
    this.errors++;
    return VIRTIO_NET_ERR;
  }
}
