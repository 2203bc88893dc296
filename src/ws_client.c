/* ws_client.c: the manager connection: libwebsockets client on our libuv loop. */
#include "ws_client.h"
#include "log.h"
#include "protocol.h"
#include "util.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <malloc.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

#define UP_RESET_MS 30000 /* the backoff resets only after this long up */
#define FAIL_LOG_GAP_MS 60000

bool ws_client_state_may_follow(enum conn_state from, enum conn_state to)
{
    switch (to) {
    case CONN_IDLE:
        return false;
    case CONN_CONNECTING:
        return from == CONN_IDLE || from == CONN_BACKOFF;
    case CONN_HELLO:
        return from == CONN_CONNECTING;
    case CONN_UP:
        return from == CONN_HELLO;
    case CONN_DUPLICATE:
        return false; /* NATS only */
    case CONN_BACKOFF:
        return from == CONN_CONNECTING || from == CONN_HELLO || from == CONN_UP;
    case CONN_CLOSING:
    case CONN_CLOSED:
        return from != CONN_CLOSED;
    }
    return false;
}

/* Logs and takes a state change the state machine allows; refuses any other
 * (a bug: asserted in debug builds, logged and ignored otherwise). */
static void enter_state(struct ws_client *c, enum conn_state next)
{
    if (c->base.state == next)
        return;
    if (!ws_client_state_may_follow(c->base.state, next)) {
        LOG(LOG_ERROR, "refused a connection state change the state machine does not allow",
            LF_S("from", transport_state_name(c->base.state)),
            LF_S("to", transport_state_name(next)));
        assert(!"connection state change not allowed");
        return;
    }
    transport_enter(&c->base, next);
}

/* --- queue --------------------------------------------------------------- */

/* A manager that sends requests without reading the answers: past this many
 * queued messages, or this many queued bytes (one status answer can be near
 * 1 MiB: a count alone does not bound memory), we stop reading its requests
 * (TCP then pushes back on it), and read again once the queue is down to
 * both low marks. */
#define WS_QUEUE_HIGH 2048u
#define WS_QUEUE_LOW 512u
#define WS_QUEUE_HIGH_BYTES (8u << 20)
#define WS_QUEUE_LOW_BYTES (2u << 20)

/* Queue accounting: every message in (n = 1) or out (n = -1) of the
 * to-be-written queue goes through here. */
static void queue_count(struct ws_client *c, const struct ws_msg *m, int n)
{
    if (n > 0) {
        c->queued++;
        c->queued_bytes += m->len;
        if (c->queued_bytes > c->queued_bytes_peak)
            c->queued_bytes_peak = c->queued_bytes;
    } else {
        assert(c->queued > 0 && c->queued_bytes >= m->len);
        c->queued--;
        c->queued_bytes -= m->len;
    }
}

static bool queue_full(const struct ws_client *c)
{
    return c->queued >= WS_QUEUE_HIGH || c->queued_bytes >= WS_QUEUE_HIGH_BYTES;
}

static bool queue_drained(const struct ws_client *c)
{
    return c->queued <= WS_QUEUE_LOW && c->queued_bytes <= WS_QUEUE_LOW_BYTES;
}

/* After a large backlog has been written, hand the freed memory back to the
 * system (glibc keeps freed heap otherwise: 326 MB stayed 267 MB). */
static void queue_give_back(struct ws_client *c)
{
    if (c->queued == 0 && c->queued_bytes_peak >= WS_QUEUE_LOW_BYTES) {
        c->queued_bytes_peak = 0;
        malloc_trim(0);
    }
}

static void msg_free(struct ws_msg *m)
{
    free(m->ack_key);
    free(m->merge_key);
    free(m->buf);
    free(m);
}

/* After a lost connection: what was written but never acknowledged goes
 * first again, in order, so it follows the next hello. */
static void queue_requeue_unacked(struct ws_client *c)
{
    if (!c->unacked_head)
        return;
    for (struct ws_msg *m = c->unacked_head; m; m = m->next)
        queue_count(c, m, 1);
    c->unacked_tail->next = c->head;
    if (!c->head)
        c->tail = c->unacked_tail;
    c->head = c->unacked_head;
    c->unacked_head = c->unacked_tail = NULL;
    c->ping_wanted = false;
}

