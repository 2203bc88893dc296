/* test_protocol.c: frame parsing (each malformed case), move_data fields,
 * MoveState JSON, log lines and the frame throttle rule. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "log.h"
#include "move.h"
#include "move_state.h"
#include "protocol.h"
#include "ws_client.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum frame_status parse(const char *text, struct frame *f, char *why)
{
    return protocol_parse_frame(text, strlen(text), f, why, 256);
}

static void test_valid_frames(void **state)
{
    struct frame f;
    char why[256];
    (void)state;
    assert_int_equal(parse("{\"subject\":\"server.move_data\",\"reply\":\"_INBOX.1\","
                           "\"data\":{\"a\":1},\"extra\":[1,2]}",
                           &f, why),
                     FRAME_OK);
    assert_string_equal(f.subject, "server.move_data");
    assert_string_equal(f.reply, "_INBOX.1");
    assert_true(cJSON_IsObject(f.data));
    frame_free(&f);
    /* data absent means {} and reply is optional; surrounding space is fine */
    assert_int_equal(parse("  {\"subject\":\"x\"}\n", &f, why), FRAME_OK);
    assert_null(f.reply);
    assert_true(cJSON_IsObject(f.data));
    assert_null(f.data->child);
    frame_free(&f);
}

struct bad_frame {
    const char *text;
    enum frame_status want;
    const char *why;
};

static void test_malformed_frames(void **state)
{
    static char long_subject[400];
    static char deep[200], deep_reply[200], abyss[4200];
    static const struct bad_frame cases[] = {
        {"not json", FRAME_DROP, "not valid JSON"},
        {"", FRAME_DROP, "not valid JSON"},
        {"{\"subject\":\"x\"} trailing", FRAME_DROP, "data after its JSON object"},
        {"{\"subject\":\"x\",\"reply\":\"r\"} {}", FRAME_INVALID, "data after its JSON object"},
        {"{\"subject\":\"x\"", FRAME_DROP, "not valid JSON"},
        {"[1,2]", FRAME_DROP, "not a JSON object"},
        {"\"str\"", FRAME_DROP, "not a JSON object"},
        {"{}", FRAME_DROP, "subject"},
        {"{\"subject\":5}", FRAME_DROP, "subject"},
        {"{\"subject\":\"\"}", FRAME_DROP, "subject"},
        {"{\"subject\":\"a\\u0000b\"}", FRAME_DROP, "subject"},
        {"{\"subject\":\"x\",\"reply\":7}", FRAME_DROP, "reply"},
        {"{\"subject\":\"x\",\"reply\":\"\"}", FRAME_DROP, "reply"},
        {"{\"reply\":\"_INBOX.1\"}", FRAME_INVALID, "subject"},
        {"{\"reply\":\"_INBOX.1\",\"subject\":null}", FRAME_INVALID, "subject"},
        {"{\"subject\":\"x\",\"reply\":\"r\",\"data\":[]}", FRAME_INVALID, "data"},
        {"{\"subject\":\"x\",\"reply\":\"r\",\"data\":\"s\"}", FRAME_INVALID, "data"},
        {"{\"subject\":\"x\",\"data\":5}", FRAME_DROP, "data"},
        {"{\"subject\":\"\xff\xfe\"}", FRAME_DROP, "UTF-8"},
        {long_subject, FRAME_INVALID, "subject"},
        {deep, FRAME_DROP, "nested"},
        {deep_reply, FRAME_INVALID, "nested"},
        {abyss, FRAME_DROP, "nested"},
    };
    (void)state;
    snprintf(long_subject, sizeof long_subject, "{\"reply\":\"r\",\"subject\":\"%0300d\"}", 0);
    strcpy(deep, "{\"subject\":\"x\",\"data\":");
    for (int i = 0; i < 40; i++)
        strcat(deep, "[");
    for (int i = 0; i < 40; i++)
        strcat(deep, "]");
    strcat(deep, "}");
    /* The same with a reply: refused, not dropped. */
    snprintf(deep_reply, sizeof deep_reply, "{\"reply\":\"r\",%s", deep + 1);
    /* Past cJSON's own limit: never parsed at all. */
    strcpy(abyss, "{\"reply\":\"r\",\"data\":");
    for (int i = 0; i < 2000; i++)
        strcat(abyss, "[");
    for (int i = 0; i < 2000; i++)
        strcat(abyss, "]");
    strcat(abyss, "}");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct frame f;
        char why[256] = "";
        enum frame_status st = parse(cases[i].text, &f, why);
        if (st != cases[i].want || !strstr(why, cases[i].why))
            fail_msg("case %zu '%.60s': status %d why '%s'", i, cases[i].text, st, why);
        if (st == FRAME_INVALID)
            assert_non_null(f.reply);
        frame_free(&f);
    }
}

