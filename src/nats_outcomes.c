/* nats_outcomes.c: moves' outcomes stored through JetStream (with
 * nats_jetstream). Each outcome is published on <prefix>.<agent_id>.move.outcome
 * with its Nats-Msg-Id (struct nats_outcome), again until JetStream's PubAck
 * says a stream stored it; that PubAck acknowledges it to the agent (its
 * ack_key). nats.c hands the PubAck over on its thread (as EV_PUBACK); the
 * rest runs on the loop. */
#include "nats_internal.h"
#include "log.h"
#include "move_state.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

#define NATS_PUBACK_WAIT_MS 5000 /* JetStream's PubAck; then the outcome is sent again */

static void outcome_free(struct nats_outcome *o)
{
    free(o->move_id);
    free(o->msg_id);
    free(o->body);
    free(o->ack_key);
    free(o);
}

/* The link that holds the outcome of this Nats-Msg-Id, or the list's end. */
static struct nats_outcome **outcomes_find(struct nats_client *c, const char *msg_id)
{
    struct nats_outcome **pp;
    for (pp = &c->outcomes; *pp && strcmp((*pp)->msg_id, msg_id) != 0; pp = &(*pp)->next)
        ;
    return pp;
}

/* nats.c's thread: JetStream's answer (or its time-out) for one outcome. */
static void outcomes_on_puback(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae,
                               void *closure)
{
    struct nats_event *e = nats_events_new(EV_PUBACK);
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
        nats_events_post(closure, e);
    else
        nats_events_free(e);
}

void nats_outcomes_attach(struct nats_client *c)
{
    natsStatus s;
    jsOptions jo;
    if (!c->cfg->nats_jetstream || c->js)
        return;
    jsOptions_Init(&jo);
    jo.PublishAsync.AckHandler = outcomes_on_puback;
    jo.PublishAsync.AckHandlerClosure = c;
    s = natsConnection_JetStream(&c->js, c->nc, &jo);
    if (s != NATS_OK)
        LOG(LOG_ERROR, "cannot create the JetStream context", LF_S("error", natsStatus_GetText(s)));
}

static void outcomes_on_retry_timer(uv_timer_t *t)
{
    nats_outcomes_try(t->data);
}

void nats_outcomes_try(struct nats_client *c)
{
    uint64_t now = util_mono_ms();
    if (!c->outcomes) {
        uv_timer_stop(&c->retry_timer);
        return;
    }
    if (!uv_is_active((uv_handle_t *)&c->retry_timer) && c->open_handles > 0)
        uv_timer_start(&c->retry_timer, outcomes_on_retry_timer, 500, 500);
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

void nats_outcomes_on_puback(struct nats_client *c, const struct nats_event *e)
{
    struct nats_outcome **pp, *o;
    uint64_t now = util_mono_ms();
    pp = outcomes_find(c, e->subject);
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

void nats_outcomes_put(struct nats_client *c, const char *move_id, uint64_t accepted_ms,
                       const char *answer, const char *ack_key)
{
    struct nats_outcome *o, **pp;
    char msg_id[sizeof c->prefix + MOVE_ID_MAX + 32];
    if (!c->cfg->nats_jetstream || c->base.state == CONN_CLOSED)
        return;
    util_fmt(msg_id, sizeof msg_id, "%s:%s:%llu", c->cfg->agent_id, move_id,
             (unsigned long long)accepted_ms);
    pp = outcomes_find(c, msg_id);
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
    nats_outcomes_try(c);
}

void nats_outcomes_free_all(struct nats_client *c)
{
    while (c->outcomes) {
        struct nats_outcome *o = c->outcomes;
        c->outcomes = o->next;
        outcome_free(o);
    }
}
