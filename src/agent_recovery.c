/* agent_recovery.c: the moves found in the journal at start: answers not
 * yet delivered, renames settled by name, partial copies rolled back and
 * cleanings finished on a worker, beneath the roots that hold them now. */
#include "agent_internal.h"
#include "log.h"
#include "paths.h"
#include "protocol.h"
#include "util.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Ends a journaled move here and now (a rename found done or not done). */
static void agent_end_recovered(struct agent *a, struct journal_rec *r, enum move_code code,
                                const char *error)
{
    struct move_state st;
    struct agent_ended *h;
    enum move_phase journaled = r->phase;
    cJSON *ans;
    char *printed;
    r->phase = code == CODE_NONE ? PHASE_COMPLETE : PHASE_ERROR;
    r->code = code;
    util_fmt(r->error, sizeof r->error, "%s", error ? error : "");
    r->ended_at_ms = util_wall_ms();
    r->seq += JOURNAL_SEQ_HEADROOM;
    journal_rec_state(r, &st);
    ans = agent_move_answer(&st);
    printed = cJSON_PrintUnformatted(ans);
    cJSON_Delete(ans);
    free(r->answer);
    r->answer = xstrdup(printed ? printed : "{}");
    cJSON_free(printed);
    r->delivered = false;
    LOG(code == CODE_NONE ? LOG_INFO : LOG_WARN, "unfinished move settled from the journal",
        LF_S("move", r->move_id), LF_S("outcome", move_phase_name(r->phase)),
        LF_S("error", r->error));
    h = agent_history_add(a, &st, r->answer, r, util_mono_ms());
    metrics_move_ended(&a->metrics, &st);
    agent_record_outcome(a, h, journaled);
    move_state_clear(&st);
}

static void agent_settle_rename(struct agent *a, struct journal_rec *r)
{
    struct engine_id src_id = {r->src_id.known, (dev_t)r->src_id.dev, (ino_t)r->src_id.ino};
    char src_state[160], dst_state[160], why[MOVE_ERROR_MAX];
    struct stat sb;
    bool src_absent = lstat(r->src, &sb) != 0 && (errno == ENOENT || errno == ENOTDIR);
    bool src_ok = engine_describe(r->src, &src_id, src_state, sizeof src_state);
    bool dst_is_src = engine_describe(r->dst, &src_id, dst_state, sizeof dst_state);
    if (!src_id.known) {
        /* A record of an older agent: no identity, the type must do. */
        src_ok = !src_absent && S_ISDIR(sb.st_mode);
        dst_is_src = src_absent && lstat(r->dst, &sb) == 0 && S_ISDIR(sb.st_mode);
    }
    if (!dst_is_src) {
        struct engine_id none = {0};
        (void)engine_describe(r->dst, &none, dst_state, sizeof dst_state);
    }
    if (src_absent && dst_is_src) {
        agent_end_recovered(a, r, CODE_NONE, NULL);
        return;
    }
    if (src_ok && !dst_is_src) {
        for (size_t i = r->n_made; i-- > 0;)
            (void)rmdir(r->made_parents[i]); /* only empty ones go */
        util_fmt(why, sizeof why,
                 "the agent stopped before the rename; checked at its restart: %s is %s, and %s "
                 "is %s; nothing was moved",
                 r->src, src_state, r->dst, dst_state);
        agent_end_recovered(a, r, CODE_INTERRUPTED, why);
        return;
    }
    LOG(LOG_ERROR,
        "after the restart the disk does not match the journal; nothing was touched: the "
        "operator must look",
        LF_S("move", r->move_id), LF_S("phase", move_phase_name(r->phase)),
        LF_S("old_path", r->src), LF_S("old_state", src_state), LF_S("new_path", r->dst),
        LF_S("new_state", dst_state));
    util_fmt(why, sizeof why,
             "the agent stopped during the rename and at its restart the disk did not match its "
             "journal, so it touched nothing: %s is %s; %s is %s. Check both before starting the "
             "server",
             r->src, src_state, r->dst, dst_state);
    agent_end_recovered(a, r, CODE_NEEDS_ATTENTION, why);
}

/* The allowed roots holding a journaled move's resolved paths (PATH_MAX
 * each): the anchors its worker opens them beneath. False, with why, when one
 * is no longer beneath any allowed root (the root is gone or no longer
 * configured): then nothing of that move may be touched. */
static bool agent_roots_of(struct agent *a, const struct journal_rec *r, char *src_root,
                           char *dst_root, char *why, size_t whysz)
{
    bool is_root;
    const char *lost = NULL;
    if (!path_check_root_of(a->cfg.allowed_roots, a->cfg.n_allowed_roots, r->src, &is_root,
                            src_root))
        lost = r->src;
    else if (!path_check_root_of(a->cfg.allowed_roots, a->cfg.n_allowed_roots, r->dst, &is_root,
                                 dst_root))
        lost = r->dst;
    if (lost)
        util_fmt(why, whysz,
                 "after a restart, %s is no longer beneath an allowed root (allowed_roots changed, "
                 "or its root is gone); the agent touched nothing: where the server's files are is "
                 "for the operator to say",
                 lost);
    return lost == NULL;
}

