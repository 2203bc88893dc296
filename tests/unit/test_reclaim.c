/* test_reclaim.c: reclaim records (issue 20, item 3: keyed by moveId and the
 * directory's identity, the format before still read, one reclaim per
 * directory), reclaim directory names, and the short-write errors of the
 * journal and the reclaim records (issue 20, item 10). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "journal.h"
#include "paths.h"
#include "reclaim.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

static char base[PATH_MAX];

static int setup(void **state)
{
    (void)state;
    util_fmt(base, sizeof base, "/tmp/hostagent-unit-reclaim-XXXXXX");
    assert_non_null(mkdtemp(base));
    return 0;
}

static int teardown(void **state)
{
    char cmd[PATH_MAX + 16];
    (void)state;
    util_fmt(cmd, sizeof cmd, "rm -rf '%s'", base);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static void put(const char *dir, const char *name, const char *text)
{
    char path[PATH_MAX];
    FILE *f;
    util_fmt(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static bool exists(const char *dir, const char *name)
{
    char path[PATH_MAX];
    util_fmt(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static unsigned count_files(const char *dir)
{
    char cmd[PATH_MAX + 32];
    FILE *p;
    unsigned n = 0;
    util_fmt(cmd, sizeof cmd, "ls -A '%s' | wc -l", dir);
    p = popen(cmd, "r");
    assert_non_null(p);
    assert_int_equal(fscanf(p, "%u", &n), 1);
    pclose(p);
    return n;
}

static void test_reclaim_names(void **state)
{
    char name[NAME_MAX + 1];
    (void)state;
    paths_reclaim_name(name, sizeof name, "mv-1", 1);
    assert_string_equal(name, ".hostagent-reclaim-mv-1");
    paths_reclaim_name(name, sizeof name, "mv-1", 2);
    assert_string_equal(name, ".hostagent-reclaim-mv-1~2");
    for (unsigned n = 1; n <= PATHS_RECLAIM_NAMES_MAX; n++) {
        paths_reclaim_name(name, sizeof name, "mv.1", n);
        assert_true(paths_is_reclaim_name(name, "mv.1"));
        assert_false(paths_is_reclaim_name(name, "mv"));
        assert_false(paths_is_reclaim_name(name, "mv.10"));
    }
    /* Another moveId's names, and names no move makes. */
    assert_false(paths_is_reclaim_name(".hostagent-reclaim-mv-1.2", "mv-1"));
    assert_false(paths_is_reclaim_name(".hostagent-reclaim-mv-1~1", "mv-1"));
    assert_false(paths_is_reclaim_name(".hostagent-reclaim-mv-1~02", "mv-1"));
    assert_false(paths_is_reclaim_name(".hostagent-reclaim-mv-1~", "mv-1"));
    assert_false(paths_is_reclaim_name(".hostagent-reclaim-mv-1~2x", "mv-1"));
    assert_false(paths_is_reclaim_name(".hostagent-reclaim-mv-12", "mv-1"));
    assert_false(paths_is_reclaim_name("hostagent-reclaim-mv-1", "mv-1"));
}

struct seen {
    unsigned n;
    char keys[8][RECLAIM_KEY_MAX + 1];
    char dirs[8][PATH_MAX];
};

static void on_listed(void *arg, const struct reclaim_item *it)
{
    struct seen *s = arg;
    assert_true(s->n < 8);
    util_fmt(s->keys[s->n], sizeof s->keys[0], "%s", it->key);
    util_fmt(s->dirs[s->n], sizeof s->dirs[0], "%s", it->dir);
    s->n++;
}

static int seen_has(const struct seen *s, const char *key, const char *dir)
{
    for (unsigned i = 0; i < s->n; i++)
        if (strcmp(s->keys[i], key) == 0 && strcmp(s->dirs[i], dir) == 0)
            return 1;
    return 0;
}

/* Both formats are read: "<moveId>.json" (before) and
 * "<moveId>@<dev>-<ino>.json"; a name that does not match its record is
 * not (it could name another reclaim's directory). */
