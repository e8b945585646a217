/* packetparser.h — layouts shared by the kernel side (packetparser.bpf.c) and the user side
 * (retina_exporter/plugins/packetparser/layout.py mirrors every struct here; tests check size and offsets).
 *
 * The observation points (OBS_*), directions (DIR_*) and TCP flag bits (TCP_FLAG_*) the structs hold are in
 * common.h, which the program includes first.
 *
 * Byte order: IP addresses in network order (as on the wire), everything else in host order.
 * Times: CLOCK_BOOTTIME nanoseconds (bpf_ktime_get_boot_ns, kernel >= 5.8).
 * IPv4 addresses occupy the first 4 bytes of a 16-byte field; the rest is zero; ip_version says which.
 */
#ifndef RETINA_PACKETPARSER_H
#define RETINA_PACKETPARSER_H

/* Index of each count in packet_event.flag_counts (retina_core.record FLAG_NAMES). */
#define FLAG_IDX_FIN 0
#define FLAG_IDX_SYN 1
#define FLAG_IDX_RST 2
#define FLAG_IDX_PSH 3
#define FLAG_IDX_ACK 4
#define FLAG_IDX_URG 5
#define FLAG_IDX_ECE 6
#define FLAG_IDX_CWR 7
#define FLAG_IDX_NS 8
#define FLAG_IDX_SYNACK 9 /* packets with SYN and ACK both set */
#define FLAG_COUNT 10

/* Why an event was emitted (index into retina_core.record REPORT_REASONS). */
#define REPORT_EVERY_PACKET 0 /* dataAggregationLevel=low */
#define REPORT_NEW 1          /* first packet of a connection (sampled) */
#define REPORT_FLAGS 2        /* SYN, FIN, RST, URG, ECE, CWR or NS in the packet */
#define REPORT_FLAG_CHANGE 3  /* a flag not seen before in this direction (sampled) */
#define REPORT_INTERVAL 4     /* conntrackReportInterval elapsed since the direction's last report */
#define REPORT_CLOSE 5        /* teardown: the final ACK after both FINs, or a packet after the close */
#define REPORT_SWEEP 6        /* user-space sweep of a quiet connection's unreported counts (no packet) */
#define REPORT_EXPIRED 7      /* sweep of an expired entry, just before it is deleted */
#define REPORT_CONNECT 8      /* a connection attempt's outcome without a packet of its own (timeout, sweep) */

/* Connection states kept in ct_entry.state. */
#define CT_STATE_OPEN 0
#define CT_STATE_CLOSING 1 /* FIN seen in both directions */
#define CT_STATE_CLOSED 2  /* final ACK or RST seen */

/* Connection-attempt state (ct_entry.conn_state), tracked in the initiator's entry on the interface where this
 * node saw the attempt's first SYN (its "owner"; tcp_attempts decides): connect latency and failures are counted
 * there only, so each attempt counts once per node however many of the node's interfaces it crosses. */
#define CONN_NONE 0        /* no attempt seen (mid-stream entry), or tracking is off */
#define CONN_SYN_SENT 1    /* SYN seen, no answer yet */
#define CONN_ESTABLISHED 2 /* answered by a SYN-ACK acknowledging the SYN (or a reply without SYN seen) */
#define CONN_RESET 3       /* answered by an RST: failed, reason "reset" */
#define CONN_TIMEOUT 4     /* not answered within tcpMetrics.connectTimeout: failed, reason "timeout" */
#define CONN_ABORTED 5     /* the initiator sent an RST before any answer: not a failure of the responder */
#define CONN_OBSERVER 6    /* the attempt is owned by another interface of this node */

/* packet_event.conn_event: the attempt outcome this event reports (counted once per attempt and node). */
#define CONN_EV_NONE 0
#define CONN_EV_ESTABLISHED 1 /* connect_latency_ns holds SYN -> SYN-ACK */
#define CONN_EV_RESET 2
#define CONN_EV_TIMEOUT 3

/* Node-level TCP connection counters (per-CPU array tcp_stats). The connect-latency histogram's bucket i counts
 * samples <= pp_config.bounds_ns[i] and > the bound before it; bucket n_bounds counts the rest (+Inf). */
