/* progress_ring.c: the lock-free worker-to-loop hand-off of progress reports. */
#include "progress_ring.h"

#include <assert.h>
#include <string.h>

void ring_init(struct progress_ring *r)
{
    memset(r, 0, sizeof *r);
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
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
            /* Anything kept aside is older than it: superseded. */
            r->has_pending = false;
            ring_write(r, head, it);
        } else {
            if (r->has_pending)
                r->merged++;
            r->pending = *it;
            r->has_pending = true;
        }
        return true;
    }
    if (r->has_pending) {
        r->has_pending = false;
        r->merged++;
    }
    /* The reserve guarantees room: a move sends at most RING_RESERVE
     * non-STEP items in its whole life. */
    assert(room > 0);
    ring_write(r, head, it);
    return true;
}

bool ring_flush(struct progress_ring *r)
{
    uint32_t head;
    if (!r->has_pending)
        return false;
    head = atomic_load_explicit(&r->head, memory_order_relaxed);
    if (ring_free(r, head) <= RING_RESERVE)
        return false;
    r->has_pending = false;
    ring_write(r, head, &r->pending);
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
