/* agent_accept.c: the acceptance of server.move_data and server.move_prepare:
 * their path checks handed to path_check.c, the order in which they are
 * decided (the pending queue), the busy rules, the move made from its
 * journal record, and the queue of accepted moves with its recheck. */
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

/* server.move_prepare and server.move_data share their validation, codes,
 * busy rules, queue and retries; move_commit finds a prepared move resting
 * in ready. */

/* The answer to a check that ran past its limit. */
static void agent_hung_text(char *why, size_t whysz, const char *where)
{
    if (where && *where)
        util_fmt(why, whysz, "path %s did not answer within %u s (a hung mount?); nothing was done",
                 where, PATH_CHECK_LIMIT_MS / 1000);
    else
        util_fmt(why, whysz,
                 "the paths could not be checked within %u s: earlier checks are stuck on a hung "
                 "mount; nothing was done",
                 PATH_CHECK_LIMIT_MS / 1000);
}

/* Moves holding a slot: running, or having their paths checked to start. */
static unsigned agent_busy_slots(struct agent *a)
{
    unsigned n = 0;
    /* A commit or a discard does not wait for a slot and holds none: the
     * server is stopped meanwhile. */
    for (struct move *m = a->moves; m; m = m->next)
        n += move_holds_slot(m) || m->check != NULL;
    /* A move whose outcome is being recorded has not ended for the manager
     * yet (its terminal frame waits for the record): the next one starts
     * once that frame is out, so that one slot means one move at a time as
     * the manager sees it too. */
    for (unsigned k = 0; k < a->hist_len; k++)
        n += a->history[(a->hist_pos + AGENT_HISTORY_MAX - 1 - k) % AGENT_HISTORY_MAX].recording;
    return n;
}

/* Would m start at once: a free slot and no earlier move still waiting? */
static bool agent_slot_free(struct agent *a, const struct move *m)
{
    if (agent_busy_slots(a) >= a->cfg.max_concurrent_moves)
        return false;
    for (const struct move *o = a->moves; o; o = o->next)
        if (o != m && o->st.phase == PHASE_QUEUED && !move_is_running(o))
            return false;
    return true;
}

static void agent_run_move(struct move *m)
{
    LOG(LOG_INFO, "move started", LF_S("move", m->st.move_id), LF_S("server", m->st.server_name),
        LF_S("old", m->st.old_path), LF_S("new", m->st.new_path),
        LF_S("method", m->st.rename ? "rename" : "copy"));
    (void)move_run(m); /* a failure ends the move at once */
}

/* A queued move's paths are checked again when it leaves the queue: the
 * roots, the symlinks and the destination may have changed meanwhile. The
 * check runs off the loop like a request's (a hung mount must not freeze
 * it); the move holds its slot meanwhile. */
void agent_start_queued(struct agent *a)
{
    unsigned busy = agent_busy_slots(a);
    for (struct move *m = a->moves; m && busy < a->cfg.max_concurrent_moves; m = m->next) {
        if (m->st.phase != PHASE_QUEUED || move_is_running(m) || m->check)
            continue;
        m->check = path_check_new(m->st.old_path, m->st.new_path, a->cfg.allowed_roots,
                                  a->cfg.n_allowed_roots, m);
        path_checker_submit(&a->checker, m->check);
        busy++;
    }
}

static void agent_recheck_done(struct move *m, struct path_check *c, bool timed_out)
{
    const struct path_check_result *r = &c->out;
    /* Timed out, the check's thread may still be writing its result: not
     * read then (ThreadSanitizer saw the race). */
    enum move_code code = timed_out ? CODE_IO_ERROR : r->code;
    char why[MOVE_ERROR_MAX];
    m->check = NULL;
    if (timed_out) {
        agent_hung_text(why, sizeof why, atomic_load(&c->where));
    } else if (code != CODE_NONE) {
        util_fmt(why, sizeof why, "%s", r->why);
    } else if (strcmp(r->old_real, m->src) != 0 || strcmp(r->new_real, m->dst) != 0 ||
               r->rename != m->st.rename) {
        code = CODE_PATH_NOT_ALLOWED;
        util_fmt(why, sizeof why, "the paths resolve differently than when the move was accepted");
    }
    if (code == CODE_NONE) {
        agent_run_move(m);
        return;
    }
    LOG(LOG_WARN, "queued move no longer valid", LF_S("move", m->st.move_id),
        LF_S("code", move_code_name(code)), LF_S("error", why));
    move_stop(m, code, why); /* ends it at once; its end restarts the queue */
}