static void queue_drop_unkept(struct ws_client *c)
{
    struct ws_msg **pp = &c->head;
    c->tail = NULL;
    while (*pp) {
        struct ws_msg *m = *pp;
        if (!m->keep) {
            *pp = m->next;
            queue_count(c, m, -1);
            msg_free(m);
        } else {
            c->tail = m;
            pp = &m->next;
        }
    }
}

void ws_client_send(struct ws_client *c, const char *json, size_t len, const char *merge_key,
                    bool keep, const char *ack_key)
{
    struct ws_msg *m;
    if (c->base.state == CONN_CLOSED)
        return;
    if (!keep && c->base.state != CONN_UP)
        return;
    if (merge_key) {
        /* The newer state replaces a queued one of the same move; it goes to
         * the tail so that this move's frames stay in seq order. */
        struct ws_msg **pp = &c->head, *prev = NULL;
        while (*pp) {
            if ((*pp)->merge_key && strcmp((*pp)->merge_key, merge_key) == 0) {
                struct ws_msg *old = *pp;
                *pp = old->next;
                if (c->tail == old)
                    c->tail = prev;
                queue_count(c, old, -1);
                msg_free(old);
                break;
            }
            prev = *pp;
            pp = &(*pp)->next;
        }
    }
    m = xcalloc(1, sizeof *m);
    m->merge_key = merge_key ? xstrdup(merge_key) : NULL;
    m->ack_key = ack_key ? xstrdup(ack_key) : NULL;
    m->keep = keep || ack_key;
    m->len = len;
    m->buf = xmalloc(LWS_PRE + len);
    memcpy(m->buf + LWS_PRE, json, len);
    if (c->tail)
        c->tail->next = m;
    else
        c->head = m;
    c->tail = m;
    queue_count(c, m, 1);
    if (c->wsi && c->base.state == CONN_UP)
        lws_callback_on_writable(c->wsi);
    if (c->wsi && !c->rx_paused && queue_full(c)) {
        LOG(LOG_WARN, "the manager is not reading; its requests wait until it does",
            LF_U("queued", c->queued), LF_U("queued_bytes", c->queued_bytes));
        lws_rx_flow_control(c->wsi, 0);
        c->rx_paused = true;
    }
}

/* --- connecting -------------------------------------------------------------- */

static void on_backoff_timer(uv_timer_t *t);

static bool host_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (strcmp(host, "localhost") == 0)
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return false;
}

/* A connection attempt ended (failed, or a connection was lost): back off. */
static void attempt_over(struct ws_client *c, const char *why)
{
    char reason[512];
    uint64_t now = util_mono_ms(), delay;
    bool was_up = c->base.state == CONN_UP || c->base.state == CONN_HELLO;
    /* lws' TLS errors are terse: say what to look at. */
    util_fmt(reason, sizeof reason, "%s%s", why,
             strstr(why, "SSL") ? "; the manager's certificate was not accepted (check ca_file, "
                                  "the certificate chain and its host name)"
                                : "");
    c->wsi = NULL;
    c->rx_len = 0;
    c->rx_overflow = false;
    c->rx_paused = false;
    free(c->hello_msg);
    c->hello_msg = NULL;
    queue_drop_unkept(c);
    queue_requeue_unacked(c);
    if (c->base.state == CONN_CLOSING || c->base.state == CONN_CLOSED) {
        enter_state(c, CONN_CLOSED);
        return;
    }
    if (was_up && now - c->up_since_ms >= UP_RESET_MS)
        c->attempt = 0;
    /* A name with several addresses (localhost: ::1 and 127.0.0.1) where
     * the first does not answer: the next attempt tries the next one. One
     * that worked stays in use. */
    if (!was_up)
        c->addr_turn++;
    delay = transport_backoff_delay(c->cfg->reconnect_min_ms, c->cfg->reconnect_max_ms, c->attempt,
                                    (double)rand() / ((double)RAND_MAX + 1.0));
    c->attempt++;
    /* The first failure is a warning; while the manager stays away, at most
     * one line a minute, so hours of downtime do not flood the journal. */
    if (was_up || c->last_fail_log_ms == 0 || now - c->last_fail_log_ms >= FAIL_LOG_GAP_MS) {
        LOG(LOG_WARN, was_up ? "connection lost" : "connection failed",
            LF_S("url", c->cfg->manager_url), LF_S("reason", reason), LF_U("retry_in_ms", delay),
            LF_U("failures_since_last_log", c->fails_unlogged));
        c->last_fail_log_ms = was_up ? 0 : now;
        c->fails_unlogged = 0;
    } else {
        c->fails_unlogged++;
        LOG(LOG_DEBUG, "connection failed", LF_S("reason", reason), LF_U("retry_in_ms", delay));
    }
    enter_state(c, CONN_BACKOFF);
    uv_timer_start(&c->backoff_timer, on_backoff_timer, delay, 0);
}

