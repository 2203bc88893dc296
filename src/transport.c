/* transport.c: the transport interface's dispatch, the connection state
 * names and the reconnect backoff every transport uses. */
#include "transport.h"
#include "nats_client.h"
#include "util.h"
#include "ws_client.h"

#include <stdlib.h>

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

int transport_create(struct transport **out, uv_loop_t *loop, const struct config *cfg,
                     const struct transport_ops *ops, void *owner)
{
    int rc;
    *out = NULL;
    if (cfg->transport == TRANSPORT_NATS) {
        struct nats_client *n = xcalloc(1, sizeof *n);
        rc = nats_client_init(n, loop, cfg, ops, owner);
        *out = &n->base;
    } else {
        struct ws_client *w = xcalloc(1, sizeof *w);
        rc = ws_client_init(w, loop, cfg, ops, owner);
        *out = &w->base;
    }
    /* Even on failure: its handles may be open, the owner closes and
     * destroys it. */
    return rc;
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
