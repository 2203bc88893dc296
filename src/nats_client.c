/* nats_client.c: the agent on NATS: nats.c drives its socket on our libuv
 * loop (an event-loop adapter of our own, below), and every message and
 * connection event nats.c delivers on its threads is handed to the loop
 * thread through one locked queue and uv_async_send, so the agent's state is
 * only ever touched by the loop thread. Blocking calls (connect, flush,
 * close) run on one helper thread of ours. One run of hostagent serves an
 * agent_id at a time (the presence protocol, below). */
#include "nats_client.h"
#include "log.h"
#include "move_state.h"
#include "nkey.h"
#include "protocol.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define NATS_EV_MSGS_MAX 4096u   /* messages waiting for the loop; more are dropped */
#define NATS_CLOSE_WAIT_MS 5000u /* a stop waits this long for the last flush */
#define NATS_FLUSH_TIMEOUT_MS 10000
#define NATS_PUBACK_WAIT_MS 5000 /* JetStream's PubAck; then the outcome is sent again */
#define NATS_FAIL_LOG_GAP_MS 60000u
#define NATS_WARN_GAP_MS 30000u
#define NATS_PROBE_TIMEOUT_MS 2000      /* a probe's connect (nc_probe) */
#define NATS_CLAIM_WAIT_MS 2000u        /* the answers to a presence query are awaited this long */
#define NATS_CONFLICT_LOG_GAP_MS 60000u /* another run on our agent_id: logged again this often */
#define NATS_PEERS_MAX 16u              /* other runs remembered; more are not */
#define NATS_PRESENCE_MAX_BYTES 2048u   /* a longer announcement is none of ours */

enum nats_ev_kind {
    EV_MSG,          /* a request */
    EV_PRESENCE,     /* another run's announcement, or the server's "no responders" */
    EV_CONNECT_DONE, /* the helper's connect returned */
    EV_CONNECTED,    /* first connection after a failed start */
    EV_DISCONNECTED,
    EV_RECONNECTED,
    EV_CLOSED,      /* nats.c closed the connection (ours or its own decision) */
    EV_ERROR,       /* an asynchronous error (permissions, slow consumer) */
    EV_FLUSHED,     /* the server answered the PING after flush generation gen */
    EV_PUBACK,      /* JetStream's answer for an outcome */
    EV_HELPER_DONE, /* the helper closed the connection and ended */
};

struct nats_event {
    struct nats_event *next;
    enum nats_ev_kind kind;
    natsStatus status;
    natsConnection *nc;
    char *subject, *reply, *text; /* text: an error's detail, a PubAck's stream */
    char *data;
    size_t len;
    uint64_t gen;
    bool ok, duplicate;
    bool no_responders; /* EV_PRESENCE: nobody listened to our presence query */
    int err_code;
};

static void nc_free_event(struct nats_event *e)
{
    free(e->subject);
    free(e->reply);
    free(e->text);
    free(e->data);
    free(e);
}

static struct nats_event *nc_event(enum nats_ev_kind kind)
{
    struct nats_event *e = xcalloc(1, sizeof *e);
    e->kind = kind;
    return e;
}

/* From any thread: queues e for the loop and wakes it (dropped once the
 * client is closing its handles: nothing is listening any more). */
static void nc_post(struct nats_client *c, struct nats_event *e)
{
    uv_mutex_lock(&c->lock);
    if (!c->wake_open) {
        uv_mutex_unlock(&c->lock);
        nc_free_event(e);
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

/* Runs on the helper thread when the first connect failed and nats.c goes
 * on retrying in the background (NOT_YET_CONNECTED): nats.c then no longer
 * says why. One plain attempt with the same servers, TLS and credentials
 * does (a certificate not accepted, refused credentials), at most once a
 * minute, so that servers that are down are not asked twice as often. */
static void nc_probe(struct nats_client *c, struct nats_event *e)
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

/* natsConnection_GetLastError formats into one buffer of the connection
 * and hands out a pointer to it: two threads asking at once (a callback of
 * nats.c's and the helper) would read it while it is rewritten
 * (ThreadSanitizer saw it). Every caller asks and copies under this lock. */
static pthread_mutex_t nc_error_lock = PTHREAD_MUTEX_INITIALIZER;

/* The connection's last error, copied (for an event's detail): its text, or
 * `fallback`'s, or that of the status; *status (may be NULL) gets it. */
static char *nc_error_text(natsConnection *nc, natsStatus fallback, natsStatus *status)
{
    const char *txt = NULL;
    char *out;
    natsStatus s;
    pthread_mutex_lock(&nc_error_lock);
    s = nc ? natsConnection_GetLastError(nc, &txt) : NATS_OK;
    out = xstrdup(txt && *txt           ? txt
                  : fallback != NATS_OK ? natsStatus_GetText(fallback)
                  : s != NATS_OK        ? natsStatus_GetText(s)
                                        : "");
    pthread_mutex_unlock(&nc_error_lock);
    if (status)
        *status = s;
    return out;
}

/* The connection's last error, as text (for an event's detail). */
static char *nc_last_error(natsConnection *nc)
{
    return nc_error_text(nc, NATS_OK, NULL);
}

void nats_subject(char *buf, size_t sz, const char *prefix, const char *agent_id,
                  const char *subject)
{
    util_fmt(buf, sz, "%s.%s.%s", prefix, agent_id, subject);
}

/* --- the event-loop adapter ----------------------------------------------------------
 * nats.c calls these with its connection lock held, from whichever thread
 * connects, reconnects or publishes. We only record what it wants under our
 * lock and let the loop apply it (at once when already on the loop). Unlike
 * Debian's header-only libuv adapter, the first attach may come from another
 * thread (our helper connects), and nothing is scheduled on a closed handle. */

static bool nc_on_loop(const struct nats_client *c);
static void nc_apply_adapter(struct nats_client *c);

static void nc_kick(struct nats_client *c)
{
    if (nc_on_loop(c)) {
        nc_apply_adapter(c);
        return;
    }
    uv_mutex_lock(&c->lock);
    if (c->wake_open)
        uv_async_send(&c->wake);
    uv_mutex_unlock(&c->lock);
}

natsStatus nats_client_ev_attach(void **user, void *loop, natsConnection *nc, natsSock sock)
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
    nc_kick(c);
    return NATS_OK;
}

static natsStatus nc_ev_want(void *user, int flag, bool add)
{
    struct nats_client *c = user;
    uv_mutex_lock(&c->lock);
    if (add)
        c->ev_want |= flag;
    else
        c->ev_want &= ~flag;
    uv_mutex_unlock(&c->lock);
    nc_kick(c);
    return NATS_OK;
}

static natsStatus nc_ev_read(void *user, bool add)
{
    return nc_ev_want(user, UV_READABLE, add);
}

static natsStatus nc_ev_write(void *user, bool add)
{
    return nc_ev_want(user, UV_WRITABLE, add);
}

natsStatus nats_client_ev_detach(void *user)
{
    struct nats_client *c = user;
    uv_mutex_lock(&c->lock);
    c->ev_detached = true;
    c->ev_want = 0;
    /* nats.c detaches once, when it closes the connection, and drops its
     * own reference right after: a poll event the loop still has in hand
     * must not give the connection back to nats.c (see nc_on_poll), nor may
     * the pointer outlive it. */
    c->ev_nc = NULL;
    c->ev_sock = -1;
    uv_mutex_unlock(&c->lock);
    nc_kick(c);
    return NATS_OK;
}

static void nc_poll_closed(uv_handle_t *h)
{
    free(h);
}

static void nc_on_poll(uv_poll_t *p, int status, int events)
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

/* On the loop: makes the poll handle match what nats.c wants. A new socket
 * (each attach) gets a new handle: the old descriptor may be closed already. */
static void nc_apply_adapter(struct nats_client *c)
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
    if (c->poll && (c->poll_gen != gen || detached)) {
        uv_close((uv_handle_t *)c->poll, nc_poll_closed);
        c->poll = NULL;
    }
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
            uv_poll_start(c->poll, want, nc_on_poll);
        else
            uv_poll_stop(c->poll);
    }
}

static bool nc_on_loop(const struct nats_client *c)
{
    uv_thread_t self = uv_thread_self();
    return uv_thread_equal(&self, &c->loop_thread);
}

/* --- nats.c's callbacks (its threads) ------------------------------------------------------ */

/* Whether the loop's queue of messages is full (the message is then
 * dropped, and counted). */