static void connect_to(struct ws_client *c)
{
    struct lws_client_connect_info ci;
    const struct config_url *u = &c->cfg->url;
    bool v6 = strchr(u->host, ':') != NULL;
    unsigned id;

    if ((u->tls && u->port != 443) || (!u->tls && u->port != 80))
        util_fmt(c->host_header, sizeof c->host_header, v6 ? "[%s]:%d" : "%s:%d", u->host, u->port);
    else
        util_fmt(c->host_header, sizeof c->host_header, v6 ? "[%s]" : "%s", u->host);
    if (c->cfg->token && !u->tls && !host_is_loopback(u->host))
        LOG(LOG_WARN, "the token is sent over unencrypted ws:// to a host that is not loopback",
            LF_S("url", c->cfg->manager_url));
    if (u->tls && c->cfg->tls_insecure)
        LOG(LOG_WARN, "tls_insecure is set: the manager's certificate is NOT verified",
            LF_S("url", c->cfg->manager_url));

    memset(&ci, 0, sizeof ci);
    ci.context = c->ctx;
    ci.address = c->addr;
    ci.port = u->port;
    ci.path = u->path;
    ci.host = c->host_header;
    ci.origin = c->host_header;
    ci.protocol = NULL; /* no subprotocol header */
    ci.local_protocol_name = "hostagent";
    ci.ietf_version_or_minus_one = -1;
    ci.retry_and_idle_policy = &c->retry;
    if (u->tls) {
        ci.ssl_connection = LCCSCF_USE_SSL;
        if (c->cfg->tls_insecure)
            ci.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
                                 LCCSCF_ALLOW_EXPIRED | LCCSCF_ALLOW_INSECURE;
    }
    id = ++c->attempt_id;
    c->attempt_reported = false;
    LOG(LOG_DEBUG, "connecting", LF_S("url", c->cfg->manager_url), LF_S("address", c->addr));
    if (!lws_client_connect_via_info(&ci) && c->attempt_id == id && !c->attempt_reported) {
        /* No callback comes for this failure: schedule the retry ourselves. */
        c->attempt_reported = true;
        attempt_over(c, "could not start the connection");
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct ws_client *c = container_of(req, struct ws_client, gai);
    struct addrinfo *ai;
    unsigned n, i;
    c->gai_pending = false;
    if (status == UV_ECANCELED || c->base.state != CONN_CONNECTING) {
        uv_freeaddrinfo(res);
        if (c->base.state == CONN_CLOSING)
            enter_state(c, CONN_CLOSED);
        return;
    }
    if (status != 0 || !res) {
        char why[160];
        util_fmt(why, sizeof why, "cannot resolve %s: %s", c->cfg->url.host, uv_strerror(status));
        uv_freeaddrinfo(res);
        attempt_over(c, why);
        return;
    }
    n = 0;
    for (ai = res; ai; ai = ai->ai_next)
        n++;
    ai = res;
    for (i = c->addr_turn % n; i > 0; i--)
        ai = ai->ai_next;
    if (ai->ai_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *)(void *)ai->ai_addr, c->addr, sizeof c->addr);
    else
        uv_ip4_name((struct sockaddr_in *)(void *)ai->ai_addr, c->addr, sizeof c->addr);
    uv_freeaddrinfo(res);
    connect_to(c);
}

/* Resolves off the loop (uv_getaddrinfo), since this lws build would call a
 * blocking getaddrinfo on the loop thread. */
