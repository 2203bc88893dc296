/* metrics.h: the daemon's counters and gauges, rendered in Prometheus' text
 * format and written as a file for node_exporter's textfile collector. */
#ifndef HOSTAGENT_METRICS_H
#define HOSTAGENT_METRICS_H

#include "move_state.h"
#include "transport.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Upper bounds (ms) of the move duration histogram, +Inf aside: from a
 * same-filesystem rename (milliseconds) to a copy of hours. */
#define METRICS_DURATION_BUCKETS 15
extern const uint64_t metrics_duration_bounds_ms[METRICS_DURATION_BUCKETS];

#define METRICS_N_CODES (CODE_INTERRUPTED + 1)
#define METRICS_N_CONN_STATES (CONN_CLOSED + 1)

/* Everything lives on the loop thread: no locks. Counters start at zero at
 * every daemon start (Prometheus notices the reset). */
struct metrics {
    /* Set once. */
    uint64_t start_wall_ms;
    const char *version;
    const char *agent_id; /* the owner's string; may be replaced on reload */

    /* Connection. */
    enum conn_state conn_state;
    uint64_t reconnects;        /* attempts after the first one */
    uint64_t last_pong_wall_ms; /* 0: no ping answered yet */

    /* Moves: the gauges are set by the owner before each write. */
    unsigned moves_active, moves_queued;
    uint64_t reclaiming_bytes, reclaiming_entries;       /* left to delete by deferred reclaims */
    uint64_t moves_ended[METRICS_N_CODES];               /* by code; CODE_NONE: complete */
    uint64_t refused[METRICS_N_CODES];                   /* requests answered with a failure */
    uint64_t bytes_copied, files_copied;                 /* by ended moves */
    uint64_t duration_buckets[METRICS_DURATION_BUCKETS]; /* not cumulative */
    uint64_t duration_count;
    uint64_t duration_sum_ms;

    /* The writer. */
    char *written_path;   /* the file last written successfully (removed on a path change) */
    int last_error;       /* errno of the last failed write, 0 after a success */
    uint64_t last_log_ms; /* monotonic time of the last failure logged */
    unsigned fails_unlogged;
};

void metrics_init(struct metrics *m, const char *version, const char *agent_id);
void metrics_free(struct metrics *m);

/* A connection state change (counts retries as reconnects). */
void metrics_conn_state(struct metrics *m, enum conn_state s);

/* A move that ended in this run (a recovered one too): code, bytes, files,
 * duration from its wall-clock start and end. */
void metrics_move_ended(struct metrics *m, const struct move_state *st);

/* A request answered with a failure code (nothing was started). */
void metrics_refused(struct metrics *m, enum move_code code);

/* The whole file in Prometheus' text exposition format (0.0.4). Caller
 * frees *out. */
void metrics_render(const struct metrics *m, char **out, size_t *len);

/* Writes buf to path atomically: a temporary file in the same directory,
 * then rename(2), so a reader sees the old or the new file, never a part.
 * 0 or negative errno. */
int metrics_write_file(const char *path, const char *buf, size_t len);

/* Renders and writes to path (NULL: metrics off, and a file written before
 * is removed). A failure is logged, rate-limited, never fatal. When path
 * differs from the file last written, that one is removed. */
void metrics_update_file(struct metrics *m, const char *path);

#endif
