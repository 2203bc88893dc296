/* agent_internal.h: what the parts of the agent (agent.c lifecycle,
 * agent_requests.c, agent_accept.c, agent_recovery.c, agent_moves.c) share.
 * Only they include it; the daemon's interface is agent.h. agent_moves.c,
 * the lowest of them, has its own header (agent_moves.h). */
#ifndef HOSTAGENT_AGENT_INTERNAL_H
#define HOSTAGENT_AGENT_INTERNAL_H

#include "agent.h"
#include "agent_moves.h"

#include <cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* agent_accept.c: server.move_data and server.move_prepare: path checks,
 * order, busy rules, acceptance, the queue */
void agent_move_request(struct agent *a, const struct frame *f, const struct origin *o,
                        bool prepare);
void agent_start_queued(struct agent *a);
void agent_pending_free(struct agent_pending *p);
void agent_on_check(void *owner, struct path_check *c, bool timed_out);

/* agent_requests.c: the frames from the manager and the control socket,
 * cancel, commit, status */
/* The request subjects handled, for hello's capabilities. */
void agent_capabilities(cJSON *array);
void agent_on_message(struct transport *t, const char *buf, size_t len);
extern const struct control_ops agent_control_ops;
void agent_run_deferred(struct agent *a);

/* agent_recovery.c: the moves found in the journal at start */
void agent_recover(struct agent *a);

#endif