static bool nc_queue_full(struct nats_client *c)
{
    bool full;
    uv_mutex_lock(&c->lock);
    full = c->ev_msgs >= NATS_EV_MSGS_MAX;
    if (full)
        c->ev_dropped++;
    uv_mutex_unlock(&c->lock);
    return full;
}

static void nc_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct nats_client *c = closure;
    struct nats_event *e;
    const char *reply = natsMsg_GetReply(msg);
    bool full;
    (void)nc;
    (void)sub;
    full = nc_queue_full(c);
    if (full) {
        natsMsg_Destroy(msg);
        return;
    }
    e = nc_event(EV_MSG);
    e->subject = xstrdup(natsMsg_GetSubject(msg));
    e->reply = reply && *reply ? xstrdup(reply) : NULL;
    e->len = (size_t)natsMsg_GetDataLength(msg);
    e->data = xmalloc(e->len + 1);
    memcpy(e->data, natsMsg_GetData(msg), e->len);
    e->data[e->len] = '\0';
    natsMsg_Destroy(msg);
    nc_post(c, e);
}

/* A message on the presence subject or on this run's inbox (the answers to
 * its presence queries, or the server's "no responders" for one). */
static void nc_on_presence_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg,
                               void *closure)
{
    struct nats_client *c = closure;
    struct nats_event *e;
    const char *reply = natsMsg_GetReply(msg);
    int len = natsMsg_GetDataLength(msg);
    bool full;
    (void)nc;
    (void)sub;
    full = nc_queue_full(c);
    if (full || len < 0 || (size_t)len > NATS_PRESENCE_MAX_BYTES) {
        natsMsg_Destroy(msg);
        return;
    }
    e = nc_event(EV_PRESENCE);
    e->no_responders = natsMsg_IsNoResponders(msg);
    e->reply = reply && *reply ? xstrdup(reply) : NULL;
    e->len = (size_t)len;
    e->data = xmalloc(e->len + 1);
    memcpy(e->data, natsMsg_GetData(msg), e->len);
    e->data[e->len] = '\0';
    natsMsg_Destroy(msg);
    nc_post(c, e);
}

static void nc_on_conn_event(natsConnection *nc, void *closure, enum nats_ev_kind kind)
{
    struct nats_event *e = nc_event(kind);
    e->text = nc_error_text(nc, NATS_OK, &e->status);
    nc_post(closure, e);
}

static void nc_on_connected(natsConnection *nc, void *closure)
{
    nc_on_conn_event(nc, closure, EV_CONNECTED);
}

static void nc_on_disconnected(natsConnection *nc, void *closure)
{
    nc_on_conn_event(nc, closure, EV_DISCONNECTED);
}

static void nc_on_reconnected(natsConnection *nc, void *closure)
{
    nc_on_conn_event(nc, closure, EV_RECONNECTED);
}

static void nc_on_closed(natsConnection *nc, void *closure)
{
    nc_on_conn_event(nc, closure, EV_CLOSED);
}

static void nc_on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    struct nats_event *e = nc_event(EV_ERROR);
    (void)sub;
    e->status = err;
    e->text = nc_error_text(nc, err, NULL);
    nc_post(closure, e);
}

/* The reconnect thread's wait between passes over the server list: the
 * agent's own backoff (reconnect_min doubling to reconnect_max, jitter). */
static int64_t nc_reconnect_delay(natsConnection *nc, int attempts, void *closure)
{
    struct nats_client *c = closure;
    unsigned n = attempts > 0 ? (unsigned)attempts - 1 : 0;
    uint32_t r;
    (void)nc;
    uv_mutex_lock(&c->lock);
    c->rnd = c->rnd * 1103515245u + 12345u; /* rand() is not thread-safe */
    r = c->rnd;
    uv_mutex_unlock(&c->lock);
    return (int64_t)transport_backoff_delay(c->cfg->reconnect_min_ms, c->cfg->reconnect_max_ms, n,
                                            (double)(r >> 8) / (double)(1u << 24));
}

static void nc_on_puback(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    struct nats_event *e = nc_event(EV_PUBACK);
    const char *id = NULL;
    (void)js;
    if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK && id)
        e->subject = xstrdup(id);
    e->ok = pa != NULL;
    if (pa) {
        e->duplicate = pa->Duplicate;
        e->text = xstrdup(pa->Stream ? pa->Stream : "");
        e->gen = pa->Sequence;
    } else if (pae) {
        e->status = pae->Err;
        e->err_code = (int)pae->ErrCode;
        e->text = xstrdup(pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err));
    }
    natsMsg_Destroy(msg);
    if (e->subject)
        nc_post(closure, e);
    else
        nc_free_event(e);
}

/* --- the helper thread: connect, flush, close ---------------------------------------------- */

static void nc_helper(void *arg)
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
            nc_post(c, nc_event(EV_HELPER_DONE));
            return;
        }
        if (do_connect) {
            struct nats_event *e = nc_event(EV_CONNECT_DONE);
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
                e->text = nc_last_error(fresh);
                if (e->status == NATS_NOT_YET_CONNECTED)
                    nc_probe(c, e);
            }
            e->nc = fresh;
            uv_mutex_lock(&c->lock);
            c->h_connect = false;
            c->h_nc = fresh;
            uv_mutex_unlock(&c->lock);
            nc_post(c, e);
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
            struct nats_event *e = nc_event(EV_FLUSHED);
            e->gen = want;
            uv_mutex_lock(&c->lock);
            if (want > c->flush_done)
                c->flush_done = want;
            uv_mutex_unlock(&c->lock);
            nc_post(c, e);
        }
    }
}

/* On the loop: asks the helper to connect or to close. Before a close the
 * loop stops watching the socket for good (the poll handle goes, and nats.c's
 * later wishes for it are ignored): the helper's natsConnection_Close closes
 * the descriptor, and a poll re-armed on a closed descriptor makes libuv's
 * epoll_ctl fail, which libuv answers with abort(). */
