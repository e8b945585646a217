/* histogram.h — the bucket of a value in a histogram with explicit, ascending upper bounds (Prometheus "le"
 * semantics: bucket i holds values <= bounds[i] and > bounds[i-1]; bucket n holds the rest, +Inf). Shared by
 * packetparser.bpf.c (connect latency) and tcprtt.bpf.c (smoothed RTT). Holds no event layout. */
#ifndef RETINA_HISTOGRAM_H
#define RETINA_HISTOGRAM_H

#ifndef HIST_MAX_BOUNDS
#define HIST_MAX_BOUNDS 32
#endif

/* 0..n (n <= HIST_MAX_BOUNDS): a bounded loop, run once per sample (not per packet). */
static __always_inline __u32 hist_bucket(const __u64 *bounds, __u32 n, __u64 value)
{
	__u32 i;
	for (i = 0; i < HIST_MAX_BOUNDS; i++) {
		if (i >= n || value <= bounds[i])
			break;
	}
	return i;
}

#endif /* RETINA_HISTOGRAM_H */
