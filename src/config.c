/* config.c: reads agent.conf: key = value lines, checked against one key table. */
#include "config.h"
#include "util.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum key_type {
    K_URL,
    K_AGENT_ID,
    K_ABS_PATH,
    K_FILE_PATH,
    K_READABLE_FILE,
    K_TOKEN,
    K_TOKEN_FILE,
    K_ROOTS,
    K_LEVEL,
    K_FORMAT,
    K_DURATION,
    K_COUNT,
    K_SIZE,
    K_BOOL,
    K_VERIFY,
    K_RECLAIM,
    K_SOCKET,
    K_TRANSPORT,
    K_NATS_SERVERS,
    K_SECRET_FILE,
    K_NATS_USER,
    K_PASSWORD_FILE,
    K_SUBJECT_PREFIX,
};

#define SEC 1000ull
#define MIN (60ull * SEC)
#define HOUR (60ull * MIN)

struct key_def {
    const char *name;
    enum key_type type;
    size_t off;
    uint64_t lo, hi; /* bounds for durations (ms), counts and sizes */
    bool zero_means_none;
    bool whole_seconds;
};

#define F(m) offsetof(struct config, m)
static const struct key_def key_table[] = {
    {"manager_url", K_URL, F(manager_url), 0, 0, false, false},
    {"agent_id", K_AGENT_ID, F(agent_id), 0, 0, false, false},
    {"token_file", K_TOKEN_FILE, F(token_file), 0, 0, false, false},
    {"token", K_TOKEN, F(token), 0, 0, false, false},
    {"allowed_roots", K_ROOTS, F(allowed_roots), 0, 0, false, false},
    {"state_dir", K_ABS_PATH, F(state_dir), 0, 0, false, false},
    {"log_level", K_LEVEL, F(log_level), 0, 0, false, false},
    {"log_format", K_FORMAT, F(log_format), 0, 0, false, false},
    {"heartbeat_interval", K_DURATION, F(heartbeat_interval_ms), 1 * SEC, HOUR, false, false},
    {"ping_interval", K_DURATION, F(ping_interval_ms), 1 * SEC, HOUR, false, true},
    {"progress_interval", K_DURATION, F(progress_interval_ms), 50, MIN, false, false},
    {"reconnect_min", K_DURATION, F(reconnect_min_ms), 100, HOUR, false, false},
    {"reconnect_max", K_DURATION, F(reconnect_max_ms), 1 * SEC, 24 * HOUR, false, false},
    {"max_concurrent_moves", K_COUNT, F(max_concurrent_moves), 1, 64, false, false},
    {"max_queued_moves", K_COUNT, F(max_queued_moves), 0, 1024, false, false},
    {"move_timeout", K_DURATION, F(move_timeout_ms), 1 * SEC, 30ull * 24 * HOUR, true, false},
    {"stall_timeout", K_DURATION, F(stall_timeout_ms), 10 * SEC, 24 * HOUR, false, false},
    {"verify", K_VERIFY, F(verify), 0, 0, false, false},
    {"reclaim", K_RECLAIM, F(reclaim), 0, 0, false, false},
    {"max_message_bytes", K_SIZE, F(max_message_bytes), 1024, 64ull << 20, false, false},
    {"ca_file", K_READABLE_FILE, F(ca_file), 0, 0, false, false},
    {"tls_insecure", K_BOOL, F(tls_insecure), 0, 0, false, false},
    {"metrics_file", K_FILE_PATH, F(metrics_file), 0, 0, false, false},
    {"control_socket", K_SOCKET, F(control_socket), 0, 0, false, false},
    {"prepare_ttl", K_DURATION, F(prepare_ttl_ms), 1 * SEC, 30ull * 24 * HOUR, true, false},
    {"transport", K_TRANSPORT, F(transport), 0, 0, false, false},
    {"nats_servers", K_NATS_SERVERS, F(nats_servers), 0, 0, false, false},
    {"nats_creds_file", K_SECRET_FILE, F(nats_creds_file), 0, 0, false, false},
    {"nats_nkey_seed_file", K_SECRET_FILE, F(nats_nkey_seed_file), 0, 0, false, false},
    {"nats_user", K_NATS_USER, F(nats_user), 0, 0, false, false},
    {"nats_password_file", K_PASSWORD_FILE, F(nats_password_file), 0, 0, false, false},
    {"nats_subject_prefix", K_SUBJECT_PREFIX, F(nats_subject_prefix), 0, 0, false, false},
    {"nats_jetstream", K_BOOL, F(nats_jetstream), 0, 0, false, false},
};
#undef F

