/* tcpretrans.h — layouts shared by bpf/tcpretrans.bpf.c and retina_exporter/plugins/tcpretrans/layout.py (which
 * mirrors them; the lab tests decode real events with it).
 *
 * Byte order: addresses in network order, ports and everything else in host order. Times: CLOCK_BOOTTIME ns.
 */
#ifndef RETINA_TCPRETRANS_H
#define RETINA_TCPRETRANS_H

#define RT_KIND_SKB 0    /* tcp:tcp_retransmit_skb (data, SYN, FIN retransmissions) */
#define RT_KIND_SYNACK 1 /* tcp:tcp_retransmit_synack (a listener's SYN-ACK for a request socket) */

/* Per-CPU statistics slots (rt_stats). */
#define RT_STAT_EVENTS 0       /* retransmissions counted (in scope, really sent) */
#define RT_STAT_SEGMENTS 1     /* segments they carried (tcp_skb_pcount; 1 without kernel BTF) */
#define RT_STAT_NOT_SENT 2     /* tcp_retransmit_skb calls that gave up before sending (err EBUSY/ENOMEM/EAGAIN) */
#define RT_STAT_OUT_OF_SCOPE 3 /* retransmissions in a network namespace outside the filter */
#define RT_STAT_RINGBUF_FULL 4 /* events lost: bpf_ringbuf_reserve failed (counts above are unaffected) */
#define RT_STAT_SYNACK 5       /* of RT_STAT_EVENTS: SYN-ACK retransmissions */
#define RT_STAT_SLOTS 6

/* Runtime configuration (array map rt_config, index 0). */
struct rt_config {
	__u32 filter_netns; /* 0: every namespace; 1: only namespaces in netns_filter */
	__u32 emit_events;  /* 1: write an event per retransmission to the ring buffer (pod level) */
};

/* One retransmission. 64 bytes. */
struct rt_event {
	__u64 ts_ns;      /* 0: boot ns */
	__u8 saddr[16];   /* 8: IPv4 in the first 4 bytes, rest zero */
	__u8 daddr[16];   /* 24 */
	__u32 netns;      /* 40: inode of the socket's network namespace (0: unknown) */
	__s32 err;        /* 44: the tracepoint's err (0 for SYN-ACKs) */
	__u16 sport;      /* 48 */
	__u16 dport;      /* 50 */
	__u16 segs;       /* 52: segments retransmitted (>= 1) */
	__u8 ip_version;  /* 54: 4 or 6 */
	__u8 state;       /* 55: the socket's TCP state (TCP_ESTABLISHED = 1 ...), 0 for SYN-ACKs */
	__u8 kind;        /* 56: RT_KIND_* */
	__u8 tcp_flags;   /* 57: TCP flags of the retransmitted segment (tcp_skb_cb; 0 without kernel BTF) */
	__u8 _pad[6];     /* 58 */
};

#endif /* RETINA_TCPRETRANS_H */
