/* test_config.c: every key, value syntax, bounds, and FILE:LINE errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path[64];

static const char *write_conf(const char *text)
{
    FILE *f;
    int fd;
    snprintf(path, sizeof path, "/tmp/hostagent-test-XXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

/* Loads text; returns the number of errors and keeps the first in first. */
static size_t load(const char *text, struct config *cfg, char *first, size_t sz)
{
    struct config_errors errs;
    int rc = config_load(write_conf(text), cfg, &errs);
    size_t n = errs.n;
    unlink(path);
    if (first)
        snprintf(first, sz, "%s", n ? errs.lines[0] : "");
    assert_int_equal(rc != 0, n != 0);
    config_errors_free(&errs);
    return n;
}

static void test_every_key(void **state)
{
    struct config cfg;
    char tokfile[] = "/tmp/hostagent-tok-XXXXXX";
    char text[2048];
    int fd = mkstemp(tokfile);
    (void)state;
    assert_true(write(fd, "file-token\n", 11) == 11);
    close(fd);
    snprintf(text, sizeof text,
             "# full config\n"
             "manager_url = wss://manager.example:8443/agents?x=1\n"
             "agent_id = host-1.eu_west\n"
             "token_file = %s\n"
             "allowed_roots = /srv/games, /mnt/ssd/ ,/data\n"
             "state_dir = \"/var/lib/host agent\"   # quoted, spaces kept\n"
             "log_level = debug\n"
             "log_format = json\n"
             "heartbeat_interval = 2m\n"
             "ping_interval = 30s\n"
             "progress_interval = 250ms\n"
             "reconnect_min = 2\n"
             "reconnect_max = 1h\n"
             "max_concurrent_moves = 4\n"
             "max_queued_moves = 0\n"
             "move_timeout = 6h\n"
             "stall_timeout = 10m\n"
             "verify = checksum\n"
             "reclaim = inline\n"
             "io_priority = idle\n"
             "max_rate = 50M\n"
             "max_message_bytes = 2M\n"
             "ca_file = %s\n"
             "tls_insecure = yes\n"
             "metrics_file = /var/lib/node_exporter/hostagent.prom\n"
             "control_socket = /run/ha/ctl.sock\n",
             tokfile, tokfile);
    unsetenv("HOSTAGENT_TOKEN");
    assert_int_equal(load(text, &cfg, NULL, 0), 0);
    assert_string_equal(cfg.manager_url, "wss://manager.example:8443/agents?x=1");
    assert_true(cfg.url.tls);
    assert_string_equal(cfg.url.host, "manager.example");
    assert_int_equal(cfg.url.port, 8443);
    assert_string_equal(cfg.url.path, "/agents?x=1");
    assert_string_equal(cfg.agent_id, "host-1.eu_west");
    assert_string_equal(cfg.token, "file-token");
    assert_int_equal(cfg.n_allowed_roots, 3);
    assert_string_equal(cfg.allowed_roots[0], "/srv/games");
    assert_string_equal(cfg.allowed_roots[1], "/mnt/ssd");
    assert_string_equal(cfg.allowed_roots[2], "/data");
    assert_string_equal(cfg.state_dir, "/var/lib/host agent");
    assert_int_equal(cfg.log_level, LOG_DEBUG);
    assert_int_equal(cfg.log_format, LOG_FORMAT_JSON);
    assert_int_equal(cfg.heartbeat_interval_ms, 120000);
    assert_int_equal(cfg.ping_interval_ms, 30000);
    assert_int_equal(cfg.progress_interval_ms, 250);
    assert_int_equal(cfg.reconnect_min_ms, 2000);
    assert_int_equal(cfg.reconnect_max_ms, 3600000);
    assert_int_equal(cfg.max_concurrent_moves, 4);
    assert_int_equal(cfg.max_queued_moves, 0);
    assert_int_equal(cfg.move_timeout_ms, 6 * 3600000ull);
    assert_int_equal(cfg.stall_timeout_ms, 600000);
    assert_int_equal(cfg.verify, VERIFY_CHECKSUM);
    assert_int_equal(cfg.reclaim, RECLAIM_INLINE);
    assert_int_equal(cfg.io_priority, IO_PRIORITY_IDLE);
    assert_int_equal(cfg.max_rate, 50u << 20);
    assert_int_equal(cfg.max_message_bytes, 2u << 20);
    assert_string_equal(cfg.ca_file, tokfile);
    assert_true(cfg.tls_insecure);
    assert_string_equal(cfg.metrics_file, "/var/lib/node_exporter/hostagent.prom");
    assert_string_equal(cfg.control_socket, "/run/ha/ctl.sock");
    config_free(&cfg);
    unlink(tokfile);
}