/* --- server.move_data ------------------------------------------------------- */

/* The request's paths are equal to, inside or containing either path of the
 * move m: by name, and by identity (the device and inode of the directories
 * along them, taken off the loop by the path check and, for m, when it was
 * accepted), so that a bind-mount alias of m's trees is caught too. */
static bool overlaps_move(const struct move *m, const struct path_check_result *r)
{
    struct path_claim c = {
        .src = m->src, .dst = m->dst, .src_ids = &m->src_ids, .dst_ids = &m->dst_ids};
    c.made = !m->dst_ids.leaf && move_dst_identity(m, &c.made_dev, &c.made_ino);
    return path_check_overlaps(&c, r);
}

/* busy and too_many_moves, on the loop (they depend on the moves list). */
static enum move_code agent_check_busy(struct agent *a, const struct move_request *r,
                                       const struct path_check_result *out, char *why, size_t whysz)
{
    for (struct move *m = a->moves; m; m = m->next) {
        if (strcmp(m->st.server_name, r->server_name) == 0) {
            util_fmt(why, whysz, "server %s is already moving", r->server_name);
            return CODE_BUSY;
        }
        if (r->move_id[0] && strcmp(m->st.move_id, r->move_id) == 0) {
            util_fmt(why, whysz, "move %s has not ended", r->move_id);
            return CODE_BUSY;
        }
        if (overlaps_move(m, out)) {
            util_fmt(why, whysz, "the paths overlap those of move %s", m->st.move_id);
            return CODE_BUSY;
        }
    }
    for (struct move *o = a->orphans; o; o = o->next) {
        if (overlaps_move(o, out)) {
            util_fmt(why, whysz,
                     "the paths overlap those of move %s, whose rollback waits on a disk that "
                     "does not answer",
                     o->st.move_id);
            return CODE_BUSY;
        }
    }
    /* Moves resting in ready hold their paths, not a place in the queue. */
    unsigned active = a->n_moves;
    for (struct move *m = a->moves; m; m = m->next)
        active -= move_is_resting(m);
    if (active >= a->cfg.max_concurrent_moves + a->cfg.max_queued_moves) {
        util_fmt(why, whysz, "%u moves are running or queued; the queue is full", active);
        return CODE_TOO_MANY_MOVES;
    }
    return CODE_NONE;
}

/* Answers an idempotent retry from the history (or, for a prepare, from a
 * prepared move resting in ready: its answer at ready again); false when it
 * is none. */
static bool agent_answer_retry(struct agent *a, const char *reply, const char *move_id,
                               const char *server, bool prepare)
{
    struct agent_ended *h = move_id[0] ? agent_history_find(a, move_id) : NULL;
    for (struct move *m = a->moves; prepare && !h && move_id[0] && m; m = m->next) {
        if (strcmp(m->st.move_id, move_id) != 0 || !m->prepared || !m->jr || !m->jr->ready_answer ||
            m->ready_held || m->st.phase != PHASE_READY)
            continue;
        LOG(LOG_INFO, "prepared move is ready; its answer sent again", LF_S("move", move_id));
        if (reply) {
            cJSON *d = cJSON_Parse(m->jr->ready_answer);
            agent_answer(a, FROM_MANAGER(reply), d ? d : cJSON_CreateObject());
        }
        return true;
    }
    if (!h)
        return false;
    if (h->held) {
        agent_refuse(a, FROM_MANAGER(reply), CODE_BUSY,
                     "the move has ended but its outcome cannot be recorded yet (state_dir); "
                     "it is answered once it is",
                     server);
        return true;
    }
    /* The recorded answer again, nothing run. */
    LOG(LOG_INFO, "move already ended; answer sent again", LF_S("move", move_id));
    if (reply) {
        cJSON *d = cJSON_Parse(h->answer_data);
        agent_answer(a, FROM_MANAGER(reply), d ? d : cJSON_CreateObject());
    }
    return true;
}

static void agent_decide_pending(struct agent *a);