static void config_defaults(struct config *cfg)
{
    char host[256];
    memset(cfg, 0, sizeof *cfg);
    if (gethostname(host, sizeof host) != 0 || host[0] == '\0')
        snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    cfg->agent_id = xstrdup(host);
    cfg->state_dir = xstrdup("/var/lib/hostagent");
    cfg->control_socket = xstrdup(CONFIG_DEFAULT_CONTROL_SOCKET);
    cfg->log_level = LOG_INFO;
    cfg->log_format = LOG_FORMAT_TEXT;
    cfg->heartbeat_interval_ms = 15 * SEC;
    cfg->ping_interval_ms = 20 * SEC;
    cfg->progress_interval_ms = 500;
    cfg->reconnect_min_ms = 1 * SEC;
    cfg->reconnect_max_ms = 30 * SEC;
    cfg->max_concurrent_moves = 2;
    cfg->max_queued_moves = 16;
    cfg->move_timeout_ms = 0;
    cfg->stall_timeout_ms = 5 * MIN;
    cfg->verify = VERIFY_METADATA;
    cfg->reclaim = RECLAIM_DEFERRED;
    cfg->max_message_bytes = 1u << 20;
    cfg->tls_insecure = false;
    cfg->prepare_ttl_ms = 24 * HOUR;
    cfg->transport = TRANSPORT_WEBSOCKET;
    cfg->nats_subject_prefix = xstrdup("hostagent");
}

static void errs_add(struct config_errors *errs, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void errs_add(struct config_errors *errs, const char *file, int line, const char *fmt, ...)
{
    char msg[512], full[1024];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (line > 0)
        snprintf(full, sizeof full, "%s:%d: %s", file, line, msg);
    else
        snprintf(full, sizeof full, "%s: %s", file, msg);
    errs->lines = xrealloc(errs->lines, (errs->n + 1) * sizeof *errs->lines);
    errs->lines[errs->n++] = xstrdup(full);
}

int config_parse_duration(const char *s, uint64_t *ms)
{
    char *end;
    unsigned long long v;
    uint64_t mult;
    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno)
        return -EINVAL;
    if (strcmp(end, "") == 0 || strcmp(end, "s") == 0)
        mult = SEC;
    else if (strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "m") == 0)
        mult = MIN;
    else if (strcmp(end, "h") == 0)
        mult = HOUR;
    else
        return -EINVAL;
    if (v > UINT64_MAX / mult)
        return -EINVAL;
    *ms = v * mult;
    return 0;
}

int config_parse_size(const char *s, uint64_t *bytes)
{
    char *end;
    unsigned long long v;
    unsigned shift = 0;
    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno)
        return -EINVAL;
    if (strcmp(end, "") == 0)
        shift = 0;
    else if (strcmp(end, "K") == 0)
        shift = 10;
    else if (strcmp(end, "M") == 0)
        shift = 20;
    else if (strcmp(end, "G") == 0)
        shift = 30;
    else
        return -EINVAL;
    if (v > (UINT64_MAX >> shift))
        return -EINVAL;
    *bytes = (uint64_t)v << shift;
    return 0;
}

int config_parse_bool(const char *s, bool *b)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
        if (strcmp(s, yes[i]) == 0) {
            *b = true;
            return 0;
        }
        if (strcmp(s, no[i]) == 0) {
            *b = false;
            return 0;
        }
    }
    return -EINVAL;
}

void config_url_free(struct config_url *u)
{
    free(u->host);
    free(u->path);
    memset(u, 0, sizeof *u);
}

int config_parse_url(const char *s, struct config_url *u, const char **why)
{
    const char *p, *host_end, *port_start = NULL, *path;
    size_t hlen;
    memset(u, 0, sizeof *u);
    if (strncmp(s, "ws://", 5) == 0) {
        p = s + 5;
    } else if (strncmp(s, "wss://", 6) == 0) {
        p = s + 6;
        u->tls = true;
    } else {
        *why = "must start with ws:// or wss://";
        return -EINVAL;
    }
    for (const char *c = s; *c; c++) {
        if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 0x7f) {
            *why = "must not contain spaces or control characters";
            return -EINVAL;
        }
    }
    path = p + strcspn(p, "/?");
    if (memchr(p, '@', (size_t)(path - p))) {
        *why = "must not contain user information (put the token in token_file)";
        return -EINVAL;
    }
    if (*p == '[') {
        host_end = strchr(p, ']');
        if (!host_end || host_end > path) {
            *why = "has an unterminated IPv6 address";
            return -EINVAL;
        }
        hlen = (size_t)(host_end - p - 1);
        p++;
        if (host_end[1] == ':')
            port_start = host_end + 2;
        else if (host_end + 1 != path) {
            *why = "has junk after the IPv6 address";
            return -EINVAL;
        }
    } else {
        const char *colon = memchr(p, ':', (size_t)(path - p));
        host_end = colon ? colon : path;
        hlen = (size_t)(host_end - p);
        if (colon)
            port_start = colon + 1;
    }
    if (hlen == 0 || hlen > 253) {
        *why = "has no host name";
        return -EINVAL;
    }
    u->port = u->tls ? 443 : 80;
    if (port_start) {
        long port = 0;
        if (port_start == path) {
            *why = "has an empty port";
            return -EINVAL;
        }
        for (const char *c = port_start; c < path; c++) {
            if (!isdigit((unsigned char)*c) || port > 65535) {
                *why = "has a bad port";
                return -EINVAL;
            }
            port = port * 10 + (*c - '0');
        }
        if (port < 1 || port > 65535) {
            *why = "has a port out of range (1-65535)";
            return -EINVAL;
        }
        u->port = (int)port;
    }
    u->host = xstrndup(p, hlen);
    if (*path == '/')
        u->path = xstrdup(path);
    else {
        /* "ws://h?x" has an empty path: the request line needs "/?x". */
        u->path = xmalloc(strlen(path) + 2);
        u->path[0] = '/';
        strcpy(u->path + 1, path);
    }
    return 0;
}

