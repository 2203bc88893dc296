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
    struct transport_send how = {.merge_key = merge_key, .keep = keep, .ack_key = ack_key};
    transport_send(a->tr, subject, data, &how);
}

/* An answer to a request's reply subject. */
static void agent_send_reply(struct agent *a, const char *reply, cJSON *data, const char *ack_key)
{
    struct transport_send how = {.keep = true, .ack_key = ack_key, .reply = true};
    transport_send(a->tr, reply, data, &how);
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
    agent_send_reply(a, o->reply, data, NULL);
}

/* Keys of the messages whose delivery is acknowledged (see transport.h). */
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

/* What is left to delete in reclaim directories. */
void agent_add_reclaiming(struct agent *a, cJSON *d)
{
    uint64_t bytes, entries;
    reclaimer_totals(&a->reclaimer, &bytes, &entries);
    json_add_u64(d, "reclaimingBytes", bytes);
    json_add_u64(d, "reclaimingEntries", entries);
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
                journal_remove_queued(&a->writer, &a->journal, h->jr->move_id);
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
    h->held = h->recording = h->retried = false;
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
    h->retried = true;
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

/* --- records written on the journal writer ------------------------------------- */

struct agent_write *agent_write_new(struct agent *a, const char *move_id)
{
    struct agent_write *w = xcalloc(1, sizeof *w);
    w->a = a;
    util_fmt(w->move_id, sizeof w->move_id, "%s", move_id);
    return w;
}

void agent_write_free(struct agent_write *w)
{
    free(w->reply);
    free(w);
}

struct move *agent_written_move(struct agent_write *w, int rc)
{
    struct move *m = NULL;
    if (rc != -ECANCELED)
        for (m = w->a->moves; m; m = m->next)
            if (m->recording && strcmp(m->st.move_id, w->move_id) == 0)
                break;
    if (!m) {
        agent_write_free(w);
        return NULL;
    }
    m->recording = false;
    return m;
}

/* The held entry whose outcome this ticket writes (none: forgotten since). */
static struct agent_ended *agent_history_ticket(struct agent *a, uint64_t ticket)
{
    for (unsigned k = 0; k < a->hist_len; k++) {
        struct agent_ended *h =
            &a->history[(a->hist_pos + AGENT_HISTORY_MAX - 1 - k) % AGENT_HISTORY_MAX];
        if (h->recording && h->ticket == ticket)
            return h;
    }
    return NULL;
}

/* On the loop, once an outcome's record is written (or could not be): sent
 * now, or held and retried. */
static void agent_outcome_recorded(void *arg, int rc)
{
    struct agent_write *w = arg;
    struct agent *a = w->a;
    struct agent_ended *h = agent_history_ticket(a, w->ticket);
    if (h && rc != -ECANCELED) {
        h->recording = false;
        if (rc == 0) {
            h->held = false;
            if (h->retried)
                LOG(LOG_INFO, "the held outcome is recorded now and sent",
                    LF_S("move", h->jr->move_id));
            agent_resend_outcome(a, h->jr, &h->st);
        } else if (!h->retried) {
            agent_hold(a, h, h->held_phase);
        }
        /* Its slot is free now for the manager too (agent_busy_slots). */
        a->move_gone(a, false);
    }
    agent_write_free(w);
}

void agent_record_outcome(struct agent *a, struct agent_ended *h, enum move_phase journaled)
{
    struct agent_write *w = agent_write_new(a, h->jr->move_id);
    h->held = true;
    h->held_phase = journaled;
    h->recording = true;
    h->ticket = w->ticket = ++a->write_ticket;
    journal_write_queued(&a->writer, &a->journal, h->jr, false, agent_outcome_recorded, w);
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

    if (m->prepared && m->st.phase == PHASE_COMPLETE && m->commit_mono_ms) {
        /* A commit's answer: the stop it cost, and what its final pass copied. */
        json_add_u64(answer, "downtimeMs", util_mono_ms() - m->commit_mono_ms);
        json_add_u64(answer, "bytesSynced", m->bytes_synced);
        json_add_u64(answer, "filesSynced", m->files_synced);
        cJSON_free(printed);
        printed = cJSON_PrintUnformatted(answer);
    }
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
     * before the outcome (the journal writer writes both, in this order),
     * so that no restart can forget it. */
    if (m->reclaim_ready && m->st.phase == PHASE_COMPLETE && jr->reclaim.dir && !jr->reclaim.undone)
        (void)reclaimer_add(&a->reclaimer, jr->move_id, jr->reclaim.dir, (dev_t)jr->reclaim.id.dev,
                            (ino_t)jr->reclaim.id.ino, jr->reclaim.entries, jr->reclaim.bytes);
    agent_record_outcome(a, h, journaled);
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
        if (m->prepared) /* its worker is gone: the copy's record goes with the move */
            journal_ident_remove_queued(&a->writer, &a->journal, m->st.move_id);
        move_close(m, agent_free_move);
    }
    a->move_gone(a, false);
}

