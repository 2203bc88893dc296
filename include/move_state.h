/* move_state.h: phases, result codes and the MoveState record sent on the wire. */
#ifndef HOSTAGENT_MOVE_STATE_H
#define HOSTAGENT_MOVE_STATE_H

#include <cJSON.h>
#include <stdbool.h>
#include <stdint.h>

enum move_phase {
    PHASE_QUEUED = 0,
    PHASE_CALCULATING,
    PHASE_COPYING,
    PHASE_READY,   /* a prepared move: copied while the server runs, awaiting its commit */
    PHASE_SYNCING, /* a prepared move's commit: the final pass */
    PHASE_VERIFYING,
    PHASE_CLEANING,
    PHASE_COMPLETE,
    PHASE_ERROR,
    PHASE_CANCELLED,
};

/* Protocol codes, in the protocol's precedence order for validation. */
enum move_code {
    CODE_NONE = 0,
    CODE_INVALID_REQUEST,
    CODE_PATH_NOT_ALLOWED,
    CODE_INVALID_PATHS,
    CODE_SOURCE_MISSING,
    CODE_DESTINATION_EXISTS,
    CODE_BUSY,
    CODE_TOO_MANY_MOVES,
    CODE_UNKNOWN_SUBJECT,
    CODE_NOT_FOUND,
    CODE_NO_SPACE,
    CODE_PERMISSION_DENIED,
    CODE_IO_ERROR,
    CODE_SOURCE_CHANGED,
    CODE_CANCELLED,
    CODE_TIMEOUT,
    CODE_SHUTTING_DOWN,
    CODE_INTERRUPTED,
    /* After a restart the disk did not match the journal: nothing was
     * touched, and where the server's files are is for the operator to say. */
    CODE_NEEDS_ATTENTION,
};

#define CODE_LAST CODE_NEEDS_ATTENTION

#define MOVE_ID_MAX 64
#define SERVER_NAME_MAX 128
#define MOVE_ERROR_MAX 512
#define MOVE_CURRENT_MAX 512
#define MOVE_TEXT_MAX 512 /* the larger of the two above */

/* A move's progress counters. One struct, embedded wherever they travel
 * (engine_progress, progress_item, move_state, journal_rec) and copied whole;
 * the journal keeps the first four. */
struct move_counters {
    uint64_t bytes_total, bytes_copied;
    uint64_t files_total, files_copied;
    uint64_t phase_done, phase_total; /* the current phase's own, for phasePercent */
    /* Bytes of content the engine went through (read and written, or a
     * hole passed over), whether bytes_copied counts them or not (a commit's
     * final pass does not): progress for stall_timeout, never shown nor
     * journaled. */
    uint64_t io_bytes;
    /* The pace the copy is held to (pace.h): bytes/s, 0 when none; yielding
     * when that is the disk-latency controller giving way to other I/O, not
     * the operator's cap. Shown (rateLimit, yielding), never journaled. */
    uint64_t rate_limit;
    bool yielding;
};

struct move_state {
    char move_id[MOVE_ID_MAX + 1];
    char server_name[SERVER_NAME_MAX + 1];
    char *old_path; /* owned */
    char *new_path; /* owned */
    enum move_phase phase;
    bool rename;
    struct move_counters count;
    double percent;
    double phase_percent;
    uint64_t bytes_per_second;
    int64_t eta_seconds; /* < 0: unknown, left out */
    uint64_t elapsed_ms;
    char current_file[MOVE_CURRENT_MAX]; /* "" when none */
    uint64_t seq;
    uint64_t started_at_ms; /* wall clock */
    uint64_t ended_at_ms;   /* 0 while not ended */
    enum move_code code;
    char error[MOVE_ERROR_MAX];
    /* Phase complete only: the move succeeded but its cleaning stopped
     * (warningCode/warning in JSON); CODE_NONE otherwise. */
    enum move_code warning_code;
    char warning[MOVE_ERROR_MAX];
};

const char *move_phase_name(enum move_phase p);
bool move_phase_terminal(enum move_phase p);
/* The phases' state machine: queued -> calculating -> copying -> verifying ->
 * cleaning -> complete (a prepared move: ... copying -> ready -> syncing ->
 * verifying ...), forward only (a rename, or a move resumed from the
 * journal, skips some) except that a commit that met a changing source goes
 * back to ready (syncing or verifying -> ready), and error or cancelled (or
 * complete) from any phase that has not ended. An ended move changes no more. */
bool move_phase_may_follow(enum move_phase from, enum move_phase to);
const char *move_code_name(enum move_code c);
/* The code named s (not CODE_NONE); false when there is none. */
bool move_code_from(const char *s, enum move_code *c);

/* Frees the owned strings of s (not s itself). */
void move_state_clear(struct move_state *s);
/* Deep copy; dst must be cleared or zeroed. */
void move_state_copy(struct move_state *dst, const struct move_state *src);

/* The MoveState object of the protocol. 64-bit counters are printed exactly;
 * file names are made valid UTF-8. Caller owns the result. */
cJSON *move_state_to_json(const struct move_state *s);

/* Adds an exact unsigned 64-bit integer member (cJSON numbers are doubles). */
void json_add_u64(cJSON *obj, const char *key, uint64_t v);

#endif
