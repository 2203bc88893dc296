/* config.c: reads agent.conf: key = value lines, each key checked and set through one table
 * of keys (its setter, bounds, choices); defaults, the checks across keys, the transport's keys
 * kept over a reload. The syntax of single values is config_value.c's. */
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

#define SEC 1000ull
#define MIN (60ull * SEC)
#define HOUR (60ull * MIN)

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
    cfg->io_priority = IO_PRIORITY_LOW;
    cfg->max_rate = 0;
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

static bool token_ok(const char *t)
{
    if (*t == '\0')
        return false;
    for (const unsigned char *p = (const unsigned char *)t; *p; p++)
        if (*p < 0x21 || *p > 0x7e)
            return false; /* printable ASCII only: it goes into an HTTP header */
    return true;
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

/* Why a value was refused: a sentence fragment after the key's name, a
 * constant or formatted into buf. */
struct why {
    const char *text;
    char buf[256];
};

static int why_is(struct why *w, const char *text)
{
    w->text = text;
    return -EINVAL;
}

static int why_fmt(struct why *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int why_fmt(struct why *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(w->buf, sizeof w->buf, fmt, ap);
    va_end(ap);
    w->text = w->buf;
    return -EINVAL;
}

/* One name an enum key accepts, and its value. */
struct choice {
    const char *name;
    int value;
};

struct key_def;
/* Checks one key's value and sets it into cfg; 0, or -EINVAL with w. */
typedef int key_set_fn(struct config *cfg, const struct key_def *k, const char *v, struct why *w);

/* One key of agent.conf: where its value goes (off), how it is checked and
 * set (set), and what that setter reads of the rest. */
struct key_def {
    const char *name;
    key_set_fn *set;
    size_t off;
    uint64_t lo, hi;              /* durations (ms), counts, sizes; hi: a path's length limit */
    bool zero_means_none;         /* durations */
    bool whole_seconds;           /* durations */
    bool (*ok)(const char *v);    /* set_checked: the value's test... */
    const char *why;              /* ...and the words when it fails */
    const struct choice *choices; /* set_enum: the names, ending with {NULL} */
    size_t secret_off;            /* set_secret_file: where the file's secret goes */
};

static void *slot_of(struct config *cfg, const struct key_def *k)
{
    return (char *)cfg + k->off;
}

static void set_str(struct config *cfg, size_t off, const char *v)
{
    char **slot = (char **)(void *)((char *)cfg + off);
    free(*slot);
    *slot = xstrdup(v);
}

/* Frees a secret without leaving it lying in freed memory. */
static void secret_free(char *s)
{
    if (!s)
        return;
    memset(s, 0, strlen(s));
    free(s);
}

static int set_url(struct config *cfg, const struct key_def *k, const char *v, struct why *w)
{
    struct config_url u;
    if (config_parse_url(v, &u, &w->text) != 0)
        return -EINVAL;
    config_url_free(&cfg->url);
    cfg->url = u;
    set_str(cfg, k->off, v);
    return 0;
}

/* A string whose whole test is k->ok. */
static int set_checked(struct config *cfg, const struct key_def *k, const char *v, struct why *w)
{
    if (!k->ok(v))
        return why_is(w, k->why);
    set_str(cfg, k->off, v);
    return 0;
}

static bool agent_id_ok(const char *v)
{
    return *v != '\0' && strlen(v) <= 128 &&
           strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn"
                     "opqrstuvwxyz0123456789._-") == strlen(v);
}

static bool nats_user_ok(const char *v)
{
    return token_ok(v) && strlen(v) <= 256;
}

/* A directory: kept without its trailing slash. */
static int set_dir(struct config *cfg, const struct key_def *k, const char *v, struct why *w)
{
    if (!abs_path_ok(v, &w->text))
        return -EINVAL;
    set_str(cfg, k->off, v);
    strip_trailing_slash(*(char **)slot_of(cfg, k));
    return 0;
}

/* A file the agent writes or binds (k->hi: a socket's length limit). Its
 * directory is not checked here, so a missing one never keeps the agent
 * from starting (the writes log it). */
static int set_file(struct config *cfg, const struct key_def *k, const char *v, struct why *w)
{
    if (!abs_path_ok(v, &w->text))
        return -EINVAL;
    if (k->hi && strlen(v) >= k->hi)
        return why_fmt(w, "must be shorter than %zu bytes (a Unix socket's limit)", (size_t)k->hi);
    if (v[strlen(v) - 1] == '/')
        return why_is(w, "must name a file, not a directory");
    set_str(cfg, k->off, v);
    return 0;
}

/* A file the agent reads (a CA bundle). */
static int set_readable(struct config *cfg, const struct key_def *k, const char *v, struct why *w)
{
    if (!abs_path_ok(v, &w->text))
        return -EINVAL;
    if (access(v, R_OK) != 0)
        return why_fmt(w, "cannot be read: %s", strerror(errno));
    set_str(cfg, k->off, v);
    return 0;
}

/* A file of secrets read at every connect (its secret is not kept). */
static int set_secret_path(struct config *cfg, const struct key_def *k, const char *v,
                           struct why *w)
{
    const char *fwhy = NULL;
    if (!abs_path_ok(v, &w->text))
        return -EINVAL;
    if (secret_file_ok(v, &fwhy) != 0)
        return why_fmt(w, "cannot be read: %s", fwhy);
    set_str(cfg, k->off, v);
    return 0;
}

/* A file holding one secret, read now into k->secret_off. */
static int set_secret_file(struct config *cfg, const struct key_def *k, const char *v,
                           struct why *w)
{
    char **secret = (char **)(void *)((char *)cfg + k->secret_off);
    const char *swhy = NULL;
    char *s;
    if (!abs_path_ok(v, &w->text))
        return -EINVAL;
    s = read_token_file(v, &swhy);
    if (!s)
        return why_fmt(w, "cannot be used: %s", swhy);
    set_str(cfg, k->off, v);
    secret_free(*secret);
    *secret = s;
    return 0;
}

static int set_roots(struct config *cfg, const struct key_def *k, const char *v, struct why *w)
{
    (void)k;
    return parse_roots(cfg, v, &w->text);
}

static int set_nats_servers(struct config *cfg, const struct key_def *k, const char *v,
                            struct why *w)
{
    (void)k;
    return parse_nats_servers(cfg, v, &w->text, w->buf, sizeof w->buf);
}

static int set_level(struct config *cfg, const struct key_def *k, const char *v, struct why *w)
{
    if (log_level_parse(v, slot_of(cfg, k)) != 0)
        return why_is(w, "must be error, warn, info or debug");
    return 0;
}

/* An enum key: one of k->choices, by name; refused with all the names. */
static int set_enum(struct config *cfg, const struct key_def *k, const char *v, struct why *w)
{
    const struct choice *c;
    for (c = k->choices; c->name; c++) {
        if (strcmp(v, c->name) == 0) {
            *(int *)slot_of(cfg, k) = c->value;
            return 0;
        }
    }
    util_fmt(w->buf, sizeof w->buf, "must be");
    for (const struct choice *d = k->choices; d < c; d++) {
        size_t len = strlen(w->buf);
        util_fmt(w->buf + len, sizeof w->buf - len, "%s%s",
                 d == k->choices ? " "
                 : d + 1 < c     ? ", "
                                 : " or ",
                 d->name);
    }
    w->text = w->buf;
    return -EINVAL;
}

static int set_bool(struct config *cfg, const struct key_def *k, const char *v, struct why *w)
{
    if (config_parse_bool(v, slot_of(cfg, k)) != 0)
        return why_is(w, "must be true or false (yes/no, on/off, 1/0)");
    return 0;
}

static int set_duration(struct config *cfg, const struct key_def *k, const char *v, struct why *w)
{
    uint64_t n;
    if (config_parse_duration(v, &n) != 0)
        return why_is(w, "must be a duration such as 500ms, 15s, 5m or 1h");
    if (n == 0 && k->zero_means_none) {
        *(uint64_t *)slot_of(cfg, k) = 0;
        return 0;
    }
    if (n < k->lo || n > k->hi)
        return why_fmt(w, "must be between %llums and %llums%s", (unsigned long long)k->lo,
                       (unsigned long long)k->hi, k->zero_means_none ? " (or 0 for none)" : "");
    if (k->whole_seconds && n % SEC != 0)
        return why_is(w, "must be a whole number of seconds");
    *(uint64_t *)slot_of(cfg, k) = n;
    return 0;
}

static int set_count(struct config *cfg, const struct key_def *k, const char *v, struct why *w)
{
    char *end;
    unsigned long long c;
    errno = 0;
    c = strtoull(v, &end, 10);
    if (!isdigit((unsigned char)*v) || *end || errno || c < k->lo || c > k->hi)
        return why_fmt(w, "must be a whole number from %llu to %llu", (unsigned long long)k->lo,
                       (unsigned long long)k->hi);
    *(unsigned *)slot_of(cfg, k) = (unsigned)c;
    return 0;
}

static int set_size(struct config *cfg, const struct key_def *k, const char *v, struct why *w)
{
    uint64_t n;
    if (config_parse_size(v, &n) != 0 || n < k->lo || n > k->hi)
        return why_is(w, "must be a size from 1K to 64M (K, M, G are powers of 1024)");
    *(uint64_t *)slot_of(cfg, k) = n;
    return 0;
}

/* A rate in bytes per second: 0 (none), or a size of at least 1M. */
static int set_rate(struct config *cfg, const struct key_def *k, const char *v, struct why *w)
{
    uint64_t n;
    (void)k;
    if (strcmp(v, "0") == 0)
        n = 0;
    else if (config_parse_size(v, &n) != 0 || n < CONFIG_MAX_RATE_MIN || n > CONFIG_MAX_RATE_MAX)
        return why_is(w, "must be 0 (no cap) or bytes per second of at least 1M (K, M, G are "
                         "powers of 1024)");
    cfg->max_rate = n;
    return 0;
}

/* set_enum stores an int: each enum it sets is one. */
_Static_assert(sizeof(enum log_format) == sizeof(int), "log_format is an int");
_Static_assert(sizeof(enum verify_mode) == sizeof(int), "verify_mode is an int");
_Static_assert(sizeof(enum reclaim_mode) == sizeof(int), "reclaim_mode is an int");
_Static_assert(sizeof(enum io_priority) == sizeof(int), "io_priority is an int");
_Static_assert(sizeof(enum transport_kind) == sizeof(int), "transport_kind is an int");

static const struct choice log_formats[] = {
    {"text", LOG_FORMAT_TEXT}, {"json", LOG_FORMAT_JSON}, {NULL, 0}};
static const struct choice verify_modes[] = {
    {"metadata", VERIFY_METADATA}, {"checksum", VERIFY_CHECKSUM}, {NULL, 0}};
static const struct choice reclaim_modes[] = {
    {"deferred", RECLAIM_DEFERRED}, {"inline", RECLAIM_INLINE}, {NULL, 0}};
static const struct choice io_priorities[] = {{"idle", IO_PRIORITY_IDLE},
                                              {"low", IO_PRIORITY_LOW},
                                              {"normal", IO_PRIORITY_NORMAL},
                                              {NULL, 0}};
static const struct choice transports[] = {
    {"websocket", TRANSPORT_WEBSOCKET}, {"nats", TRANSPORT_NATS}, {NULL, 0}};

#define F(m) offsetof(struct config, m)
#define DURATION(m, lo_, hi_) .set = set_duration, .off = F(m), .lo = (lo_), .hi = (hi_)
static const struct key_def key_table[] = {
    {"manager_url", .set = set_url, .off = F(manager_url)},
    {"agent_id", .set = set_checked, .off = F(agent_id), .ok = agent_id_ok,
     .why = "must be 1-128 characters of A-Z a-z 0-9 . _ -"},
    {"token_file", .set = set_secret_file, .off = F(token_file), .secret_off = F(token)},
    {"token", .set = set_checked, .off = F(token), .ok = token_ok,
     .why = "must be non-empty printable ASCII without spaces"},
    {"allowed_roots", .set = set_roots, .off = F(allowed_roots)},
    {"state_dir", .set = set_dir, .off = F(state_dir)},
    {"log_level", .set = set_level, .off = F(log_level)},
    {"log_format", .set = set_enum, .off = F(log_format), .choices = log_formats},
    {"heartbeat_interval", DURATION(heartbeat_interval_ms, 1 * SEC, HOUR)},
    {"ping_interval", DURATION(ping_interval_ms, 1 * SEC, HOUR), .whole_seconds = true},
    {"progress_interval", DURATION(progress_interval_ms, 50, MIN)},
    {"reconnect_min", DURATION(reconnect_min_ms, 100, HOUR)},
    {"reconnect_max", DURATION(reconnect_max_ms, 1 * SEC, 24 * HOUR)},
    {"max_concurrent_moves", .set = set_count, .off = F(max_concurrent_moves), .lo = 1, .hi = 64},
    {"max_queued_moves", .set = set_count, .off = F(max_queued_moves), .lo = 0, .hi = 1024},
    {"move_timeout", DURATION(move_timeout_ms, 1 * SEC, 30ull * 24 * HOUR),
     .zero_means_none = true},
    {"stall_timeout", DURATION(stall_timeout_ms, 10 * SEC, 24 * HOUR)},
    {"verify", .set = set_enum, .off = F(verify), .choices = verify_modes},
    {"reclaim", .set = set_enum, .off = F(reclaim), .choices = reclaim_modes},
    {"io_priority", .set = set_enum, .off = F(io_priority), .choices = io_priorities},
    {"max_rate", .set = set_rate, .off = F(max_rate)},
    {"max_message_bytes", .set = set_size, .off = F(max_message_bytes), .lo = 1024,
     .hi = 64ull << 20},
    {"ca_file", .set = set_readable, .off = F(ca_file)},
    {"tls_insecure", .set = set_bool, .off = F(tls_insecure)},
    {"metrics_file", .set = set_file, .off = F(metrics_file)},
    {"control_socket", .set = set_file, .off = F(control_socket),
     .hi = sizeof(((struct sockaddr_un *)NULL)->sun_path)},
    {"prepare_ttl", DURATION(prepare_ttl_ms, 1 * SEC, 30ull * 24 * HOUR), .zero_means_none = true},
    {"transport", .set = set_enum, .off = F(transport), .choices = transports},
    {"nats_servers", .set = set_nats_servers, .off = F(nats_servers)},
    {"nats_creds_file", .set = set_secret_path, .off = F(nats_creds_file)},
    {"nats_nkey_seed_file", .set = set_secret_path, .off = F(nats_nkey_seed_file)},
    {"nats_user", .set = set_checked, .off = F(nats_user), .ok = nats_user_ok,
     .why = "must be 1-256 bytes of printable ASCII without spaces"},
    {"nats_password_file", .set = set_secret_file, .off = F(nats_password_file),
     .secret_off = F(nats_password)},
    {"nats_subject_prefix", .set = set_checked, .off = F(nats_subject_prefix),
     .ok = config_subject_prefix_ok,
     .why = "must be 1-128 bytes of dot-separated tokens of A-Z a-z 0-9 _ - (no wildcards, no "
            "empty token)"},
    {"nats_jetstream", .set = set_bool, .off = F(nats_jetstream)},
};
#undef DURATION
#undef F

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
        struct why w = {0};
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
        if ((strcmp(key, "token") == 0 && seen_line(seen, "token_file")) ||
            (strcmp(key, "token_file") == 0 && seen_line(seen, "token"))) {
            errs_add(errs, file, lineno, "both token and token_file are set; use only one");
            continue;
        }
        if (k->set(cfg, k, val, &w) != 0)
            errs_add(errs, file, lineno, "%s %s", key, w.text);
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
    secret_free(cfg->token);
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
    secret_free(cfg->nats_password);
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
