/* test_metrics.c: counting, the text format (histogram, escaping) and the
 * atomic file write. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "metrics.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *render(const struct metrics *m)
{
    char *buf;
    size_t len;
    metrics_render(m, &buf, &len);
    assert_int_equal(strlen(buf), len);
    assert_true(len > 0 && buf[len - 1] == '\n');
    return buf;
}

/* The whole line "line\n" appears in text. */
static void assert_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return;
    fail_msg("line not found: %s\n--- in ---\n%s", line, text);
}

static void ended(struct metrics *m, enum move_code code, uint64_t started, uint64_t ended_at,
                  uint64_t bytes, uint64_t files)
{
    struct move_state st;
    memset(&st, 0, sizeof st);
    st.code = code;
    st.started_at_ms = started;
    st.ended_at_ms = ended_at;
    st.count.bytes_copied = bytes;
    st.count.files_copied = files;
    metrics_move_ended(m, &st);
}

static void test_connection_and_reconnects(void **state)
{
    struct metrics m;
    char *t;
    (void)state;
    metrics_init(&m, "1.2.3", "host-1");
    metrics_conn_state(&m, CONN_CONNECTING); /* the first attempt: no reconnect */
    metrics_conn_state(&m, CONN_BACKOFF);
    metrics_conn_state(&m, CONN_CONNECTING);
    metrics_conn_state(&m, CONN_HELLO);
    metrics_conn_state(&m, CONN_UP);
    metrics_conn_state(&m, CONN_UP); /* a repeat changes nothing */
    metrics_conn_state(&m, CONN_BACKOFF);
    metrics_conn_state(&m, CONN_CONNECTING);
    metrics_conn_state(&m, CONN_HELLO);
    metrics_conn_state(&m, CONN_UP);
    m.last_pong_wall_ms = 1700000000123ull;
    t = render(&m);
    assert_line(t, "hostagent_reconnects_total 2");
    assert_line(t, "hostagent_connection_state{state=\"up\"} 1");
    assert_line(t, "hostagent_connection_state{state=\"backoff\"} 0");
    assert_line(t, "hostagent_connection_state{state=\"closed\"} 0");
    assert_line(t, "hostagent_last_pong_timestamp_seconds 1700000000.123");
    assert_line(t, "# TYPE hostagent_reconnects_total counter");
    assert_line(t, "# TYPE hostagent_connection_state gauge");
    free(t);
    metrics_free(&m);
}

static void test_moves_and_histogram(void **state)
{
    struct metrics m;
    char *t;
    (void)state;
    metrics_init(&m, "1.2.3", "host-1");
    ended(&m, CODE_NONE, 1000, 1100, 4096, 3);         /* 0.1 s: in le="0.1" */
    ended(&m, CODE_NONE, 1000, 1101, 10, 1);           /* just over: le="0.5" */
    ended(&m, CODE_CANCELLED, 0, 7200000, 1 << 20, 7); /* 2 h: le="7200" */
    ended(&m, CODE_NO_SPACE, 0, 86400001, 0, 0);       /* over a day: +Inf only */
    ended(&m, CODE_INTERRUPTED, 5000, 4000, 0, 0);     /* clock stepped back: 0 s */
    metrics_refused(&m, CODE_DESTINATION_EXISTS);
    metrics_refused(&m, CODE_DESTINATION_EXISTS);
    metrics_refused(&m, CODE_INVALID_REQUEST);
    m.moves_active = 2;
    m.moves_queued = 5;
    t = render(&m);
    assert_line(t, "hostagent_moves_ended_total{code=\"none\"} 2");
    assert_line(t, "hostagent_moves_ended_total{code=\"cancelled\"} 1");
    assert_line(t, "hostagent_moves_ended_total{code=\"no_space\"} 1");
    assert_line(t, "hostagent_moves_ended_total{code=\"interrupted\"} 1");
    assert_line(t, "hostagent_moves_ended_total{code=\"timeout\"} 0");
    assert_line(t, "hostagent_requests_refused_total{code=\"destination_exists\"} 2");
    assert_line(t, "hostagent_requests_refused_total{code=\"invalid_request\"} 1");
    assert_null(strstr(t, "hostagent_requests_refused_total{code=\"none\"}"));
    assert_line(t, "hostagent_copied_bytes_total 1052682");
    assert_line(t, "hostagent_copied_files_total 11");
    assert_line(t, "hostagent_moves_active 2");
    assert_line(t, "hostagent_moves_queued 5");
    assert_line(t, "# TYPE hostagent_move_duration_seconds histogram");
    assert_line(t, "hostagent_move_duration_seconds_bucket{le=\"0.1\"} 2"); /* 0 s and 0.1 s */
    assert_line(t, "hostagent_move_duration_seconds_bucket{le=\"0.5\"} 3");
    assert_line(t, "hostagent_move_duration_seconds_bucket{le=\"3600\"} 3");
    assert_line(t, "hostagent_move_duration_seconds_bucket{le=\"7200\"} 4");
    assert_line(t, "hostagent_move_duration_seconds_bucket{le=\"86400\"} 4");
    assert_line(t, "hostagent_move_duration_seconds_bucket{le=\"+Inf\"} 5");
    assert_line(t, "hostagent_move_duration_seconds_count 5");
    assert_line(t, "hostagent_move_duration_seconds_sum 93600.202");
    free(t);
    metrics_free(&m);
}

