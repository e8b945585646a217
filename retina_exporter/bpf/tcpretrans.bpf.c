/* tcpretrans.bpf.c — count TCP retransmissions from the tcp:tcp_retransmit_skb and tcp:tcp_retransmit_synack
 * tracepoints, per node, and (pod level) report each one to user space.
 *
 * Tracepoint record offsets come from the tracepoint format files (-DTP_SKB_OFF_* / -DTP_SA_OFF_*), never from
 * headers. With -DHAVE_KERNEL_OFFSETS=1 user space also passes member offsets from the running kernel's BTF
 * (OFF_SK_NET, OFF_NET_INUM, OFF_SKB_CB, OFF_TCB_GSO_SEGS, OFF_TCB_FLAGS): then each retransmission carries its
 * socket's network namespace (inode), its segment count (tcp_skb_pcount, what the kernel adds to RetransSegs)
 * and the segment's TCP flags; without them the namespace is 0, segs 1 and flags 0.
 *
 * What counts (RT_STAT_EVENTS / RT_STAT_SEGMENTS), so that the totals follow the kernel's RetransSegs:
 *   - tcp_retransmit_skb, unless its err says __tcp_retransmit_skb gave up before sending and before counting
 *     RetransSegs: -EBUSY (the previous copy is still in a queue), -ENOMEM, -EAGAIN (window). Kernels before
 *     the err field (6.10) fire it only for successful retransmissions: all count;
 *   - tcp_retransmit_synack (fired only when the SYN-ACK was sent and counted): 1 segment.
 * A namespace filter (rt_config.filter_netns) limits both to the namespaces in netns_filter.
 */
#include <uapi/linux/bpf.h>
#include "tcpretrans.h"

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 64
#endif
#ifndef NETNS_MAP_SIZE
#define NETNS_MAP_SIZE 4096
#endif
#ifndef HAVE_KERNEL_OFFSETS
#define HAVE_KERNEL_OFFSETS 0
#endif
#ifndef TP_SKB_HAS_ERR
#define TP_SKB_HAS_ERR 0
#endif
#ifndef HAVE_SYNACK
#define HAVE_SYNACK 0
#endif

#define AF_INET_ 2
#define AF_INET6_ 10
#define EBUSY_ 16
#define ENOMEM_ 12
#define EAGAIN_ 11

BPF_RINGBUF_OUTPUT(rt_events, RINGBUF_PAGES);
BPF_ARRAY(rt_config, struct rt_config, 1);
BPF_HASH(netns_filter, __u32, __u8, NETNS_MAP_SIZE);
BPF_PERCPU_ARRAY(rt_stats, __u64, RT_STAT_SLOTS);

static __always_inline void stat_add(__u32 slot, __u64 n)
{
	__u64 *v = rt_stats.lookup(&slot);
	if (v)
		*v += n; /* per-CPU */
}

static __always_inline __u32 sock_netns(__u64 sk)
{
#if HAVE_KERNEL_OFFSETS
	__u64 net = 0;
	__u32 inum = 0;
	if (!sk)
		return 0;
	bpf_probe_read_kernel(&net, sizeof(net), (void *)(sk + OFF_SK_NET));
	if (!net)
		return 0;
	bpf_probe_read_kernel(&inum, sizeof(inum), (void *)(net + OFF_NET_INUM));
	return inum;
#else
	return 0;
#endif
}

