import { METER_MAX } from './constants.js';
import { VswitchError } from './errors.js';

/** A meter band (OpenFlow 1.3.5 §5.7.1). Only drop bands: DSCP remark is reported unsupported. */
export interface MeterBand {
  type: 'drop';
  /** kb/s for a kbps meter, packets/s for a pktps meter. */
  rate: number;
  /** Kilobits or packets; used when the meter has the burst flag (otherwise one second of `rate`). */
  burstSize?: number;
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
      if (b.type !== 'drop') throw new VswitchError('unsupported', `meter band type ${String(b.type)} is not supported (drop only)`, `bands[${i}].type`, b.type);
      if (!Number.isInteger(b.rate) || b.rate < 1 || b.rate > 0xffffffff) throw new VswitchError('bad-meter', `band rate ${b.rate} is not in 1..2^32-1 (OFPMMFC_BAD_RATE)`, `bands[${i}].rate`, b.rate);
      const burst = config.burst ? b.burstSize ?? 0 : b.rate;
      if (!Number.isInteger(burst) || burst < 1 || burst > 0xffffffff) throw new VswitchError('bad-meter', `band burst ${burst} is not in 1..2^32-1 (OFPMMFC_BAD_BURST)`, `bands[${i}].burstSize`, burst);
      return new Band(b.rate, b.rate, burst * 1000);
    });
    this.tokens = Float64Array.from(this.bands, (b) => b.capacity);
    this.last = new Float64Array(this.bands.length).fill(now);
  }

  /**
   * Meters one packet. Every band whose bucket holds the packet's cost spends it;
   * among the bands that could not, the one with the highest rate applies (§5.7.1:
   * "the band with the highest configured rate that is lower than the current
   * measured rate"). Returns true when a drop band applies.
   */
  admit(bytes: number): boolean {
    const now = this.time.now;
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
