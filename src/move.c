/* move.c: a move on the event loop: its worker's start, stop and join, the
 * drain of the worker's ring into frames, the throttle, the timers (timeouts,
 * prepare_ttl, a stopped worker that does not come back), abandoning or
 * detaching a stuck worker, and the loop's own writes of the journal record.
 * What runs on the worker thread is in move_worker.c; all the two share is
 * struct move_work (include/move_work.h). */
#include "move.h"
#include "log.h"
#include "move_work.h"
#include "util.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* --- the shared block ------------------------------------------------------- */

/* The cap of a move's copy: the lower of the request's and the config's
 * (0: neither set one). */
static uint64_t move_pace_cap(uint64_t asked, uint64_t cfg)
{
    return asked && cfg ? (asked < cfg ? asked : cfg) : asked ? asked : cfg;
}

/* The block a move shares with its worker, filled from the move's journal
 * record: the job's inputs are copies (the worker may outlive the move and
 * its record). */
static struct move_work *work_new(const struct move_params *p)
{
    const struct journal_rec *jr = p->jr;
    struct move_work *w = move_worker_alloc();
    w->src = xstrdup(jr->src);
    w->dst = xstrdup(jr->dst);
    w->src_root = p->src_root ? xstrdup(p->src_root) : NULL;
    w->dst_root = p->dst_root ? xstrdup(p->dst_root) : NULL;
    w->ident_path = p->ident_path ? xstrdup(p->ident_path) : NULL;
    w->rename = jr->rename;
    w->verify = jr->verify;
    w->mode = p->mode;
    w->reclaim = p->reclaim;
    atomic_init(&w->knobs.max_rate, move_pace_cap(p->max_rate_asked, p->max_rate));
    atomic_init(&w->knobs.io_class, (int)p->io_priority);
    w->move_id = xstrdup(jr->move_id);
    if (jr->reclaim.dir && !jr->reclaim.undone) {
        util_fmt(w->resume_reclaim.dir, sizeof w->resume_reclaim.dir, "%s", jr->reclaim.dir);
        w->resume_reclaim.in_mount = jr->reclaim.in_mount;
        w->resume_reclaim.dev = (dev_t)jr->reclaim.id.dev;
        w->resume_reclaim.ino = (ino_t)jr->reclaim.id.ino;
        w->resume_reclaim.entries = jr->reclaim.entries;
        w->resume_reclaim.bytes = jr->reclaim.bytes;
    }
    w->jr = p->jr;
    w->journal = p->journal;
    w->moves_dir = p->journal ? xstrdup(p->journal->moves) : NULL;
    w->writer = journal_writer_share(p->writer);
    w->no_record = p->silent;
    w->dst_preexisted = jr->dst_preexisted;
    w->dst_orig = jr->dst_orig;
    w->made_parents = xcalloc(jr->n_made + 1, sizeof(char *));
    for (size_t i = 0; i < jr->n_made; i++)
        w->made_parents[i] = xstrdup(jr->made_parents[i]);
    w->n_made = jr->n_made;
    w->resume_phase = jr->phase;
    w->src_id = jr->src_id;
    w->dst_id = jr->dst_id;
    w->resumed = jr->count;
    /* A resumed move only cleans up: nothing to cancel any more. */
    atomic_init(&w->stop, p->mode == ENGINE_UNDO || p->mode == ENGINE_FINISH ? ENGINE_STOP_LOCKED
                                                                             : CODE_NONE);
    return w;
}

/* --- loop side: state ------------------------------------------------------ */

/* Logs and takes a phase change the state machine allows; refuses any other
 * (a bug: asserted in debug builds, logged and ignored otherwise). */
static void enter_state(struct move *m, enum move_phase next)
{
    uint64_t now = util_mono_ms();
    if (m->st.phase == next)
        return;
    if (!move_phase_may_follow(m->st.phase, next)) {
        LOG(LOG_ERROR, "refused a move phase change the state machine does not allow",
            LF_S("move", m->st.move_id), LF_S("from", move_phase_name(m->st.phase)),
            LF_S("to", move_phase_name(next)));
        assert(!"move phase change not allowed");
        return;
    }
    LOG(LOG_INFO, "move phase", LF_S("move", m->st.move_id), LF_S("server", m->st.server_name),
        LF_S("from", move_phase_name(m->st.phase)), LF_S("to", move_phase_name(next)),
        LF_U("phase_ms", now - m->phase_started_ms));
    m->st.phase = next;
    m->phase_started_ms = now;
    m->entries = m->last_frame_entries = 0;
    m->st.count.phase_done = m->st.count.phase_total = 0;
}

