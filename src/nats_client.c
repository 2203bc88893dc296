/* nats_client.c: the agent on NATS, its transport face and the connection's
 * state machine (loop): start, connect (through the helper thread), claim
 * the agent_id, up; on a loss nats.c fails over across the cluster by
 * itself, and when it gives a connection up, a new one after a backoff; the
 * events nats.c's threads hand over are handled here, requests delivered as
 * the WebSocket's frames; the stop, the close and the teardown.
 *
 * Below it (include/nats_internal.h): nats_presence.c (one agent per
 * agent_id), nats_publish.c (what goes out), nats_outcomes.c (JetStream),
 * nats_options.c (servers, TLS, credentials), nats_helper.c (the blocking
 * calls, on a thread of ours), nats_events.c (nats.c's callbacks, the queue
 * to the loop) and nats_adapter.c (nats.c's socket on our libuv loop). */
#include "nats_internal.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        transport_enter(&c->base, CONN_CONNECTING);
    transport_enter(&c->base, CONN_HELLO);
    (void)natsConnection_GetConnectedUrl(c->nc, url, sizeof url);
    LOG(LOG_INFO, how, LF_S("server", url));
    c->base.last_pong_wall_ms = util_wall_ms();
    /* Written but not known to have arrived: sent again, first. */
    nats_publish_requeue_unacked(c);
    if (!c->serving) {
        nats_presence_claim(c);
        return;
    }
    nats_presence_send(c, NULL, true, false);
    nats_publish_go_up(c);
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
    nats_presence_subscribe_inbox(c);
    nats_outcomes_attach(c);
}

static void nc_finish_close(struct nats_client *c)
{
    uv_timer_stop(&c->close_timer);
    transport_enter(&c->base, CONN_CLOSED);
}

static void nc_on_restart_timer(uv_timer_t *t)
{
    struct nats_client *c = t->data;
    if (c->base.state == CONN_CLOSING || c->base.state == CONN_CLOSED)
        return;
    transport_enter(&c->base, CONN_CONNECTING);
    nats_helper_task(c, true, false);
}

/* nats.c closed the connection by itself (e.g. refused credentials twice):
 * start over after a backoff, forever (and claim the agent_id again). */
