/* agent_internal.h: what the parts of the agent (agent.c lifecycle,
 * agent_requests.c, agent_recovery.c, agent_moves.c) share. Only they
 * include it; the daemon's interface is agent.h. */
#ifndef HOSTAGENT_AGENT_INTERNAL_H
#define HOSTAGENT_AGENT_INTERNAL_H

#include "agent.h"

#include <cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

/* agent_moves.c: a move's frames and its end, the history of ended moves, sending and answering,
 * the delivery of outcomes */
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

/* agent_requests.c: the requests (move_data, move_cancel, move_status) from the manager and the
 * control socket, the busy rules, the queue */
/* The request subjects handled, for hello's capabilities. */
void agent_capabilities(cJSON *array);
void agent_start_queued(struct agent *a);
void agent_pending_free(struct agent_pending *p);
void agent_on_check(void *owner, struct path_check *c, bool timed_out);
void agent_on_message(struct transport *t, const char *buf, size_t len);
extern const struct control_ops agent_control_ops;
void agent_run_deferred(struct agent *a);

/* agent.c: reclaimingBytes / reclaimingEntries (heartbeat, status) */
void agent_add_reclaiming(struct agent *a, cJSON *d);

/* agent_recovery.c: the moves found in the journal at start */
void agent_recover(struct agent *a);

#endif
