/* test_nats_client.c: the NATS client's event-loop adapter (the callbacks
 * nats.c calls to put its socket on our loop). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"
#include "nats_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char CONF[] = "transport = nats\n"
                           "nats_servers = nats://127.0.0.1:1\n"
                           "agent_id = unit\n"
                           "allowed_roots = /tmp\n";

/* Stands in for nats.c's connection: never a real one, so handing it to
 * nats.c (natsConnection_ProcessReadEvent) would fault. */
static int fake_connection;

static void on_detach_thread(void *user)
{
    (void)nats_adapter_detach(user);
}

/* nats.c closes a connection from its own threads (a close on the helper,
 * a failed reconnect) and detaches it there; it drops its reference right
 * after. The adapter must forget the connection then: not keep the pointer,
 * and not hand it to nats.c from a poll event the loop sees before it has
 * applied the detach (the socket was readable). */
static void test_detach_forgets_the_connection(void **state)
{
    struct config cfg;
    struct config_errors errs;
    struct nats_client *c = calloc(1, sizeof *c);
    uv_loop_t loop;
    uv_thread_t th;
    void *user = NULL;
    int sv[2];
    FILE *f = fmemopen((void *)CONF, sizeof CONF - 1, "r");
    (void)state;
    assert_non_null(f);
    assert_int_equal(config_load_stream(f, "unit.conf", &cfg, &errs), 0);
    fclose(f);
    config_errors_free(&errs);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(nats_client_init(c, &loop, &cfg, NULL, NULL), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);

    /* Attached on the loop thread: the socket is watched at once. */
    assert_int_equal(nats_adapter_attach(&user, c, (natsConnection *)&fake_connection, sv[0]),
                     NATS_OK);
    assert_ptr_equal(user, c);
    assert_ptr_equal(c->ev_nc, (natsConnection *)&fake_connection);
    assert_non_null(c->poll);
    assert_int_equal(write(sv[1], "x", 1), 1); /* readable: the poll has an event */

    assert_int_equal(uv_thread_create(&th, on_detach_thread, user), 0);
    assert_int_equal(uv_thread_join(&th), 0);
    assert_null(c->ev_nc);

    /* The loop now sees the readable socket and the wake-up, in whichever
     * order: neither gives the connection back to nats.c. */
    for (int i = 0; i < 3; i++)
        (void)uv_run(&loop, UV_RUN_NOWAIT);
    assert_null(c->poll);
    assert_null(c->ev_nc);

    nats_client_impl.close(&c->base);
    (void)uv_run(&loop, UV_RUN_DEFAULT);
    nats_client_impl.destroy(&c->base);
    assert_int_equal(uv_loop_close(&loop), 0);
    close(sv[0]);
    close(sv[1]);
    config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_detach_forgets_the_connection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
