/* test_handoff.c: worker -> ring -> uv_async -> loop, with real threads (the
 * ThreadSanitizer build runs this one). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "move.h"
#include "progress_ring.h"
#include "util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#define STRESS_ITEMS 200000u

static void producer(void *arg)
{
    struct progress_ring *r = arg;
    struct progress_item it;
    memset(&it, 0, sizeof it);
    for (uint64_t i = 1; i <= STRESS_ITEMS; i++) {
        it.kind = (i % 50000 == 0) ? PROGRESS_PHASE : PROGRESS_STEP;
        it.phase = (enum move_phase)(PHASE_CALCULATING + i / 50000);
        it.count.bytes_copied = i;
        ring_push(r, &it);
    }
    it.kind = PROGRESS_END;
    it.count.bytes_copied = STRESS_ITEMS + 1;
    ring_push(r, &it);
}

static void test_concurrent_ring(void **state)
{
    struct progress_ring *r = malloc(sizeof *r);
    struct progress_item out;
    uv_thread_t t;
    uint64_t last = 0, phases = 0;
    bool ended = false;
    (void)state;
    ring_init(r);
    assert_int_equal(uv_thread_create(&t, producer, r), 0);
    while (!ended) {
        if (!ring_pop(r, &out))
            continue;
        assert_true(out.count.bytes_copied > last); /* in order, merged or not */
        last = out.count.bytes_copied;
        phases += out.kind == PROGRESS_PHASE;
        ended = out.kind == PROGRESS_END;
    }
    uv_thread_join(&t);
    assert_int_equal(phases, 4); /* no phase item was merged away */
    assert_int_equal(last, STRESS_ITEMS + 1);
    free(r);
}

/* A worker that fills the ring while the loop is away and then blocks (a
 * sync, a slow read): the loop still gets its newest counters. */
struct blocked_worker {
    struct progress_ring *r;
    uv_sem_t pushed, release;
};

static void blocked_producer(void *arg)
{
    struct blocked_worker *b = arg;
    struct progress_item it;
    memset(&it, 0, sizeof it);
    it.kind = PROGRESS_STEP;
    it.phase = PHASE_COPYING;
    for (uint64_t i = 1; i <= 1000; i++) {
        it.count.bytes_copied = i;
        ring_push(b->r, &it);
    }
    uv_sem_post(&b->pushed);
    uv_sem_wait(&b->release); /* "blocked in the kernel": pushes nothing */
    it.kind = PROGRESS_END;
    it.count.bytes_copied = 1001;
    ring_push(b->r, &it);
}

static void test_blocked_worker_counters_arrive(void **state)
{
    struct blocked_worker b;
    struct progress_item out;
    uv_thread_t t;
    uint64_t last = 0;
    (void)state;
    b.r = malloc(sizeof *b.r);
    ring_init(b.r);
    assert_int_equal(uv_sem_init(&b.pushed, 0), 0);
    assert_int_equal(uv_sem_init(&b.release, 0), 0);
    assert_int_equal(uv_thread_create(&t, blocked_producer, &b), 0);
    uv_sem_wait(&b.pushed);
    while (ring_pop(b.r, &out))
        last = out.count.bytes_copied;
    if (ring_take_kept(b.r, &out))
        last = out.count.bytes_copied;
    assert_int_equal(last, 1000); /* not the 56th report */
    uv_sem_post(&b.release);
    uv_thread_join(&t);
    assert_true(ring_pop(b.r, &out));
    assert_int_equal(out.kind, PROGRESS_END);
    uv_sem_destroy(&b.pushed);
    uv_sem_destroy(&b.release);
    free(b.r);
}

/* --- a real move on a real loop ---------------------------------------------- */

struct recorder {
    struct move_state frames[4096];
    bool intermediate[4096];
    unsigned n;
    bool ended;
    uv_timer_t stopper;
    struct move *m;
    enum move_code stop_with;
};

static struct recorder *rec;

static void on_frame(struct move *m, const struct move_state *st, bool intermediate)
{
    (void)m;
    if (rec->n < 4096) {
        rec->frames[rec->n] = *st;
        rec->frames[rec->n].old_path = rec->frames[rec->n].new_path = NULL;
        rec->intermediate[rec->n] = intermediate;
        rec->n++;
    }
}

static void on_closed(struct move *m)
{
    (void)m;
}

static void on_ended(struct move *m)
{
    rec->ended = true;
    uv_close((uv_handle_t *)&rec->stopper, NULL);
    move_close(m, on_closed);
}

/* Only for a worker that outlives its move's end (a stuck disk). */
static void on_released(struct move *m)
{
    (void)m;
    fail_msg("a worker came back after its move ended");
}

/* Never a prepared move here. */
static void on_ready(struct move *m, enum move_code code, const char *error)
{
    (void)m;
    (void)code;
    (void)error;
    fail_msg("a plain move entered ready");
}

static const struct move_ops ops = {on_frame, on_ended, on_released, on_ready};

static char base[64];

