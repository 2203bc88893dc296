/* main.c: command line: the daemon, --check-config, --version, --help, move,
 * status, cancel. */
#include "agent.h"
#include "cli_ctl.h"
#include "cli_move.h"
#include "config.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: hostagent [--config FILE]            run the agent in the foreground\n"
                 "       hostagent --check-config [--config FILE]\n"
                 "       hostagent move [--verify=metadata|checksum] [--json] OLD NEW\n"
                 "       hostagent move --live [--commit-after=SECONDS] [--json] OLD NEW\n"
                 "                  copy while the server runs, then commit on Enter (or after\n"
                 "                  SECONDS) once it is stopped: a move with a short stop\n"
                 "       hostagent status [--json] [--config FILE]\n"
                 "       hostagent cancel [--config FILE] MOVE_ID | --server NAME\n"
                 "       hostagent --version | --help\n"
                 "\n"
                 "The default config file is " CONFIG_DEFAULT_PATH ".\n"
                 "Signals: SIGTERM/SIGINT stop gracefully, SIGHUP reloads the config.\n");
}

static int run_check_config(const char *file)
{
    struct config cfg;
    struct config_errors errs;
    if (config_load(file, &cfg, &errs) != 0) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.lines[i]);
        config_errors_free(&errs);
        return 1;
    }
    printf("%s: OK\n", file);
    config_free(&cfg);
    return 0;
}

static int run_daemon(const char *file)
{
    struct config cfg;
    struct config_errors errs;
    struct agent *a;
    int rc;
    if (config_load(file, &cfg, &errs) != 0) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.lines[i]);
        config_errors_free(&errs);
        return 1;
    }
    log_setup(cfg.log_level, cfg.log_format);
    a = xmalloc(sizeof *a);
    if (agent_init(a, file, &cfg) != 0) {
        free(a);
        return 1;
    }
    rc = agent_run(a);
    free(a);
    return rc;
}

int main(int argc, char **argv)
{
    const char *config = CONFIG_DEFAULT_PATH;
    bool check = false;

    if (argc >= 2 && strcmp(argv[1], "move") == 0)
        return cli_move_main(argc - 2, argv + 2);
    if (argc >= 2 && (strcmp(argv[1], "status") == 0 || strcmp(argv[1], "cancel") == 0))
        return cli_ctl_main(argc - 1, argv + 1);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--version") == 0) {
            printf("hostagent %s\n", HOSTAGENT_VERSION);
            return 0;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--check-config") == 0) {
            check = true;
        } else if (strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "-c") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "hostagent: %s needs a FILE\n", argv[i]);
                return 2;
            }
            config = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            config = argv[i] + 9;
        } else {
            fprintf(stderr, "hostagent: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    return check ? run_check_config(config) : run_daemon(config);
}