static void start_attempt(struct ws_client *c)
{
    struct addrinfo hints;
    char port[8];
    int rc;
    enter_state(c, CONN_CONNECTING);
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    util_fmt(port, sizeof port, "%d", c->cfg->url.port);
    rc = uv_getaddrinfo(c->loop, &c->gai, on_resolved, c->cfg->url.host, port, &hints);
    if (rc != 0) {
        char why[160];
        util_fmt(why, sizeof why, "cannot resolve %s: %s", c->cfg->url.host, uv_strerror(rc));
        attempt_over(c, why);
        return;
    }
    c->gai_pending = true;
}

static void on_backoff_timer(uv_timer_t *t)
{
    struct ws_client *c = container_of(t, struct ws_client, backoff_timer);
    if (c->base.state == CONN_BACKOFF)
        start_attempt(c);
}

/* --- the lws callback and its cases ---------------------------------------- */

static int on_append_headers(struct ws_client *c, struct lws *wsi, void *in, size_t len)
{
    unsigned char **p = (unsigned char **)in, *end = *p + len;
    if (c->cfg->token) {
        char auth[4200];
        util_fmt(auth, sizeof auth, "Bearer %s", c->cfg->token);
        if (lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, (unsigned char *)auth,
                                         (int)strlen(auth), p, end))
            return -1;
        memset(auth, 0, sizeof auth);
    }
    if (lws_add_http_header_by_name(
            wsi, (const unsigned char *)"X-Agent-Id:", (const unsigned char *)c->cfg->agent_id,
            (int)strlen(c->cfg->agent_id), p, end))
        return -1;
    return 0;
}

static void on_established(struct ws_client *c, struct lws *wsi)
{
    c->wsi = wsi;
    c->attempt_reported = true;
    c->up_since_ms = util_mono_ms();
    c->last_fail_log_ms = 0;
    LOG(LOG_INFO, "connected", LF_S("url", c->cfg->manager_url), LF_S("address", c->addr));
    enter_state(c, CONN_HELLO);
    /* agent.hello goes first on every connection, before anything queued. */
    c->hello_msg = protocol_envelope("agent.hello", c->base.ops->hello(&c->base));
    lws_callback_on_writable(wsi);
}

static int write_text(struct lws *wsi, unsigned char *buf, size_t len)
{
    int n = lws_write(wsi, buf + LWS_PRE, len, LWS_WRITE_TEXT);
    return n < (int)len ? -1 : 0;
}

/* Everything queued is written: close with 1001 "going away".
 *
 * Why not lws_close_reason() and return -1: Debian's lws 4.1 is built with
 * _DEBUG, and on libuv its "close_and_handled uv repeat test" closes the wsi
 * a second time right after lws queued the close frame, so the socket is
 * dropped without it (seen with lws' own debug log). Instead the close frame
 * is written here with lws' internal opcode 4 (LWS_WRITE_CLOSE, which the
 * public header leaves out but lws_write() handles), the manager echoes it
 * and that ends the connection; a manager that never answers is cut off by
 * the timeout. */
#define WS_WRITE_CLOSE ((enum lws_write_protocol)4)

/* How long a stop waits for the pong that acknowledges the last answers. */
#define WS_CLOSE_ACK_WAIT_MS 2000

static int send_going_away(struct lws *wsi)
{
    static const char reason[] = "going away";
    unsigned char buf[LWS_PRE + 2 + sizeof reason];
    unsigned char *p = buf + LWS_PRE;
    LOG0(LOG_DEBUG, "closing the connection: going away");
    p[0] = (unsigned char)(LWS_CLOSE_STATUS_GOINGAWAY >> 8);
    p[1] = (unsigned char)(LWS_CLOSE_STATUS_GOINGAWAY & 0xff);
    memcpy(p + 2, reason, sizeof reason - 1);
    if (lws_write(wsi, p, 2 + sizeof reason - 1, WS_WRITE_CLOSE) < 0)
        return -1;
    lws_set_timeout(wsi, PENDING_TIMEOUT_CLOSE_ACK, 3);
    return 0;
}

