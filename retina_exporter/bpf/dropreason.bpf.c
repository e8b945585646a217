/* dropreason: every packet the kernel drops, with the kernel's own reason.
 *
 * Hook: the skb:kfree_skb tracepoint (kfree_skb_reason() and friends; consume_skb() and
 * kfree_skb_reason(skb, SKB_CONSUMED) go to skb:consume_skb instead, so routine frees mostly never reach it).
 * The tracepoint record layout is read from tracefs at start-up and handed in as TP_OFF_* defines; the
 * sk_buff/net_device/sock/net offsets come from the running kernel's BTF as the OFF_* defines below. Nothing
 * here depends on the (possibly mismatched) kernel headers bcc compiles against.
 *
 * Per drop:
 *   1. reason in the ignore mask (NOT_DROPPED_YET, CONSUMED, NOT_SPECIFIED by default) -> stats[IGNORED], done;
 *   2. network namespace (skb->dev's, else skb->sk's) not in netns_filter while filtering -> stats, done;
 *   3. counts[{reason, hint}] += {packets, bytes} (per CPU; user space sums and exports them);
 *   4. pod level only: one drop_event with the 5-tuple into the ring buffer.
 */
#include <linux/types.h>

#include "dropreason.h"

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 64
#endif
#ifndef COUNTS_MAP_SIZE
#define COUNTS_MAP_SIZE 2048
#endif
#ifndef NETNS_MAP_SIZE
#define NETNS_MAP_SIZE 4096
#endif

/* Required defines (the loader always passes them). */
#if !defined(TP_OFF_SKBADDR) || !defined(TP_OFF_LOCATION) || !defined(TP_OFF_PROTOCOL) || !defined(TP_OFF_REASON)
#error "tracepoint field offsets (TP_OFF_*) are required"
#endif
#if !defined(OFF_SKB_LEN) || !defined(OFF_SKB_DEV) || !defined(OFF_SKB_SK) || !defined(OFF_SKB_HEAD) || \
    !defined(OFF_SKB_DATA) || !defined(OFF_SKB_NETWORK_HEADER) || !defined(OFF_SKB_SKB_IIF) || \
    !defined(OFF_SKB_END) || !defined(OFF_SHINFO_GSO_SIZE) || !defined(OFF_SHINFO_GSO_SEGS) || \
    !defined(OFF_DEV_IFINDEX) || !defined(OFF_DEV_ND_NET) || !defined(OFF_SK_NET) || !defined(OFF_NET_INUM)
#error "kernel struct offsets (OFF_*) from BTF are required"
#endif

/* The tracepoint's protocol field is ntohs(skb->protocol): host byte order. */
#define ETH_P_IP_HOST 0x0800
#define ETH_P_IPV6_HOST 0x86DD
#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMPV6 58
#define NO_HEADER 0xFFFF /* an unset sk_buff header offset ((u16)~0U) */

BPF_PERCPU_HASH(counts, struct dr_key, struct dr_value, COUNTS_MAP_SIZE);
BPF_ARRAY(config, struct dr_config, 1);
BPF_PERCPU_ARRAY(stats, __u64, DR_STAT_SLOTS);
BPF_HASH(netns_filter, __u32, __u8, NETNS_MAP_SIZE);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* Never written: exposes the compiler's layout of struct drop_event to the Python tests (bcc builds ctypes
 * leaves for maps, not for ring-buffer records). */
BPF_ARRAY(event_layout, struct drop_event, 1);

static __always_inline void stat_add(int slot)
{
    __u64 *v = stats.lookup(&slot);
    if (v)
        *v += 1;
}

