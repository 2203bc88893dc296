/* test_paths.c: protocol path syntax, resolution through symlinks, containment. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "path_check.h"
#include "paths.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void test_syntax(void **state)
{
    char norm[PATH_MAX], longp[PATH_MAX + 10], longname[300];
    const char *why;
    static const char *const bad[] = {
        "relative/path",
        "",
        "/",
        "/srv//x",
        "/srv/./x",
        "/srv/../etc",
        "/srv/x/..",
        "/srv/x/.",
        "//srv",
        "/srv/x//",
        "/srv/a\xef\xbf\xbf"
        "b",
        "/srv/.hostagent-reclaim-mv-1",
        "/srv/.hostagent-reclaim-mv-1/world",
        "/srv/.hostagent-reclaim-/x",
    };
    (void)state;
    assert_int_equal(path_check_syntax("/srv/games/mc-1", norm, &why), 0);
    assert_string_equal(norm, "/srv/games/mc-1");
    assert_int_equal(path_check_syntax("/srv/games/mc-1/", norm, &why), 0);
    assert_string_equal(norm, "/srv/games/mc-1");
    assert_int_equal(path_check_syntax("/srv/..hidden/.x", norm, &why), 0);
    /* Only a component starting with the reclaim prefix is refused. */
    assert_int_equal(path_check_syntax("/srv/x.hostagent-reclaim-1/.hostagent-reclaim", norm, &why),
                     0);
    assert_int_not_equal(path_check_syntax("/srv/.hostagent-reclaim-1", norm, &why), 0);
    assert_non_null(strstr(why, "reclaim directory"));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (path_check_syntax(bad[i], norm, &why) == 0)
            fail_msg("accepted '%s'", bad[i]);
    memset(longp, 'a', sizeof longp - 1);
    longp[0] = '/';
    for (size_t i = 100; i < sizeof longp - 1; i += 100)
        longp[i] = '/';
    longp[sizeof longp - 1] = '\0';
    assert_int_not_equal(path_check_syntax(longp, norm, &why), 0);
    longname[0] = '/';
    memset(longname + 1, 'n', 256);
    longname[257] = '\0';
    assert_int_not_equal(path_check_syntax(longname, norm, &why), 0);
}

static void test_inside_overlap(void **state)
{
    (void)state;
    assert_true(path_inside("/srv/a", "/srv"));
    assert_true(path_inside("/srv/a/b", "/srv"));
    assert_false(path_inside("/srv", "/srv"));
    assert_false(path_inside("/srvx/a", "/srv"));
    assert_false(path_inside("/sr", "/srv"));
    assert_true(path_overlap("/a/b", "/a/b"));
    assert_true(path_overlap("/a/b", "/a/b/c"));
    assert_true(path_overlap("/a/b/c", "/a/b"));
    assert_false(path_overlap("/a/b", "/a/bc"));
    assert_false(path_overlap("/a/b", "/a/c"));
}

static char base[64];

static void mk(const char *rel, int dir)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", base, rel);
    if (dir)
        assert_int_equal(mkdir(p, 0755), 0);
    else
        close(open(p, O_CREAT | O_WRONLY, 0644));
}

static void test_resolve(void **state)
{
    char p[PATH_MAX], res[PATH_MAX], want[PATH_MAX], real_base[PATH_MAX];
    dev_t dev;
    struct stat st;
    (void)state;
    snprintf(base, sizeof base, "/tmp/hostagent-paths-XXXXXX");
    assert_non_null(mkdtemp(base));
    assert_non_null(realpath(base, real_base));
    mk("root", 1);
    mk("root/real", 1);
    mk("outside", 1);
    snprintf(p, sizeof p, "%s/outside", base);
    snprintf(want, sizeof want, "%s/root/escape", base);
    assert_int_equal(symlink(p, want), 0);
    snprintf(want, sizeof want, "%s/root/link-to-real", base);
    assert_int_equal(symlink("real", want), 0);

    /* A missing tail is appended as written. */
    snprintf(p, sizeof p, "%s/root/real/new/deeper", base);
    assert_int_equal(path_resolve(p, res, &dev), 0);
    snprintf(want, sizeof want, "%s/root/real/new/deeper", real_base);
    assert_string_equal(res, want);
    stat(real_base, &st);
    assert_int_equal(dev, st.st_dev);

    /* A symlink inside the root that points outside resolves outside. */
    snprintf(p, sizeof p, "%s/root/escape/x", base);
    assert_int_equal(path_resolve(p, res, NULL), 0);
    snprintf(want, sizeof want, "%s/outside/x", real_base);
    assert_string_equal(res, want);

    /* The last component is never followed. */
    snprintf(p, sizeof p, "%s/root/link-to-real", base);
    assert_int_equal(path_resolve(p, res, NULL), 0);
    snprintf(want, sizeof want, "%s/root/link-to-real", real_base);
    assert_string_equal(res, want);

    /* Through a symlink in the middle. */
    snprintf(p, sizeof p, "%s/root/link-to-real/a", base);
    assert_int_equal(path_resolve(p, res, NULL), 0);
    snprintf(want, sizeof want, "%s/root/real/a", real_base);
    assert_string_equal(res, want);
}

