/* nats_publish.c: what the agent publishes on its subjects (loop): a
 * message goes out at once while the connection is up, else it is held
 * (intermediate frames merged like on WebSocket); on the way up, hello
 * first, then what was held. Without JetStream a message with an ack_key
 * waits, published, for the helper's flush that proves the server got it
 * (EV_FLUSHED), and is published again on the next connection otherwise. */
#include "nats_internal.h"
#include "log.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

static void out_free(struct nats_out *m)
{
    free(m->subject);
    free(m->merge_key);
    free(m->ack_key);
    free(m->body);
    free(m);
}

/* Frees m and every message after it. */
static void out_free_list(struct nats_out *m)
{
    while (m) {
        struct nats_out *next = m->next;
        out_free(m);
        m = next;
    }
}

void nats_publish_free_all(struct nats_client *c)
{
    out_free_list(c->head);
    out_free_list(c->unacked_head);
    c->head = c->tail = NULL;
    c->unacked_head = c->unacked_tail = NULL;
}

/* The two queues of messages (held: c->head/tail; published, not yet known
 * to have arrived: c->unacked_head/tail) are singly linked with a tail. */
static void out_append(struct nats_out **head, struct nats_out **tail, struct nats_out *m)
{
    m->next = NULL;
    if (*tail)
        (*tail)->next = m;
    else
        *head = m;
    *tail = m;
}

/* Takes the first message off a queue (not empty). */
static struct nats_out *out_pop(struct nats_out **head, struct nats_out **tail)
{
    struct nats_out *m = *head;
    *head = m->next;
    if (!*head)
        *tail = NULL;
    return m;
}

/* m's body: data printed (taken). */
static void out_set_body(struct nats_out *m, cJSON *data)
{
    m->body = cJSON_PrintUnformatted(data);
    cJSON_Delete(data);
    if (!m->body)
        util_oom(0);
    m->len = strlen(m->body);
}

/* Publishes one message now; false when nats.c refused it (not connected). */
static bool publish_now(struct nats_client *c, struct nats_out *m)
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
static void publish_after(struct nats_client *c, struct nats_out *m)
{
    if (!m->ack_key || c->cfg->nats_jetstream) {
        out_free(m);
        return;
    }
    m->gen = ++c->gen;
    out_append(&c->unacked_head, &c->unacked_tail, m);
    nats_helper_request_flush(c, m->gen);
}

static void publish_hold(struct nats_client *c, struct nats_out *m)
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
    out_append(&c->head, &c->tail, m);
}

void nats_publish_send(struct nats_client *c, const char *subject, cJSON *data,
                       const struct transport_send *how)
{
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
    out_set_body(m, data);
    if (c->base.state == CONN_UP && !c->head && publish_now(c, m)) {
        publish_after(c, m);
        return;
    }
    publish_hold(c, m);
}

/* Serving and connected: hello first, then what was held. */
void nats_publish_go_up(struct nats_client *c)
{
    struct nats_out *hello;
    cJSON *d;
    d = c->base.ops->hello(&c->base);
    hello = xcalloc(1, sizeof *hello);
    hello->subject = xmalloc(sizeof c->prefix + 16);
    util_fmt(hello->subject, sizeof c->prefix + 16, "%sagent.hello", c->prefix);
    out_set_body(hello, d);
    if (!publish_now(c, hello)) {
        out_free(hello);
        transport_enter(&c->base, CONN_BACKOFF);
        return;
    }
    out_free(hello);
    transport_enter(&c->base, CONN_UP);
    while (c->head && c->base.state == CONN_UP) {
        if (!publish_now(c, c->head))
            break;
        publish_after(c, out_pop(&c->head, &c->tail));
    }
    nats_outcomes_try(c);
}

void nats_publish_flushed(struct nats_client *c, uint64_t gen)
{
    while (c->unacked_head && c->unacked_head->gen <= gen) {
        struct nats_out *m = out_pop(&c->unacked_head, &c->unacked_tail);
        if (c->base.ops->acked)
            c->base.ops->acked(&c->base, m->ack_key);
        out_free(m);
    }
}

void nats_publish_requeue_unacked(struct nats_client *c)
{
    if (c->unacked_head) {
        c->unacked_tail->next = c->head;
        if (!c->head)
            c->tail = c->unacked_tail;
        c->head = c->unacked_head;
        c->unacked_head = c->unacked_tail = NULL;
    }
}
