/* dns.bpf.c — TC programs that hand port-53 packets (UDP and TCP, IPv4 and IPv6) to user space.
 *
 * Four classifiers, one per observation point (rdns_from_ep, rdns_to_ep, rdns_from_net, rdns_to_net). Each one
 * returns TC_ACT_UNSPEC whatever happens: the packet continues as if we were not there.
 *
 * Counting point: every DNS packet is reported once per node, at the first of our hooks it passes.
 *   - FROM_ENDPOINT (a pod sent it) and FROM_NETWORK (it arrived from outside the node) always report.
 *   - TO_ENDPOINT and TO_NETWORK report only packets that did not pass one of our ingress hooks before: the
 *     packet's skb->ingress_ifindex (the interface the node received it on; 0 for packets the node's own
 *     stack generated) must not be in the map `seen_ifindex`, which user space fills with every interface
 *     that has our FROM_* hook and with the bridge masters of those pod veths (a packet a pod sends to the
 *     gateway is received again by the bridge device, whose index it then carries).
 *   So a query from pod A to pod B on the same node is reported at A's veth (FROM_ENDPOINT) and skipped at
 *   B's veth (TO_ENDPOINT: its ingress_ifindex is A's veth, or the bridge), a query from the node's own stack
 *   to a pod is reported at the pod's veth (ingress_ifindex 0), and a pod's query to an outside server is
 *   reported at the pod's veth and skipped at the uplink -- also when the node SNATs it.
 *
 * Compiled at run time by bcc (retina_exporter/plugins/dns/loader.py) with -DRINGBUF_PAGES=<n>
 * -DSEEN_MAP_SIZE=<n>. Only uapi structs (__sk_buff) are used. Kernel >= 5.8 (ring buffer).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/pkt_cls.h>
#include "dns.h"

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 256
#endif
#ifndef SEEN_MAP_SIZE
#define SEEN_MAP_SIZE 4096
#endif
#ifndef DNS_PORT
#define DNS_PORT 53
#endif

#define ETH_P_8021Q_BE 0x0081  /* htons(0x8100) */
#define ETH_P_8021AD_BE 0xA888 /* htons(0x88A8) */
#define ETH_P_IP_BE 0x0008
#define ETH_P_IPV6_BE 0xDD86
#define IP_OFFSET_MASK 0x1FFF

BPF_RINGBUF_OUTPUT(dns_events, RINGBUF_PAGES);
BPF_HASH(seen_ifindex, __u32, __u8, SEEN_MAP_SIZE);
BPF_PERCPU_ARRAY(dns_stats, __u64, DNS_STAT_SLOTS);

static __always_inline void stat_inc(__u32 slot)
{
	__u64 *v = dns_stats.lookup(&slot);
	if (v)
		*v += 1; /* per-CPU: no atomics needed */
}

static __always_inline int handle(struct __sk_buff *skb, __u8 obs)
{
	__u32 off = ETH_HLEN;
	__u32 ip_end;
	__u16 h_proto;
	__u8 l4proto;
	__u8 ipv;
	__u8 saddr[16] = {};
	__u8 daddr[16] = {};

	if (bpf_skb_load_bytes(skb, 12, &h_proto, sizeof(h_proto)) < 0)
		return TC_ACT_UNSPEC;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (h_proto == ETH_P_8021Q_BE || h_proto == ETH_P_8021AD_BE) {
			if (bpf_skb_load_bytes(skb, off + 2, &h_proto, sizeof(h_proto)) < 0)
				return TC_ACT_UNSPEC;
			off += 4;
		}
	}

	if (h_proto == ETH_P_IP_BE) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
			return TC_ACT_UNSPEC;
		if (ip.version != 4 || ip.ihl < 5)
			return TC_ACT_UNSPEC;
		if (bpf_ntohs(ip.frag_off) & IP_OFFSET_MASK)
			return TC_ACT_UNSPEC; /* a later fragment: no L4 header */
		__builtin_memcpy(saddr, &ip.saddr, 4);
		__builtin_memcpy(daddr, &ip.daddr, 4);
		ipv = 4;
		l4proto = ip.protocol;
		ip_end = bpf_ntohs(ip.tot_len) ? off + bpf_ntohs(ip.tot_len) : skb->len; /* 0: GSO "big" packets */
		off += ip.ihl * 4;
	} else if (h_proto == ETH_P_IPV6_BE) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return TC_ACT_UNSPEC;
		if (ip6.version != 6)
			return TC_ACT_UNSPEC;
		__builtin_memcpy(saddr, &ip6.saddr, 16);
		__builtin_memcpy(daddr, &ip6.daddr, 16);
		ipv = 6;
		l4proto = ip6.nexthdr;
		ip_end = bpf_ntohs(ip6.payload_len) ? off + sizeof(ip6) + bpf_ntohs(ip6.payload_len) : skb->len;
		off += sizeof(ip6);
		/* At most 6 extension headers: hop-by-hop, routing, fragment, destination options, AH. */