/* The prepare's answer at ready: the request's fields, what was copied, and
 * how long the preparation took (acceptance to ready). */
static char *agent_ready_answer(const struct move *m)
{
    cJSON *d = cJSON_CreateObject();
    char *printed, *out;
    cJSON_AddTrueToObject(d, "success");
    cJSON_AddStringToObject(d, "moveId", m->st.move_id);
    cJSON_AddStringToObject(d, "serverName", m->st.server_name);
    cJSON_AddStringToObject(d, "oldPath", m->st.old_path);
    cJSON_AddStringToObject(d, "newPath", m->st.new_path);
    cJSON_AddStringToObject(d, "method", m->st.rename ? "rename" : "copy");
    json_add_u64(d, "bytesCopied", m->st.count.bytes_copied);
    json_add_u64(d, "filesCopied", m->st.count.files_copied);
    json_add_u64(
        d, "durationMs",
        m->ready_at_wall_ms > m->st.started_at_ms ? m->ready_at_wall_ms - m->st.started_at_ms : 0);
    printed = cJSON_PrintUnformatted(d);
    cJSON_Delete(d);
    if (!printed)
        util_oom(0);
    out = xstrdup(printed);
    cJSON_free(printed);
    return out;
}

/* Sends the prepare's recorded answer (acknowledged like a terminal answer:
 * kept until a pong, sent again after the next hello). */
void agent_send_ready_answer(struct agent *a, const struct journal_rec *r)
{
    char key[MOVE_ID_MAX + 16];
    cJSON *d;
    if (!r->ready_reply || !r->ready_answer)
        return;
    d = cJSON_Parse(r->ready_answer);
    ack_key(key, sizeof key, "ready", r->move_id);
    agent_send_reply(a, r->ready_reply, d ? d : cJSON_CreateObject(), key);
}

static void agent_ready_recorded(void *arg, int rc);

/* Records a prepared move's first entry into ready, on the journal writer:
 * the record in phase ready with the prepare's answer, whose reply subject
 * moves from `reply` (the answer that ends the move) to `readyReply`: a move
 * ended while it rests in ready has its terminal frame only. No worker
 * runs. Held (ready_held) until it is written: then announced
 * (agent_ready_recorded). */
static void agent_record_ready(struct agent *a, struct move *m, bool retry)
{
    struct journal_rec *jr = m->jr;
    struct agent_write *w = agent_write_new(a, m->st.move_id);
    w->was = jr->phase;
    w->retry = retry;
    jr->phase = PHASE_READY;
    jr->count = m->st.count;
    jr->seq = m->st.seq;
    jr->ready_at_ms = m->ready_at_wall_ms;
    free(jr->ready_answer);
    jr->ready_answer = agent_ready_answer(m);
    jr->ready_reply = jr->reply;
    jr->reply = NULL;
    jr->ready_delivered = false;
    m->ready_held = true;
    m->recording = true;
    journal_write_queued(&a->writer, &a->journal, jr, false, agent_ready_recorded, w);
}

/* A prepared move's ready is recorded: its frame, then the prepare's answer. */
static void agent_announce_ready(struct agent *a, struct move *m)
{
    m->ready_held = false;
    LOG(LOG_INFO, "prepared move ready; waiting for its commit", LF_S("move", m->st.move_id),
        LF_S("server", m->st.server_name), LF_U("bytes", m->st.count.bytes_copied),
        LF_U("files", m->st.count.files_copied),
        LF_U("duration_ms", m->ready_at_wall_ms - m->st.started_at_ms));
    move_announce(m);
    agent_send_ready_answer(a, m->jr);
}