static void test_defaults(void **state)
{
    struct config cfg;
    (void)state;
    unsetenv("HOSTAGENT_TOKEN");
    assert_int_equal(load("manager_url = ws://127.0.0.1:9000\n", &cfg, NULL, 0), 0);
    assert_false(cfg.url.tls);
    assert_int_equal(cfg.url.port, 9000);
    assert_string_equal(cfg.url.path, "/");
    assert_null(cfg.token);
    assert_int_equal(cfg.n_allowed_roots, 0);
    assert_string_equal(cfg.state_dir, "/var/lib/hostagent");
    assert_string_equal(cfg.control_socket, "/run/hostagent/control.sock");
    assert_int_equal(cfg.log_level, LOG_INFO);
    assert_int_equal(cfg.log_format, LOG_FORMAT_TEXT);
    assert_int_equal(cfg.heartbeat_interval_ms, 15000);
    assert_int_equal(cfg.ping_interval_ms, 20000);
    assert_int_equal(cfg.progress_interval_ms, 500);
    assert_int_equal(cfg.reconnect_min_ms, 1000);
    assert_int_equal(cfg.reconnect_max_ms, 30000);
    assert_int_equal(cfg.max_concurrent_moves, 2);
    assert_int_equal(cfg.max_queued_moves, 16);
    assert_int_equal(cfg.move_timeout_ms, 0);
    assert_int_equal(cfg.stall_timeout_ms, 300000);
    assert_int_equal(cfg.verify, VERIFY_METADATA);
    assert_int_equal(cfg.reclaim, RECLAIM_DEFERRED);
    assert_int_equal(cfg.io_priority, IO_PRIORITY_LOW);
    assert_int_equal(cfg.max_rate, 0);
    assert_int_equal(cfg.max_message_bytes, 1u << 20);
    assert_null(cfg.ca_file);
    assert_false(cfg.tls_insecure);
    assert_null(cfg.metrics_file);
    assert_non_null(cfg.agent_id);
    config_free(&cfg);
}

static void test_comments_quotes_env(void **state)
{
    struct config cfg;
    (void)state;
    setenv("HOSTAGENT_TOKEN", "env-token", 1);
    assert_int_equal(load("  # leading comment\n\n"
                          "manager_url = ws://[::1]:81/p   # trailing comment\n"
                          "token = abc#def\n",
                          &cfg, NULL, 0),
                     0);
    assert_string_equal(cfg.url.host, "::1");
    assert_int_equal(cfg.url.port, 81);
    assert_string_equal(cfg.token, "env-token"); /* the environment wins */
    config_free(&cfg);
    unsetenv("HOSTAGENT_TOKEN");
    assert_int_equal(load("manager_url = ws://h\ntoken = abc#def\n", &cfg, NULL, 0), 0);
    assert_string_equal(cfg.token, "abc#def"); /* '#' not after a space: kept */
    config_free(&cfg);
    assert_int_equal(load("manager_url = ws://h\nstate_dir = \"/a \\\"q\\\" b\"\n", &cfg, NULL, 0),
                     0);
    assert_string_equal(cfg.state_dir, "/a \"q\" b");
    config_free(&cfg);
}

struct bad_case {
    const char *line;
    const char *expect; /* substring of the message */
};