static int move_data(const char *data_json, struct move_request *req, char *why)
{
    cJSON *d = cJSON_Parse(data_json);
    int rc;
    assert_non_null(d);
    rc = protocol_parse_move_data(d, req, why, 256);
    if (rc == 0) {
        /* The request points into the JSON: copy what the test reads. */
        static char oldp[256], newp[256];
        snprintf(oldp, sizeof oldp, "%s", req->old_path);
        snprintf(newp, sizeof newp, "%s", req->new_path);
        req->old_path = oldp;
        req->new_path = newp;
    }
    cJSON_Delete(d);
    return rc;
}

static void test_move_data_fields(void **state)
{
    struct move_request r;
    char why[256];
    static const struct {
        const char *json;
        const char *field;
    } bad[] = {
        {"{\"oldPath\":\"/a\",\"newPath\":\"/b\"}", "serverName"},
        {"{\"serverName\":\"\",\"oldPath\":\"/a\",\"newPath\":\"/b\"}", "serverName"},
        {"{\"serverName\":\"mc 1\",\"oldPath\":\"/a\",\"newPath\":\"/b\"}", "serverName"},
        {"{\"serverName\":\"mc/1\",\"oldPath\":\"/a\",\"newPath\":\"/b\"}", "serverName"},
        {"{\"serverName\":7,\"oldPath\":\"/a\",\"newPath\":\"/b\"}", "serverName"},
        {"{\"serverName\":\"mc\",\"newPath\":\"/b\"}", "oldPath"},
        {"{\"serverName\":\"mc\",\"oldPath\":1,\"newPath\":\"/b\"}", "oldPath"},
        {"{\"serverName\":\"mc\",\"oldPath\":\"\",\"newPath\":\"/b\"}", "oldPath"},
        {"{\"serverName\":\"mc\",\"oldPath\":\"/a\"}", "newPath"},
        {"{\"serverName\":\"mc\",\"oldPath\":\"/a\",\"newPath\":null}", "newPath"},
        {"{\"serverName\":\"mc\",\"oldPath\":\"/a\",\"newPath\":\"/b\",\"moveId\":\"\"}", "moveId"},
        {"{\"serverName\":\"mc\",\"oldPath\":\"/a\",\"newPath\":\"/b\",\"moveId\":5}", "moveId"},
        {"{\"serverName\":\"mc\",\"oldPath\":\"/a\",\"newPath\":\"/b\",\"moveId\":\"a b\"}",
         "moveId"},
        /* maxRate: an integer of bytes/s, at least 1 MiB/s, exact in a double */
        {"{\"serverName\":\"mc\",\"oldPath\":\"/a\",\"newPath\":\"/b\",\"maxRate\":\"9\"}",
         "maxRate"},
        {"{\"serverName\":\"mc\",\"oldPath\":\"/a\",\"newPath\":\"/b\",\"maxRate\":1048575}",
         "maxRate"},
        {"{\"serverName\":\"mc\",\"oldPath\":\"/a\",\"newPath\":\"/b\",\"maxRate\":-5e6}",
         "maxRate"},
        {"{\"serverName\":\"mc\",\"oldPath\":\"/a\",\"newPath\":\"/b\",\"maxRate\":2097152.5}",
         "maxRate"},
        {"{\"serverName\":\"mc\",\"oldPath\":\"/a\",\"newPath\":\"/b\",\"maxRate\":1e300}",
         "maxRate"},
        {"{\"serverName\":\"mc\",\"oldPath\":\"/a\",\"newPath\":\"/b\",\"maxRate\":null}",
         "maxRate"},
    };
    char name129[200], id65[120], json[512];
    (void)state;
    assert_int_equal(move_data("{\"serverName\":\"mc-1.a_b\",\"oldPath\":\"/srv/a\","
                               "\"newPath\":\"/srv/b\",\"moveId\":\"m-1\",\"x\":{}}",
                               &r, why),
                     0);
    assert_string_equal(r.server_name, "mc-1.a_b");
    assert_string_equal(r.move_id, "m-1");
    assert_string_equal(r.old_path, "/srv/a");
    assert_string_equal(r.new_path, "/srv/b");
    assert_int_equal(
        move_data("{\"serverName\":\"mc\",\"oldPath\":\"/a\",\"newPath\":\"/b\"}", &r, why), 0);
    assert_string_equal(r.move_id, "");
    assert_int_equal(r.max_rate, 0);
    assert_int_equal(move_data("{\"serverName\":\"mc\",\"oldPath\":\"/a\",\"newPath\":\"/b\","
                               "\"maxRate\":1048576}",
                               &r, why),
                     0);
    assert_int_equal(r.max_rate, 1048576);
    assert_int_equal(move_data("{\"serverName\":\"mc\",\"oldPath\":\"/a\",\"newPath\":\"/b\","
                               "\"maxRate\":9007199254740992}",
                               &r, why),
                     0);
    assert_int_equal(r.max_rate, 1ull << 53);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (move_data(bad[i].json, &r, why) == 0 || !strstr(why, bad[i].field))
            fail_msg("case %zu: why '%s'", i, why);
    }
    memset(name129, 'a', 129);
    name129[129] = '\0';
    snprintf(json, sizeof json, "{\"serverName\":\"%s\",\"oldPath\":\"/a\",\"newPath\":\"/b\"}",
             name129);
    assert_int_not_equal(move_data(json, &r, why), 0);
    name129[128] = '\0';
    snprintf(json, sizeof json, "{\"serverName\":\"%s\",\"oldPath\":\"/a\",\"newPath\":\"/b\"}",
             name129);
    assert_int_equal(move_data(json, &r, why), 0);
    memset(id65, 'b', 65);
    id65[65] = '\0';
    snprintf(json, sizeof json,
             "{\"serverName\":\"s\",\"oldPath\":\"/a\",\"newPath\":\"/b\",\"moveId\":\"%s\"}",
             id65);
    assert_int_not_equal(move_data(json, &r, why), 0);
}