/* On the loop, once the ready record is written (or could not be). Like an
 * outcome: announced and answered only once recorded, else held back and
 * retried (a restart would roll it back from its older record, and the
 * manager would have two answers); the record in memory is put back as it
 * is on disk. */
static void agent_ready_recorded(void *arg, int rc)
{
    struct agent_write *w = arg;
    struct agent *a = w->a;
    struct move *m = agent_written_move(w, rc);
    struct journal_rec *jr;
    if (!m)
        return;
    jr = m->jr;
    if (rc == 0 && move_is_resting(m)) {
        if (w->retry)
            LOG(LOG_INFO, "the held ready state is recorded now and answered",
                LF_S("move", m->st.move_id));
        agent_announce_ready(a, m);
    } else if (rc == 0) {
        /* Being discarded already (its prepare_ttl ran out meanwhile): the
         * prepare still has its answer, the end its frame. */
        m->ready_held = false;
        agent_send_ready_answer(a, jr);
    } else if (move_is_resting(m)) {
        jr->phase = w->was;
        jr->reply = jr->ready_reply;
        jr->ready_reply = NULL;
        free(jr->ready_answer);
        jr->ready_answer = NULL;
        if (!w->retry) {
            LOG(LOG_ERROR,
                "the prepared move's ready state cannot be recorded in the journal; its answer "
                "is held back and recorded again every 5 s",
                LF_S("move", m->st.move_id));
            if (!uv_is_active((uv_handle_t *)&a->held_timer))
                uv_timer_start(&a->held_timer, agent_on_held_timer, AGENT_HELD_RETRY_MS,
                               AGENT_HELD_RETRY_MS);
        }
    }
    agent_write_free(w);
    a->decided(a);
}

/* On the loop, once the record of a move ready again after a failed commit
 * is written: announced, and the commit answered with its failure (also
 * when the record could not be written: the copy is ready all the same). */
static void agent_ready_again_recorded(void *arg, int rc)
{
    struct agent_write *w = arg;
    struct agent *a = w->a;
    struct move *m = agent_written_move(w, rc);
    if (!m)
        return;
    if (rc != 0)
        LOG(LOG_ERROR, "cannot record that the prepared move is ready again",
            LF_S("move", m->st.move_id));
    if (move_is_resting(m))
        move_announce(m);
    if (w->reply) {
        cJSON *d = protocol_failure(w->code, w->error);
        cJSON_AddStringToObject(d, "moveId", m->st.move_id);
        cJSON_AddStringToObject(d, "serverName", m->st.server_name);
        agent_send_reply(a, w->reply, d, NULL);
    }
    agent_write_free(w);
    a->decided(a);
}

