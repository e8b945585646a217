/* packetparser.bpf.c — TC programs that parse packets, track connections and report flows.
 *
 * Four classifiers, one per observation point (retina_from_ep, retina_to_ep, retina_from_net, retina_to_net),
 * each returning TC_ACT_UNSPEC ("no verdict": the packet continues as if we were not there), and retina_ct_sweep, which
 * is never attached: user space runs it with BPF_PROG_TEST_RUN to harvest a quiet connection's unreported counts
 * atomically and to delete expired entries.
 *
 * Compiled at run time by bcc (see retina_exporter/plugins/packetparser/loader.py) with
 *   -DCT_MAP_SIZE=<conntrackMapSize> -DRINGBUF_PAGES=<packetParserRingBufferSize / 4096>
 * Kernel minimums: ring buffer 5.8, bpf_ktime_get_boot_ns 5.8. Only uapi structs (__sk_buff) are used.
 *
 * Accounting rule: every IPv4/IPv6 packet that reaches a hook is added to exactly one event (its own, or a later
 * one as "previously observed", or a sweep event), so sums over events equal the interface counters.
 * Packets whose L3 header cannot be read (not IP, truncated IP header, bad IHL/version) are not flows and are
 * not counted; packets with an unreadable L4 header (truncated, non-first fragment) are counted with ports 0.
 */
#include "common.h"
#include "packetparser.h"
#include "histogram.h"

#ifndef CT_MAP_SIZE
#define CT_MAP_SIZE 262144
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 2048
#endif
#ifndef FILTER_MAP_SIZE
#define FILTER_MAP_SIZE 4096
#endif
#ifndef ATTEMPT_MAP_SIZE
#define ATTEMPT_MAP_SIZE 65536
#endif

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_TABLE("lru_hash", struct ct_key, struct ct_entry, conntrack, CT_MAP_SIZE);
BPF_ARRAY(config, struct pp_config, 1);
BPF_PERCPU_ARRAY(lost, __u64, LOST_SLOTS);
/* Connection attempts (pp_config.conn_enabled): which interface owns each (see CONN_* in packetparser.h). */
BPF_TABLE("lru_hash", struct attempt_key, __u32, tcp_attempts, ATTEMPT_MAP_SIZE);
BPF_PERCPU_ARRAY(tcp_stats, __u64, TCP_STAT_SLOTS);
/* IPs of interest (filled by user space from annotations); consulted only when pp_config.filter_enabled. */
BPF_F_TABLE("lpm_trie", struct filter_key, __u8, retina_filter, FILTER_MAP_SIZE, BPF_F_NO_PREALLOC);

struct parsed {
	struct ct_key key;   /* as seen in this packet (not yet oriented to the initiator) */
	__u32 len;
	__u32 seq;           /* TCP sequence and acknowledgement numbers, host order */
	__u32 ack;
	__u16 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 has_l4;
};

static __always_inline void count_lost(__u32 slot)
{
	__u64 *v = lost.lookup(&slot);
	if (v)
		*v += 1; /* per-CPU: no atomics needed */
}

/* Parse Ethernet and IP (parse_l3, common.h), then TCP/UDP/ICMP/ICMPv6.
 * Returns 0 when the packet is an IP packet, -1 otherwise. */