static __always_inline __u64 read_u64(__u64 addr)
{
    __u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline __u32 read_u32(__u64 addr)
{
    __u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline __u16 read_u16(__u64 addr)
{
    __u16 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

/* Inode number of a struct net, 0 if unreadable. */
static __always_inline __u32 net_inum(__u64 net)
{
    return net ? read_u32(net + OFF_NET_INUM) : 0;
}

struct l3_info {
    __u8 src[16];
    __u8 dst[16];
    __u32 bytes;
    __u64 l4;      /* address of the transport header, 0 if none (non-first fragment, unknown) */
    __u8 proto;
    __u8 version;
};

/* Parse the network header at head + nh (protocol: the tracepoint's, host order). Returns 0 unless IPv4/IPv6. */
static __always_inline int parse_l3(__u64 head, __u16 nh, __u16 protocol, struct l3_info *out)
{
    __u64 ip = head + nh;
    if (protocol == ETH_P_IP_HOST) {
        __u8 hdr[20];
        if (bpf_probe_read_kernel(hdr, sizeof(hdr), (void *)ip) < 0)
            return 0;
        if ((hdr[0] >> 4) != 4)
            return 0;
        __u32 ihl = (hdr[0] & 0x0F) * 4;
        if (ihl < 20)
            return 0;
        out->version = 4;
        out->proto = hdr[9];
        __builtin_memcpy(out->src, &hdr[12], 4);
        __builtin_memcpy(out->dst, &hdr[16], 4);
        out->bytes = ((__u32)hdr[2] << 8) | hdr[3];
        __u16 frag = (((__u16)hdr[6] << 8) | hdr[7]) & 0x1FFF;
        out->l4 = frag ? 0 : ip + ihl;
        return 1;
    }
    if (protocol == ETH_P_IPV6_HOST) {
        __u8 hdr[40];
        if (bpf_probe_read_kernel(hdr, sizeof(hdr), (void *)ip) < 0)
            return 0;
        if ((hdr[0] >> 4) != 6)
            return 0;
        out->version = 6;
        __builtin_memcpy(out->src, &hdr[8], 16);
        __builtin_memcpy(out->dst, &hdr[24], 16);
        __u32 plen = ((__u32)hdr[4] << 8) | hdr[5];
        out->bytes = plen ? plen + 40 : 0;
        __u8 next = hdr[6];
        __u64 cur = ip + 40;
        /* Skip up to four extension headers: hop-by-hop, routing, destination options, fragment, AH. */
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if (next == 0 || next == 43 || next == 60 || next == 51) {
                __u8 ext[2];
                if (bpf_probe_read_kernel(ext, sizeof(ext), (void *)cur) < 0) {
                    cur = 0;
                    break;
                }
                /* AH counts its length in 4-byte units minus 2, the others in 8-byte units minus 1. */
                cur += next == 51 ? (__u64)(ext[1] + 2) * 4 : (__u64)(ext[1] + 1) * 8;
                next = ext[0];
            } else if (next == 44) {
                __u8 frag[4];
                if (bpf_probe_read_kernel(frag, sizeof(frag), (void *)cur) < 0) {
                    cur = 0;
                    break;
                }
                next = frag[0];
                if (((((__u16)frag[2] << 8) | frag[3]) & 0xFFF8) != 0) { /* not the first fragment */
                    cur = 0;
                    break;
                }
                cur += 8;
            } else {
                break;
            }
        }
        out->proto = next;
        out->l4 = cur;
        return 1;
    }
    return 0;
}

int retina_drop(void *ctx)
{
    __u32 reason = *(__u32 *)((char *)ctx + TP_OFF_REASON);
    __u32 zero = 0;
    struct dr_config *cfg = config.lookup(&zero);
    if (!cfg)
        return 0;
    if (reason < DR_IGNORE_WORDS * 64) {
        __u32 word = reason / 64;
        if (word < DR_IGNORE_WORDS && (cfg->ignore_mask[word] >> (reason % 64)) & 1) {
            stat_add(DR_STAT_IGNORED);
            return 0;
        }
    }

    __u64 skb = *(__u64 *)((char *)ctx + TP_OFF_SKBADDR);
    __u16 protocol = *(__u16 *)((char *)ctx + TP_OFF_PROTOCOL);
    if (!skb)
        return 0;

    __u64 dev = read_u64(skb + OFF_SKB_DEV);
    __u32 netns = 0;
    __u32 ifindex = 0;
    if (dev) {
        netns = net_inum(read_u64(dev + OFF_DEV_ND_NET));
        ifindex = read_u32(dev + OFF_DEV_IFINDEX);
    }
    if (!netns) {
        __u64 sk = read_u64(skb + OFF_SKB_SK);
        if (sk)
            netns = net_inum(read_u64(sk + OFF_SK_NET));
    }
    if (cfg->filter_netns) {
        if (!netns || !netns_filter.lookup(&netns)) {
            stat_add(DR_STAT_OUT_OF_SCOPE);
            return 0;
        }
    }

    __u32 iif = read_u32(skb + OFF_SKB_SKB_IIF);
    if (!ifindex)
        ifindex = iif;
    __u8 hint = iif ? DR_HINT_RECEIVED : DR_HINT_LOCAL;

    __u64 head = read_u64(skb + OFF_SKB_HEAD);
    __u16 nh = read_u16(skb + OFF_SKB_NETWORK_HEADER);
    __u32 len = read_u32(skb + OFF_SKB_LEN);
    if (!head)
        hint = DR_HINT_UNKNOWN;

    /* GSO packets count as the segments they stand for. */
    __u32 packets = 1;
    __u32 end = read_u32(skb + OFF_SKB_END);
    if (head && end) {
        __u16 gso_size = read_u16(head + end + OFF_SHINFO_GSO_SIZE);
        if (gso_size) {
            __u16 segs = read_u16(head + end + OFF_SHINFO_GSO_SEGS);
            if (segs > 1)
                packets = segs;
        }
    }

    struct l3_info l3 = {};
    int is_ip = 0;
    if (head && nh != NO_HEADER)
        is_ip = parse_l3(head, nh, protocol, &l3);
    __u32 bytes = l3.bytes;
    if (!bytes) {
        /* No IP length (non-IP, or a BIG TCP packet): skb->len from the network header when known. */
        bytes = len;
        if (head && nh != NO_HEADER) {
            __u64 data = read_u64(skb + OFF_SKB_DATA);
            __u64 l3start = head + nh;
            if (data >= l3start)
                bytes = len + (__u32)(data - l3start);
            else if (l3start - data < len)
                bytes = len - (__u32)(l3start - data);
        }
    }

    struct dr_key key = {};
    key.reason = reason;
    key.hint = hint;
    struct dr_value *val = counts.lookup(&key);
    if (val) {
        val->packets += packets;
        val->bytes += bytes;
    } else {
        struct dr_value init = {.packets = packets, .bytes = bytes};
        if (counts.update(&key, &init) != 0)
            stat_add(DR_STAT_COUNTS_FULL);
    }

    if (!cfg->emit_events || !is_ip)
        return 0;

    struct drop_event *ev = events.ringbuf_reserve(sizeof(struct drop_event));
    if (!ev) {
        stat_add(DR_STAT_RINGBUF_FULL);
        return 0;
    }
    __builtin_memset(ev, 0, sizeof(*ev));
    ev->ts_ns = bpf_ktime_get_boot_ns();
    ev->location = *(__u64 *)((char *)ctx + TP_OFF_LOCATION);
    __builtin_memcpy(ev->src_ip, l3.src, 16);
    __builtin_memcpy(ev->dst_ip, l3.dst, 16);
    ev->reason = reason;
    ev->bytes = bytes;
    ev->packets = packets;
    ev->ifindex = ifindex;
    ev->netns = netns;
    ev->proto = l3.proto;
    ev->ip_version = l3.version;
    ev->hint = hint;
    if (l3.l4) {
        if (l3.proto == PROTO_TCP) {
            __u8 th[14];
            if (bpf_probe_read_kernel(th, sizeof(th), (void *)l3.l4) == 0) {
                ev->src_port = ((__u16)th[0] << 8) | th[1];
                ev->dst_port = ((__u16)th[2] << 8) | th[3];
                ev->tcp_flags = th[13];
            }
        } else if (l3.proto == PROTO_UDP) {
            __u8 uh[4];
            if (bpf_probe_read_kernel(uh, sizeof(uh), (void *)l3.l4) == 0) {
                ev->src_port = ((__u16)uh[0] << 8) | uh[1];
                ev->dst_port = ((__u16)uh[2] << 8) | uh[3];
            }
        } else if (l3.proto == PROTO_ICMP || l3.proto == PROTO_ICMPV6) {
            __u8 ih[2];
            if (bpf_probe_read_kernel(ih, sizeof(ih), (void *)l3.l4) == 0) {
                ev->icmp_type = ih[0];
                ev->icmp_code = ih[1];
            }
        }
    }
    events.ringbuf_submit(ev, 0);
    return 0;
}