static void test_nul_escape_is_visible(void **state)
{
    struct frame f;
    char why[256];
    const cJSON *op;
    (void)state;
    /* cJSON would cut "/srv/a\u0000/../etc" at the NUL; we must still see it. */
    assert_int_equal(
        parse("{\"subject\":\"s\",\"data\":{\"oldPath\":\"/srv/a\\u0000x\"}}", &f, why), FRAME_OK);
    op = cJSON_GetObjectItemCaseSensitive(f.data, "oldPath");
    assert_non_null(strstr(op->valuestring, "\xef\xbf\xbf"));
    frame_free(&f);
    /* An escaped backslash before u0000 is not a NUL escape. */
    assert_int_equal(parse("{\"subject\":\"s\",\"data\":{\"p\":\"a\\\\u0000\"}}", &f, why),
                     FRAME_OK);
    op = cJSON_GetObjectItemCaseSensitive(f.data, "p");
    assert_string_equal(op->valuestring, "a\\u0000");
    frame_free(&f);
}

static void test_move_state_json(void **state)
{
    struct move_state s;
    cJSON *o;
    char *txt;
    (void)state;
    memset(&s, 0, sizeof s);
    strcpy(s.move_id, "m1");
    strcpy(s.server_name, "mc-1");
    s.old_path = "/a";
    s.new_path = "/b";
    s.phase = PHASE_COPYING;
    s.count.bytes_total = 9007199254740993ull; /* 2^53 + 1: not exact as a double */
    s.count.bytes_copied = 1;
    s.count.files_total = 10;
    s.count.files_copied = 3;
    s.percent = 42.123;
    s.phase_percent = 42.123;
    s.bytes_per_second = 1000;
    s.eta_seconds = -1;
    s.elapsed_ms = 1234;
    strcpy(s.current_file, "dir/bad\xff.dat");
    s.seq = 7;
    s.started_at_ms = 1795381445123ull;
    o = move_state_to_json(&s);
    txt = cJSON_PrintUnformatted(o);
    assert_non_null(strstr(txt, "\"bytesTotal\":9007199254740993,"));
    assert_non_null(strstr(txt, "\"percent\":42.12,"));
    assert_non_null(strstr(txt, "\"method\":\"copy\""));
    assert_non_null(strstr(txt, "\"startedAt\":\"2026-11-22T21:04:05.123Z\""));
    assert_non_null(strstr(txt, "\"currentFile\":\"dir/bad\xef\xbf\xbd.dat\""));
    assert_null(strstr(txt, "etaSeconds"));
    assert_null(strstr(txt, "endedAt"));
    assert_null(strstr(txt, "\"code\""));
    for (const char *const *k =
             (const char *const[]){"moveId", "serverName", "oldPath", "newPath", "phase",
                                   "filesTotal", "filesCopied", "bytesCopied", "phasePercent",
                                   "bytesPerSecond", "elapsedMs", "seq", NULL};
         *k; k++)
        assert_non_null(cJSON_GetObjectItemCaseSensitive(o, *k));
    cJSON_free(txt);
    cJSON_Delete(o);

    s.phase = PHASE_ERROR;
    s.code = CODE_NO_SPACE;
    strcpy(s.error, "copy to /b/x: No space left on device");
    s.ended_at_ms = s.started_at_ms + 1;
    s.eta_seconds = 5;
    o = move_state_to_json(&s);
    txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    o = cJSON_Parse(txt); /* what the manager sees */
    cJSON_free(txt);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(o, "code")->valuestring, "no_space");
    assert_non_null(cJSON_GetObjectItemCaseSensitive(o, "error"));
    assert_non_null(cJSON_GetObjectItemCaseSensitive(o, "endedAt"));
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(o, "etaSeconds")->valueint, 5);
    cJSON_Delete(o);
}