static void test_records_of_both_formats_are_read(void **state)
{
    char dir[PATH_MAX];
    struct seen s = {0};
    (void)state;
    util_fmt(dir, sizeof dir, "%s/reclaim", base);
    assert_int_equal(mkdir(dir, 0700), 0);
    put(dir, "mv-a.json",
        "{\"version\":1,\"moveId\":\"mv-a\",\"dir\":\"/srv/p1/.hostagent-reclaim-mv-a\","
        "\"id\":\"1:2\",\"entries\":3,\"bytes\":4}");
    put(dir, "mv-a@5-6.json",
        "{\"version\":1,\"moveId\":\"mv-a\",\"dir\":\"/srv/p1/.hostagent-reclaim-mv-a~2\","
        "\"id\":\"5:6\",\"entries\":7,\"bytes\":8}");
    put(dir, "mv-b@7-8.json", /* not its identity */
        "{\"version\":1,\"moveId\":\"mv-b\",\"dir\":\"/srv/.hostagent-reclaim-mv-b\","
        "\"id\":\"7:9\",\"entries\":1,\"bytes\":1}");
    put(dir, "mv-c.json", /* another move's directory */
        "{\"version\":1,\"moveId\":\"mv-c\",\"dir\":\"/srv/.hostagent-reclaim-mv-d\","
        "\"id\":\"1:1\",\"entries\":1,\"bytes\":1}");
    put(dir, "mv-e@1-1.json", /* a moveId that is not this file's */
        "{\"version\":1,\"moveId\":\"mv-f\",\"dir\":\"/srv/.hostagent-reclaim-mv-f\","
        "\"id\":\"1:1\",\"entries\":1,\"bytes\":1}");
    assert_int_equal(reclaim_list(base, on_listed, &s), 0);
    assert_int_equal(s.n, 2);
    assert_true(seen_has(&s, "mv-a", "/srv/p1/.hostagent-reclaim-mv-a"));
    assert_true(seen_has(&s, "mv-a@5-6", "/srv/p1/.hostagent-reclaim-mv-a~2"));
    assert_int_equal(count_files(dir), 5); /* a reader changes nothing */
}

static bool skip_ino_20(void *arg, const struct reclaim_item *it)
{
    (void)arg;
    return it->ino == 20;
}

/* The daemon's side, with the thread stopped first so that nothing is
 * deleted: every record is queued and counted, one reclaim per directory
 * (a second record of one directory is removed), a skipped one (its move is
 * being recovered) is left alone, and a reclaim added again for a directory
 * already queued is counted once. */