/* Absolute, normalized path: no empty, "." or ".." components. */
static int abs_path_ok(const char *s, const char **why)
{
    const char *c = s;
    if (*s != '/') {
        *why = "must be an absolute path";
        return 0;
    }
    if (strlen(s) >= PATH_MAX) {
        *why = "is too long";
        return 0;
    }
    while (*c) {
        const char *comp = ++c;
        size_t n = strcspn(comp, "/");
        c = comp + n;
        if (n == 0 && *c == '\0' && comp != s + 1)
            break; /* one trailing slash */
        if (n == 0 && !(comp == s + 1 && *c == '\0')) {
            *why = "has an empty component (//)";
            return 0;
        }
        if ((n == 1 && comp[0] == '.') || (n == 2 && comp[0] == '.' && comp[1] == '.')) {
            *why = "must not contain . or .. components";
            return 0;
        }
    }
    return 1;
}

static char *strip_trailing_slash(char *s)
{
    size_t n = strlen(s);
    if (n > 1 && s[n - 1] == '/')
        s[n - 1] = '\0';
    return s;
}

static int token_ok(const char *t)
{
    if (*t == '\0')
        return 0;
    for (const unsigned char *p = (const unsigned char *)t; *p; p++)
        if (*p < 0x21 || *p > 0x7e)
            return 0; /* printable ASCII only: it goes into an HTTP header */
    return 1;
}

static char *read_token_file(const char *path, const char **why)
{
    char buf[4097];
    struct stat st;
    ssize_t got;
    size_t n;
    /* O_NONBLOCK and a regular-file check: a fifo here must not hang the start. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        *why = strerror(errno);
        return NULL;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        *why = "is not a regular file";
        return NULL;
    }
    got = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (got < 0) {
        *why = strerror(errno);
        return NULL;
    }
    n = (size_t)got;
    if (n == sizeof buf - 1) {
        *why = "token is longer than 4096 bytes";
        return NULL;
    }
    buf[n] = '\0';
    if (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
    if (n > 0 && buf[n - 1] == '\r')
        buf[--n] = '\0';
    if (!token_ok(buf)) {
        *why = "token must be non-empty printable ASCII without spaces";
        return NULL;
    }
    return xstrdup(buf);
}

int config_parse_nats_url(const char *s, const char **why)
{
    const char *p, *colon;
    size_t hlen;
    if (strncmp(s, "nats://", 7) == 0)
        p = s + 7;
    else if (strncmp(s, "tls://", 6) == 0)
        p = s + 6;
    else {
        *why = "must start with nats:// or tls://";
        return -EINVAL;
    }
    for (const char *c = s; *c; c++) {
        if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 0x7f) {
            *why = "must not contain spaces or control characters";
            return -EINVAL;
        }
    }
    if (strchr(p, '@')) {
        *why = "must not contain user information (use nats_user and nats_password_file, "
               "nats_creds_file, nats_nkey_seed_file or token_file)";
        return -EINVAL;
    }
    if (strchr(p, '/') || strchr(p, '?')) {
        *why = "must be scheme://host[:port] without a path";
        return -EINVAL;
    }
    if (*p == '[') {
        const char *close = strchr(p, ']');
        if (!close) {
            *why = "has an unterminated IPv6 address";
            return -EINVAL;
        }
        hlen = (size_t)(close - p - 1);
        colon = close[1] == ':' ? close + 1 : NULL;
        if (!colon && close[1] != '\0') {
            *why = "has junk after the IPv6 address";
            return -EINVAL;
        }
    } else {
        colon = strchr(p, ':');
        hlen = colon ? (size_t)(colon - p) : strlen(p);
    }
    if (hlen == 0 || hlen > 253) {
        *why = "has no host name";
        return -EINVAL;
    }
    if (colon) {
        long port = 0;
        if (colon[1] == '\0') {
            *why = "has an empty port";
            return -EINVAL;
        }
        for (const char *c = colon + 1; *c; c++) {
            if (!isdigit((unsigned char)*c) || port > 65535) {
                *why = "has a bad port";
                return -EINVAL;
            }
            port = port * 10 + (*c - '0');
        }
        if (port < 1 || port > 65535) {
            *why = "has a bad port";
            return -EINVAL;
        }
    }
    return 0;
}

bool config_subject_prefix_ok(const char *s)
{
    size_t n = strlen(s), tok = 0;
    if (n == 0 || n > CONFIG_NATS_PREFIX_MAX)
        return false;
    for (const char *c = s;; c++) {
        if (*c == '.' || *c == '\0') {
            if (tok == 0)
                return false; /* an empty token: "a..b", ".a", "a." */
            if (*c == '\0')
                return true;
            tok = 0;
        } else if (isalnum((unsigned char)*c) || *c == '_' || *c == '-') {
            tok++;
        } else {
            return false;
        }
    }
}