/* The record of an accepted request is written: its move is made, and runs
 * or queues (a stop under way ends it at once, answered as any move the
 * stop ends). p's record is the move's now. */
static void agent_start_accepted(struct agent *a, struct agent_pending *p)
{
    struct path_check_result *res = &p->out;
    struct journal_rec *jr = p->jr;
    struct move_params mp;
    struct move *m, **tail;
    char ident[PATH_MAX];

    p->jr = NULL;
    journal_ident_path(&a->journal, jr->move_id, ident, sizeof ident);
    mp = (struct move_params){
        .jr = jr,
        .journal = &a->journal,
        .writer = &a->writer,
        .src_root = res->src_root,
        .dst_root = res->dst_root,
        .progress_interval_ms = a->cfg.progress_interval_ms,
        .move_timeout_ms = a->cfg.move_timeout_ms,
        .stall_timeout_ms = a->cfg.stall_timeout_ms,
        .mode = p->prepare ? ENGINE_PREPARE : ENGINE_MOVE,
        .ident_path = p->prepare ? ident : NULL,
        .prepare_ttl_ms = a->cfg.prepare_ttl_ms,
        .reclaim = a->cfg.reclaim,
        .max_rate_asked = p->req.max_rate,
        .max_rate = a->cfg.max_rate,
        .io_priority = a->cfg.io_priority,
    };
    m = xmalloc(sizeof *m);
    if (move_init(m, &a->loop, &mp, &agent_move_ops, a) != 0) {
        journal_remove_queued(&a->writer, &a->journal, jr->move_id);
        journal_rec_free(jr);
        move_close(m, agent_free_move);
        agent_refuse(a, FROM_MANAGER(p->reply), CODE_IO_ERROR, "cannot set up the move",
                     p->req.server_name);
        return;
    }
    for (tail = &a->moves; *tail; tail = &(*tail)->next)
        ;
    *tail = m;
    a->n_moves++;
    LOG(LOG_INFO, p->prepare ? "prepared move accepted" : "move accepted",
        LF_S("move", m->st.move_id), LF_S("server", p->req.server_name),
        LF_S("old", p->req.old_path), LF_S("new", p->req.new_path),
        LF_S("method", m->st.rename ? "rename" : "copy"));
    m->src_ids = res->old_ids;
    m->dst_ids = res->new_ids;
    /* A stop came while its record was written: it ends at once (queued),
     * recorded and answered like every move the stop ends. */
    if (a->stopping)
        (void)move_stop(m, CODE_SHUTTING_DOWN, "the agent is shutting down");
    /* Its paths were checked a moment ago: with a free slot and no earlier
     * move waiting it starts now, and its first frame is "calculating"; only
     * a move that has to wait sends "queued". */
    else if (agent_slot_free(a, m))
        agent_run_move(m);
    else
        move_queue(m);
}

/* On the loop, once the journal writer wrote (or failed to write) an
 * accepted request's record and its slot: the move is made, or (a record
 * that could not be written, removed again by the writer) the request is
 * refused, nothing touched. The requests after it are decided then. */
static void agent_accept_recorded(void *arg, int rc)
{
    struct agent_pending *p = arg, **pp;
    struct agent *a = p->owner;
    for (pp = &a->accepting; *pp != p; pp = &(*pp)->next)
        ;
    *pp = p->next;
    if (rc == -ECANCELED) { /* the agent is gone: nothing is sent any more */
        agent_pending_free(p);
        return;
    }
    if (rc != 0)
        agent_refuse(a, FROM_MANAGER(p->reply), CODE_IO_ERROR,
                     "cannot record the move in the journal (state_dir); nothing was touched",
                     p->req.server_name);
    else
        agent_start_accepted(a, p);
    agent_pending_free(p);
    agent_decide_pending(a);
}

/* Accepts a request whose checks all passed: its journal record, and room
 * for its outcome, are written on the journal writer (a move whose end
 * could not be recorded is not started); p waits in a->accepting until
 * then (agent_accept_recorded). */