uint64_t move_frame_due(uint64_t last_frame_ms, uint64_t entries_delta, uint64_t bytes_delta,
                        uint64_t progress_interval_ms)
{
    uint64_t wait = progress_interval_ms;
    if (entries_delta >= MOVE_FRAME_ENTRIES || bytes_delta >= MOVE_FRAME_BYTES)
        wait = 0;
    if (wait < MOVE_MIN_FRAME_GAP_MS)
        wait = MOVE_MIN_FRAME_GAP_MS;
    return last_frame_ms + wait;
}

static void rate_sample(struct move *m, uint64_t now)
{
    unsigned last = (m->sample_pos + MOVE_RATE_SAMPLES - 1) % MOVE_RATE_SAMPLES;
    if (m->n_samples > 0 && now - m->samples[last].t < 250)
        return;
    m->samples[m->sample_pos].t = now;
    m->samples[m->sample_pos].bytes = m->st.count.bytes_copied;
    m->sample_pos = (m->sample_pos + 1) % MOVE_RATE_SAMPLES;
    if (m->n_samples < MOVE_RATE_SAMPLES)
        m->n_samples++;
}

/* Bytes per second over the last ~5 s of samples. */
static uint64_t rate_current(const struct move *m, uint64_t now)
{
    const unsigned first = (m->sample_pos + MOVE_RATE_SAMPLES - m->n_samples) % MOVE_RATE_SAMPLES;
    for (unsigned k = 0; k < m->n_samples; k++) {
        unsigned i = (first + k) % MOVE_RATE_SAMPLES;
        if (now - m->samples[i].t <= 5000 && now > m->samples[i].t + 100)
            return (m->st.count.bytes_copied - m->samples[i].bytes) * 1000u /
                   (now - m->samples[i].t);
    }
    return 0;
}

/* Derived fields: percent, phasePercent, rate, ETA, elapsed. */
static void move_refresh(struct move *m, uint64_t now)
{
    struct move_state *s = &m->st;
    s->elapsed_ms = now - m->mono_started;
    s->eta_seconds = -1;
    switch (s->phase) {
    case PHASE_QUEUED:
    case PHASE_CALCULATING:
        s->percent = 0;
        s->phase_percent = 0;
        break;
    case PHASE_COPYING:
        s->percent = s->count.bytes_total
                         ? 100.0 * (double)s->count.bytes_copied / (double)s->count.bytes_total
                         : 0;
        s->phase_percent = s->count.bytes_total   ? s->percent
                           : s->count.files_total ? 100.0 * (double)s->count.files_copied /
                                                        (double)s->count.files_total
                                                  : 0;
        rate_sample(m, now);
        s->bytes_per_second = rate_current(m, now);
        if (s->bytes_per_second > 0 && s->count.bytes_total >= s->count.bytes_copied)
            s->eta_seconds =
                (int64_t)((s->count.bytes_total - s->count.bytes_copied + s->bytes_per_second - 1) /
                          s->bytes_per_second);
        break;
    case PHASE_SYNCING: /* entries walked of filesTotal */
    case PHASE_VERIFYING:
    case PHASE_CLEANING:
        s->percent = 100;
        s->phase_percent = m->st.count.phase_total ? 100.0 * (double)m->st.count.phase_done /
                                                         (double)m->st.count.phase_total
                                                   : 100;
        s->bytes_per_second = 0;
        break;
    case PHASE_READY:
    case PHASE_COMPLETE:
        s->percent = 100;
        s->phase_percent = 100;
        s->bytes_per_second = 0;
        s->eta_seconds = 0;
        break;
    case PHASE_ERROR:
    case PHASE_CANCELLED:
        s->bytes_per_second = 0;
        break;
    }
}

static void move_log_progress(struct move *m, uint64_t now)
{
    char files[48], bytes[48], rate[24], eta[24];
    m->last_log_ms = now;
    util_fmt(files, sizeof files, "%llu/%llu", (unsigned long long)m->st.count.files_copied,
             (unsigned long long)m->st.count.files_total);
    util_fmt(bytes, sizeof bytes, "%llu/%llu", (unsigned long long)m->st.count.bytes_copied,
             (unsigned long long)m->st.count.bytes_total);
    util_fmt_rate(rate, sizeof rate, m->st.bytes_per_second);
    if (m->st.eta_seconds >= 0)
        util_fmt(eta, sizeof eta, "%llds", (long long)m->st.eta_seconds);
    else
        util_fmt(eta, sizeof eta, "unknown");
    LOG(LOG_INFO, "move progress", LF_S("move", m->st.move_id),
        LF_S("phase", move_phase_name(m->st.phase)), LF_I("percent", (int)m->st.percent),
        LF_S("files", files), LF_S("bytes", bytes), LF_S("rate", rate), LF_S("eta", eta));
}