static void free_nats_servers(struct config *cfg)
{
    for (size_t i = 0; i < cfg->n_nats_servers; i++)
        free(cfg->nats_servers[i]);
    free(cfg->nats_servers);
    free(cfg->nats_servers_raw);
    cfg->nats_servers = NULL;
    cfg->nats_servers_raw = NULL;
    cfg->n_nats_servers = 0;
}

/* A comma-separated list of server URLs (spaces around the commas allowed). */
static int parse_nats_servers(struct config *cfg, const char *v, const char **why, char *whybuf,
                              size_t whysz)
{
    const char *p = v;
    free_nats_servers(cfg);
    for (;;) {
        size_t len = strcspn(p, ",");
        char *item = xstrndup(p, len), *b = item, *e;
        const char *uwhy = NULL;
        while (isspace((unsigned char)*b))
            b++;
        e = b + strlen(b);
        while (e > b && isspace((unsigned char)e[-1]))
            *--e = '\0';
        if (*b == '\0') {
            free(item);
            *why = "must be a comma-separated list of nats:// or tls:// URLs (an entry is empty)";
            return -EINVAL;
        }
        if (config_parse_nats_url(b, &uwhy) != 0) {
            util_fmt(whybuf, whysz, "entry %s %s", b, uwhy);
            *why = whybuf;
            free(item);
            return -EINVAL;
        }
        if (cfg->n_nats_servers == CONFIG_NATS_SERVERS_MAX) {
            free(item);
            util_fmt(whybuf, whysz, "must list at most %d servers", CONFIG_NATS_SERVERS_MAX);
            *why = whybuf;
            return -EINVAL;
        }
        cfg->nats_servers = xrealloc(cfg->nats_servers, (cfg->n_nats_servers + 1) * sizeof(char *));
        cfg->nats_servers[cfg->n_nats_servers++] = xstrdup(b);
        free(item);
        p += len;
        if (*p == '\0')
            break;
        p++;
    }
    cfg->nats_servers_raw = xstrdup(v);
    return 0;
}

/* A file of secrets the agent reads at every connect: a readable regular
 * file (a fifo must not hang the start). */
static int secret_file_ok(const char *path, const char **why)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        *why = strerror(errno);
        return -EINVAL;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        *why = "is not a regular file";
        return -EINVAL;
    }
    close(fd);
    return 0;
}

static void free_roots(struct config *cfg)
{
    for (size_t i = 0; i < cfg->n_allowed_roots; i++)
        free(cfg->allowed_roots[i]);
    free(cfg->allowed_roots);
    cfg->allowed_roots = NULL;
    cfg->n_allowed_roots = 0;
}

static int parse_roots(struct config *cfg, const char *v, const char **why)
{
    const char *p = v;
    free_roots(cfg);
    for (;;) {
        size_t n = strcspn(p, ",");
        char *item;
        while (n > 0 && isspace((unsigned char)*p)) {
            p++;
            n--;
        }
        while (n > 0 && isspace((unsigned char)p[n - 1]))
            n--;
        item = xstrndup(p, n);
        if (!abs_path_ok(item, why) || strcmp(item, "/") == 0) {
            if (strcmp(item, "/") == 0)
                *why = "must not be / itself";
            free(item);
            free_roots(cfg);
            return -EINVAL;
        }
        strip_trailing_slash(item);
        cfg->allowed_roots =
            xrealloc(cfg->allowed_roots, (cfg->n_allowed_roots + 1) * sizeof(char *));
        cfg->allowed_roots[cfg->n_allowed_roots++] = item;
        p += strcspn(p, ",");
        if (*p == '\0')
            break;
        p++;
    }
    return 0;
}