static void nc_restart_later(struct nats_client *c)
{
    uint64_t delay =
        transport_backoff_delay(c->cfg->reconnect_min_ms, c->cfg->reconnect_max_ms, c->restarts++,
                                (double)rand() / ((double)RAND_MAX + 1));
    nats_presence_forget_connection(c);
    if (c->js)
        jsCtx_Destroy(c->js);
    c->js = NULL;
    c->nc = NULL; /* the helper destroys it before connecting again */
    if (c->base.state != CONN_BACKOFF)
        transport_enter(&c->base, CONN_BACKOFF);
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
        nats_presence_on_event(c, e);
        break;
    case EV_CONNECT_DONE:
        if (!e->nc) {
            nc_log_failure(c, e, "cannot connect to NATS; retrying");
            if (c->base.state == CONN_CLOSING) {
                nats_helper_task(c, false, true);
                break;
            }
            nc_restart_later(c);
            break;
        }
        c->nc = e->nc;
        c->had_nc = true;
        if (c->base.state == CONN_CLOSING) {
            nats_helper_task(c, false, true);
            break;
        }
        nc_subscribe(c);
        if (e->status == NATS_OK) {
            nc_connected(c, "connected to NATS");
        } else {
            nc_log_failure(c, e, "cannot reach a NATS server yet; retrying");
            transport_enter(&c->base, CONN_BACKOFF);
        }
        break;
    case EV_CONNECTED:
    case EV_RECONNECTED:
        c->restarts = 0;
        nc_connected(c, e->kind == EV_CONNECTED ? "connected to NATS" : "reconnected to NATS");
        break;
    case EV_DISCONNECTED:
        nats_presence_claim_stop(c); /* claimed again at the reconnect */
        if (c->base.state == CONN_UP || c->base.state == CONN_HELLO ||
            c->base.state == CONN_DUPLICATE || c->base.state == CONN_CONNECTING) {
            nc_log_failure(c, e, "lost the NATS server; trying the others");
            transport_enter(&c->base, CONN_BACKOFF);
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
        nats_publish_flushed(c, e->gen);
        if (c->base.state == CONN_CLOSING && !c->unacked_head)
            nats_helper_task(c, false, true);
        break;
    case EV_PUBACK:
        nats_outcomes_on_puback(c, e);
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
    nats_adapter_apply(c);
    e = nats_events_take(c, &dropped);
    if (dropped)
        LOG(LOG_WARN, "messages dropped: the agent did not keep up with NATS",
            LF_U("dropped", dropped));
    while (e) {
        struct nats_event *next = e->next;
        nc_handle(c, e);
        nats_events_free(e);
        e = next;
    }
}

/* --- the transport interface ----------------------------------------------------------------- */

static void nc_start(struct transport *t)
{
    struct nats_client *c = (struct nats_client *)t;
    if (c->base.state != CONN_IDLE)
        return;
    transport_enter(&c->base, CONN_CONNECTING);
    LOG(LOG_INFO, "connecting to NATS", LF_S("servers", c->cfg->nats_servers_raw),
        LF_S("subjects", c->prefix));
    nats_helper_task(c, true, false);
    nats_presence_start(c);
    nats_helper_start(c);
}

static void nc_send(struct transport *t, const char *subject, cJSON *data,
                    const struct transport_send *how)
{
    nats_publish_send((struct nats_client *)t, subject, data, how);
}

static void nc_outcome(struct transport *t, const char *move_id, uint64_t accepted_ms,
                       const char *answer, const char *ack_key)
{
    nats_outcomes_put((struct nats_client *)t, move_id, accepted_ms, answer, ack_key);
}

static void nc_on_close_timer(uv_timer_t *t)
{
    struct nats_client *c = t->data;
    if (c->base.state != CONN_CLOSING)
        return;
    if (!c->helper_done)
        nats_helper_task(c, false, true);
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
    transport_enter(&c->base, CONN_CLOSING);
    left = nats_presence_leave(c, was);
    if (!c->helper_running) {
        nc_finish_close(c);
        return;
    }
    if ((was == CONN_UP && c->unacked_head) || left) {
        /* The last answers, and the goodbye to other runs of the agent_id:
         * wait (a while) for the flush that confirms them. */
        nats_helper_request_flush(c, ++c->gen);
        uv_timer_start(&c->close_timer, nc_on_close_timer, NATS_CLOSE_WAIT_MS, 0);
        return;
    }
    nats_helper_task(c, false, true);
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
        nats_helper_task(c, false, true);
    uv_mutex_lock(&c->lock);
    c->wake_open = false; /* nothing is sent on the handle after this */
    uv_mutex_unlock(&c->lock);
    nats_adapter_forget(c);
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
    nats_helper_stop(c);
    if (c->js)
        jsCtx_Destroy(c->js);
    natsSubscription *subs[] = {c->sub_agent, c->sub_all, c->sub_presence, c->sub_inbox};
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++)
        if (subs[i])
            natsSubscription_Destroy(subs[i]);
    if (c->h_nc)
        natsConnection_Destroy(c->h_nc);
    if (c->opts)
        natsOptions_Destroy(c->opts);
    if (c->probe_opts)
        natsOptions_Destroy(c->probe_opts);
    /* nats.c's own threads (delivery, timers, callbacks) end here. */
    (void)nats_CloseAndWait(NATS_CLOSE_WAIT_MS);
    nats_events_free_all(c);
    nats_publish_free_all(c);
    nats_outcomes_free_all(c);
    nats_presence_free_peers(c);
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

int nats_client_init(struct nats_client *c, uv_loop_t *loop, const struct config *cfg,
                     const struct transport_ops *ops, void *owner)
{
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
    nats_presence_init(c);
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
    return nats_options_make(c);
}
