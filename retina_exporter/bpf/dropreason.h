/* Shared layouts of the dropreason program (mirrored in retina_exporter/plugins/dropreason/layout.py; the
 * Python tests compare both views).
 *
 * Only fixed-size integer types: the offsets of kernel structs (sk_buff, net_device, sock, net) are not taken
 * from any header but handed in as -D defines computed from the running kernel's BTF (see loader.py).
 */
#ifndef RETINA_DROPREASON_H
#define RETINA_DROPREASON_H

/* Direction hints (the kernel side only knows whether the skb was received by the namespace where it is freed,
 * skb->skb_iif != 0, or built there, skb_iif == 0); user space turns them into ingress/egress, overridden by
 * reasons that say the direction themselves (QDISC_* is always egress, TCP_* always ingress ...). */
#define DR_HINT_UNKNOWN 0
#define DR_HINT_RECEIVED 1
#define DR_HINT_LOCAL 2

/* Slots of the per-CPU "stats" array. */
#define DR_STAT_RINGBUF_FULL 0    /* a pod-level event could not be reserved */
#define DR_STAT_IGNORED 1         /* frees whose reason is in the ignore mask (NOT_SPECIFIED ...) */
#define DR_STAT_OUT_OF_SCOPE 2    /* drops in a network namespace outside the netns filter */
#define DR_STAT_COUNTS_FULL 3     /* the {reason, hint} counter map was full */
#define DR_STAT_SLOTS 4

#define DR_IGNORE_WORDS 8 /* ignore mask: reasons 0..511 */

/* Key of the per-CPU counters map. */
struct dr_key {
    __u32 reason;
    __u8 hint;
    __u8 _pad[3];
};

struct dr_value {
    __u64 packets;
    __u64 bytes;
};

/* Runtime configuration, array map "config" index 0. */
struct dr_config {
    __u64 ignore_mask[DR_IGNORE_WORDS];
    __u32 emit_events;  /* pod level: one ring-buffer record per drop */
    __u32 filter_netns; /* count only namespaces listed in "netns_filter" */
};

/* One ring-buffer record (pod level). Addresses in network order; IPv4 in the first 4 bytes. */
struct drop_event {
    __u64 ts_ns;     /* CLOCK_BOOTTIME */
    __u64 location;  /* kernel address that freed the skb */
    __u8 src_ip[16];
    __u8 dst_ip[16];
    __u32 reason;
    __u32 bytes;     /* length of the IP packet (network header to end) */
    __u32 packets;   /* 1, or the segments of a GSO packet */
    __u32 ifindex;   /* skb->dev's ifindex, else skb->skb_iif */
    __u32 netns;     /* inode number of the network namespace, 0 if unknown */
    __u16 src_port;
    __u16 dst_port;
    __u8 proto;
    __u8 ip_version; /* 4, 6, or 0 for a non-IP packet */
    __u8 hint;       /* DR_HINT_* */
    __u8 tcp_flags;
    __u8 icmp_type;
    __u8 icmp_code;
    __u8 _pad[2];
};

#endif