static void set_str(struct config *cfg, size_t off, const char *v)
{
    char **slot = (char **)(void *)((char *)cfg + off);
    free(*slot);
    *slot = xstrdup(v);
}

/* Applies one key; returns 0 or -EINVAL with *why (a sentence fragment). */
static int apply_key(struct config *cfg, const struct key_def *k, const char *v, const char **why,
                     char *whybuf, size_t whysz)
{
    void *slot = (char *)cfg + k->off;
    uint64_t n;
    switch (k->type) {
    case K_URL: {
        struct config_url u;
        if (config_parse_url(v, &u, why) != 0)
            return -EINVAL;
        config_url_free(&cfg->url);
        cfg->url = u;
        set_str(cfg, k->off, v);
        return 0;
    }
    case K_AGENT_ID:
        if (*v == '\0' || strlen(v) > 128 ||
            strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn"
                      "opqrstuvwxyz0123456789._-") != strlen(v)) {
            *why = "must be 1-128 characters of A-Z a-z 0-9 . _ -";
            return -EINVAL;
        }
        set_str(cfg, k->off, v);
        return 0;
    case K_ABS_PATH:
        if (!abs_path_ok(v, why))
            return -EINVAL;
        set_str(cfg, k->off, v);
        strip_trailing_slash(*(char **)slot);
        return 0;
    case K_FILE_PATH:
        /* A file the agent writes: its directory is not checked here, so a
         * missing one never keeps the agent from starting (the writes log it). */
        if (!abs_path_ok(v, why))
            return -EINVAL;
        if (v[strlen(v) - 1] == '/') {
            *why = "must name a file, not a directory";
            return -EINVAL;
        }
        set_str(cfg, k->off, v);
        return 0;
    case K_SOCKET:
        if (!abs_path_ok(v, why))
            return -EINVAL;
        if (strlen(v) >= sizeof(((struct sockaddr_un *)NULL)->sun_path)) {
            util_fmt(whybuf, whysz, "must be shorter than %zu bytes (a Unix socket's limit)",
                     sizeof(((struct sockaddr_un *)NULL)->sun_path));
            *why = whybuf;
            return -EINVAL;
        }
        if (v[strlen(v) - 1] == '/') {
            *why = "must name a file, not a directory";
            return -EINVAL;
        }
        set_str(cfg, k->off, v);
        return 0;
    case K_READABLE_FILE:
        if (!abs_path_ok(v, why))
            return -EINVAL;
        if (access(v, R_OK) != 0) {
            util_fmt(whybuf, whysz, "cannot be read: %s", strerror(errno));
            *why = whybuf;
            return -EINVAL;
        }
        set_str(cfg, k->off, v);
        return 0;
    case K_TOKEN:
        if (!token_ok(v)) {
            *why = "must be non-empty printable ASCII without spaces";
            return -EINVAL;
        }
        set_str(cfg, k->off, v);
        return 0;
    case K_TOKEN_FILE: {
        char *tok;
        const char *twhy = NULL;
        if (!abs_path_ok(v, why))
            return -EINVAL;
        tok = read_token_file(v, &twhy);
        if (!tok) {
            util_fmt(whybuf, whysz, "cannot be used: %s", twhy);
            *why = whybuf;
            return -EINVAL;
        }
        set_str(cfg, k->off, v);
        free(cfg->token);
        cfg->token = tok;
        return 0;
    }
    case K_ROOTS:
        return parse_roots(cfg, v, why);
    case K_TRANSPORT:
        if (strcmp(v, "websocket") == 0)
            *(enum transport_kind *)slot = TRANSPORT_WEBSOCKET;
        else if (strcmp(v, "nats") == 0)
            *(enum transport_kind *)slot = TRANSPORT_NATS;
        else {
            *why = "must be websocket or nats";
            return -EINVAL;
        }
        return 0;
    case K_NATS_SERVERS:
        return parse_nats_servers(cfg, v, why, whybuf, whysz);
    case K_SECRET_FILE: {
        const char *fwhy = NULL;
        if (!abs_path_ok(v, why))
            return -EINVAL;
        if (secret_file_ok(v, &fwhy) != 0) {
            util_fmt(whybuf, whysz, "cannot be read: %s", fwhy);
            *why = whybuf;
            return -EINVAL;
        }
        set_str(cfg, k->off, v);
        return 0;
    }
    case K_NATS_USER:
        if (!token_ok(v) || strlen(v) > 256) {
            *why = "must be 1-256 bytes of printable ASCII without spaces";
            return -EINVAL;
        }
        set_str(cfg, k->off, v);
        return 0;
    case K_PASSWORD_FILE: {
        char *pw;
        const char *pwhy = NULL;
        if (!abs_path_ok(v, why))
            return -EINVAL;
        pw = read_token_file(v, &pwhy);
        if (!pw) {
            util_fmt(whybuf, whysz, "cannot be used: %s", pwhy);
            *why = whybuf;
            return -EINVAL;
        }
        set_str(cfg, k->off, v);
        if (cfg->nats_password) {
            memset(cfg->nats_password, 0, strlen(cfg->nats_password));
            free(cfg->nats_password);
        }
        cfg->nats_password = pw;
        return 0;
    }
    case K_SUBJECT_PREFIX:
        if (!config_subject_prefix_ok(v)) {
            *why = "must be 1-128 bytes of dot-separated tokens of A-Z a-z 0-9 _ - (no "
                   "wildcards, no empty token)";
            return -EINVAL;
        }
        set_str(cfg, k->off, v);
        return 0;
    case K_LEVEL:
        if (log_level_parse(v, (enum log_level *)slot) != 0) {
            *why = "must be error, warn, info or debug";
            return -EINVAL;
        }
        return 0;
    case K_FORMAT:
        if (strcmp(v, "text") == 0)
            *(enum log_format *)slot = LOG_FORMAT_TEXT;
        else if (strcmp(v, "json") == 0)
            *(enum log_format *)slot = LOG_FORMAT_JSON;
        else {
            *why = "must be text or json";
            return -EINVAL;
        }
        return 0;
    case K_VERIFY:
        if (strcmp(v, "metadata") == 0)
            *(enum verify_mode *)slot = VERIFY_METADATA;
        else if (strcmp(v, "checksum") == 0)
            *(enum verify_mode *)slot = VERIFY_CHECKSUM;
        else {
            *why = "must be metadata or checksum";
            return -EINVAL;
        }
        return 0;
    case K_RECLAIM:
        if (strcmp(v, "deferred") == 0)
            *(enum reclaim_mode *)slot = RECLAIM_DEFERRED;
        else if (strcmp(v, "inline") == 0)
            *(enum reclaim_mode *)slot = RECLAIM_INLINE;
        else {
            *why = "must be deferred or inline";
            return -EINVAL;
        }
        return 0;
    case K_BOOL:
        if (config_parse_bool(v, (bool *)slot) != 0) {
            *why = "must be true or false (yes/no, on/off, 1/0)";
            return -EINVAL;
        }
        return 0;
    case K_DURATION:
        if (config_parse_duration(v, &n) != 0) {
            *why = "must be a duration such as 500ms, 15s, 5m or 1h";
            return -EINVAL;
        }
        if (n == 0 && k->zero_means_none) {
            *(uint64_t *)slot = 0;
            return 0;
        }
        if (n < k->lo || n > k->hi) {
            util_fmt(whybuf, whysz, "must be between %llums and %llums%s",
                     (unsigned long long)k->lo, (unsigned long long)k->hi,
                     k->zero_means_none ? " (or 0 for none)" : "");
            *why = whybuf;
            return -EINVAL;
        }
        if (k->whole_seconds && n % SEC != 0) {
            *why = "must be a whole number of seconds";
            return -EINVAL;
        }
        *(uint64_t *)slot = n;
        return 0;
    case K_COUNT: {
        char *end;
        unsigned long long c;
        errno = 0;
        c = strtoull(v, &end, 10);
        if (!isdigit((unsigned char)*v) || *end || errno || c < k->lo || c > k->hi) {
            util_fmt(whybuf, whysz, "must be a whole number from %llu to %llu",
                     (unsigned long long)k->lo, (unsigned long long)k->hi);
            *why = whybuf;
            return -EINVAL;
        }
        *(unsigned *)slot = (unsigned)c;
        return 0;
    }
    case K_SIZE:
        if (config_parse_size(v, &n) != 0 || n < k->lo || n > k->hi) {
            util_fmt(whybuf, whysz, "must be a size from 1K to 64M (K, M, G are powers of 1024)");
            *why = whybuf;
            return -EINVAL;
        }
        *(uint64_t *)slot = n;
        return 0;
    }
    return -EINVAL;
}