static void nc_helper_task(struct nats_client *c, bool connect, bool close)
{
    /* The poll goes first (uv_close takes the descriptor out of epoll at
     * once), and only then is the helper told: its close of the descriptor
     * must come after our last epoll_ctl on it (ThreadSanitizer saw the
     * two race when the helper was told first). */
    if (close && c->poll) {
        uv_close((uv_handle_t *)c->poll, nc_poll_closed);
        c->poll = NULL;
    }
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

static void nc_request_flush(struct nats_client *c, uint64_t gen)
{
    uv_mutex_lock(&c->lock);
    if (gen > c->flush_want)
        c->flush_want = gen;
    uv_cond_signal(&c->cond);
    uv_mutex_unlock(&c->lock);
}

/* --- the connection's state (loop) ------------------------------------------------------------ */

static void nc_enter(struct nats_client *c, enum conn_state next)
{
    if (c->base.state == next)
        return;
    LOG(LOG_DEBUG, "connection state", LF_S("from", transport_state_name(c->base.state)),
        LF_S("to", transport_state_name(next)));
    c->base.state = next;
    if (c->base.ops->state)
        c->base.ops->state(&c->base, next);
}

static void out_free(struct nats_out *m)
{
    free(m->subject);
    free(m->merge_key);
    free(m->ack_key);
    free(m->body);
    free(m);
}

static void outcome_free(struct nats_outcome *o)
{
    free(o->move_id);
    free(o->msg_id);
    free(o->body);
    free(o->ack_key);
    free(o);
}

/* Publishes one message now; false when nats.c refused it (not connected). */
static bool nc_publish(struct nats_client *c, struct nats_out *m)
{
    natsStatus s;
    if (!c->nc)
        return false;
    s = natsConnection_Publish(c->nc, m->subject, m->body, (int)m->len);
    if (s != NATS_OK) {
        LOG(LOG_DEBUG, "NATS publish refused; held for the next connection",
            LF_S("subject", m->subject), LF_S("error", natsStatus_GetText(s)));
        return false;
    }
    return true;
}

/* After publishing m: an acknowledged message waits for the flush proving
 * the server has it (without JetStream: with it, only the PubAck of the
 * outcome acknowledges). */
static void nc_after_publish(struct nats_client *c, struct nats_out *m)
{
    if (!m->ack_key || c->cfg->nats_jetstream) {
        out_free(m);
        return;
    }
    m->gen = ++c->gen;
    m->next = NULL;
    if (c->unacked_tail)
        c->unacked_tail->next = m;
    else
        c->unacked_head = m;
    c->unacked_tail = m;
    nc_request_flush(c, m->gen);
}

static void nc_queue(struct nats_client *c, struct nats_out *m)
{
    if (m->merge_key) {
        /* The newer state replaces a held one of the same move; it goes to
         * the tail so that this move's frames stay in seq order. */
        struct nats_out **pp = &c->head, *prev = NULL;
        while (*pp) {
            if ((*pp)->merge_key && strcmp((*pp)->merge_key, m->merge_key) == 0) {
                struct nats_out *old = *pp;
                *pp = old->next;
                if (c->tail == old)
                    c->tail = prev;
                out_free(old);
                break;
            }
            prev = *pp;
            pp = &(*pp)->next;
        }
    }
    m->next = NULL;
    if (c->tail)
        c->tail->next = m;
    else
        c->head = m;
    c->tail = m;
}

static void nc_try_outcomes(struct nats_client *c);

/* Serving and connected: hello first, then what was held. */
static void nc_go_up(struct nats_client *c)
{
    struct nats_out *hello;
    cJSON *d;
    d = c->base.ops->hello(&c->base);
    hello = xcalloc(1, sizeof *hello);
    hello->subject = xmalloc(sizeof c->prefix + 16);
    util_fmt(hello->subject, sizeof c->prefix + 16, "%sagent.hello", c->prefix);
    hello->body = cJSON_PrintUnformatted(d);
    cJSON_Delete(d);
    if (!hello->body)
        util_oom(0);
    hello->len = strlen(hello->body);
    if (!nc_publish(c, hello)) {
        out_free(hello);
        nc_enter(c, CONN_BACKOFF);
        return;
    }
    out_free(hello);
    nc_enter(c, CONN_UP);
    while (c->head && c->base.state == CONN_UP) {
        struct nats_out *m = c->head;
        if (!nc_publish(c, m))
            break;
        c->head = m->next;
        if (!c->head)
            c->tail = NULL;
        nc_after_publish(c, m);
    }
    nc_try_outcomes(c);
}

/* --- one agent per agent_id (loop) ------------------------------------------------------------
 * Two runs of hostagent with one agent_id (a cloned config or VM) would both
 * take the id's requests, and a requester would get two answers and take the
 * first (path_not_allowed from the clone while the real host moves the
 * data). So each run has a random instance id and speaks a small presence
 * protocol on <prefix>.<agent_id>.agent.presence:
 *
 * - An announcement (JSON: agentId, instance, hostname, pid, startedAt,
 *   startedAtMs, serving, servingSinceMs; leaving at a stop) goes out every
 *   heartbeat_interval, at each change, and as the answer to a query.
 * - A run that connects takes no request yet: it publishes a query (an
 *   announcement with its inbox as the reply subject), then listens on the
 *   presence subject itself (the server decides about the query first, so
 *   its "no responders" tells at once that no other run is there);
 *   otherwise it waits NATS_CLAIM_WAIT_MS for the answers. Two runs that
 *   claim at once hear each other's query unless both queries came before
 *   both subscriptions: then both got "no responders", both serve, and
 *   their first announcements settle it (below).
 * - Of the runs heard, one serves: a serving run before one that does not,
 *   then the earlier servingSinceMs, then the earlier start, then the lower
 *   instance id (one order, computed alike by every run). A run that hears
 *   of one before it does not serve: it unsubscribes from the requests (or
 *   never subscribes), holds what it would publish on the id's subjects
 *   (hello, heartbeats, frames, answers, outcomes: they go out once it
 *   serves), enters CONN_DUPLICATE and logs an error naming the other run,
 *   again every minute while it is there; the serving run logs it too.
 * - A run is forgotten when it says it leaves (a stop) or after 3
 *   heartbeat intervals + NATS_CLAIM_WAIT_MS unheard; a run that did not
 *   serve then claims the id again.
 * - The requests are subscribed in a queue group named after the agent_id:
 *   while two runs serve (they connected at the same instant, before their
 *   announcements crossed), NATS hands each request to one of them only, so
 *   a request gets one answer, or none when the run it went to has just
 *   stopped serving, never two. */

struct nc_rank {
    bool serving;
    uint64_t since, started;
    const char *instance;
};

/* Whether a has the agent_id before b (the order above). */
static bool nc_rank_before(const struct nc_rank *a, const struct nc_rank *b)
{
    if (a->serving != b->serving)
        return a->serving;
    if (a->serving && a->since != b->since)
        return a->since < b->since;
    if (a->started != b->started)
        return a->started < b->started;
    return strcmp(a->instance, b->instance) < 0;
}

static struct nc_rank nc_rank_self(const struct nats_client *c)
{
    return (struct nc_rank){c->serving, c->serving_since_ms, c->started_ms, c->instance};
}

static struct nc_rank nc_rank_peer(const struct nats_peer *p)
{
    return (struct nc_rank){p->serving, p->serving_since_ms, p->started_ms, p->instance};
}

/* The first run heard that has the agent_id before this one; NULL: none. */
static struct nats_peer *nc_better_peer(const struct nats_client *c)
{
    struct nc_rank me = nc_rank_self(c);
    for (struct nats_peer *p = c->peers; p; p = p->next) {
        struct nc_rank r = nc_rank_peer(p);
        if (nc_rank_before(&r, &me))
            return p;
    }
    return NULL;
}

/* This run's announcement: on the presence subject (to NULL) or to a
 * query's reply subject; query: with this run's inbox as its reply subject,
 * for every other run to answer. */
static void nc_presence_send(struct nats_client *c, const char *to, bool query, bool leaving)
{
    cJSON *d = cJSON_CreateObject();
    char ts[UTIL_TIME_LEN];
    char *body;
    natsStatus s;
    if (!c->nc) {
        cJSON_Delete(d);
        return;
    }
    cJSON_AddStringToObject(d, "agentId", c->cfg->agent_id);
    cJSON_AddStringToObject(d, "instance", c->instance);
    cJSON_AddStringToObject(d, "hostname", c->hostname);
    cJSON_AddNumberToObject(d, "pid", (double)getpid());
    util_rfc3339(c->started_ms, ts);
    cJSON_AddStringToObject(d, "startedAt", ts);
    json_add_u64(d, "startedAtMs", c->started_ms);
    cJSON_AddBoolToObject(d, "serving", c->serving);
    if (c->serving)
        json_add_u64(d, "servingSinceMs", c->serving_since_ms);
    if (leaving)
        cJSON_AddTrueToObject(d, "leaving");
    body = cJSON_PrintUnformatted(d);
    cJSON_Delete(d);
    if (!body)
        util_oom(0);
    if (query)
        s = natsConnection_PublishRequestString(c->nc, c->presence_subject, c->inbox, body);
    else
        s = natsConnection_PublishString(c->nc, to ? to : c->presence_subject, body);
    if (s != NATS_OK)
        LOG(LOG_DEBUG, "presence not published", LF_S("error", natsStatus_GetText(s)));
    cJSON_free(body);
}

/* One line at level error naming the other run and which of the two serves
 * (this one unless one heard comes before it). */
static void nc_conflict_log(struct nats_client *c)
{
    const struct nats_peer *better = nc_better_peer(c), *p = better ? better : c->peers;
    char ts[UTIL_TIME_LEN];
    if (!p)
        return;
    c->last_conflict_log_ms = util_mono_ms();
    util_rfc3339(p->started_ms, ts);
    LOG(LOG_ERROR,
        better ? "another hostagent runs with this agent_id and comes first: this one does not "
                 "serve it (it takes no request and publishes nothing on the agent_id's subjects "
                 "while the other runs); give every agent its own agent_id"
               : "another hostagent runs with this agent_id: this one serves it, the other does "
                 "not; give every agent its own agent_id",
        LF_S("agent_id", c->cfg->agent_id), LF_S("instance", c->instance),
        LF_S("other_hostname", p->hostname), LF_I("other_pid", p->pid),
        LF_S("other_instance", p->instance), LF_S("other_started", ts),
        LF_S("other_serving", p->serving ? "yes" : "no"));
}

/* Takes the agent_id's requests: <prefix>.<id>.server.* and the fleet's
 * <prefix>.all.server.move_status, in the queue group named after the
 * agent_id (see above). */
static void nc_take_requests(struct nats_client *c)
{
    char subj[sizeof c->prefix + 32];
    const char *queue = c->cfg->agent_id;
    natsStatus s;
    util_fmt(subj, sizeof subj, "%sserver.*", c->prefix);
    s = natsConnection_QueueSubscribe(&c->sub_agent, c->nc, subj, queue, nc_on_msg, c);
    if (s == NATS_OK) {
        util_fmt(subj, sizeof subj, "%sserver.move_status", c->all_prefix);
        s = natsConnection_QueueSubscribe(&c->sub_all, c->nc, subj, queue, nc_on_msg, c);
    }
    /* Closed already: the server let the connection in and then shut it
     * (refused credentials come that way); its closed event says why. */
    if (s != NATS_OK)
        LOG(s == NATS_CONNECTION_CLOSED ? LOG_DEBUG : LOG_ERROR,
            "cannot subscribe to the agent's subjects", LF_S("subject", subj),
            LF_S("error", natsStatus_GetText(s)));
    c->serving = true;
    c->serving_since_ms = util_wall_ms();
}

/* Takes no more requests. A request nats.c has already handed over is
 * dropped on the loop (nc_handle): another run answers the next ones. */
static void nc_drop_requests(struct nats_client *c)
{
    if (c->sub_agent) {
        (void)natsSubscription_Unsubscribe(c->sub_agent);
        natsSubscription_Destroy(c->sub_agent);
    }
    if (c->sub_all) {
        (void)natsSubscription_Unsubscribe(c->sub_all);
        natsSubscription_Destroy(c->sub_all);
    }
    c->sub_agent = c->sub_all = NULL;
    c->serving = false;
    c->serving_since_ms = 0;
}

static void nc_listen_presence(struct nats_client *c)
{
    natsStatus s;
    if (c->sub_presence || !c->nc)
        return;
    s = natsConnection_Subscribe(&c->sub_presence, c->nc, c->presence_subject, nc_on_presence_msg,
                                 c);
    if (s != NATS_OK)
        LOG(s == NATS_CONNECTION_CLOSED ? LOG_DEBUG : LOG_ERROR,
            "cannot subscribe to the agent_id's presence subject",
            LF_S("subject", c->presence_subject), LF_S("error", natsStatus_GetText(s)));
}

/* Another run has the agent_id before this one: serve no more (or not). The
 * announcement that says so goes out after the unsubscribe, on the same
 * connection: whoever receives it knows the server no longer hands this run
 * a request. */
static void nc_yield(struct nats_client *c)
{
    c->claiming = false;
    uv_timer_stop(&c->claim_timer);
    nc_drop_requests(c);
    c->yielded = true;
    nc_listen_presence(c);
    nc_enter(c, CONN_DUPLICATE);
    nc_conflict_log(c);
    nc_presence_send(c, NULL, false, false);
}

/* No other run has the agent_id before this one: take its requests, then
 * hello and what was held. */
static void nc_serve(struct nats_client *c)
{
    nc_take_requests(c);
    LOG(c->yielded ? LOG_WARN : LOG_INFO,
        c->yielded ? "serving the agent_id's requests: no other hostagent serves it any more"
                   : "serving the agent_id's requests",
        LF_S("agent_id", c->cfg->agent_id), LF_S("instance", c->instance));
    c->yielded = false;
    nc_presence_send(c, NULL, false, false);
    nc_go_up(c);
}

static void nc_on_claim_timer(uv_timer_t *t);

/* Connected and not serving: asks who else runs with this agent_id. */
static void nc_claim(struct nats_client *c)
{
    if (!c->nc)
        return;
    if (c->base.state != CONN_HELLO)
        nc_enter(c, CONN_HELLO);
    c->claiming = true;
    nc_presence_send(c, NULL, true, false);
    nc_listen_presence(c); /* after the query: see above */
    uv_timer_start(&c->claim_timer, nc_on_claim_timer, NATS_CLAIM_WAIT_MS, 0);
}

/* The answers are in ("no responders", or the wait is over): serve, or not. */
static void nc_claim_end(struct nats_client *c)
{
    if (!c->claiming)
        return;
    c->claiming = false;
    uv_timer_stop(&c->claim_timer);
    if (c->base.state != CONN_HELLO || !c->nc)
        return;
    if (nc_better_peer(c)) {
        nc_yield(c);
        return;
    }
    nc_serve(c);
}

static void nc_on_claim_timer(uv_timer_t *t)
{
    nc_claim_end(t->data);
}

static void nc_peer_unlink(struct nats_client *c, struct nats_peer *p, const char *why)
{
    struct nats_peer **pp;
    for (pp = &c->peers; *pp && *pp != p; pp = &(*pp)->next)
        ;
    if (!*pp)
        return;
    *pp = p->next;
    c->n_peers--;
    LOG(LOG_WARN, why, LF_S("agent_id", c->cfg->agent_id), LF_S("other_hostname", p->hostname),
        LF_I("other_pid", p->pid), LF_S("other_instance", p->instance));
    free(p);
}

/* A run that did not serve, and that no run heard comes before any more,
 * claims the agent_id again. */
static void nc_maybe_reclaim(struct nats_client *c)
{
    if (c->base.state == CONN_DUPLICATE && !nc_better_peer(c))
        nc_claim(c);
}

static uint64_t nc_json_u64(const cJSON *o, const char *key, bool *ok)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    double d = cJSON_IsNumber(v) ? cJSON_GetNumberValue(v) : -1;
    if (d < 0 || d > 9007199254740992.0) {
        *ok = false;
        return 0;
    }
    return (uint64_t)d;
}

