/** EtherType values (IEEE 802 numbers registry). */
export const ETH_P_IPV4 = 0x0800;
export const ETH_P_ARP = 0x0806;
/** IEEE 802.1Q customer VLAN tag (C-TAG). */
export const ETH_P_8021Q = 0x8100;
/** IEEE 802.1ad service VLAN tag (S-TAG). */
export const ETH_P_8021AD = 0x88a8;
export const ETH_P_IPV6 = 0x86dd;
/** IEEE 802 local experimental EtherType 1. */
export const ETH_P_EXPERIMENTAL = 0x88b5;

/** Ethernet II header: dst(6) src(6) type(2). */
export const ETH_HEADER_LEN = 14;
/** One 802.1Q/802.1ad tag: TPID(2) TCI(2). */
export const VLAN_TAG_LEN = 4;
/** The shortest frame an Ethernet sender puts on the wire, without FCS (IEEE 802.3 §4.2.3.3). */
export const ETH_MIN_FRAME = 60;
export const ARP_ETH_IPV4_LEN = 28;
export const IPV4_MIN_HEADER_LEN = 20;
export const IPV6_HEADER_LEN = 40;
export const UDP_HEADER_LEN = 8;
export const TCP_MIN_HEADER_LEN = 20;
export const ICMP_HEADER_LEN = 8;
export const VXLAN_HEADER_LEN = 8;
/** RFC 7348 §5: the IANA-assigned VXLAN UDP destination port. */
export const VXLAN_PORT = 4789;
/** Outer Ethernet + IPv4 + UDP + VXLAN: the bytes VXLAN encapsulation adds (RFC 7348 §5). */
export const VXLAN_OVERHEAD_V4 = ETH_HEADER_LEN + IPV4_MIN_HEADER_LEN + UDP_HEADER_LEN + VXLAN_HEADER_LEN;

/** IP protocol numbers (IANA). */
export const IPPROTO_HOPOPTS = 0;
export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_ROUTING = 43;
export const IPPROTO_FRAGMENT = 44;
export const IPPROTO_ESP = 50;
export const IPPROTO_AH = 51;
export const IPPROTO_ICMPV6 = 58;
export const IPPROTO_NONE = 59;
export const IPPROTO_DSTOPTS = 60;
export const IPPROTO_MOBILITY = 135;
export const IPPROTO_HIP = 139;
export const IPPROTO_SHIM6 = 140;

export const ARP_OP_REQUEST = 1;
export const ARP_OP_REPLY = 2;
export const ICMP_ECHO_REPLY = 0;
export const ICMP_ECHO_REQUEST = 8;
export const ICMPV6_ECHO_REQUEST = 128;
export const ICMPV6_ECHO_REPLY = 129;

/** At most this many VLAN tags are parsed (802.1ad S-TAG + 802.1Q C-TAG); a third marks the frame. */
export const MAX_VLAN_TAGS = 2;
/** At most this many IPv6 extension headers are walked (RFC 8200 §4.1 lists 6 kinds; more is an attack). */
export const MAX_IPV6_EXT_HEADERS = 12;
/** At most this many IPv4 options are walked (40 bytes of options; each is at least 1 byte). */
export const MAX_IPV4_OPTIONS = 40;