#define HIST_MAX_BOUNDS 32
#define TCP_STAT_RESET 0
#define TCP_STAT_TIMEOUT 1
#define TCP_STAT_CONNECT_COUNT 2
#define TCP_STAT_CONNECT_SUM_NS 3
#define TCP_STAT_CONNECT_BUCKET0 4
#define TCP_STAT_SLOTS (TCP_STAT_CONNECT_BUCKET0 + HIST_MAX_BOUNDS + 1)

/* Default lifetimes in nanoseconds (as the reference agents); user space writes them into pp_config. */
#define CT_LIFETIME_TCP_NS (360ULL * 1000000000ULL)
#define CT_SYN_TIMEOUT_NS (60ULL * 1000000000ULL)
#define CT_TIME_WAIT_NS (30ULL * 1000000000ULL)
#define CT_LIFETIME_NONTCP_NS (60ULL * 1000000000ULL)

/* Counters in the lost-event per-CPU array. */
#define LOST_RINGBUF_FULL 0 /* bpf_ringbuf_reserve failed; the counts stay in the entry and ride on a later report */
#define LOST_CT_FULL 1      /* conntrack entry could not be created; the packet is reported without conntrack */
#define LOST_SLOTS 2

/* Conntrack key: the 5-tuple in the direction of the connection's initiator, plus the interface, so that the
 * same packet seen on two interfaces of this node (pod A's veth, then pod B's) is accounted once per
 * observation point. 44 bytes. */
struct ct_key {
	__u8 src_ip[16];  /* 0 */
	__u8 dst_ip[16];  /* 16 */
	__u16 src_port;   /* 32; ICMP echo: the identifier */
	__u16 dst_port;   /* 34; ICMP echo: the identifier */
	__u32 ifindex;    /* 36 */
	__u8 proto;       /* 40 */
	__u8 ip_version;  /* 41: 4 or 6 */
	__u8 _pad[2];     /* 42 */
};

/* Per-direction counts the kernel has not reported yet. Each field is only ever changed with 64-bit atomics
 * (fetch-and-add on the packet path, exchange-with-zero when reported), so no count is lost or reported twice
 * when several CPUs (or the sweep) touch the same entry. The rare flags, which force a report of their own, are
 * packed as eight 8-bit lanes in `rare_flags` (lane = RARE_LANE_*); a lane only holds more than one count while
 * ring-buffer reservations fail. 40 bytes. */
struct ct_counters {
	__u64 bytes;      /* 0 */
	__u64 packets;    /* 8 */
	__u64 ack;        /* 16: packets with ACK */
	__u64 psh;        /* 24: packets with PSH */
	__u64 rare_flags; /* 32: lanes FIN SYN RST URG ECE CWR NS SYNACK */
};

#define RARE_LANE_FIN 0
#define RARE_LANE_SYN 1
#define RARE_LANE_RST 2
#define RARE_LANE_URG 3
#define RARE_LANE_ECE 4
#define RARE_LANE_CWR 5
#define RARE_LANE_NS 6
#define RARE_LANE_SYNACK 7

/* Conntrack entry (LRU hash value). Index 0 of the pairs is the initiator->responder direction, 1 the reply
 * direction. 176 bytes. */
struct ct_entry {
	__u64 eviction_ns;              /* 0: boot ns after which the entry is stale */
	__u64 last_seen_ns;             /* 8 */
	__u64 last_report_ns[2];        /* 16 */
	struct ct_counters unreported[2]; /* 32 */
	__u64 total_bytes[2];           /* 112: cumulative, for conntrack metrics */
	__u64 total_packets[2];         /* 128 */
	__u16 flags_seen[2];            /* 144 */
	__u8 traffic_direction;         /* 148: DIR_* of the connection */
	__u8 direction_unknown;         /* 149: 1 when the handshake was not seen */
	__u8 obs_point[2];              /* 150: observation point of each direction on this interface */
	__u8 state;                     /* 152: CT_STATE_* */
	__u8 _pad[3];                   /* 153 */
	__u32 syn_seq;                  /* 156: the attempt's initial sequence number (host order) */
	__u64 conn_state;               /* 160: CONN_* (64 bits: changed with compare-and-swap, which bcc's
					 * target has for 64-bit words only) */
	__u64 syn_ns;                   /* 168: boot ns of the attempt's first SYN */
};

/* Key of tcp_attempts: one connection attempt on this node (initiator's 5-tuple and its ISN, no interface).
 * The first interface to insert it owns the attempt. 44 bytes. */
