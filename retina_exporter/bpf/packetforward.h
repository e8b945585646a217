/* packetforward.h — layout shared by the kernel side (packetforward.bpf.c) and the user side
 * (retina_exporter/plugins/packetforward/loader.py mirrors struct pf_metric; a test checks its size).
 */
#ifndef RETINA_PACKETFORWARD_H
#define RETINA_PACKETFORWARD_H

/* Slots of the per-CPU counter array: one per TC hook of the host interfaces. */
#define PF_DIR_INGRESS 0 /* TC ingress: what the interface received (its rx counters) */
#define PF_DIR_EGRESS 1  /* TC egress: what the stack hands the interface to send (its tx counters) */
#define PF_DIR_COUNT 2

/* Packets and bytes seen on one hook, on one CPU. bytes = skb->len at the hook: the frame from the Ethernet
 * header on, without FCS, as the interface counters count it. */
struct pf_metric {
	__u64 count;
	__u64 bytes;
};

#endif /* RETINA_PACKETFORWARD_H */
