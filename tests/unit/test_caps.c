/* test_caps.c: caps_effective reads the effective set, not the uid: a
 * process that drops CAP_CHOWN from it (root still) is told no, one that
 * keeps it after leaving uid 0 (as systemd's AmbientCapabilities= gives the
 * service's user) is told yes, and capabilities past the first word and out
 * of range are answered. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "caps.h"

#include <linux/capability.h>
#include <stdbool.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int get_sets(struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3])
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    return (int)syscall(SYS_capget, &h, d);
}

static int set_sets(struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3])
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    return (int)syscall(SYS_capset, &h, d);
}

/* Runs check in a child (capability changes stay there); its exit status:
 * 0 passed, 1 failed, 77 could not be set up. */
static int in_child(int (*check)(void))
{
    int status;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(check());
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* A child's check passed; skipped where it could not be set up (a
 * container without these capabilities). */
static void expect_child(int (*check)(void))
{
    int rc = in_child(check);
    if (rc == 77)
        skip();
    assert_int_equal(rc, 0);
}

static void test_matches_capget(void **state)
{
    struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];
    (void)state;
    assert_int_equal(get_sets(d), 0);
    for (unsigned cap = 0; cap <= CAP_LAST_CAP; cap++)
        assert_int_equal(caps_effective(cap), (d[cap / 32].effective >> (cap % 32)) & 1u);
    assert_false(caps_effective(64));
    assert_false(caps_effective(~0u));
}

/* Root without CAP_CHOWN in its effective set cannot keep owners. */
static int drop_chown(void)
{
    struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];
    if (get_sets(d) != 0 || !(d[0].effective & (1u << CAP_CHOWN)))
        return 77;
    d[0].effective &= ~(1u << CAP_CHOWN);
    if (set_sets(d) != 0)
        return 77;
    return !caps_effective(CAP_CHOWN) && caps_effective(CAP_FOWNER) ? 0 : 1;
}

static void test_root_without_cap_chown(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip();
    expect_child(drop_chown);
}

/* A user other than root that holds CAP_CHOWN and CAP_FOWNER (kept across
 * setresuid, then raised again: what systemd does for User= with
 * AmbientCapabilities=) can; without them it cannot. */
static int user_with_caps(void)
{
    struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];
    if (prctl(PR_SET_KEEPCAPS, 1L, 0L, 0L, 0L) != 0 || setresgid(65534, 65534, 65534) != 0 ||
        setresuid(65534, 65534, 65534) != 0)
        return 77;
    /* setresuid away from 0 cleared the effective set; the permitted set
     * stayed (keepcaps). */
    if (caps_effective(CAP_CHOWN))
        return 1;
    if (get_sets(d) != 0)
        return 77;
    d[0].effective = (1u << CAP_CHOWN) | (1u << CAP_FOWNER);
    d[1].effective = 0;
    if (set_sets(d) != 0)
        return 77;
    return geteuid() == 65534 && caps_effective(CAP_CHOWN) && caps_effective(CAP_FOWNER) &&
                   !caps_effective(CAP_MKNOD)
               ? 0
               : 1;
}

static void test_a_user_with_capabilities(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip();
    expect_child(user_with_caps);
}

/* Plain root has CAP_CHOWN; anyone who leaves uid 0 without keepcaps has
 * none. */
static int plain_user(void)
{
    if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
        return 77;
    return !caps_effective(CAP_CHOWN) && !caps_effective(CAP_FOWNER) ? 0 : 1;
}

static void test_root_and_a_plain_user(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip();
    assert_true(caps_effective(CAP_CHOWN));
    expect_child(plain_user);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_capget),
        cmocka_unit_test(test_root_without_cap_chown),
        cmocka_unit_test(test_a_user_with_capabilities),
        cmocka_unit_test(test_root_and_a_plain_user),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
