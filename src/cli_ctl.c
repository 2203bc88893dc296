/* cli_ctl.c: `hostagent status [--json]` and `hostagent cancel`: one request
 * line to the daemon's control socket and its answer; without a daemon,
 * `status` reads state_dir's journal (read-only, without its lock). */
#include "cli_ctl.h"
#include "config.h"
#include "control.h"
#include "journal.h"
#include "move_state.h"
#include "reclaim.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define CTL_TIMEOUT_MS 10000
#define CTL_ANSWER_MAX (64u << 20)
#define CTL_HOUR_MS (3600ull * 1000ull)

struct ctl_args {
    const char *cmd;
    const char *config;
    const char *move_id;
    const char *server;
    bool json;
};

static void ctl_usage(FILE *out)
{
    fprintf(out, "usage: hostagent status [--json] [--config FILE]\n"
                 "       hostagent cancel [--config FILE] MOVE_ID\n"
                 "       hostagent cancel [--config FILE] --server NAME\n");
}

/* 0, 2 after a usage message, or -1 after --help. */
static int ctl_parse_args(int argc, char **argv, struct ctl_args *a)
{
    bool status = strcmp(argv[0], "status") == 0;
    memset(a, 0, sizeof *a);
    a->cmd = argv[0];
    a->config = CONFIG_DEFAULT_PATH;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            ctl_usage(stdout);
            return -1;
        } else if (strcmp(arg, "--config") == 0 || strcmp(arg, "-c") == 0 ||
                   (!status && strcmp(arg, "--server") == 0)) {
            if (i + 1 >= argc) {
                fprintf(stderr, "hostagent %s: %s needs a value\n", a->cmd, arg);
                return 2;
            }
            if (strcmp(arg, "--server") == 0)
                a->server = argv[++i];
            else
                a->config = argv[++i];
        } else if (strncmp(arg, "--config=", 9) == 0) {
            a->config = arg + 9;
        } else if (!status && strncmp(arg, "--server=", 9) == 0) {
            a->server = arg + 9;
        } else if (status && strcmp(arg, "--json") == 0) {
            a->json = true;
        } else if (!status && arg[0] != '-' && !a->move_id) {
            a->move_id = arg;
        } else {
            fprintf(stderr, "hostagent %s: unexpected argument '%s'\n", a->cmd, arg);
            ctl_usage(stderr);
            return 2;
        }
    }
    if (!status && !a->move_id == !a->server) {
        fprintf(stderr, "hostagent cancel: give either a MOVE_ID or --server NAME\n");
        ctl_usage(stderr);
        return 2;
    }
    return 0;
}

/* --- talking to the daemon -------------------------------------------------------- */

/* Is the process listening on the control socket (fd, connected) one to
 * believe? The config names no user for the daemon: it runs as whoever
 * starts it (systemd's User=), and its socket's directory is its own (the
 * unit's RuntimeDirectory, or the directory it made). So: root, this
 * command's own user, or the owner of the socket's directory when that
 * directory is one only root or its owner could have made
 * (control_check_dir with a private parent). Anyone else could have put
 * their socket there and would answer what they like: 0, or -EPERM with
 * why. */
static int ctl_check_peer(int fd, const char *path, char *why, size_t whysz)
{
    char dir[PATH_MAX], unsafe[512], *slash;
    struct ucred cred;
    socklen_t clen = sizeof cred;
    struct stat st;
    uid_t me = geteuid();
    int rc;

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0) {
        rc = -errno;
        util_fmt(why, whysz, "cannot learn who listens on control socket %s: %s", path,
                 strerror(errno));
        return rc;
    }
    if (cred.uid == 0 || cred.uid == me)
        return 0;
    util_fmt(dir, sizeof dir, "%s", path);
    slash = strrchr(dir, '/');
    if (!slash) { /* the config takes only absolute paths */
        util_fmt(why, whysz, "control socket %s is not an absolute path", path);
        return -EINVAL;
    }
    slash[slash == dir ? 1 : 0] = '\0';
    if (lstat(dir, &st) != 0) {
        rc = -errno;
        util_fmt(why, whysz, "cannot examine %s, the directory of control socket %s: %s", dir, path,
                 strerror(errno));
        return rc;
    }
    if (st.st_uid != cred.uid) {
        util_fmt(why, whysz,
                 "the process answering on control socket %s runs as uid %u (pid %ld), not root, "
                 "you (uid %u) or the owner of its directory %s (uid %u): its answers are not "
                 "believed (is another program listening there?)",
                 path, (unsigned)cred.uid, (long)cred.pid, (unsigned)me, dir, (unsigned)st.st_uid);
        return -EPERM;
    }
    rc = control_check_dir(dir, cred.uid, true, unsafe, sizeof unsafe);
    if (rc != 0) {
        util_fmt(why, whysz,
                 "the process answering on control socket %s runs as uid %u (pid %ld), not root "
                 "or you (uid %u); it owns its directory %s, but %s: its answers are not believed",
                 path, (unsigned)cred.uid, (long)cred.pid, (unsigned)me, dir, unsafe);
        return -EPERM;
    }
    return 0;
}