static void test_dir_is_empty(void **state)
{
    char p[PATH_MAX];
    (void)state;
    mk("empty", 1);
    mk("lf", 1);
    mk("lf/lost+found", 1);
    mk("lffull", 1);
    mk("lffull/lost+found", 1);
    mk("lffull/lost+found/x", 0);
    mk("full", 1);
    mk("full/f", 0);
    snprintf(p, sizeof p, "%s/empty", base);
    assert_int_equal(path_dir_is_empty(p), 1);
    snprintf(p, sizeof p, "%s/lf", base);
    assert_int_equal(path_dir_is_empty(p), 1);
    snprintf(p, sizeof p, "%s/lffull", base);
    assert_int_equal(path_dir_is_empty(p), 0);
    snprintf(p, sizeof p, "%s/full", base);
    assert_int_equal(path_dir_is_empty(p), 0);
    snprintf(p, sizeof p, "%s/missing", base);
    assert_true(path_dir_is_empty(p) < 0);
    snprintf(p, sizeof p, "rm -rf %s", base);
    assert_int_equal(system(p), 0);
}

/* The busy rule's path part, without an agent: by name, by the identity of
 * the directories along the paths (an alias), and inside a newPath the move
 * made after it was accepted. */
static void ids(struct path_ids *p, bool leaf, unsigned n, const unsigned *inos)
{
    memset(p, 0, sizeof *p);
    p->leaf = leaf;
    p->n = n;
    for (unsigned i = 0; i < n; i++) {
        p->id[i].dev = 8;
        p->id[i].ino = inos[i];
    }
}

static void test_busy_overlap(void **state)
{
    static struct path_check_result r;
    struct path_ids src_ids, dst_ids;
    struct path_claim c = {
        .src = "/srv/a/mc", .dst = "/srv/b/mc", .src_ids = &src_ids, .dst_ids = &dst_ids};
    const unsigned held_src[] = {100, 10, 2}, held_dst[] = {20, 2}; /* /srv/b/mc absent */
    const unsigned other[] = {300, 30, 3}, alias[] = {400, 100, 40, 4};
    const unsigned inside_made[] = {500, 77, 20, 2};
    (void)state;
    ids(&src_ids, true, 3, held_src);
    ids(&dst_ids, false, 2, held_dst);

    /* Unrelated by name and by identity. */
    memset(&r, 0, sizeof r);
    snprintf(r.old_real, sizeof r.old_real, "/srv/a/other");
    snprintf(r.new_real, sizeof r.new_real, "/srv/c/other");
    ids(&r.old_ids, true, 3, other);
    ids(&r.new_ids, false, 3, other);
    assert_false(path_check_overlaps(&c, &r));
    /* By name: inside the held source. */
    snprintf(r.old_real, sizeof r.old_real, "/srv/a/mc/world");
    assert_true(path_check_overlaps(&c, &r));
    /* By identity: another name of a directory inside the held source. */
    snprintf(r.old_real, sizeof r.old_real, "/mnt/alias/world");
    ids(&r.old_ids, true, 4, alias);
    assert_true(path_check_overlaps(&c, &r));
    /* Inside the newPath the move made after acceptance (inode 77). */
    ids(&r.old_ids, true, 3, other);
    snprintf(r.old_real, sizeof r.old_real, "/srv/x/y");
    ids(&r.new_ids, false, 4, inside_made);
    assert_false(path_check_overlaps(&c, &r));
    c.made = true;
    c.made_dev = 8;
    c.made_ino = 77;
    assert_true(path_check_overlaps(&c, &r));

    /* Requests still being checked, by their paths as written. */
    assert_true(path_check_may_conflict("/a/x", "/b/x", "/b/x/y", "/c/y"));
    assert_false(path_check_may_conflict("/a/x", "/b/x", "/a/y", "/c/y"));
    assert_false(path_check_may_conflict("/a/x", "", "/a/x", "/c/y")); /* unknown */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_syntax),       cmocka_unit_test(test_inside_overlap),
        cmocka_unit_test(test_resolve),      cmocka_unit_test(test_dir_is_empty),
        cmocka_unit_test(test_busy_overlap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
