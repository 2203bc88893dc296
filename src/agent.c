/* agent.c: the daemon's top level: requests, validation, moves, hello, stop. */
#include "agent.h"
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

static void agent_maybe_finish_stop(struct agent *a);
static void agent_resend_outcome(struct agent *a, const struct journal_rec *r,
                                 const struct move_state *st);
static void agent_on_held_timer(uv_timer_t *t);
static void agent_start_queued(struct agent *a);
static void agent_free_move(struct move *m);
static void agent_run_deferred(struct agent *a);

/* --- sending ---------------------------------------------------------------- */

static void agent_send(struct agent *a, const char *subject, cJSON *data, const char *merge_key,
                       bool keep, const char *ack_key)
{
    char *s = protocol_envelope(subject, data);
    ws_client_send(&a->ws, s, strlen(s), merge_key, keep, ack_key);
    cJSON_free(s);
}

/* Where a request came from and where its answer goes: the manager (its
 * reply subject, NULL when it wants none) or a control socket client (the
 * answer is handed back through answer). who names the asker in the logs. */
struct origin {
    const char *reply;
    cJSON **answer;
    const char *who;
};

/* The manager's request with this reply subject (NULL: no answer wanted). */
#define FROM_MANAGER(subject) (&(struct origin){.reply = (subject), .who = "manager"})

static void agent_answer(struct agent *a, const struct origin *o, cJSON *data)
{
    if (o->answer) {
        cJSON_Delete(*o->answer);
        *o->answer = data;
        return;
    }
    if (!o->reply) {
        cJSON_Delete(data);
        return;
    }
    agent_send(a, o->reply, data, NULL, true, NULL);
}

/* Keys of the messages whose delivery is acknowledged (see ws_client). */
static void ack_key(char *buf, size_t sz, const char *kind, const char *move_id)
{
    util_fmt(buf, sz, "%s:%s", kind, move_id);
}

static void agent_refuse(struct agent *a, const struct origin *o, enum move_code code,
                         const char *why, const char *server)
{
    LOG(LOG_INFO, "request refused", LF_S("server", server ? server : ""),
        LF_S("code", move_code_name(code)), LF_S("error", why), LF_S("via", o->who));
    metrics_refused(&a->metrics, code);
    agent_answer(a, o, protocol_failure(code, why));
}

/* --- history of ended moves --------------------------------------------------- */

/* Frees an entry; its journal file goes only once the answer was delivered
 * (otherwise a restart sends it again). */
static void history_forget(struct agent *a, struct agent_ended *h)
{
    if (h->jr) {
        struct move *o;
        /* A rollback still waits on a stuck disk: the record is its own now. */
        for (o = a->orphans; o && o->jr != h->jr; o = o->next)
            ;
        if (o) {
            o->owns_jr = true;
        } else {
            if (h->jr->delivered)
                journal_remove(&a->journal, h->jr->move_id);
            journal_rec_free(h->jr);
        }
        h->jr = NULL;
    }
    move_state_clear(&h->st);
    free(h->answer_data);
    h->answer_data = NULL;
}

static void history_prune(struct agent *a)
{
    uint64_t now = util_mono_ms();
    /* Oldest first: drop entries older than an hour. */
    while (a->hist_len > 0) {
        unsigned oldest = (a->hist_pos + AGENT_HISTORY_MAX - a->hist_len) % AGENT_HISTORY_MAX;
        struct agent_ended *h = &a->history[oldest];
        if (now - h->ended_mono < AGENT_HISTORY_MS)
            break;
        history_forget(a, h);
        a->hist_len--;
    }
}

static struct agent_ended *history_add(struct agent *a, const struct move_state *st,
                                       const char *answer_data, struct journal_rec *jr,
                                       uint64_t ended_mono)
{
    struct agent_ended *h = &a->history[a->hist_pos];
    if (a->hist_len == AGENT_HISTORY_MAX)
        history_forget(a, h);
    else
        a->hist_len++;
    memset(&h->st, 0, sizeof h->st);
    move_state_copy(&h->st, st);
    h->answer_data = xstrdup(answer_data);
    h->jr = jr;
    h->ended_mono = ended_mono;
    h->held = false;
    a->hist_pos = (a->hist_pos + 1) % AGENT_HISTORY_MAX;
    return h;
}

/* The MoveState an ended move shows (status, hello): a held one as not
 * ended, in the phase its journal record still says. */
static cJSON *history_state_json(const struct agent_ended *h)
{
    struct move_state st;
    cJSON *o;
    if (!h->held)
        return move_state_to_json(&h->st);
    memset(&st, 0, sizeof st);
    move_state_copy(&st, &h->st);
    st.phase = h->held_phase;
    st.code = CODE_NONE;
    st.error[0] = '\0';
    st.ended_at_ms = 0;
    o = move_state_to_json(&st);
    move_state_clear(&st);
    return o;
}

static struct agent_ended *history_find(struct agent *a, const char *move_id)
{
    history_prune(a);
    for (unsigned k = 0; k < a->hist_len; k++) {
        unsigned i = (a->hist_pos + AGENT_HISTORY_MAX - 1 - k) % AGENT_HISTORY_MAX;
        if (strcmp(a->history[i].st.move_id, move_id) == 0)
            return &a->history[i];
    }
    return NULL;
}

/* --- move callbacks ------------------------------------------------------------ */

static void agent_on_frame(struct move *m, const struct move_state *st, bool intermediate)
{
    struct agent *a = m->owner;
    char key[MOVE_ID_MAX + 16];
    /* A journaled move's terminal frame goes with its answer, once its
     * outcome is recorded (agent_on_ended). */
    if (move_phase_terminal(st->phase) && m->jr)
        return;
    ack_key(key, sizeof key, "final", st->move_id);
    agent_send(a, "move.progress", move_state_to_json(st), intermediate ? st->move_id : NULL, true,
               move_phase_terminal(st->phase) ? key : NULL);
}