static void test_bad_values_name_their_line(void **state)
{
    static const struct bad_case cases[] = {
        {"manager_url = http://x", "ws:// or wss://"},
        {"manager_url = ws://", "no host"},
        {"manager_url = ws://h:99999/", "port"},
        {"manager_url = ws://user@h/", "user information"},
        {"agent_id = bad id", "agent_id"},
        {"token = has space", "token"},
        {"token_file = /nonexistent/token", "token_file cannot be used"},
        {"allowed_roots = relative/path", "absolute"},
        {"allowed_roots = /srv/../etc", ".."},
        {"allowed_roots = /", "must not be /"},
        {"state_dir = var/lib", "absolute"},
        {"log_level = loud", "log_level"},
        {"log_format = xml", "text or json"},
        {"heartbeat_interval = 0", "between"},
        {"heartbeat_interval = 10x", "duration"},
        {"heartbeat_interval = -1s", "duration"},
        {"ping_interval = 1500ms", "whole number of seconds"},
        {"ping_interval = 2h", "between"},
        {"progress_interval = 10ms", "between"},
        {"reconnect_min = 0", "between"},
        {"max_concurrent_moves = 0", "from 1 to 64"},
        {"max_concurrent_moves = 2.5", "whole number"},
        {"max_queued_moves = 5000", "from 0 to 1024"},
        {"move_timeout = 500ms", "or 0 for none"},
        {"stall_timeout = 0", "between"},
        {"verify = sometimes", "metadata or checksum"},
        {"reclaim = later", "deferred or inline"},
        {"io_priority = high", "idle, low or normal"},
        {"max_rate = 100K", "at least 1M"},
        {"max_rate = -1", "at least 1M"},
        {"max_rate = fast", "at least 1M"},
        {"max_message_bytes = 1T", "size"},
        {"max_message_bytes = 100", "size"},
        {"ca_file = /nonexistent/ca.pem", "cannot be read"},
        {"metrics_file = hostagent.prom", "absolute"},
        {"metrics_file = /var/lib/../x.prom", ".."},
        {"metrics_file = /var/lib/node_exporter/", "must name a file"},
        {"metrics_file = /", "must name a file"},
        {"tls_insecure = maybe", "true or false"},
        {"control_socket = run/ctl.sock", "absolute"},
        {"control_socket = /run/../ctl.sock", ".."},
        {"control_socket = /run/hostagent/", "must name a file"},
        {"control_socket = /", "must name a file"},
        {"control_socket = /run/hostagent/a-socket-path-that-is-far-too-long-for-sun-path-"
         "which-holds-only-108-bytes-including-its-terminating-nul.sock",
         "shorter than 108 bytes"},
        {"no_such_key = 1", "unknown key 'no_such_key'"},
        {"just words", "expected key = value"},
        {"= value", "missing key"},
        {"state_dir = \"/unterminated", "unterminated"},
        {"state_dir = \"/x\" junk", "after the quoted value"},
    };
    (void)state;
    unsetenv("HOSTAGENT_TOKEN");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct config cfg;
        char text[512], first[1024], want[128];
        snprintf(text, sizeof text, "# line 1\nmanager_url = ws://127.0.0.1/\n%s\n", cases[i].line);
        if (strncmp(cases[i].line, "manager_url", 11) == 0)
            snprintf(text, sizeof text, "# line 1\n\n%s\n", cases[i].line);
        assert_true(load(text, &cfg, first, sizeof first) >= 1);
        snprintf(want, sizeof want, "%s:3: ", path);
        if (strncmp(first, want, strlen(want)) != 0 || !strstr(first, cases[i].expect))
            fail_msg("case '%s': got '%s', want prefix '%s' and '%s'", cases[i].line, first, want,
                     cases[i].expect);
    }
}

/* A Unix socket's path holds 107 bytes and its NUL. */
static void test_control_socket_length(void **state)
{
    struct config cfg;
    char text[256], name[120];
    (void)state;
    unsetenv("HOSTAGENT_TOKEN");
    memset(name, 'x', sizeof name);
    memcpy(name, "/run/", 5);
    name[107] = '\0';
    snprintf(text, sizeof text, "manager_url = ws://h\ncontrol_socket = %s\n", name);
    assert_int_equal(load(text, &cfg, NULL, 0), 0);
    assert_int_equal(strlen(cfg.control_socket), 107);
    config_free(&cfg);
    name[107] = 'x';
    name[108] = '\0';
    snprintf(text, sizeof text, "manager_url = ws://h\ncontrol_socket = %s\n", name);
    assert_int_equal(load(text, &cfg, NULL, 0), 1);
}

