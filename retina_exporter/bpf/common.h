/* common.h — what the TC programs (packetparser.bpf.c, dns.bpf.c, packetforward.bpf.c) share: the uapi headers,
 * the observation points, directions and TCP flag bits (the C side of retina_core/record.py; tests/test_bpf_layouts.py
 * compiles these and compares them with the Python values), and the packet-parsing helpers (Ethernet with up to
 * two VLAN tags, IPv4, IPv6 with its extension headers) so that every program reads a packet the same way.
 *
 * Every helper only reads the packet (bpf_skb_load_bytes: bounds-checked, works on non-linear skbs); none changes
 * it or its verdict. Every classifier returns TC_ACT_UNSPEC ("no verdict": the packet continues as if we were not
 * there; under TCX the next program in the chain runs).
 *
 * One layout header per event (packetparser.h, dns.h, ...) holds that program's own structs; this one holds no
 * event layout.
 */
#ifndef RETINA_COMMON_H
#define RETINA_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/pkt_cls.h> /* TC_ACT_UNSPEC */

/* Observation points: where a TC hook sees the packet (retina_core.record OBS_*). */
#define OBS_FROM_ENDPOINT 0 /* pod veth (host side), TC ingress: the pod sent it */
#define OBS_TO_ENDPOINT 1   /* pod veth (host side), TC egress: the pod receives it */
#define OBS_FROM_NETWORK 2  /* host interface, TC ingress */
#define OBS_TO_NETWORK 3    /* host interface, TC egress */

/* Traffic direction of a connection, from the observation point of its first packet (retina_core.record DIR_*). */
#define DIR_UNKNOWN 0
#define DIR_INGRESS 1
#define DIR_EGRESS 2

/* TCP flag bits: the header's flag byte, NS (the low bit of the data-offset byte) as bit 8
 * (retina_core.record TCP_*). */
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_PSH 0x08
#define TCP_FLAG_ACK 0x10
#define TCP_FLAG_URG 0x20
#define TCP_FLAG_ECE 0x40
#define TCP_FLAG_CWR 0x80
#define TCP_FLAG_NS 0x100

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58 /* uapi/linux/in6.h, not included by in.h */
#endif

/* EtherTypes as they are on the wire (network order read into a host-order __u16 on little-endian hosts). */
#define ETH_P_8021Q_BE 0x0081  /* htons(0x8100) */
#define ETH_P_8021AD_BE 0xA888 /* htons(0x88A8) */
#define ETH_P_IP_BE 0x0008     /* htons(0x0800) */
#define ETH_P_IPV6_BE 0xDD86   /* htons(0x86DD) */

#define IP_OFFSET_MASK 0x1FFF /* host order: the IPv4 fragment offset */

/* IPv6 extension headers walked to find the L4 header (NEXTHDR_* of include/net/ipv6.h, which is not uapi). */
#define IPV6_EXT_HOP 0
#define IPV6_EXT_ROUTING 43
#define IPV6_EXT_FRAGMENT 44
#define IPV6_EXT_AUTH 51
#define IPV6_EXT_DEST 60
#define IPV6_EXT_MAX 6 /* extension headers walked at most */

#define L4_NONE 0xff /* l3_info.l4proto when the IPv6 extension chain is truncated: no L4 header */

/* What parse_l3 learnt about a packet's network layer. */
struct l3_info {
	__u32 l4_off;        /* offset of the L4 header (after the IPv6 extension headers) */
	__u32 ip_end;        /* offset just past the IP packet (its length field; skb->len when that is 0, as for
			      * GSO "big" packets), at most skb->len. Headers are read only before it: the bytes after
			      * it (Ethernet padding, trailers) are not part of the packet */
	__u8 ip_version;     /* 4 or 6 */
	__u8 l4proto;        /* IPPROTO_*, or L4_NONE */
	__u8 later_fragment; /* a non-first fragment: there is no L4 header at l4_off */
};

/* Parse Ethernet (up to two VLAN tags) and IPv4 or IPv6 (at most IPV6_EXT_MAX extension headers). Copies the
 * source and destination address into saddr/daddr (IPv4: the first 4 bytes; the rest is left as it was).
 * Returns 0 for an IP packet whose IP header could be read (version and IHL valid), -1 otherwise. */