static void test_log_lines(void **state)
{
    char buf[1024];
    const struct log_field f[] = {
        LF_S("move", "mv-1"), LF_S("file", "a b\"c\n"), LF_U("n", 42), LF_I("d", -3), {0}};
    (void)state;
    log_format_line(buf, sizeof buf, LOG_INFO, "move started", f, 1795381445123ull, 0,
                    LOG_FORMAT_TEXT);
    assert_string_equal(buf, "2026-11-22T21:04:05.123Z info move started move=mv-1 "
                             "file=\"a b\\\"c\\n\" n=42 d=-3\n");
    log_format_line(buf, sizeof buf, LOG_WARN, "x", f, 0, 1, LOG_FORMAT_TEXT);
    assert_true(strncmp(buf, "<4>warn x move=mv-1", 19) == 0);
    log_format_line(buf, sizeof buf, LOG_ERROR, "m", f, 1795381445123ull, 0, LOG_FORMAT_JSON);
    assert_string_equal(buf, "{\"time\":\"2026-11-22T21:04:05.123Z\",\"level\":\"error\","
                             "\"msg\":\"m\",\"move\":\"mv-1\",\"file\":\"a b\\\"c\\n\","
                             "\"n\":42,\"d\":-3}\n");
}

static void test_frame_due(void **state)
{
    (void)state;
    /* Nothing reached: wait for progress_interval. */
    assert_int_equal(move_frame_due(1000, 5, 10, 500), 1500);
    /* 100 entries or 100 MiB: as soon as allowed, but 50 ms apart at least. */
    assert_int_equal(move_frame_due(1000, 100, 0, 500), 1050);
    assert_int_equal(move_frame_due(1000, 0, 100ull << 20, 500), 1050);
    assert_int_equal(move_frame_due(1000, 99, (100ull << 20) - 1, 500), 1500);
    /* A tiny interval is still capped at 20 frames a second. */
    assert_int_equal(move_frame_due(1000, 1, 1, 10), 1050);
}