/* Sends one request line and reads one answer line (within CTL_TIMEOUT_MS).
 * Returns the parsed answer, or NULL with why. */
static cJSON *ctl_exchange(int fd, const char *request, char *why, size_t whysz)
{
    size_t len = strlen(request), done = 0, cap = 4096, have = 0;
    int send_err = 0;
    uint64_t deadline = util_mono_ms() + CTL_TIMEOUT_MS;
    char *buf, *nl = NULL;
    cJSON *answer;

    while (done < len) {
        ssize_t n = send(fd, request + done, len - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            /* A refusal (busy, permission_denied) is written and the
             * connection closed at once: read it before giving up. */
            send_err = errno;
            break;
        }
        done += (size_t)n;
    }
    buf = xmalloc(cap);
    while (!nl) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        uint64_t now = util_mono_ms();
        ssize_t n;
        int pr;
        if (now >= deadline) {
            util_fmt(why, whysz, "the daemon did not answer within %d s", CTL_TIMEOUT_MS / 1000);
            goto fail;
        }
        pr = poll(&p, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            continue; /* the deadline check above ends it */
        if (have + 1 >= cap) {
            if (cap >= CTL_ANSWER_MAX) {
                util_fmt(why, whysz, "the answer is longer than %u bytes", CTL_ANSWER_MAX);
                goto fail;
            }
            cap *= 2;
            buf = xrealloc(buf, cap);
        }
        n = recv(fd, buf + have, cap - have - 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            util_fmt(why, whysz, "cannot read the answer: %s", strerror(errno));
            goto fail;
        }
        if (n == 0 && send_err) {
            util_fmt(why, whysz, "cannot send the request: %s", strerror(send_err));
            goto fail;
        }
        if (n == 0) {
            util_fmt(why, whysz, "the daemon closed the connection without an answer");
            goto fail;
        }
        nl = memchr(buf + have, '\n', (size_t)n);
        have += (size_t)n;
    }
    answer = cJSON_ParseWithLength(buf, (size_t)(nl - buf));
    free(buf);
    if (!cJSON_IsObject(answer)) {
        cJSON_Delete(answer);
        util_fmt(why, whysz, "the daemon's answer is not a JSON object");
        return NULL;
    }
    return answer;
fail:
    free(buf);
    return NULL;
}

/* "code: error" of a failed answer. */
static void ctl_print_failure(const char *cmd, const cJSON *answer)
{
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(answer, "code");
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(answer, "error");
    fprintf(stderr, "hostagent %s: %s: %s\n", cmd,
            cJSON_IsString(code) ? code->valuestring : "error",
            cJSON_IsString(err) ? err->valuestring : "the daemon gave no reason");
}

/* --- the status table ------------------------------------------------------------- */

static const char *str_of(const cJSON *o, const char *key, const char *dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : dflt;
}

static bool num_of(const cJSON *o, const char *key, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    char *end;
    if (cJSON_IsNumber(v)) {
        *out = v->valuedouble;
        return true;
    }
    /* MoveState built here (from state_dir) holds its numbers as raw text. */
    if (!cJSON_IsRaw(v) || !v->valuestring)
        return false;
    *out = strtod(v->valuestring, &end);
    return end != v->valuestring && *end == '\0';
}

static void fmt_eta(char *buf, size_t sz, uint64_t s)
{
    if (s < 60)
        util_fmt(buf, sz, "%llus", (unsigned long long)s);
    else if (s < 3600)
        util_fmt(buf, sz, "%llum%02llus", (unsigned long long)(s / 60),
                 (unsigned long long)(s % 60));
    else
        util_fmt(buf, sz, "%lluh%02llum", (unsigned long long)(s / 3600),
                 (unsigned long long)(s / 60 % 60));
}

#define COLS 7