/* The line a key was set on (0 when not set). */
static int seen_line(const int *seen, const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(key_table); i++)
        if (strcmp(key_table[i].name, name) == 0)
            return seen[i];
    assert(!"unknown key name");
    return 0;
}

/* Splits one line into key and value (in place). Returns 1 for a key line,
 * 0 for a blank or comment line, -1 with *why for a malformed line. */
static int split_line(char *line, char **key, char **val, const char **why)
{
    char *p = line, *eq, *v, *out;
    while (isspace((unsigned char)*p))
        p++;
    if (*p == '\0' || *p == '#')
        return 0;
    eq = strchr(p, '=');
    if (!eq) {
        *why = "expected key = value";
        return -1;
    }
    *key = p;
    for (char *e = eq; e > p && isspace((unsigned char)e[-1]); e--)
        e[-1] = '\0';
    *eq = '\0';
    if (**key == '\0') {
        *why = "missing key before =";
        return -1;
    }
    v = eq + 1;
    while (isspace((unsigned char)*v))
        v++;
    if (*v == '"') {
        out = *val = v;
        for (v++; *v && *v != '"'; v++) {
            if (*v == '\\' && (v[1] == '"' || v[1] == '\\'))
                v++;
            *out++ = *v;
        }
        if (*v != '"') {
            *why = "unterminated quoted value";
            return -1;
        }
        *out = '\0';
        for (v++; isspace((unsigned char)*v); v++)
            ;
        if (*v != '\0' && *v != '#') {
            *why = "unexpected text after the quoted value";
            return -1;
        }
        return 1;
    }
    *val = v;
    for (char *c = v; *c; c++) {
        if (*c == '#' && (c == v || isspace((unsigned char)c[-1]))) {
            *c = '\0';
            break;
        }
    }
    for (char *e = v + strlen(v); e > v && isspace((unsigned char)e[-1]); e--)
        e[-1] = '\0';
    return 1;
}