/* The state machines enter_state() holds changes to (the move's phases and
 * the connection's states), as docs/design.md draws them. */
static void test_state_machines(void **state)
{
    (void)state;
    assert_true(move_phase_may_follow(PHASE_QUEUED, PHASE_CALCULATING));
    assert_true(move_phase_may_follow(PHASE_CALCULATING, PHASE_COPYING));
    assert_true(move_phase_may_follow(PHASE_CALCULATING, PHASE_COMPLETE)); /* a rename */
    assert_true(move_phase_may_follow(PHASE_CLEANING, PHASE_COMPLETE));
    assert_true(move_phase_may_follow(PHASE_QUEUED, PHASE_CANCELLED));
    assert_true(move_phase_may_follow(PHASE_VERIFYING, PHASE_ERROR));
    assert_false(move_phase_may_follow(PHASE_COPYING, PHASE_CALCULATING));
    assert_false(move_phase_may_follow(PHASE_CLEANING, PHASE_QUEUED));
    assert_false(move_phase_may_follow(PHASE_COMPLETE, PHASE_ERROR));
    assert_false(move_phase_may_follow(PHASE_CANCELLED, PHASE_COPYING));

    assert_true(ws_client_state_may_follow(CONN_IDLE, CONN_CONNECTING));
    assert_true(ws_client_state_may_follow(CONN_CONNECTING, CONN_HELLO));
    assert_true(ws_client_state_may_follow(CONN_HELLO, CONN_UP));
    assert_true(ws_client_state_may_follow(CONN_UP, CONN_BACKOFF));
    assert_true(ws_client_state_may_follow(CONN_CONNECTING, CONN_BACKOFF));
    assert_true(ws_client_state_may_follow(CONN_BACKOFF, CONN_CONNECTING));
    assert_true(ws_client_state_may_follow(CONN_UP, CONN_CLOSING));
    assert_true(ws_client_state_may_follow(CONN_BACKOFF, CONN_CLOSED));
    assert_true(ws_client_state_may_follow(CONN_CLOSING, CONN_CLOSED));
    assert_false(ws_client_state_may_follow(CONN_IDLE, CONN_UP));
    assert_false(ws_client_state_may_follow(CONN_CONNECTING, CONN_UP));
    assert_false(ws_client_state_may_follow(CONN_BACKOFF, CONN_HELLO));
    assert_false(ws_client_state_may_follow(CONN_CLOSING, CONN_BACKOFF));
    assert_false(ws_client_state_may_follow(CONN_CLOSING, CONN_CONNECTING));
    assert_false(ws_client_state_may_follow(CONN_CLOSED, CONN_CLOSING));
    assert_false(ws_client_state_may_follow(CONN_UP, CONN_IDLE));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_frames),     cmocka_unit_test(test_malformed_frames),
        cmocka_unit_test(test_move_data_fields), cmocka_unit_test(test_nul_escape_is_visible),
        cmocka_unit_test(test_move_state_json),  cmocka_unit_test(test_log_lines),
        cmocka_unit_test(test_frame_due),        cmocka_unit_test(test_state_machines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
