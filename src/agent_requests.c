/* agent_requests.c: the requests, from the manager or the control socket:
 * dispatch of their frames (those that wait for an earlier request's
 * decision held back, then run in order), move_cancel, move_commit,
 * move_status; move_data and move_prepare are handed to agent_accept.c. */
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

static void agent_move_data(struct agent *a, const struct frame *f, const struct origin *o)
{
    agent_move_request(a, f, o, false);
}

/* The copy while the server runs: answered when the move is ready. */
static void agent_move_prepare(struct agent *a, const struct frame *f, const struct origin *o)
{
    agent_move_request(a, f, o, true);
}

/* --- cancel, commit and status ---------------------------------------------------- */

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
    /* Ended inside move_stop: a queued move, and a prepared rename resting
     * in ready (nothing was made). A prepared copy resting in ready is
     * discarded on a worker and ends once its copy is gone. */
    queued = m->st.phase == PHASE_QUEUED || (move_is_resting(m) && m->st.rename);
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
        move_stop(m, CODE_CANCELLED,
                  m->st.phase == PHASE_QUEUED ? "the move was cancelled while queued"
                                              : "the prepared move was cancelled while ready");
}

/* On the loop, once the commit's record is written (or could not be): the
 * commit starts (a stop under way stops it at once, as it would have a
 * commit started just before it), or it is refused, the move ready as
 * before. A move no longer resting (its prepare_ttl ran out meanwhile and it
 * is being discarded) answers the commit when it ends. */
static void agent_commit_recorded(void *arg, int rc)
{
    struct agent_write *w = arg;
    struct agent *a = w->a;
    struct move *m = agent_written_move(w, rc);
    if (!m)
        return;
    if (rc != 0 && move_is_resting(m)) {
        char *reply = m->jr->reply;
        m->jr->reply = NULL;
        m->jr->phase = PHASE_READY;
        agent_refuse(a, FROM_MANAGER(reply), CODE_IO_ERROR,
                     "cannot record the commit in the journal (state_dir); nothing was touched",
                     m->st.server_name);
        free(reply);
    } else if (rc == 0 && move_is_resting(m)) {
        m->commit_mono_ms = util_mono_ms();
        LOG(LOG_INFO, "commit of a prepared move started", LF_S("move", m->st.move_id),
            LF_S("server", m->st.server_name), LF_S("via", "manager"));
        /* A failure ends the move at once (answered to the commit). */
        if (move_commit(m) == 0 && a->stopping)
            (void)move_stop(m, CODE_SHUTTING_DOWN, "the agent is shutting down");
    }
    agent_write_free(w);
    a->decided(a);
}

/* server.move_commit: {"moveId"} or {"serverName"} (both: both must match)
 * of a prepared move resting in ready. not_found: no such move not ended,
 * or it is not a prepared move; busy: still preparing, or a commit (or a
 * cancel) of it under way. The commit starts at once (no slot: the server
 * is stopped now) and is answered when the move ends, or with its failure
 * when the source still changed and the move is ready again. */