struct attempt_key {
	__u8 src_ip[16];  /* 0 */
	__u8 dst_ip[16];  /* 16 */
	__u16 src_port;   /* 32 */
	__u16 dst_port;   /* 34 */
	__u32 isn;        /* 36: host order */
	__u8 ip_version;  /* 40 */
	__u8 _pad[3];     /* 41 */
};

/* One event in the ring buffer. 128 bytes. */
struct packet_event {
	__u64 ts_ns;             /* 0: boot ns */
	__u64 bytes;             /* 8: bytes this event accounts for (this packet + unreported) */
	__u8 src_ip[16];         /* 16: this packet's source (sweep: the direction's source) */
	__u8 dst_ip[16];         /* 32 */
	__u32 packets;           /* 48: packets this event accounts for (>= 1) */
	__u32 ifindex;           /* 52 */
	__u32 packet_bytes;      /* 56: this packet's skb->len; 0 for sweep events */
	__u16 src_port;          /* 60 */
	__u16 dst_port;          /* 62 */
	__u16 tcp_flags;         /* 64: this packet's TCP_FLAG_* bits */
	__u8 proto;              /* 66 */
	__u8 ip_version;         /* 67 */
	__u8 obs_point;          /* 68 */
	__u8 traffic_direction;  /* 69 */
	__u8 is_reply;           /* 70 */
	__u8 report_reason;      /* 71: REPORT_* */
	__u8 icmp_type;          /* 72 */
	__u8 icmp_code;          /* 73 */
	__u8 conn_event;         /* 74: CONN_EV_* */
	__u8 _pad;               /* 75 */
	__u32 flag_counts[FLAG_COUNT]; /* 76: per-flag packet counts over the packets accounted for */
	__u32 _pad2;             /* 116 */
	__u64 connect_latency_ns; /* 120: CONN_EV_ESTABLISHED: first SYN -> SYN-ACK as seen here; else 0 */
};

/* Runtime configuration (array map, index 0), written by user space before attaching. */
struct pp_config {
	__u64 report_interval_ns;  /* 0: conntrackReportInterval */
	__u32 aggregation_high;    /* 8: 0: low (every packet), 1: high (conntrack-gated) */
	__u32 sampling_threshold;  /* 12: a packet is sampled when bpf_get_prandom_u32() <= this (U32_MAX: all) */
	__u64 tcp_lifetime_ns;     /* 16: established TCP entry lifetime after its last packet */
	__u64 syn_timeout_ns;      /* 24: lifetime of a TCP entry that has only seen the handshake start */
	__u64 time_wait_ns;        /* 32: lifetime after both FINs or an RST */
	__u64 nontcp_lifetime_ns;  /* 40: UDP, ICMP and other protocols */
	__u32 filter_enabled;      /* 48: 1: only packets with an address in retina_filter are tracked/reported */
	__u32 conn_enabled;        /* 52: 1: track connection attempts (connect latency, failed connections) */
	__u32 n_bounds;            /* 56: connect-latency histogram bounds in use, 0..HIST_MAX_BOUNDS */
	__u32 _pad;                /* 60 */
	__u64 bounds_ns[HIST_MAX_BOUNDS]; /* 64: ascending upper bounds (ns) */
};

/* Key of the IP-of-interest LPM trie (retina_filter). Addresses are IPv6 or IPv4-mapped IPv6
 * (::ffff:a.b.c.d), so one trie holds both families: an IPv4 /32 is prefixlen 128, an IPv4 /24 is 120. */
struct filter_key {
	__u32 prefixlen; /* 0: bits of ip that must match, 0..128 */
	__u8 ip[16];     /* 4: network order */
};

/* Input of the ct_sweep program (run through BPF_PROG_TEST_RUN), after a 14-byte dummy Ethernet header. */
struct sweep_request {
	struct ct_key key; /* 0 */
	__u32 flags;       /* 44: SWEEP_F_* */
};

#define SWEEP_F_EXPIRE 1 /* delete the entry if it is past its eviction time (after harvesting) */
#define SWEEP_F_CONNECT_TIMEOUT 2 /* the attempt was not answered in time: count it as failed (timeout) */

/* ct_sweep return values (>= 0: events emitted) */
#define SWEEP_RET_NO_ENTRY 0xff00
#define SWEEP_RET_RINGBUF_FULL 0xff01
#define SWEEP_RET_BAD_REQUEST 0xff02

#endif /* RETINA_PACKETPARSER_H */