/* What every move made again from its journal record shares: the record,
 * the journal, the roots that hold its paths now, the frame interval. */
static struct move_params recovered_params(struct agent *a, struct journal_rec *r,
                                           const char *src_root, const char *dst_root)
{
    return (struct move_params){
        .jr = r,
        .journal = &a->journal,
        .writer = &a->writer,
        .src_root = src_root,
        .dst_root = dst_root,
        .progress_interval_ms = a->cfg.progress_interval_ms,
        .max_rate = a->cfg.max_rate,
        .io_priority = a->cfg.io_priority,
    };
}

/* A move that ended (and was answered) while its worker was stuck on a disk
 * and that the agent left behind: its partial copy is removed now, on a
 * worker, without frames or a second answer. */
static void agent_resume_rollback(struct agent *a, struct journal_rec *r)
{
    char src_root[PATH_MAX], dst_root[PATH_MAX], why[MOVE_ERROR_MAX];
    struct move_params p;
    struct move *m;
    if (!agent_roots_of(a, r, src_root, dst_root, why, sizeof why)) {
        LOG(LOG_ERROR, "cannot roll back a move left behind; its journal file stays",
            LF_S("move", r->move_id), LF_S("error", why));
        return;
    }
    p = recovered_params(a, r, src_root, dst_root);
    p.mode = ENGINE_UNDO;
    p.silent = true;
    LOG(LOG_WARN, "a move ended while its rollback waited on a stuck disk; rolling it back now",
        LF_S("move", r->move_id), LF_S("path", r->dst));
    m = xmalloc(sizeof *m);
    if (move_init(m, &a->loop, &p, &agent_move_ops, a) != 0) {
        LOG(LOG_ERROR, "cannot start the rollback; its journal file stays",
            LF_S("move", r->move_id));
        move_close(m, agent_free_move);
        return;
    }
    m->next = a->orphans;
    a->orphans = m;
    if (move_run(m) != 0) {
        a->orphans = m->next;
        m->jr = NULL;
        move_close(m, agent_free_move);
    }
}

/* A rename ended while its call hung, left behind by the last run: no tree
 * to remove. Either it never happened (only the parents made for it go) or
 * it completed after the answer (the data is at newPath: said loudly,
 * nothing touched). By name, on the loop, at start like the rename
 * settlement of an unfinished move. */
static void agent_settle_orphan_rename(struct agent *a, struct journal_rec *r)
{
    struct stat sb;
    bool src_there = lstat(r->src, &sb) == 0, dst_there = lstat(r->dst, &sb) == 0;
    if (!src_there && dst_there) {
        LOG(LOG_ERROR,
            "a rename answered as failed completed after its answer; the data is at the new path",
            LF_S("move", r->move_id), LF_S("old", r->old_path), LF_S("new", r->new_path));
    } else {
        for (size_t i = r->n_made; i-- > 0;)
            (void)rmdir(r->made_parents[i]); /* only empty ones go */
        LOG(LOG_INFO, "a rename that waited on a stuck disk did not happen; settled",
            LF_S("move", r->move_id));
    }
    r->rollback_pending = false;
    journal_write_queued(&a->writer, &a->journal, r, false, NULL, NULL);
}

/* A prepared move found resting in ready: it stays ready, announced with a
 * frame in that phase; the prepare's answer goes again when it was not
 * acknowledged. prepare_ttl keeps counting from the recorded time. */
static void agent_resume_ready(struct agent *a, struct journal_rec *r)
{
    char src_root[PATH_MAX], dst_root[PATH_MAX], why[MOVE_ERROR_MAX], ident[PATH_MAX];
    struct move_params p;
    struct move *m, **tail;
    if (!agent_roots_of(a, r, src_root, dst_root, why, sizeof why)) {
        agent_end_recovered(a, r, CODE_NEEDS_ATTENTION, why);
        return;
    }
    journal_ident_path(&a->journal, r->move_id, ident, sizeof ident);
    p = recovered_params(a, r, src_root, dst_root);
    p.move_timeout_ms = a->cfg.move_timeout_ms;
    p.stall_timeout_ms = a->cfg.stall_timeout_ms;
    p.mode = ENGINE_PREPARE;
    p.ident_path = ident;
    p.prepare_ttl_ms = a->cfg.prepare_ttl_ms;
    p.reclaim = a->cfg.reclaim;
    m = xmalloc(sizeof *m);
    if (move_init(m, &a->loop, &p, &agent_move_ops, a) != 0) {
        LOG(LOG_ERROR, "cannot set up the prepared move; its journal file stays",
            LF_S("move", r->move_id));
        journal_rec_free(r);
        move_close(m, agent_free_move);
        return;
    }
    for (tail = &a->moves; *tail; tail = &(*tail)->next)
        ;
    *tail = m;
    a->n_moves++;
    LOG(LOG_INFO, "found a prepared move ready; it waits for its commit", LF_S("move", r->move_id),
        LF_S("server", r->server_name));
    move_announce(m);
    if (!r->ready_delivered)
        agent_send_ready_answer(a, r);
}