struct tp_fields {
	__u64 skaddr;
	__u64 skbaddr;
	__s32 state;
	__s32 err;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

static __always_inline int report(struct tp_fields *f, __u8 kind)
{
	int zero = 0;
	struct rt_config *cfg = rt_config.lookup(&zero);
	if (!cfg)
		return 0;
	__u32 netns = sock_netns(f->skaddr);
	if (cfg->filter_netns && (!netns || !netns_filter.lookup(&netns))) {
		stat_add(RT_STAT_OUT_OF_SCOPE, 1);
		return 0;
	}
	__u16 segs = 1;
	__u8 tcp_flags = 0;
#if HAVE_KERNEL_OFFSETS
	if (kind == RT_KIND_SKB && f->skbaddr) {
		__u16 s = 0;
		bpf_probe_read_kernel(&s, sizeof(s), (void *)(f->skbaddr + OFF_SKB_CB + OFF_TCB_GSO_SEGS));
		if (s > 0)
			segs = s;
		/* tcp_flags is a u8 (older kernels) or u16 (6.x): its low byte comes first on little-endian hosts */
		bpf_probe_read_kernel(&tcp_flags, 1, (void *)(f->skbaddr + OFF_SKB_CB + OFF_TCB_FLAGS));
	}
#endif
	stat_add(RT_STAT_EVENTS, 1);
	stat_add(RT_STAT_SEGMENTS, segs);
	if (kind == RT_KIND_SYNACK)
		stat_add(RT_STAT_SYNACK, 1);
	if (!cfg->emit_events)
		return 0;

	struct rt_event *ev = rt_events.ringbuf_reserve(sizeof(struct rt_event));
	if (!ev) {
		stat_add(RT_STAT_RINGBUF_FULL, 1);
		return 0;
	}
	ev->ts_ns = bpf_ktime_get_boot_ns();
	__builtin_memset(ev->saddr, 0, sizeof(ev->saddr));
	__builtin_memset(ev->daddr, 0, sizeof(ev->daddr));
	if (f->family == AF_INET6_) {
		__builtin_memcpy(ev->saddr, f->saddr_v6, 16);
		__builtin_memcpy(ev->daddr, f->daddr_v6, 16);
		ev->ip_version = 6;
	} else {
		__builtin_memcpy(ev->saddr, f->saddr, 4);
		__builtin_memcpy(ev->daddr, f->daddr, 4);
		ev->ip_version = 4;
	}
	ev->netns = netns;
	ev->err = f->err;
	ev->sport = f->sport;
	ev->dport = f->dport;
	ev->segs = segs;
	ev->state = (__u8)f->state;
	ev->kind = kind;
	ev->tcp_flags = tcp_flags;
	__builtin_memset(ev->_pad, 0, sizeof(ev->_pad));
	rt_events.ringbuf_submit(ev, 0);
	return 0;
}

#define TP_READ(dst, ctx, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (char *)(ctx) + (off))

int rtcp_retrans(void *ctx)
{
	struct tp_fields f = {};
#if TP_SKB_HAS_ERR
	TP_READ(f.err, ctx, TP_SKB_OFF_ERR);
	if (f.err == -EBUSY_ || f.err == -ENOMEM_ || f.err == -EAGAIN_) {
		stat_add(RT_STAT_NOT_SENT, 1);
		return 0;
	}
#endif
	TP_READ(f.skaddr, ctx, TP_SKB_OFF_SKADDR);
	TP_READ(f.skbaddr, ctx, TP_SKB_OFF_SKBADDR);
	TP_READ(f.state, ctx, TP_SKB_OFF_STATE);
	TP_READ(f.sport, ctx, TP_SKB_OFF_SPORT);
	TP_READ(f.dport, ctx, TP_SKB_OFF_DPORT);
	TP_READ(f.family, ctx, TP_SKB_OFF_FAMILY);
	TP_READ(f.saddr, ctx, TP_SKB_OFF_SADDR);
	TP_READ(f.daddr, ctx, TP_SKB_OFF_DADDR);
	TP_READ(f.saddr_v6, ctx, TP_SKB_OFF_SADDR_V6);
	TP_READ(f.daddr_v6, ctx, TP_SKB_OFF_DADDR_V6);
	return report(&f, RT_KIND_SKB);
}

#if HAVE_SYNACK
int rtcp_synack(void *ctx)
{
	struct tp_fields f = {};
	TP_READ(f.skaddr, ctx, TP_SA_OFF_SKADDR);
	TP_READ(f.sport, ctx, TP_SA_OFF_SPORT);
	TP_READ(f.dport, ctx, TP_SA_OFF_DPORT);
	TP_READ(f.family, ctx, TP_SA_OFF_FAMILY);
	TP_READ(f.saddr, ctx, TP_SA_OFF_SADDR);
	TP_READ(f.daddr, ctx, TP_SA_OFF_DADDR);
	TP_READ(f.saddr_v6, ctx, TP_SA_OFF_SADDR_V6);
	TP_READ(f.daddr_v6, ctx, TP_SA_OFF_DADDR_V6);
	return report(&f, RT_KIND_SYNACK);
}
#endif
