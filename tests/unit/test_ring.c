/* test_ring.c: the progress ring: order, wrap-around, merging, reserved slots. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "progress_ring.h"

#include <stdlib.h>
#include <string.h>

static struct progress_item step(uint64_t n)
{
    struct progress_item it;
    memset(&it, 0, sizeof it);
    it.kind = PROGRESS_STEP;
    it.phase = PHASE_COPYING;
    it.count.bytes_copied = n;
    it.count.files_copied = n;
    return it;
}

static struct progress_item phase(enum move_phase p, enum progress_kind k, uint64_t n)
{
    struct progress_item it = step(n);
    it.kind = k;
    it.phase = p;
    return it;
}

static void test_fifo_and_wraparound(void **state)
{
    struct progress_ring *r = malloc(sizeof *r);
    struct progress_item out;
    uint64_t next_expected = 0;
    (void)state;
    ring_init(r);
    /* Many times the capacity, popping as we go: indices wrap many times. */
    for (uint64_t i = 0; i < RING_CAP * 50; i++) {
        struct progress_item it = step(i);
        assert_true(ring_push(r, &it));
        if (i % 3 == 2) {
            while (ring_pop(r, &out)) {
                assert_int_equal(out.count.bytes_copied, next_expected);
                next_expected++;
            }
        }
    }
    while (ring_pop(r, &out))
        assert_int_equal(out.count.bytes_copied, next_expected++);
    assert_int_equal(next_expected, RING_CAP * 50);
    assert_int_equal(r->merged, 0);
    assert_false(ring_pop(r, &out));
    free(r);
}

static void test_full_ring_merges_steps(void **state)
{
    struct progress_ring *r = malloc(sizeof *r);
    struct progress_item out;
    unsigned n = 0;
    uint64_t last = 0;
    (void)state;
    ring_init(r);
    for (uint64_t i = 1; i <= 1000; i++) {
        struct progress_item it = step(i);
        ring_push(r, &it); /* never blocks */
    }
    /* Steps fill all but the reserve; the rest merged into one kept aside. */
    assert_true(r->has_pending);
    assert_int_equal(r->merged, 1000 - (RING_CAP - RING_RESERVE) - 1);
    while (ring_pop(r, &out)) {
        assert_true(out.count.bytes_copied > last);
        last = out.count.bytes_copied;
        n++;
    }
    assert_int_equal(n, RING_CAP - RING_RESERVE);
    /* Drained: the kept step is taken, the newest state delivered, once. */
    assert_true(ring_take_kept(r, &out));
    assert_int_equal(out.count.bytes_copied, 1000);
    assert_false(ring_take_kept(r, &out));
    assert_false(ring_pop(r, &out));
    free(r);
}

static void test_phase_and_end_never_lost(void **state)
{
    struct progress_ring *r = malloc(sizeof *r);
    struct progress_item out;
    enum move_phase seen[8];
    unsigned ns = 0;
    (void)state;
    ring_init(r);
    /* Nobody consumes: every phase change and the end must still fit. */
    static const enum move_phase phases[] = {PHASE_CALCULATING, PHASE_COPYING, PHASE_VERIFYING,
                                             PHASE_CLEANING};
    for (size_t k = 0; k < sizeof phases / sizeof phases[0]; k++) {
        enum move_phase p = phases[k];
        struct progress_item ph = phase(p, PROGRESS_PHASE, (uint64_t)p * 1000);
        ring_push(r, &ph);
        for (int i = 0; i < 200; i++) {
            struct progress_item it = step((uint64_t)p * 1000 + (uint64_t)i);
            it.phase = p;
            ring_push(r, &it);
        }
    }
    {
        struct progress_item end = phase(PHASE_COMPLETE, PROGRESS_END, 99999);
        ring_push(r, &end);
    }
    /* The end superseded the kept step. */
    assert_false(r->has_pending);
    while (ring_pop(r, &out)) {
        if (out.kind != PROGRESS_STEP)
            seen[ns++] = out.phase;
    }
    assert_int_equal(ns, 5);
    assert_int_equal(seen[0], PHASE_CALCULATING);
    assert_int_equal(seen[1], PHASE_COPYING);
    assert_int_equal(seen[2], PHASE_VERIFYING);
    assert_int_equal(seen[3], PHASE_CLEANING);
    assert_int_equal(seen[4], PHASE_COMPLETE);
    assert_int_equal(out.kind, PROGRESS_END);
    assert_int_equal(out.count.bytes_copied, 99999);
    free(r);
}