static __always_inline int parse(struct __sk_buff *skb, struct parsed *p)
{
	struct l3_info l3;
	if (parse_l3(skb, p->key.src_ip, p->key.dst_ip, &l3) < 0)
		return -1;
	__u32 off = l3.l4_off;
	__u8 l4proto = l3.l4proto;
	p->key.ip_version = l3.ip_version;
	p->key.proto = l4proto;
	p->len = skb->len;
	if (l3.later_fragment)
		return 0;
	__u32 end = l3.ip_end; /* L4 headers must lie within the IP packet, not in padding after it */

	if (l4proto == IPPROTO_TCP) {
		__u8 hdr[14]; /* ports (4), seq (4), ack (4), data offset + NS (1), flags (1) */
		if (off + sizeof(hdr) > end || bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return 0;
		p->key.src_port = ((__u16)hdr[0] << 8) | hdr[1];
		p->key.dst_port = ((__u16)hdr[2] << 8) | hdr[3];
		p->tcp_flags = hdr[13] | (((__u16)hdr[12] & 1) << 8);
		p->seq = ((__u32)hdr[4] << 24) | ((__u32)hdr[5] << 16) | ((__u32)hdr[6] << 8) | hdr[7];
		p->ack = ((__u32)hdr[8] << 24) | ((__u32)hdr[9] << 16) | ((__u32)hdr[10] << 8) | hdr[11];
		p->has_l4 = 1;
	} else if (l4proto == IPPROTO_UDP) {
		__u8 hdr[4];
		if (off + sizeof(hdr) > end || bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return 0;
		p->key.src_port = ((__u16)hdr[0] << 8) | hdr[1];
		p->key.dst_port = ((__u16)hdr[2] << 8) | hdr[3];
		p->has_l4 = 1;
	} else if (l4proto == IPPROTO_ICMP || l4proto == IPPROTO_ICMPV6) {
		__u8 hdr[8]; /* type, code, checksum, identifier, sequence */
		if (off + 2 > end || bpf_skb_load_bytes(skb, off, hdr, 2) < 0)
			return 0;
		p->icmp_type = hdr[0];
		p->icmp_code = hdr[1];
		p->has_l4 = 1;
		/* Echo request/reply: key on the identifier so that a ping and its replies form one connection. */
		if (hdr[0] == 8 || hdr[0] == 0 || hdr[0] == 128 || hdr[0] == 129) {
			if (off + sizeof(hdr) <= end && bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) == 0) {
				__u16 id = ((__u16)hdr[4] << 8) | hdr[5];
				p->key.src_port = id;
				p->key.dst_port = id;
			}
		}
	}
	return 0;
}

static __always_inline void reverse_key(struct ct_key *dst, const struct ct_key *src)
{
	__builtin_memcpy(dst->src_ip, src->dst_ip, 16);
	__builtin_memcpy(dst->dst_ip, src->src_ip, 16);
	dst->src_port = src->dst_port;
	dst->dst_port = src->src_port;
	dst->ifindex = src->ifindex;
	dst->proto = src->proto;
	dst->ip_version = src->ip_version;
	dst->_pad[0] = 0;
	dst->_pad[1] = 0;
}

static __always_inline __u8 direction_of(__u8 obs_point)
{
	return (obs_point == OBS_FROM_ENDPOINT || obs_point == OBS_TO_NETWORK) ? DIR_EGRESS : DIR_INGRESS;
}

/* The observation point on the same interface in the other direction. */
static __always_inline __u8 opposite_point(__u8 obs_point)
{
	switch (obs_point) {
	case OBS_FROM_ENDPOINT:
		return OBS_TO_ENDPOINT;
	case OBS_TO_ENDPOINT:
		return OBS_FROM_ENDPOINT;
	case OBS_FROM_NETWORK:
		return OBS_TO_NETWORK;
	default:
		return OBS_FROM_NETWORK;
	}
}

static __always_inline __u64 rare_lanes(__u16 flags)
{
	__u64 v = 0;
	if (flags & TCP_FLAG_FIN)
		v += 1ULL << (8 * RARE_LANE_FIN);
	if (flags & TCP_FLAG_SYN)
		v += 1ULL << (8 * RARE_LANE_SYN);
	if (flags & TCP_FLAG_RST)
		v += 1ULL << (8 * RARE_LANE_RST);
	if (flags & TCP_FLAG_URG)
		v += 1ULL << (8 * RARE_LANE_URG);
	if (flags & TCP_FLAG_ECE)
		v += 1ULL << (8 * RARE_LANE_ECE);
	if (flags & TCP_FLAG_CWR)
		v += 1ULL << (8 * RARE_LANE_CWR);
	if (flags & TCP_FLAG_NS)
		v += 1ULL << (8 * RARE_LANE_NS);
	if ((flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK))
		v += 1ULL << (8 * RARE_LANE_SYNACK);
	return v;
}

static __always_inline void add_counts(struct ct_counters *c, __u32 len, __u16 flags)
{
	__sync_fetch_and_add(&c->bytes, len);
	__sync_fetch_and_add(&c->packets, 1);
	if (flags & TCP_FLAG_ACK)
		__sync_fetch_and_add(&c->ack, 1);
	if (flags & TCP_FLAG_PSH)
		__sync_fetch_and_add(&c->psh, 1);
	__u64 lanes = rare_lanes(flags);
	if (lanes)
		__sync_fetch_and_add(&c->rare_flags, lanes);
}

/* Move a direction's unreported counts into an event (atomically exchanged with zero).
 * Returns the number of packets taken. */
static __always_inline __u64 harvest(struct ct_counters *c, struct packet_event *e)
{
	__u64 pkts = __sync_lock_test_and_set(&c->packets, 0);
	__u64 bytes = __sync_lock_test_and_set(&c->bytes, 0);
	__u64 ack = c->ack ? __sync_lock_test_and_set(&c->ack, 0) : 0;
	__u64 psh = c->psh ? __sync_lock_test_and_set(&c->psh, 0) : 0;
	__u64 rare = c->rare_flags ? __sync_lock_test_and_set(&c->rare_flags, 0) : 0;
	e->packets = pkts;
	e->bytes = bytes;
	e->flag_counts[FLAG_IDX_ACK] = ack;
	e->flag_counts[FLAG_IDX_PSH] = psh;
	e->flag_counts[FLAG_IDX_FIN] = (rare >> (8 * RARE_LANE_FIN)) & 0xff;
	e->flag_counts[FLAG_IDX_SYN] = (rare >> (8 * RARE_LANE_SYN)) & 0xff;
	e->flag_counts[FLAG_IDX_RST] = (rare >> (8 * RARE_LANE_RST)) & 0xff;
	e->flag_counts[FLAG_IDX_URG] = (rare >> (8 * RARE_LANE_URG)) & 0xff;
	e->flag_counts[FLAG_IDX_ECE] = (rare >> (8 * RARE_LANE_ECE)) & 0xff;
	e->flag_counts[FLAG_IDX_CWR] = (rare >> (8 * RARE_LANE_CWR)) & 0xff;
	e->flag_counts[FLAG_IDX_NS] = (rare >> (8 * RARE_LANE_NS)) & 0xff;
	e->flag_counts[FLAG_IDX_SYNACK] = (rare >> (8 * RARE_LANE_SYNACK)) & 0xff;
	return pkts;
}

static __always_inline void zero_event_tail(struct packet_event *e)
{
	e->conn_event = CONN_EV_NONE;
	e->_pad = 0;
	e->_pad2 = 0;
	e->connect_latency_ns = 0;
}

static __always_inline void stat_add(__u32 slot, __u64 n)
{
	__u64 *v = tcp_stats.lookup(&slot);
	if (v)
		*v += n; /* per-CPU: no atomics needed */
}

/* Move the attempt from CONN_SYN_SENT to `to`; true for exactly one caller (packet path or sweep). */
static __always_inline int conn_settle(struct ct_entry *e, __u64 to)
{
	return __sync_val_compare_and_swap(&e->conn_state, CONN_SYN_SENT, to) == CONN_SYN_SENT;
}

/* The tcp_attempts key of the attempt with initial sequence number `isn` on the entry keyed `ck` (initiator's
 * direction). */
static __always_inline void attempt_key_of(struct attempt_key *k, const struct ct_key *ck, __u32 isn)
{
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->src_ip, ck->src_ip, 16);
	__builtin_memcpy(k->dst_ip, ck->dst_ip, 16);
	k->src_port = ck->src_port;
	k->dst_port = ck->dst_port;
	k->isn = isn;
	k->ip_version = ck->ip_version;
}

