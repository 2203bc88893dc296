/* transport_create.c: the factory: the WebSocket or the NATS client, as the
 * config says. It sits above both clients, which only know the interface
 * below them (transport.c). */
#include "transport_create.h"
#include "nats_client.h"
#include "util.h"
#include "ws_client.h"

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
