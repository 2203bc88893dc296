/* progress_ring.c: the lock-free worker-to-loop hand-off of progress reports. */
#include "progress_ring.h"

#include <assert.h>
#include <string.h>

void ring_init(struct progress_ring *r)
{
    memset(r, 0, sizeof *r);
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    r->kept_back = 0;
    r->kept_front = 2;
    atomic_init(&r->kept_mid, 1);
}

/* Producer: offers it as the kept STEP. True when the consumer had taken
 * the previous one (or there was none): it has to be woken for this one. */
static bool kept_publish(struct progress_ring *r, const struct progress_item *it)
{
    uint32_t old;
    r->kept[r->kept_back] = *it;
    /* acq_rel: the buffer is written before it is offered, and the one given
     * back is no longer read by the consumer. */
    old = atomic_exchange_explicit(&r->kept_mid, r->kept_back | RING_KEPT_FRESH,
                                   memory_order_acq_rel);
    r->kept_back = old & 3u;
    return !(old & RING_KEPT_FRESH);
}

/* Producer: withdraws the offered STEP. True when the consumer had not taken
 * it (it is withdrawn); false when it had (or nothing was offered). */
static bool kept_withdraw(struct progress_ring *r)
{
    uint32_t old = atomic_exchange_explicit(&r->kept_mid, r->kept_back, memory_order_acq_rel);
    r->kept_back = old & 3u;
    return (old & RING_KEPT_FRESH) != 0;
}

static uint32_t ring_free(struct progress_ring *r, uint32_t head)
{
    /* acquire: the consumer finished reading every slot before tail. */
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    return RING_CAP - (head - tail);
}

static void ring_write(struct progress_ring *r, uint32_t head, const struct progress_item *it)
{
    r->slots[head & (RING_CAP - 1)] = *it;
    /* release: the slot's contents are visible before the new head. */
    atomic_store_explicit(&r->head, head + 1, memory_order_release);
}

bool ring_push(struct progress_ring *r, const struct progress_item *it)
{
    uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint32_t room = ring_free(r, head);

    if (it->kind == PROGRESS_STEP) {
        if (room > RING_RESERVE) {
            /* Anything kept aside is older than it: superseded (withdrawn
             * first, so the consumer never takes it after this one). */
            if (r->has_pending) {
                r->has_pending = false;
                (void)kept_withdraw(r);
            }
            ring_write(r, head, it);
            return true;
        }
        if (r->has_pending)
            r->merged++;
        r->has_pending = true;
        return kept_publish(r, it);
    }
    if (r->has_pending) {
        r->has_pending = false;
        if (kept_withdraw(r))
            r->merged++;
    }
    /* The reserve guarantees room: a move sends at most RING_RESERVE
     * non-STEP items in its whole life. */
    assert(room > 0);
    ring_write(r, head, it);
    return true;
}

bool ring_pop(struct progress_ring *r, struct progress_item *out)
{
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint32_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    if (tail == head)
        return false;
    *out = r->slots[tail & (RING_CAP - 1)];
    atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
    return true;
}

bool ring_take_kept(struct progress_ring *r, struct progress_item *out)
{
    uint32_t old;
    if (!(atomic_load_explicit(&r->kept_mid, memory_order_acquire) & RING_KEPT_FRESH))
        return false;
    /* acq_rel: the producer's write of the buffer is seen; ours of the front
     * one is finished before the producer may reuse it. */
    old = atomic_exchange_explicit(&r->kept_mid, r->kept_front, memory_order_acq_rel);
    r->kept_front = old & 3u;
    if (!(old & RING_KEPT_FRESH))
        return false; /* withdrawn meanwhile: a newer item is in the ring */
    *out = r->kept[r->kept_front];
    return true;
}