static void agent_accept(struct agent *a, struct agent_pending *p)
{
    struct path_check_result *res = &p->out;
    const struct move_request *req = &p->req;
    struct agent_pending **tail;
    struct journal_rec *jr;
    char id[MOVE_ID_MAX + 1];

    if (req->move_id[0])
        util_fmt(id, sizeof id, "%s", req->move_id);
    else
        util_fmt(id, sizeof id, "mv-%llx-%x-%u", (unsigned long long)util_wall_ms(),
                 (unsigned)getpid(), ++a->id_counter);
    jr = xcalloc(1, sizeof *jr);
    util_fmt(jr->move_id, sizeof jr->move_id, "%s", id);
    util_fmt(jr->server_name, sizeof jr->server_name, "%s", req->server_name);
    jr->old_path = xstrdup(req->old_path);
    jr->new_path = xstrdup(req->new_path);
    jr->src = xstrdup(res->old_real);
    jr->dst = xstrdup(res->new_real);
    jr->reply = p->reply ? xstrdup(p->reply) : NULL;
    jr->prepared = p->prepare;
    jr->rename = res->rename;
    jr->verify = a->cfg.verify;
    /* Found by the check, off the loop. */
    jr->dst_preexisted = res->dst_preexisted;
    jr->dst_orig = res->dst_orig;
    jr->made_parents = res->made_parents;
    jr->n_made = res->n_made;
    res->made_parents = NULL;
    res->n_made = 0;
    /* Identities, so that recovery removes only what the move made. */
    jr->src_id.known = true;
    jr->src_id.dev = (uint64_t)res->old_st.st_dev;
    jr->src_id.ino = (uint64_t)res->old_st.st_ino;
    if (res->dst_preexisted) {
        jr->dst_id.known = true;
        jr->dst_id.dev = (uint64_t)res->dst_orig.st_dev;
        jr->dst_id.ino = (uint64_t)res->dst_orig.st_ino;
    }
    jr->started_at_ms = util_wall_ms();
    jr->phase = PHASE_QUEUED;
    p->jr = jr;
    p->owner = a;
    p->next = NULL;
    for (tail = &a->accepting; *tail; tail = &(*tail)->next)
        ;
    *tail = p;
    journal_write_queued(&a->writer, &a->journal, jr, true, agent_accept_recorded, p);
}

/* The checks of a request are in (or ran out of time): its answer, or its
 * acceptance (true: p is the acceptance's now, in a->accepting). */
static bool agent_decide(struct agent *a, struct agent_pending *p)
{
    char why[MOVE_ERROR_MAX];
    enum move_code code;
    if (p->timed_out) {
        agent_hung_text(why, sizeof why, p->where);
        agent_refuse(a, FROM_MANAGER(p->reply), CODE_IO_ERROR, why, p->req.server_name);
        return false;
    }
    /* A move of that id may have ended while this request was checked. */
    if (agent_answer_retry(a, p->reply, p->req.move_id, p->req.server_name, p->prepare))
        return false;
    if (a->stopping) {
        agent_refuse(a, FROM_MANAGER(p->reply), CODE_SHUTTING_DOWN, "the agent is shutting down",
                     p->req.server_name);
        return false;
    }
    if (p->out.code != CODE_NONE) {
        agent_refuse(a, FROM_MANAGER(p->reply), p->out.code, p->out.why, p->req.server_name);
        return false;
    }
    code = agent_check_busy(a, &p->req, &p->out, why, sizeof why);
    if (code != CODE_NONE) {
        agent_refuse(a, FROM_MANAGER(p->reply), code, why, p->req.server_name);
        return false;
    }
    agent_accept(a, p);
    return true;
}

static bool pending_conflict(const struct agent_pending *p, const struct agent_pending *q)
{
    if (strcmp(p->req.server_name, q->req.server_name) == 0)
        return true;
    if (p->req.move_id[0] && strcmp(p->req.move_id, q->req.move_id) == 0)
        return true;
    /* By the paths as written: a hung check's resolution is unknown. */
    return path_check_may_conflict(p->old_norm, p->new_norm, q->old_norm, q->new_norm);
}

void agent_pending_free(struct agent_pending *p)
{
    for (size_t i = 0; i < p->out.n_made; i++)
        free(p->out.made_parents[i]);
    free(p->out.made_parents);
    free(p->old_path);
    free(p->new_path);
    free(p->reply);
    journal_rec_free(p->jr);
    free(p);
}

static void agent_on_order_timer(uv_timer_t *t)
{
    agent_decide_pending(container_of(t, struct agent, order_timer));
}

