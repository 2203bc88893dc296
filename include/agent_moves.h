/* agent_moves.h: what agent_moves.c, the lowest of the agent's files, gives
 * the others (agent.c, agent_requests.c, agent_accept.c,
 * agent_recovery.c): where a request came from and how it is answered,
 * a move's frames and its end, the history of ended moves, the delivery of
 * outcomes. Only those files include it (through agent_internal.h). */
#ifndef HOSTAGENT_AGENT_MOVES_H
#define HOSTAGENT_AGENT_MOVES_H

#include "agent.h"

#include <cJSON.h>
#include <stdbool.h>

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

void agent_send(struct agent *a, const char *subject, cJSON *data, const char *merge_key, bool keep,
                const char *ack_key);
void agent_answer(struct agent *a, const struct origin *o, cJSON *data);
void agent_refuse(struct agent *a, const struct origin *o, enum move_code code, const char *why,
                  const char *server);
void agent_history_prune(struct agent *a);
struct agent_ended *agent_history_add(struct agent *a, const struct move_state *st,
                                      const char *answer_data, struct journal_rec *jr,
                                      uint64_t ended_mono);
cJSON *agent_history_state_json(const struct agent_ended *h);
struct agent_ended *agent_history_find(struct agent *a, const char *move_id);
cJSON *agent_move_answer(const struct move_state *s);
void agent_hold(struct agent *a, struct agent_ended *h, enum move_phase journaled);
void agent_free_move(struct move *m);
extern const struct move_ops agent_move_ops;
void agent_on_acked(struct transport *t, const char *key);
void agent_resend_outcome(struct agent *a, const struct journal_rec *r,
                          const struct move_state *st);
void agent_send_ready_answer(struct agent *a, const struct journal_rec *r);

/* What a completion of the journal writer (journal_writer.h) needs to find
 * its move again on the loop: by moveId or by ticket, never by a pointer the
 * loop may have freed meanwhile. Freed by the completion. */
struct agent_write {
    struct agent *a;
    char move_id[MOVE_ID_MAX + 1];
    uint64_t ticket;
    bool retry;          /* a write that failed before, tried again */
    enum move_phase was; /* the record's phase before this write */
    char *reply;         /* an answer that waits for the record */
    enum move_code code;
    char error[MOVE_ERROR_MAX];
};
struct agent_write *agent_write_new(struct agent *a, const char *move_id);
void agent_write_free(struct agent_write *w);
/* In a completion of w (rc: its result): the move of a->moves whose own
 * record it wrote (m->recording, cleared now); NULL, w freed, when there
 * is none any more or the writer was closed (-ECANCELED). */
struct move *agent_written_move(struct agent_write *w, int rc);
/* Records h's outcome (h->jr) on the journal writer: h is held meanwhile
 * (shown as not ended, in phase journaled); once written its terminal frame
 * and answer are sent (agent_resend_outcome), and if it cannot be written
 * it stays held and is retried (agent_hold). */
void agent_record_outcome(struct agent *a, struct agent_ended *h, enum move_phase journaled);

/* reclaimingBytes / reclaimingEntries (heartbeat, status) */
void agent_add_reclaiming(struct agent *a, cJSON *d);

#endif