/* The table's cells of one MoveState object. */
static void row_of(const cJSON *m, char cells[COLS][160])
{
    const char *phase = str_of(m, "phase", "?");
    bool active = strcmp(phase, "queued") != 0 && strcmp(phase, "complete") != 0 &&
                  strcmp(phase, "error") != 0 && strcmp(phase, "cancelled") != 0;
    double v;
    util_fmt(cells[0], 160, "%s", str_of(m, "serverName", "?"));
    util_fmt(cells[1], 160, "%s", str_of(m, "moveId", "?"));
    util_fmt(cells[2], 160, "%s", phase);
    if (num_of(m, "percent", &v))
        util_fmt(cells[3], 160, "%.1f%%", v);
    else
        util_fmt(cells[3], 160, "-");
    if (active && num_of(m, "bytesPerSecond", &v) && v > 0) {
        const cJSON *y = cJSON_GetObjectItemCaseSensitive(m, "yielding");
        char rate[16];
        util_fmt_rate(rate, sizeof rate, (uint64_t)v);
        /* What holds the rate, when something does (docs/protocol.md, Pace). */
        util_fmt(cells[4], 160, "%s%s", rate,
                 cJSON_IsTrue(y)                       ? " yielding"
                 : num_of(m, "rateLimit", &v) && v > 0 ? " capped"
                                                       : "");
    } else {
        util_fmt(cells[4], 160, "-");
    }
    if (active && num_of(m, "etaSeconds", &v) && v >= 0)
        fmt_eta(cells[5], 160, (uint64_t)v);
    else
        util_fmt(cells[5], 160, "-");
    util_fmt(cells[6], 160, "%s", str_of(m, "code", "-"));
}

static void ctl_print_table(const cJSON *moves)
{
    static const char *const head[COLS] = {"SERVER", "MOVE ID", "PHASE", "PERCENT",
                                           "RATE",   "ETA",     "CODE"};
    int width[COLS];
    int n = cJSON_GetArraySize(moves), i = 0;
    char(*cells)[COLS][160];
    const cJSON *m;

    if (n == 0) {
        printf("no moves: none running or queued, none ended in the last hour\n");
        return;
    }
    cells = xcalloc((size_t)n, sizeof *cells);
    for (int c = 0; c < COLS; c++)
        width[c] = (int)strlen(head[c]);
    cJSON_ArrayForEach(m, moves)
    {
        row_of(m, cells[i]);
        for (int c = 0; c < COLS; c++)
            if ((int)strlen(cells[i][c]) > width[c])
                width[c] = (int)strlen(cells[i][c]);
        i++;
    }
    for (int c = 0; c < COLS; c++)
        printf("%-*s%s", c == COLS - 1 ? 0 : width[c], head[c], c == COLS - 1 ? "\n" : "  ");
    for (i = 0; i < n; i++)
        for (int c = 0; c < COLS; c++)
            printf("%-*s%s", c == COLS - 1 ? 0 : width[c], cells[i][c],
                   c == COLS - 1 ? "\n" : "  ");
    free(cells);
}

static void ctl_print_moves(const cJSON *moves, bool json)
{
    if (json) {
        char *txt = cJSON_PrintUnformatted(moves);
        if (!txt)
            util_oom(0);
        printf("%s\n", txt);
        cJSON_free(txt);
    } else {
        ctl_print_table(moves);
    }
}

/* What the daemon still deletes after its answers (reclaim = deferred): one
 * line under the table while anything is left (--json prints the moves
 * array alone, as before). */
static void ctl_print_reclaiming(const cJSON *answer, bool json)
{
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(answer, "reclaimingBytes");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(answer, "reclaimingEntries");
    if (json || !cJSON_IsNumber(b) || !cJSON_IsNumber(e) || e->valuedouble <= 0)
        return;
    printf("reclaiming: %.0f entries, %.0f bytes of moved servers' old files are being deleted in "
           "the background\n",
           e->valuedouble, b->valuedouble);
}

/* --- status from state_dir ------------------------------------------------------ */

struct ctl_offline {
    cJSON *moves;
    uint64_t now_ms;
    unsigned unfinished;
};

/* Keeps what the daemon would list: moves not ended, and those ended within
 * the hour. */
static void ctl_offline_rec(void *arg, struct journal_rec *r)
{
    struct ctl_offline *o = arg;
    bool ended = move_phase_terminal(r->phase);
    if (!ended || o->now_ms - r->ended_at_ms < CTL_HOUR_MS || r->ended_at_ms > o->now_ms) {
        struct move_state st;
        journal_rec_state(r, &st);
        cJSON_AddItemToArray(o->moves, move_state_to_json(&st));
        move_state_clear(&st);
        o->unfinished += !ended;
    }
    journal_rec_free(r);
}

/* Unfinished first (oldest first), then ended ones newest first: the
 * daemon's own order. */
