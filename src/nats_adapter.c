/* nats_adapter.c: nats.c's socket on our libuv loop (natsOptions_SetEventLoop).
 * nats.c calls these with its connection lock held, from whichever thread
 * connects, reconnects or publishes. We only record what it wants under our
 * lock and let the loop apply it (at once when already on the loop). Unlike
 * Debian's header-only libuv adapter, the first attach may come from another
 * thread (our helper connects), and nothing is scheduled on a closed handle. */
#include "nats_internal.h"
#include "log.h"
#include "util.h"

#include <stdlib.h>

static bool adapter_on_loop(const struct nats_client *c)
{
    uv_thread_t self = uv_thread_self();
    return uv_thread_equal(&self, &c->loop_thread);
}

static void adapter_kick(struct nats_client *c)
{
    if (adapter_on_loop(c)) {
        nats_adapter_apply(c);
        return;
    }
    uv_mutex_lock(&c->lock);
    if (c->wake_open)
        uv_async_send(&c->wake);
    uv_mutex_unlock(&c->lock);
}

natsStatus nats_adapter_attach(void **user, void *loop, natsConnection *nc, natsSock sock)
{
    struct nats_client *c = loop; /* we hand the client itself as nats.c's "loop" */
    *user = c;
    uv_mutex_lock(&c->lock);
    c->ev_nc = nc;
    c->ev_sock = sock;
    c->ev_want = UV_READABLE;
    c->ev_attach_gen++;
    c->ev_detached = false;
    uv_mutex_unlock(&c->lock);
    adapter_kick(c);
    return NATS_OK;
}

static natsStatus adapter_want(void *user, int flag, bool add)
{
    struct nats_client *c = user;
    uv_mutex_lock(&c->lock);
    if (add)
        c->ev_want |= flag;
    else
        c->ev_want &= ~flag;
    uv_mutex_unlock(&c->lock);
    adapter_kick(c);
    return NATS_OK;
}

natsStatus nats_adapter_read(void *user, bool add)
{
    return adapter_want(user, UV_READABLE, add);
}

natsStatus nats_adapter_write(void *user, bool add)
{
    return adapter_want(user, UV_WRITABLE, add);
}

natsStatus nats_adapter_detach(void *user)
{
    struct nats_client *c = user;
    uv_mutex_lock(&c->lock);
    c->ev_detached = true;
    c->ev_want = 0;
    /* nats.c detaches once, when it closes the connection, and drops its
     * own reference right after: a poll event the loop still has in hand
     * must not give the connection back to nats.c (see adapter_on_poll),
     * nor may the pointer outlive it. */
    c->ev_nc = NULL;
    c->ev_sock = -1;
    uv_mutex_unlock(&c->lock);
    adapter_kick(c);
    return NATS_OK;
}

static void adapter_poll_closed(uv_handle_t *h)
{
    free(h);
}

void nats_adapter_forget(struct nats_client *c)
{
    if (c->poll) {
        uv_close((uv_handle_t *)c->poll, adapter_poll_closed);
        c->poll = NULL;
    }
}

static void adapter_on_poll(uv_poll_t *p, int status, int events)
{
    struct nats_client *c = p->data;
    natsConnection *nc;
    uv_mutex_lock(&c->lock);
    nc = c->ev_nc;
    uv_mutex_unlock(&c->lock);
    if (!nc)
        return;
    /* An error on the socket is read like data: nats.c sees it and reconnects. */
    if (status < 0 || (events & UV_READABLE))
        natsConnection_ProcessReadEvent(nc);
    if (status == 0 && (events & UV_WRITABLE))
        natsConnection_ProcessWriteEvent(nc);
}

/* A new socket (each attach) gets a new handle: the old descriptor may be
 * closed already. */
void nats_adapter_apply(struct nats_client *c)
{
    natsSock sock;
    int want;
    unsigned gen;
    bool detached;
    uv_mutex_lock(&c->lock);
    sock = c->ev_sock;
    want = c->ev_want;
    gen = c->ev_attach_gen;
    detached = c->ev_detached || !c->wake_open;
    uv_mutex_unlock(&c->lock);
    if (c->poll_gen != gen || detached)
        nats_adapter_forget(c);
    if (!c->poll && !detached && gen > 0 && gen != c->poll_gen) {
        c->poll = xcalloc(1, sizeof *c->poll);
        if (uv_poll_init_socket(c->loop, c->poll, sock) != 0) {
            LOG0(LOG_ERROR, "cannot watch the NATS socket on the loop");
            free(c->poll);
            c->poll = NULL;
            return;
        }
        c->poll->data = c;
        c->poll_gen = gen;
    }
    if (c->poll) {
        if (want)
            uv_poll_start(c->poll, want, adapter_on_poll);
        else
            uv_poll_stop(c->poll);
    }
}
