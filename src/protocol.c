/* protocol.c: the envelope, field validation and frame construction. */
#include "protocol.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One pass over the raw text, outside and inside strings: the deepest
 * nesting, and every "\u0000" escape rewritten in place to "\uffff" so that a
 * NUL cJSON would silently cut at stays visible (as U+FFFF) to the checks.
 * Returns the maximum depth. */
static int raw_scan(char *buf, size_t len)
{
    int depth = 0, max = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (in_str) {
            if (c == '\\' && i + 1 < len) {
                if (buf[i + 1] == 'u' && i + 5 < len && memcmp(buf + i + 2, "0000", 4) == 0)
                    memcpy(buf + i + 2, "ffff", 4);
                i++;
            } else if (c == '"') {
                in_str = false;
            }
            continue;
        }
        if (c == '"')
            in_str = true;
        else if (c == '{' || c == '[') {
            if (++depth > max)
                max = depth;
        } else if (c == '}' || c == ']')
            depth--;
    }
    return max;
}

static bool string_ok(const cJSON *it, size_t max)
{
    size_t n;
    if (!cJSON_IsString(it) || !it->valuestring)
        return false;
    n = strlen(it->valuestring);
    return n >= 1 && n <= max && !strstr(it->valuestring, "\xef\xbf\xbf");
}