/* Another run's announcement (or an answer to our query). */
static void nc_on_presence(struct nats_client *c, const struct nats_event *e)
{
    cJSON *d;
    const cJSON *id, *inst, *host, *serving;
    struct nats_peer *p;
    bool ok = true, pid_ok = true, fresh = false, was_serving;
    uint64_t started, since;
    if (c->base.state == CONN_CLOSING || c->base.state == CONN_CLOSED)
        return;
    if (e->no_responders) {
        /* Nobody listens on the presence subject: no other run is there. */
        nc_claim_end(c);
        return;
    }
    d = cJSON_ParseWithLength(e->data, e->len);
    id = cJSON_GetObjectItemCaseSensitive(d, "agentId");
    inst = cJSON_GetObjectItemCaseSensitive(d, "instance");
    host = cJSON_GetObjectItemCaseSensitive(d, "hostname");
    serving = cJSON_GetObjectItemCaseSensitive(d, "serving");
    started = nc_json_u64(d, "startedAtMs", &ok);
    since = cJSON_IsTrue(serving) ? nc_json_u64(d, "servingSinceMs", &ok) : 0;
    if (!ok || !cJSON_IsString(id) || strcmp(id->valuestring, c->cfg->agent_id) != 0 ||
        !cJSON_IsString(inst) || strlen(inst->valuestring) != NATS_INSTANCE_LEN ||
        !cJSON_IsBool(serving)) {
        LOG(LOG_DEBUG, "presence message ignored: not an announcement of this agent_id",
            LF_S("subject", c->presence_subject));
        cJSON_Delete(d);
        return;
    }
    if (strcmp(inst->valuestring, c->instance) == 0) {
        cJSON_Delete(d); /* our own */
        return;
    }
    for (p = c->peers; p && strcmp(p->instance, inst->valuestring) != 0; p = p->next)
        ;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(d, "leaving"))) {
        cJSON_Delete(d);
        if (p)
            nc_peer_unlink(c, p, "the other hostagent with this agent_id stopped");
        nc_maybe_reclaim(c);
        return;
    }
    if (!p) {
        if (c->n_peers >= NATS_PEERS_MAX) {
            cJSON_Delete(d);
            return;
        }
        p = xcalloc(1, sizeof *p);
        util_fmt(p->instance, sizeof p->instance, "%s", inst->valuestring);
        p->next = c->peers;
        c->peers = p;
        c->n_peers++;
        fresh = true;
    }
    was_serving = p->serving;
    util_fmt(p->hostname, sizeof p->hostname, "%s", cJSON_IsString(host) ? host->valuestring : "");
    p->pid = (long long)nc_json_u64(d, "pid", &pid_ok); /* for the log only: 0 if absent */
    p->started_ms = started;
    p->serving = cJSON_IsTrue(serving);
    p->serving_since_ms = since;
    p->heard_ms = util_mono_ms();
    cJSON_Delete(d);
    /* A query is answered; a run not known yet learns of this one. */
    if (e->reply)
        nc_presence_send(c, e->reply, false, false);
    else if (fresh && c->sub_presence)
        nc_presence_send(c, NULL, false, false);
    if (!fresh && was_serving && !p->serving)
        LOG(LOG_INFO, "the other hostagent with this agent_id does not serve it any more",
            LF_S("other_instance", p->instance));
    if ((c->serving || c->claiming) && nc_better_peer(c)) {
        nc_yield(c);
        return;
    }
    if (fresh)
        nc_conflict_log(c);
    nc_maybe_reclaim(c);
}