/* The keys each transport needs, and those it does not use. */
static void check_transport(const struct config *cfg, const int *seen, const char *file,
                            struct config_errors *errs)
{
    static const char *const nats_only[] = {
        "nats_servers",       "nats_creds_file",     "nats_nkey_seed_file", "nats_user",
        "nats_password_file", "nats_subject_prefix", "nats_jetstream",
    };
    unsigned methods = 0;
    if (cfg->transport == TRANSPORT_WEBSOCKET) {
        if (!seen_line(seen, "manager_url"))
            errs_add(errs, file, 0, "missing required key manager_url");
        for (size_t i = 0; i < ARRAY_SIZE(nats_only); i++)
            if (seen_line(seen, nats_only[i]))
                errs_add(errs, file, seen_line(seen, nats_only[i]),
                         "%s is only used with transport = nats", nats_only[i]);
        return;
    }
    if (seen_line(seen, "manager_url"))
        errs_add(errs, file, seen_line(seen, "manager_url"),
                 "manager_url is only used with transport = websocket (use nats_servers)");
    if (!seen_line(seen, "nats_servers"))
        errs_add(errs, file, 0, "missing required key nats_servers (transport = nats)");
    if (strchr(cfg->agent_id, '.') || strcmp(cfg->agent_id, "all") == 0)
        errs_add(errs, file, seen_line(seen, "agent_id"),
                 "agent_id must be one NATS subject token with transport = nats: no dot, and "
                 "not \"all\" (the fleet-wide subjects use it)");
    if (seen_line(seen, "nats_user") && !seen_line(seen, "nats_password_file"))
        errs_add(errs, file, seen_line(seen, "nats_user"), "nats_user needs nats_password_file");
    if (seen_line(seen, "nats_password_file") && !seen_line(seen, "nats_user"))
        errs_add(errs, file, seen_line(seen, "nats_password_file"),
                 "nats_password_file needs nats_user");
    methods += seen_line(seen, "nats_creds_file") != 0;
    methods += seen_line(seen, "nats_nkey_seed_file") != 0;
    methods += seen_line(seen, "nats_user") != 0 || seen_line(seen, "nats_password_file") != 0;
    methods += seen_line(seen, "token") != 0 || seen_line(seen, "token_file") != 0;
    if (methods > 1)
        errs_add(errs, file, 0,
                 "more than one NATS authentication is set; use exactly one of nats_creds_file, "
                 "nats_nkey_seed_file, nats_user + nats_password_file, token or token_file");
}

int config_load(const char *file, struct config *cfg, struct config_errors *errs)
{
    FILE *f = fopen(file, "re");
    int rc;
    if (!f) {
        memset(errs, 0, sizeof *errs);
        errs_add(errs, file, 0, "cannot open: %s", strerror(errno));
        memset(cfg, 0, sizeof *cfg);
        return -EINVAL;
    }
    rc = config_load_stream(f, file, cfg, errs);
    fclose(f);
    return rc;
}