/* Decides the requests whose checks are in, in arrival order: a request
 * waits for every accepted one whose record is still being written (its
 * move is not made yet, and the busy rules need it), for an earlier
 * undecided one it could conflict with (same server, same moveId,
 * overlapping paths), so that order keeps deciding who is busy; and for any
 * earlier one still being checked, for at most
 * AGENT_ORDER_GRACE_MS after its own check came in, so that moves queue in
 * the order they were asked for (checks run in parallel and finish in any
 * order) while an unrelated request never waits long for a check stuck on
 * a hung mount. */
static void agent_decide_pending(struct agent *a)
{
    struct agent_pending **pp = &a->pending;
    uint64_t now = util_mono_ms(), due = 0;
    while (*pp) {
        struct agent_pending *p = *pp;
        bool wait = p->check != NULL || a->accepting;
        for (struct agent_pending *q = a->pending; !wait && q != p; q = q->next) {
            wait = pending_conflict(p, q);
            if (!wait && q->check && now < p->checked_ms + AGENT_ORDER_GRACE_MS) {
                wait = true;
                if (!due || p->checked_ms + AGENT_ORDER_GRACE_MS < due)
                    due = p->checked_ms + AGENT_ORDER_GRACE_MS;
            }
        }
        if (wait) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        if (!agent_decide(a, p))
            agent_pending_free(p);
    }
    if (due)
        uv_timer_start(&a->order_timer, agent_on_order_timer, due - now, 0);
    a->decided(a);
}

void agent_on_check(void *owner, struct path_check *c, bool timed_out)
{
    struct agent *a = owner;
    struct agent_pending *p;
    for (p = a->pending; p && p->check != c; p = p->next)
        ;
    if (!p) {
        /* One move has this check. Found first, then told: its end may
         * change the list (no pointer into it is held across the call). */
        struct move *m = a->moves;
        while (m && m->check != c)
            m = m->next;
        if (m)
            agent_recheck_done(m, c, timed_out);
        return;
    }
    p->check = NULL;
    p->checked_ms = util_mono_ms();
    p->timed_out = timed_out;
    if (timed_out) {
        const char *where = atomic_load(&c->where);
        util_fmt(p->where, sizeof p->where, "%s", where ? where : "");
    } else {
        p->out = c->out;
        c->out.made_parents = NULL; /* taken */
        c->out.n_made = 0;
    }
    agent_decide_pending(a);
}

void agent_move_request(struct agent *a, const struct frame *f, const struct origin *o,
                        bool prepare)
{
    struct move_request req;
    struct agent_pending *p, **tail;
    const char *w;
    char why[512];

    if (protocol_parse_move_data(f->data, &req, why, sizeof why) != 0) {
        agent_refuse(a, o, CODE_INVALID_REQUEST, why, NULL);
        return;
    }
    if (agent_answer_retry(a, o->reply, req.move_id, req.server_name, prepare))
        return;
    if (a->stopping) {
        agent_refuse(a, o, CODE_SHUTTING_DOWN, "the agent is shutting down", req.server_name);
        return;
    }
    /* Everything that touches the disk runs off the loop (a path on a hung
     * mount blocks for as long as it hangs); the answer comes when the
     * check is in, or at its time limit. */
    p = xcalloc(1, sizeof *p);
    p->seq = a->cur_seq;
    p->prepare = prepare;
    p->req = req;
    p->old_path = xstrdup(req.old_path);
    p->new_path = xstrdup(req.new_path);
    p->req.old_path = p->old_path;
    p->req.new_path = p->new_path;
    p->reply = o->reply ? xstrdup(o->reply) : NULL;
    if (path_check_syntax(p->old_path, p->old_norm, &w) != 0)
        p->old_norm[0] = '\0'; /* refused by the check, in the protocol's words */
    if (path_check_syntax(p->new_path, p->new_norm, &w) != 0)
        p->new_norm[0] = '\0';
    p->check =
        path_check_new(p->old_path, p->new_path, a->cfg.allowed_roots, a->cfg.n_allowed_roots, p);
    for (tail = &a->pending; *tail; tail = &(*tail)->next)
        ;
    *tail = p;
    path_checker_submit(&a->checker, p->check);
}