static void agent_move_commit(struct agent *a, const struct frame *f, const struct origin *o)
{
    struct move_selector sel;
    struct move *m;
    char why[MOVE_ERROR_MAX];
    const char *busy = NULL;

    if (protocol_parse_selector(f->data, &sel, why, sizeof why) != 0) {
        agent_refuse(a, o, CODE_INVALID_REQUEST, why, NULL);
        return;
    }
    if (!sel.server_name[0] && !sel.move_id[0]) {
        agent_refuse(a, o, CODE_INVALID_REQUEST, "moveId or serverName is required", NULL);
        return;
    }
    if (a->stopping) {
        agent_refuse(a, o, CODE_SHUTTING_DOWN, "the agent is shutting down", sel.server_name);
        return;
    }
    for (m = a->moves; m; m = m->next)
        if (!move_phase_terminal(m->st.phase) && selector_matches(&sel, &m->st))
            break;
    if (!m || !m->prepared) {
        if (m)
            util_fmt(why, sizeof why,
                     "move %s is not a prepared move (server.move_prepare); nothing to commit",
                     m->st.move_id);
        else
            util_fmt(why, sizeof why, "no move of %s%s%s has not ended", sel.server_name,
                     sel.server_name[0] && sel.move_id[0] ? " / " : "", sel.move_id);
        agent_refuse(a, o, CODE_NOT_FOUND, why, sel.server_name);
        return;
    }
    if (m->st.phase <= PHASE_COPYING || m->check)
        busy = "is still preparing its copy; commit once it is ready";
    else if (!move_is_resting(m) && m->mode == ENGINE_DISCARD)
        busy = "is being cancelled (its copy is being removed)";
    else if (!move_is_resting(m))
        busy = "is being committed already";
    else if (m->ready_held)
        busy = "is ready but that cannot be recorded in the journal yet (state_dir)";
    if (busy) {
        util_fmt(why, sizeof why, "move %s %s", m->st.move_id, busy);
        agent_refuse(a, o, CODE_BUSY, why, m->st.server_name);
        return;
    }
    /* The commit's reply is where the move's end is answered, and the record
     * says syncing before anything is done: a restart during the commit
     * rolls it back (or settles a rename by name) and answers it there. The
     * commit starts once that is written (agent_commit_recorded); requests
     * naming the move wait for it meanwhile. */
    free(m->jr->reply);
    m->jr->reply = o->reply ? xstrdup(o->reply) : NULL;
    m->jr->phase = PHASE_SYNCING;
    m->recording = true;
    journal_write_queued(&a->writer, &a->journal, m->jr, false, agent_commit_recorded,
                         agent_write_new(a, m->st.move_id));
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
    agent_history_prune(a);
    for (unsigned k = 0; k < a->hist_len && listed < AGENT_HISTORY_MAX; k++) {
        unsigned i = (a->hist_pos + AGENT_HISTORY_MAX - 1 - k) % AGENT_HISTORY_MAX;
        if (selector_matches(&sel, &a->history[i].st)) {
            status_add(moves, agent_history_state_json(&a->history[i]), &bytes, &omitted);
            listed++;
        }
    }
    if (omitted) {
        cJSON_AddTrueToObject(d, "truncated");
        cJSON_AddNumberToObject(d, "omitted", omitted);
    }
    agent_add_reclaiming(a, d);
    agent_answer(a, o, d);
}

/* --- incoming frames ------------------------------------------------------------ */

static const struct {
    const char *subject;
    void (*handle)(struct agent *a, const struct frame *f, const struct origin *o);
} handlers[] = {
    {"server.move_data", agent_move_data},     {"server.move_cancel", agent_move_cancel},
    {"server.move_status", agent_move_status}, {"server.move_prepare", agent_move_prepare},
    {"server.move_commit", agent_move_commit},
};

void agent_capabilities(cJSON *array)
{
    for (size_t i = 0; i < ARRAY_SIZE(handlers); i++)
        cJSON_AddItemToArray(array, cJSON_CreateString(handlers[i].subject));
}

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

/* Does the request name (by serverName or moveId) this move or request? */
static bool names(const struct move_selector *sel, const char *server, const char *move_id)
{
    return (sel->server_name[0] && strcmp(sel->server_name, server) == 0) ||
           (sel->move_id[0] && strcmp(sel->move_id, move_id) == 0);
}

/* A cancel, a commit or a status naming a server or a moveId whose
 * server.move_data or server.move_prepare arrived earlier and is still being checked, or whose
 * acceptance is still being recorded, waits for that request's answer (at most its time limit):
 * "data, then cancel" must find the move. So does one naming a move whose ready or commit is
 * being recorded: it finds the move as it is once recorded. Everything else is handled at once,
 * whatever the checks and the journal do. */
static bool agent_must_wait(struct agent *a, const struct frame *f)
{
    struct move_selector sel;
    char why[64];
    if ((strcmp(f->subject, "server.move_cancel") != 0 &&
         strcmp(f->subject, "server.move_status") != 0 &&
         strcmp(f->subject, "server.move_commit") != 0))
        return false;
    if (protocol_parse_selector(f->data, &sel, why, sizeof why) != 0)
        return false;
    for (const struct agent_pending *p = a->pending; p; p = p->next)
        if (p->seq < a->cur_seq && names(&sel, p->req.server_name, p->req.move_id))
            return true;
    for (const struct agent_pending *p = a->accepting; p; p = p->next)
        if (p->seq < a->cur_seq && names(&sel, p->req.server_name, p->jr->move_id))
            return true;
    for (const struct move *m = a->moves; m; m = m->next)
        if (m->recording && names(&sel, m->st.server_name, m->st.move_id))
            return true;
    return false;
}

void agent_on_message(struct transport *t, const char *buf, size_t len)
{
    struct agent *a = t->owner;
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

const struct control_ops agent_control_ops = {
    .request = agent_on_control,
};

/* Runs the requests that waited for checks that are now decided, in order. */
void agent_run_deferred(struct agent *a)
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