static int ctl_cmp(const void *x, const void *y)
{
    const cJSON *a = *(const cJSON *const *)x, *b = *(const cJSON *const *)y;
    bool ea = cJSON_HasObjectItem(a, "endedAt"), eb = cJSON_HasObjectItem(b, "endedAt");
    if (ea != eb)
        return ea ? 1 : -1;
    if (ea)
        return strcmp(str_of(b, "endedAt", ""), str_of(a, "endedAt", ""));
    return strcmp(str_of(a, "startedAt", ""), str_of(b, "startedAt", ""));
}

static void ctl_sort(cJSON *arr)
{
    int n = cJSON_GetArraySize(arr);
    cJSON **items = xcalloc((size_t)n + 1, sizeof(cJSON *));
    for (int i = n; i-- > 0;)
        items[i] = cJSON_DetachItemFromArray(arr, i);
    qsort(items, (size_t)n, sizeof(cJSON *), ctl_cmp);
    for (int i = 0; i < n; i++)
        cJSON_AddItemToArray(arr, items[i]);
    free(items);
}

/* The pid named in state_dir's lock file when that process really has the
 * file open (0 otherwise). It only looks: taking the lock, even for a
 * moment, could make a daemon starting right then refuse to run. */
static long ctl_lock_holder(const char *state_dir)
{
    char path[PATH_MAX], real[PATH_MAX], fddir[64], link[PATH_MAX + 80], target[PATH_MAX];
    char text[32];
    struct dirent *de;
    long pid, found = 0;
    ssize_t n;
    DIR *d;
    int fd;

    util_fmt(path, sizeof path, "%s/lock", state_dir);
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return 0;
    n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0 || !realpath(path, real))
        return 0;
    text[n] = '\0';
    pid = strtol(text, NULL, 10);
    if (pid <= 0)
        return 0;
    util_fmt(fddir, sizeof fddir, "/proc/%ld/fd", pid);
    d = opendir(fddir);
    if (!d)
        return 0;
    while (!found && (de = readdir(d)) != NULL) {
        util_fmt(link, sizeof link, "%s/%s", fddir, de->d_name);
        n = readlink(link, target, sizeof target - 1);
        if (n > 0) {
            target[n] = '\0';
            if (strcmp(target, real) == 0)
                found = pid;
        }
    }
    closedir(d);
    return found;
}

struct ctl_reclaims {
    FILE *out;
    bool daemon; /* a daemon holds state_dir (it deletes them now) */
};

/* One reclaim recorded in state_dir: a moved server's old files still to
 * delete (reclaim = deferred), which the daemon resumes when it starts. */
static void ctl_offline_reclaim(void *arg, const struct reclaim_item *it)
{
    struct ctl_reclaims *c = arg;
    fprintf(c->out,
            "reclaim of move %s: %s (%llu entries, %llu bytes when recorded) is left to delete; "
            "%s\n",
            it->move_id, it->dir, (unsigned long long)it->entries, (unsigned long long)it->bytes,
            c->daemon ? "the daemon deletes it in the background"
                      : "the daemon's next start deletes it");
}

static int ctl_status_offline(const struct ctl_args *a, const struct config *cfg, int conn_err)
{
    struct ctl_offline o = {.moves = cJSON_CreateArray(), .now_ms = util_wall_ms()};
    FILE *note = a->json ? stderr : stdout;
    unsigned unreadable = 0;
    struct ctl_reclaims rcl;
    long holder = ctl_lock_holder(cfg->state_dir);
    int rc = journal_read(cfg->state_dir, ctl_offline_rec, &o, &unreadable);

    if (rc != 0 && rc != -ENOENT) {
        fprintf(stderr,
                "hostagent status: no daemon answers on control socket %s (%s), and "
                "state_dir %s cannot be read: %s\n",
                cfg->control_socket, strerror(-conn_err), cfg->state_dir, strerror(-rc));
        cJSON_Delete(o.moves);
        return 1;
    }
    if (holder)
        fprintf(note,
                "the hostagent daemon holding state_dir (pid %ld) does not answer on control "
                "socket %s (%s: does it use another control_socket?); from state_dir %s:\n",
                holder, cfg->control_socket, strerror(-conn_err), cfg->state_dir);
    else
        fprintf(note, "no hostagent daemon is running (control socket %s); from state_dir %s:\n",
                cfg->control_socket, cfg->state_dir);
    ctl_sort(o.moves);
    ctl_print_moves(o.moves, a->json);
    if (o.unfinished && !holder)
        fprintf(note,
                "%u move%s did not end: the daemon's next start rolls %s back (or finishes "
                "%s cleaning) and answers the manager\n",
                o.unfinished, o.unfinished == 1 ? "" : "s", o.unfinished == 1 ? "it" : "them",
                o.unfinished == 1 ? "its" : "their");
    rcl.out = note;
    rcl.daemon = holder != 0;
    (void)reclaim_list(cfg->state_dir, ctl_offline_reclaim, &rcl);
    if (unreadable)
        fprintf(stderr, "hostagent status: %u journal file%s in %s/moves could not be read\n",
                unreadable, unreadable == 1 ? "" : "s", cfg->state_dir);
    cJSON_Delete(o.moves);
    return 0;
}