static void test_step_after_phase_keeps_order(void **state)
{
    struct progress_ring *r = malloc(sizeof *r);
    struct progress_item out, it;
    (void)state;
    ring_init(r);
    it = phase(PHASE_COPYING, PROGRESS_PHASE, 1);
    ring_push(r, &it);
    it = step(2);
    ring_push(r, &it);
    assert_true(ring_pop(r, &out));
    assert_int_equal(out.kind, PROGRESS_PHASE);
    assert_true(ring_pop(r, &out));
    assert_int_equal(out.kind, PROGRESS_STEP);
    assert_int_equal(out.count.bytes_copied, 2);
    assert_false(ring_pop(r, &out));
    free(r);
}

/* A STEP kept aside while the ring is full reaches the consumer once it has
 * drained the ring, without the producer pushing again (a worker blocked in
 * a sync); the wake-up is asked for only when the consumer has not got one
 * for the kept item already. */
static void test_kept_step_reaches_consumer(void **state)
{
    struct progress_ring *r = malloc(sizeof *r);
    struct progress_item out, it;
    unsigned n = 0;
    (void)state;
    ring_init(r);
    for (uint64_t i = 1; i <= RING_CAP - RING_RESERVE; i++) {
        it = step(i);
        assert_true(ring_push(r, &it)); /* into the ring: wake */
    }
    it = step(100);
    assert_true(ring_push(r, &it)); /* kept aside: the consumer must know */
    it = step(101);
    assert_false(ring_push(r, &it)); /* replaces an untaken one: already woken */
    assert_false(ring_take_kept(r, &out) && out.count.bytes_copied != 101);
    ring_init(r);
    for (uint64_t i = 1; i <= 200; i++) {
        it = step(i);
        ring_push(r, &it);
    }
    while (ring_pop(r, &out))
        n++;
    assert_int_equal(n, RING_CAP - RING_RESERVE);
    assert_true(ring_take_kept(r, &out));
    assert_int_equal(out.count.bytes_copied, 200);
    assert_false(ring_take_kept(r, &out)); /* once */
    assert_false(ring_pop(r, &out));
    /* Taken: the producer's next STEP, finding room, goes into the ring
     * alone; the taken one is not sent twice. */
    it = step(201);
    assert_true(ring_push(r, &it));
    assert_true(ring_pop(r, &out));
    assert_int_equal(out.count.bytes_copied, 201);
    assert_false(ring_pop(r, &out));
    assert_false(ring_take_kept(r, &out));
    /* Taken, then the producer keeps another: a wake-up again. */
    for (uint64_t i = 202; i <= 201 + RING_CAP - RING_RESERVE; i++) {
        it = step(i);
        ring_push(r, &it);
    }
    it = step(999);
    assert_true(ring_push(r, &it));
    /* A phase item withdraws an untaken kept STEP: it never follows it. */
    it = phase(PHASE_VERIFYING, PROGRESS_PHASE, 1000);
    assert_true(ring_push(r, &it));
    assert_false(ring_take_kept(r, &out));
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fifo_and_wraparound),
        cmocka_unit_test(test_full_ring_merges_steps),
        cmocka_unit_test(test_phase_and_end_never_lost),
        cmocka_unit_test(test_step_after_phase_keeps_order),
        cmocka_unit_test(test_kept_step_reaches_consumer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