/* Every heartbeat_interval: this run's announcement, runs no longer heard
 * forgotten, the conflict logged again while it lasts. */
static void nc_on_presence_timer(uv_timer_t *t)
{
    struct nats_client *c = t->data;
    uint64_t now = util_mono_ms(), every = c->cfg->heartbeat_interval_ms;
    uint64_t ttl = 3 * every + NATS_CLAIM_WAIT_MS;
    struct nats_peer *p, *next;
    uv_timer_set_repeat(t, every);
    if (c->base.state == CONN_CLOSING || c->base.state == CONN_CLOSED)
        return;
    for (p = c->peers; p; p = next) {
        next = p->next;
        if (now - p->heard_ms > ttl)
            nc_peer_unlink(c, p, "the other hostagent with this agent_id is not heard any more");
    }
    if (c->sub_presence && (c->base.state == CONN_UP || c->base.state == CONN_DUPLICATE))
        nc_presence_send(c, NULL, false, false);
    if (c->base.state == CONN_DUPLICATE && !nc_better_peer(c)) {
        nc_claim(c);
        return;
    }
    if (c->peers && now - c->last_conflict_log_ms >= NATS_CONFLICT_LOG_GAP_MS)
        nc_conflict_log(c);
}

/* At a stop: tells the other runs that this one goes (one that waits for the
 * agent_id takes it at once) and stops listening for them. True when the
 * message went out (a flush should carry it before the close). */
static bool nc_leave(struct nats_client *c, enum conn_state was)
{
    if (!c->nc || (was != CONN_UP && was != CONN_DUPLICATE && was != CONN_HELLO))
        return false;
    c->claiming = false;
    uv_timer_stop(&c->claim_timer);
    nc_presence_send(c, NULL, false, true);
    if (c->sub_presence) {
        (void)natsSubscription_Unsubscribe(c->sub_presence);
        natsSubscription_Destroy(c->sub_presence);
        c->sub_presence = NULL;
    }
    return true;
}

/* Connected (first time or again). A run that serves goes on (its
 * subscriptions came back with the connection; its query finds a run that
 * took the agent_id meanwhile); any other claims the agent_id first. */
static void nc_connected(struct nats_client *c, const char *how)
{
    char url[256] = "";
    if (c->base.state == CONN_CLOSING || c->base.state == CONN_CLOSED || !c->nc)
        return;
    if (c->base.state == CONN_UP || c->base.state == CONN_DUPLICATE || c->claiming)
        return; /* a late duplicate */
    if (c->base.state != CONN_CONNECTING)
        nc_enter(c, CONN_CONNECTING);
    nc_enter(c, CONN_HELLO);
    (void)natsConnection_GetConnectedUrl(c->nc, url, sizeof url);
    LOG(LOG_INFO, how, LF_S("server", url));
    c->base.last_pong_wall_ms = util_wall_ms();
    /* Written but not known to have arrived: sent again, first. */
    if (c->unacked_head) {
        c->unacked_tail->next = c->head;
        if (!c->head)
            c->tail = c->unacked_tail;
        c->head = c->unacked_head;
        c->unacked_head = c->unacked_tail = NULL;
    }
    if (!c->serving) {
        nc_claim(c);
        return;
    }
    nc_presence_send(c, NULL, true, false);
    nc_go_up(c);
}

static bool nc_is_auth(const struct nats_event *e)
{
    return e->status == NATS_CONNECTION_AUTH_FAILED ||
           (e->text && (strstr(e->text, "uthorization") || strstr(e->text, "uthentication")));
}

/* A failure, logged at most once a minute (every time for refused credentials:
 * an operator must see those), with nats.c's own words. */
static void nc_log_failure(struct nats_client *c, const struct nats_event *e, const char *what)
{
    uint64_t now = util_mono_ms();
    bool tls = e->text && strstr(e->text, "SSL handshake error");
    /* A failure whose cause is known (refused credentials, a certificate
     * not accepted) has its own gap: a vaguer line just before ("no server
     * available") must not hide it, and vaguer ones stay quiet while the
     * cause is being repeated. */
    if (nc_is_auth(e) || tls) {
        if (c->last_cause_log_ms && now - c->last_cause_log_ms < NATS_WARN_GAP_MS)
            return;
        c->last_cause_log_ms = c->last_fail_log_ms = now;
        if (tls)
            LOG(LOG_ERROR,
                "the NATS server's TLS certificate was not accepted (check ca_file and the host "
                "name in nats_servers); retrying",
                LF_S("servers", c->cfg->nats_servers_raw), LF_S("detail", e->text));
        else
            LOG(LOG_ERROR,
                "the NATS server refused the agent's credentials (check nats_creds_file, "
                "nats_nkey_seed_file, nats_user/nats_password_file or token); retrying",
                LF_S("servers", c->cfg->nats_servers_raw), LF_S("detail", e->text ? e->text : ""));
        return;
    }
    if (c->last_cause_log_ms && now - c->last_cause_log_ms < NATS_FAIL_LOG_GAP_MS)
        return;
    if (c->last_fail_log_ms && now - c->last_fail_log_ms < NATS_FAIL_LOG_GAP_MS)
        return;
    c->last_fail_log_ms = now;
    LOG(LOG_WARN, what, LF_S("servers", c->cfg->nats_servers_raw),
        LF_S("detail", e->text && *e->text ? e->text : natsStatus_GetText(e->status)));
}

/* At each new connection (before it is up): this run's inbox for the
 * answers to its presence queries, and JetStream. The requests and the
 * presence subject come with the claim. */
static void nc_subscribe(struct nats_client *c)
{
    natsStatus s;
    s = natsConnection_Subscribe(&c->sub_inbox, c->nc, c->inbox, nc_on_presence_msg, c);
    if (s != NATS_OK)
        LOG(s == NATS_CONNECTION_CLOSED ? LOG_DEBUG : LOG_ERROR,
            "cannot subscribe to the agent's inbox", LF_S("subject", c->inbox),
            LF_S("error", natsStatus_GetText(s)));
    if (c->cfg->nats_jetstream && !c->js) {
        jsOptions jo;
        jsOptions_Init(&jo);
        jo.PublishAsync.AckHandler = nc_on_puback;
        jo.PublishAsync.AckHandlerClosure = c;
        s = natsConnection_JetStream(&c->js, c->nc, &jo);
        if (s != NATS_OK)
            LOG(LOG_ERROR, "cannot create the JetStream context",
                LF_S("error", natsStatus_GetText(s)));
    }
}

static void nc_finish_close(struct nats_client *c)
{
    uv_timer_stop(&c->close_timer);
    nc_enter(c, CONN_CLOSED);
}

static void nc_on_restart_timer(uv_timer_t *t)
{
    struct nats_client *c = t->data;
    if (c->base.state == CONN_CLOSING || c->base.state == CONN_CLOSED)
        return;
    nc_enter(c, CONN_CONNECTING);
    nc_helper_task(c, true, false);
}

/* nats.c closed the connection by itself (e.g. refused credentials twice):
 * start over after a backoff, forever (and claim the agent_id again). */
static void nc_restart_later(struct nats_client *c)
{
    uint64_t delay =
        transport_backoff_delay(c->cfg->reconnect_min_ms, c->cfg->reconnect_max_ms, c->restarts++,
                                (double)rand() / ((double)RAND_MAX + 1));
    nc_drop_requests(c);
    if (c->sub_presence)
        natsSubscription_Destroy(c->sub_presence);
    if (c->sub_inbox)
        natsSubscription_Destroy(c->sub_inbox);
    c->sub_presence = c->sub_inbox = NULL;
    c->claiming = false;
    uv_timer_stop(&c->claim_timer);
    if (c->js)
        jsCtx_Destroy(c->js);
    c->js = NULL;
    c->nc = NULL; /* the helper destroys it before connecting again */
    if (c->base.state != CONN_BACKOFF)
        nc_enter(c, CONN_BACKOFF);
    uv_timer_start(&c->restart_timer, nc_on_restart_timer, delay, 0);
}