static bool agent_keeps_ident(void *arg, const char *move_id)
{
    struct agent *a = arg;
    for (struct move *m = a->moves; m; m = m->next)
        if (strcmp(m->st.move_id, move_id) == 0)
            return true;
    return false;
}

static void agent_recover_one(void *arg, struct journal_rec *r)
{
    struct agent *a = arg;
    struct move_state st;
    struct move_params p;
    struct move *m, **tail;
    char src_root[PATH_MAX], dst_root[PATH_MAX], why[MOVE_ERROR_MAX];

    if (move_phase_terminal(r->phase)) {
        uint64_t now = util_wall_ms(), age = now > r->ended_at_ms ? now - r->ended_at_ms : 0;
        uint64_t mono = util_mono_ms();
        if (r->delivered && age >= AGENT_HISTORY_MS && !r->rollback_pending) {
            journal_remove_queued(&a->writer, &a->journal, r->move_id);
            journal_rec_free(r);
            return;
        }
        journal_rec_state(r, &st);
        if (r->prepared && !r->ready_delivered && r->ready_answer) {
            LOG(LOG_INFO,
                "the prepare's answer was not yet delivered; it is sent again after hello",
                LF_S("move", r->move_id));
            agent_send_ready_answer(a, r);
        }
        if (!r->delivered) {
            LOG(LOG_INFO, "answer not yet delivered; it is sent again after hello",
                LF_S("move", r->move_id));
            agent_resend_outcome(a, r, &st);
        }
        agent_history_add(a, &st, r->answer ? r->answer : "{}", r,
                          mono > age ? mono - (age < AGENT_HISTORY_MS ? age : AGENT_HISTORY_MS)
                                     : 0);
        move_state_clear(&st);
        if (r->rollback_pending && r->rename && r->rollback_phase <= PHASE_CALCULATING)
            agent_settle_orphan_rename(a, r);
        else if (r->rollback_pending)
            agent_resume_rollback(a, r);
        return;
    }
    LOG(LOG_WARN, "found a move the agent did not finish", LF_S("move", r->move_id),
        LF_S("server", r->server_name), LF_S("phase", move_phase_name(r->phase)),
        LF_S("method", r->rename ? "rename" : "copy"));
    if (r->prepared && r->phase == PHASE_READY) {
        agent_resume_ready(a, r);
        return;
    }
    /* A rename not yet past its calculating phase (or a prepared one in its
     * commit) settles here, unless its fallback to copying (EXDEV) had
     * already made newPath. */
    if (r->rename &&
        (r->phase <= PHASE_CALCULATING || (r->prepared && r->phase == PHASE_SYNCING)) &&
        (!r->dst_id.known || r->dst_preexisted)) {
        agent_settle_rename(a, r);
        return;
    }
    /* Undo the partial copy, or finish removing the source: a worker's job,
     * beneath the roots that hold the paths now. */
    if (!agent_roots_of(a, r, src_root, dst_root, why, sizeof why)) {
        agent_end_recovered(a, r, CODE_NEEDS_ATTENTION, why);
        return;
    }
    p = recovered_params(a, r, src_root, dst_root);
    /* A source the reclaim had renamed back (it had changed) is whole at
     * oldPath again: the copy is undone, as before cleaning. */
    p.mode = r->phase == PHASE_CLEANING && !(r->reclaim.dir && r->reclaim.undone) ? ENGINE_FINISH
                                                                                  : ENGINE_UNDO;
    p.reclaim = a->cfg.reclaim;
    m = xmalloc(sizeof *m);
    if (move_init(m, &a->loop, &p, &agent_move_ops, a) != 0) {
        LOG(LOG_ERROR, "cannot resume the move; its journal file stays", LF_S("move", r->move_id));
        journal_rec_free(r);
        move_close(m, agent_free_move);
        return;
    }
    for (tail = &a->moves; *tail; tail = &(*tail)->next)
        ;
    *tail = m;
    a->n_moves++;
    move_queue(m); /* announces it in its journaled phase */
    if (move_run(m) != 0)
        LOG(LOG_ERROR, "cannot start the worker to resume the move", LF_S("move", r->move_id));
}

void agent_recover(struct agent *a)
{
    unsigned bad = journal_load(&a->journal, agent_recover_one, a);
    journal_sweep_idents(&a->journal, agent_keeps_ident, a);
    if (bad)
        LOG(LOG_ERROR, "unreadable journal files were set aside", LF_U("count", bad),
            LF_S("state_dir", a->cfg.state_dir));
}
