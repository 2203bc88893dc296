/* nats_options.c: the connection's options: the servers, the name, TLS, the
 * credentials (creds file, nkey seed, user and password, token), the
 * reconnect policy and backoff, pings, nats.c's callbacks and our event
 * loop; and those of the probe, one plain attempt that tells why connecting
 * fails (nats_helper.c). */
#include "nats_internal.h"
#include "log.h"
#include "nkey.h"
#include "util.h"

#include <errno.h>
#include <string.h>

#define NATS_PROBE_TIMEOUT_MS 2000 /* a probe's connect (nats_helper.c) */

static int options_status_err(natsStatus s, const char *what)
{
    if (s == NATS_OK)
        return 0;
    LOG(LOG_ERROR, "cannot set up NATS", LF_S("setting", what),
        LF_S("error", natsStatus_GetText(s)), LF_S("detail", nats_GetLastError(NULL)));
    return -EINVAL;
}

/* What the connection and its probe share: the servers, the name, TLS and
 * the credentials. */
static int options_common(struct nats_client *c, natsOptions *o)
{
    const struct config *cfg = c->cfg;
    bool tls = false;
    char name[200];
    for (size_t i = 0; i < cfg->n_nats_servers; i++)
        tls |= strncmp(cfg->nats_servers[i], "tls://", 6) == 0;
    util_fmt(name, sizeof name, "hostagent %s", cfg->agent_id);
    if (options_status_err(
            natsOptions_SetServers(o, (const char **)cfg->nats_servers, (int)cfg->n_nats_servers),
            "nats_servers") ||
        options_status_err(natsOptions_SetName(o, name), "name"))
        return -EINVAL;
    if (tls && options_status_err(natsOptions_SetSecure(o, true), "tls"))
        return -EINVAL;
    if (cfg->ca_file &&
        options_status_err(natsOptions_LoadCATrustedCertificates(o, cfg->ca_file), "ca_file"))
        return -EINVAL;
    if (cfg->tls_insecure &&
        options_status_err(natsOptions_SkipServerVerification(o, true), "tls_insecure"))
        return -EINVAL;
    if (cfg->nats_creds_file &&
        options_status_err(natsOptions_SetUserCredentialsFromFiles(o, cfg->nats_creds_file, NULL),
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
        if (options_status_err(natsOptions_SetNKeyFromSeed(o, pub, cfg->nats_nkey_seed_file),
                               "nats_nkey_seed_file"))
            return -EINVAL;
    }
    if (cfg->nats_user &&
        options_status_err(natsOptions_SetUserInfo(o, cfg->nats_user, cfg->nats_password),
                           "nats_user"))
        return -EINVAL;
    if (cfg->token && options_status_err(natsOptions_SetToken(o, cfg->token), "token"))
        return -EINVAL;
    return 0;
}

/* The reconnect thread's wait between passes over the server list: the
 * agent's own backoff (reconnect_min doubling to reconnect_max, jitter). */
static int64_t options_reconnect_delay(natsConnection *nc, int attempts, void *closure)
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

int nats_options_make(struct nats_client *c)
{
    const struct config *cfg = c->cfg;
    natsOptions *o;
    natsStatus s;

    s = natsOptions_Create(&c->opts);
    if (s != NATS_OK)
        return options_status_err(s, "options");
    o = c->opts;
    if (options_common(c, o) != 0 ||
        options_status_err(natsOptions_SetMaxReconnect(o, -1), "reconnect") ||
        options_status_err(natsOptions_SetCustomReconnectDelay(o, options_reconnect_delay, c),
                           "backoff") ||
        options_status_err(
            natsOptions_SetRetryOnFailedConnect(o, true, nats_events_on_connected, c), "retry") ||
        options_status_err(natsOptions_SetDisconnectedCB(o, nats_events_on_disconnected, c),
                           "callbacks") ||
        options_status_err(natsOptions_SetReconnectedCB(o, nats_events_on_reconnected, c),
                           "callbacks") ||
        options_status_err(natsOptions_SetClosedCB(o, nats_events_on_closed, c), "callbacks") ||
        options_status_err(natsOptions_SetErrorHandler(o, nats_events_on_error, c), "callbacks") ||
        options_status_err(natsOptions_SetPingInterval(o, (int64_t)cfg->ping_interval_ms),
                           "pings") ||
        options_status_err(natsOptions_SetMaxPingsOut(o, 3), "pings") ||
        options_status_err(natsOptions_SetEventLoop(o, c, nats_adapter_attach, nats_adapter_read,
                                                    nats_adapter_write, nats_adapter_detach),
                           "event loop"))
        return -EINVAL;
    /* The probe: one attempt, no retry, on nats.c's own threads (see
     * nats_helper.c). */
    s = natsOptions_Create(&c->probe_opts);
    if (s != NATS_OK)
        return options_status_err(s, "options");
    o = c->probe_opts;
    if (options_common(c, o) != 0 ||
        options_status_err(natsOptions_SetAllowReconnect(o, false), "probe") ||
        options_status_err(natsOptions_SetTimeout(o, NATS_PROBE_TIMEOUT_MS), "probe"))
        return -EINVAL;
    return 0;
}
