/* test_engine_open.c: the engine opens a source file only when the name
 * still holds the file the walk examined; anything swapped in since (a
 * directory, a fifo, another file, a symlink, nothing) is a change of the
 * source (ESTALE), never an I/O error and never a blocked open. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "engine_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct fixture {
    char dir[64];
    int dfd;
    struct stat st; /* "f" as the walk examined it */
    struct eng e;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    int fd;
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/ha-open-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    f->dfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    fd = openat(f->dfd, "f", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (f->dfd < 0 || fd < 0 || write(fd, "data", 4) != 4 || close(fd) != 0 ||
        fstatat(f->dfd, "f", &f->st, AT_SYMLINK_NOFOLLOW) != 0)
        return -1;
    f->e.noatime_ok = true;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    (void)unlinkat(f->dfd, "f", 0);
    (void)unlinkat(f->dfd, "f", AT_REMOVEDIR);
    (void)unlinkat(f->dfd, "g", 0);
    close(f->dfd);
    (void)rmdir(f->dir);
    free(f);
    return 0;
}

static void assert_stale(struct fixture *f)
{
    errno = 0;
    assert_int_equal(eng_open_source(&f->e, f->dfd, "f", &f->st), -1);
    assert_int_equal(errno, ESTALE);
}

static void test_the_examined_file_opens(void **state)
{
    struct fixture *f = *state;
    char buf[8];
    int fd = eng_open_source(&f->e, f->dfd, "f", &f->st);
    assert_true(fd >= 0);
    assert_int_equal(read(fd, buf, sizeof buf), 4);
    close(fd);
}

static void test_replaced_by_a_directory(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(unlinkat(f->dfd, "f", 0), 0);
    assert_int_equal(mkdirat(f->dfd, "f", 0755), 0);
    assert_stale(f);
}

static void test_replaced_by_a_fifo_does_not_block(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(unlinkat(f->dfd, "f", 0), 0);
    assert_int_equal(mkfifoat(f->dfd, "f", 0644), 0);
    assert_stale(f); /* a blocking open would hang here: no writer */
}

static void test_replaced_by_another_file(void **state)
{
    struct fixture *f = *state;
    int fd = openat(f->dfd, "g", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(renameat(f->dfd, "g", f->dfd, "f"), 0);
    assert_stale(f);
}

static void test_replaced_by_a_symlink(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(renameat(f->dfd, "f", f->dfd, "g"), 0);
    assert_int_equal(symlinkat("g", f->dfd, "f"), 0);
    assert_stale(f); /* never followed, even to the same file */
}

static void test_gone(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(unlinkat(f->dfd, "f", 0), 0);
    assert_stale(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_the_examined_file_opens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replaced_by_a_directory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replaced_by_a_fifo_does_not_block, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replaced_by_another_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replaced_by_a_symlink, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gone, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
