/* nats_presence.c: one agent per agent_id (loop).
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
#include "nats_internal.h"
#include "log.h"
#include "move_state.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define NATS_CLAIM_WAIT_MS 2000u        /* the answers to a presence query are awaited this long */
#define NATS_CONFLICT_LOG_GAP_MS 60000u /* another run on our agent_id: logged again this often */
#define NATS_PEERS_MAX 16u              /* other runs remembered; more are not */

/* This run's identity on the presence subject: a random instance id (the
 * clock, pid and an address when the kernel has no randomness yet), the host
 * name, the start time; and the inbox its presence queries are answered on. */
void nats_presence_init(struct nats_client *c)
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

void nats_presence_claim_stop(struct nats_client *c)
{
    c->claiming = false;
    uv_timer_stop(&c->claim_timer);
}

struct presence_rank {
    bool serving;
    uint64_t since, started;
    const char *instance;
};

/* Whether a has the agent_id before b (the order above). */
static bool presence_rank_before(const struct presence_rank *a, const struct presence_rank *b)
{
    if (a->serving != b->serving)
        return a->serving;
    if (a->serving && a->since != b->since)
        return a->since < b->since;
    if (a->started != b->started)
        return a->started < b->started;
    return strcmp(a->instance, b->instance) < 0;
}

static struct presence_rank presence_rank_self(const struct nats_client *c)
{
    return (struct presence_rank){c->serving, c->serving_since_ms, c->started_ms, c->instance};
}

static struct presence_rank presence_rank_peer(const struct nats_peer *p)
{
    return (struct presence_rank){p->serving, p->serving_since_ms, p->started_ms, p->instance};
}

/* The first run heard that has the agent_id before this one; NULL: none. */
static struct nats_peer *presence_better_peer(const struct nats_client *c)
{
    struct presence_rank me = presence_rank_self(c);
    for (struct nats_peer *p = c->peers; p; p = p->next) {
        struct presence_rank r = presence_rank_peer(p);
        if (presence_rank_before(&r, &me))
            return p;
    }
    return NULL;
}

/* This run's announcement: on the presence subject (to NULL) or to a
 * query's reply subject; query: with this run's inbox as its reply subject,
 * for every other run to answer. */
