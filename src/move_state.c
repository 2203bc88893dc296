/* move_state.c: names of phases and codes, and MoveState as protocol JSON. */
#include "move_state.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const phase_names[] = {
    [PHASE_QUEUED] = "queued",     [PHASE_CALCULATING] = "calculating",
    [PHASE_COPYING] = "copying",   [PHASE_READY] = "ready",
    [PHASE_SYNCING] = "syncing",   [PHASE_VERIFYING] = "verifying",
    [PHASE_CLEANING] = "cleaning", [PHASE_COMPLETE] = "complete",
    [PHASE_ERROR] = "error",       [PHASE_CANCELLED] = "cancelled",
};

static const char *const code_names[] = {
    [CODE_NONE] = "",
    [CODE_INVALID_REQUEST] = "invalid_request",
    [CODE_PATH_NOT_ALLOWED] = "path_not_allowed",
    [CODE_INVALID_PATHS] = "invalid_paths",
    [CODE_SOURCE_MISSING] = "source_missing",
    [CODE_DESTINATION_EXISTS] = "destination_exists",
    [CODE_BUSY] = "busy",
    [CODE_TOO_MANY_MOVES] = "too_many_moves",
    [CODE_UNKNOWN_SUBJECT] = "unknown_subject",
    [CODE_NOT_FOUND] = "not_found",
    [CODE_NO_SPACE] = "no_space",
    [CODE_PERMISSION_DENIED] = "permission_denied",
    [CODE_IO_ERROR] = "io_error",
    [CODE_SOURCE_CHANGED] = "source_changed",
    [CODE_CANCELLED] = "cancelled",
    [CODE_TIMEOUT] = "timeout",
    [CODE_SHUTTING_DOWN] = "shutting_down",
    [CODE_INTERRUPTED] = "interrupted",
    [CODE_NEEDS_ATTENTION] = "needs_attention",
};

const char *move_phase_name(enum move_phase p)
{
    return (unsigned)p < ARRAY_SIZE(phase_names) ? phase_names[p] : "unknown";
}

bool move_phase_terminal(enum move_phase p)
{
    return p == PHASE_COMPLETE || p == PHASE_ERROR || p == PHASE_CANCELLED;
}

bool move_phase_may_follow(enum move_phase from, enum move_phase to)
{
    if (move_phase_terminal(from))
        return false;
    if (to == PHASE_READY &&
        (from == PHASE_SYNCING || from == PHASE_VERIFYING || from == PHASE_CLEANING))
        return true; /* a commit that met a changing source (put back whole if renamed) */
    return move_phase_terminal(to) || to > from;
}

const char *move_code_name(enum move_code c)
{
    return (unsigned)c < ARRAY_SIZE(code_names) ? code_names[c] : "io_error";
}

bool move_code_from(const char *s, enum move_code *c)
{
    for (unsigned i = CODE_NONE + 1; i < ARRAY_SIZE(code_names); i++) {
        if (code_names[i] && strcmp(code_names[i], s) == 0) {
            *c = (enum move_code)i;
            return true;
        }
    }
    return false;
}

void move_state_clear(struct move_state *s)
{
    free(s->old_path);
    free(s->new_path);
    s->old_path = s->new_path = NULL;
}

void move_state_copy(struct move_state *dst, const struct move_state *src)
{
    move_state_clear(dst);
    *dst = *src;
    dst->old_path = src->old_path ? xstrdup(src->old_path) : NULL;
    dst->new_path = src->new_path ? xstrdup(src->new_path) : NULL;
}

void json_add_u64(cJSON *obj, const char *key, uint64_t v)
{
    char num[24];
    snprintf(num, sizeof num, "%" PRIu64, v);
    cJSON_AddItemToObject(obj, key, cJSON_CreateRaw(num));
}

static void add_percent(cJSON *obj, const char *key, double v)
{
    char num[16];
    if (v < 0)
        v = 0;
    if (v > 100)
        v = 100;
    snprintf(num, sizeof num, "%.2f", v);
    cJSON_AddItemToObject(obj, key, cJSON_CreateRaw(num));
}

static void add_clean_string(cJSON *obj, const char *key, const char *s)
{
    char clean[MOVE_TEXT_MAX];
    util_utf8_sanitize(clean, sizeof clean, s);
    cJSON_AddStringToObject(obj, key, clean);
}

cJSON *move_state_to_json(const struct move_state *s)
{
    char ts[UTIL_TIME_LEN];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "moveId", s->move_id);
    cJSON_AddStringToObject(o, "serverName", s->server_name);
    cJSON_AddStringToObject(o, "oldPath", s->old_path ? s->old_path : "");
    cJSON_AddStringToObject(o, "newPath", s->new_path ? s->new_path : "");
    cJSON_AddStringToObject(o, "phase", move_phase_name(s->phase));
    cJSON_AddStringToObject(o, "method", s->rename ? "rename" : "copy");
    json_add_u64(o, "bytesTotal", s->count.bytes_total);
    json_add_u64(o, "bytesCopied", s->count.bytes_copied);
    json_add_u64(o, "filesTotal", s->count.files_total);
    json_add_u64(o, "filesCopied", s->count.files_copied);
    add_percent(o, "percent", s->percent);
    add_percent(o, "phasePercent", s->phase_percent);
    json_add_u64(o, "bytesPerSecond", s->bytes_per_second);
    if (s->eta_seconds >= 0)
        json_add_u64(o, "etaSeconds", (uint64_t)s->eta_seconds);
    /* Only while a limit holds a copy (the only phase paced): an idle
     * disk's frames stay as they were. */
    if (s->count.rate_limit && s->phase == PHASE_COPYING) {
        json_add_u64(o, "rateLimit", s->count.rate_limit);
        if (s->count.yielding)
            cJSON_AddBoolToObject(o, "yielding", true);
    }
    json_add_u64(o, "elapsedMs", s->elapsed_ms);
    if (s->current_file[0])
        add_clean_string(o, "currentFile", s->current_file);
    json_add_u64(o, "seq", s->seq);
    util_rfc3339(s->started_at_ms, ts);
    cJSON_AddStringToObject(o, "startedAt", ts);
    if (s->ended_at_ms) {
        util_rfc3339(s->ended_at_ms, ts);
        cJSON_AddStringToObject(o, "endedAt", ts);
    }
    if (s->phase == PHASE_ERROR || s->phase == PHASE_CANCELLED) {
        cJSON_AddStringToObject(o, "code", move_code_name(s->code));
        add_clean_string(o, "error", s->error);
    }
    if (s->phase == PHASE_COMPLETE && s->warning_code != CODE_NONE) {
        cJSON_AddStringToObject(o, "warningCode", move_code_name(s->warning_code));
        add_clean_string(o, "warning", s->warning);
    }
    return o;
}
