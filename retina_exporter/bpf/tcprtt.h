/* tcprtt.h — layouts shared by bpf/tcprtt.bpf.c and retina_exporter/bpf/tcprtt.py (its mirror;
 * tests/test_bpf_layouts.py pins them).
 *
 * Byte order: addresses in network order, ports and everything else in host order. Times: CLOCK_BOOTTIME ns.
 */
#ifndef RETINA_TCPRTT_H
#define RETINA_TCPRTT_H

#define RTT_HIST_MAX_BOUNDS 32

/* Per-CPU statistics slots (rtt_stats). The histogram's bucket i counts samples <= rtt_config.bounds_ns[i] and
 * > the bound before it; bucket n_bounds counts the rest (+Inf). */
#define RTT_STAT_SAMPLES 0      /* samples taken (in scope, due) */
#define RTT_STAT_SUM_NS 1       /* their sum, ns */
#define RTT_STAT_OUT_OF_SCOPE 2 /* tcp_probe hits in a network namespace outside the filter */
#define RTT_STAT_RINGBUF_FULL 3 /* sample events lost: bpf_ringbuf_reserve failed (the histogram has them) */
#define RTT_STAT_BUCKET0 4
#define RTT_STAT_SLOTS (RTT_STAT_BUCKET0 + RTT_HIST_MAX_BOUNDS + 1)

/* Runtime configuration (array map rtt_config, index 0). */
struct rtt_config {
	__u64 interval_ns;   /* 0: at most one sample per socket (sock_cookie) in this interval */
	__u32 filter_netns;  /* 8: 0: every namespace; 1: only namespaces in rtt_netns (needs OFF_SK_NET) */
	__u32 emit_events;   /* 12: 1: write each sample to the ring buffer (pod level) */
	__u32 n_bounds;      /* 16: histogram bounds in use, 0..RTT_HIST_MAX_BOUNDS */
	__u32 _pad;          /* 20 */
	__u64 bounds_ns[RTT_HIST_MAX_BOUNDS]; /* 24: ascending upper bounds (ns) */
};

/* One RTT sample of one socket. 56 bytes. */
struct rtt_event {
	__u64 ts_ns;      /* 0: boot ns */
	__u8 saddr[16];   /* 8: the socket's own address; IPv4 in the first 4 bytes, rest zero */
	__u8 daddr[16];   /* 24: its peer's */
	__u32 srtt_us;    /* 40: the kernel's smoothed RTT (tcp_sock.srtt_us >> 3), microseconds */
	__u16 sport;      /* 44 */
	__u16 dport;      /* 46 */
	__u8 ip_version;  /* 48: 4 or 6 */
	__u8 _pad[7];     /* 49 */
};

#endif /* RETINA_TCPRTT_H */
