export * from './constants.js';
export { PacketError, type PacketErrorKind } from './errors.js';
export {
  parseMac, formatMac, parseIpv4, formatIpv4, readIpv4, writeIpv4, parseIpv6, formatIpv6, macToNumber, isMulticastMac,
} from './addr.js';
export { PacketInfo, parsePacket, Layer, Anomaly, FRAG_ANY, FRAG_LATER } from './parse.js';
export { EthernetView, VlanTagView, ArpView, Ipv4View, Ipv6View, UdpView, TcpView, IcmpView, VxlanView } from './views.js';
export {
  onesComplementSum, foldSum, internetChecksum, pseudoHeaderSumV4, pseudoHeaderSumV6, pseudoHeaderSum, l4ChecksumFieldOffset,
  computeL4Checksum, verifyL4Checksum, fillL4Checksum, computeIpv4HeaderChecksum, verifyIpv4HeaderChecksum,
  fillIpv4HeaderChecksum, completePartialChecksum, completePartialChecksumOrThrow,
} from './checksum.js';
export {
  BROADCAST_MAC, writeEthernet, writeIpHeader, buildArp, buildArpRequest, buildArpReply, buildIcmpEcho, buildUdp, buildTcp,
  encapsulateVxlan, writeVxlanHeader, vxlanSourcePort,
  type IpAddress, type IpHeaderFields, type ArpFields, type EchoFields, type UdpFields, type TcpFields, type VxlanOuter,
} from './build.js';
export {
  FlowKey, FlowKeyExtractor, extractFlowKey, flowHashWords, FLOW_KEY_WORDS, FLOW_FIELDS, FlowWord, TUPLE_MASK, VLAN_PRESENT,
  hasPorts, type FlowField, type FlowFieldName,
} from './flow-key.js';
export { ArpIcmpResponder, type ResponderStats } from './responder.js';
export { segmentTcp } from './segment.js';