/* Remove the entry's attempt from tcp_attempts when this entry owns it (its SYN was first seen here), so the map
 * holds only attempts whose owner entry is alive. An observer's entry leaves it: the owner's may still be alive,
 * and a SYN retransmitted there must not elect a second owner. */
static __always_inline void forget_attempt(struct ct_entry *e, const struct ct_key *ck)
{
	__u64 state = e->conn_state;
	if (state == CONN_NONE || state == CONN_OBSERVER)
		return;
	struct attempt_key k;
	attempt_key_of(&k, ck, e->syn_seq);
	tcp_attempts.delete(&k);
}

/* Connection-attempt tracking for one TCP packet of a tracked entry (pp_config.conn_enabled). Returns the
 * CONN_EV_* outcome this packet settles (counted here, once per attempt and node) and sets *latency_ns for
 * CONN_EV_ESTABLISHED. Costs nothing but a field read on packets of an entry that is not in CONN_SYN_SENT,
 * except a SYN without ACK (one tcp_attempts update). */
static __always_inline __u8 track_connect(struct ct_entry *e, struct parsed *p, __u8 dir, __u64 now,
					  struct pp_config *cfg, __u64 *latency_ns)
{
	__u16 f = p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST);
	if (dir == 0) {
		if (f == TCP_FLAG_SYN) {
			if (e->conn_state != CONN_NONE && e->syn_seq == p->seq)
				return CONN_EV_NONE; /* a retransmission of this attempt's SYN */
			/* A new attempt on the same 5-tuple while the previous one is unanswered: that one was given up
			 * without an answer, a failure (timeout) that this SYN's event reports. */
			__u8 ev = CONN_EV_NONE;
			if (e->conn_state == CONN_SYN_SENT && conn_settle(e, CONN_TIMEOUT)) {
				stat_add(TCP_STAT_TIMEOUT, 1);
				ev = CONN_EV_TIMEOUT;
			}
			forget_attempt(e, &p->key); /* the entry's previous attempt on this 5-tuple, if it owned one */
			struct attempt_key k;
			attempt_key_of(&k, &p->key, p->seq);
			__u32 ifindex = p->key.ifindex;
			int owner = tcp_attempts.insert(&k, &ifindex) == 0; /* BPF_NOEXIST: the first interface wins */
			e->syn_seq = p->seq;
			e->syn_ns = now;
			e->conn_state = owner ? CONN_SYN_SENT : CONN_OBSERVER;
			return ev;
		} else if ((f & TCP_FLAG_RST) && e->conn_state == CONN_SYN_SENT) {
			conn_settle(e, CONN_ABORTED);
		}
		return CONN_EV_NONE;
	}
	if (e->conn_state != CONN_SYN_SENT)
		return CONN_EV_NONE;
	if (f == (TCP_FLAG_SYN | TCP_FLAG_ACK)) {
		if (p->ack != e->syn_seq + 1 || !conn_settle(e, CONN_ESTABLISHED))
			return CONN_EV_NONE;
		__u64 lat = now - e->syn_ns;
		__u32 n = cfg->n_bounds;
		stat_add(TCP_STAT_CONNECT_COUNT, 1);
		stat_add(TCP_STAT_CONNECT_SUM_NS, lat);
		stat_add(TCP_STAT_CONNECT_BUCKET0 + hist_bucket(cfg->bounds_ns, n, lat), 1);
		*latency_ns = lat;
		return CONN_EV_ESTABLISHED;
	}
	if (f & TCP_FLAG_RST) {
		if ((f & TCP_FLAG_ACK) && p->ack != e->syn_seq + 1)
			return CONN_EV_NONE; /* not an answer to this SYN (RFC 9293 3.10.7.3) */
		if (!conn_settle(e, CONN_RESET))
			return CONN_EV_NONE;
		stat_add(TCP_STAT_RESET, 1);
		return CONN_EV_RESET;
	}
	/* Any other reply: the handshake's SYN-ACK took a path this node does not see; no latency, no failure. */
	conn_settle(e, CONN_ESTABLISHED);
	return CONN_EV_NONE;
}

