/* test_sandbox_rw.c: the superblock's read-only flag of the mount holding a
 * path, read from mountinfo text (sandbox_rw_super_ro); and nothing is
 * denied outside a systemd service. */
#include "sandbox_rw.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>

/* A sandbox: / read-only over a read-write ext4, /srv/games bound back
 * read-write, /opt/games a tmpfs left read-only by the sandbox, /mnt/cd a
 * read-only filesystem, a mount point with a space. */
static const char *INFO =
    "22 1 8:1 / / ro,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n"
    "23 22 8:1 /srv/games /srv/games rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "24 22 0:40 / /opt/games ro,relatime - tmpfs tmpfs rw,size=1024k\n"
    "25 22 11:0 / /mnt/cd ro,relatime - iso9660 /dev/sr0 ro\n"
    "26 22 0:41 / /srv/my\\040games rw - tmpfs tmpfs rw\n"
    "27 22 0:42 / /opt/games/sub ro - iso9660 /dev/sr1 ro\n";

static void test_longest_mount_point_wins(void **state)
{
    (void)state;
    assert_int_equal(sandbox_rw_super_ro(INFO, "/etc"), 0);
    assert_int_equal(sandbox_rw_super_ro(INFO, "/opt/games"), 0);
    assert_int_equal(sandbox_rw_super_ro(INFO, "/opt/games/mc"), 0);
    assert_int_equal(sandbox_rw_super_ro(INFO, "/opt/games/sub/x"), 1);
    assert_int_equal(sandbox_rw_super_ro(INFO, "/opt/gamesx"), 0); /* "/" holds it */
    assert_int_equal(sandbox_rw_super_ro(INFO, "/mnt/cd/a"), 1);
    assert_int_equal(sandbox_rw_super_ro(INFO, "/srv/my games/a"), 0);
    assert_int_equal(sandbox_rw_super_ro("", "/x"), -1);
}

static void test_nothing_outside_a_service(void **state)
{
    char why[256] = "";
    (void)state;
    unsetenv("INVOCATION_ID");
    assert_false(sandbox_rw_denied("/proc", "root", why, sizeof why));
    assert_string_equal(why, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_longest_mount_point_wins),
        cmocka_unit_test(test_nothing_outside_a_service),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
