/* transport.c: the transport interface's dispatch, the connection state
 * names, the state change and the reconnect backoff every transport uses.
 * The factory that picks a transport is above the clients (transport_create.c). */
#include "transport.h"
#include "log.h"

static const char *const state_names[] = {
    [CONN_IDLE] = "idle",       [CONN_CONNECTING] = "connecting", [CONN_HELLO] = "hello",
    [CONN_UP] = "up",           [CONN_DUPLICATE] = "duplicate",   [CONN_BACKOFF] = "backoff",
    [CONN_CLOSING] = "closing", [CONN_CLOSED] = "closed",
};

const char *transport_state_name(enum conn_state s)
{
    return state_names[s];
}

uint64_t transport_backoff_delay(uint64_t min_ms, uint64_t max_ms, unsigned n, double rnd)
{
    uint64_t d = min_ms, jitter;
    while (n-- > 0 && d < max_ms)
        d *= 2;
    if (d > max_ms)
        d = max_ms;
    jitter = (uint64_t)((double)d / 4.0 * rnd);
    d -= jitter;
    return d < min_ms ? min_ms : d;
}

void transport_enter(struct transport *t, enum conn_state next)
{
    if (t->state == next)
        return;
    LOG(LOG_DEBUG, "connection state", LF_S("from", transport_state_name(t->state)),
        LF_S("to", transport_state_name(next)));
    t->state = next;
    if (t->ops->state)
        t->ops->state(t, next);
}

void transport_start(struct transport *t)
{
    t->impl->start(t);
}

void transport_send(struct transport *t, const char *subject, cJSON *data,
                    const struct transport_send *how)
{
    t->impl->send(t, subject, data, how);
}

void transport_outcome(struct transport *t, const char *move_id, uint64_t accepted_ms,
                       const char *answer, const char *ack_key)
{
    t->impl->outcome(t, move_id, accepted_ms, answer, ack_key);
}

void transport_shutdown(struct transport *t)
{
    t->impl->shutdown(t);
}

void transport_close(struct transport *t)
{
    if (t)
        t->impl->close(t);
}

void transport_destroy(struct transport *t)
{
    if (t)
        t->impl->destroy(t);
}