/* Report this packet (and the direction's unreported counts). Returns 0 on success. */
static __always_inline int report_packet(struct parsed *p, struct ct_counters *c, __u64 now, __u8 obs_point,
					 __u8 traffic_direction, __u8 is_reply, __u8 reason, __u8 conn_event,
					 __u64 latency_ns)
{
	struct packet_event *e = events.ringbuf_reserve(sizeof(struct packet_event));
	if (!e) {
		count_lost(LOST_RINGBUF_FULL);
		return -1;
	}
	if (harvest(c, e) == 0 && conn_event == CONN_EV_NONE) {
		/* Another CPU reported our packet together with its own: nothing left to say. */
		events.ringbuf_discard(e, 0);
		return 0;
	}
	e->ts_ns = now;
	__builtin_memcpy(e->src_ip, p->key.src_ip, 16);
	__builtin_memcpy(e->dst_ip, p->key.dst_ip, 16);
	e->ifindex = p->key.ifindex;
	e->packet_bytes = p->len;
	e->src_port = p->key.src_port;
	e->dst_port = p->key.dst_port;
	e->tcp_flags = p->tcp_flags;
	e->proto = p->key.proto;
	e->ip_version = p->key.ip_version;
	e->obs_point = obs_point;
	e->traffic_direction = traffic_direction;
	e->is_reply = is_reply;
	e->report_reason = reason;
	e->icmp_type = p->icmp_type;
	e->icmp_code = p->icmp_code;
	zero_event_tail(e);
	e->conn_event = conn_event;
	e->connect_latency_ns = latency_ns;
	events.ringbuf_submit(e, 0);
	return 0;
}