static void make_tree(size_t nfiles, size_t big_mib)
{
    char p[PATH_MAX];
    snprintf(base, sizeof base, "/tmp/hostagent-handoff-XXXXXX");
    assert_non_null(mkdtemp(base));
    snprintf(p, sizeof p, "%s/src", base);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/src/sub", base);
    mkdir(p, 0750);
    for (size_t i = 0; i < nfiles; i++) {
        int fd;
        snprintf(p, sizeof p, "%s/src/sub/f%zu", base, i);
        fd = open(p, O_CREAT | O_WRONLY, 0640);
        assert_true(write(fd, p, strlen(p)) > 0);
        close(fd);
    }
    if (big_mib) {
        snprintf(p, sizeof p, "%s/src/big", base);
        assert_int_equal(truncate(p, 0) == 0 || 1, 1);
        close(open(p, O_CREAT | O_WRONLY, 0600));
        assert_int_equal(truncate(p, (off_t)big_mib << 20), 0);
    }
}

static void on_stopper(uv_timer_t *t)
{
    (void)t;
    if (rec->n > 0 && rec->frames[rec->n - 1].phase == PHASE_COPYING &&
        rec->frames[rec->n - 1].count.bytes_copied > 0)
        move_stop(rec->m, rec->stop_with, "stopped by the test");
}

static void run_move(const char *dst_name, bool stop_midway)
{
    uv_loop_t loop;
    struct move *m = xcalloc(1, sizeof *m);
    char src[PATH_MAX], dst[PATH_MAX];
    struct move_params p = {0};
    struct journal_rec jr = {0}; /* never written: no journal */
    snprintf(src, sizeof src, "%s/src", base);
    snprintf(dst, sizeof dst, "%s/%s", base, dst_name);
    snprintf(jr.move_id, sizeof jr.move_id, "m1");
    snprintf(jr.server_name, sizeof jr.server_name, "s1");
    jr.old_path = jr.src = src;
    jr.new_path = jr.dst = dst;
    jr.rename = false; /* same filesystem, but force the copy path */
    jr.verify = VERIFY_CHECKSUM;
    p.jr = &jr;
    p.progress_interval_ms = 50;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(move_init(m, &loop, &p, &ops, NULL), 0);
    rec->m = m;
    rec->stop_with = CODE_SHUTTING_DOWN;
    uv_timer_init(&loop, &rec->stopper);
    if (stop_midway)
        uv_timer_start(&rec->stopper, on_stopper, 1, 1);
    move_queue(m);
    assert_int_equal(move_run(m), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(rec->ended);
    assert_int_equal(uv_loop_close(&loop), 0);
    free(m);
}

static void check_frames_sane(void)
{
    for (unsigned i = 1; i < rec->n; i++) {
        const struct move_state *a = &rec->frames[i - 1], *b = &rec->frames[i];
        assert_true(b->seq == a->seq + 1);
        assert_true(b->count.bytes_copied >= a->count.bytes_copied);
        assert_true(b->count.files_copied >= a->count.files_copied);
        assert_true(b->phase >= a->phase);
        if (rec->intermediate[i])
            assert_int_equal(b->phase, a->phase); /* phase changes are never intermediate */
    }
}

static void test_move_through_ring(void **state)
{
    char cmd[PATH_MAX];
    const struct move_state *last;
    (void)state;
    rec = xcalloc(1, sizeof *rec);
    make_tree(300, 64);
    run_move("dst", false);
    check_frames_sane();
    assert_int_equal(rec->frames[0].phase, PHASE_QUEUED);
    assert_int_equal(rec->frames[1].phase, PHASE_CALCULATING);
    last = &rec->frames[rec->n - 1];
    assert_int_equal(last->phase, PHASE_COMPLETE);
    assert_int_equal(last->count.files_total, 302);
    assert_int_equal(last->count.files_copied, 302);
    assert_int_equal(last->count.bytes_total, last->count.bytes_copied);
    assert_true(last->count.bytes_total > (64u << 20));
    snprintf(cmd, sizeof cmd, "test ! -e %s/src && test -f %s/dst/big && rm -rf %s", base, base,
             base);
    assert_int_equal(system(cmd), 0);
    free(rec);
}

static void test_stop_midway_rolls_back(void **state)
{
    char cmd[PATH_MAX];
    const struct move_state *last;
    (void)state;
    rec = xcalloc(1, sizeof *rec);
    make_tree(10, 1024);
    run_move("dst", true);
    check_frames_sane();
    last = &rec->frames[rec->n - 1];
    assert_int_equal(last->phase, PHASE_ERROR);
    assert_int_equal(last->code, CODE_SHUTTING_DOWN);
    /* Stopped before the source's removal began (holes copy fast, so the
     * stop may land while verifying). */
    assert_true(rec->n >= 2 && rec->frames[rec->n - 2].phase < PHASE_CLEANING);
    snprintf(cmd, sizeof cmd, "test -f %s/src/big && test ! -e %s/dst && rm -rf %s", base, base,
             base);
    assert_int_equal(system(cmd), 0);
    free(rec);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_ring),
        cmocka_unit_test(test_blocked_worker_counters_arrive),
        cmocka_unit_test(test_move_through_ring),
        cmocka_unit_test(test_stop_midway_rolls_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
