/* packetforward.bpf.c — node-level packet and byte counters of the host interfaces.
 *
 * Two TC classifiers, rpfwd_ingress and rpfwd_egress, attached to every host interface (TCX, or clsact/cls_bpf at
 * priority 2 so that packetparser's filters at priority 1 can share the hook). Each adds the packet and its length to
 * its direction's slot of a per-CPU array and returns TC_ACT_UNSPEC ("no verdict": the packet continues as if we were
 * not there; under TCX the next program in the chain runs).
 *
 * Every packet that reaches a hook is counted, whatever its type (unicast, broadcast, multicast, not IP). Retina's
 * packetforward (a socket filter) counts received packets only when pkt_type is PACKET_HOST; counting every one makes
 * the totals equal the interface's rx/tx counters.
 *
 * No locks or atomics: TC programs run with bottom halves disabled, so two updates of one CPU's slot never
 * interleave. User space sums the CPUs. Compiled at run time by bcc (retina_exporter/plugins/packetforward/loader.py);
 * only uapi structs (__sk_buff) are used.
 */
#include "common.h"
#include "packetforward.h"

BPF_PERCPU_ARRAY(rpfwd_metrics, struct pf_metric, PF_DIR_COUNT);

static __always_inline int count_packet(struct __sk_buff *skb, __u32 slot)
{
	struct pf_metric *m = rpfwd_metrics.lookup(&slot);
	if (m) {
		m->count += 1;
		m->bytes += skb->len;
	}
	return TC_ACT_UNSPEC;
}

int rpfwd_ingress(struct __sk_buff *skb)
{
	return count_packet(skb, PF_DIR_INGRESS);
}

int rpfwd_egress(struct __sk_buff *skb)
{
	return count_packet(skb, PF_DIR_EGRESS);
}
