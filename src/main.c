/* main.c: command line: the daemon, --check-config, --version, --help, move. */
#include "agent.h"
#include "config.h"
#include "log.h"
#include "move_engine.h"
#include "paths.h"
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

/* --- hostagent move ----------------------------------------------------------- */

struct cli_move {
    bool json;
    uint64_t last_print_ms, started_ms;
    enum move_phase phase;
    const char *old_path, *new_path;
};

static void cli_report(void *arg, const struct engine_progress *p, bool phase_start)
{
    struct cli_move *cm = arg;
    uint64_t now = util_mono_ms();
    double pct;
    if (!phase_start && now - cm->last_print_ms < 1000)
        return;
    cm->last_print_ms = now;
    cm->phase = p->phase;
    pct = p->phase == PHASE_COPYING
              ? (p->bytes_total ? 100.0 * (double)p->bytes_done / (double)p->bytes_total : 0)
          : p->phase > PHASE_COPYING ? 100.0
                                     : 0.0;
    if (cm->json) {
        struct move_state s;
        cJSON *o;
        char *txt;
        memset(&s, 0, sizeof s);
        util_fmt(s.move_id, sizeof s.move_id, "cli");
        util_fmt(s.server_name, sizeof s.server_name, "cli");
        s.old_path = (char *)cm->old_path;
        s.new_path = (char *)cm->new_path;
        s.phase = p->phase;
        s.bytes_total = p->bytes_total;
        s.bytes_copied = p->bytes_done;
        s.files_total = p->files_total;
        s.files_copied = p->files_done;
        s.percent = pct;
        s.phase_percent =
            p->phase_total ? 100.0 * (double)p->phase_done / (double)p->phase_total : 0;
        s.eta_seconds = -1;
        s.elapsed_ms = now - cm->started_ms;
        s.started_at_ms = util_wall_ms() - s.elapsed_ms;
        o = move_state_to_json(&s);
        txt = cJSON_PrintUnformatted(o);
        printf("%s\n", txt);
        cJSON_free(txt);
        cJSON_Delete(o);
    } else {
        printf("%-11s %6.2f%%  files %llu/%llu  bytes %llu/%llu\n", move_phase_name(p->phase), pct,
               (unsigned long long)p->files_done, (unsigned long long)p->files_total,
               (unsigned long long)p->bytes_done, (unsigned long long)p->bytes_total);
    }
    fflush(stdout);
}

static int run_move(int argc, char **argv)
{
    struct cli_move cm = {0};
    struct engine_job job = {0};
    struct engine_result res;
    atomic_int stop;
    char old_norm[PATH_MAX], new_norm[PATH_MAX], old_real[PATH_MAX], new_real[PATH_MAX];
    const char *why, *args[2];
    int nargs = 0;
    dev_t new_dev, old_dev;
    struct stat st;

    job.verify = VERIFY_METADATA;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            cm.json = true;
        else if (strcmp(argv[i], "--verify=metadata") == 0)
            job.verify = VERIFY_METADATA;
        else if (strcmp(argv[i], "--verify=checksum") == 0)
            job.verify = VERIFY_CHECKSUM;
        else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr, "hostagent move: unknown option %s\n", argv[i]);
            return 2;
        } else if (nargs < 2)
            args[nargs++] = argv[i];
        else {
            fprintf(stderr, "hostagent move: too many arguments\n");
            return 2;
        }
    }
    if (nargs != 2) {
        usage(stderr);
        return 2;
    }
    if (path_check_syntax(args[0], old_norm, &why) != 0 ||
        path_resolve(old_norm, old_real, NULL) != 0) {
        fprintf(stderr, "hostagent move: path_not_allowed: OLD %s\n", why ? why : "is invalid");
        return 1;
    }
    why = NULL;
    if (path_check_syntax(args[1], new_norm, &why) != 0 ||
        path_resolve(new_norm, new_real, &new_dev) != 0) {
        fprintf(stderr, "hostagent move: path_not_allowed: NEW %s\n", why ? why : "is invalid");
        return 1;
    }
    if (path_overlap(old_real, new_real)) {
        fprintf(stderr, "hostagent move: invalid_paths: OLD and NEW overlap\n");
        return 1;
    }
    if (lstat(old_real, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "hostagent move: source_missing: %s is not a directory\n", args[0]);
        return 1;
    }
    old_dev = st.st_dev;
    if (lstat(new_real, &st) == 0) {
        if (!S_ISDIR(st.st_mode) || path_dir_is_empty(new_real) != 1) {
            fprintf(stderr, "hostagent move: destination_exists: %s\n", args[1]);
            return 1;
        }
        new_dev = st.st_dev; /* an empty mount point counts as its own filesystem */
    }
    job.rename = old_dev == new_dev;
    atomic_init(&stop, CODE_NONE);
    cm.old_path = args[0];
    cm.new_path = args[1];
    cm.started_ms = util_mono_ms();
    job.src = old_real;
    job.dst = new_real;
    job.stop = &stop;
    job.report = cli_report;
    job.arg = &cm;
    if (engine_run(&job, &res) != 0) {
        fprintf(stderr, "hostagent move: %s: %s\n", move_code_name(res.code), res.error);
        return 1;
    }
    printf("done: %s, %llu files, %llu bytes in %llu ms\n", job.rename ? "renamed" : "copied",
           (unsigned long long)res.files_copied, (unsigned long long)res.bytes_copied,
           (unsigned long long)(util_mono_ms() - cm.started_ms));
    return 0;
}

int main(int argc, char **argv)
{
    const char *config = CONFIG_DEFAULT_PATH;
    bool check = false;

    if (argc >= 2 && strcmp(argv[1], "move") == 0)
        return run_move(argc - 2, argv + 2);
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
