/* engine_report.c: the floor of the move engine: a run's result and its
 * progress. The first failure's code and words (errno mapped to a move code,
 * a stop request as its code, a failed walk as the move's error), the walk
 * of the source every pass runs, and the progress reports and phases sent
 * to the job (at most every REPORT_GAP_MS). Calls nothing else of the
 * engine (see engine_internal.h for the engine's floors). */
#include "engine_internal.h"

/* --- results and reporting ---------------------------------------------------- */

enum move_code engine_errno_code(int err)
{
    switch (err) {
    case ENOSPC:
    case EDQUOT:
        return CODE_NO_SPACE;
    case EACCES:
    case EPERM:
        return CODE_PERMISSION_DENIED;
    default:
        return CODE_IO_ERROR;
    }
}

int eng_fail(struct eng *e, enum move_code code, const char *fmt, ...)
{
    va_list ap;
    if (e->res->code != CODE_NONE)
        return -1; /* keep the first cause */
    e->res->code = code;
    va_start(ap, fmt);
    (void)vsnprintf(e->res->error, sizeof e->res->error, fmt, ap);
    va_end(ap);
    return -1;
}

int eng_stop_code(struct eng *e)
{
    int code = atomic_load_explicit(e->job->stop, memory_order_relaxed);
    if (code == CODE_NONE || code == ENGINE_STOP_LOCKED)
        return 0;
    return eng_fail(e, (enum move_code)code, "%s",
                    code == CODE_CANCELLED       ? "the move was cancelled"
                    : code == CODE_SHUTTING_DOWN ? "the agent is shutting down"
                    : code == CODE_TIMEOUT       ? "the move timed out"
                                                 : "the move was stopped");
}

/* An error of reaching a source entry by its path that means the path
 * changed (a component gone, or no longer a directory: replaced by a file
 * or a symlink) as ESTALE, so that it is answered source_changed. */
int eng_changed_errno(int err)
{
    return err == ENOENT || err == ENOTDIR || err == ELOOP ? ESTALE : err;
}

/* Fails with the code of err, naming what and where: "copy /a/b: No space". */
int eng_fail_at(struct eng *e, int err, const char *what, const char *root, const char *rel)
{
    if (err == ECANCELED)
        return eng_stop_code(e);
    if (err == ESTALE)
        return eng_fail(e, CODE_SOURCE_CHANGED,
                        "%s%s%s changed while it was being moved (stop the game server first)",
                        root, rel && *rel ? "/" : "", rel ? rel : "");
    return eng_fail(e, engine_errno_code(err), "%s %s%s%s: %s", what, root, rel && *rel ? "/" : "",
                    rel ? rel : "", strerror(err));
}

/* The same for an entry `name` of the walk's current directory. */
int eng_fail_w(struct eng *e, struct tree_walk *w, int err, const char *what, const char *root,
               const char *name)
{
    char rel[MOVE_ERROR_MAX / 2];
    tree_walk_relpath(w, name, rel, sizeof rel);
    return eng_fail_at(e, err, what, root, rel);
}

/* The copy was changed by someone else: the destination's fault, not the
 * source's (a game server that keeps writing is told to stop; this is not
 * that). */
int eng_fail_dst_changed(struct eng *e, const char *rel)
{
    return eng_fail(e, CODE_IO_ERROR,
                    "the destination changed while it was being moved: %s%s%s was changed or "
                    "removed by something else; nothing was removed from %s",
                    e->job->dst, rel && *rel ? "/" : "", rel ? rel : "", e->job->src);
}

/* A failure of the walk itself (reading a directory, a swapped entry); the
 * mirror of a mirrored walk is the destination. */
int eng_fail_walk(struct eng *e, struct tree_walk *w)
{
    if (e->res->code != CODE_NONE)
        return -1;
    if (w->err_mirror) {
        if (w->changed || w->err == ENOENT)
            return eng_fail_dst_changed(e, w->err_where);
        return eng_fail_at(e, w->err ? w->err : EIO, w->err_what ? w->err_what : "walk",
                           e->job->dst, w->err_where);
    }
    if (w->changed)
        return eng_fail_at(e, ESTALE, "", e->job->src, w->err_where);
    if (w->err == EXDEV)
        return eng_fail(e, CODE_IO_ERROR,
                        "%s %s/%s inside the tree; the move never copies or removes through a "
                        "mount: unmount it first",
                        w->err_what, e->job->src, w->err_where);
    return eng_fail_at(e, w->err ? w->err : EIO, w->err_what ? w->err_what : "walk", e->job->src,
                       w->err_where);
}

/* Runs one pass over the source (mirrored on the destination when asked),
 * turning a failure of the walk itself into the move's error. */
int eng_walk_source(struct eng *e, const struct tree_walk_ops *ops, bool mirrored)
{
    struct tree_walk w = {.ops = ops,
                          .arg = e,
                          .mirrored = mirrored,
                          .need_stat = true,
                          .strict_dev = true,
                          .live = e->live};
    int rc = tree_walk_run(&w, e->srcfd, mirrored ? e->dstfd : -1);
    if (rc != 0 && e->res->code == CODE_NONE)
        eng_fail_walk(e, &w);
    tree_walk_free(&w);
    return rc;
}

static void eng_report_now(struct eng *e, const char *current, bool phase_start)
{
    e->prog.current = current;
    e->job->report(e->job->arg, &e->prog, phase_start);
    e->last_report = util_mono_ms();
}

/* Reports at most every REPORT_GAP_MS; the path is only built when sent. */
void eng_report(struct eng *e, struct tree_walk *w, const char *name)
{
    char rel[MOVE_CURRENT_MAX];
    if (util_mono_ms() - e->last_report < REPORT_GAP_MS)
        return;
    if (w)
        tree_walk_relpath(w, name, rel, sizeof rel);
    eng_report_now(e, w ? rel : NULL, false);
}

int eng_phase(struct eng *e, enum move_phase phase, uint64_t phase_total)
{
    int rc = 0;
    e->prog.phase = phase;
    e->prog.count.phase_done = 0;
    e->prog.count.phase_total = phase_total;
    if (e->job->on_phase)
        rc = e->job->on_phase(e->job->arg, &e->prog);
    eng_report_now(e, NULL, true);
    return rc;
}

void eng_on_bytes(void *arg, uint64_t delta)
{
    struct eng *e = arg;
    e->prog.count.io_bytes += delta;
    /* bytesCopied counts the tree, not the work: a commit's final pass brings
     * files of a tree counted whole at ready up to date, and its bytes would
     * push bytesCopied past bytesTotal (which it then never leaves, as the
     * counters never go down). The pass sets both to the final tree's at its
     * end; io_bytes shows the loop that it moves meanwhile. */
    if (e->prog.phase != PHASE_SYNCING)
        e->prog.count.bytes_copied += delta;
    if (e->claimed) {
        uint64_t r = atomic_load(&e->claim.remaining);
        atomic_store(&e->claim.remaining, r > delta ? r - delta : 0);
    }
    if (e->prog.phase == PHASE_COPYING)
        e->prog.count.phase_done = e->prog.count.bytes_copied;
    eng_pace(e, delta);
    eng_report(e, e->cur_w, e->cur_name);
}