static void move_send_frame(struct move *m, uint64_t now, bool intermediate)
{
    move_refresh(m, now);
    m->st.seq++;
    atomic_store(&m->work->seq_sent, m->st.seq);
    m->last_frame_ms = now;
    m->last_frame_entries = m->entries;
    m->last_frame_bytes = m->st.count.bytes_copied;
    m->dirty = false;
    uv_timer_stop(&m->timer);
    m->ops->frame(m, &m->st, intermediate);
    if (now - m->last_log_ms >= MOVE_LOG_INTERVAL_MS && !move_phase_terminal(m->st.phase))
        move_log_progress(m, now);
}

static void move_on_timer(uv_timer_t *t);

/* Sends an intermediate frame now if the throttle allows, or arms the timer. */
static void move_maybe_frame(struct move *m)
{
    uint64_t now = util_mono_ms(), due;
    if (!m->dirty || move_phase_terminal(m->st.phase))
        return;
    due = move_frame_due(m->last_frame_ms, m->entries - m->last_frame_entries,
                         m->st.count.bytes_copied - m->last_frame_bytes, m->progress_interval_ms);
    if (now >= due)
        move_send_frame(m, now, true);
    else
        uv_timer_start(&m->timer, move_on_timer, due - now, 0);
}

static void move_on_timer(uv_timer_t *t)
{
    move_maybe_frame(container_of(t, struct move, timer));
}

/* Ends the move: code CODE_NONE is a success; with `warning` it is one too,
 * and code and error are the warning (the cleaning kept part of the source). */
static void move_finish(struct move *m, enum move_code code, const char *error, bool warning)
{
    uint64_t now = util_mono_ms();
    uv_timer_stop(&m->limit);
    if (code == CODE_NONE || warning)
        enter_state(m, PHASE_COMPLETE);
    else
        enter_state(m, code == CODE_CANCELLED ? PHASE_CANCELLED : PHASE_ERROR);
    m->st.code = warning ? CODE_NONE : code;
    util_fmt(m->st.error, sizeof m->st.error, "%s", error && !warning ? error : "");
    m->st.warning_code = warning ? code : CODE_NONE;
    util_fmt(m->st.warning, sizeof m->st.warning, "%s", error && warning ? error : "");
    m->st.current_file[0] = '\0';
    m->st.ended_at_ms = util_wall_ms();
    move_send_frame(m, now, false);
    m->ops->ended(m);
}

/* Ends a stopped move whose worker does not come back (a disk that does not
 * answer holds it in the kernel): the answer goes out on time. The journal
 * record keeps saying that a rollback is due (the owner marks it), the
 * worker can no longer write it, and the stop word it reads keeps it from
 * ever starting to clean: when the call returns it rolls back and comes
 * back through the ring (ops->released); if the agent exits first, the next
 * start rolls back. */
static void move_abandon(struct move *m, uint64_t now)
{
    char why[MOVE_ERROR_MAX], at[MOVE_CURRENT_MAX + 64];
    int code = atomic_load(&m->work->stop);
    bool busy;
    pthread_mutex_lock(&m->work->lock);
    busy = m->work->rec_busy;
    if (!busy)
        m->work->no_record = true;
    pthread_mutex_unlock(&m->work->lock);
    if (busy) {
        /* Stuck in its journal write (state_dir does not answer): the loop
         * cannot record the outcome beside it (one record, one writer), so
         * the move ends once that write returns; the loop goes on. */
        if (!m->abandon_waits)
            LOG(LOG_ERROR,
                "a stopped move's thread is stuck writing its journal record in state_dir; the "
                "move ends once that write returns",
                LF_S("move", m->st.move_id), LF_S("phase", move_phase_name(m->st.phase)),
                LF_U("quiet_ms", now - m->last_life_ms));
        m->abandon_waits = true;
        return;
    }
    m->abandoned = true;
    m->abandoned_phase = m->st.phase;
    if (m->st.current_file[0])
        util_fmt(at, sizeof at, " (it was at %s while %s)", m->st.current_file,
                 move_phase_name(m->st.phase));
    else
        util_fmt(at, sizeof at, " (it was %s)", move_phase_name(m->st.phase));
    util_fmt(why, sizeof why,
             "%s; the move's thread has not come back for %llu s: a disk does not answer%s. "
             "Nothing was removed from %s; the partial copy at %s is removed as soon as the disk "
             "answers, or at the agent's next start",
             m->stop_why[0] ? m->stop_why : "the move was stopped",
             (unsigned long long)((now - m->last_life_ms) / 1000), at, m->st.old_path,
             m->st.new_path);
    LOG(LOG_ERROR, "move ended without its thread, stuck on a disk that does not answer",
        LF_S("move", m->st.move_id), LF_S("server", m->st.server_name),
        LF_S("phase", move_phase_name(m->st.phase)), LF_S("at", m->st.current_file),
        LF_U("quiet_ms", now - m->last_life_ms));
    move_finish(m, (enum move_code)code, why, false);
}