static void test_load_and_add_count_every_reclaim_once(void **state)
{
    char dir[PATH_MAX];
    struct reclaimer r;
    uv_loop_t loop;
    uint64_t bytes, entries;
    (void)state;
    util_fmt(dir, sizeof dir, "%s/reclaim", base);
    assert_int_equal(mkdir(dir, 0700), 0);
    /* One directory, both formats (an upgrade after the format before). */
    put(dir, "mv-a.json",
        "{\"version\":1,\"moveId\":\"mv-a\",\"dir\":\"/nowhere/p1/.hostagent-reclaim-mv-a\","
        "\"id\":\"1:2\",\"entries\":3,\"bytes\":4}");
    put(dir, "mv-a@1-2.json",
        "{\"version\":1,\"moveId\":\"mv-a\",\"dir\":\"/nowhere/p1/.hostagent-reclaim-mv-a\","
        "\"id\":\"1:2\",\"entries\":3,\"bytes\":4}");
    /* The same moveId, another reclaim. */
    put(dir, "mv-a@1-9.json",
        "{\"version\":1,\"moveId\":\"mv-a\",\"dir\":\"/nowhere/p2/.hostagent-reclaim-mv-a\","
        "\"id\":\"1:9\",\"entries\":30,\"bytes\":40}");
    /* Recorded in the format before by a move being recovered now: it hands
     * its reclaim over itself when it ends. */
    put(dir, "mv-h.json",
        "{\"version\":1,\"moveId\":\"mv-h\",\"dir\":\"/nowhere/p3/.hostagent-reclaim-mv-h\","
        "\"id\":\"1:20\",\"entries\":300,\"bytes\":400}");
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(reclaimer_init(&r, &loop, base), 0);
    reclaimer_stop(&r);
    reclaimer_load(&r, skip_ino_20, NULL);
    reclaimer_totals(&r, &bytes, &entries);
    assert_int_equal(entries, 33);
    assert_int_equal(bytes, 44);
    assert_int_equal(count_files(dir), 3);
    assert_true(exists(dir, "mv-a@1-9.json"));
    assert_true(exists(dir, "mv-h.json"));
    /* A record of the directory stays, either of the two. */
    assert_true(exists(dir, "mv-a.json") != exists(dir, "mv-a@1-2.json"));

    /* Added again (the same directory): counted once, with its new numbers;
     * its record is the one it has. */
    assert_int_equal(reclaimer_add(&r, "mv-a", "/nowhere/p2/.hostagent-reclaim-mv-a", 1, 9, 31, 41),
                     0);
    reclaimer_totals(&r, &bytes, &entries);
    assert_int_equal(entries, 34);
    assert_int_equal(bytes, 45);
    assert_int_equal(count_files(dir), 3);
    /* The recovered move hands its reclaim over: recorded in the current
     * format, and the record of the format before of that directory goes. */
    assert_int_equal(
        reclaimer_add(&r, "mv-h", "/nowhere/p3/.hostagent-reclaim-mv-h", 1, 20, 300, 400), 0);
    reclaimer_totals(&r, &bytes, &entries);
    assert_int_equal(entries, 334);
    assert_int_equal(bytes, 445);
    assert_false(exists(dir, "mv-h.json"));
    assert_true(exists(dir, "mv-h@1-20.json"));
    assert_int_equal(count_files(dir), 3);

    reclaimer_close(&r, 5000, NULL);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A file size limit cuts the write short: the error is the write's own
 * (EFBIG), never an errno left by an earlier call. */
static void limit_file_size(rlim_t bytes, struct rlimit *was)
{
    struct rlimit lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, was), 0);
    lim = *was;
    lim.rlim_cur = bytes;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
}

static void test_short_writes_report_their_own_error(void **state)
{
    char path[PATH_MAX], moves[PATH_MAX], text[600];
    struct rlimit was;
    struct reclaimer r;
    uv_loop_t loop;
    int fd;
    (void)state;
    signal(SIGXFSZ, SIG_IGN);
    util_fmt(path, sizeof path, "%s/f", base);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    memset(text, 'x', sizeof text);
    limit_file_size(100, &was);
    errno = EXDEV; /* what an earlier call may have left */
    assert_int_equal(util_pwrite_all(fd, text, sizeof text, 0), -EFBIG);
    close(fd);

    /* A journal record cut short. */
    util_fmt(moves, sizeof moves, "%s/moves", base);
    assert_int_equal(mkdir(moves, 0700), 0);
    text[sizeof text - 1] = '\0';
    errno = EXDEV;
    assert_int_equal(journal_write_text(moves, "mv-x", text), -EFBIG);

    /* A reclaim record cut short: the reclaim runs all the same. */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &was), 0);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(reclaimer_init(&r, &loop, base), 0);
    reclaimer_stop(&r);
    limit_file_size(16, &was);
    errno = EXDEV;
    assert_int_equal(reclaimer_add(&r, "mv-x", "/nowhere/.hostagent-reclaim-mv-x", 1, 2, 3, 4),
                     -EFBIG);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &was), 0);
    reclaimer_close(&r, 5000, NULL);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    signal(SIGXFSZ, SIG_DFL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reclaim_names),
        cmocka_unit_test_setup_teardown(test_records_of_both_formats_are_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_and_add_count_every_reclaim_once, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_short_writes_report_their_own_error, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
