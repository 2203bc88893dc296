/* agent.h: the daemon: owns the loop, the config, the manager connection and
 * the moves; dispatches requests; stops gracefully. */
#ifndef HOSTAGENT_AGENT_H
#define HOSTAGENT_AGENT_H

#include "config.h"
#include "control.h"
#include "journal.h"
#include "journal_writer.h"
#include "metrics.h"
#include "notify.h"
#include "move.h"
#include "path_check.h"
#include "protocol.h"
#include "transport.h"
#include "reclaim.h"

#include <stdbool.h>
#include <uv.h>

#define AGENT_HISTORY_MAX 100
#define AGENT_HISTORY_MS (3600ull * 1000ull)
#define AGENT_STOP_GRACE_MS 5000
/* A server.move_status answer stops adding moves past this size. */
#define AGENT_STATUS_MAX_BYTES (256u << 10)
/* A stop leaves behind (and exits without) the threads that have shown no
 * sign of life for this long since the stop began: stuck in the kernel on a
 * disk that does not answer. */
#define AGENT_STOP_STUCK_MS 10000u
/* A checked request waits at most this long for earlier requests still
 * being checked, so that moves keep their arrival order. */
#define AGENT_ORDER_GRACE_MS 200u

/* A move that ended: kept an hour for agent.hello and idempotent retries. */
/* Under systemd, a stop waiting for rollbacks asks for this much more time,
 * this often. */
#define AGENT_EXTEND_USEC 20000000ull
#define AGENT_EXTEND_EVERY_MS 5000u

struct agent_ended {
    struct move_state st;
    char *answer_data; /* the answer's data object, printed */
    uint64_t ended_mono;
    struct journal_rec *jr; /* until delivered and an hour old; NULL without */
    /* The outcome is not recorded in the journal yet (its write is under
     * way on the journal writer, or it failed and is retried): it is not
     * sent (a restart would settle the move from its older record, and the
     * manager would get a second, different outcome) until it is. Shown
     * meanwhile as not ended, in its last journaled phase. */
    bool held;
    enum move_phase held_phase;
    bool recording; /* a write of the outcome is under way (ticket: which) */
    bool retried;   /* a write of it failed before (agent_hold) */
    uint64_t ticket;
};

#define AGENT_HELD_RETRY_MS 5000
/* A server.move_data request whose paths are being checked off the loop. */
struct agent_pending {
    uint64_t seq;            /* arrival order among all requests */
    bool prepare;            /* server.move_prepare (else server.move_data) */
    struct move_request req; /* its paths point into the strings below */
    char *old_path, *new_path;
    char *reply;
    char old_norm[PATH_MAX], new_norm[PATH_MAX]; /* for the order rule */
    struct path_check *check;                    /* NULL once it reported */
    bool timed_out;
    uint64_t checked_ms;  /* when its check came in (monotonic) */
    char where[PATH_MAX]; /* timed out: the path it hung on ("" unknown) */
    struct path_check_result out;
    /* Accepted: its record is being written (in a->accepting; the move is
     * made once it is). */
    struct journal_rec *jr;
    struct agent *owner;
    struct agent_pending *next;
};

/* A request that waits for an earlier request's check (see agent_requests.c). */
struct agent_deferred {
    uint64_t seq;
    struct frame f;
    struct agent_deferred *next;
};

struct agent {
    uv_loop_t loop;
    struct journal journal;
    struct config cfg;
    char *config_path;
    struct transport *tr;   /* the link to the manager(s): WebSocket or NATS */
    struct control control; /* hostagent status / cancel */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t heartbeat;
    uv_timer_t stop_timer;
    uv_timer_t notify_timer; /* systemd: watchdog pings, stop-timeout extensions */
    uv_timer_t held_timer;   /* retries recording held outcomes */
    uv_timer_t order_timer;  /* a checked request waits for earlier checks (grace) */
    struct notify notify;
    uint64_t last_watchdog_ms, last_extend_ms;
    struct move *moves; /* not ended, in acceptance order (queued ones too) */
    unsigned n_moves;
    /* Ended moves whose worker has not come back (stuck on a disk), and
     * rollbacks left from an earlier run: their paths stay busy. */
    struct move *orphans;
    struct path_checker checker;
    struct agent_pending *pending; /* requests being checked, in arrival order */
    /* Requests accepted whose record is being written (agent_accept.c): every
     * later request waits for them to be decided, and a cancel, commit or
     * status naming one waits for its move. */
    struct agent_pending *accepting;
    struct agent_deferred *deferred; /* requests waiting for those, in order */
    uint64_t msg_seq, cur_seq;       /* requests received; the one handled now */
    uv_timer_t stop_wait;            /* a stop waiting for workers */
    uint64_t stop_started_ms;
    struct agent_ended history[AGENT_HISTORY_MAX]; /* ring, newest at hist_pos-1 */
    unsigned hist_pos, hist_len;
    bool stopping, torn_down, stop_finishing;
    uint64_t started_wall_ms, started_mono;
    unsigned id_counter;
    char hostname[256];
    /* metrics_file: rewritten every heartbeat_interval, also while stopping. */
    uv_timer_t metrics_timer;
    struct metrics metrics;
    /* Deletes the reclaim directories of deferred reclaims after the answer. */
    struct reclaimer reclaimer;
    bool reclaim_left; /* a stop left its thread behind (stuck on a disk) */
    /* Writes state_dir's records (journal and reclaim) off the loop; what
     * depends on a record is done in its completion. */
    struct journal_writer writer;
    bool writer_left;      /* a stop left its thread behind (stuck on state_dir) */
    uint64_t write_ticket; /* the last given to an outcome being recorded */
    /* The lifecycle's reaction when a move left the list (released: an
     * orphan's worker came back): the queue moves on, a stop may finish.
     * Set by agent_init, called by agent_moves.c, which sits below it. */
    void (*move_gone)(struct agent *a, bool released);
    /* Requests were decided (or a record they wait for was written): the
     * requests held back for them run now (agent_requests.c). Set by
     * agent_init, called by agent_accept.c and agent_moves.c below it. */
    void (*decided)(struct agent *a);
};

/* Takes ownership of cfg. 0 or negative errno (nothing started then). */
int agent_init(struct agent *a, const char *config_path, struct config *cfg);

/* Runs until stopped by a signal; tears everything down. Returns the exit
 * status (0). */
int agent_run(struct agent *a);

#endif
