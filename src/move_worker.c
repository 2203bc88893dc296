/* move_worker.c: a move's worker thread: its entry (the engine run), the
 * progress callback into the ring and the wake-up of the loop, the worker's
 * journal writes (phase, destination identity, reclaim directory), and the
 * life of the block it shares with the loop (include/move_work.h). Nothing
 * here touches the loop's struct move: only the shared block, and that as
 * move_work.h's table says. */
#include "move_work.h"
#include "bg_thread.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* The atomics the loop writes (stop, seq_sent) are the loop's to initialise,
 * before the thread starts (move.c). */
struct move_work *move_worker_alloc(void)
{
    struct move_work *w = xcalloc(1, sizeof *w);
    pthread_mutex_init(&w->lock, NULL);
    w->refs = 1;
    ring_init(&w->ring);
    atomic_init(&w->beat, 0);
    atomic_init(&w->dst_known, false);
    atomic_init(&w->dst_dev, 0);
    atomic_init(&w->dst_ino, 0);
    return w;
}

void move_worker_unref(struct move_work *w)
{
    if (!bg_unref_last(&w->lock, &w->refs))
        return;
    for (size_t i = 0; i < w->n_made; i++)
        free(w->made_parents[i]);
    free(w->made_parents);
    free(w->move_id);
    free(w->src);
    free(w->dst);
    free(w->src_root);
    free(w->dst_root);
    free(w->ident_path);
    free(w->moves_dir);
    journal_writer_unshare(w->writer);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

/* Wakes the loop, unless it let go of this worker. */
static void work_wake(struct move_work *w)
{
    pthread_mutex_lock(&w->lock);
    if (!w->detached)
        uv_async_send(w->async);
    pthread_mutex_unlock(&w->lock);
}

static void fill_item(struct progress_item *it, const struct engine_progress *p)
{
    it->phase = p->phase;
    it->count = p->count;
    if (p->current)
        util_fmt(it->current, sizeof it->current, "%s", p->current);
    else
        it->current[0] = '\0';
}

/* The engine's progress callback, on the worker: into the ring, then wake
 * the loop. uv_async_send coalesces, so a burst costs one wake-up. */
static void move_report(void *arg, const struct engine_progress *p, bool phase_start)
{
    struct move_work *w = arg;
    struct progress_item it;
    atomic_fetch_add_explicit(&w->beat, 1, memory_order_relaxed);
    it.kind = phase_start ? PROGRESS_PHASE : PROGRESS_STEP;
    it.code = CODE_NONE;
    it.error[0] = '\0';
    fill_item(&it, p);
    if (ring_push(&w->ring, &it))
        work_wake(w);
}

/* The worker's journal write: fn changes jr under the lock (unless the loop
 * has taken the record: then `taken` is returned and nothing happens), and
 * the text taken there is queued on the journal writer, still under the
 * lock, so that the records of the move reach the writer in the order they
 * were made, whoever made them (the loop queues its own the same way,
 * move_record_update); then the worker waits for its write with the lock
 * released (see move_work.h: the loop takes this lock on its stuck-worker
 * paths and must never wait for a disk), `rec_busy` saying so. So a phase is
 * recorded before its frame is sent. 0 when the record holds fn's change,
 * else -errno. */
static int work_record(struct move_work *w, void (*fn)(struct journal_rec *jr, const void *arg),
                       const void *arg, int taken)
{
    struct jw_job *job;
    int rc;
    pthread_mutex_lock(&w->lock);
    if (w->no_record) {
        pthread_mutex_unlock(&w->lock);
        return taken;
    }
    fn(w->jr, arg);
    w->jr->seq = atomic_load(&w->seq_sent);
    job = journal_post_text(w->writer, w->moves_dir, w->move_id, journal_format(w->jr));
    w->rec_busy = true;
    pthread_mutex_unlock(&w->lock);
    rc = journal_writer_wait(w->writer, job);
    /* Back from the disk: a sign of life (a slow state_dir is no stuck worker). */
    atomic_fetch_add_explicit(&w->beat, 1, memory_order_relaxed);
    pthread_mutex_lock(&w->lock);
    w->rec_busy = false;
    pthread_mutex_unlock(&w->lock);
    return rc;
}

static void set_phase(struct journal_rec *jr, const void *arg)
{
    const struct engine_progress *p = arg;
    jr->phase = p->phase;
    jr->count = p->count;
}

/* On the worker, when a phase begins: the journal says so before its work
 * (for cleaning, before anything of the source is removed). Not once the
 * loop has ended the move without this worker: the record is the loop's. */
static int move_on_phase(void *arg, const struct engine_progress *p)
{
    return work_record(arg, set_phase, p, 0);
}

static void set_dst(struct journal_rec *jr, const void *arg)
{
    const struct stat *st = arg;
    jr->dst_id.known = true;
    jr->dst_id.dev = (uint64_t)st->st_dev;
    jr->dst_id.ino = (uint64_t)st->st_ino;
}

/* On the worker, once the destination directory is open and before anything
 * is written into it: its identity goes into the journal, so that recovery
 * can tell it from anything put at newPath later. */
static int move_on_dst(void *arg, const struct stat *st)
{
    struct move_work *w = arg;
    atomic_store(&w->dst_dev, (uint64_t)st->st_dev);
    atomic_store(&w->dst_ino, (uint64_t)st->st_ino);
    atomic_store(&w->dst_known, true);
    return work_record(w, set_dst, st, 0);
}

static void set_reclaim(struct journal_rec *jr, const void *arg)
{
    const struct engine_reclaim *r = arg;
    free(jr->reclaim.dir);
    jr->reclaim.dir = xstrdup(r->dir);
    jr->reclaim.in_mount = r->in_mount;
    jr->reclaim.undone = r->undone;
    jr->reclaim.id.known = true;
    jr->reclaim.id.dev = (uint64_t)r->dev;
    jr->reclaim.id.ino = (uint64_t)r->ino;
    jr->reclaim.entries = r->entries;
    jr->reclaim.bytes = r->bytes;
}

/* On the worker, right before the source is renamed into its reclaim
 * directory (and again if it is renamed back): the journal names the
 * directory first, so recovery looks for the source there. Once the loop
 * let go of the record: no rename it cannot see. */
static int move_on_reclaim(void *arg, const struct engine_reclaim *r)
{
    return work_record(arg, set_reclaim, r, -ECANCELED);
}

static struct engine_id engine_id_of(const struct journal_id *id)
{
    struct engine_id e = {.known = id->known, .dev = (dev_t)id->dev, .ino = (ino_t)id->ino};
    return e;
}

void move_worker_main(void *arg)
{
    struct move_work *w = arg;
    /* Named for operators (top -H, ps -L) and for the tests' freezer. */
    (void)pthread_setname_np(pthread_self(), "ha-move");
    struct engine_job job = {
        .src = w->src,
        .dst = w->dst,
        .src_root = w->src_root,
        .dst_root = w->dst_root,
        .rename = w->rename,
        .verify = w->verify,
        .stop = &w->stop,
        .report = move_report,
        .on_phase = w->jr && w->journal ? move_on_phase : NULL,
        .on_dst = w->jr && w->journal ? move_on_dst : NULL,
        .reclaim = w->reclaim,
        .move_id = w->jr && w->journal ? w->move_id : NULL,
        .on_reclaim = w->jr && w->journal ? move_on_reclaim : NULL,
        .resume_reclaim = w->resume_reclaim,
        .alive = &w->beat,
        .arg = w,
        .mode = w->mode,
        .dst_preexisted = w->dst_preexisted,
        .dst_orig = w->dst_orig,
        .made_parents = w->made_parents,
        .n_made = w->n_made,
        .resume_phase = w->resume_phase,
        .files_copied = w->resumed.files_copied,
        .bytes_copied = w->resumed.bytes_copied,
        .ident_path = w->ident_path,
        .knobs = &w->knobs,
    };
    struct progress_item it;
    struct engine_result res;

    job.src_id = engine_id_of(&w->src_id);
    job.dst_id = engine_id_of(&w->dst_id);
    engine_run(&job, &res);
    memset(&it, 0, sizeof it);
    it.kind = PROGRESS_END;
    it.code = res.code;
    util_fmt(it.error, sizeof it.error, "%s", res.error);
    if (res.code == CODE_NONE && res.warning_code != CODE_NONE) {
        it.warning = true;
        it.code = res.warning_code;
        util_fmt(it.error, sizeof it.error, "%s", res.warning);
    }
    it.count.bytes_copied = res.bytes_copied;
    it.count.files_copied = res.files_copied;
    it.back_to_ready = res.back_to_ready;
    it.bytes_synced = res.bytes_synced;
    it.files_synced = res.files_synced;
    w->reclaim_ready = res.reclaim && res.code == CODE_NONE;
    ring_push(&w->ring, &it);
    work_wake(w);
    move_worker_unref(w);
}
