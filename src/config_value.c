/* config_value.c: the syntax of one configuration value, apart from the key
 * it is given for: durations, sizes, booleans, the manager's ws:// URL, NATS
 * server URLs and subject prefixes. Pure functions of their text (config.c
 * applies them to the keys). */
#include "config_value.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define SEC 1000ull
#define MIN (60ull * SEC)
#define HOUR (60ull * MIN)

/* A unit a number may be followed by, and what it multiplies by. */
struct unit {
    const char *suffix;
    uint64_t mult;
};

/* Digits, then one of units' suffixes (nothing at all is a suffix too), with
 * no overflow of the product. */
static int parse_scaled(const char *s, const struct unit *units, size_t n, uint64_t *out)
{
    char *end;
    unsigned long long v;
    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(end, units[i].suffix) != 0)
            continue;
        if (v > UINT64_MAX / units[i].mult)
            return -EINVAL;
        *out = v * units[i].mult;
        return 0;
    }
    return -EINVAL;
}

int config_parse_duration(const char *s, uint64_t *ms)
{
    static const struct unit units[] = {{"", SEC}, {"s", SEC}, {"ms", 1}, {"m", MIN}, {"h", HOUR}};
    return parse_scaled(s, units, ARRAY_SIZE(units), ms);
}

int config_parse_size(const char *s, uint64_t *bytes)
{
    static const struct unit units[] = {
        {"", 1}, {"K", 1ull << 10}, {"M", 1ull << 20}, {"G", 1ull << 30}};
    return parse_scaled(s, units, ARRAY_SIZE(units), bytes);
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
