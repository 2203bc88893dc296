/* engine_pace.c: the floor of the move engine: the copy's pace on the
 * worker thread: its I/O class, write-behind, and the rate it is held to
 * (pace.h: the operator's cap and the disk-latency controller). Only the
 * copying phase is paced: a commit's syncing runs while the server is
 * stopped, and verifying and cleaning write nothing. Calls nothing else of
 * the engine. */
#include "engine_internal.h"

/* The knobs carry config.h's io_priority as util.h's class. */
_Static_assert((int)IO_PRIORITY_NORMAL == (int)UTIL_IO_NORMAL &&
                   (int)IO_PRIORITY_LOW == (int)UTIL_IO_LOW &&
                   (int)IO_PRIORITY_IDLE == (int)UTIL_IO_IDLE,
               "io_priority and util_io_class agree");

#define PACE_SLICE_NS (20ull * 1000 * 1000)    /* a stop is seen within this */
#define PACE_MIN_SLEEP_NS (1ull * 1000 * 1000) /* shorter waits are owed, not slept */

static void eng_pace_on_writeback(void *arg, uint64_t bytes, uint64_t latency_ns)
{
    struct eng *e = arg;
    if (e->prog.phase == PHASE_COPYING)
        pace_sample(&e->pace, bytes, latency_ns, util_mono_ns());
}

/* The knobs' values now: a SIGHUP may have changed them. */
static void eng_pace_knobs(struct eng *e)
{
    struct engine_knobs *k = e->job->knobs;
    int c;
    if (!k)
        return;
    pace_set_max(&e->pace, atomic_load_explicit(&k->max_rate, memory_order_relaxed));
    c = atomic_load_explicit(&k->io_class, memory_order_relaxed);
    if (c != e->io_class) {
        int rc = util_set_io_class((enum util_io_class)c);
        if (rc != 0)
            LOG(LOG_DEBUG, "cannot set the move's I/O class", LF_S("reason", strerror(-rc)));
        e->io_class = c;
    }
}

/* The copy's step while held to limit bytes/s: a tenth of a second's worth
 * (in 64 KiB units, at least one), so that it writes in short even bursts
 * rather than 8 MiB at once followed by a long wait; 0: unpaced. */
static size_t eng_pace_chunk(uint64_t limit)
{
    uint64_t c = limit / 10 / (64u << 10) * (64u << 10);
    if (limit == 0 || c >= FILE_COPY_CHUNK)
        return 0;
    return c ? (size_t)c : 64u << 10;
}

void eng_pace_init(struct eng *e)
{
    pace_init(&e->pace, 0, true);
    e->io_class = -1;
    e->cc.write_behind = true;
    /* A move reads the source once and removes it: its pages would only
     * push the neighbours' out of the cache. A preparing copy's source is a
     * running server's. */
    e->cc.drop_source = e->job->mode == ENGINE_MOVE;
    e->cc.on_writeback = eng_pace_on_writeback;
    eng_pace_knobs(e);
}

void eng_pace(struct eng *e, uint64_t delta)
{
    uint64_t wait;
    if (e->prog.phase != PHASE_COPYING) {
        e->cc.max_chunk = 0; /* a commit's final pass runs at full speed */
        return;
    }
    eng_pace_knobs(e);
    wait = pace_delay(&e->pace, delta, util_mono_ns());
    e->prog.count.rate_limit = pace_limit(&e->pace);
    e->cc.max_chunk = eng_pace_chunk(e->prog.count.rate_limit);
    e->prog.count.yielding = pace_yielding(&e->pace);
    if (wait < PACE_MIN_SLEEP_NS)
        return; /* the bucket remembers it: paid with a later wait */
    while (wait > 0) {
        uint64_t slice = wait < PACE_SLICE_NS ? wait : PACE_SLICE_NS;
        struct timespec ts = {(time_t)(slice / 1000000000u), (long)(slice % 1000000000u)};
        int stop = atomic_load_explicit(e->job->stop, memory_order_relaxed);
        uint64_t limit = pace_limit(&e->pace);
        if (stop != CODE_NONE && stop != ENGINE_STOP_LOCKED)
            return; /* the copy's next check ends it */
        (void)nanosleep(&ts, NULL);
        wait -= slice;
        /* A SIGHUP that lifted or raised the cap ends the wait it set:
         * the bytes so far count as paid. */
        eng_pace_knobs(e);
        if (pace_limit(&e->pace) == 0 || pace_limit(&e->pace) > limit) {
            pace_forgive(&e->pace, util_mono_ns());
            e->prog.count.rate_limit = pace_limit(&e->pace);
            e->cc.max_chunk = eng_pace_chunk(e->prog.count.rate_limit);
            return;
        }
    }
}

void eng_pace_done(struct eng *e)
{
    if (e->pace.yields == 0)
        return;
    LOG(LOG_INFO, "the copy gave the disk way to other I/O",
        LF_S("move", e->job->move_id ? e->job->move_id : "-"), LF_U("slowdowns", e->pace.yields),
        LF_U("idle_step_us", e->pace.base_ns / 1000), LF_U("full_rate", e->pace.full_rate));
}