int config_load_stream(FILE *f, const char *file, struct config *cfg, struct config_errors *errs)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0;
    int seen[ARRAY_SIZE(key_table)] = {0};
    const char *env_token;

    memset(errs, 0, sizeof *errs);
    config_defaults(cfg);
    while ((len = getline(&line, &cap, f)) >= 0) {
        char *key = NULL, *val = NULL;
        const char *why = NULL;
        char whybuf[256];
        const struct key_def *k = NULL;
        size_t ki;
        int r;
        lineno++;
        if ((size_t)len != strlen(line)) {
            errs_add(errs, file, lineno, "line contains a NUL byte");
            continue;
        }
        r = split_line(line, &key, &val, &why);
        if (r == 0)
            continue;
        if (r < 0) {
            errs_add(errs, file, lineno, "%s", why);
            continue;
        }
        for (ki = 0; ki < ARRAY_SIZE(key_table); ki++) {
            if (strcmp(key_table[ki].name, key) == 0) {
                k = &key_table[ki];
                break;
            }
        }
        if (!k) {
            errs_add(errs, file, lineno, "unknown key '%s'", key);
            continue;
        }
        if (seen[ki]) {
            errs_add(errs, file, lineno, "key '%s' given twice (first on line %d)", key, seen[ki]);
            continue;
        }
        seen[ki] = lineno;
        if ((k->type == K_TOKEN && seen_line(seen, "token_file")) ||
            (k->type == K_TOKEN_FILE && seen_line(seen, "token"))) {
            errs_add(errs, file, lineno, "both token and token_file are set; use only one");
            continue;
        }
        if (apply_key(cfg, k, val, &why, whybuf, sizeof whybuf) != 0)
            errs_add(errs, file, lineno, "%s %s", key, why);
    }
    free(line);

    check_transport(cfg, seen, file, errs);
    if (cfg->reconnect_min_ms > cfg->reconnect_max_ms) {
        int at = seen_line(seen, "reconnect_max");
        if (seen_line(seen, "reconnect_min") > at)
            at = seen_line(seen, "reconnect_min");
        errs_add(errs, file, at, "reconnect_min must not be larger than reconnect_max");
    }

    env_token = getenv("HOSTAGENT_TOKEN");
    if (env_token && *env_token) {
        if (!token_ok(env_token))
            errs_add(errs, file, 0, "HOSTAGENT_TOKEN must be printable ASCII without spaces");
        else {
            free(cfg->token);
            cfg->token = xstrdup(env_token);
        }
    }
    if (errs->n > 0) {
        config_free(cfg);
        return -EINVAL;
    }
    return 0;
}

#define SWAP(a, b)                                                                                 \
    do {                                                                                           \
        __typeof__(a) swap_tmp_ = (a);                                                             \
        (a) = (b);                                                                                 \
        (b) = swap_tmp_;                                                                           \
    } while (0)

void config_keep_transport(struct config *fresh, struct config *old)
{
    SWAP(fresh->transport, old->transport);
    SWAP(fresh->nats_servers_raw, old->nats_servers_raw);
    SWAP(fresh->nats_servers, old->nats_servers);
    SWAP(fresh->n_nats_servers, old->n_nats_servers);
    SWAP(fresh->nats_creds_file, old->nats_creds_file);
    SWAP(fresh->nats_nkey_seed_file, old->nats_nkey_seed_file);
    SWAP(fresh->nats_user, old->nats_user);
    SWAP(fresh->nats_password_file, old->nats_password_file);
    SWAP(fresh->nats_password, old->nats_password);
    SWAP(fresh->nats_subject_prefix, old->nats_subject_prefix);
    SWAP(fresh->nats_jetstream, old->nats_jetstream);
}
#undef SWAP

void config_free(struct config *cfg)
{
    free(cfg->manager_url);
    config_url_free(&cfg->url);
    free(cfg->agent_id);
    free(cfg->token_file);
    if (cfg->token) {
        /* Do not leave the secret lying in freed memory. */
        memset(cfg->token, 0, strlen(cfg->token));
        free(cfg->token);
    }
    free_roots(cfg);
    free(cfg->state_dir);
    free(cfg->control_socket);
    free(cfg->ca_file);
    free(cfg->metrics_file);
    free_nats_servers(cfg);
    free(cfg->nats_creds_file);
    free(cfg->nats_nkey_seed_file);
    free(cfg->nats_user);
    free(cfg->nats_password_file);
    if (cfg->nats_password) {
        memset(cfg->nats_password, 0, strlen(cfg->nats_password));
        free(cfg->nats_password);
    }
    free(cfg->nats_subject_prefix);
    memset(cfg, 0, sizeof *cfg);
}

void config_errors_free(struct config_errors *errs)
{
    for (size_t i = 0; i < errs->n; i++)
        free(errs->lines[i]);
    free(errs->lines);
    memset(errs, 0, sizeof *errs);
}