static int move_discard(struct move *m, enum move_code code, const char *why);
static void move_on_limit(uv_timer_t *t);

/* A prepared move resting in ready: prepare_ttl, counted on the wall clock
 * from entering ready (the journal keeps that time, so a restart does not
 * start it again). The limit timer fires once, when it is due. */
static void move_arm_ttl(struct move *m)
{
    uint64_t now = util_wall_ms(), due;
    if (!m->prepare_ttl_ms)
        return;
    due = m->ready_at_wall_ms + m->prepare_ttl_ms;
    uv_timer_start(&m->limit, move_on_limit, due > now ? due - now : 0, 0);
}

static void move_check_ttl(struct move *m)
{
    char why[160], ttl[32];
    if (!m->prepare_ttl_ms)
        return;
    if (util_wall_ms() < m->ready_at_wall_ms + m->prepare_ttl_ms) {
        move_arm_ttl(m); /* the wall clock was set back: not due yet */
        return;
    }
    util_fmt(ttl, sizeof ttl, "%.3g s", (double)m->prepare_ttl_ms / 1000.0);
    util_fmt(why, sizeof why,
             "the prepared move was not committed within prepare_ttl (%s); its copy was removed",
             ttl);
    LOG(LOG_WARN, "prepared move not committed in time; discarding its copy",
        LF_S("move", m->st.move_id), LF_S("server", m->st.server_name),
        LF_U("prepare_ttl_ms", m->prepare_ttl_ms));
    (void)move_discard(m, CODE_TIMEOUT, why);
}

/* Once a second while the worker runs: signs of life, move_timeout and
 * stall_timeout, and a stopped worker that does not come back. A move in
 * cleaning refuses the stop (its copy is whole) and is left to finish. */
static void move_on_limit(uv_timer_t *t)
{
    struct move *m = container_of(t, struct move, limit);
    uint64_t now = util_mono_ms();
    unsigned beat = atomic_load_explicit(&m->work->beat, memory_order_relaxed);
    char why[160];
    if (m->resting) {
        move_check_ttl(m);
        return;
    }
    if (beat != m->last_beat) {
        m->last_beat = beat;
        m->last_life_ms = now;
    }
    if (move_phase_terminal(m->st.phase))
        return; /* ended without its worker: only waiting for it */
    if (m->stop_asked_ms) {
        if (now - m->stop_asked_ms >= MOVE_STUCK_GRACE_MS &&
            now - m->last_life_ms >= MOVE_STUCK_GRACE_MS)
            move_abandon(m, now);
        return;
    }
    if (m->move_timeout_ms && m->worked_ms + (now - m->mono_run_started) >= m->move_timeout_ms)
        util_fmt(why, sizeof why, "the move ran past move_timeout (%llu s)",
                 (unsigned long long)(m->move_timeout_ms / 1000));
    else if (m->stall_timeout_ms && now - m->last_progress_ms >= m->stall_timeout_ms)
        util_fmt(why, sizeof why, "the move made no progress for %llu s (stall_timeout)",
                 (unsigned long long)(m->stall_timeout_ms / 1000));
    else
        return;
    if (move_stop(m, CODE_TIMEOUT, why) == 0)
        LOG(LOG_WARN, "move timed out; rolling back", LF_S("move", m->st.move_id),
            LF_S("server", m->st.server_name), LF_S("reason", why));
}

/* A prepared move enters ready (no worker): after its preparation, or again
 * after a commit that met a changing source (code, error: that commit's). */