static __always_inline int parse_l3(struct __sk_buff *skb, __u8 *saddr, __u8 *daddr, struct l3_info *l3)
{
	__u32 off = ETH_HLEN;
	__u16 h_proto;

	if (bpf_skb_load_bytes(skb, 12, &h_proto, sizeof(h_proto)) < 0)
		return -1;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (h_proto == ETH_P_8021Q_BE || h_proto == ETH_P_8021AD_BE) {
			if (bpf_skb_load_bytes(skb, off + 2, &h_proto, sizeof(h_proto)) < 0)
				return -1;
			off += 4;
		}
	}

	l3->later_fragment = 0;
	if (h_proto == ETH_P_IP_BE) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
			return -1;
		if (ip.version != 4 || ip.ihl < 5)
			return -1;
		__builtin_memcpy(saddr, &ip.saddr, 4);
		__builtin_memcpy(daddr, &ip.daddr, 4);
		l3->ip_version = 4;
		l3->l4proto = ip.protocol;
		if (bpf_ntohs(ip.frag_off) & IP_OFFSET_MASK)
			l3->later_fragment = 1;
		l3->ip_end = bpf_ntohs(ip.tot_len) ? off + bpf_ntohs(ip.tot_len) : skb->len;
		off += ip.ihl * 4;
	} else if (h_proto == ETH_P_IPV6_BE) {
		struct ipv6hdr ip6;
		__u8 l4proto;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return -1;
		if (ip6.version != 6)
			return -1;
		__builtin_memcpy(saddr, &ip6.saddr, 16);
		__builtin_memcpy(daddr, &ip6.daddr, 16);
		l3->ip_version = 6;
		l4proto = ip6.nexthdr;
		l3->ip_end = bpf_ntohs(ip6.payload_len) ? off + sizeof(ip6) + bpf_ntohs(ip6.payload_len) : skb->len;
		off += sizeof(ip6);
#pragma unroll
		for (int i = 0; i < IPV6_EXT_MAX; i++) {
			__u8 ext[2];
			if (l4proto != IPV6_EXT_HOP && l4proto != IPV6_EXT_ROUTING && l4proto != IPV6_EXT_FRAGMENT &&
			    l4proto != IPV6_EXT_DEST && l4proto != IPV6_EXT_AUTH)
				break;
			/* Bounded by the IP packet, not the frame: bytes after it (padding, trailers) are not headers. */
			if (off + sizeof(ext) > l3->ip_end || bpf_skb_load_bytes(skb, off, ext, sizeof(ext)) < 0) {
				l4proto = L4_NONE; /* truncated chain */
				break;
			}
			if (l4proto == IPV6_EXT_FRAGMENT) {
				__u16 fo;
				if (off + 4 > l3->ip_end || bpf_skb_load_bytes(skb, off + 2, &fo, sizeof(fo)) < 0) {
					l4proto = L4_NONE;
					break;
				}
				if (bpf_ntohs(fo) & 0xFFF8)
					l3->later_fragment = 1;
				l4proto = ext[0];
				off += 8;
			} else if (l4proto == IPV6_EXT_AUTH) {
				l4proto = ext[0];
				off += ((__u32)ext[1] + 2) * 4;
			} else {
				l4proto = ext[0];
				off += ((__u32)ext[1] + 1) * 8;
			}
		}
		l3->l4proto = l4proto;
	} else {
		return -1;
	}
	if (l3->ip_end > skb->len)
		l3->ip_end = skb->len;
	l3->l4_off = off;
	return 0;
}

/* The four classifiers of a program that hooks every observation point: PREFIX##from_ep, PREFIX##to_ep,
 * PREFIX##from_net and PREFIX##to_net, each returning FN(skb, OBS_*) (FN returns TC_ACT_UNSPEC). The names must
 * match the loader's (at most 15 characters). */
#define TC_OBS_CLASSIFIERS(PREFIX, FN)                                                                           \
	int PREFIX##from_ep(struct __sk_buff *skb) { return FN(skb, OBS_FROM_ENDPOINT); }                        \
	int PREFIX##to_ep(struct __sk_buff *skb) { return FN(skb, OBS_TO_ENDPOINT); }                            \
	int PREFIX##from_net(struct __sk_buff *skb) { return FN(skb, OBS_FROM_NETWORK); }                        \
	int PREFIX##to_net(struct __sk_buff *skb) { return FN(skb, OBS_TO_NETWORK); }

#endif /* RETINA_COMMON_H */
