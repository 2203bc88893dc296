/* config.h: the agent's configuration file: keys, defaults, strict parsing. */
#ifndef HOSTAGENT_CONFIG_H
#define HOSTAGENT_CONFIG_H

#include "config_value.h"
#include "log.h"

#include <stdbool.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_DEFAULT_PATH "/etc/hostagent/agent.conf"
#define CONFIG_DEFAULT_CONTROL_SOCKET "/run/hostagent/control.sock"

enum verify_mode { VERIFY_METADATA = 0, VERIFY_CHECKSUM = 1 };
enum transport_kind { TRANSPORT_WEBSOCKET = 0, TRANSPORT_NATS = 1 };

#define CONFIG_NATS_SERVERS_MAX 32

/* When the source's space is given back: after the answer (renamed into a
 * reclaim directory and deleted in the background) or before it. */
enum reclaim_mode { RECLAIM_DEFERRED = 0, RECLAIM_INLINE = 1 };

/* io_priority: the I/O class of a move's worker (util.h's enum
 * util_io_class, same values); the reclaimer stays idle. */
enum io_priority { IO_PRIORITY_NORMAL = 0, IO_PRIORITY_LOW = 1, IO_PRIORITY_IDLE = 2 };

/* max_rate's bounds (bytes/s): 0 (none), else at least 1 MiB/s, as a
 * request's maxRate. */
#define CONFIG_MAX_RATE_MIN (1ull << 20)
#define CONFIG_MAX_RATE_MAX (1ull << 53)

struct config {
    char *manager_url;
    struct config_url url;
    char *agent_id;
    char *token_file;
    char *token; /* the effective token (file, key or HOSTAGENT_TOKEN), or NULL */
    char **allowed_roots;
    size_t n_allowed_roots;
    char *state_dir;
    char *control_socket; /* `hostagent status` / `cancel` talk to the daemon here */
    enum log_level log_level;
    enum log_format log_format;
    uint64_t heartbeat_interval_ms;
    uint64_t ping_interval_ms;
    uint64_t progress_interval_ms;
    uint64_t reconnect_min_ms;
    uint64_t reconnect_max_ms;
    unsigned max_concurrent_moves;
    unsigned max_queued_moves;
    uint64_t move_timeout_ms; /* 0: none */
    uint64_t stall_timeout_ms;
    enum verify_mode verify;
    enum reclaim_mode reclaim;
    enum io_priority io_priority;
    uint64_t max_rate; /* bytes/s per move; 0: the adaptive pace only */
    uint64_t max_message_bytes;
    char *ca_file;
    bool tls_insecure;
    char *metrics_file; /* NULL: no metrics */
    uint64_t
        prepare_ttl_ms; /* a prepared move not committed within this is rolled back; 0: never */
    enum transport_kind transport;
    char *nats_servers_raw; /* as written, for the logs */
    char **nats_servers;    /* nats:// or tls:// URLs */
    size_t n_nats_servers;
    char *nats_creds_file;     /* JWT + nkey seed (a .creds file) */
    char *nats_nkey_seed_file; /* an nkey seed alone */
    char *nats_user;
    char *nats_password_file;
    char *nats_password; /* read from nats_password_file */
    char *nats_subject_prefix;
    bool nats_jetstream;
};

/* Problems found while loading, each already formatted "FILE:LINE: message". */
struct config_errors {
    char **lines;
    size_t n;
};

/* Loads and validates file into cfg (defaults first). Returns 0, or -EINVAL
 * when errs holds at least one problem; cfg is then freed. */
int config_load(const char *file, struct config *cfg, struct config_errors *errs);

/* The same from an open stream; file names it in the messages. */
int config_load_stream(FILE *f, const char *file, struct config *cfg, struct config_errors *errs);
void config_free(struct config *cfg);
void config_errors_free(struct config_errors *errs);

/* A reload keeps the transport of the running process: moves the
 * transport's keys (transport, nats_*) from old into fresh, and fresh's
 * into old (freed with it). */
void config_keep_transport(struct config *fresh, struct config *old);

#endif