/* A request: the frame {"subject","reply","data"} the WebSocket would have
 * carried, so that validation, codes and answers are the same. A payload
 * that is not a JSON object (or not JSON) is passed as a string, which the
 * frame's validation answers with invalid_request. */
static void nc_deliver(struct nats_client *c, struct nats_event *e)
{
    const char *rest = NULL;
    cJSON *env;
    char *head, *buf;
    size_t hlen, cap, n;
    bool json_ok = false;
    size_t pl = strlen(c->prefix), al = strlen(c->all_prefix);

    if (strncmp(e->subject, c->prefix, pl) == 0)
        rest = e->subject + pl;
    else if (strncmp(e->subject, c->all_prefix, al) == 0)
        rest = e->subject + al;
    if (!rest)
        return;
    if (e->len > c->cfg->max_message_bytes) {
        LOG(LOG_WARN, "message from the manager over max_message_bytes dropped",
            LF_U("max_message_bytes", c->cfg->max_message_bytes));
        return;
    }
    if (e->len > 0 && util_utf8_valid(e->data, e->len)) {
        const char *end = NULL;
        cJSON *probe = cJSON_ParseWithLengthOpts(e->data, e->len, &end, 0);
        json_ok = probe && cJSON_IsObject(probe);
        while (json_ok && end && end < e->data + e->len && strchr(" \t\r\n", *end))
            end++;
        json_ok = json_ok && end == e->data + e->len;
        cJSON_Delete(probe);
    }
    env = cJSON_CreateObject();
    cJSON_AddStringToObject(env, "subject", rest);
    if (e->reply)
        cJSON_AddStringToObject(env, "reply", e->reply);
    if (e->len > 0 && !json_ok)
        cJSON_AddStringToObject(env, "data", "(the NATS payload is not a JSON object)");
    head = cJSON_PrintUnformatted(env);
    cJSON_Delete(env);
    if (!head)
        util_oom(0);
    hlen = strlen(head);
    if (!json_ok) {
        c->base.ops->message(&c->base, head, hlen);
        cJSON_free(head);
        return;
    }
    /* {"subject":..,"reply":..} + ,"data": + payload + } */
    cap = hlen + e->len + 16;
    buf = xmalloc(cap);
    head[hlen - 1] = '\0'; /* without its closing brace */
    n = (size_t)snprintf(buf, cap, "%s,\"data\":%.*s}", head, (int)e->len, e->data);
    cJSON_free(head);
    c->base.ops->message(&c->base, buf, n);
    free(buf);
}

/* --- outcomes through JetStream (loop) ------------------------------------------------------- */

static void nc_on_retry_timer(uv_timer_t *t)
{
    nc_try_outcomes(t->data);
}

static void nc_try_outcomes(struct nats_client *c)
{
    uint64_t now = util_mono_ms();
    if (!c->outcomes) {
        uv_timer_stop(&c->retry_timer);
        return;
    }
    if (!uv_is_active((uv_handle_t *)&c->retry_timer) && c->open_handles > 0)
        uv_timer_start(&c->retry_timer, nc_on_retry_timer, 500, 500);
    if (c->base.state != CONN_UP || !c->js)
        return;
    for (struct nats_outcome *o = c->outcomes; o; o = o->next) {
        natsMsg *msg = NULL;
        jsPubOptions po;
        natsStatus s;
        if (o->next_try_ms > now)
            continue;
        s = natsMsg_Create(&msg, c->outcome_subject, NULL, o->body, (int)strlen(o->body));
        if (s == NATS_OK)
            s = natsMsgHeader_Set(msg, "Nats-Msg-Id", o->msg_id);
        if (s == NATS_OK) {
            jsPubOptions_Init(&po);
            po.MaxWait = NATS_PUBACK_WAIT_MS;
            po.MsgId = o->msg_id;
            s = js_PublishMsgAsync(c->js, &msg, &po);
        }
        natsMsg_Destroy(msg); /* NULL once the library took it */
        /* Its PubAck (or the library's time-out for it) comes back as EV_PUBACK. */
        o->next_try_ms = now + (s == NATS_OK ? 2u * NATS_PUBACK_WAIT_MS : 1000u);
    }
}

static void nc_on_puback_event(struct nats_client *c, struct nats_event *e)
{
    struct nats_outcome **pp, *o;
    uint64_t now = util_mono_ms();
    for (pp = &c->outcomes; *pp && strcmp((*pp)->msg_id, e->subject) != 0; pp = &(*pp)->next)
        ;
    o = *pp;
    if (!o)
        return; /* stored already: a late answer to an earlier send */
    if (e->ok) {
        LOG(LOG_INFO, "move outcome stored by JetStream", LF_S("move", o->move_id),
            LF_S("msg_id", o->msg_id), LF_S("stream", e->text ? e->text : ""), LF_U("seq", e->gen),
            LF_S("duplicate", e->duplicate ? "yes" : "no"));
        *pp = o->next;
        if (o->ack_key && c->base.ops->acked)
            c->base.ops->acked(&c->base, o->ack_key);
        outcome_free(o);
        return;
    }
    o->next_try_ms = now + transport_backoff_delay(1000, 30000, o->attempt++,
                                                   (double)rand() / ((double)RAND_MAX + 1));
    if (!c->last_warn_ms || now - c->last_warn_ms >= NATS_WARN_GAP_MS) {
        unsigned pending = 0;
        for (struct nats_outcome *p = c->outcomes; p; p = p->next)
            pending++;
        c->last_warn_ms = now;
        LOG(LOG_WARN,
            "JetStream did not store the move outcome (is there a stream for its subject? see "
            "the README); it is kept in the journal and published again until a stream does",
            LF_S("subject", c->outcome_subject), LF_S("move", o->move_id),
            LF_S("error", e->text ? e->text : ""), LF_U("pending", pending));
    }
}

/* --- the loop's side of the queue ------------------------------------------------------------ */

static void nc_handle(struct nats_client *c, struct nats_event *e)
{
    switch (e->kind) {
    case EV_MSG:
        /* Handed over before this run stopped serving: the run that serves
         * now takes the next ones. */
        if (!c->serving)
            LOG(LOG_DEBUG, "request dropped: this run does not serve the agent_id",
                LF_S("subject", e->subject));
        else if (c->base.state != CONN_CLOSED)
            nc_deliver(c, e);
        break;
    case EV_PRESENCE:
        nc_on_presence(c, e);
        break;
    case EV_CONNECT_DONE:
        if (!e->nc) {
            nc_log_failure(c, e, "cannot connect to NATS; retrying");
            if (c->base.state == CONN_CLOSING) {
                nc_helper_task(c, false, true);
                break;
            }
            nc_restart_later(c);
            break;
        }
        c->nc = e->nc;
        c->had_nc = true;
        if (c->base.state == CONN_CLOSING) {
            nc_helper_task(c, false, true);
            break;
        }
        nc_subscribe(c);
        if (e->status == NATS_OK) {
            nc_connected(c, "connected to NATS");
        } else {
            nc_log_failure(c, e, "cannot reach a NATS server yet; retrying");
            nc_enter(c, CONN_BACKOFF);
        }
        break;
    case EV_CONNECTED:
    case EV_RECONNECTED:
        c->restarts = 0;
        nc_connected(c, e->kind == EV_CONNECTED ? "connected to NATS" : "reconnected to NATS");
        break;
    case EV_DISCONNECTED:
        c->claiming = false; /* claimed again at the reconnect */
        uv_timer_stop(&c->claim_timer);
        if (c->base.state == CONN_UP || c->base.state == CONN_HELLO ||
            c->base.state == CONN_DUPLICATE || c->base.state == CONN_CONNECTING) {
            nc_log_failure(c, e, "lost the NATS server; trying the others");
            nc_enter(c, CONN_BACKOFF);
        }
        break;
    case EV_CLOSED:
        c->got_closed = true;
        if (c->base.state == CONN_CLOSING) {
            if (c->helper_done)
                nc_finish_close(c);
        } else if (c->base.state != CONN_CLOSED) {
            nc_log_failure(c, e, "the NATS connection was closed; starting over");
            nc_restart_later(c);
        }
        break;
    case EV_ERROR:
        if (nc_is_auth(e))
            nc_log_failure(c, e, "");
        else
            LOG(LOG_WARN, "NATS error", LF_S("error", e->text ? e->text : ""));
        break;
    case EV_FLUSHED:
        c->base.last_pong_wall_ms = util_wall_ms();
        while (c->unacked_head && c->unacked_head->gen <= e->gen) {
            struct nats_out *m = c->unacked_head;
            c->unacked_head = m->next;
            if (!c->unacked_head)
                c->unacked_tail = NULL;
            if (c->base.ops->acked)
                c->base.ops->acked(&c->base, m->ack_key);
            out_free(m);
        }
        if (c->base.state == CONN_CLOSING && !c->unacked_head)
            nc_helper_task(c, false, true);
        break;
    case EV_PUBACK:
        nc_on_puback_event(c, e);
        break;
    case EV_HELPER_DONE:
        c->helper_done = true;
        if (c->base.state == CONN_CLOSING && (!c->had_nc || c->got_closed))
            nc_finish_close(c);
        break;
    }
}