static void agent_on_ready(struct move *m, enum move_code code, const char *error)
{
    struct agent *a = m->owner;
    struct journal_rec *jr = m->jr;
    struct agent_write *w;
    if (code == CODE_NONE) {
        agent_record_ready(a, m, false);
        return;
    }
    /* A commit met a source still changing: the commit is answered, the move
     * rests in ready again with its copy and is announced so, once that is
     * recorded. */
    w = agent_write_new(a, m->st.move_id);
    w->reply = jr->reply;
    w->code = code;
    util_fmt(w->error, sizeof w->error, "%s", error ? error : "");
    jr->reply = NULL;
    jr->phase = PHASE_READY;
    /* A reclaim directory the commit named is gone (the source was put back
     * whole): nothing to resume or delete. */
    free(jr->reclaim.dir);
    memset(&jr->reclaim, 0, sizeof jr->reclaim);
    jr->count = m->st.count;
    jr->seq = m->st.seq;
    jr->ready_at_ms = m->ready_at_wall_ms;
    LOG(LOG_WARN, "commit failed; the prepared move is ready again", LF_S("move", m->st.move_id),
        LF_S("server", m->st.server_name), LF_S("code", move_code_name(code)),
        LF_S("error", error));
    m->recording = true;
    journal_write_queued(&a->writer, &a->journal, jr, false, agent_ready_again_recorded, w);
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
    if (m->prepared)
        journal_ident_remove_queued(&a->writer, &a->journal, m->st.move_id);
    if (m->jr) {
        m->jr->rollback_pending = false;
        journal_write_queued(&a->writer, &a->journal, m->jr, false, NULL, NULL);
        if (m->owns_jr) {
            if (m->jr->delivered)
                journal_remove_queued(&a->writer, &a->journal, m->jr->move_id);
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
    .ready = agent_on_ready,
};

/* --- delivery and recovery ------------------------------------------------------ */

static void set_ready_delivered(struct journal_rec *jr, void *arg)
{
    (void)arg;
    jr->ready_delivered = true;
}

/* The prepare's answer is delivered: recorded so, through the move's lock
 * while it has a worker (a commit), or in the history's record. */
static void agent_ready_acked(struct agent *a, const char *move_id)
{
    struct agent_ended *h;
    for (struct move *m = a->moves; m; m = m->next) {
        if (strcmp(m->st.move_id, move_id) != 0 || !m->jr)
            continue;
        if (!m->jr->ready_delivered)
            (void)move_record_update(m, set_ready_delivered, NULL);
        return;
    }
    h = agent_history_find(a, move_id);
    if (h && h->jr && h->jr->ready_answer && !h->jr->ready_delivered) {
        h->jr->ready_delivered = true;
        journal_write_queued(&a->writer, &a->journal, h->jr, false, NULL, NULL);
    }
}

/* The manager has it: a pong came for a ping sent after the message. A move's
 * outcome is delivered with its answer (or, without a reply, its terminal frame). */
void agent_on_acked(struct transport *t, const char *key)
{
    struct agent *a = t->owner;
    const char *colon = strchr(key, ':');
    struct agent_ended *h;
    if (!colon)
        return;
    if (strncmp(key, "ready:", 6) == 0) {
        agent_ready_acked(a, colon + 1);
        return;
    }
    h = agent_history_find(a, colon + 1);
    if (!h || !h->jr || h->jr->delivered)
        return;
    if (strncmp(key, "answer:", 7) == 0 || (!h->jr->reply && strncmp(key, "final:", 6) == 0)) {
        h->jr->delivered = true;
        journal_write_queued(&a->writer, &a->journal, h->jr, false, NULL, NULL);
        LOG(LOG_DEBUG, "move outcome delivered", LF_S("move", h->jr->move_id));
    }
}

/* Records the held outcomes (and held ready states) again; each one
 * recorded is sent at last (in its write's completion). The timer stops
 * once nothing is held. */
static void agent_on_held_timer(uv_timer_t *t)
{
    struct agent *a = container_of(t, struct agent, held_timer);
    bool still = false;
    for (struct move *m = a->moves; m; m = m->next) {
        if (!m->ready_held || !move_is_resting(m))
            continue;
        still = true;
        if (!m->recording)
            agent_record_ready(a, m, true);
    }
    for (unsigned k = 0; k < a->hist_len; k++) {
        struct agent_ended *h =
            &a->history[(a->hist_pos + AGENT_HISTORY_MAX - a->hist_len + k) % AGENT_HISTORY_MAX];
        if (!h->held || !h->jr)
            continue;
        still = true;
        if (!h->recording)
            agent_record_outcome(a, h, h->held_phase);
    }
    if (!still)
        uv_timer_stop(t);
}

/* Sends a recorded outcome again: the terminal frame (same seq: the manager
 * deduplicates) and the answer, both acknowledged; and gives it to the
 * transport as the move's outcome (stored durably where it can). */
void agent_resend_outcome(struct agent *a, const struct journal_rec *r, const struct move_state *st)
{
    char key[MOVE_ID_MAX + 16];
    ack_key(key, sizeof key, "final", r->move_id);
    agent_send(a, "move.progress", move_state_to_json(st), NULL, true, key);
    if (r->reply) {
        cJSON *d = cJSON_Parse(r->answer ? r->answer : "{}");
        ack_key(key, sizeof key, "answer", r->move_id);
        agent_send_reply(a, r->reply, d ? d : cJSON_CreateObject(), key);
    }
    ack_key(key, sizeof key, "answer", r->move_id);
    transport_outcome(a->tr, r->move_id, r->started_at_ms, r->answer ? r->answer : "{}", key);
}
