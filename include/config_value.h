/* config_value.h: the syntax of one configuration value (durations, sizes,
 * booleans, URLs, subject prefixes), apart from the key it is given for. */
#ifndef HOSTAGENT_CONFIG_VALUE_H
#define HOSTAGENT_CONFIG_VALUE_H

#include <stdbool.h>
#include <stdint.h>

#define CONFIG_NATS_PREFIX_MAX 128

struct config_url {
    bool tls;
    char *host; /* without IPv6 brackets */
    int port;
    char *path; /* path and query, at least "/" */
};

/* Value parsers, for config.c and the tests. 0 on success, -EINVAL otherwise. */
int config_parse_duration(const char *s, uint64_t *ms);
int config_parse_size(const char *s, uint64_t *bytes);
int config_parse_bool(const char *s, bool *b);
int config_parse_url(const char *s, struct config_url *u, const char **why);
void config_url_free(struct config_url *u);

/* One nats:// or tls:// server URL: host[:port], nothing else. */
int config_parse_nats_url(const char *s, const char **why);
/* A subject prefix: 1..CONFIG_NATS_PREFIX_MAX bytes of dot-separated tokens
 * of [A-Za-z0-9_-]. */
bool config_subject_prefix_ok(const char *s);

#endif
