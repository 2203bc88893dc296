/* test_clean_guard.c: what the cleaning may remove: identity comparison,
 * removability rules, and the unlink pool stopping at the first entry that
 * must stay. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "clean_guard.h"
#include "unlink_pool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct stat file_stat(void)
{
    struct stat st;
    memset(&st, 0, sizeof st);
    st.st_ino = 42;
    st.st_mode = S_IFREG | 0644;
    st.st_nlink = 1;
    st.st_size = 1000;
    st.st_mtim.tv_sec = 1700000000;
    st.st_mtim.tv_nsec = 123456789;
    st.st_ctim = st.st_mtim;
    return st;
}

static void test_identity_differences(void **state)
{
    struct src_ident was;
    struct stat st = file_stat(), now;
    char why[160];
    (void)state;
    src_ident_set(&was, &st);
    now = st;
    assert_false(src_ident_differs(&was, &now, false, why, sizeof why));
    now.st_size = 1500;
    assert_true(src_ident_differs(&was, &now, false, why, sizeof why));
    assert_non_null(strstr(why, "from 1000 to 1500 bytes"));
    now = st;
    now.st_mtim.tv_nsec++;
    assert_true(src_ident_differs(&was, &now, false, why, sizeof why));
    now = st;
    now.st_ctim.tv_sec++; /* a rewrite that put the old mtime back */
    assert_true(src_ident_differs(&was, &now, false, why, sizeof why));
    now = st;
    now.st_ino = 43;
    assert_true(src_ident_differs(&was, &now, true, why, sizeof why));
    assert_non_null(strstr(why, "another entry"));
}

static void test_hard_links_lose_names_to_the_cleaning(void **state)
{
    struct src_ident was;
    struct stat st = file_stat(), now;
    char why[160];
    (void)state;
    st.st_nlink = 2;
    src_ident_set(&was, &st);
    now = st;
    now.st_nlink = 1; /* its other name was removed first: ctime moves too */
    now.st_ctim.tv_sec += 5;
    assert_true(src_ident_differs(&was, &now, false, why, sizeof why));
    assert_false(src_ident_differs(&was, &now, true, why, sizeof why));
    now.st_size = 1; /* but its content is still checked */
    assert_true(src_ident_differs(&was, &now, true, why, sizeof why));
}

static void test_removability_rules(void **state)
{
    struct stat st = file_stat(), dir;
    char why[200];
    uid_t me = geteuid();
    (void)state;
    memset(&dir, 0, sizeof dir);
    dir.st_mode = S_IFDIR | 01777;
    dir.st_uid = me + 1;
    st.st_uid = me;
    assert_int_equal(guard_entry_removable(&st, 0, &dir, false, why, sizeof why), 0);
    assert_int_equal(guard_entry_removable(&st, STATX_ATTR_IMMUTABLE, &dir, true, why, sizeof why),
                     EPERM);
    assert_non_null(strstr(why, "immutable"));
    assert_int_equal(guard_entry_removable(&st, STATX_ATTR_APPEND, &dir, true, why, sizeof why),
                     EPERM);
    assert_non_null(strstr(why, "append-only"));
    /* Sticky: someone else's file in someone else's directory. */
    st.st_uid = me + 2;
    assert_int_equal(guard_entry_removable(&st, 0, &dir, false, why, sizeof why), EPERM);
    assert_non_null(strstr(why, "sticky"));
    assert_int_equal(guard_entry_removable(&st, 0, &dir, true, why, sizeof why), 0);
    dir.st_uid = me; /* our own directory */
    assert_int_equal(guard_entry_removable(&st, 0, &dir, false, why, sizeof why), 0);
    dir.st_uid = me + 1;
    dir.st_mode = S_IFDIR | 0777; /* not sticky */
    assert_int_equal(guard_entry_removable(&st, 0, &dir, false, why, sizeof why), 0);
}

/* Fails the check for one name: everything queued after it is kept. */
static int refuse_f050(void *ctx, int dirfd, const char *name, const void *arg)
{
    (void)ctx;
    (void)dirfd;
    (void)arg;
    return strcmp(name, "f050") == 0 ? ESTALE : 0;
}

static void test_pool_stops_at_the_first_refusal(void **state)
{
    char dir[] = "/tmp/test_clean_guard.XXXXXX", name[NAME_MAX + 1];
    struct unlink_pool pool;
    const void *arg = NULL;
    int dfd, kept = 0, submitted = 0, err;
    (void)state;
    assert_non_null(mkdtemp(dir));
    dfd = open(dir, O_RDONLY | O_DIRECTORY);
    assert_true(dfd >= 0);
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "f%03d", i);
        close(openat(dfd, name, O_CREAT | O_WRONLY, 0600));
    }
    assert_int_equal(unlink_pool_init(&pool), 0);
    pool.check = refuse_f050;
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "f%03d", i);
        if (unlink_pool_submit(&pool, dfd, name, &pool) != 0)
            break;
        submitted++;
    }
    err = unlink_pool_wait(&pool, name, sizeof name, &arg);
    unlink_pool_close(&pool);
    assert_int_equal(err, ESTALE);
    assert_string_equal(name, "f050");
    assert_ptr_equal(arg, &pool);
    assert_true(submitted > 50);
    for (int i = 0; i < 1000; i++) {
        struct stat st;
        snprintf(name, sizeof name, "f%03d", i);
        if (fstatat(dfd, name, &st, 0) == 0) {
            kept++;
            assert_int_equal(unlinkat(dfd, name, 0), 0);
        }
    }
    /* f050 and (nearly) everything after it stayed: only removals already
     * under way on the other helpers when it failed went through, and
     * removals of earlier names not yet under way were dropped. The bounds
     * leave room for the refusing helper being preempted between its check
     * and raising the failure (the others go on meanwhile; under a loaded
     * machine that was seen to be more than one job each): what must hold
     * is that removal stops, not how many jobs were in flight. */
    assert_true(kept >= 1000 - 50 - 100 && kept <= 1000 - 50 + UNLINK_POOL_THREADS);
    close(dfd);
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identity_differences),
        cmocka_unit_test(test_hard_links_lose_names_to_the_cleaning),
        cmocka_unit_test(test_removability_rules),
        cmocka_unit_test(test_pool_stops_at_the_first_refusal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