static void test_structural_errors(void **state)
{
    struct config cfg;
    char first[1024], want[128];
    (void)state;
    unsetenv("HOSTAGENT_TOKEN");
    assert_int_equal(load("log_level = info\n", &cfg, first, sizeof first), 1);
    snprintf(want, sizeof want, "%s: missing required key manager_url", path);
    assert_string_equal(first, want);

    assert_int_equal(load("manager_url = ws://a\nlog_level = info\nlog_level = warn\n", &cfg, first,
                          sizeof first),
                     1);
    snprintf(want, sizeof want, "%s:3: key 'log_level' given twice (first on line 2)", path);
    assert_string_equal(first, want);

    assert_int_equal(load("manager_url = ws://a\ntoken_file = /etc/hostname\ntoken = x\n", &cfg,
                          first, sizeof first),
                     1);
    assert_non_null(strstr(first, ":3: both token and token_file"));

    assert_int_equal(load("manager_url = ws://a\nreconnect_min = 10m\nreconnect_max = 1m\n", &cfg,
                          first, sizeof first),
                     1);
    assert_non_null(strstr(first, ":3: reconnect_min must not be larger"));

    /* Every problem is reported, not just the first. */
    assert_int_equal(load("bogus = 1\nverify = x\nlog_level = y\n", &cfg, NULL, 0), 4);
}

static void test_value_parsers(void **state)
{
    uint64_t v;
    bool b;
    (void)state;
    assert_int_equal(config_parse_duration("15", &v), 0);
    assert_int_equal(v, 15000);
    assert_int_equal(config_parse_duration("500ms", &v), 0);
    assert_int_equal(v, 500);
    assert_int_equal(config_parse_duration("5m", &v), 0);
    assert_int_equal(v, 300000);
    assert_int_equal(config_parse_duration("2h", &v), 0);
    assert_int_equal(v, 7200000);
    assert_int_not_equal(config_parse_duration("", &v), 0);
    assert_int_not_equal(config_parse_duration("5 s", &v), 0);
    assert_int_not_equal(config_parse_duration("99999999999999999999h", &v), 0);
    assert_int_equal(config_parse_size("1K", &v), 0);
    assert_int_equal(v, 1024);
    assert_int_equal(config_parse_size("3G", &v), 0);
    assert_int_equal(v, 3ull << 30);
    assert_int_equal(config_parse_size("77", &v), 0);
    assert_int_equal(v, 77);
    assert_int_not_equal(config_parse_size("1k", &v), 0);
    assert_int_not_equal(config_parse_size("M", &v), 0);
    for (const char *const *s = (const char *const[]){"true", "yes", "on", "1", NULL}; *s; s++) {
        assert_int_equal(config_parse_bool(*s, &b), 0);
        assert_true(b);
    }
    for (const char *const *s = (const char *const[]){"false", "no", "off", "0", NULL}; *s; s++) {
        assert_int_equal(config_parse_bool(*s, &b), 0);
        assert_false(b);
    }
    assert_int_not_equal(config_parse_bool("TRUE", &b), 0);
}

static void test_urls(void **state)
{
    struct config_url u;
    const char *why;
    (void)state;
    assert_int_equal(config_parse_url("wss://m.example", &u, &why), 0);
    assert_int_equal(u.port, 443);
    assert_string_equal(u.path, "/");
    config_url_free(&u);
    assert_int_equal(config_parse_url("ws://m?token=1", &u, &why), 0);
    assert_int_equal(u.port, 80);
    assert_string_equal(u.path, "/?token=1");
    config_url_free(&u);
    assert_int_not_equal(config_parse_url("ws://[::1/", &u, &why), 0);
    assert_int_not_equal(config_parse_url("ws://h:/x", &u, &why), 0);
    assert_int_not_equal(config_parse_url("ws://h x/", &u, &why), 0);
    assert_int_not_equal(config_parse_url("ws://h:0/", &u, &why), 0);
}

