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
 *   Exception, not counted: a packet *from* port 53 that was seen earlier is reported again at TO_* with
 *   DNS_OBS_LATENCY_ONLY in obs_point -- the response as its client gets it (a Service VIP's reverse DNAT or the
 *   SNAT undone), which user space matches to the query as the client sent it.
 *
 * Compiled at run time by bcc (retina_exporter/plugins/dns/loader.py) with -DRINGBUF_PAGES=<n>
 * -DSEEN_MAP_SIZE=<n>. Only uapi structs (__sk_buff) are used. Kernel >= 5.8 (ring buffer).
 */
#include "common.h"
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
	struct l3_info l3;
	__u8 saddr[16] = {};
	__u8 daddr[16] = {};

	if (parse_l3(skb, saddr, daddr, &l3) < 0)
		return TC_ACT_UNSPEC;
	if (l3.later_fragment)
		return TC_ACT_UNSPEC; /* a later fragment: no L4 header */
	__u32 off = l3.l4_off;
	__u32 ip_end = l3.ip_end;
	__u8 l4proto = l3.l4proto;
	__u8 ipv = l3.ip_version;

	__u8 hdr[14]; /* ports (4), UDP length or TCP seq (4), ack (4), data offset (1), flags (1) */
	__u32 payload_off;
	__u32 msg_len;
	__u32 seq = 0;
	__u8 tcp_flags = 0;
	/* The L4 header must lie within the IP packet (not in padding after it); a TCP data offset below 5 puts the
	 * "payload" inside the header. */
	if (l4proto == IPPROTO_UDP) {
		if (off + 8 > ip_end || bpf_skb_load_bytes(skb, off, hdr, 8) < 0)
			return TC_ACT_UNSPEC;
	} else if (l4proto == IPPROTO_TCP) {
		if (off + 14 > ip_end || bpf_skb_load_bytes(skb, off, hdr, 14) < 0 || (hdr[12] >> 4) < 5)
			return TC_ACT_UNSPEC;
	} else {
		return TC_ACT_UNSPEC;
	}
	__u16 sport = ((__u16)hdr[0] << 8) | hdr[1];
	__u16 dport = ((__u16)hdr[2] << 8) | hdr[3];
	if (sport != DNS_PORT && dport != DNS_PORT)
		return TC_ACT_UNSPEC;

	if (obs == OBS_TO_ENDPOINT || obs == OBS_TO_NETWORK) {
		__u32 iif = skb->ingress_ifindex;
		if (iif && seen_ifindex.lookup(&iif)) {
			stat_inc(DNS_STAT_SEEN_EARLIER);
			if (sport != DNS_PORT)
				return TC_ACT_UNSPEC;
			/* A response leaving toward its client, after the node's reverse NAT: reported for latency
			 * matching only (user space does not count it). */
			obs |= DNS_OBS_LATENCY_ONLY;
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
		if (msg_len == 0 && !(tcp_flags & TCP_FLAG_SYN)) {
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

/* rdns_from_ep, rdns_to_ep, rdns_from_net, rdns_to_net */
TC_OBS_CLASSIFIERS(rdns_, handle)
