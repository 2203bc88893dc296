/* pace.c: the copy's pace: an operator's cap and a disk-latency controller
 * (see pace.h). */
#include "pace.h"

#include <string.h>

/* The latency of a step is compared per this many bytes (the write-behind
 * step): a short tail would otherwise look fast. Smaller samples say too
 * little and are left out. */
#define PACE_NORM_BYTES (8ull << 20)
#define PACE_MIN_SAMPLE (1ull << 20)

void pace_init(struct pace *p, uint64_t max_rate, bool adaptive)
{
    memset(p, 0, sizeof *p);
    atomic_init(&p->max_rate, max_rate);
    p->adaptive = adaptive;
}

void pace_set_max(struct pace *p, uint64_t max_rate)
{
    atomic_store_explicit(&p->max_rate, max_rate, memory_order_relaxed);
}

static uint64_t per_second(uint64_t bytes, uint64_t ns)
{
    return ns ? (uint64_t)((double)bytes * 1e9 / (double)ns) : 0;
}

void pace_sample(struct pace *p, uint64_t bytes, uint64_t latency_ns, uint64_t now_ns)
{
    uint64_t lat, interval = p->last_ns && now_ns > p->last_ns ? now_ns - p->last_ns : 0;
    uint64_t allowed;
    p->last_ns = now_ns;
    if (!p->adaptive || bytes < PACE_MIN_SAMPLE)
        return;
    lat = (uint64_t)((double)latency_ns * (double)PACE_NORM_BYTES / (double)bytes);
    /* What full speed is, learned only while at full speed. */
    if (p->rate == 0 && interval) {
        uint64_t r = per_second(bytes, interval);
        p->full_rate = p->full_rate ? (3 * p->full_rate + r) / 4 : r;
    }
    if (p->base_ns == 0 || lat < p->base_ns)
        p->base_ns = lat;
    /* Someone else's I/O is queued beside ours when a step takes clearly
     * longer than it did when the disk was ours: at least PACE_TARGET_NS
     * more, and at least twice as long (a fast disk's few microseconds
     * vary by more than themselves). */
    allowed = p->base_ns + (p->base_ns > PACE_TARGET_NS ? p->base_ns : PACE_TARGET_NS);
    if (lat > allowed) {
        uint64_t from = p->rate        ? p->rate
                        : p->full_rate ? p->full_rate
                                       : per_second(bytes, interval);
        p->rate = from / 2 > PACE_MIN_RATE ? from / 2 : PACE_MIN_RATE;
        p->yields++;
    } else if (p->rate) {
        /* Quiet again: a quarter more each step, full speed once the
         * rate passes what full speed was. */
        p->rate += p->rate / 4;
        if (p->full_rate == 0 || p->rate >= p->full_rate)
            p->rate = 0;
    }
}

uint64_t pace_limit(struct pace *p)
{
    uint64_t cap = atomic_load_explicit(&p->max_rate, memory_order_relaxed);
    if (p->rate && (cap == 0 || p->rate < cap))
        return p->rate;
    return cap;
}

bool pace_yielding(struct pace *p)
{
    uint64_t cap = atomic_load_explicit(&p->max_rate, memory_order_relaxed);
    return p->rate != 0 && (cap == 0 || p->rate < cap);
}

uint64_t pace_delay(struct pace *p, uint64_t bytes, uint64_t now_ns)
{
    uint64_t limit = pace_limit(p);
    if (limit == 0) {
        p->next_ns = 0;
        return 0;
    }
    /* Time not used is lent for at most PACE_BURST_NS: a pause does not
     * buy a burst that would flood the disk afterwards. */
    if (p->next_ns + PACE_BURST_NS < now_ns)
        p->next_ns = now_ns - PACE_BURST_NS;
    p->next_ns += (uint64_t)((double)bytes * 1e9 / (double)limit);
    return p->next_ns > now_ns ? p->next_ns - now_ns : 0;
}