static void test_nats_keys(void **state)
{
    struct config cfg;
    char first[512];
    const char *why;
    (void)state;
    assert_int_equal(load("transport = nats\n"
                          "nats_servers = nats://a:4222, tls://[::1]:4223 ,nats://b\n"
                          "nats_subject_prefix = fleet.eu-1\nnats_jetstream = yes\n"
                          "token = t0k\n",
                          &cfg, first, sizeof first),
                     0);
    assert_int_equal(cfg.transport, TRANSPORT_NATS);
    assert_int_equal(cfg.n_nats_servers, 3);
    assert_string_equal(cfg.nats_servers[1], "tls://[::1]:4223");
    assert_string_equal(cfg.nats_subject_prefix, "fleet.eu-1");
    assert_true(cfg.nats_jetstream);
    assert_null(cfg.manager_url);
    config_free(&cfg);
    /* The defaults: websocket, prefix hostagent. */
    assert_int_equal(load("manager_url = ws://m/\n", &cfg, first, sizeof first), 0);
    assert_int_equal(cfg.transport, TRANSPORT_WEBSOCKET);
    assert_string_equal(cfg.nats_subject_prefix, "hostagent");
    config_free(&cfg);
    /* Each transport's required key, and the other's keys refused. */
    assert_int_equal(load("transport = nats\n", &cfg, first, sizeof first), 1);
    assert_non_null(strstr(first, "nats_servers"));
    assert_int_equal(load("transport = nats\nnats_servers = nats://a\nmanager_url = ws://m/\n",
                          &cfg, first, sizeof first),
                     1);
    assert_int_equal(
        load("manager_url = ws://m/\nnats_jetstream = true\n", &cfg, first, sizeof first), 1);
    assert_non_null(strstr(first, "only used with transport = nats"));
    /* Authentication: exactly one method; user and password together. */
    assert_int_equal(load("transport = nats\nnats_servers = nats://a\nnats_user = u\n", &cfg, first,
                          sizeof first),
                     1);
    assert_non_null(strstr(first, "nats_password_file"));
    assert_int_equal(load("transport = nats\nnats_servers = nats://a\ntoken = x\n"
                          "nats_creds_file = /etc/hostname\n",
                          &cfg, first, sizeof first),
                     1);
    assert_non_null(strstr(first, "more than one NATS authentication"));
    assert_int_equal(
        load("transport = nats\nnats_servers = nats://a\nnats_creds_file = /nonexistent\n", &cfg,
             first, sizeof first),
        1);
    assert_int_equal(load("transport = nats\nnats_servers = nats://a\nagent_id = all\n", &cfg,
                          first, sizeof first),
                     1);
    assert_true(load("transport = bus\nnats_servers = nats://a\n", &cfg, first, sizeof first) >= 1);
    assert_non_null(strstr(first, "websocket or nats"));
    /* URLs and prefixes. */
    assert_int_equal(config_parse_nats_url("nats://h", &why), 0);
    assert_int_equal(config_parse_nats_url("tls://h:4443", &why), 0);
    assert_int_not_equal(config_parse_nats_url("ws://h", &why), 0);
    assert_int_not_equal(config_parse_nats_url("nats://u:p@h", &why), 0);
    assert_int_not_equal(config_parse_nats_url("nats://h/x", &why), 0);
    assert_int_not_equal(config_parse_nats_url("nats://h:0", &why), 0);
    assert_int_not_equal(config_parse_nats_url("nats://h:", &why), 0);
    assert_int_not_equal(config_parse_nats_url("nats://", &why), 0);
    assert_true(config_subject_prefix_ok("a.b_c-d"));
    assert_false(config_subject_prefix_ok("a..b"));
    assert_false(config_subject_prefix_ok(".a"));
    assert_false(config_subject_prefix_ok("a."));
    assert_false(config_subject_prefix_ok("a.*"));
    assert_false(config_subject_prefix_ok("a.>"));
    assert_false(config_subject_prefix_ok("a b"));
    assert_false(config_subject_prefix_ok(""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_key),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_comments_quotes_env),
        cmocka_unit_test(test_bad_values_name_their_line),
        cmocka_unit_test(test_control_socket_length),
        cmocka_unit_test(test_structural_errors),
        cmocka_unit_test(test_value_parsers),
        cmocka_unit_test(test_urls),
        cmocka_unit_test(test_nats_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