static int on_writeable(struct ws_client *c, struct lws *wsi)
{
    struct ws_msg *m;
    if (c->hello_msg) {
        size_t len = strlen(c->hello_msg);
        unsigned char *buf = xmalloc(LWS_PRE + len);
        int rc;
        memcpy(buf + LWS_PRE, c->hello_msg, len);
        rc = write_text(wsi, buf, len);
        free(buf);
        free(c->hello_msg);
        c->hello_msg = NULL;
        if (rc != 0)
            return -1;
        LOG(LOG_INFO, "hello sent", LF_U("queued", c->queued));
        if (c->base.state == CONN_HELLO)
            enter_state(c, CONN_UP);
        if (c->head || c->want_close)
            lws_callback_on_writable(wsi);
        return 0;
    }
    /* A ping after acknowledged-delivery messages: its pong proves they arrived. */
    if (c->ping_wanted) {
        unsigned char ping[LWS_PRE + 32];
        int n =
            snprintf((char *)ping + LWS_PRE, 32, "ha:%llu", (unsigned long long)++c->pings_sent);
        c->ping_wanted = false;
        if (lws_write(wsi, ping + LWS_PRE, (size_t)n, LWS_WRITE_PING) < n)
            return -1;
        if (c->head || c->want_close)
            lws_callback_on_writable(wsi);
        return 0;
    }
    /* lws also calls WRITEABLE on its own (around pings): the queue may be empty. */
    m = c->head;
    if (!m) {
        /* Before "going away", give the manager a moment to acknowledge. */
        if (c->want_close && !c->close_sent &&
            (!c->unacked_head || util_mono_ms() >= c->close_deadline_ms)) {
            c->close_sent = true;
            return send_going_away(wsi);
        }
        return 0;
    }
    c->head = m->next;
    if (!c->head)
        c->tail = NULL;
    queue_count(c, m, -1);
    if (c->rx_paused && queue_drained(c)) {
        lws_rx_flow_control(wsi, 1);
        c->rx_paused = false;
    }
    if (write_text(wsi, m->buf, m->len) != 0) {
        /* Lost with the connection: an acknowledged-delivery one goes back. */
        if (m->ack_key) {
            m->next = c->head;
            c->head = m;
            if (!c->tail)
                c->tail = m;
            queue_count(c, m, 1);
        } else {
            msg_free(m);
        }
        return -1;
    }
    if (m->ack_key) {
        m->next = NULL;
        m->ping_no = c->pings_sent + 1;
        if (c->unacked_tail)
            c->unacked_tail->next = m;
        else
            c->unacked_head = m;
        c->unacked_tail = m;
        c->ping_wanted = true;
    } else {
        msg_free(m);
    }
    queue_give_back(c);
    if (c->head || c->want_close || c->ping_wanted)
        lws_callback_on_writable(wsi);
    return 0;
}

/* A pong to one of our pings "ha:N": everything written before ping N arrived. */
static void on_pong(struct ws_client *c, const void *in, size_t len)
{
    char buf[32];
    unsigned long long n;
    c->base.last_pong_wall_ms = util_wall_ms(); /* the manager answers: shown in the metrics */
    if (len == 0 || len >= sizeof buf)
        return;
    memcpy(buf, in, len);
    buf[len] = '\0';
    if (sscanf(buf, "ha:%llu", &n) != 1)
        return; /* lws' own keepalive */
    while (c->unacked_head && c->unacked_head->ping_no <= n) {
        struct ws_msg *m = c->unacked_head;
        c->unacked_head = m->next;
        if (!c->unacked_head)
            c->unacked_tail = NULL;
        if (c->base.ops->acked)
            c->base.ops->acked(&c->base, m->ack_key);
        msg_free(m);
    }
    if (c->want_close && c->wsi)
        lws_callback_on_writable(c->wsi);
}

static void on_receive(struct ws_client *c, struct lws *wsi, const void *in, size_t len)
{
    if (lws_frame_is_binary(wsi)) {
        LOG(LOG_DEBUG, "binary frame from the manager ignored", LF_U("bytes", len));
        return;
    }
    if (lws_is_first_fragment(wsi)) {
        c->rx_len = 0;
        c->rx_overflow = false;
    }
    if (!c->rx_overflow) {
        if (c->rx_len + len > c->cfg->max_message_bytes) {
            /* Drop the message, not the link; never buffer it whole. */
            c->rx_overflow = true;
            c->rx_len = 0;
        } else {
            if (c->rx_len + len > c->rx_cap) {
                c->rx_cap = c->rx_len + len > c->rx_cap * 2 ? c->rx_len + len : c->rx_cap * 2;
                c->rx = xrealloc(c->rx, c->rx_cap);
            }
            memcpy(c->rx + c->rx_len, in, len);
            c->rx_len += len;
        }
    }
    if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) != 0)
        return;
    if (c->rx_overflow) {
        LOG(LOG_WARN, "message from the manager over max_message_bytes dropped",
            LF_U("max_message_bytes", c->cfg->max_message_bytes));
        c->rx_overflow = false;
        return;
    }
    c->base.ops->message(&c->base, c->rx, c->rx_len);
    c->rx_len = 0;
}

