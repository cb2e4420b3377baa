import { FLOW_KEY_WORDS } from '@ioplane/packet';

/** Reserved port numbers (OpenFlow 1.3.5 §7.2.1, enum ofp_port_no). */
export const Port = {
  /** The largest physical port number. */
  MAX: 0xffffff00,
  /** Send the packet out the port it came in on (§4.5: the only way to do that). */
  IN_PORT: 0xfffffff8,
  /** Packet-out only: run the packet through the flow tables. */
  TABLE: 0xfffffff9,
  /** The traditional switch: MAC learning per VLAN (§4.5 NORMAL). */
  NORMAL: 0xfffffffa,
  /** Every port except the ingress port and ports with NO_FLOOD or down. */
  FLOOD: 0xfffffffb,
  /** Every port except the ingress port. */
  ALL: 0xfffffffc,
  /** To the controller, as a packet-in. */
  CONTROLLER: 0xfffffffd,
  /** The bridge's own (internal) port. */
  LOCAL: 0xfffffffe,
  /** Wildcard in filters (out_port of a delete, watch_port of a bucket). */
  ANY: 0xffffffff,
} as const;

/** Reserved group numbers (§7.3.4.2 ofp_group). */
export const Group = { MAX: 0xffffff00, ALL: 0xfffffffc, ANY: 0xffffffff } as const;

/** The last flow table (OFPTT_MAX) and "all tables" in deletes (OFPTT_ALL). */
export const TABLE_MAX = 0xfe;
export const TABLE_ALL = 0xff;

/** The largest meter number (OFPM_MAX, §7.3.4.4). */
export const METER_MAX = 0xffff0000;

/** Controller max_len meaning "the whole packet, no buffering" (OFPCML_NO_BUFFER). */
export const NO_BUFFER = 0xffff;
/** Default bytes of a table-miss packet-in (OFP_DEFAULT_MISS_SEND_LEN, §7.3.2). */
export const DEFAULT_MISS_SEND_LEN = 128;

/**
 * The pipeline key: the 24 words of `@ioplane/packet`'s flow key (the ingress
 * key: in_port, tunnel, L2–L4 fields) followed by pipeline-only fields that
 * start at zero for every packet: OpenFlow metadata (64 bits) and eight 32-bit
 * registers (Open vSwitch's NXM_NX_REG0..7).
 */
export const INGRESS_WORDS = FLOW_KEY_WORDS;
export const META_HI = FLOW_KEY_WORDS;
export const META_LO = FLOW_KEY_WORDS + 1;
export const REG_BASE = FLOW_KEY_WORDS + 2;
export const N_REGS = 8;
/**
 * The high 32 bits of OpenFlow's 64-bit tunnel_id (OXM_OF_TUNNEL_ID, §7.2.3.7); the low 32 are
 * ingress word 1. A pipeline-only word: VXLAN's VNI is 24 bits (RFC 7348 §5), so every packet
 * enters with it zero and only set_field tunnel_id makes it otherwise.
 */
export const TUN_HI = REG_BASE + N_REGS;
export const KEY_WORDS = TUN_HI + 1;
