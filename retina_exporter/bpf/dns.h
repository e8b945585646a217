/* dns.h — layouts shared by bpf/dns.bpf.c and retina_exporter/plugins/dns/layout.py (which mirrors them; the lab
 * tests decode real events with it, tests/test_dns_processor.py checks the sizes).
 *
 * Observation points are common.h's OBS_*.
 *
 * Byte order: addresses in network order (as on the wire), everything else in host order.
 * Times: CLOCK_BOOTTIME nanoseconds (bpf_ktime_get_boot_ns, kernel >= 5.8).
 */
#ifndef RETINA_DNS_H
#define RETINA_DNS_H

#ifndef DNS_CAPTURE
#define DNS_CAPTURE 512 /* bytes of L4 payload copied per packet (a power of two) */
#endif

/* Per-CPU statistics slots (dns_stats). */
#define DNS_STAT_EMITTED 0      /* events written to the ring buffer */
#define DNS_STAT_RINGBUF_FULL 1 /* events lost: bpf_ringbuf_reserve failed */
#define DNS_STAT_SEEN_EARLIER 2 /* port-53 packets at a TO_* point that a FROM_* hook of ours already saw */
#define DNS_STAT_NO_PAYLOAD 3   /* TCP port-53 segments without payload and without SYN, not reported */
#define DNS_STAT_SLOTS 4

/* Set in obs_point on a packet from port 53 at a TO_* point that one of our FROM_* hooks already reported: the
 * response as it leaves toward its client (after the node's reverse NAT). Not counted: user space uses it only
 * to match the response to its query (DNS latency through a Service VIP or SNAT). */
#define DNS_OBS_LATENCY_ONLY 0x80

/* One port-53 packet at its first observation point on this node (UDP: every datagram; TCP: segments with
 * payload, and SYNs), or a response again where it leaves toward its client (DNS_OBS_LATENCY_ONLY).
 * 64 + DNS_CAPTURE bytes. */
struct dns_event {
	__u64 ts_ns;       /* 0: boot ns */
	__u8 src_ip[16];   /* 8: IPv4 in the first 4 bytes, rest zero */
	__u8 dst_ip[16];   /* 24 */
	__u32 ifindex;     /* 40: interface of the hook */
	__u32 skb_len;     /* 44: skb->len (the frame without FCS) */
	__u32 tcp_seq;     /* 48: TCP sequence number of the payload's first byte (0 for UDP) */
	__u16 src_port;    /* 52 */
	__u16 dst_port;    /* 54 */
	__u16 msg_len;     /* 56: L4 payload length on the wire (UDP: from the UDP header; clamped to 65535) */
	__u16 cap_len;     /* 58: bytes of it in data[] (<= DNS_CAPTURE) */
	__u8 ip_version;   /* 60: 4 or 6 */
	__u8 proto;        /* 61: IPPROTO_UDP or IPPROTO_TCP */
	__u8 obs_point;    /* 62: OBS_* (common.h), | DNS_OBS_LATENCY_ONLY */
	__u8 tcp_flags;    /* 63: the TCP header's flag byte (0 for UDP) */
	__u8 data[DNS_CAPTURE]; /* 64: the L4 payload's first cap_len bytes (TCP: starting with the length prefix) */
};

#endif /* RETINA_DNS_H */
