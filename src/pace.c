/* pace.c: the copy's pace: an operator's cap and a disk-latency controller
 * (see pace.h). */
#include "pace.h"

#include <string.h>

/* The latency of a step is compared per this many bytes (the write-behind
 * step): a short tail would otherwise look fast. Smaller samples say too
 * little and are left out. */
#define PACE_NORM_BYTES (8ull << 20)
#define PACE_MIN_SAMPLE (1ull << 20)
#define SEC (1000ull * 1000 * 1000)

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
    return ns ? (uint64_t)((double)bytes * (double)SEC / (double)ns) : 0;
}

/* The idle latency: the lowest of the last PACE_BASE_SLOTS seconds (one
 * minimum per second, as LEDBAT keeps its base delay), so that one lucky
 * step does not make every later one look congested forever, while a
 * neighbour that saves now and then cannot raise it: it has quiet moments. */
static uint64_t pace_base(struct pace *p, uint64_t lat, uint64_t now_ns)
{
    uint64_t slot = now_ns / SEC, base = 0;
    if (slot != p->base_slot) {
        /* Seconds without a sample leave their slots empty. */
        for (uint64_t s = p->base_slot + 1; s <= slot && s <= p->base_slot + PACE_BASE_SLOTS; s++)
            p->base_min[s % PACE_BASE_SLOTS] = 0;
        p->base_slot = slot;
    }
    if (p->base_min[slot % PACE_BASE_SLOTS] == 0 || lat < p->base_min[slot % PACE_BASE_SLOTS])
        p->base_min[slot % PACE_BASE_SLOTS] = lat;
    for (unsigned i = 0; i < PACE_BASE_SLOTS; i++)
        if (p->base_min[i] && (base == 0 || p->base_min[i] < base))
            base = p->base_min[i];
    return base;
}

void pace_sample(struct pace *p, uint64_t bytes, uint64_t latency_ns, uint64_t now_ns)
{
    uint64_t lat, allowed, interval = p->last_ns && now_ns > p->last_ns ? now_ns - p->last_ns : 0;
    p->last_ns = now_ns;
    if (!p->adaptive || bytes < PACE_MIN_SAMPLE)
        return;
    lat = (uint64_t)((double)latency_ns * (double)PACE_NORM_BYTES / (double)bytes);
    /* What full speed is, learned only while at full speed. */
    if (p->rate == 0 && interval) {
        uint64_t r = per_second(bytes, interval);
        p->full_rate = p->full_rate ? (3 * p->full_rate + r) / 4 : r;
    }
    p->base_ns = pace_base(p, lat, now_ns);
    /* Someone else's I/O is queued beside ours when a step takes clearly
     * longer than it did when the disk was ours: at least PACE_TARGET_NS
     * more, and at least twice as long (a fast disk's few milliseconds vary
     * by more than themselves). */
    allowed = p->base_ns + (p->base_ns > PACE_TARGET_NS ? p->base_ns : PACE_TARGET_NS);
    if (lat > allowed) {
        uint64_t from = pace_limit(p);
        if (from == 0)
            from = p->full_rate ? p->full_rate : per_second(bytes, interval);
        /* A gentle step down (the disk is shared, not lost): a neighbour
         * that stays busy brings it down a step per sample. */
        p->rate = from / 10 * 7 > PACE_MIN_RATE ? from / 10 * 7 : PACE_MIN_RATE;
        p->rate_at_ns = now_ns;
        p->yields++;
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

/* Quiet since the last step down: the rate doubles every PACE_RISE_NS,
 * and is full speed again once it passes what full speed was. */
static void pace_rise(struct pace *p, uint64_t now_ns)
{
    while (p->rate && now_ns >= p->rate_at_ns + PACE_RISE_NS) {
        p->rate *= 2;
        p->rate_at_ns += PACE_RISE_NS;
        if (p->full_rate == 0 || p->rate >= p->full_rate)
            p->rate = 0;
    }
}

uint64_t pace_delay(struct pace *p, uint64_t bytes, uint64_t now_ns)
{
    uint64_t limit;
    pace_rise(p, now_ns);
    limit = pace_limit(p);
    if (limit == 0) {
        p->next_ns = 0;
        return 0;
    }
    /* Time not used is lent for at most PACE_BURST_NS: a pause does not
     * buy a burst that would flood the disk afterwards. */
    if (p->next_ns + PACE_BURST_NS < now_ns)
        p->next_ns = now_ns - PACE_BURST_NS;
    p->next_ns += (uint64_t)((double)bytes * (double)SEC / (double)limit);
    return p->next_ns > now_ns ? p->next_ns - now_ns : 0;
}

void pace_forgive(struct pace *p, uint64_t now_ns)
{
    if (p->next_ns > now_ns)
        p->next_ns = now_ns;
}
