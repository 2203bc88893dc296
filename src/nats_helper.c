/* nats_helper.c: the helper thread. The calls of nats.c's that block —
 * connect (one pass over the servers), flush (the PING/PONG that
 * acknowledges answers without JetStream) and close — run on this one
 * thread of ours, never on the loop. The loop asks through the fields under
 * c->lock (h_connect, h_close, flush_want) and the condition variable; the
 * helper answers with events (EV_CONNECT_DONE, EV_FLUSHED, EV_HELPER_DONE). */
#include "nats_internal.h"
#include "log.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

#define NATS_FLUSH_TIMEOUT_MS 10000

/* Runs on the helper thread when the first connect failed and nats.c goes
 * on retrying in the background (NOT_YET_CONNECTED): nats.c then no longer
 * says why. One plain attempt with the same servers, TLS and credentials
 * does (a certificate not accepted, refused credentials), at most once a
 * minute, so that servers that are down are not asked twice as often. */
static void helper_probe(struct nats_client *c, struct nats_event *e)
{
    natsConnection *p = NULL;
    uint64_t now = util_mono_ms();
    const char *txt, *cut;
    if (c->h_probe_ms && now - c->h_probe_ms < NATS_FAIL_LOG_GAP_MS)
        return;
    c->h_probe_ms = now;
    if (natsConnection_Connect(&p, c->probe_opts) == NATS_OK) {
        natsConnection_Destroy(p); /* up by now: the retry will find it */
        return;
    }
    txt = nats_GetLastError(NULL);
    if (!txt || !*txt)
        return;
    /* "(conn.c:733): SSL handshake error: ...": nats.c's source line out. */
    cut = txt[0] == '(' ? strstr(txt, "): ") : NULL;
    free(e->text);
    e->text = xstrdup(cut ? cut + 3 : txt);
}

static void helper_main(void *arg)
{
    struct nats_client *c = arg;
    for (;;) {
        bool do_connect, do_close;
        uint64_t want;
        natsConnection *nc;
        uv_mutex_lock(&c->lock);
        while (!c->h_connect && !c->h_close && c->flush_want == c->flush_done) {
            if (uv_cond_timedwait(&c->cond, &c->lock, c->cfg->ping_interval_ms * 1000000ull) != 0)
                break; /* a liveness flush, for the last answer's time */
        }
        do_connect = c->h_connect;
        do_close = c->h_close;
        want = c->flush_want;
        nc = c->h_nc;
        uv_mutex_unlock(&c->lock);

        if (do_close) {
            if (nc)
                natsConnection_Close(nc);
            nats_events_post(c, nats_events_new(EV_HELPER_DONE));
            return;
        }
        if (do_connect) {
            struct nats_event *e = nats_events_new(EV_CONNECT_DONE);
            natsConnection *fresh = NULL;
            if (nc) {
                natsConnection_Destroy(nc);
                nc = NULL;
            }
            e->status = natsConnection_Connect(&fresh, c->opts);
            if (e->status != NATS_OK && e->status != NATS_NOT_YET_CONNECTED) {
                const char *txt = nats_GetLastError(NULL);
                char stack[2048];
                /* "No server available" may hide why each server failed:
                 * a refusal of the credentials must still be named. */
                if (nats_GetLastErrorStack(stack, sizeof stack) == NATS_OK &&
                    (strstr(stack, "uthorization") || strstr(stack, "uthentication")))
                    e->status = NATS_CONNECTION_AUTH_FAILED;
                e->text = xstrdup(txt && *txt ? txt : natsStatus_GetText(e->status));
                if (fresh)
                    natsConnection_Destroy(fresh);
                fresh = NULL;
            } else {
                e->text = nats_events_error_text(fresh, NATS_OK, NULL);
                if (e->status == NATS_NOT_YET_CONNECTED)
                    helper_probe(c, e);
            }
            e->nc = fresh;
            uv_mutex_lock(&c->lock);
            c->h_connect = false;
            c->h_nc = fresh;
            uv_mutex_unlock(&c->lock);
            nats_events_post(c, e);
            continue;
        }
        if (!nc || natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED) {
            /* Not connected: wait for the next wake-up (a reconnect flushes). */
            uv_mutex_lock(&c->lock);
            if (!c->h_connect && !c->h_close)
                (void)uv_cond_timedwait(&c->cond, &c->lock, 500ull * 1000000ull);
            uv_mutex_unlock(&c->lock);
            continue;
        }
        if (natsConnection_FlushTimeout(nc, NATS_FLUSH_TIMEOUT_MS) == NATS_OK) {
            struct nats_event *e = nats_events_new(EV_FLUSHED);
            e->gen = want;
            uv_mutex_lock(&c->lock);
            if (want > c->flush_done)
                c->flush_done = want;
            uv_mutex_unlock(&c->lock);
            nats_events_post(c, e);
        }
    }
}

/* On the loop: asks the helper to connect or to close. Before a close the
 * loop stops watching the socket for good (the poll handle goes, and nats.c's
 * later wishes for it are ignored): the helper's natsConnection_Close closes
 * the descriptor, and a poll re-armed on a closed descriptor makes libuv's
 * epoll_ctl fail, which libuv answers with abort(). */
void nats_helper_task(struct nats_client *c, bool connect, bool close)
{
    /* The poll goes first (uv_close takes the descriptor out of epoll at
     * once), and only then is the helper told: its close of the descriptor
     * must come after our last epoll_ctl on it (ThreadSanitizer saw the
     * two race when the helper was told first). */
    if (close)
        nats_adapter_forget(c);
    uv_mutex_lock(&c->lock);
    if (connect)
        c->h_connect = true;
    if (close) {
        c->h_close = true;
        c->ev_detached = true;
    }
    uv_cond_signal(&c->cond);
    uv_mutex_unlock(&c->lock);
}

void nats_helper_request_flush(struct nats_client *c, uint64_t gen)
{
    uv_mutex_lock(&c->lock);
    if (gen > c->flush_want)
        c->flush_want = gen;
    uv_cond_signal(&c->cond);
    uv_mutex_unlock(&c->lock);
}

void nats_helper_start(struct nats_client *c)
{
    if (uv_thread_create(&c->helper, helper_main, c) != 0) {
        LOG0(LOG_ERROR, "cannot start the NATS helper thread");
        return;
    }
    c->helper_running = true;
}

void nats_helper_stop(struct nats_client *c)
{
    if (!c->helper_running)
        return;
    nats_helper_task(c, false, true);
    uv_thread_join(&c->helper);
    c->helper_running = false;
}