enum frame_status protocol_parse_frame(const char *buf, size_t len, struct frame *f, char *why,
                                       size_t whysz)
{
    char *copy;
    const char *end = NULL;
    const cJSON *subject, *reply, *data;
    bool trailing = false;
    int depth;

    memset(f, 0, sizeof *f);
    if (!util_utf8_valid(buf, len)) {
        util_fmt(why, whysz, "frame is not valid UTF-8");
        return FRAME_DROP;
    }
    copy = xstrndup(buf, len);
    depth = raw_scan(copy, len);
    /* Deeper than cJSON's own limit never reaches the parser; between our
     * limit and that one it is parsed only to read a reply to refuse to. */
    if (depth > CJSON_NESTING_LIMIT) {
        free(copy);
        util_fmt(why, whysz, "JSON nested deeper than %d levels", JSON_DEPTH_MAX);
        return FRAME_DROP;
    }
    if (depth > JSON_DEPTH_MAX)
        util_fmt(why, whysz, "JSON nested deeper than %d levels", JSON_DEPTH_MAX);
    f->root = cJSON_ParseWithLengthOpts(copy, len, &end, 0);
    if (f->root && end) {
        while (end < copy + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
            end++;
        trailing = end != copy + len;
    }
    free(copy);
    if (!f->root) {
        util_fmt(why, whysz, "frame is not valid JSON");
        return FRAME_DROP;
    }
    if (!cJSON_IsObject(f->root)) {
        util_fmt(why, whysz, "frame is not a JSON object");
        return FRAME_DROP;
    }
    reply = cJSON_GetObjectItemCaseSensitive(f->root, "reply");
    if (reply && !string_ok(reply, SUBJECT_MAX)) {
        util_fmt(why, whysz, "field reply must be a string of 1-%d bytes", SUBJECT_MAX);
        return FRAME_DROP;
    }
    if (reply)
        f->reply = reply->valuestring;
    if (depth > JSON_DEPTH_MAX || trailing) {
        if (trailing)
            util_fmt(why, whysz, "frame has data after its JSON object");
        return f->reply ? FRAME_INVALID : FRAME_DROP;
    }
    subject = cJSON_GetObjectItemCaseSensitive(f->root, "subject");
    if (!string_ok(subject, SUBJECT_MAX)) {
        util_fmt(why, whysz, "field subject must be a string of 1-%d bytes", SUBJECT_MAX);
        return f->reply ? FRAME_INVALID : FRAME_DROP;
    }
    f->subject = subject->valuestring;
    data = cJSON_GetObjectItemCaseSensitive(f->root, "data");
    if (data && !cJSON_IsObject(data)) {
        util_fmt(why, whysz, "field data must be an object");
        return f->reply ? FRAME_INVALID : FRAME_DROP;
    }
    if (!data) {
        f->empty_data = cJSON_CreateObject();
        data = f->empty_data;
    }
    f->data = data;
    return FRAME_OK;
}

void frame_free(struct frame *f)
{
    cJSON_Delete(f->root);
    cJSON_Delete(f->empty_data);
    memset(f, 0, sizeof *f);
}

bool protocol_name_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    return n >= 1 && n <= max &&
           strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

int protocol_parse_move_data(const cJSON *data, struct move_request *req, char *why, size_t whysz)
{
    const cJSON *sn = cJSON_GetObjectItemCaseSensitive(data, "serverName");
    const cJSON *op = cJSON_GetObjectItemCaseSensitive(data, "oldPath");
    const cJSON *np = cJSON_GetObjectItemCaseSensitive(data, "newPath");
    const cJSON *mi = cJSON_GetObjectItemCaseSensitive(data, "moveId");
    const cJSON *mr = cJSON_GetObjectItemCaseSensitive(data, "maxRate");

    memset(req, 0, sizeof *req);
    if (!cJSON_IsString(sn) || !protocol_name_ok(sn->valuestring, SERVER_NAME_MAX)) {
        util_fmt(why, whysz, "serverName must be a string of 1-%d characters of A-Z a-z 0-9 . _ -",
                 SERVER_NAME_MAX);
        return -1;
    }
    if (!cJSON_IsString(op) || op->valuestring[0] == '\0') {
        util_fmt(why, whysz, "oldPath must be a non-empty string");
        return -1;
    }
    if (!cJSON_IsString(np) || np->valuestring[0] == '\0') {
        util_fmt(why, whysz, "newPath must be a non-empty string");
        return -1;
    }
    if (mi && (!cJSON_IsString(mi) || !protocol_name_ok(mi->valuestring, MOVE_ID_MAX))) {
        util_fmt(why, whysz, "moveId must be a string of 1-%d characters of A-Z a-z 0-9 . _ -",
                 MOVE_ID_MAX);
        return -1;
    }
    /* The bounds first: the cast that tests for an integer needs them. */
    if (mr && (!cJSON_IsNumber(mr) || !(mr->valuedouble >= (double)PROTOCOL_MAX_RATE_MIN) ||
               mr->valuedouble > (double)PROTOCOL_MAX_RATE_MAX ||
               mr->valuedouble != (double)(uint64_t)mr->valuedouble)) {
        util_fmt(why, whysz, "maxRate must be an integer number of bytes per second, at least %llu",
                 (unsigned long long)PROTOCOL_MAX_RATE_MIN);
        return -1;
    }
    if (mr)
        req->max_rate = (uint64_t)mr->valuedouble;
    snprintf(req->server_name, sizeof req->server_name, "%s", sn->valuestring);
    if (mi)
        snprintf(req->move_id, sizeof req->move_id, "%s", mi->valuestring);
    req->old_path = op->valuestring;
    req->new_path = np->valuestring;
    return 0;
}

int protocol_parse_selector(const cJSON *data, struct move_selector *sel, char *why, size_t whysz)
{
    const cJSON *sn = cJSON_GetObjectItemCaseSensitive(data, "serverName");
    const cJSON *mi = cJSON_GetObjectItemCaseSensitive(data, "moveId");
    memset(sel, 0, sizeof *sel);
    if (sn && (!cJSON_IsString(sn) || !protocol_name_ok(sn->valuestring, SERVER_NAME_MAX))) {
        util_fmt(why, whysz, "serverName must be a string of 1-%d characters of A-Z a-z 0-9 . _ -",
                 SERVER_NAME_MAX);
        return -1;
    }
    if (mi && (!cJSON_IsString(mi) || !protocol_name_ok(mi->valuestring, MOVE_ID_MAX))) {
        util_fmt(why, whysz, "moveId must be a string of 1-%d characters of A-Z a-z 0-9 . _ -",
                 MOVE_ID_MAX);
        return -1;
    }
    if (sn)
        util_fmt(sel->server_name, sizeof sel->server_name, "%s", sn->valuestring);
    if (mi)
        util_fmt(sel->move_id, sizeof sel->move_id, "%s", mi->valuestring);
    return 0;
}

char *protocol_envelope(const char *subject, cJSON *data)
{
    cJSON *env = cJSON_CreateObject();
    char *s;
    cJSON_AddStringToObject(env, "subject", subject);
    cJSON_AddItemToObject(env, "data", data);
    s = cJSON_PrintUnformatted(env);
    cJSON_Delete(env);
    if (!s)
        abort(); /* cJSON fails only without memory: same policy as xmalloc */
    return s;
}

cJSON *protocol_failure(enum move_code code, const char *error)
{
    cJSON *d = cJSON_CreateObject();
    char clean[MOVE_ERROR_MAX];
    util_utf8_sanitize(clean, sizeof clean, error);
    cJSON_AddBoolToObject(d, "success", 0);
    cJSON_AddStringToObject(d, "code", move_code_name(code));
    cJSON_AddStringToObject(d, "error", clean);
    return d;
}