static void test_label_values_are_escaped(void **state)
{
    struct metrics m;
    char *t;
    (void)state;
    metrics_init(&m, "0.1.0", "we\"ird\\id\nx");
    t = render(&m);
    assert_line(t, "hostagent_info{agent_id=\"we\\\"ird\\\\id\\nx\",version=\"0.1.0\"} 1");
    free(t);
    metrics_free(&m);
}

static unsigned count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    unsigned n = 0;
    assert_non_null(d);
    while ((e = readdir(d)) != NULL)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

static void test_file_is_replaced(void **state)
{
    char dir[] = "/tmp/hostagent-metrics-XXXXXX", path[128], other[128], missing[160];
    char got[64];
    struct stat st1, st2;
    FILE *f;
    struct metrics m;
    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/agent.prom", dir);
    snprintf(other, sizeof other, "%s/other.prom", dir);
    snprintf(missing, sizeof missing, "%s/no/such/dir.prom", dir);

    umask(077); /* the collector must be able to read it anyway */
    assert_int_equal(metrics_write_file(path, "a 1\n", 4), 0);
    assert_int_equal(stat(path, &st1), 0);
    assert_int_equal(st1.st_mode & 0777, 0644);
    assert_int_equal(metrics_write_file(path, "b 2\n", 4), 0);
    assert_int_equal(stat(path, &st2), 0);
    assert_true(st1.st_ino != st2.st_ino); /* a new file, renamed over the old one */
    f = fopen(path, "r");
    assert_non_null(f);
    assert_non_null(fgets(got, sizeof got, f));
    fclose(f);
    assert_string_equal(got, "b 2\n");
    assert_int_equal(count_entries(dir), 1); /* no temporary file left */

    assert_int_equal(metrics_write_file(missing, "c 3\n", 4), -ENOENT);
    assert_int_equal(metrics_write_file("/tmp/dir/", "c 3\n", 4), -EINVAL);

    /* metrics_update_file: a failure keeps going, a new path removes the old file. */
    metrics_init(&m, "0.1.0", "h");
    metrics_update_file(&m, missing);
    assert_int_equal(m.last_error, ENOENT);
    metrics_update_file(&m, other);
    assert_int_equal(m.last_error, 0);
    assert_int_equal(access(other, R_OK), 0);
    metrics_update_file(&m, path);
    assert_int_equal(access(other, F_OK), -1);
    assert_int_equal(access(path, R_OK), 0);
    metrics_update_file(&m, NULL);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(count_entries(dir), 0);
    metrics_free(&m);
    umask(022);
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connection_and_reconnects),
        cmocka_unit_test(test_moves_and_histogram),
        cmocka_unit_test(test_label_values_are_escaped),
        cmocka_unit_test(test_file_is_replaced),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