/* --- the commands --------------------------------------------------------------- */

static char *ctl_request_text(const struct ctl_args *a)
{
    cJSON *env = cJSON_CreateObject(), *data;
    char *printed, *line;
    size_t n;
    bool status = strcmp(a->cmd, "status") == 0;
    cJSON_AddStringToObject(env, "subject", status ? "server.move_status" : "server.move_cancel");
    data = cJSON_AddObjectToObject(env, "data");
    if (a->move_id)
        cJSON_AddStringToObject(data, "moveId", a->move_id);
    if (a->server)
        cJSON_AddStringToObject(data, "serverName", a->server);
    printed = cJSON_PrintUnformatted(env);
    cJSON_Delete(env);
    if (!printed)
        util_oom(0);
    n = strlen(printed);
    line = xmalloc(n + 2);
    memcpy(line, printed, n);
    memcpy(line + n, "\n", 2);
    cJSON_free(printed);
    return line;
}

static int ctl_run(const struct ctl_args *a, const struct config *cfg)
{
    bool status = strcmp(a->cmd, "status") == 0;
    char why[1024], *request;
    const cJSON *moves;
    cJSON *answer;
    int fd = control_connect(cfg->control_socket, CONTROL_CONNECT_TIMEOUT_MS);

    if (fd == -ENOENT || fd == -ECONNREFUSED) {
        if (status)
            return ctl_status_offline(a, cfg, fd);
        fprintf(stderr,
                "hostagent cancel: no hostagent daemon is running (control socket %s); nothing "
                "to cancel\n",
                cfg->control_socket);
        return 1;
    }
    if (fd == -ETIMEDOUT) {
        fprintf(stderr,
                "hostagent %s: something listens on control socket %s but took no connection "
                "within %u s (a stopped or stuck daemon?)\n",
                a->cmd, cfg->control_socket, CONTROL_CONNECT_TIMEOUT_MS / 1000u);
        return 1;
    }
    if (fd < 0) {
        fprintf(stderr, "hostagent %s: cannot reach the daemon's control socket %s: %s%s\n", a->cmd,
                cfg->control_socket, strerror(-fd),
                fd == -EACCES || fd == -EPERM ? " (it serves only root and the daemon's user)"
                                              : "");
        return 1;
    }
    if (ctl_check_peer(fd, cfg->control_socket, why, sizeof why) != 0) {
        close(fd);
        fprintf(stderr, "hostagent %s: %s\n", a->cmd, why);
        return 1;
    }
    request = ctl_request_text(a);
    answer = ctl_exchange(fd, request, why, sizeof why);
    free(request);
    close(fd);
    if (!answer) {
        fprintf(stderr, "hostagent %s: %s (control socket %s)\n", a->cmd, why, cfg->control_socket);
        return 1;
    }
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(answer, "success"))) {
        ctl_print_failure(a->cmd, answer);
        cJSON_Delete(answer);
        return 1;
    }
    if (status) {
        moves = cJSON_GetObjectItemCaseSensitive(answer, "moves");
        if (!cJSON_IsArray(moves)) {
            fprintf(stderr, "hostagent status: the daemon's answer has no moves list\n");
            cJSON_Delete(answer);
            return 1;
        }
        ctl_print_moves(moves, a->json);
        ctl_print_reclaiming(answer, a->json);
    } else {
        printf("move %s: cancel requested; it is rolled back and ends as cancelled "
               "(see hostagent status)\n",
               str_of(answer, "moveId", "?"));
    }
    cJSON_Delete(answer);
    return 0;
}

int cli_ctl_main(int argc, char **argv)
{
    struct ctl_args a;
    struct config cfg;
    struct config_errors errs;
    int rc = ctl_parse_args(argc, argv, &a);
    if (rc != 0)
        return rc < 0 ? 0 : rc;
    if (config_load(a.config, &cfg, &errs) != 0) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.lines[i]);
        config_errors_free(&errs);
        return 1;
    }
    rc = ctl_run(&a, &cfg);
    config_free(&cfg);
    return rc;
}