static void move_enter_ready(struct move *m, enum move_code code, const char *error)
{
    uv_timer_stop(&m->limit);
    enter_state(m, PHASE_READY);
    m->resting = true;
    m->mode = ENGINE_PREPARE;
    m->stop_asked_ms = 0;
    m->stop_why[0] = '\0';
    m->st.current_file[0] = '\0';
    m->ready_at_wall_ms = util_wall_ms();
    move_refresh(m, util_mono_ms());
    move_arm_ttl(m);
    m->ops->ready(m, code, error);
}

/* The end of a prepared move's step that leaves it resting in ready: its
 * preparation succeeded, or its commit gave the copy back (back_to_ready).
 * A stop taken in the last instant (the cancel was answered) then discards
 * the copy. False when the step ends the move. */
static bool move_step_rests(struct move *m, const struct progress_item *it)
{
    int asked = atomic_load(&m->work->stop);
    char why[MOVE_ERROR_MAX];
    util_fmt(why, sizeof why, "%s", m->stop_why);
    if (m->mode == ENGINE_PREPARE && it->code == CODE_NONE) {
        /* What the preparation copied (its last report may be older). */
        struct move_counters *c = &m->st.count;
        if (it->count.bytes_copied > c->bytes_copied)
            c->bytes_copied = it->count.bytes_copied;
        if (it->count.files_copied > c->files_copied)
            c->files_copied = it->count.files_copied;
        if (c->bytes_total < c->bytes_copied)
            c->bytes_total = c->bytes_copied;
        if (c->files_total < c->files_copied)
            c->files_total = c->files_copied;
        move_enter_ready(m, CODE_NONE, NULL);
    } else if (m->mode == ENGINE_COMMIT && it->back_to_ready) {
        m->bytes_synced = it->bytes_synced;
        m->files_synced = it->files_synced;
        move_enter_ready(m, it->code, it->error);
    } else {
        if (m->mode == ENGINE_COMMIT) {
            m->bytes_synced = it->bytes_synced;
            m->files_synced = it->files_synced;
        }
        return false;
    }
    if (asked > 0 && !move_phase_terminal(m->st.phase))
        (void)move_discard(m, (enum move_code)asked, why);
    return true;
}

/* One item from the worker, in order. */
static void move_apply(struct move *m, const struct progress_item *it)
{
    m->last_life_ms = util_mono_ms();
    if (it->kind == PROGRESS_PHASE || it->count.bytes_copied > m->st.count.bytes_copied ||
        it->count.files_copied > m->st.count.files_copied ||
        it->count.files_total > m->st.count.files_total ||
        it->count.phase_done != m->st.count.phase_done ||
        it->count.io_bytes != m->st.count.io_bytes)
        m->last_progress_ms = util_mono_ms();
    if (it->kind == PROGRESS_END) {
        /* The worker's last acts were this push and its wake-up: the join is
         * immediate. */
        uv_thread_join(&m->work->thread);
        m->thread_running = false;
        m->reclaim_ready = m->work->reclaim_ready;
        if (move_phase_terminal(m->st.phase)) {
            /* It outlived the move's end (a stuck disk, or a rollback left
             * from an earlier run): the outcome was given already. */
            uv_timer_stop(&m->limit);
            if (it->code == CODE_NONE && m->mode == ENGINE_MOVE)
                /* Only a rename that could not be put back ends so. */
                LOG(LOG_ERROR,
                    "the thread of an ended move came back: the move completed after its "
                    "answer; the data is at the new path",
                    LF_S("move", m->st.move_id), LF_S("old", m->st.old_path),
                    LF_S("new", m->st.new_path));
            else
                LOG(LOG_WARN, "the thread of an ended move came back; its rollback is done",
                    LF_S("move", m->st.move_id), LF_S("server", m->st.server_name),
                    LF_S("result", it->error));
            m->ops->released(m);
            return;
        }
        m->worked_ms += util_mono_ms() - m->mono_run_started;
        if (m->prepared && move_step_rests(m, it))
            return;
        /* A stop we asked for ends with our words, not the engine's. */
        move_finish(m, it->code,
                    (int)it->code == atomic_load(&m->work->stop) && m->stop_why[0] ? m->stop_why
                                                                                   : it->error,
                    it->warning);
        return;
    }
    if (move_phase_terminal(m->st.phase))
        return; /* nothing to show for a move that ended without its worker */
    if (it->kind == PROGRESS_PHASE)
        enter_state(m, it->phase);
    /* Counters never go down: merged or late items cannot move them back. */
    if (it->count.bytes_total > m->st.count.bytes_total)
        m->st.count.bytes_total = it->count.bytes_total;
    if (it->count.files_total > m->st.count.files_total)
        m->st.count.files_total = it->count.files_total;
    if (it->count.bytes_copied > m->st.count.bytes_copied)
        m->st.count.bytes_copied = it->count.bytes_copied;
    if (it->count.files_copied > m->st.count.files_copied)
        m->st.count.files_copied = it->count.files_copied;
    m->st.count.phase_done = it->count.phase_done;
    m->st.count.phase_total = it->count.phase_total;
    m->st.count.io_bytes = it->count.io_bytes;
    m->st.count.rate_limit = it->count.rate_limit;
    m->st.count.yielding = it->count.yielding;
    m->entries = m->st.phase == PHASE_CALCULATING ? it->count.files_total
                 : m->st.phase == PHASE_COPYING   ? it->count.files_copied
                                                  : it->count.phase_done;
    util_fmt(m->st.current_file, sizeof m->st.current_file, "%s", it->current);
    if (it->kind == PROGRESS_PHASE)
        move_send_frame(m, util_mono_ms(), false); /* never merged, not throttled */
    else
        m->dirty = true;
}