static cJSON *agent_move_answer(const struct move_state *s)
{
    cJSON *d = cJSON_CreateObject();
    cJSON_AddBoolToObject(d, "success", s->phase == PHASE_COMPLETE);
    cJSON_AddStringToObject(d, "moveId", s->move_id);
    cJSON_AddStringToObject(d, "serverName", s->server_name);
    if (s->phase == PHASE_COMPLETE) {
        cJSON_AddStringToObject(d, "oldPath", s->old_path);
        cJSON_AddStringToObject(d, "newPath", s->new_path);
        cJSON_AddStringToObject(d, "method", s->rename ? "rename" : "copy");
        json_add_u64(d, "bytesCopied", s->count.bytes_copied);
        json_add_u64(d, "filesCopied", s->count.files_copied);
        json_add_u64(d, "durationMs", s->ended_at_ms - s->started_at_ms);
        if (s->warning_code != CODE_NONE) {
            /* The cleaning stopped: the server lives at newPath all the same. */
            char clean[MOVE_ERROR_MAX];
            util_utf8_sanitize(clean, sizeof clean, s->warning);
            cJSON_AddStringToObject(d, "warningCode", move_code_name(s->warning_code));
            cJSON_AddStringToObject(d, "warning", clean);
        }
    } else {
        cJSON *fail = protocol_failure(s->code, s->error);
        cJSON_AddItemToObject(d, "code", cJSON_DetachItemFromObject(fail, "code"));
        cJSON_AddItemToObject(d, "error", cJSON_DetachItemFromObject(fail, "error"));
        cJSON_Delete(fail);
    }
    return d;
}

/* The outcome of h could not be recorded: hold it back and retry (see
 * agent_ended.held). */
static void agent_hold(struct agent *a, struct agent_ended *h, enum move_phase journaled)
{
    h->held = true;
    h->held_phase = journaled;
    LOG(LOG_ERROR,
        "the move's outcome cannot be recorded in the journal; it is held back (no terminal "
        "frame, no answer) and recorded again every 5 s: a restart before then settles the "
        "move from its older record instead",
        LF_S("move", h->st.move_id), LF_S("outcome", move_phase_name(h->st.phase)),
        LF_S("journaled_phase", move_phase_name(journaled)));
    if (!uv_is_active((uv_handle_t *)&a->held_timer))
        uv_timer_start(&a->held_timer, agent_on_held_timer, AGENT_HELD_RETRY_MS,
                       AGENT_HELD_RETRY_MS);
}

static void agent_free_move(struct move *m)
{
    free(m);
}

static void agent_on_ended(struct move *m)
{
    struct agent *a = m->owner;
    struct move **pp;
    /* Ended without its worker, stuck on a disk: it rolls back when it comes
     * back (or the next start does). */
    bool orphan = move_is_running(m);
    cJSON *answer = agent_move_answer(&m->st);
    char *printed = cJSON_PrintUnformatted(answer);
    char rate[24];
    struct journal_rec *jr = m->jr;
    enum move_phase journaled;
    struct agent_ended *h;
    uint64_t dur = m->st.ended_at_ms - m->st.started_at_ms;

    util_fmt_rate(rate, sizeof rate, dur ? m->st.count.bytes_copied * 1000u / dur : 0);
    LOG(m->st.phase == PHASE_COMPLETE && !m->st.warning_code ? LOG_INFO : LOG_WARN, "move ended",
        LF_S("move", m->st.move_id), LF_S("server", m->st.server_name),
        LF_S("outcome", move_phase_name(m->st.phase)),
        LF_S("code", m->st.code ? move_code_name(m->st.code) : "none"), LF_S("error", m->st.error),
        LF_S("warning", m->st.warning), LF_U("bytes", m->st.count.bytes_copied),
        LF_U("files", m->st.count.files_copied), LF_U("duration_ms", dur), LF_S("avg_rate", rate));
    metrics_move_ended(&a->metrics, &m->st);
    /* Every move of the agent has its record (made from it, move_params):
     * the outcome is durable before the terminal frame and the answer go
     * out; if it cannot be recorded it is held (see agent_ended.held). */
    assert(jr != NULL);
    journaled = jr->phase;
    jr->phase = m->st.phase;
    jr->code = m->st.code;
    util_fmt(jr->error, sizeof jr->error, "%s", m->st.error);
    jr->count = m->st.count;
    jr->seq = m->st.seq;
    jr->ended_at_ms = m->st.ended_at_ms;
    free(jr->answer);
    jr->answer = xstrdup(printed ? printed : "{}");
    jr->delivered = false;
    jr->rollback_pending = orphan;
    jr->rollback_phase = m->abandoned_phase;
    if (!orphan)
        m->jr = NULL; /* the history's now; an orphan keeps a pointer to it */
    h = history_add(a, &m->st, jr->answer, jr, util_mono_ms());
    if (journal_write(&a->journal, jr) == 0)
        agent_resend_outcome(a, jr, &m->st);
    else
        agent_hold(a, h, journaled);
    cJSON_Delete(answer);
    cJSON_free(printed);

    for (pp = &a->moves; *pp; pp = &(*pp)->next) {
        if (*pp == m) {
            *pp = m->next;
            a->n_moves--;
            break;
        }
    }
    if (m->check) {
        path_checker_forget(&a->checker, m->check);
        m->check = NULL;
    }
    if (orphan) {
        m->next = a->orphans;
        a->orphans = m;
    } else {
        move_close(m, agent_free_move);
    }
    if (!a->stopping)
        agent_start_queued(a);
    agent_maybe_finish_stop(a);
}

/* The worker of an ended move came back: its rollback is done. */
static void agent_on_released(struct move *m)
{
    struct agent *a = m->owner;
    struct move **pp;
    for (pp = &a->orphans; *pp; pp = &(*pp)->next) {
        if (*pp == m) {
            *pp = m->next;
            break;
        }
    }
    if (m->jr) {
        m->jr->rollback_pending = false;
        (void)journal_write(&a->journal, m->jr);
        if (m->owns_jr) {
            if (m->jr->delivered)
                journal_remove(&a->journal, m->jr->move_id);
            journal_rec_free(m->jr);
        }
        m->jr = NULL;
    }
    move_close(m, agent_free_move);
    agent_maybe_finish_stop(a);
}