static void nc_on_wake(uv_async_t *a)
{
    struct nats_client *c = a->data;
    struct nats_event *e;
    unsigned dropped;
    nc_apply_adapter(c);
    uv_mutex_lock(&c->lock);
    e = c->ev_head;
    c->ev_head = c->ev_tail = NULL;
    c->ev_msgs = 0;
    dropped = c->ev_dropped;
    c->ev_dropped = 0;
    uv_mutex_unlock(&c->lock);
    if (dropped)
        LOG(LOG_WARN, "messages dropped: the agent did not keep up with NATS",
            LF_U("dropped", dropped));
    while (e) {
        struct nats_event *next = e->next;
        nc_handle(c, e);
        nc_free_event(e);
        e = next;
    }
}

/* --- the transport interface ----------------------------------------------------------------- */

static void nc_start(struct transport *t)
{
    struct nats_client *c = (struct nats_client *)t;
    if (c->base.state != CONN_IDLE)
        return;
    nc_enter(c, CONN_CONNECTING);
    LOG(LOG_INFO, "connecting to NATS", LF_S("servers", c->cfg->nats_servers_raw),
        LF_S("subjects", c->prefix));
    nc_helper_task(c, true, false);
    uv_timer_start(&c->presence_timer, nc_on_presence_timer, c->cfg->heartbeat_interval_ms,
                   c->cfg->heartbeat_interval_ms);
    if (uv_thread_create(&c->helper, nc_helper, c) != 0) {
        LOG0(LOG_ERROR, "cannot start the NATS helper thread");
        return;
    }
    c->helper_running = true;
}

static void nc_send(struct transport *t, const char *subject, cJSON *data,
                    const struct transport_send *how)
{
    struct nats_client *c = (struct nats_client *)t;
    struct nats_out *m;
    size_t sl;
    if (c->base.state == CONN_CLOSED || (!how->keep && !how->ack_key && c->base.state != CONN_UP)) {
        cJSON_Delete(data);
        return;
    }
    m = xcalloc(1, sizeof *m);
    sl = strlen(c->prefix) + strlen(subject) + 1;
    m->subject = xmalloc(sl);
    util_fmt(m->subject, sl, "%s%s", how->reply ? "" : c->prefix, subject);
    m->merge_key = how->merge_key ? xstrdup(how->merge_key) : NULL;
    m->ack_key = how->ack_key ? xstrdup(how->ack_key) : NULL;
    m->keep = how->keep || how->ack_key;
    m->body = cJSON_PrintUnformatted(data);
    cJSON_Delete(data);
    if (!m->body)
        util_oom(0);
    m->len = strlen(m->body);
    if (c->base.state == CONN_UP && !c->head && nc_publish(c, m)) {
        nc_after_publish(c, m);
        return;
    }
    nc_queue(c, m);
}

static void nc_outcome(struct transport *t, const char *move_id, uint64_t accepted_ms,
                       const char *answer, const char *ack_key)
{
    struct nats_client *c = (struct nats_client *)t;
    struct nats_outcome *o, **pp;
    char msg_id[sizeof c->prefix + MOVE_ID_MAX + 32];
    if (!c->cfg->nats_jetstream || c->base.state == CONN_CLOSED)
        return;
    util_fmt(msg_id, sizeof msg_id, "%s:%s:%llu", c->cfg->agent_id, move_id,
             (unsigned long long)accepted_ms);
    for (pp = &c->outcomes; *pp && strcmp((*pp)->msg_id, msg_id) != 0; pp = &(*pp)->next)
        ;
    if (*pp) {
        o = *pp;
        free(o->body);
        free(o->ack_key);
    } else {
        o = xcalloc(1, sizeof *o);
        o->move_id = xstrdup(move_id);
        o->msg_id = xstrdup(msg_id);
        *pp = o;
    }
    o->body = xstrdup(answer);
    o->ack_key = ack_key ? xstrdup(ack_key) : NULL;
    o->next_try_ms = 0;
    nc_try_outcomes(c);
}

static void nc_on_close_timer(uv_timer_t *t)
{
    struct nats_client *c = t->data;
    if (c->base.state != CONN_CLOSING)
        return;
    if (!c->helper_done)
        nc_helper_task(c, false, true);
    /* Still not closed a while later: nats.c did not call back; stop anyway. */
    if (c->helper_done || uv_timer_get_repeat(t) == 0) {
        uv_timer_start(t, nc_on_close_timer, NATS_CLOSE_WAIT_MS, NATS_CLOSE_WAIT_MS);
        return;
    }
    nc_finish_close(c);
}

static void nc_shutdown(struct transport *t)
{
    struct nats_client *c = (struct nats_client *)t;
    enum conn_state was = c->base.state;
    bool left;
    if (was == CONN_CLOSING || was == CONN_CLOSED)
        return;
    uv_timer_stop(&c->restart_timer);
    uv_timer_stop(&c->retry_timer);
    uv_timer_stop(&c->presence_timer);
    nc_enter(c, CONN_CLOSING);
    left = nc_leave(c, was);
    if (!c->helper_running) {
        nc_finish_close(c);
        return;
    }
    if ((was == CONN_UP && c->unacked_head) || left) {
        /* The last answers, and the goodbye to other runs of the agent_id:
         * wait (a while) for the flush that confirms them. */
        nc_request_flush(c, ++c->gen);
        uv_timer_start(&c->close_timer, nc_on_close_timer, NATS_CLOSE_WAIT_MS, 0);
        return;
    }
    nc_helper_task(c, false, true);
    uv_timer_start(&c->close_timer, nc_on_close_timer, NATS_CLOSE_WAIT_MS, NATS_CLOSE_WAIT_MS);
}

static void nc_handle_closed(uv_handle_t *h)
{
    struct nats_client *c = h->data;
    c->open_handles--;
}

static void nc_close(struct transport *t)
{
    struct nats_client *c = (struct nats_client *)t;
    c->base.state = CONN_CLOSED;
    /* The helper closes the connection if it has not yet; destroy() joins it. */
    if (c->helper_running)
        nc_helper_task(c, false, true);
    uv_mutex_lock(&c->lock);
    c->wake_open = false; /* nothing is sent on the handle after this */
    uv_mutex_unlock(&c->lock);
    if (c->poll) {
        uv_close((uv_handle_t *)c->poll, nc_poll_closed);
        c->poll = NULL;
    }
    if (c->open_handles > 0) {
        uv_close((uv_handle_t *)&c->wake, nc_handle_closed);
        uv_close((uv_handle_t *)&c->retry_timer, nc_handle_closed);
        uv_close((uv_handle_t *)&c->restart_timer, nc_handle_closed);
        uv_close((uv_handle_t *)&c->close_timer, nc_handle_closed);
        uv_close((uv_handle_t *)&c->presence_timer, nc_handle_closed);
        uv_close((uv_handle_t *)&c->claim_timer, nc_handle_closed);
    }
}

/* After uv_run returned: the helper has closed the connection; nats.c's
 * threads are waited for, then everything is freed. */