/* Report a packet that has no conntrack entry (the map could not take one): exact on its own. */
static __always_inline void report_untracked(struct parsed *p, __u64 now, __u8 obs_point)
{
	struct packet_event *e = events.ringbuf_reserve(sizeof(struct packet_event));
	if (!e) {
		count_lost(LOST_RINGBUF_FULL);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = now;
	__builtin_memcpy(e->src_ip, p->key.src_ip, 16);
	__builtin_memcpy(e->dst_ip, p->key.dst_ip, 16);
	e->packets = 1;
	e->bytes = p->len;
	e->ifindex = p->key.ifindex;
	e->packet_bytes = p->len;
	e->src_port = p->key.src_port;
	e->dst_port = p->key.dst_port;
	e->tcp_flags = p->tcp_flags;
	e->proto = p->key.proto;
	e->ip_version = p->key.ip_version;
	e->obs_point = obs_point;
	e->traffic_direction = direction_of(obs_point);
	e->is_reply = 0;
	e->report_reason = REPORT_NEW;
	e->icmp_type = p->icmp_type;
	e->icmp_code = p->icmp_code;
	if (p->tcp_flags & TCP_FLAG_FIN) e->flag_counts[FLAG_IDX_FIN] = 1;
	if (p->tcp_flags & TCP_FLAG_SYN) e->flag_counts[FLAG_IDX_SYN] = 1;
	if (p->tcp_flags & TCP_FLAG_RST) e->flag_counts[FLAG_IDX_RST] = 1;
	if (p->tcp_flags & TCP_FLAG_PSH) e->flag_counts[FLAG_IDX_PSH] = 1;
	if (p->tcp_flags & TCP_FLAG_ACK) e->flag_counts[FLAG_IDX_ACK] = 1;
	if (p->tcp_flags & TCP_FLAG_URG) e->flag_counts[FLAG_IDX_URG] = 1;
	if (p->tcp_flags & TCP_FLAG_ECE) e->flag_counts[FLAG_IDX_ECE] = 1;
	if (p->tcp_flags & TCP_FLAG_CWR) e->flag_counts[FLAG_IDX_CWR] = 1;
	if (p->tcp_flags & TCP_FLAG_NS) e->flag_counts[FLAG_IDX_NS] = 1;
	if ((p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK))
		e->flag_counts[FLAG_IDX_SYNACK] = 1;
	events.ringbuf_submit(e, 0);
}

/* True when the address (ip_version 4: first 4 bytes; 6: all 16) is in the IP-of-interest trie. */
static __always_inline int of_interest(const __u8 *ip, __u8 ip_version)
{
	struct filter_key k = {.prefixlen = 128};
	if (ip_version == 4) {
		k.ip[10] = 0xff;
		k.ip[11] = 0xff;
		__builtin_memcpy(&k.ip[12], ip, 4);
	} else {
		__builtin_memcpy(k.ip, ip, 16);
	}
	return retina_filter.lookup(&k) != NULL;
}

static __always_inline int process(struct __sk_buff *skb, __u8 obs_point)
{
	struct parsed p = {};
	if (parse(skb, &p) < 0)
		return TC_ACT_UNSPEC;
	p.key.ifindex = skb->ifindex;

	__u32 zero = 0;
	struct pp_config *cfg = config.lookup(&zero);
	if (!cfg)
		return TC_ACT_UNSPEC;
	/* Annotation opt-in: traffic with no address of interest costs a trie lookup and nothing more. */
	if (cfg->filter_enabled && !of_interest(p.key.src_ip, p.key.ip_version) &&
	    !of_interest(p.key.dst_ip, p.key.ip_version))
		return TC_ACT_UNSPEC;
	__u64 now = bpf_ktime_get_boot_ns();
	int sampled = bpf_get_prandom_u32() <= cfg->sampling_threshold;
	int is_tcp = p.key.proto == IPPROTO_TCP && p.has_l4;
	__u16 flags = p.tcp_flags;

	struct ct_key rkey;
	__u8 is_reply = 0;
	__u8 reason = REPORT_INTERVAL;
	int force = 0;
	__u8 conn_event = CONN_EV_NONE;
	__u64 latency_ns = 0;
	struct ct_entry *e = conntrack.lookup(&p.key);
	if (!e) {
		reverse_key(&rkey, &p.key);
		e = conntrack.lookup(&rkey);
		if (e)
			is_reply = 1;
	}

	if (!e) {
		/* A new connection. Orientation: a SYN-ACK, or a mid-stream packet with ACK, is a reply to a
		 * connection we did not see open; the entry is keyed in the initiator's direction. */
		struct ct_entry n = {};
		int as_reply = 0;
		if (is_tcp) {
			if ((flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN) {
				n.eviction_ns = now + cfg->syn_timeout_ns;
			} else if ((flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK)) {
				as_reply = 1;
				n.eviction_ns = now + cfg->syn_timeout_ns;
			} else {
				n.direction_unknown = 1;
				as_reply = (flags & TCP_FLAG_ACK) ? 1 : 0;
				n.eviction_ns = now + cfg->tcp_lifetime_ns;
			}
		} else {
			n.eviction_ns = now + cfg->nontcp_lifetime_ns;
		}
		__u8 pkt_dir = direction_of(obs_point);
		n.traffic_direction = as_reply ? (pkt_dir == DIR_EGRESS ? DIR_INGRESS : DIR_EGRESS) : pkt_dir;
		if (as_reply) {
			n.obs_point[1] = obs_point;
			n.obs_point[0] = opposite_point(obs_point);
		} else {
			n.obs_point[0] = obs_point;
			n.obs_point[1] = opposite_point(obs_point);
		}
		n.last_seen_ns = now;
		n.last_report_ns[0] = now;
		n.last_report_ns[1] = now;
		struct ct_key *k = &p.key;
		if (as_reply) {
			reverse_key(&rkey, &p.key);
			k = &rkey;
		}
		if (conntrack.update(k, &n) != 0) {
			/* Created by another CPU meanwhile, or no room: try once more, else report untracked. */
			e = conntrack.lookup(k);
			if (!e) {
				count_lost(LOST_CT_FULL);
				report_untracked(&p, now, obs_point);
				return TC_ACT_UNSPEC;
			}
		} else {
			e = conntrack.lookup(k);
			if (!e) {
				count_lost(LOST_CT_FULL);
				report_untracked(&p, now, obs_point);
				return TC_ACT_UNSPEC;
			}
			if (sampled) {
				force = 1;
				reason = REPORT_NEW;
			}
		}
		is_reply = as_reply;
	}

	__u8 dir = is_reply ? 1 : 0;
	struct ct_counters *c = &e->unreported[dir & 1];
	add_counts(c, p.len, flags);
	__sync_fetch_and_add(&e->total_bytes[dir & 1], p.len);
	__sync_fetch_and_add(&e->total_packets[dir & 1], 1);
	e->last_seen_ns = now;

	if (is_tcp) {
		__u16 seen = e->flags_seen[dir & 1];
		if (flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST | TCP_FLAG_URG | TCP_FLAG_ECE | TCP_FLAG_CWR |
			     TCP_FLAG_NS)) {
			if (!force)
				reason = REPORT_FLAGS;
			force = 1;
		}
		if ((flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN && e->state != CT_STATE_OPEN && dir == 0) {
			/* The 5-tuple is reused by a new connection after a close. */
			e->state = CT_STATE_OPEN;
			e->flags_seen[0] = 0;
			e->flags_seen[1] = 0;
			seen = 0;
		}
		if (cfg->conn_enabled)
			conn_event = track_connect(e, &p, dir, now, cfg, &latency_ns);
		if (flags & TCP_FLAG_RST) {
			e->state = CT_STATE_CLOSED;
			e->eviction_ns = now + cfg->time_wait_ns;
		} else if (e->state != CT_STATE_OPEN) {
			/* The final ACK after both FINs, and anything after it, is reported: teardown is exact. */
			if (!force)
				reason = REPORT_CLOSE;
			force = 1;
			if (flags & TCP_FLAG_ACK)
				e->state = CT_STATE_CLOSED;
		} else if (flags & TCP_FLAG_FIN) {
			__u16 other = e->flags_seen[dir ? 0 : 1];
			if (other & TCP_FLAG_FIN) {
				e->state = CT_STATE_CLOSING;
				e->eviction_ns = now + cfg->time_wait_ns;
			}
		} else if (!(flags & TCP_FLAG_SYN)) {
			e->eviction_ns = now + cfg->tcp_lifetime_ns;
		}
		if ((seen | flags) != seen) {
			e->flags_seen[dir & 1] = seen | flags;
			if (!force && sampled) {
				force = 1;
				reason = REPORT_FLAG_CHANGE;
			}
		}
	} else {
		e->eviction_ns = now + cfg->nontcp_lifetime_ns;
	}

	if (!cfg->aggregation_high) {
		reason = REPORT_EVERY_PACKET;
		force = 1;
	} else if (!force && now - e->last_report_ns[dir & 1] >= cfg->report_interval_ns) {
		force = 1;
		reason = REPORT_INTERVAL;
	}
	if (!force)
		return TC_ACT_UNSPEC;

	if (report_packet(&p, c, now, obs_point, e->traffic_direction, is_reply, reason, conn_event, latency_ns) == 0)
		e->last_report_ns[dir & 1] = now;
	return TC_ACT_UNSPEC;
}

/* retina_from_ep, retina_to_ep, retina_from_net, retina_to_net */
TC_OBS_CLASSIFIERS(retina_, process)

/* Harvest one entry's unreported counts for both directions (and delete it if expired and asked to).
 * Input: a 14-byte dummy Ethernet header followed by struct sweep_request. Returns the number of events
 * emitted, or SWEEP_RET_*. */
int retina_ct_sweep(struct __sk_buff *skb)
{
	struct sweep_request req;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &req, sizeof(req)) < 0)
		return SWEEP_RET_BAD_REQUEST;
	struct ct_entry *e = conntrack.lookup(&req.key);
	if (!e)
		return SWEEP_RET_NO_ENTRY;
	__u64 now = bpf_ktime_get_boot_ns();
	int expired = (req.flags & SWEEP_F_EXPIRE) && now >= e->eviction_ns;
	__u8 reason = expired ? REPORT_EXPIRED : REPORT_SWEEP;
	int emitted = 0;

	/* An attempt never answered: failed (timeout), counted by whoever settles it first. */
	if ((req.flags & SWEEP_F_CONNECT_TIMEOUT) || expired) {
		if (e->conn_state == CONN_SYN_SENT && conn_settle(e, CONN_TIMEOUT)) {
			stat_add(TCP_STAT_TIMEOUT, 1);
			struct packet_event *ev = events.ringbuf_reserve(sizeof(struct packet_event));
			if (!ev) {
				count_lost(LOST_RINGBUF_FULL);
			} else {
				__builtin_memset(ev, 0, sizeof(*ev));
				ev->ts_ns = now;
				__builtin_memcpy(ev->src_ip, req.key.src_ip, 16);
				__builtin_memcpy(ev->dst_ip, req.key.dst_ip, 16);
				ev->src_port = req.key.src_port;
				ev->dst_port = req.key.dst_port;
				ev->ifindex = req.key.ifindex;
				ev->proto = req.key.proto;
				ev->ip_version = req.key.ip_version;
				ev->obs_point = e->obs_point[0];
				ev->traffic_direction = e->traffic_direction;
				ev->report_reason = REPORT_CONNECT;
				ev->conn_event = CONN_EV_TIMEOUT;
				events.ringbuf_submit(ev, 0);
				emitted++;
			}
		}
	}

#pragma unroll
	for (int dir = 0; dir < 2; dir++) {
		struct ct_counters *c = &e->unreported[dir];
		if (c->packets == 0)
			continue;
		struct packet_event *ev = events.ringbuf_reserve(sizeof(struct packet_event));
		if (!ev) {
			count_lost(LOST_RINGBUF_FULL);
			return SWEEP_RET_RINGBUF_FULL; /* counts stay in the entry; the next sweep tries again */
		}
		if (harvest(c, ev) == 0) {
			events.ringbuf_discard(ev, 0);
			continue;
		}
		ev->ts_ns = now;
		if (dir == 0) {
			__builtin_memcpy(ev->src_ip, req.key.src_ip, 16);
			__builtin_memcpy(ev->dst_ip, req.key.dst_ip, 16);
			ev->src_port = req.key.src_port;
			ev->dst_port = req.key.dst_port;
		} else {
			__builtin_memcpy(ev->src_ip, req.key.dst_ip, 16);
			__builtin_memcpy(ev->dst_ip, req.key.src_ip, 16);
			ev->src_port = req.key.dst_port;
			ev->dst_port = req.key.src_port;
		}
		ev->ifindex = req.key.ifindex;
		ev->packet_bytes = 0;
		ev->tcp_flags = 0;
		ev->proto = req.key.proto;
		ev->ip_version = req.key.ip_version;
		ev->obs_point = e->obs_point[dir];
		ev->traffic_direction = e->traffic_direction;
		ev->is_reply = dir;
		ev->report_reason = reason;
		ev->icmp_type = 0;
		ev->icmp_code = 0;
		zero_event_tail(ev);
		events.ringbuf_submit(ev, 0);
		e->last_report_ns[dir] = now;
		emitted++;
	}
	if (expired) {
		forget_attempt(e, &req.key);
		conntrack.delete(&req.key);
	}
	return emitted;
}
