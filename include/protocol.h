/* protocol.h: strict parsing of manager frames and building of agent frames. */
#ifndef HOSTAGENT_PROTOCOL_H
#define HOSTAGENT_PROTOCOL_H

#include "move_state.h"

#include <cJSON.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

#define PROTOCOL_VERSION 1
#define SUBJECT_MAX 256
#define JSON_DEPTH_MAX 32

struct frame {
    cJSON *root;
    const char *subject; /* NULL when unreadable */
    const char *reply;   /* NULL when absent or unreadable */
    const cJSON *data;   /* the data object; an empty one when absent */
    cJSON *empty_data;   /* owned when data was absent */
};

enum frame_status {
    FRAME_OK = 0,
    FRAME_DROP,    /* malformed, no readable reply: log and drop */
    FRAME_INVALID, /* malformed but f->reply is readable: answer invalid_request */
};

/* Parses one text message of len bytes (not NUL-terminated). why receives a
 * sentence for the log and the answer. frame_free() in every case. */
enum frame_status protocol_parse_frame(const char *buf, size_t len, struct frame *f, char *why,
                                       size_t whysz);
void frame_free(struct frame *f);

struct move_request {
    char server_name[SERVER_NAME_MAX + 1];
    char move_id[MOVE_ID_MAX + 1]; /* "" when absent */
    const char *old_path;          /* into the frame */
    const char *new_path;          /* into the frame */
    uint64_t max_rate;             /* maxRate, bytes/s; 0 when absent */
};

/* maxRate's bounds: at least 1 MiB/s, and an integer a double holds exactly. */
#define PROTOCOL_MAX_RATE_MIN (1ull << 20)
#define PROTOCOL_MAX_RATE_MAX (1ull << 53)

/* Field types and bounds of server.move_data (invalid_request). Paths are
 * only checked for being strings here; their rules are in paths.c. */
int protocol_parse_move_data(const cJSON *data, struct move_request *req, char *why, size_t whysz);

/* The envelope {"subject":..,"data":..}; takes ownership of data. Returns a
 * malloc'd string (free with cJSON_free). */
char *protocol_envelope(const char *subject, cJSON *data);

/* Which moves a server.move_cancel or server.move_status names. */
struct move_selector {
    char server_name[SERVER_NAME_MAX + 1]; /* "" when absent */
    char move_id[MOVE_ID_MAX + 1];         /* "" when absent */
};

/* {"serverName"} and/or {"moveId"}, each optional here (invalid_request when
 * present and malformed). Both given: a move must match both. */
int protocol_parse_selector(const cJSON *data, struct move_selector *sel, char *why, size_t whysz);

/* {"success":false,"code":..,"error":..} for simple failures. */
cJSON *protocol_failure(enum move_code code, const char *error);

/* True when s is 1..max bytes of [A-Za-z0-9._-]. */
bool protocol_name_ok(const char *s, size_t max);

#endif