static void move_on_async(uv_async_t *h)
{
    struct move *m = container_of(h, struct move, async);
    struct progress_item it;
    /* Coalescing wake-up: drain everything each time, then the report the
     * worker kept aside while the ring was full: the newest counters, even
     * if the worker now blocks and pushes nothing for a while. */
    while (m->thread_running && ring_pop(&m->work->ring, &it))
        move_apply(m, &it);
    if (m->thread_running && ring_take_kept(&m->work->ring, &it))
        move_apply(m, &it);
    move_maybe_frame(m);
}

/* --- public ------------------------------------------------------------------ */

int move_init(struct move *m, uv_loop_t *loop, const struct move_params *p,
              const struct move_ops *ops, void *owner)
{
    const struct journal_rec *jr = p->jr;
    int rc;
    /* Every record of a journaled move goes through the one writer. */
    assert(!p->journal || p->writer);
    memset(m, 0, sizeof *m);
    m->loop = loop;
    m->ops = ops;
    m->owner = owner;
    util_fmt(m->st.move_id, sizeof m->st.move_id, "%s", jr->move_id);
    util_fmt(m->st.server_name, sizeof m->st.server_name, "%s", jr->server_name);
    m->st.old_path = xstrdup(jr->old_path);
    m->st.new_path = xstrdup(jr->new_path);
    m->st.rename = jr->rename;
    m->st.phase = PHASE_QUEUED;
    m->st.eta_seconds = -1;
    m->st.started_at_ms = util_wall_ms();
    m->mono_started = m->phase_started_ms = util_mono_ms();
    m->progress_interval_ms = p->progress_interval_ms;
    m->move_timeout_ms = p->move_timeout_ms;
    m->stall_timeout_ms = p->stall_timeout_ms;
    m->jr = p->jr;
    m->writer = p->writer;
    m->max_rate_asked = p->max_rate_asked;
    m->mode = p->mode;
    m->silent = p->silent;
    m->prepared = jr->prepared;
    m->prepare_ttl_ms = p->prepare_ttl_ms;
    /* Found resting in ready at start: it stays so. */
    m->resting = jr->prepared && jr->phase == PHASE_READY && p->mode == ENGINE_PREPARE;
    m->ready_at_wall_ms = jr->ready_at_ms;
    m->reclaim_ready = false;
    if (p->mode == ENGINE_UNDO || p->mode == ENGINE_FINISH || m->resting) {
        /* Resumed from the journal: its phase and counters, a seq past
         * anything sent before, its acceptance time. */
        m->st.phase = jr->phase;
        m->st.count = jr->count;
        m->st.seq = jr->seq + JOURNAL_SEQ_HEADROOM;
        m->st.started_at_ms = jr->started_at_ms;
        m->st.ended_at_ms = jr->ended_at_ms;
        m->st.code = jr->code;
        util_fmt(m->st.error, sizeof m->st.error, "%s", jr->error);
    }
    m->work = work_new(p);
    m->src = m->work->src;
    m->dst = m->work->dst;
    atomic_init(&m->work->seq_sent, m->st.seq);

    /* The timers first: their init cannot fail once the loop runs. The
     * async handle last, so that a failure leaves only timers open. */
    rc = uv_timer_init(loop, &m->timer);
    if (rc != 0)
        return rc;
    m->open_handles++;
    rc = uv_timer_init(loop, &m->limit);
    if (rc != 0)
        return rc;
    m->open_handles++;
    rc = uv_async_init(loop, &m->async, move_on_async);
    if (rc != 0)
        return rc;
    m->open_handles++;
    if (m->resting) {
        move_refresh(m, util_mono_ms());
        move_arm_ttl(m);
    }
    return 0;
}