static int ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                       size_t len)
{
    struct ws_client *c = lws_context_user(lws_get_context(wsi));
    (void)user;
    if (!c)
        return 0;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
        return on_append_headers(c, wsi, in, len);
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        on_established(c, wsi);
        return 0;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        return on_writeable(c, wsi);
    case LWS_CALLBACK_CLIENT_RECEIVE:
        on_receive(c, wsi, in, len);
        return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE_PONG:
        on_pong(c, in, len);
        return 0;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        LOG(c->close_sent ? LOG_DEBUG : LOG_INFO,
            c->close_sent ? "manager answered our close" : "manager closed the connection",
            LF_I("code",
                 len >= 2 ? (((const unsigned char *)in)[0] << 8) | ((const unsigned char *)in)[1]
                          : 0));
        return 0;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR: {
        char why[256];
        util_fmt(why, sizeof why, "%.*s", in ? (int)len : 0, in ? (const char *)in : "");
        if (!in || !why[0])
            util_fmt(why, sizeof why, "connection error");
        if (!c->attempt_reported) {
            c->attempt_reported = true;
            attempt_over(c, why);
        }
        return 0;
    }
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (c->wsi == wsi)
            attempt_over(c, "closed");
        return 0;
    default:
        return 0;
    }
}

static const struct lws_protocols protocols[] = {
    {"hostagent", ws_callback, 0, 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* libwebsockets' own log lines go through our logger. */
static void lws_log_emit(int level, const char *line)
{
    char buf[512];
    size_t n;
    util_fmt(buf, sizeof buf, "%s", line);
    n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    LOG(level == LLL_ERR    ? LOG_ERROR
        : level == LLL_WARN ? LOG_WARN
                            : LOG_DEBUG,
        "libwebsockets", LF_S("detail", buf));
}

/* --- lifecycle ------------------------------------------------------------------ */

int ws_client_init(struct ws_client *c, uv_loop_t *loop, const struct config *cfg,
                   const struct transport_ops *ops, void *owner)
{
    struct lws_context_creation_info info;
    static const uint32_t retry_table[] = {1000}; /* unused: we back off ourselves */
    int rc;

    memset(c, 0, sizeof *c);
    c->loop = loop;
    c->cfg = cfg;
    c->base.impl = &ws_client_impl;
    c->base.ops = ops;
    c->base.owner = owner;
    c->foreign_loops[0] = loop;
    c->retry.retry_ms_table = retry_table;
    c->retry.retry_ms_table_count = 1;
    c->retry.conceal_count = LWS_RETRY_CONCEAL_ALWAYS;
    c->retry.secs_since_valid_ping = (uint16_t)(cfg->ping_interval_ms / 1000);
    c->retry.secs_since_valid_hangup = (uint16_t)(3 * (cfg->ping_interval_ms / 1000));

    lws_set_log_level(log_get_level() >= LOG_DEBUG ? (LLL_ERR | LLL_WARN | LLL_NOTICE)
                                                   : (LLL_ERR | LLL_WARN),
                      lws_log_emit);

    rc = uv_timer_init(loop, &c->backoff_timer);
    if (rc != 0)
        return rc;
    c->open_handles = 1;

    memset(&info, 0, sizeof info);
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.foreign_loops = c->foreign_loops;
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.user = c;
    info.gid = (gid_t)-1;
    info.uid = (uid_t)-1;
    info.timeout_secs = 15;
    if (cfg->ca_file)
        info.client_ssl_ca_filepath = cfg->ca_file;
    c->ctx = lws_create_context(&info);
    if (!c->ctx) {
        LOG0(LOG_ERROR, "cannot create the libwebsockets context (is libwebsockets-evlib-uv "
                        "installed?)");
        return -EIO;
    }
    return 0;
}

void ws_client_start(struct ws_client *c)
{
    if (c->base.state == CONN_IDLE)
        start_attempt(c);
}

/* The acknowledgements did not come in time: close anyway. */
static void on_close_deadline(uv_timer_t *t)
{
    struct ws_client *c = t->data;
    if (c->wsi && c->want_close)
        lws_callback_on_writable(c->wsi);
}

void ws_client_shutdown(struct ws_client *c)
{
    enum conn_state was = c->base.state;
    if (was == CONN_CLOSING || was == CONN_CLOSED)
        return;
    uv_timer_stop(&c->backoff_timer);
    enter_state(c, CONN_CLOSING);
    if ((was == CONN_UP || was == CONN_HELLO) && c->wsi) {
        c->want_close = true;
        c->close_deadline_ms = util_mono_ms() + WS_CLOSE_ACK_WAIT_MS;
        c->backoff_timer.data = c;
        uv_timer_start(&c->backoff_timer, on_close_deadline, WS_CLOSE_ACK_WAIT_MS, 0);
        lws_callback_on_writable(c->wsi);
        return;
    }
    if (c->gai_pending) {
        uv_cancel((uv_req_t *)&c->gai); /* on_resolved finishes the close */
        return;
    }
    /* Idle, backing off, or mid-handshake: lws_context_destroy ends it. */
    enter_state(c, CONN_CLOSED);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct ws_client *c = h->data;
    c->open_handles--;
}

void ws_client_close(struct ws_client *c)
{
    /* First destroy only starts lws' shutdown (CLIENT_CLOSED may fire in it). */
    c->base.state = CONN_CLOSED;
    if (c->ctx)
        lws_context_destroy(c->ctx);
    c->backoff_timer.data = c;
    if (c->open_handles > 0)
        uv_close((uv_handle_t *)&c->backoff_timer, on_handle_closed);
}

void ws_client_free(struct ws_client *c)
{
    /* The second destroy, after the loop ran dry, frees the context. */
    if (c->ctx)
        lws_context_destroy(c->ctx);
    c->ctx = NULL;
    while (c->head) {
        struct ws_msg *m = c->head;
        c->head = m->next;
        msg_free(m);
    }
    c->tail = NULL;
    while (c->unacked_head) {
        struct ws_msg *m = c->unacked_head;
        c->unacked_head = m->next;
        msg_free(m);
    }
    c->unacked_tail = NULL;
    free(c->hello_msg);
    free(c->rx);
    c->hello_msg = NULL;
    c->rx = NULL;
}

/* --- the transport interface -------------------------------------------------------- */

static void ws_impl_start(struct transport *t)
{
    ws_client_start((struct ws_client *)t);
}

/* The envelope {"subject","data"} as the protocol has it; a reply is sent
 * to the reply subject like any other. */
static void ws_impl_send(struct transport *t, const char *subject, cJSON *data,
                         const struct transport_send *how)
{
    char *s = protocol_envelope(subject, data);
    ws_client_send((struct ws_client *)t, s, strlen(s), how->merge_key, how->keep, how->ack_key);
    cJSON_free(s);
}

/* The answer itself is the outcome here: its pong acknowledges it. */
static void ws_impl_outcome(struct transport *t, const char *move_id, uint64_t accepted_ms,
                            const char *answer, const char *ack_key)
{
    (void)t;
    (void)move_id;
    (void)accepted_ms;
    (void)answer;
    (void)ack_key;
}

static void ws_impl_shutdown(struct transport *t)
{
    ws_client_shutdown((struct ws_client *)t);
}

static void ws_impl_close(struct transport *t)
{
    ws_client_close((struct ws_client *)t);
}

static void ws_impl_destroy(struct transport *t)
{
    ws_client_free((struct ws_client *)t);
    free(t);
}

const struct transport_impl ws_client_impl = {
    .name = "websocket",
    .start = ws_impl_start,
    .send = ws_impl_send,
    .outcome = ws_impl_outcome,
    .shutdown = ws_impl_shutdown,
    .close = ws_impl_close,
    .destroy = ws_impl_destroy,
};