static void nc_destroy(struct transport *t)
{
    struct nats_client *c = (struct nats_client *)t;
    if (c->helper_running) {
        nc_helper_task(c, false, true);
        uv_thread_join(&c->helper);
        c->helper_running = false;
    }
    if (c->js)
        jsCtx_Destroy(c->js);
    if (c->sub_agent)
        natsSubscription_Destroy(c->sub_agent);
    if (c->sub_all)
        natsSubscription_Destroy(c->sub_all);
    if (c->sub_presence)
        natsSubscription_Destroy(c->sub_presence);
    if (c->sub_inbox)
        natsSubscription_Destroy(c->sub_inbox);
    if (c->h_nc)
        natsConnection_Destroy(c->h_nc);
    if (c->opts)
        natsOptions_Destroy(c->opts);
    if (c->probe_opts)
        natsOptions_Destroy(c->probe_opts);
    /* nats.c's own threads (delivery, timers, callbacks) end here. */
    (void)nats_CloseAndWait(NATS_CLOSE_WAIT_MS);
    while (c->ev_head) {
        struct nats_event *e = c->ev_head;
        c->ev_head = e->next;
        nc_free_event(e);
    }
    while (c->head) {
        struct nats_out *m = c->head;
        c->head = m->next;
        out_free(m);
    }
    while (c->unacked_head) {
        struct nats_out *m = c->unacked_head;
        c->unacked_head = m->next;
        out_free(m);
    }
    while (c->outcomes) {
        struct nats_outcome *o = c->outcomes;
        c->outcomes = o->next;
        outcome_free(o);
    }
    while (c->peers) {
        struct nats_peer *p = c->peers;
        c->peers = p->next;
        free(p);
    }
    if (c->lock_ready) {
        uv_cond_destroy(&c->cond);
        uv_mutex_destroy(&c->lock);
    }
    free(c);
}

const struct transport_impl nats_client_impl = {
    .name = "nats",
    .start = nc_start,
    .send = nc_send,
    .outcome = nc_outcome,
    .shutdown = nc_shutdown,
    .close = nc_close,
    .destroy = nc_destroy,
};

/* --- setting up ---------------------------------------------------------------------------- */

static int nc_status_err(natsStatus s, const char *what)
{
    if (s == NATS_OK)
        return 0;
    LOG(LOG_ERROR, "cannot set up NATS", LF_S("setting", what),
        LF_S("error", natsStatus_GetText(s)), LF_S("detail", nats_GetLastError(NULL)));
    return -EINVAL;
}

/* What the connection and its probe share: the servers, the name, TLS and
 * the credentials. */
static int nc_options_common(struct nats_client *c, natsOptions *o)
{
    const struct config *cfg = c->cfg;
    bool tls = false;
    char name[200];
    for (size_t i = 0; i < cfg->n_nats_servers; i++)
        tls |= strncmp(cfg->nats_servers[i], "tls://", 6) == 0;
    util_fmt(name, sizeof name, "hostagent %s", cfg->agent_id);
    if (nc_status_err(
            natsOptions_SetServers(o, (const char **)cfg->nats_servers, (int)cfg->n_nats_servers),
            "nats_servers") ||
        nc_status_err(natsOptions_SetName(o, name), "name"))
        return -EINVAL;
    if (tls && nc_status_err(natsOptions_SetSecure(o, true), "tls"))
        return -EINVAL;
    if (cfg->ca_file &&
        nc_status_err(natsOptions_LoadCATrustedCertificates(o, cfg->ca_file), "ca_file"))
        return -EINVAL;
    if (cfg->tls_insecure &&
        nc_status_err(natsOptions_SkipServerVerification(o, true), "tls_insecure"))
        return -EINVAL;
    if (cfg->nats_creds_file &&
        nc_status_err(natsOptions_SetUserCredentialsFromFiles(o, cfg->nats_creds_file, NULL),
                      "nats_creds_file"))
        return -EINVAL;
    if (cfg->nats_nkey_seed_file) {
        char pub[64];
        char why[160];
        if (nkey_public_from_seed_file(cfg->nats_nkey_seed_file, pub, sizeof pub, why,
                                       sizeof why) != 0) {
            LOG(LOG_ERROR, "cannot use nats_nkey_seed_file", LF_S("file", cfg->nats_nkey_seed_file),
                LF_S("reason", why));
            return -EINVAL;
        }
        if (nc_status_err(natsOptions_SetNKeyFromSeed(o, pub, cfg->nats_nkey_seed_file),
                          "nats_nkey_seed_file"))
            return -EINVAL;
    }
    if (cfg->nats_user &&
        nc_status_err(natsOptions_SetUserInfo(o, cfg->nats_user, cfg->nats_password), "nats_user"))
        return -EINVAL;
    if (cfg->token && nc_status_err(natsOptions_SetToken(o, cfg->token), "token"))
        return -EINVAL;
    return 0;
}

/* This run's identity on the presence subject: a random instance id (the
 * clock, pid and an address when the kernel has no randomness yet), the host
 * name, the start time; and the inbox its presence queries are answered on. */
static void nc_make_instance(struct nats_client *c)
{
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = util_wall_ms() ^ ((uint64_t)getpid() << 40) ^ (uint64_t)(uintptr_t)c;
    util_fmt(c->instance, sizeof c->instance, "%016llx", (unsigned long long)r);
    if (gethostname(c->hostname, sizeof c->hostname - 1) != 0)
        c->hostname[0] = '\0';
    c->started_ms = util_wall_ms();
    util_fmt(c->inbox, sizeof c->inbox, "_INBOX.hostagent-%s", c->instance);
}

int nats_client_init(struct nats_client *c, uv_loop_t *loop, const struct config *cfg,
                     const struct transport_ops *ops, void *owner)
{
    natsOptions *o;
    natsStatus s;

    memset(c, 0, sizeof *c);
    c->base.impl = &nats_client_impl;
    c->base.ops = ops;
    c->base.owner = owner;
    c->loop = loop;
    c->cfg = cfg;
    c->loop_thread = uv_thread_self();
    c->rnd = (uint32_t)rand();
    util_fmt(c->prefix, sizeof c->prefix, "%s.%s.", cfg->nats_subject_prefix, cfg->agent_id);
    util_fmt(c->all_prefix, sizeof c->all_prefix, "%s.all.", cfg->nats_subject_prefix);
    util_fmt(c->outcome_subject, sizeof c->outcome_subject, "%smove.outcome", c->prefix);
    util_fmt(c->presence_subject, sizeof c->presence_subject, "%sagent.presence", c->prefix);
    nc_make_instance(c);
    if (uv_mutex_init(&c->lock) != 0 || uv_cond_init(&c->cond) != 0)
        return -ENOMEM;
    c->lock_ready = true;
    uv_async_init(loop, &c->wake, nc_on_wake);
    c->wake.data = c;
    c->wake_open = true;
    uv_timer_init(loop, &c->retry_timer);
    uv_timer_init(loop, &c->restart_timer);
    uv_timer_init(loop, &c->close_timer);
    uv_timer_init(loop, &c->presence_timer);
    uv_timer_init(loop, &c->claim_timer);
    c->retry_timer.data = c->restart_timer.data = c->close_timer.data = c;
    c->presence_timer.data = c->claim_timer.data = c;
    c->open_handles = 6;

    s = natsOptions_Create(&c->opts);
    if (s != NATS_OK)
        return nc_status_err(s, "options");
    o = c->opts;
    if (nc_options_common(c, o) != 0 ||
        nc_status_err(natsOptions_SetMaxReconnect(o, -1), "reconnect") ||
        nc_status_err(natsOptions_SetCustomReconnectDelay(o, nc_reconnect_delay, c), "backoff") ||
        nc_status_err(natsOptions_SetRetryOnFailedConnect(o, true, nc_on_connected, c), "retry") ||
        nc_status_err(natsOptions_SetDisconnectedCB(o, nc_on_disconnected, c), "callbacks") ||
        nc_status_err(natsOptions_SetReconnectedCB(o, nc_on_reconnected, c), "callbacks") ||
        nc_status_err(natsOptions_SetClosedCB(o, nc_on_closed, c), "callbacks") ||
        nc_status_err(natsOptions_SetErrorHandler(o, nc_on_error, c), "callbacks") ||
        nc_status_err(natsOptions_SetPingInterval(o, (int64_t)cfg->ping_interval_ms), "pings") ||
        nc_status_err(natsOptions_SetMaxPingsOut(o, 3), "pings") ||
        nc_status_err(natsOptions_SetEventLoop(o, c, nats_client_ev_attach, nc_ev_read, nc_ev_write,
                                               nats_client_ev_detach),
                      "event loop"))
        return -EINVAL;
    /* The probe: one attempt, no retry, on nats.c's own threads (see
     * nc_probe). */
    s = natsOptions_Create(&c->probe_opts);
    if (s != NATS_OK)
        return nc_status_err(s, "options");
    o = c->probe_opts;
    if (nc_options_common(c, o) != 0 ||
        nc_status_err(natsOptions_SetAllowReconnect(o, false), "probe") ||
        nc_status_err(natsOptions_SetTimeout(o, NATS_PROBE_TIMEOUT_MS), "probe"))
        return -EINVAL;
    return 0;
}