void move_announce(struct move *m)
{
    move_send_frame(m, util_mono_ms(), false);
}

bool move_is_resting(const struct move *m)
{
    return m->resting;
}

bool move_holds_slot(const struct move *m)
{
    return m->thread_running && m->mode != ENGINE_COMMIT && m->mode != ENGINE_DISCARD;
}

void move_queue(struct move *m)
{
    move_send_frame(m, util_mono_ms(), false);
}

/* Starts a worker for the move's step in mode; stop_code preset (a discard
 * runs with its stop code already taken). */
static int move_start_worker(struct move *m, enum engine_mode mode, int stop_code)
{
    int rc;
    struct move_work *w = m->work;
    m->mode = mode;
    m->resting = false;
    m->mono_run_started = util_mono_ms(); /* move_timeout counts from leaving the queue */
    m->last_progress_ms = m->last_life_ms = m->mono_run_started;
    if (m->prepared) {
        /* Each step of a prepared move gets a fresh start: no thread runs
         * now, so the job's inputs are the loop's to set. */
        w->mode = mode;
        ring_init(&w->ring);
        atomic_store(&w->stop, stop_code);
        /* What the steps before found: the destination's identity (made
         * by the preparation) and the counts of the prepared copy. */
        if (m->jr) {
            w->src_id = m->jr->src_id;
            w->dst_id = m->jr->dst_id;
            w->resume_phase = m->jr->phase;
        }
        w->resumed = m->st.count;
    }
    /* Always: it also tells a stopped worker that does not come back. */
    uv_timer_start(&m->limit, move_on_limit, 1000, 1000);
    m->thread_running = true;
    w->async = &m->async;
    pthread_mutex_lock(&w->lock);
    w->refs++; /* the worker's */
    pthread_mutex_unlock(&w->lock);
    /* Not the libuv threadpool: a long copy would starve uv_fs and DNS work. */
    rc = uv_thread_create(&m->work->thread, move_worker_main, m->work);
    if (rc != 0) {
        char why[128];
        m->thread_running = false;
        move_worker_unref(m->work);
        uv_timer_stop(&m->limit);
        if (m->silent) {
            LOG(LOG_ERROR, "cannot start a worker thread", LF_S("move", m->st.move_id));
            return rc;
        }
        util_fmt(why, sizeof why, "cannot start a worker thread: %s", uv_strerror(rc));
        move_finish(m, CODE_IO_ERROR, why, false);
        return rc;
    }
    return 0;
}

void move_set_pace(struct move *m, uint64_t max_rate, enum io_priority io_priority)
{
    atomic_store_explicit(&m->work->knobs.max_rate, move_pace_cap(m->max_rate_asked, max_rate),
                          memory_order_relaxed);
    atomic_store_explicit(&m->work->knobs.io_class, (int)io_priority, memory_order_relaxed);
}

int move_run(struct move *m)
{
    assert(m->st.phase == PHASE_QUEUED || m->mode != ENGINE_MOVE);
    /* Leaving the queue is "calculating" at once on the loop's side too, so
     * status, cancel and the slot count never see a started move as queued;
     * the worker's own phase item then sends the frame. */
    if (m->mode == ENGINE_MOVE || m->mode == ENGINE_PREPARE)
        enter_state(m, PHASE_CALCULATING);
    if (m->prepared && m->st.rename && m->mode == ENGINE_PREPARE) {
        /* One filesystem: nothing to copy ahead, the commit renames. Ready
         * at once, without a worker. */
        move_send_frame(m, util_mono_ms(), false);
        move_enter_ready(m, CODE_NONE, NULL);
        return 0;
    }
    return move_start_worker(m, m->mode, CODE_NONE);
}

int move_commit(struct move *m)
{
    assert(m->resting);
    /* The commit is under way from here for status and busy; the worker's
     * phase items then send the frames. */
    enter_state(m, PHASE_SYNCING);
    m->bytes_synced = m->files_synced = 0;
    return move_start_worker(m, ENGINE_COMMIT, CODE_NONE);
}

/* A prepared move resting in ready is stopped: its copy removed on a worker
 * (with the stop code taken already, so it ends with it), or, for a rename
 * (nothing was made), ended at once. */
