import { METER_MAX } from './constants.js';
import { VswitchError } from './errors.js';

/**
 * A meter band (OpenFlow 1.3.5 §5.7.1, §7.3.4.4): `drop` drops the packet; `dscp_remark`
 * raises the drop precedence of its DSCP by `precLevel` (OFPMBT_DSCP_REMARK, "a simple
 * DiffServ policer"): for the Assured Forwarding codepoints AFxy of RFC 2597 §6 the drop
 * precedence y goes up by precLevel, to at most 3; other codepoints are left as they are.
 */
export interface MeterBand {
  type: 'drop' | 'dscp_remark';
  /** kb/s for a kbps meter, packets/s for a pktps meter. */
  rate: number;
  /** Kilobits or packets; used when the meter has the burst flag (otherwise one second of `rate`). */
  burstSize?: number;
  /** dscp_remark: drop-precedence levels to add (1..255; OpenFlow's prec_level). */
  precLevel?: number;
}

/**
 * The DSCP a `dscp_remark` band of `precLevel` leaves: AFxy (class x 1..4, drop precedence
 * y 1..3, DSCP = 8x + 2y; RFC 2597 §6) becomes AFx(min(3, y + precLevel)); any other
 * codepoint (best effort, EF, class selectors) has no drop precedence to raise.
 */
export function remarkDscp(dscp: number, precLevel: number): number {
  const x = dscp >>> 3;
  const y = (dscp >>> 1) & 3;
  if (x < 1 || x > 4 || y === 0 || (dscp & 1) !== 0) return dscp;
  return (x << 3) | (Math.min(3, y + precLevel) << 1);
}

export interface MeterConfig {
  meterId: number;
  /** OFPMF_KBPS (default) or OFPMF_PKTPS. */
  unit?: 'kbps' | 'pktps';
  /** OFPMF_BURST: honour each band's burstSize. */
  burst?: boolean;
  bands: MeterBand[];
}

export interface MeterStats {
  meterId: number;
  flowCount: number;
  packetInCount: number;
  byteInCount: number;
  bands: { packetCount: number; byteCount: number }[];
}

/** One token bucket per band, refilled from the injected clock (its state lives in the meter's typed arrays). */
class Band {
  packetCount = 0;
  byteCount = 0;
  constructor(
    /** 0: drop; otherwise the dscp_remark band's precLevel. */
    readonly precLevel: number,
    readonly rate: number,
    /** Tokens per millisecond: bits (kbps: rate kb/s = rate bits/ms) or milli-packets (pktps: rate pkt/s = rate mpkt/ms); integers, so integer clocks stay exact. */
    readonly perMs: number,
    readonly capacity: number,
  ) {}
}

export class Meter {
  readonly bands: Band[];
  readonly pktps: boolean;
  /** Per band: tokens and the time of the last refill, as float64 (no boxed numbers per packet). */
  private readonly tokens: Float64Array;
  private readonly last: Float64Array;
  packetInCount = 0;
  byteInCount = 0;
  flowCount = 0;
  /** After `admit` returned false: the precLevel of the dscp_remark band that applies, or 0. */
  remark = 0;

  /** `time.now` is the current time in ms, set by the owner per batch (no double crosses a call). */
  constructor(readonly config: MeterConfig, private readonly time: { now: number }) {
    const now = time.now;
    const { meterId, bands } = config;
    if (!Number.isInteger(meterId) || meterId < 1 || meterId > METER_MAX) throw new VswitchError('bad-meter', `meter ${meterId} is not in 1..${METER_MAX}`, 'meterId', meterId);
    const unit = config.unit ?? 'kbps';
    if (unit !== 'kbps' && unit !== 'pktps') throw new VswitchError('bad-meter', `meter unit ${String(unit)} is not kbps or pktps`, 'unit', unit);
    this.pktps = unit === 'pktps';
    if (!Array.isArray(bands) || bands.length === 0 || bands.length > 16) throw new VswitchError('bad-meter', 'a meter needs 1..16 bands', 'bands', bands);
    this.bands = bands.map((b, i) => {
      if (b.type !== 'drop' && b.type !== 'dscp_remark') throw new VswitchError('unsupported', `meter band type ${String(b.type)} is not supported (drop and dscp_remark)`, `bands[${i}].type`, b.type);
      const prec = b.type === 'dscp_remark' ? b.precLevel : 0;
      if (b.type === 'dscp_remark' && (!Number.isInteger(prec) || prec! < 1 || prec! > 255)) throw new VswitchError('bad-meter', `dscp_remark precLevel ${String(prec)} is not in 1..255`, `bands[${i}].precLevel`, prec);
      if (!Number.isInteger(b.rate) || b.rate < 1 || b.rate > 0xffffffff) throw new VswitchError('bad-meter', `band rate ${b.rate} is not in 1..2^32-1 (OFPMMFC_BAD_RATE)`, `bands[${i}].rate`, b.rate);
      const burst = config.burst ? b.burstSize ?? 0 : b.rate;
      if (!Number.isInteger(burst) || burst < 1 || burst > 0xffffffff) throw new VswitchError('bad-meter', `band burst ${burst} is not in 1..2^32-1 (OFPMMFC_BAD_BURST)`, `bands[${i}].burstSize`, burst);
      return new Band(prec!, b.rate, b.rate, burst * 1000);
    });
    this.tokens = Float64Array.from(this.bands, (b) => b.capacity);
    this.last = new Float64Array(this.bands.length).fill(now);
  }

  /**
   * Meters one packet. Every band whose bucket holds the packet's cost spends it;
   * among the bands that could not, the one with the highest rate applies (§5.7.1:
   * "the band with the highest configured rate that is lower than the current
   * measured rate"). Returns true when a drop band applies; when a dscp_remark band
   * applies it returns false and sets `remark` to the band's precLevel.
   */
  admit(bytes: number): boolean {
    const now = this.time.now;
    this.remark = 0;
    this.packetInCount++;
    this.byteInCount += bytes;
    const cost = this.pktps ? 1000 : bytes * 8;
    let hit: Band | null = null;
    const bands = this.bands;
    const tokens = this.tokens;
    const last = this.last;
    for (let i = 0; i < bands.length; i++) {
      const b = bands[i]!;
      const dt = now - last[i]!;
      if (dt > 0) {
        tokens[i] = Math.min(b.capacity, tokens[i]! + dt * b.perMs);
        last[i] = now;
      }
      if (tokens[i]! >= cost) tokens[i] = tokens[i]! - cost;
      else if (hit === null || b.rate > hit.rate) hit = b;
    }
    if (hit === null) return false;
    hit.packetCount++;
    hit.byteCount += bytes;
    if (hit.precLevel !== 0) {
      this.remark = hit.precLevel;
      return false;
    }
    return true;
  }

  stats(): MeterStats {
    return {
      meterId: this.config.meterId,
      flowCount: this.flowCount,
      packetInCount: this.packetInCount,
      byteInCount: this.byteInCount,
      bands: this.bands.map((b) => ({ packetCount: b.packetCount, byteCount: b.byteCount })),
    };
  }
}
