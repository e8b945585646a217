/* tcprtt.bpf.c — the kernel's smoothed TCP round-trip time, sampled from the tcp:tcp_probe tracepoint at bounded
 * cost: at most one sample per socket (keyed by sock_cookie) per rtt_config.interval_ns.
 *
 * tcp:tcp_probe fires for every segment an established socket receives (tcp_rcv_established); the program's
 * per-segment work is reading the cookie, one LRU hash lookup and a compare. A due sample (claimed with a
 * compare-and-swap, so two CPUs never both take it) goes into the node-level histogram (per-CPU rtt_stats) and,
 * at pod level, as an event to user space. A socket evicted from the LRU map (more live sockets than RTT_MAP_SIZE)
 * is sampled again on its next segment: the bound is per entry, not per socket, under that pressure.
 *
 * rtt_forget, on sock:inet_sock_set_state, deletes a socket's rtt_last entry when the socket enters TCP_CLOSE
 * (every TCP socket does, once, before it is freed), so rtt_last holds live sockets only and stays flat under
 * connection churn instead of filling to RTT_MAP_SIZE and living on LRU eviction. It needs -DOFF_SK_COOKIE (BTF
 * offset of sock.__sk_common.skc_cookie, the value tcp_probe's sock_cookie reads); without BTF it is not built
 * and the LRU bound alone holds.
 *
 * Tracepoint record offsets come from the format files (-DTP_OFF_*, -DTP_CLOSE_OFF_*), never from headers. With
 * -DOFF_SK_NET and -DOFF_NET_INUM (BTF member offsets of sock.__sk_common.skc_net and net.ns.inum) samples can be
 * limited to the network namespaces in rtt_netns (the node's and its pods').
 */
#include <uapi/linux/bpf.h>
#include "tcprtt.h"
#define HIST_MAX_BOUNDS RTT_HIST_MAX_BOUNDS
#include "histogram.h"

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 64
#endif
#ifndef RTT_MAP_SIZE
#define RTT_MAP_SIZE 65536
#endif
#ifndef NETNS_MAP_SIZE
#define NETNS_MAP_SIZE 4096
#endif

#define AF_INET6_ 10

BPF_RINGBUF_OUTPUT(rtt_events, RINGBUF_PAGES);
BPF_ARRAY(rtt_config, struct rtt_config, 1);
BPF_TABLE("lru_hash", __u64, __u64, rtt_last, RTT_MAP_SIZE); /* sock_cookie -> boot ns of its last sample */
BPF_HASH(rtt_netns, __u32, __u8, NETNS_MAP_SIZE);
BPF_PERCPU_ARRAY(rtt_stats, __u64, RTT_STAT_SLOTS);

#define TP_READ(dst, ctx, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (char *)(ctx) + (off))

static __always_inline void stat_add(__u32 slot, __u64 n)
{
	__u64 *v = rtt_stats.lookup(&slot);
	if (v)
		*v += n; /* per-CPU */
}

/* True when this socket's sample is due now; claims it. */
static __always_inline int due(__u64 cookie, __u64 now, __u64 interval)
{
	__u64 *last = rtt_last.lookup(&cookie);
	if (!last)
		return rtt_last.insert(&cookie, &now) == 0; /* BPF_NOEXIST: one CPU wins a new socket */
	__u64 prev = *last;
	if (now - prev < interval)
		return 0;
	return __sync_val_compare_and_swap(last, prev, now) == prev;
}

int rtt_probe(void *ctx)
{
	int zero = 0;
	struct rtt_config *cfg = rtt_config.lookup(&zero);
	if (!cfg)
		return 0;
	__u64 cookie = 0;
	TP_READ(cookie, ctx, TP_OFF_SOCK_COOKIE);
	__u64 now = bpf_ktime_get_boot_ns();
	if (!due(cookie, now, cfg->interval_ns))
		return 0;
#if defined(OFF_SK_NET) && defined(OFF_NET_INUM)
	if (cfg->filter_netns) {
		__u64 sk = 0, net = 0;
		__u32 inum = 0;
		TP_READ(sk, ctx, TP_OFF_SKADDR);
		if (sk)
			bpf_probe_read_kernel(&net, sizeof(net), (void *)(sk + OFF_SK_NET));
		if (net)
			bpf_probe_read_kernel(&inum, sizeof(inum), (void *)(net + OFF_NET_INUM));
		if (!inum || !rtt_netns.lookup(&inum)) {
			stat_add(RTT_STAT_OUT_OF_SCOPE, 1);
			return 0;
		}
	}
#endif
	__u32 srtt_us = 0;
	TP_READ(srtt_us, ctx, TP_OFF_SRTT);
	__u64 srtt_ns = (__u64)srtt_us * 1000;
	stat_add(RTT_STAT_SAMPLES, 1);
	stat_add(RTT_STAT_SUM_NS, srtt_ns);
	stat_add(RTT_STAT_BUCKET0 + hist_bucket(cfg->bounds_ns, cfg->n_bounds, srtt_ns), 1);
	if (!cfg->emit_events)
		return 0;

	struct rtt_event *ev = rtt_events.ringbuf_reserve(sizeof(struct rtt_event));
	if (!ev) {
		stat_add(RTT_STAT_RINGBUF_FULL, 1);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts_ns = now;
	ev->srtt_us = srtt_us;
	__u16 family = 0;
	TP_READ(family, ctx, TP_OFF_FAMILY);
	TP_READ(ev->sport, ctx, TP_OFF_SPORT);
	TP_READ(ev->dport, ctx, TP_OFF_DPORT);
	/* saddr/daddr are a sockaddr_in (port at 2, address at 4) or a sockaddr_in6 (address at 8) */
	if (family == AF_INET6_) {
		TP_READ(ev->saddr, ctx, TP_OFF_SADDR + 8);
		TP_READ(ev->daddr, ctx, TP_OFF_DADDR + 8);
		ev->ip_version = 6;
	} else {
		bpf_probe_read_kernel(ev->saddr, 4, (char *)ctx + TP_OFF_SADDR + 4);
		bpf_probe_read_kernel(ev->daddr, 4, (char *)ctx + TP_OFF_DADDR + 4);
		ev->ip_version = 4;
	}
	rtt_events.ringbuf_submit(ev, 0);
	return 0;
}

#ifdef OFF_SK_COOKIE
#define TCP_CLOSE_ 7 /* include/net/tcp_states.h: stable since Linux 2.6 */

/* sock:inet_sock_set_state: forget a closing socket. A socket never given a cookie (never sampled) has none. */
int rtt_forget(void *ctx)
{
	int newstate = 0;
	TP_READ(newstate, ctx, TP_CLOSE_OFF_NEWSTATE);
	if (newstate != TCP_CLOSE_)
		return 0;
	__u64 sk = 0, cookie = 0;
	TP_READ(sk, ctx, TP_CLOSE_OFF_SKADDR);
	if (sk)
		bpf_probe_read_kernel(&cookie, sizeof(cookie), (void *)(sk + OFF_SK_COOKIE));
	if (cookie)
		rtt_last.delete(&cookie);
	return 0;
}
#endif
