/* agent_moves.c: the agent's side of its moves: their frames, their end
 * (recorded, then answered), the history of ended moves, sending and
 * answering, and the delivery of outcomes (acknowledged, held, sent again). */
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

static void agent_on_held_timer(uv_timer_t *t);

/* --- sending ---------------------------------------------------------------- */

void agent_send(struct agent *a, const char *subject, cJSON *data, const char *merge_key, bool keep,
                const char *ack_key)
{
    char *s = protocol_envelope(subject, data);
    ws_client_send(&a->ws, s, strlen(s), merge_key, keep, ack_key);
    cJSON_free(s);
}

void agent_answer(struct agent *a, const struct origin *o, cJSON *data)
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

void agent_refuse(struct agent *a, const struct origin *o, enum move_code code, const char *why,
                  const char *server)
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

void agent_history_prune(struct agent *a)
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

struct agent_ended *agent_history_add(struct agent *a, const struct move_state *st,
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
cJSON *agent_history_state_json(const struct agent_ended *h)
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

struct agent_ended *agent_history_find(struct agent *a, const char *move_id)
{
    agent_history_prune(a);
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

cJSON *agent_move_answer(const struct move_state *s)
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
void agent_hold(struct agent *a, struct agent_ended *h, enum move_phase journaled)
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

void agent_free_move(struct move *m)
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
    h = agent_history_add(a, &m->st, jr->answer, jr, util_mono_ms());
    /* The source waits in its reclaim directory: recorded for the reclaimer
     * before the outcome, so that no restart can forget it. */
    if (m->reclaim_ready && m->st.phase == PHASE_COMPLETE && jr->reclaim.dir && !jr->reclaim.undone)
        (void)reclaimer_add(&a->reclaimer, jr->move_id, jr->reclaim.dir, (dev_t)jr->reclaim.id.dev,
                            (ino_t)jr->reclaim.id.ino, jr->reclaim.entries, jr->reclaim.bytes);
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
    a->move_gone(a, false);
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
    a->move_gone(a, true);
}

const struct move_ops agent_move_ops = {
    .frame = agent_on_frame,
    .ended = agent_on_ended,
    .released = agent_on_released,
};

/* --- delivery and recovery ------------------------------------------------------ */

/* The manager has it: a pong came for a ping sent after the message. A move's
 * outcome is delivered with its answer (or, without a reply, its terminal frame). */
void agent_on_acked(struct ws_client *c, const char *key)
{
    struct agent *a = c->owner;
    const char *colon = strchr(key, ':');
    struct agent_ended *h;
    if (!colon)
        return;
    h = agent_history_find(a, colon + 1);
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
void agent_resend_outcome(struct agent *a, const struct journal_rec *r, const struct move_state *st)
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