static const struct move_ops agent_move_ops = {
    .frame = agent_on_frame,
    .ended = agent_on_ended,
    .released = agent_on_released,
};

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
    for (struct move *m = a->moves; m; m = m->next)
        n += move_is_running(m) || m->check != NULL;
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
static void agent_start_queued(struct agent *a)
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
    enum move_code code = r->code;
    char why[MOVE_ERROR_MAX];
    m->check = NULL;
    if (timed_out) {
        code = CODE_IO_ERROR;
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
    const char *theirs[2] = {m->src, m->dst}, *ours[2] = {r->old_real, r->new_real};
    const struct path_ids *their_ids[2] = {&m->src_ids, &m->dst_ids};
    const struct path_ids *our_ids[2] = {&r->old_ids, &r->new_ids};
    dev_t dev;
    ino_t ino;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            if (path_overlap(theirs[i], ours[j]) || path_ids_overlap(their_ids[i], our_ids[j]))
                return true;
    /* A destination the move made after it was accepted: inside it? */
    if (!m->dst_ids.leaf && move_dst_identity(m, &dev, &ino))
        for (int j = 0; j < 2; j++)
            if (path_ids_has(our_ids[j], dev, ino))
                return true;
    return false;
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
    if (a->n_moves >= a->cfg.max_concurrent_moves + a->cfg.max_queued_moves) {
        util_fmt(why, whysz, "%u moves are running or queued; the queue is full", a->n_moves);
        return CODE_TOO_MANY_MOVES;
    }
    return CODE_NONE;
}