#pragma unroll
		for (int i = 0; i < 6; i++) {
			__u8 ext[2];
			if (l4proto != 0 && l4proto != 43 && l4proto != 44 && l4proto != 60 && l4proto != 51)
				break;
			if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)) < 0)
				return TC_ACT_UNSPEC;
			if (l4proto == 44) {
				__u16 fo;
				if (bpf_skb_load_bytes(skb, off + 2, &fo, sizeof(fo)) < 0)
					return TC_ACT_UNSPEC;
				if (bpf_ntohs(fo) & 0xFFF8)
					return TC_ACT_UNSPEC; /* a later fragment */
				l4proto = ext[0];
				off += 8;
			} else if (l4proto == 51) {
				l4proto = ext[0];
				off += ((__u32)ext[1] + 2) * 4;
			} else {
				l4proto = ext[0];
				off += ((__u32)ext[1] + 1) * 8;
			}
		}
	} else {
		return TC_ACT_UNSPEC;
	}
	if (ip_end > skb->len)
		ip_end = skb->len;

	__u8 hdr[14]; /* ports (4), UDP length or TCP seq (4), ack (4), data offset (1), flags (1) */
	__u32 payload_off;
	__u32 msg_len;
	__u32 seq = 0;
	__u8 tcp_flags = 0;
	if (l4proto == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, off, hdr, 8) < 0)
			return TC_ACT_UNSPEC;
	} else if (l4proto == IPPROTO_TCP) {
		if (bpf_skb_load_bytes(skb, off, hdr, 14) < 0)
			return TC_ACT_UNSPEC;
	} else {
		return TC_ACT_UNSPEC;
	}
	__u16 sport = ((__u16)hdr[0] << 8) | hdr[1];
	__u16 dport = ((__u16)hdr[2] << 8) | hdr[3];
	if (sport != DNS_PORT && dport != DNS_PORT)
		return TC_ACT_UNSPEC;

	if (obs == DNS_OBS_TO_ENDPOINT || obs == DNS_OBS_TO_NETWORK) {
		__u32 iif = skb->ingress_ifindex;
		if (iif && seen_ifindex.lookup(&iif)) {
			stat_inc(DNS_STAT_SEEN_EARLIER);
			return TC_ACT_UNSPEC;
		}
	}

	if (l4proto == IPPROTO_UDP) {
		__u32 udp_len = ((__u32)hdr[4] << 8) | hdr[5];
		payload_off = off + 8;
		msg_len = udp_len >= 8 ? udp_len - 8 : 0;
	} else {
		payload_off = off + (__u32)(hdr[12] >> 4) * 4;
		seq = ((__u32)hdr[4] << 24) | ((__u32)hdr[5] << 16) | ((__u32)hdr[6] << 8) | hdr[7];
		tcp_flags = hdr[13];
		msg_len = ip_end > payload_off ? ip_end - payload_off : 0;
		/* Segments without payload are not reported, except SYNs: their sequence number tells user space where
		 * the connection's first message starts. */
		if (msg_len == 0 && !(tcp_flags & 0x02)) {
			stat_inc(DNS_STAT_NO_PAYLOAD);
			return TC_ACT_UNSPEC;
		}
	}
	__u32 avail = ip_end > payload_off ? ip_end - payload_off : 0;

	struct dns_event *ev = dns_events.ringbuf_reserve(sizeof(struct dns_event));
	if (!ev) {
		stat_inc(DNS_STAT_RINGBUF_FULL);
		return TC_ACT_UNSPEC;
	}
	ev->ts_ns = bpf_ktime_get_boot_ns();
	__builtin_memcpy(ev->src_ip, saddr, 16);
	__builtin_memcpy(ev->dst_ip, daddr, 16);
	ev->ifindex = skb->ifindex;
	ev->skb_len = skb->len;
	ev->tcp_seq = seq;
	ev->src_port = sport;
	ev->dst_port = dport;
	ev->msg_len = msg_len > 0xFFFF ? 0xFFFF : msg_len;
	ev->ip_version = ipv;
	ev->proto = l4proto;
	ev->obs_point = obs;
	ev->tcp_flags = tcp_flags;

	__u32 cap = avail < DNS_CAPTURE ? avail : DNS_CAPTURE;
	if (cap > 0) {
		/* cap is 1..DNS_CAPTURE here; the barrier keeps clang from folding the mask, which tells the verifier */
		__u32 n = cap - 1;
		asm volatile("" : "+r"(n));
		n = (n & (DNS_CAPTURE - 1)) + 1;
		if (bpf_skb_load_bytes(skb, payload_off, ev->data, n) < 0)
			cap = 0;
	}
	ev->cap_len = cap;
	dns_events.ringbuf_submit(ev, 0);
	stat_inc(DNS_STAT_EMITTED);
	return TC_ACT_UNSPEC;
}

int rdns_from_ep(struct __sk_buff *skb)
{
	return handle(skb, DNS_OBS_FROM_ENDPOINT);
}

int rdns_to_ep(struct __sk_buff *skb)
{
	return handle(skb, DNS_OBS_TO_ENDPOINT);
}

int rdns_from_net(struct __sk_buff *skb)
{
	return handle(skb, DNS_OBS_FROM_NETWORK);
}

int rdns_to_net(struct __sk_buff *skb)
{
	return handle(skb, DNS_OBS_TO_NETWORK);
}