static int move_discard(struct move *m, enum move_code code, const char *why)
{
    util_fmt(m->stop_why, sizeof m->stop_why, "%s", why ? why : "");
    if (m->st.rename) {
        move_finish(m, code, why, false);
        return 0;
    }
    m->stop_asked_ms = util_mono_ms();
    /* Taken either way: a worker that cannot start ends the move in error. */
    (void)move_start_worker(m, ENGINE_DISCARD, (int)code);
    return 0;
}

int move_record_update(struct move *m, void (*fn)(struct journal_rec *jr, void *arg), void *arg)
{
    struct move_work *w = m->work;
    pthread_mutex_lock(&w->lock);
    if (w->no_record || !w->jr || !w->moves_dir) {
        pthread_mutex_unlock(&w->lock);
        return -ENOENT;
    }
    fn(w->jr, arg);
    /* Queued under the lock: after any record the worker queued before. */
    journal_write_queued(m->writer, w->journal, w->jr, false, NULL, NULL);
    pthread_mutex_unlock(&w->lock);
    return 0;
}

int move_stop(struct move *m, enum move_code code, const char *why)
{
    int none = CODE_NONE;
    if (move_phase_terminal(m->st.phase))
        return -ENOENT;
    if (m->resting)
        return move_discard(m, code, why);
    if (!m->thread_running) {
        move_finish(m, code, why, false);
        return 0;
    }
    /* The worker polls this between chunks and entries; it swaps in
     * ENGINE_STOP_LOCKED when cleaning begins, and then the stop is refused. */
    if (atomic_compare_exchange_strong(&m->work->stop, &none, (int)code)) {
        util_fmt(m->stop_why, sizeof m->stop_why, "%s", why ? why : "");
        m->stop_asked_ms = util_mono_ms();
        return 0;
    }
    return none == ENGINE_STOP_LOCKED ? -EBUSY : 0;
}

bool move_dst_identity(const struct move *m, dev_t *dev, ino_t *ino)
{
    if (!m->work || !atomic_load(&m->work->dst_known))
        return false;
    *dev = (dev_t)atomic_load(&m->work->dst_dev);
    *ino = (ino_t)atomic_load(&m->work->dst_ino);
    return true;
}

bool move_is_running(const struct move *m)
{
    return m->thread_running;
}

uint64_t move_quiet_ms(const struct move *m, uint64_t now)
{
    uint64_t last = m->last_life_ms;
    if (!m->thread_running)
        return 0;
    if (atomic_load_explicit(&m->work->beat, memory_order_relaxed) != m->last_beat)
        return 0; /* alive since the last look */
    return now > last ? now - last : 0;
}

void move_detach(struct move *m)
{
    if (!m->thread_running)
        return;
    pthread_mutex_lock(&m->work->lock);
    m->work->detached = true;
    m->work->no_record = true;
    pthread_mutex_unlock(&m->work->lock);
    /* Never joined: it may never return. It keeps its own reference. */
    pthread_detach(m->work->thread);
    m->thread_running = false;
    LOG(LOG_ERROR, "left a move's thread behind, stuck on a disk that does not answer",
        LF_S("move", m->st.move_id), LF_S("server", m->st.server_name),
        LF_S("phase", move_phase_name(m->st.phase)), LF_S("at", m->st.current_file));
}

/* Everything but the handles, once they are closed. */
static void move_release(struct move *m)
{
    move_worker_unref(m->work);
    m->work = NULL;
    m->src = m->dst = NULL;
    move_state_clear(&m->st);
    if (m->close_cb)
        m->close_cb(m);
}

static void move_on_handle_closed(uv_handle_t *h)
{
    struct move *m = h->data;
    if (--m->open_handles == 0)
        move_release(m);
}

void move_close(struct move *m, void (*cb)(struct move *m))
{
    assert(!m->thread_running);
    m->close_cb = cb;
    m->async.data = m;
    m->timer.data = m;
    m->limit.data = m;
    if (m->open_handles == 0) {
        move_release(m);
        return;
    }
    /* Handles were opened in this order (timer, limit, async); open_handles
     * only drops in the close callbacks, which run later. */
    if (m->open_handles >= 3)
        uv_close((uv_handle_t *)&m->async, move_on_handle_closed);
    if (m->open_handles >= 2)
        uv_close((uv_handle_t *)&m->limit, move_on_handle_closed);
    uv_close((uv_handle_t *)&m->timer, move_on_handle_closed);
}