/* Answers an idempotent retry from the history; false when it is none. */
static bool agent_answer_retry(struct agent *a, const char *reply, const char *move_id,
                               const char *server)
{
    struct agent_ended *h = move_id[0] ? history_find(a, move_id) : NULL;
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

/* Makes the move of a request whose checks all passed. */
static void agent_accept(struct agent *a, struct agent_pending *p)
{
    struct path_check_result *res = &p->out;
    const struct move_request *req = &p->req;
    struct move_params mp;
    struct move *m, **tail;
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
    /* The record, and room for its outcome: a move whose end could not be
     * recorded is not started. */
    if (journal_write(&a->journal, jr) != 0 || journal_reserve(&a->journal, jr) != 0) {
        journal_remove(&a->journal, jr->move_id);
        journal_rec_free(jr);
        agent_refuse(a, FROM_MANAGER(p->reply), CODE_IO_ERROR,
                     "cannot record the move in the journal (state_dir); nothing was touched",
                     req->server_name);
        return;
    }
    mp = (struct move_params){
        .jr = jr,
        .journal = &a->journal,
        .src_root = res->src_root,
        .dst_root = res->dst_root,
        .progress_interval_ms = a->cfg.progress_interval_ms,
        .move_timeout_ms = a->cfg.move_timeout_ms,
        .stall_timeout_ms = a->cfg.stall_timeout_ms,
    };
    m = xmalloc(sizeof *m);
    if (move_init(m, &a->loop, &mp, &agent_move_ops, a) != 0) {
        journal_remove(&a->journal, jr->move_id);
        journal_rec_free(jr);
        move_close(m, agent_free_move);
        agent_refuse(a, FROM_MANAGER(p->reply), CODE_IO_ERROR, "cannot set up the move",
                     req->server_name);
        return;
    }
    for (tail = &a->moves; *tail; tail = &(*tail)->next)
        ;
    *tail = m;
    a->n_moves++;
    LOG(LOG_INFO, "move accepted", LF_S("move", id), LF_S("server", req->server_name),
        LF_S("old", req->old_path), LF_S("new", req->new_path),
        LF_S("method", m->st.rename ? "rename" : "copy"));
    m->src_ids = res->old_ids;
    m->dst_ids = res->new_ids;
    /* Its paths were checked a moment ago: with a free slot and no earlier
     * move waiting it starts now, and its first frame is "calculating"; only
     * a move that has to wait sends "queued". */
    if (agent_slot_free(a, m))
        agent_run_move(m);
    else
        move_queue(m);
}

/* The checks of a request are in (or ran out of time): its answer. */
static void agent_decide(struct agent *a, struct agent_pending *p)
{
    char why[MOVE_ERROR_MAX];
    enum move_code code;
    if (p->timed_out) {
        agent_hung_text(why, sizeof why, p->where);
        agent_refuse(a, FROM_MANAGER(p->reply), CODE_IO_ERROR, why, p->req.server_name);
        return;
    }
    /* A move of that id may have ended while this request was checked. */
    if (agent_answer_retry(a, p->reply, p->req.move_id, p->req.server_name))
        return;
    if (a->stopping) {
        agent_refuse(a, FROM_MANAGER(p->reply), CODE_SHUTTING_DOWN, "the agent is shutting down",
                     p->req.server_name);
        return;
    }
    if (p->out.code != CODE_NONE) {
        agent_refuse(a, FROM_MANAGER(p->reply), p->out.code, p->out.why, p->req.server_name);
        return;
    }
    code = agent_check_busy(a, &p->req, &p->out, why, sizeof why);
    if (code != CODE_NONE) {
        agent_refuse(a, FROM_MANAGER(p->reply), code, why, p->req.server_name);
        return;
    }
    agent_accept(a, p);
}

static bool pending_conflict(const struct agent_pending *p, const struct agent_pending *q)
{
    if (strcmp(p->req.server_name, q->req.server_name) == 0)
        return true;
    if (p->req.move_id[0] && strcmp(p->req.move_id, q->req.move_id) == 0)
        return true;
    /* By the paths as written: a hung check's resolution is unknown. An alias
     * through a symlink is still caught by the busy check of whichever is
     * decided second. */
    if (!p->old_norm[0] || !p->new_norm[0] || !q->old_norm[0] || !q->new_norm[0])
        return false;
    return path_overlap(p->old_norm, q->old_norm) || path_overlap(p->old_norm, q->new_norm) ||
           path_overlap(p->new_norm, q->old_norm) || path_overlap(p->new_norm, q->new_norm);
}

static void agent_pending_free(struct agent_pending *p)
{
    for (size_t i = 0; i < p->out.n_made; i++)
        free(p->out.made_parents[i]);
    free(p->out.made_parents);
    free(p->old_path);
    free(p->new_path);
    free(p->reply);
    free(p);
}

/* Decides the requests whose checks are in, in arrival order; one waits for
 * an earlier undecided one it could conflict with (same server, same moveId,
 * overlapping paths), so that order keeps deciding who is busy, while
 * unrelated requests never wait for a check stuck on a hung mount. */
static void agent_decide_pending(struct agent *a)
{
    struct agent_pending **pp = &a->pending;
    while (*pp) {
        struct agent_pending *p = *pp;
        bool wait = p->check != NULL;
        for (struct agent_pending *q = a->pending; !wait && q != p; q = q->next)
            wait = pending_conflict(p, q);
        if (wait) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        agent_decide(a, p);
        agent_pending_free(p);
    }
    agent_run_deferred(a);
}

static void agent_on_check(void *owner, struct path_check *c, bool timed_out)
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

static void agent_move_data(struct agent *a, const struct frame *f, const struct origin *o)
{
    struct move_request req;
    struct agent_pending *p, **tail;
    const char *w;
    char why[512];

    if (protocol_parse_move_data(f->data, &req, why, sizeof why) != 0) {
        agent_refuse(a, o, CODE_INVALID_REQUEST, why, NULL);
        return;
    }
    if (agent_answer_retry(a, o->reply, req.move_id, req.server_name))
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

/* --- cancel and status ---------------------------------------------------------- */

static bool selector_matches(const struct move_selector *s, const struct move_state *st)
{
    return (!s->server_name[0] || strcmp(s->server_name, st->server_name) == 0) &&
           (!s->move_id[0] || strcmp(s->move_id, st->move_id) == 0);
}

static void agent_move_cancel(struct agent *a, const struct frame *f, const struct origin *o)
{
    struct move_selector sel;
    struct move *m;
    char why[256], id[MOVE_ID_MAX + 1];
    cJSON *d;
    bool queued;

    if (protocol_parse_selector(f->data, &sel, why, sizeof why) != 0) {
        agent_refuse(a, o, CODE_INVALID_REQUEST, why, NULL);
        return;
    }
    if (!sel.server_name[0] && !sel.move_id[0]) {
        agent_refuse(a, o, CODE_INVALID_REQUEST, "serverName or moveId is required", NULL);
        return;
    }
    for (m = a->moves; m; m = m->next)
        if (!move_phase_terminal(m->st.phase) && selector_matches(&sel, &m->st))
            break;
    if (!m) {
        util_fmt(why, sizeof why, "no move of %s%s%s has not ended", sel.server_name,
                 sel.server_name[0] && sel.move_id[0] ? " / " : "", sel.move_id);
        agent_refuse(a, o, CODE_NOT_FOUND, why, sel.server_name);
        return;
    }
    util_fmt(id, sizeof id, "%s", m->st.move_id);
    queued = m->st.phase == PHASE_QUEUED;
    /* A queued move ends at once inside move_stop (its frames and answer go
     * out then): answer the cancel first. A running one may refuse (cleaning). */
    if (!queued && move_stop(m, CODE_CANCELLED, "the move was cancelled") == -EBUSY) {
        util_fmt(why, sizeof why,
                 "move %s is removing its source after a verified copy; it cannot be cancelled "
                 "and will complete",
                 id);
        agent_refuse(a, o, CODE_BUSY, why, m->st.server_name);
        return;
    }
    LOG(LOG_INFO, "move cancel requested", LF_S("move", id), LF_S("queued", queued ? "yes" : "no"),
        LF_S("via", o->who));
    d = cJSON_CreateObject();
    cJSON_AddTrueToObject(d, "success");
    cJSON_AddStringToObject(d, "moveId", id);
    agent_answer(a, o, d);
    if (queued)
        move_stop(m, CODE_CANCELLED, "the move was cancelled while queued");
}

/* Adds one MoveState to a status answer while the answer stays under
 * AGENT_STATUS_MAX_BYTES (paths and file names can make one state tens of
 * kilobytes, and a manager may ask often); past it, counts it as omitted. */
static void status_add(cJSON *moves, cJSON *o, size_t *bytes, unsigned *omitted)
{
    char *txt = *omitted ? NULL : cJSON_PrintUnformatted(o);
    size_t len = txt ? strlen(txt) + 1 : 0;
    cJSON_free(txt);
    if (*omitted || *bytes + len > AGENT_STATUS_MAX_BYTES) {
        (*omitted)++;
        cJSON_Delete(o);
        return;
    }
    *bytes += len;
    cJSON_AddItemToArray(moves, o);
}

static void agent_move_status(struct agent *a, const struct frame *f, const struct origin *o)
{
    struct move_selector sel;
    char why[256];
    cJSON *d, *moves;
    unsigned listed = 0, omitted = 0;
    size_t bytes = 64;

    if (protocol_parse_selector(f->data, &sel, why, sizeof why) != 0) {
        agent_refuse(a, o, CODE_INVALID_REQUEST, why, NULL);
        return;
    }
    d = cJSON_CreateObject();
    cJSON_AddTrueToObject(d, "success");
    moves = cJSON_AddArrayToObject(d, "moves");
    for (struct move *m = a->moves; m; m = m->next)
        if (selector_matches(&sel, &m->st))
            status_add(moves, move_state_to_json(&m->st), &bytes, &omitted);
    history_prune(a);
    for (unsigned k = 0; k < a->hist_len && listed < AGENT_HISTORY_MAX; k++) {
        unsigned i = (a->hist_pos + AGENT_HISTORY_MAX - 1 - k) % AGENT_HISTORY_MAX;
        if (selector_matches(&sel, &a->history[i].st)) {
            status_add(moves, history_state_json(&a->history[i]), &bytes, &omitted);
            listed++;
        }
    }
    if (omitted) {
        cJSON_AddTrueToObject(d, "truncated");
        cJSON_AddNumberToObject(d, "omitted", omitted);
    }
    agent_answer(a, o, d);
}

/* --- incoming frames ------------------------------------------------------------ */

static const struct {
    const char *subject;
    void (*handle)(struct agent *a, const struct frame *f, const struct origin *o);
} handlers[] = {
    {"server.move_data", agent_move_data},
    {"server.move_cancel", agent_move_cancel},
    {"server.move_status", agent_move_status},
};

static void agent_dispatch(struct agent *a, const struct frame *f)
{
    char why[256];
    size_t i;
    for (i = 0; i < ARRAY_SIZE(handlers); i++) {
        if (strcmp(handlers[i].subject, f->subject) == 0) {
            handlers[i].handle(a, f, FROM_MANAGER(f->reply));
            return;
        }
    }
    if (f->reply) {
        util_fmt(why, sizeof why, "unknown subject %s", f->subject);
        agent_refuse(a, FROM_MANAGER(f->reply), CODE_UNKNOWN_SUBJECT, why, NULL);
    } else {
        LOG(LOG_INFO, "request with unknown subject dropped", LF_S("subject", f->subject));
    }
}

/* A cancel or a status naming a server or a moveId whose server.move_data
 * arrived earlier and is still being checked waits for that request's
 * answer (at most its time limit): "data, then cancel" must find the move.
 * Everything else is handled at once, whatever the checks do. */
static bool agent_must_wait(struct agent *a, const struct frame *f)
{
    struct move_selector sel;
    char why[64];
    if (!a->pending || (strcmp(f->subject, "server.move_cancel") != 0 &&
                        strcmp(f->subject, "server.move_status") != 0))
        return false;
    if (protocol_parse_selector(f->data, &sel, why, sizeof why) != 0)
        return false;
    for (const struct agent_pending *p = a->pending; p; p = p->next) {
        if (p->seq >= a->cur_seq)
            continue;
        if ((sel.server_name[0] && strcmp(sel.server_name, p->req.server_name) == 0) ||
            (sel.move_id[0] && strcmp(sel.move_id, p->req.move_id) == 0))
            return true;
    }
    return false;
}

static void agent_on_message(struct ws_client *c, const char *buf, size_t len)
{
    struct agent *a = c->owner;
    struct frame f;
    char why[256];

    switch (protocol_parse_frame(buf, len, &f, why, sizeof why)) {
    case FRAME_DROP:
        LOG(LOG_WARN, "malformed frame dropped", LF_S("reason", why), LF_U("bytes", len));
        break;
    case FRAME_INVALID:
        LOG(LOG_WARN, "malformed frame answered", LF_S("reason", why), LF_S("reply", f.reply));
        metrics_refused(&a->metrics, CODE_INVALID_REQUEST);
        agent_answer(a, FROM_MANAGER(f.reply), protocol_failure(CODE_INVALID_REQUEST, why));
        break;
    case FRAME_OK:
        a->cur_seq = ++a->msg_seq;
        if (agent_must_wait(a, &f)) {
            struct agent_deferred *d = xcalloc(1, sizeof *d), **tail;
            d->seq = a->cur_seq;
            d->f = f; /* taken: nothing left for frame_free below */
            memset(&f, 0, sizeof f);
            for (tail = &a->deferred; *tail; tail = &(*tail)->next)
                ;
            *tail = d;
            break;
        }
        agent_dispatch(a, &f);
        break;
    }
    frame_free(&f);
}

/* A request on the control socket: the manager's status and cancel, answered
 * with the same data object; malformed input gets invalid_request. */
static char *agent_on_control(struct control *c, const struct control_peer *peer, const char *line,
                              size_t len)
{
    struct agent *a = c->owner;
    struct frame f;
    cJSON *answer = NULL;
    char why[256], who[96], *printed, *out;
    struct origin o = {.answer = &answer, .who = who};

    util_fmt(who, sizeof who, "control socket uid %u pid %d", (unsigned)peer->uid, (int)peer->pid);
    switch (protocol_parse_frame(line, len, &f, why, sizeof why)) {
    case FRAME_DROP:
    case FRAME_INVALID:
        agent_refuse(a, &o, CODE_INVALID_REQUEST, why, NULL);
        break;
    case FRAME_OK:
        if (strcmp(f.subject, "server.move_status") == 0) {
            agent_move_status(a, &f, &o);
        } else if (strcmp(f.subject, "server.move_cancel") == 0) {
            agent_move_cancel(a, &f, &o);
        } else {
            util_fmt(why, sizeof why,
                     "subject %s is not served on the control socket (only server.move_status "
                     "and server.move_cancel)",
                     f.subject);
            agent_refuse(a, &o, CODE_UNKNOWN_SUBJECT, why, NULL);
        }
        break;
    }
    frame_free(&f);
    printed = answer ? cJSON_PrintUnformatted(answer) : NULL;
    cJSON_Delete(answer);
    if (!printed)
        util_oom(0);
    out = xstrdup(printed);
    cJSON_free(printed);
    return out;
}

static const struct control_ops agent_control_ops = {
    .request = agent_on_control,
};

/* Runs the requests that waited for checks that are now decided, in order. */
static void agent_run_deferred(struct agent *a)
{
    struct agent_deferred **pp = &a->deferred;
    while (*pp) {
        struct agent_deferred *d = *pp;
        a->cur_seq = d->seq;
        if (!a->stopping && agent_must_wait(a, &d->f)) {
            pp = &d->next;
            continue;
        }
        *pp = d->next;
        agent_dispatch(a, &d->f);
        frame_free(&d->f);
        free(d);
        pp = &a->deferred; /* the handler may have changed the list's state */
    }
}

/* --- hello and heartbeat ---------------------------------------------------------- */

static char *agent_hello(struct ws_client *c)
{
    struct agent *a = c->owner;
    cJSON *d = cJSON_CreateObject(), *caps, *moves;
    char ts[UTIL_TIME_LEN];
    unsigned listed = 0;

    cJSON_AddStringToObject(d, "agentId", a->cfg.agent_id);
    cJSON_AddStringToObject(d, "hostname", a->hostname);
    cJSON_AddStringToObject(d, "version", HOSTAGENT_VERSION);
    cJSON_AddNumberToObject(d, "protocol", PROTOCOL_VERSION);
    cJSON_AddNumberToObject(d, "pid", (double)getpid());
    util_rfc3339(a->started_wall_ms, ts);
    cJSON_AddStringToObject(d, "startedAt", ts);
    caps = cJSON_AddArrayToObject(d, "capabilities");
    for (size_t i = 0; i < ARRAY_SIZE(handlers); i++)
        cJSON_AddItemToArray(caps, cJSON_CreateString(handlers[i].subject));
    moves = cJSON_AddArrayToObject(d, "moves");
    for (struct move *m = a->moves; m; m = m->next)
        cJSON_AddItemToArray(moves, move_state_to_json(&m->st));
    history_prune(a);
    for (unsigned k = 0; k < a->hist_len && listed < AGENT_HISTORY_MAX; k++, listed++) {
        unsigned i = (a->hist_pos + AGENT_HISTORY_MAX - 1 - k) % AGENT_HISTORY_MAX;
        cJSON_AddItemToArray(moves, history_state_json(&a->history[i]));
    }
    return protocol_envelope("agent.hello", d);
}

static void agent_on_heartbeat(uv_timer_t *t)
{
    struct agent *a = container_of(t, struct agent, heartbeat);
    cJSON *d;
    if (a->ws.state != CONN_UP)
        return;
    d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "agentId", a->cfg.agent_id);
    json_add_u64(d, "uptimeMs", util_mono_ms() - a->started_mono);
    cJSON_AddNumberToObject(d, "activeMoves", a->n_moves);
    agent_send(a, "heartbeat", d, NULL, false, NULL);
}

/* --- metrics ------------------------------------------------------------------------ */

/* The gauges as they are now, then the file (when metrics_file is set). */
static void agent_write_metrics(struct agent *a)
{
    unsigned active = 0;
    for (struct move *m = a->moves; m; m = m->next)
        active += move_is_running(m);
    a->metrics.moves_active = active;
    a->metrics.moves_queued = a->n_moves - active;
    a->metrics.last_pong_wall_ms = a->ws.last_pong_wall_ms;
    metrics_conn_state(&a->metrics, a->ws.state);
    metrics_update_file(&a->metrics, a->cfg.metrics_file);
}

static void agent_on_metrics_timer(uv_timer_t *t)
{
    agent_write_metrics(container_of(t, struct agent, metrics_timer));
}

/* --- stopping --------------------------------------------------------------------- */

static void agent_on_handle_closed(uv_handle_t *h)
{
    (void)h;
}

/* Closes every handle so that uv_run returns (notes: teardown order). */
static void agent_teardown(struct agent *a)
{
    if (a->torn_down)
        return;
    a->torn_down = true;
    path_checker_close(&a->checker);
    while (a->deferred) {
        struct agent_deferred *d = a->deferred;
        a->deferred = d->next;
        frame_free(&d->f);
        free(d);
    }
    /* Threads stuck on a disk that does not answer stay behind: they own
     * what they use and never touch the loop again. */
    while (a->moves) {
        struct move *m = a->moves;
        a->moves = m->next;
        a->n_moves--;
        move_detach(m);
        journal_rec_free(m->jr); /* its file stays: the next start finishes it */
        m->jr = NULL;
        move_close(m, agent_free_move);
    }
    while (a->orphans) {
        struct move *m = a->orphans;
        a->orphans = m->next;
        move_detach(m);
        if (m->owns_jr)
            journal_rec_free(m->jr); /* else the history's */
        m->jr = NULL;
        move_close(m, agent_free_move);
    }
    ws_client_close(&a->ws);
    control_close(&a->control);
    uv_close((uv_handle_t *)&a->sig_term, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->sig_int, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->sig_hup, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->heartbeat, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->stop_timer, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->stop_wait, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->notify_timer, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->metrics_timer, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->held_timer, agent_on_handle_closed);
}

static void agent_on_stop_timer(uv_timer_t *t)
{
    struct agent *a = container_of(t, struct agent, stop_timer);
    LOG0(LOG_WARN, "the manager did not take the last frames in time; closing anyway");
    agent_teardown(a);
}

/* STATUS= for systemctl status: the connection and the moves. */
static void agent_notify_status(struct agent *a)
{
    notify_send(&a->notify, "STATUS=%s%s; %u move%s active", a->stopping ? "stopping, " : "",
                a->ws.state == CONN_UP ? "connected to the manager"
                                       : ws_client_state_name(a->ws.state),
                a->n_moves, a->n_moves == 1 ? "" : "s");
}

/* Once a second under systemd: the watchdog, and while a stop waits for
 * rollbacks, more time before systemd would kill us half-way. */
static void agent_on_notify_timer(uv_timer_t *t)
{
    struct agent *a = container_of(t, struct agent, notify_timer);
    uint64_t now = util_mono_ms();
    if (a->notify.watchdog_usec && now - a->last_watchdog_ms >= a->notify.watchdog_usec / 2000) {
        notify_send(&a->notify, "WATCHDOG=1");
        a->last_watchdog_ms = now;
    }
    if (a->stopping && a->n_moves > 0 && now - a->last_extend_ms >= AGENT_EXTEND_EVERY_MS) {
        notify_send(&a->notify, "EXTEND_TIMEOUT_USEC=%llu", (unsigned long long)AGENT_EXTEND_USEC);
        agent_notify_status(a);
        a->last_extend_ms = now;
    }
}

static void agent_on_conn_state(struct ws_client *c, enum conn_state s)
{
    struct agent *a = c->owner;
    metrics_conn_state(&a->metrics, s);
    agent_notify_status(a);
    if (s == CONN_CLOSED && a->stopping)
        agent_teardown(a);
}

/* Is this worker stuck, for a stop? No sign of life for AGENT_STOP_STUCK_MS,
 * counted from the stop at the earliest. */
static bool agent_left_behind(const struct agent *a, const struct move *m, uint64_t now)
{
    uint64_t quiet = move_quiet_ms(m, now), since = now - a->stop_started_ms;
    return move_is_running(m) && quiet >= AGENT_STOP_STUCK_MS && since >= AGENT_STOP_STUCK_MS;
}

/* Once every move has ended (and its answer is queued), close the link. A
 * stopped move whose worker does not come back is ended by its own timer
 * (move.c) and waited for like the other workers still out there (rollbacks
 * of ended moves, a move in cleaning): while they show signs of life, and
 * at least AGENT_STOP_STUCK_MS after the stop began; then they are left
 * behind (their journal records say what the next start must finish). */
static void agent_maybe_finish_stop(struct agent *a)
{
    uint64_t now = util_mono_ms();
    unsigned stuck = 0;
    if (!a->stopping || a->torn_down || a->stop_finishing)
        return;
    for (struct move *m = a->moves; m; m = m->next) {
        if (m->st.phase != PHASE_CLEANING || !agent_left_behind(a, m, now))
            return; /* it ends (or is ended) by itself */
        stuck++;
    }
    for (struct move *m = a->orphans; m; m = m->next) {
        if (!agent_left_behind(a, m, now))
            return;
        stuck++;
    }
    if (stuck)
        LOG(LOG_ERROR, "stopping without threads stuck on a disk that does not answer",
            LF_U("threads", stuck));
    a->stop_finishing = true;
    uv_timer_stop(&a->stop_wait);
    uv_timer_start(&a->stop_timer, agent_on_stop_timer, AGENT_STOP_GRACE_MS, 0);
    ws_client_shutdown(&a->ws);
}

static void agent_on_stop_wait(uv_timer_t *t)
{
    agent_maybe_finish_stop(container_of(t, struct agent, stop_wait));
}

static void agent_stop(struct agent *a, const char *signame)
{
    struct move *m, *next;
    if (a->stopping)
        return;
    a->stopping = true;
    a->stop_started_ms = util_mono_ms();
    LOG(LOG_INFO, "stopping", LF_S("signal", signame), LF_U("active_moves", a->n_moves));
    notify_send(&a->notify, "STOPPING=1");
    a->last_extend_ms = 0;
    agent_on_notify_timer(&a->notify_timer); /* the first extension at once */
    uv_timer_stop(&a->heartbeat);
    for (m = a->moves; m; m = next) {
        next = m->next; /* a queued move ends (and leaves the list) at once */
        move_stop(m, CODE_SHUTTING_DOWN, "the agent is shutting down");
    }
    /* Requests still being checked: answered now, their checks forgotten. */
    while (a->pending) {
        struct agent_pending *p = a->pending;
        a->pending = p->next;
        if (p->check)
            path_checker_forget(&a->checker, p->check);
        agent_refuse(a, FROM_MANAGER(p->reply), CODE_SHUTTING_DOWN, "the agent is shutting down",
                     p->req.server_name);
        agent_pending_free(p);
    }
    agent_run_deferred(a);
    uv_timer_start(&a->stop_wait, agent_on_stop_wait, 500, 500);
    agent_maybe_finish_stop(a);
}

static void agent_reload(struct agent *a)
{
    struct config fresh;
    struct config_errors errs;
    if (config_load(a->config_path, &fresh, &errs) != 0) {
        for (size_t i = 0; i < errs.n; i++)
            LOG(LOG_ERROR, "config reload failed; keeping the old settings",
                LF_S("problem", errs.lines[i]));
        config_errors_free(&errs);
        return;
    }
    /* The URL, state_dir, control_socket and ping interval are fixed for the process; the
     * rest applies to new requests and the next connection. */
    free(fresh.manager_url);
    config_url_free(&fresh.url);
    free(fresh.state_dir);
    free(fresh.control_socket);
    fresh.manager_url = a->cfg.manager_url;
    fresh.url = a->cfg.url;
    fresh.state_dir = a->cfg.state_dir;
    fresh.control_socket = a->cfg.control_socket;
    fresh.ping_interval_ms = a->cfg.ping_interval_ms;
    a->cfg.manager_url = NULL;
    a->cfg.url.host = a->cfg.url.path = NULL;
    a->cfg.state_dir = NULL;
    a->cfg.control_socket = NULL;
    config_free(&a->cfg);
    a->cfg = fresh;
    log_setup(a->cfg.log_level, a->cfg.log_format);
    uv_timer_set_repeat(&a->heartbeat, a->cfg.heartbeat_interval_ms);
    uv_timer_set_repeat(&a->metrics_timer, a->cfg.heartbeat_interval_ms);
    a->metrics.agent_id = a->cfg.agent_id;
    LOG(LOG_INFO, "config reloaded", LF_S("file", a->config_path));
    agent_write_metrics(a); /* a new metrics_file at once; the old one goes */
}

static void agent_on_signal(uv_signal_t *s, int signum)
{
    struct agent *a = s->data;
    if (signum == SIGHUP)
        agent_reload(a);
    else
        agent_stop(a, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* --- lifecycle ---------------------------------------------------------------------- */

/* A token file others can read is a token others can use. */
static void agent_check_token_file(struct agent *a)
{
    struct stat st;
    if (a->cfg.token_file && stat(a->cfg.token_file, &st) == 0 && (st.st_mode & 077))
        LOG(LOG_WARN, "token_file is readable by group or others; chmod 600 it",
            LF_S("token_file", a->cfg.token_file));
}

/* --- delivery and recovery ------------------------------------------------------ */

/* The manager has it: a pong came for a ping sent after the message. A move's
 * outcome is delivered with its answer (or, without a reply, its terminal frame). */
static void agent_on_acked(struct ws_client *c, const char *key)
{
    struct agent *a = c->owner;
    const char *colon = strchr(key, ':');
    struct agent_ended *h;
    if (!colon)
        return;
    h = history_find(a, colon + 1);
    if (!h || !h->jr || h->jr->delivered)
        return;
    if (strncmp(key, "answer:", 7) == 0 || (!h->jr->reply && strncmp(key, "final:", 6) == 0)) {
        h->jr->delivered = true;
        (void)journal_write(&a->journal, h->jr);
        LOG(LOG_DEBUG, "move outcome delivered", LF_S("move", h->jr->move_id));
    }
}

/* Records the held outcomes again; each one recorded is sent at last. */
static void agent_on_held_timer(uv_timer_t *t)
{
    struct agent *a = container_of(t, struct agent, held_timer);
    bool still = false;
    for (unsigned k = 0; k < a->hist_len; k++) {
        struct agent_ended *h =
            &a->history[(a->hist_pos + AGENT_HISTORY_MAX - a->hist_len + k) % AGENT_HISTORY_MAX];
        if (!h->held || !h->jr)
            continue;
        if (journal_write(&a->journal, h->jr) != 0) {
            still = true;
            continue;
        }
        h->held = false;
        LOG(LOG_INFO, "the held outcome is recorded now and sent", LF_S("move", h->jr->move_id));
        agent_resend_outcome(a, h->jr, &h->st);
    }
    if (!still)
        uv_timer_stop(t);
}

/* Sends a recorded outcome again: the terminal frame (same seq: the manager
 * deduplicates) and the answer, both acknowledged. */
static void agent_resend_outcome(struct agent *a, const struct journal_rec *r,
                                 const struct move_state *st)
{
    char key[MOVE_ID_MAX + 16];
    ack_key(key, sizeof key, "final", r->move_id);
    agent_send(a, "move.progress", move_state_to_json(st), NULL, true, key);
    if (r->reply) {
        cJSON *d = cJSON_Parse(r->answer ? r->answer : "{}");
        ack_key(key, sizeof key, "answer", r->move_id);
        agent_send(a, r->reply, d ? d : cJSON_CreateObject(), NULL, true, key);
    }
}

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
    h = history_add(a, &st, r->answer, r, util_mono_ms());
    metrics_move_ended(&a->metrics, &st);
    if (journal_write(&a->journal, r) == 0)
        agent_resend_outcome(a, r, &st);
    else
        agent_hold(a, h, journaled);
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
    p = (struct move_params){
        .jr = r,
        .journal = &a->journal,
        .src_root = src_root,
        .dst_root = dst_root,
        .progress_interval_ms = a->cfg.progress_interval_ms,
        .mode = ENGINE_UNDO,
        .silent = true,
    };
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
    (void)journal_write(&a->journal, r);
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
            journal_remove(&a->journal, r->move_id);
            journal_rec_free(r);
            return;
        }
        journal_rec_state(r, &st);
        if (!r->delivered) {
            LOG(LOG_INFO, "answer not yet delivered; it is sent again after hello",
                LF_S("move", r->move_id));
            agent_resend_outcome(a, r, &st);
        }
        history_add(a, &st, r->answer ? r->answer : "{}", r,
                    mono > age ? mono - (age < AGENT_HISTORY_MS ? age : AGENT_HISTORY_MS) : 0);
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
    /* A rename not yet past its calculating phase settles here, unless its
     * fallback to copying (EXDEV) had already made newPath. */
    if (r->rename && r->phase <= PHASE_CALCULATING && (!r->dst_id.known || r->dst_preexisted)) {
        agent_settle_rename(a, r);
        return;
    }
    /* Undo the partial copy, or finish removing the source: a worker's job,
     * beneath the roots that hold the paths now. */
    if (!agent_roots_of(a, r, src_root, dst_root, why, sizeof why)) {
        agent_end_recovered(a, r, CODE_NEEDS_ATTENTION, why);
        return;
    }
    p = (struct move_params){
        .jr = r,
        .journal = &a->journal,
        .src_root = src_root,
        .dst_root = dst_root,
        .progress_interval_ms = a->cfg.progress_interval_ms,
        .mode = r->phase == PHASE_CLEANING ? ENGINE_FINISH : ENGINE_UNDO,
    };
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

static void agent_recover(struct agent *a)
{
    unsigned bad = journal_load(&a->journal, agent_recover_one, a);
    if (bad)
        LOG(LOG_ERROR, "unreadable journal files were set aside", LF_U("count", bad),
            LF_S("state_dir", a->cfg.state_dir));
}

static const struct ws_client_ops agent_ws_ops = {
    .hello = agent_hello,
    .message = agent_on_message,
    .state = agent_on_conn_state,
    .acked = agent_on_acked,
};

int agent_init(struct agent *a, const char *config_path, struct config *cfg)
{
    int rc;
    memset(a, 0, sizeof *a);
    a->cfg = *cfg;
    memset(cfg, 0, sizeof *cfg);
    a->config_path = xstrdup(config_path);
    a->started_wall_ms = util_wall_ms();
    a->started_mono = util_mono_ms();
    if (gethostname(a->hostname, sizeof a->hostname) != 0)
        util_fmt(a->hostname, sizeof a->hostname, "unknown");
    a->hostname[sizeof a->hostname - 1] = '\0';
    srand((unsigned)(a->started_wall_ms ^ (uint64_t)getpid()));

    {
        char why[512];
        rc = journal_open(&a->journal, a->cfg.state_dir, why, sizeof why);
        if (rc != 0) {
            LOG(LOG_ERROR, "cannot start", LF_S("reason", why));
            goto fail_journal;
        }
    }
    rc = uv_loop_init(&a->loop);
    if (rc != 0)
        goto fail_loop;
    uv_signal_init(&a->loop, &a->sig_term);
    uv_signal_init(&a->loop, &a->sig_int);
    uv_signal_init(&a->loop, &a->sig_hup);
    uv_timer_init(&a->loop, &a->heartbeat);
    uv_timer_init(&a->loop, &a->stop_timer);
    uv_timer_init(&a->loop, &a->stop_wait);
    rc = path_checker_init(&a->checker, &a->loop, agent_on_check, a);
    if (rc != 0)
        goto fail_ws;
    uv_timer_init(&a->loop, &a->notify_timer);
    uv_timer_init(&a->loop, &a->metrics_timer);
    metrics_init(&a->metrics, HOSTAGENT_VERSION, a->cfg.agent_id);
    uv_timer_init(&a->loop, &a->held_timer);
    notify_init(&a->notify);
    if (a->notify.fd >= 0)
        uv_timer_start(&a->notify_timer, agent_on_notify_timer, 1000, 1000);
    a->sig_term.data = a->sig_int.data = a->sig_hup.data = a;
    rc = ws_client_init(&a->ws, &a->loop, &a->cfg, &agent_ws_ops, a);
    if (rc != 0)
        goto fail_ws;
    {
        char why[512];
        rc = control_init(&a->control, &a->loop, a->cfg.control_socket, &agent_control_ops, a, why,
                          sizeof why);
        if (rc != 0) {
            LOG(LOG_ERROR, "cannot start", LF_S("reason", why));
            goto fail_ws;
        }
    }
    uv_signal_start(&a->sig_term, agent_on_signal, SIGTERM);
    uv_signal_start(&a->sig_int, agent_on_signal, SIGINT);
    uv_signal_start(&a->sig_hup, agent_on_signal, SIGHUP);
    uv_timer_start(&a->heartbeat, agent_on_heartbeat, a->cfg.heartbeat_interval_ms,
                   a->cfg.heartbeat_interval_ms);
    uv_timer_start(&a->metrics_timer, agent_on_metrics_timer, a->cfg.heartbeat_interval_ms,
                   a->cfg.heartbeat_interval_ms);
    if (a->cfg.n_allowed_roots == 0)
        LOG0(LOG_WARN, "no allowed_roots configured: every move will be refused");
    agent_check_token_file(a);
    agent_recover(a);
    return 0;

fail_ws:
    notify_close(&a->notify);
    a->stopping = true;
    agent_teardown(a);
    uv_run(&a->loop, UV_RUN_DEFAULT);
    ws_client_free(&a->ws);
    uv_loop_close(&a->loop);
fail_loop:
    journal_close(&a->journal);
fail_journal:
    config_free(&a->cfg);
    free(a->config_path);
    return rc;
}

int agent_run(struct agent *a)
{
    int rc;
    LOG(LOG_INFO, "hostagent starting", LF_S("version", HOSTAGENT_VERSION),
        LF_S("agent_id", a->cfg.agent_id), LF_S("manager", a->cfg.manager_url));
    ws_client_start(&a->ws);
    notify_send(&a->notify, "READY=1");
    agent_notify_status(a);
    agent_write_metrics(a);
    uv_run(&a->loop, UV_RUN_DEFAULT);
    agent_write_metrics(a); /* the last values: closed, nothing running */
    metrics_free(&a->metrics);
    ws_client_free(&a->ws);
    rc = uv_loop_close(&a->loop);
    if (rc != 0)
        LOG(LOG_ERROR, "event loop still had open handles at exit", LF_S("error", uv_strerror(rc)));
    /* Memory only: the journal files stay for the next start (delivered ones
     * still serve idempotent retries within the hour). */
    for (unsigned i = 0; i < AGENT_HISTORY_MAX; i++) {
        move_state_clear(&a->history[i].st);
        free(a->history[i].answer_data);
        journal_rec_free(a->history[i].jr);
    }
    journal_close(&a->journal);
    notify_close(&a->notify);
    LOG0(LOG_INFO, "hostagent stopped");
    config_free(&a->cfg);
    free(a->config_path);
    return 0;
}