void nats_presence_send(struct nats_client *c, const char *to, bool query, bool leaving)
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
static void presence_conflict_log(struct nats_client *c)
{
    const struct nats_peer *better = presence_better_peer(c), *p = better ? better : c->peers;
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
static void presence_take_requests(struct nats_client *c)
{
    char subj[sizeof c->prefix + 32];
    const char *queue = c->cfg->agent_id;
    natsStatus s;
    util_fmt(subj, sizeof subj, "%sserver.*", c->prefix);
    s = natsConnection_QueueSubscribe(&c->sub_agent, c->nc, subj, queue, nats_events_on_msg, c);
    if (s == NATS_OK) {
        util_fmt(subj, sizeof subj, "%sserver.move_status", c->all_prefix);
        s = natsConnection_QueueSubscribe(&c->sub_all, c->nc, subj, queue, nats_events_on_msg, c);
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
 * dropped on the loop (nc_handle, nats_client.c): another run answers the next ones. */
static void presence_drop_requests(struct nats_client *c)
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

static void presence_listen(struct nats_client *c)
{
    natsStatus s;
    if (c->sub_presence || !c->nc)
        return;
    s = natsConnection_Subscribe(&c->sub_presence, c->nc, c->presence_subject,
                                 nats_events_on_presence_msg, c);
    if (s != NATS_OK)
        LOG(s == NATS_CONNECTION_CLOSED ? LOG_DEBUG : LOG_ERROR,
            "cannot subscribe to the agent_id's presence subject",
            LF_S("subject", c->presence_subject), LF_S("error", natsStatus_GetText(s)));
}

/* Another run has the agent_id before this one: serve no more (or not). The
 * announcement that says so goes out after the unsubscribe, on the same
 * connection: whoever receives it knows the server no longer hands this run
 * a request. */
static void presence_yield(struct nats_client *c)
{
    nats_presence_claim_stop(c);
    presence_drop_requests(c);
    c->yielded = true;
    presence_listen(c);
    transport_enter(&c->base, CONN_DUPLICATE);
    presence_conflict_log(c);
    nats_presence_send(c, NULL, false, false);
}

/* No other run has the agent_id before this one: take its requests, then
 * hello and what was held. */
static void presence_serve(struct nats_client *c)
{
    presence_take_requests(c);
    LOG(c->yielded ? LOG_WARN : LOG_INFO,
        c->yielded ? "serving the agent_id's requests: no other hostagent serves it any more"
                   : "serving the agent_id's requests",
        LF_S("agent_id", c->cfg->agent_id), LF_S("instance", c->instance));
    c->yielded = false;
    nats_presence_send(c, NULL, false, false);
    nats_publish_go_up(c);
}

static void presence_on_claim_timer(uv_timer_t *t);

/* Connected and not serving: asks who else runs with this agent_id. */
void nats_presence_claim(struct nats_client *c)
{
    if (!c->nc)
        return;
    if (c->base.state != CONN_HELLO)
        transport_enter(&c->base, CONN_HELLO);
    c->claiming = true;
    nats_presence_send(c, NULL, true, false);
    presence_listen(c); /* after the query: see above */
    uv_timer_start(&c->claim_timer, presence_on_claim_timer, NATS_CLAIM_WAIT_MS, 0);
}

/* The answers are in ("no responders", or the wait is over): serve, or not. */
static void presence_claim_end(struct nats_client *c)
{
    if (!c->claiming)
        return;
    nats_presence_claim_stop(c);
    if (c->base.state != CONN_HELLO || !c->nc)
        return;
    if (presence_better_peer(c)) {
        presence_yield(c);
        return;
    }
    presence_serve(c);
}

static void presence_on_claim_timer(uv_timer_t *t)
{
    presence_claim_end(t->data);
}

static void presence_peer_unlink(struct nats_client *c, struct nats_peer *p, const char *why)
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
static void presence_maybe_reclaim(struct nats_client *c)
{
    if (c->base.state == CONN_DUPLICATE && !presence_better_peer(c))
        nats_presence_claim(c);
}

static uint64_t presence_json_u64(const cJSON *o, const char *key, bool *ok)
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
void nats_presence_on_event(struct nats_client *c, const struct nats_event *e)
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
        presence_claim_end(c);
        return;
    }
    d = cJSON_ParseWithLength(e->data, e->len);
    id = cJSON_GetObjectItemCaseSensitive(d, "agentId");
    inst = cJSON_GetObjectItemCaseSensitive(d, "instance");
    host = cJSON_GetObjectItemCaseSensitive(d, "hostname");
    serving = cJSON_GetObjectItemCaseSensitive(d, "serving");
    started = presence_json_u64(d, "startedAtMs", &ok);
    since = cJSON_IsTrue(serving) ? presence_json_u64(d, "servingSinceMs", &ok) : 0;
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
            presence_peer_unlink(c, p, "the other hostagent with this agent_id stopped");
        presence_maybe_reclaim(c);
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
    p->pid = (long long)presence_json_u64(d, "pid", &pid_ok); /* for the log only: 0 if absent */
    p->started_ms = started;
    p->serving = cJSON_IsTrue(serving);
    p->serving_since_ms = since;
    p->heard_ms = util_mono_ms();
    cJSON_Delete(d);
    /* A query is answered; a run not known yet learns of this one. */
    if (e->reply)
        nats_presence_send(c, e->reply, false, false);
    else if (fresh && c->sub_presence)
        nats_presence_send(c, NULL, false, false);
    if (!fresh && was_serving && !p->serving)
        LOG(LOG_INFO, "the other hostagent with this agent_id does not serve it any more",
            LF_S("other_instance", p->instance));
    if ((c->serving || c->claiming) && presence_better_peer(c)) {
        presence_yield(c);
        return;
    }
    if (fresh)
        presence_conflict_log(c);
    presence_maybe_reclaim(c);
}

/* Every heartbeat_interval: this run's announcement, runs no longer heard
 * forgotten, the conflict logged again while it lasts. */
static void presence_on_timer(uv_timer_t *t)
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
            presence_peer_unlink(c, p,
                                 "the other hostagent with this agent_id is not heard any more");
    }
    if (c->sub_presence && (c->base.state == CONN_UP || c->base.state == CONN_DUPLICATE))
        nats_presence_send(c, NULL, false, false);
    if (c->base.state == CONN_DUPLICATE && !presence_better_peer(c)) {
        nats_presence_claim(c);
        return;
    }
    if (c->peers && now - c->last_conflict_log_ms >= NATS_CONFLICT_LOG_GAP_MS)
        presence_conflict_log(c);
}

/* At a stop: tells the other runs that this one goes (one that waits for the
 * agent_id takes it at once) and stops listening for them. True when the
 * message went out (a flush should carry it before the close). */
bool nats_presence_leave(struct nats_client *c, enum conn_state was)
{
    if (!c->nc || (was != CONN_UP && was != CONN_DUPLICATE && was != CONN_HELLO))
        return false;
    nats_presence_claim_stop(c);
    nats_presence_send(c, NULL, false, true);
    if (c->sub_presence) {
        (void)natsSubscription_Unsubscribe(c->sub_presence);
        natsSubscription_Destroy(c->sub_presence);
        c->sub_presence = NULL;
    }
    return true;
}

void nats_presence_subscribe_inbox(struct nats_client *c)
{
    natsStatus s;
    s = natsConnection_Subscribe(&c->sub_inbox, c->nc, c->inbox, nats_events_on_presence_msg, c);
    if (s != NATS_OK)
        LOG(s == NATS_CONNECTION_CLOSED ? LOG_DEBUG : LOG_ERROR,
            "cannot subscribe to the agent's inbox", LF_S("subject", c->inbox),
            LF_S("error", natsStatus_GetText(s)));
}

void nats_presence_forget_connection(struct nats_client *c)
{
    presence_drop_requests(c);
    if (c->sub_presence)
        natsSubscription_Destroy(c->sub_presence);
    if (c->sub_inbox)
        natsSubscription_Destroy(c->sub_inbox);
    c->sub_presence = c->sub_inbox = NULL;
    nats_presence_claim_stop(c);
}

void nats_presence_start(struct nats_client *c)
{
    uv_timer_start(&c->presence_timer, presence_on_timer, c->cfg->heartbeat_interval_ms,
                   c->cfg->heartbeat_interval_ms);
}

void nats_presence_free_peers(struct nats_client *c)
{
    while (c->peers) {
        struct nats_peer *p = c->peers;
        c->peers = p->next;
        free(p);
    }
}
