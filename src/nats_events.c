/* nats_events.c: what nats.c's threads hand to the loop. Every message and
 * connection event nats.c delivers on its threads (and what our helper
 * thread reports) is copied into an event, appended to one locked queue and
 * followed by uv_async_send, so the agent's state is only ever touched by
 * the loop thread, which takes the queue whole (nats_client.c). */
#include "nats_internal.h"
#include "util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define NATS_EV_MSGS_MAX 4096u        /* messages waiting for the loop; more are dropped */
#define NATS_PRESENCE_MAX_BYTES 2048u /* a longer announcement is none of ours */

void nats_events_free(struct nats_event *e)
{
    free(e->subject);
    free(e->reply);
    free(e->text);
    free(e->data);
    free(e);
}

struct nats_event *nats_events_new(enum nats_ev_kind kind)
{
    struct nats_event *e = xcalloc(1, sizeof *e);
    e->kind = kind;
    return e;
}

void nats_events_post(struct nats_client *c, struct nats_event *e)
{
    uv_mutex_lock(&c->lock);
    if (!c->wake_open) {
        uv_mutex_unlock(&c->lock);
        nats_events_free(e);
        return;
    }
    if (c->ev_tail)
        c->ev_tail->next = e;
    else
        c->ev_head = e;
    c->ev_tail = e;
    if (e->kind == EV_MSG || e->kind == EV_PRESENCE)
        c->ev_msgs++;
    uv_async_send(&c->wake);
    uv_mutex_unlock(&c->lock);
}

struct nats_event *nats_events_take(struct nats_client *c, unsigned *dropped)
{
    struct nats_event *e;
    uv_mutex_lock(&c->lock);
    e = c->ev_head;
    c->ev_head = c->ev_tail = NULL;
    c->ev_msgs = 0;
    *dropped = c->ev_dropped;
    c->ev_dropped = 0;
    uv_mutex_unlock(&c->lock);
    return e;
}

void nats_events_free_all(struct nats_client *c)
{
    while (c->ev_head) {
        struct nats_event *e = c->ev_head;
        c->ev_head = e->next;
        nats_events_free(e);
    }
}

/* natsConnection_GetLastError formats into one buffer of the connection
 * and hands out a pointer to it: two threads asking at once (a callback of
 * nats.c's and the helper) would read it while it is rewritten
 * (ThreadSanitizer saw it). Every caller asks and copies under this lock. */
static pthread_mutex_t events_error_lock = PTHREAD_MUTEX_INITIALIZER;

char *nats_events_error_text(natsConnection *nc, natsStatus fallback, natsStatus *status)
{
    const char *txt = NULL;
    char *out;
    natsStatus s;
    pthread_mutex_lock(&events_error_lock);
    s = nc ? natsConnection_GetLastError(nc, &txt) : NATS_OK;
    out = xstrdup(txt && *txt           ? txt
                  : fallback != NATS_OK ? natsStatus_GetText(fallback)
                  : s != NATS_OK        ? natsStatus_GetText(s)
                                        : "");
    pthread_mutex_unlock(&events_error_lock);
    if (status)
        *status = s;
    return out;
}

/* Whether the loop's queue of messages is full (the message is then
 * dropped, and counted). */
static bool events_queue_full(struct nats_client *c)
{
    bool full;
    uv_mutex_lock(&c->lock);
    full = c->ev_msgs >= NATS_EV_MSGS_MAX;
    if (full)
        c->ev_dropped++;
    uv_mutex_unlock(&c->lock);
    return full;
}

/* The rest of a message event: its reply subject and payload (len bytes,
 * NUL-terminated) copied; the message is destroyed and the event posted. */
static void events_post_msg(struct nats_client *c, struct nats_event *e, natsMsg *msg, size_t len)
{
    const char *reply = natsMsg_GetReply(msg);
    e->reply = reply && *reply ? xstrdup(reply) : NULL;
    e->len = len;
    e->data = xmalloc(e->len + 1);
    memcpy(e->data, natsMsg_GetData(msg), e->len);
    e->data[e->len] = '\0';
    natsMsg_Destroy(msg);
    nats_events_post(c, e);
}

void nats_events_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct nats_client *c = closure;
    struct nats_event *e;
    (void)nc;
    (void)sub;
    if (events_queue_full(c)) {
        natsMsg_Destroy(msg);
        return;
    }
    e = nats_events_new(EV_MSG);
    e->subject = xstrdup(natsMsg_GetSubject(msg));
    events_post_msg(c, e, msg, (size_t)natsMsg_GetDataLength(msg));
}

/* A message on the presence subject or on this run's inbox (the answers to
 * its presence queries, or the server's "no responders" for one). */
void nats_events_on_presence_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg,
                                 void *closure)
{
    struct nats_client *c = closure;
    struct nats_event *e;
    int len = natsMsg_GetDataLength(msg);
    (void)nc;
    (void)sub;
    if (events_queue_full(c) || len < 0 || (size_t)len > NATS_PRESENCE_MAX_BYTES) {
        natsMsg_Destroy(msg);
        return;
    }
    e = nats_events_new(EV_PRESENCE);
    e->no_responders = natsMsg_IsNoResponders(msg);
    events_post_msg(c, e, msg, (size_t)len);
}

static void events_on_conn_event(natsConnection *nc, void *closure, enum nats_ev_kind kind)
{
    struct nats_event *e = nats_events_new(kind);
    e->text = nats_events_error_text(nc, NATS_OK, &e->status);
    nats_events_post(closure, e);
}

void nats_events_on_connected(natsConnection *nc, void *closure)
{
    events_on_conn_event(nc, closure, EV_CONNECTED);
}

void nats_events_on_disconnected(natsConnection *nc, void *closure)
{
    events_on_conn_event(nc, closure, EV_DISCONNECTED);
}

void nats_events_on_reconnected(natsConnection *nc, void *closure)
{
    events_on_conn_event(nc, closure, EV_RECONNECTED);
}

void nats_events_on_closed(natsConnection *nc, void *closure)
{
    events_on_conn_event(nc, closure, EV_CLOSED);
}

void nats_events_on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    struct nats_event *e = nats_events_new(EV_ERROR);
    (void)sub;
    e->status = err;
    e->text = nats_events_error_text(nc, err, NULL);
    nats_events_post(closure, e);
}
