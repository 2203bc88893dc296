/* test_pace.c: the copy's pace: the operator's cap, the token bucket, and the
 * controller yielding when the disk's latency rises and coming back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "pace.h"

#define MS (1000ull * 1000)
#define MIB (1ull << 20)

/* Writes `steps` steps of 8 MiB, each taking latency_ms to write back,
 * paced: returns the time it took (ns) starting at *now (advanced). */
static uint64_t run(struct pace *p, uint64_t *now, int steps, uint64_t latency_ms)
{
    uint64_t t0 = *now;
    for (int i = 0; i < steps; i++) {
        *now += 4 * MS; /* the copy's own time for a step: 2 GB/s */
        *now += pace_delay(p, 8 * MIB, *now);
        pace_sample(p, 8 * MIB, latency_ms * MS, *now);
    }
    return *now - t0;
}

static void no_cap_no_delay(void **state)
{
    struct pace p;
    (void)state;
    pace_init(&p, 0, false);
    assert_int_equal(pace_delay(&p, 1ull << 30, 1), 0);
    assert_int_equal(pace_limit(&p), 0);
    assert_false(pace_yielding(&p));
}

static void cap_holds_the_rate(void **state)
{
    struct pace p;
    uint64_t now = 1000 * MS, took;
    (void)state;
    pace_init(&p, 100 * MIB, false);
    /* 100 steps of 8 MiB at 100 MiB/s: 8 s, whatever the copy's own speed. */
    took = run(&p, &now, 100, 1);
    assert_true(took >= 7900 * MS && took <= 8100 * MS);
    assert_false(pace_yielding(&p)); /* a cap is not yielding */
    /* Raised from outside (SIGHUP): the next steps go faster. */
    pace_set_max(&p, 400 * MIB);
    took = run(&p, &now, 100, 1);
    assert_true(took >= 1900 * MS && took <= 2100 * MS);
    pace_set_max(&p, 0);
    assert_int_equal(pace_delay(&p, 8 * MIB, now), 0);
}

static void forgive_pays_what_is_owed(void **state)
{
    struct pace p;
    uint64_t now = 1000 * MS;
    (void)state;
    pace_init(&p, MIB, false);
    assert_true(pace_delay(&p, 8 * MIB, now) > 7 * 1000 * MS);
    /* The cap was raised while the copy waited: nothing is owed any more. */
    pace_set_max(&p, 100 * MIB);
    pace_forgive(&p, now + MS);
    assert_int_equal(pace_delay(&p, MIB, now + MS), 10 * MS);
}

static void pause_buys_no_burst(void **state)
{
    struct pace p;
    uint64_t now = 1000 * MS;
    (void)state;
    pace_init(&p, 10 * MIB, false);
    (void)pace_delay(&p, 10 * MIB, now);
    now += 60ull * 1000 * MS; /* a minute without writing */
    /* 10 MiB at 10 MiB/s: a second, less the 50 ms lent. */
    assert_int_equal(pace_delay(&p, 10 * MIB, now), 1000 * MS - PACE_BURST_NS);
}

static void yields_when_latency_rises_and_comes_back(void **state)
{
    struct pace p;
    uint64_t now = 1000 * MS;
    uint64_t idle_took, busy_took;
    (void)state;
    pace_init(&p, 0, true);
    idle_took = run(&p, &now, 20, 8);
    assert_false(pace_yielding(&p));
    assert_int_equal(p.base_ns, 8 * MS);
    /* A neighbour: our steps take 40 ms to write back. */
    busy_took = run(&p, &now, 20, 40);
    assert_true(pace_yielding(&p));
    assert_true(p.yields > 0);
    assert_true(busy_took > 4 * idle_took);
    /* The idle latency is the lowest of the last PACE_BASE_SLOTS seconds: a
     * disk busy without a pause for longer is the new normal, shared as
     * two writers share it (a neighbour that saves now and then leaves
     * quiet moments, and the base stays)... */
    (void)run(&p, &now, 100, 40);
    assert_int_equal(p.base_ns, 40 * MS);
    assert_false(pace_yielding(&p));
    /* ...and it never goes below the floor, however busy the disk. */
    for (int i = 0; i < 30; i++) {
        (void)run(&p, &now, 1, 2000);
        assert_true(pace_limit(&p) == 0 || pace_limit(&p) >= PACE_MIN_RATE);
    }
    assert_true(p.yields > 20);
    /* Quiet again: back to full speed within a second or two. */
    {
        uint64_t t0 = now;
        while (pace_yielding(&p) && now - t0 < 5000 * MS)
            (void)run(&p, &now, 1, 8);
        assert_false(pace_yielding(&p));
        assert_true(now - t0 < 2500 * MS);
    }
    assert_int_equal(pace_limit(&p), 0);
}

static void lucky_step_expires(void **state)
{
    struct pace p;
    uint64_t now = 1000 * MS;
    (void)state;
    pace_init(&p, 0, true);
    /* One step written back at once (a cache in front of the disk), then
     * the disk's real 20 ms: taken as congestion at first... */
    pace_sample(&p, 8 * MIB, 1 * MS, now);
    (void)run(&p, &now, 10, 20);
    assert_true(p.yields > 0);
    /* ...but not for more than the base's window. */
    now += 11000 * MS;
    (void)run(&p, &now, 300, 20);
    assert_int_equal(p.base_ns, 20 * MS);
    assert_false(pace_yielding(&p));
}

static void small_variation_is_not_congestion(void **state)
{
    struct pace p;
    uint64_t now = 1000 * MS;
    (void)state;
    pace_init(&p, 0, true);
    (void)run(&p, &now, 5, 1);
    /* 1 ms -> 5 ms: within PACE_TARGET_NS of the idle latency. */
    (void)run(&p, &now, 20, 5);
    assert_false(pace_yielding(&p));
    /* A step's tail of a few KiB says nothing. */
    pace_sample(&p, 4096, 500 * MS, now);
    assert_false(pace_yielding(&p));
}

static void cap_below_controller(void **state)
{
    struct pace p;
    uint64_t now = 1000 * MS;
    (void)state;
    pace_init(&p, 50 * MIB, true);
    (void)run(&p, &now, 5, 8);
    /* Quiet: the cap holds, and that is not yielding. */
    assert_int_equal(pace_limit(&p), 50 * MIB);
    assert_false(pace_yielding(&p));
    /* Busy: the controller steps down from what full speed was (the cap's). */
    (void)run(&p, &now, 1, 100);
    assert_int_equal(pace_limit(&p), 50 * MIB / 10 * 7);
    assert_true(pace_yielding(&p));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(no_cap_no_delay),
        cmocka_unit_test(cap_holds_the_rate),
        cmocka_unit_test(pause_buys_no_burst),
        cmocka_unit_test(forgive_pays_what_is_owed),
        cmocka_unit_test(yields_when_latency_rises_and_comes_back),
        cmocka_unit_test(lucky_step_expires),
        cmocka_unit_test(small_variation_is_not_congestion),
        cmocka_unit_test(cap_below_controller),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
