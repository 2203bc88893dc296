/* cli_move.c: `hostagent move`: one move with the daemon's engine, with a
 * progress bar on a terminal, plain lines otherwise, or MoveState JSON lines;
 * Ctrl-C (or SIGTERM) cancels and rolls back. `--live` prepares while the
 * server runs and commits on Enter (or after --commit-after seconds). */
#include "cli_move.h"
#include "config_value.h"
#include "move_engine.h"
#include "paths.h"
#include "reclaim.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define RATE_SAMPLES 24 /* every >= 250 ms: the last ~5 s */

enum cli_output { OUT_TTY, OUT_LINES, OUT_JSON };

struct cli_move {
    enum cli_output out;
    uint64_t started_ms, last_ms;
    uint64_t seq;
    const char *old_path, *new_path;
    bool drawn; /* a bar is on the screen (needs a newline before other output) */
    bool rename;
    struct {
        uint64_t t, bytes;
    } samples[RATE_SAMPLES];
    unsigned n_samples, pos;
};

/* The signal handler only stores into a lock-free atomic. */
static atomic_int *cli_stop;

static void cli_on_signal(int sig)
{
    int none = CODE_NONE;
    (void)sig;
    atomic_compare_exchange_strong(cli_stop, &none, CODE_CANCELLED);
}

static uint64_t cli_rate(struct cli_move *cm, uint64_t now, uint64_t bytes)
{
    unsigned last = (cm->pos + RATE_SAMPLES - 1) % RATE_SAMPLES;
    if (cm->n_samples == 0 || now - cm->samples[last].t >= 250) {
        cm->samples[cm->pos].t = now;
        cm->samples[cm->pos].bytes = bytes;
        cm->pos = (cm->pos + 1) % RATE_SAMPLES;
        if (cm->n_samples < RATE_SAMPLES)
            cm->n_samples++;
    }
    for (unsigned k = 0; k < cm->n_samples; k++) {
        unsigned i = (cm->pos + RATE_SAMPLES - cm->n_samples + k) % RATE_SAMPLES;
        if (now - cm->samples[i].t <= 5000 && now > cm->samples[i].t + 100)
            return (bytes - cm->samples[i].bytes) * 1000u / (now - cm->samples[i].t);
    }
    return 0;
}

static void fmt_bytes(char *buf, size_t sz, uint64_t n)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)n;
    size_t u = 0;
    while (v >= 1024.0 && u + 1 < ARRAY_SIZE(units)) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        util_fmt(buf, sz, "%lluB", (unsigned long long)n);
    else
        util_fmt(buf, sz, "%.1f%s", v, units[u]);
}

static unsigned term_width(void)
{
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 40)
        return ws.ws_col;
    return 80;
}

/* A finished move reads as finished: its duration and its average rate
 * (bytes / duration) instead of a current rate of 0 and an ETA of 0. */
static void cli_fmt_finished(char *rate, size_t rsz, char *when, size_t wsz,
                             const struct move_state *s)
{
    uint64_t ms = s->elapsed_ms ? s->elapsed_ms : 1;
    char avg[16];
    util_fmt_rate(avg, sizeof avg, s->count.bytes_copied * 1000u / ms);
    util_fmt(when, wsz, "in %.2f s", (double)s->elapsed_ms / 1000.0);
    if (s->rename)
        util_fmt(rate, rsz, "renamed");
    else
        util_fmt(rate, rsz, "avg %s", avg);
}

/* The rate, and what holds it when something does: the disk-latency
 * controller giving way to other I/O ("yielding") or the operator's cap. */
static void cli_fmt_rate(char *buf, size_t size, const struct move_state *s)
{
    char r[16];
    util_fmt_rate(r, sizeof r, s->bytes_per_second);
    util_fmt(buf, size, "%s%s", r,
             s->count.yielding     ? " yielding"
             : s->count.rate_limit ? " capped"
                                   : "");
}

static void cli_draw_bar(struct cli_move *cm, const struct move_state *s)
{
    char done[16], total[16], rate[32], eta[24], head[184], line[1024];
    unsigned width = term_width(), bar = 20, filled;
    size_t used, room;
    const char *cur = s->current_file;
    fmt_bytes(done, sizeof done, s->count.bytes_copied);
    fmt_bytes(total, sizeof total, s->count.bytes_total);
    cli_fmt_rate(rate, sizeof rate, s);
    if (s->eta_seconds >= 0)
        util_fmt(eta, sizeof eta, "eta %llds", (long long)s->eta_seconds);
    else
        util_fmt(eta, sizeof eta, "eta ?");
    if (s->phase == PHASE_COMPLETE)
        cli_fmt_finished(rate, sizeof rate, eta, sizeof eta, s);
    filled = (unsigned)(s->percent / 100.0 * bar + 0.5);
    if (filled > bar)
        filled = bar;
    util_fmt(head, sizeof head, "%-11s [%.*s%*s] %5.1f%% %s/%s %llu/%llu files %s %s ",
             move_phase_name(s->phase), (int)filled, "####################", (int)(bar - filled),
             "", s->percent, done, total, (unsigned long long)s->count.files_copied,
             (unsigned long long)s->count.files_total, rate, eta);
    used = strlen(head);
    room = width - 1 > used ? width - 1 - used : 0;
    /* The current file, shortened from the left to what is left of the line. */
    if (strlen(cur) > room)
        cur = room > 3 ? cur + strlen(cur) - (room - 3) : "";
    util_fmt(line, sizeof line, "\r%s%s%s\033[K", head,
             cur != s->current_file && room > 3 ? "..." : "", cur);
    fputs(line, stdout);
    cm->drawn = true;
}

static void cli_print_line(const struct move_state *s)
{
    char rate[32], when[24];
    cli_fmt_rate(rate, sizeof rate, s);
    if (s->phase == PHASE_COMPLETE)
        cli_fmt_finished(rate, sizeof rate, when, sizeof when, s);
    printf("%-11s %6.2f%%  files %llu/%llu  bytes %llu/%llu  %s", move_phase_name(s->phase),
           s->percent, (unsigned long long)s->count.files_copied,
           (unsigned long long)s->count.files_total, (unsigned long long)s->count.bytes_copied,
           (unsigned long long)s->count.bytes_total, rate);
    if (s->phase == PHASE_COMPLETE)
        printf("  %s", when);
    else if (s->eta_seconds >= 0)
        printf("  eta %llds", (long long)s->eta_seconds);
    if (s->current_file[0])
        printf("  %s", s->current_file);
    putchar('\n');
}

/* One state out: a bar, a line or a JSON object. */
static void cli_emit(struct cli_move *cm, const struct engine_progress *p, enum move_code code,
                     const char *error)
{
    uint64_t now = util_mono_ms();
    struct move_state s;
    memset(&s, 0, sizeof s);
    util_fmt(s.move_id, sizeof s.move_id, "cli");
    util_fmt(s.server_name, sizeof s.server_name, "cli");
    s.old_path = (char *)cm->old_path;
    s.new_path = (char *)cm->new_path;
    s.rename = cm->rename;
    s.phase = p->phase;
    s.count = p->count;
    if (p->phase == PHASE_COMPLETE) { /* a code at the end of a success is a warning */
        s.warning_code = code;
        util_fmt(s.warning, sizeof s.warning, "%s", error ? error : "");
    } else {
        s.code = code;
        util_fmt(s.error, sizeof s.error, "%s", error ? error : "");
    }
    s.percent = p->phase == PHASE_COPYING
                    ? (p->count.bytes_total
                           ? 100.0 * (double)p->count.bytes_copied / (double)p->count.bytes_total
                           : 0)
                : p->phase > PHASE_COPYING ? 100.0
                                           : 0.0;
    s.phase_percent = p->count.phase_total
                          ? 100.0 * (double)p->count.phase_done / (double)p->count.phase_total
                          : 0;
    s.eta_seconds = -1;
    if (p->phase == PHASE_COPYING) {
        s.bytes_per_second = cli_rate(cm, now, p->count.bytes_copied);
        if (s.bytes_per_second > 0)
            s.eta_seconds =
                (int64_t)((p->count.bytes_total - p->count.bytes_copied + s.bytes_per_second - 1) /
                          s.bytes_per_second);
    }
    s.elapsed_ms = now - cm->started_ms;
    s.started_at_ms = util_wall_ms() - s.elapsed_ms;
    s.seq = ++cm->seq;
    util_fmt(s.current_file, sizeof s.current_file, "%s", p->current ? p->current : "");
    if (cm->out == OUT_JSON) {
        cJSON *o = move_state_to_json(&s);
        char *txt = cJSON_PrintUnformatted(o);
        printf("%s\n", txt);
        cJSON_free(txt);
        cJSON_Delete(o);
    } else if (cm->out == OUT_TTY) {
        cli_draw_bar(cm, &s);
    } else {
        cli_print_line(&s);
    }
    fflush(stdout);
}

static void cli_report(void *arg, const struct engine_progress *p, bool phase_start)
{
    struct cli_move *cm = arg;
    uint64_t now = util_mono_ms(), gap = cm->out == OUT_TTY ? 100 : 500;
    if (!phase_start && now - cm->last_ms < gap)
        return;
    cm->last_ms = now;
    cli_emit(cm, p, CODE_NONE, NULL);
}

/* A command-line path made absolute as mv(1) sees it: a relative one is
 * taken from the current directory; "." and empty components go; ".." goes
 * up from the real directory reached so far (the kernel's meaning, also past
 * a symlink), or lexically where that does not exist yet. A last component
 * of "." or ".." is refused: it names a directory by where it is seen from.
 * Returns 0, or -ENAMETOOLONG / -EINVAL / a getcwd error. */
static int cli_absolute(const char *arg, char *out, size_t outsz)
{
    char joined[2 * PATH_MAX], real[PATH_MAX], *save = NULL, *comp;
    size_t len = strlen(arg), n = 0;
    while (len > 1 && arg[len - 1] == '/')
        len--;
    if (len == 0)
        return -EINVAL;
    {
        const char *last = arg + len;
        while (last > arg && last[-1] != '/')
            last--;
        if ((arg + len - last == 1 && last[0] == '.') ||
            (arg + len - last == 2 && last[0] == '.' && last[1] == '.'))
            return -EINVAL;
    }
    if (arg[0] == '/') {
        if ((size_t)snprintf(joined, sizeof joined, "%.*s", (int)len, arg) >= sizeof joined)
            return -ENAMETOOLONG;
    } else {
        if (!getcwd(real, sizeof real))
            return -errno;
        if ((size_t)snprintf(joined, sizeof joined, "%s/%.*s", real, (int)len, arg) >=
            sizeof joined)
            return -ENAMETOOLONG;
    }
    out[0] = '\0';
    for (comp = strtok_r(joined, "/", &save); comp; comp = strtok_r(NULL, "/", &save)) {
        if (strcmp(comp, ".") == 0)
            continue;
        if (strcmp(comp, "..") == 0) {
            char *slash;
            if (n > 0 && realpath(out, real) && strlen(real) < outsz)
                strcpy(out, real);
            slash = strrchr(out, '/');
            n = slash ? (size_t)(slash - out) : 0;
            out[n] = '\0';
            continue;
        }
        if (n + 1 + strlen(comp) >= outsz)
            return -ENAMETOOLONG;
        out[n++] = '/';
        strcpy(out + n, comp);
        n += strlen(comp);
    }
    if (n == 0)
        strcpy(out, "/");
    return 0;
}

/* "ARG" as typed, and the absolute path when it differs: "data (/srv/data)". */
static const char *cli_name(char *buf, size_t sz, const char *arg, const char *abs)
{
    if (strcmp(arg, abs) == 0)
        util_fmt(buf, sz, "%s", arg);
    else
        util_fmt(buf, sz, "%s (%s)", arg, abs);
    return buf;
}

/* The checks the daemon makes, without the allowed roots. Returns 0, or the
 * exit status after printing the code and the reason; each path is named as
 * typed and as resolved. */
static int cli_check(const char *old_arg, const char *new_arg, char *old_real, char *new_real,
                     bool *rename)
{
    char old_abs[PATH_MAX], new_abs[PATH_MAX], old_norm[PATH_MAX], new_norm[PATH_MAX];
    char on[2 * PATH_MAX + 8], nn[2 * PATH_MAX + 8];
    const char *why = NULL;
    dev_t new_dev, old_dev;
    struct stat st;
    int err;
    if ((err = cli_absolute(old_arg, old_abs, sizeof old_abs)) != 0) {
        fprintf(stderr, "hostagent move: path_not_allowed: OLD %s: %s\n", old_arg,
                err == -EINVAL ? "give the directory by its name, not '.', '..' or ''"
                               : strerror(-err));
        return 1;
    }
    if ((err = cli_absolute(new_arg, new_abs, sizeof new_abs)) != 0) {
        fprintf(stderr, "hostagent move: path_not_allowed: NEW %s: %s\n", new_arg,
                err == -EINVAL ? "give the directory by its name, not '.', '..' or ''"
                               : strerror(-err));
        return 1;
    }
    cli_name(on, sizeof on, old_arg, old_abs);
    cli_name(nn, sizeof nn, new_arg, new_abs);
    if (path_check_syntax(old_abs, old_norm, &why) != 0 ||
        path_resolve(old_norm, old_real, NULL) != 0) {
        fprintf(stderr, "hostagent move: path_not_allowed: OLD %s %s\n", on,
                why ? why : "is invalid");
        return 1;
    }
    why = NULL;
    if (path_check_syntax(new_abs, new_norm, &why) != 0 ||
        path_resolve(new_norm, new_real, &new_dev) != 0) {
        fprintf(stderr, "hostagent move: path_not_allowed: NEW %s %s\n", nn,
                why ? why : "is invalid");
        return 1;
    }
    if (lstat(old_real, &st) == 0 && S_ISLNK(st.st_mode)) {
        fprintf(stderr, "hostagent move: path_not_allowed: OLD %s must not be a symlink\n", on);
        return 1;
    }
    if (path_overlap(old_real, new_real)) {
        fprintf(stderr, "hostagent move: invalid_paths: OLD %s and NEW %s are the same or nested\n",
                on, nn);
        return 1;
    }
    if (lstat(old_real, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "hostagent move: source_missing: %s is not a directory\n", on);
        return 1;
    }
    old_dev = st.st_dev;
    if (lstat(new_real, &st) == 0) {
        if (!S_ISDIR(st.st_mode) || path_dir_is_empty(new_real) != 1) {
            fprintf(stderr, "hostagent move: destination_exists: %s\n", nn);
            return 1;
        }
        new_dev = st.st_dev; /* an empty mount point counts as its own filesystem */
    }
    *rename = old_dev == new_dev;
    return 0;
}

/* After the completion line: the old files, renamed into their reclaim
 * directory, are deleted here before the program ends, so that no hidden
 * directory is left behind. Ctrl-C stops it and says where the rest is. */
static int cli_reclaim(const struct engine_reclaim *rc, atomic_int *stop, bool json)
{
    struct reclaim_progress p = {0};
    char size[16], why[PATH_MAX + 256];
    uint64_t t0 = util_mono_ms();
    int err;
    atomic_store(stop, CODE_NONE); /* the engine locked it; Ctrl-C stops the deletion now */
    fmt_bytes(size, sizeof size, rc->bytes);
    if (!json) {
        printf("reclaiming %llu entries (%s) of the old files...\n",
               (unsigned long long)rc->entries, size);
        fflush(stdout);
    }
    err = reclaim_delete(rc->dir, rc->dev, rc->ino, stop, &p, true, why, sizeof why);
    if (err == -ECANCELED) {
        fprintf(stderr,
                "hostagent move: the move is complete; deleting the old files was interrupted: "
                "the rest is in %s\n",
                rc->dir);
        return 0;
    }
    if (err != 0) {
        fprintf(stderr, "hostagent move: warning: the move is complete, but %s\n", why);
        return 0;
    }
    if (!json)
        printf("reclaimed in %.2f s\n", (double)(util_mono_ms() - t0) / 1000.0);
    return 0;
}

/* {"success":false,"code","error"} with the daemon's words. */
static cJSON *protocol_like_failure(enum move_code code, const char *error)
{
    cJSON *d = cJSON_CreateObject();
    char clean[MOVE_ERROR_MAX];
    util_utf8_sanitize(clean, sizeof clean, error);
    cJSON_AddFalseToObject(d, "success");
    cJSON_AddStringToObject(d, "code", move_code_name(code));
    cJSON_AddStringToObject(d, "error", clean);
    return d;
}

/* --- hostagent move --live ------------------------------------------------------ */

struct cli_live {
    struct cli_move *cm;
    struct engine_job *job;
    atomic_int *stop;
    long commit_after; /* seconds; < 0: wait for Enter */
    bool json;
    const char *old_arg, *new_arg;
    char dir[64];        /* the private temporary directory of the identity record */
    char ident[96];      /* its identity record */
    char **made_parents; /* ancestors of NEW missing before the move, outermost first */
    size_t n_made;
};

static void cli_print_json(cJSON *o)
{
    char *txt = cJSON_PrintUnformatted(o);
    printf("%s\n", txt);
    cJSON_free(txt);
    cJSON_Delete(o);
    fflush(stdout);
}

/* An answer as the daemon's: the prepare's at ready, or the commit's. */
static cJSON *cli_answer(const struct cli_live *lv, const struct engine_result *res,
                         uint64_t duration_ms)
{
    cJSON *d = cJSON_CreateObject();
    cJSON_AddTrueToObject(d, "success");
    cJSON_AddStringToObject(d, "moveId", "cli");
    cJSON_AddStringToObject(d, "serverName", "cli");
    cJSON_AddStringToObject(d, "oldPath", lv->old_arg);
    cJSON_AddStringToObject(d, "newPath", lv->new_arg);
    cJSON_AddStringToObject(d, "method", lv->job->rename ? "rename" : "copy");
    json_add_u64(d, "bytesCopied", res->bytes_copied);
    json_add_u64(d, "filesCopied", res->files_copied);
    json_add_u64(d, "durationMs", duration_ms);
    return d;
}

/* Waits in ready: 1 to commit (Enter, or the delay ran out), 0 to discard
 * (Ctrl-C, SIGTERM, or stdin closed with nothing to wait for). */
static int cli_wait_commit(struct cli_live *lv, long delay)
{
    uint64_t until = delay >= 0 ? util_mono_ms() + (uint64_t)delay * 1000u : 0;
    bool stdin_open = true;
    for (;;) {
        struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
        int timeout = -1, n;
        if (atomic_load(lv->stop) != CODE_NONE)
            return 0;
        if (delay >= 0) {
            uint64_t now = util_mono_ms();
            if (now >= until)
                return 1;
            timeout = (int)(until - now);
        } else if (!stdin_open) {
            fprintf(stderr, "hostagent move: stdin is closed: nobody can press Enter\n");
            return 0;
        }
        /* poll is never restarted after a signal handler: Ctrl-C wakes it. */
        n = poll(&pfd, stdin_open ? 1 : 0, timeout);
        if (n > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR))) {
            char buf[256];
            ssize_t r = read(STDIN_FILENO, buf, sizeof buf);
            if (r <= 0)
                stdin_open = false;
            else if (memchr(buf, '\n', (size_t)r))
                return 1;
        }
    }
}

/* Removes the prepared copy (Ctrl-C in ready). */
static int cli_discard(struct cli_live *lv)
{
    struct engine_result res;
    int none = CODE_NONE;
    atomic_compare_exchange_strong(lv->stop, &none, CODE_CANCELLED);
    if (!lv->job->rename) {
        lv->job->mode = ENGINE_DISCARD;
        (void)engine_run(lv->job, &res);
        if (res.code != CODE_CANCELLED) {
            fprintf(stderr, "hostagent move: %s: %s\n", move_code_name(res.code), res.error);
            return 1;
        }
    }
    if (lv->json) {
        cJSON *d = protocol_like_failure(CODE_CANCELLED, "the prepared move was cancelled");
        cli_print_json(d);
    }
    fprintf(stderr, "hostagent move: cancelled: %s%s; %s is untouched\n",
            lv->job->rename ? "nothing was moved" : "the copy at ",
            lv->job->rename ? "" : lv->new_arg, lv->old_arg);
    return 1;
}

/* Prepare, ready, commit on Enter. Returns the exit status. */
static int cli_live_run(struct cli_live *lv)
{
    struct engine_job *job = lv->job;
    struct engine_result res;
    struct engine_progress p;
    struct stat st;
    char size[16], synced[16];
    uint64_t prepared_ms, commit_ms, files = 0, bytes = 0;
    FILE *human = lv->json ? stderr : stdout;
    int rc;

    memset(&res, 0, sizeof res);
    if (lstat(job->src, &st) == 0) {
        job->src_id.known = true;
        job->src_id.dev = st.st_dev;
        job->src_id.ino = st.st_ino;
    }
    if (lstat(job->dst, &st) == 0) {
        job->dst_preexisted = true;
        job->dst_orig = st;
    } else {
        util_missing_parents(job->dst, &lv->made_parents, &lv->n_made);
    }
    job->made_parents = lv->made_parents;
    job->n_made = lv->n_made;
    if (!job->rename) {
        job->mode = ENGINE_PREPARE;
        if (engine_run(job, &res) != 0) {
            if (lv->json)
                cli_emit(lv->cm,
                         &(struct engine_progress){
                             .phase = res.code == CODE_CANCELLED ? PHASE_CANCELLED : PHASE_ERROR},
                         res.code, res.error);
            if (lv->cm->drawn)
                putchar('\n');
            fprintf(stderr, "hostagent move: %s: %s\n", move_code_name(res.code), res.error);
            return 1;
        }
        files = res.files_copied;
        bytes = res.bytes_copied;
        if (lstat(job->dst, &st) == 0) {
            job->dst_id.known = true;
            job->dst_id.dev = st.st_dev;
            job->dst_id.ino = st.st_ino;
        }
    }
    prepared_ms = util_mono_ms() - lv->cm->started_ms;
    memset(&p, 0, sizeof p);
    p.phase = PHASE_READY;
    p.count.bytes_copied = p.count.bytes_total = bytes;
    p.count.files_copied = p.count.files_total = files;
    if (lv->json || lv->cm->out == OUT_TTY)
        cli_emit(lv->cm, &p, CODE_NONE, NULL);
    if (lv->cm->drawn)
        putchar('\n');
    lv->cm->drawn = false;
    if (lv->json)
        cli_print_json(cli_answer(lv, &res, prepared_ms));
    fmt_bytes(size, sizeof size, bytes);
    /* With --json, stdout holds JSON lines only: the words go to stderr. */
    if (job->rename)
        fprintf(human,
                "ready: %s and %s are on one filesystem: the commit renames, nothing to copy ahead",
                lv->old_arg, lv->new_arg);
    else
        fprintf(human, "ready: copied %llu entries, %s in %.2f s while the server ran",
                (unsigned long long)files, size, (double)prepared_ms / 1000.0);
    if (lv->commit_after >= 0)
        fprintf(human,
                "; stop the server: committing in %ld s (Enter commits now, Ctrl-C cancels)\n",
                lv->commit_after);
    else
        fprintf(human, "; stop the server, then press Enter to commit (Ctrl-C cancels)\n");
    fflush(human);

    for (long delay = lv->commit_after;; delay = -1) {
        if (!cli_wait_commit(lv, delay))
            return cli_discard(lv);
        commit_ms = util_mono_ms();
        job->mode = ENGINE_COMMIT;
        job->files_copied = files;
        job->bytes_copied = bytes;
        rc = engine_run(job, &res);
        if (lv->cm->drawn)
            putchar('\n');
        lv->cm->drawn = false;
        if (rc == 0)
            break;
        if (lv->json) {
            cJSON *d = protocol_like_failure(res.code, res.error);
            cli_print_json(d);
        }
        if (!res.back_to_ready) {
            fprintf(stderr, "hostagent move: %s: %s\n", move_code_name(res.code), res.error);
            return 1;
        }
        fprintf(human,
                "the source changed during the final pass (is the server still running?): %s\n"
                "the copy is kept: stop the server, then press Enter to commit again (Ctrl-C "
                "cancels)\n",
                res.error);
        fflush(human);
    }
    commit_ms = util_mono_ms() - commit_ms;
    if (lv->json) {
        cJSON *d = cli_answer(lv, &res, util_mono_ms() - lv->cm->started_ms);
        memset(&p, 0, sizeof p);
        p.phase = PHASE_COMPLETE;
        p.count.bytes_copied = p.count.bytes_total = res.bytes_copied;
        p.count.files_copied = p.count.files_total = res.files_copied;
        cli_emit(lv->cm, &p, res.warning_code, res.warning_code ? res.warning : NULL);
        json_add_u64(d, "downtimeMs", commit_ms);
        json_add_u64(d, "bytesSynced", res.bytes_synced);
        json_add_u64(d, "filesSynced", res.files_synced);
        cli_print_json(d);
    }
    if (res.warning_code != CODE_NONE)
        fprintf(stderr, "hostagent move: warning: %s: %s\n", move_code_name(res.warning_code),
                res.warning);
    if (!lv->json) {
        fmt_bytes(size, sizeof size, res.bytes_copied);
        fmt_bytes(synced, sizeof synced, res.bytes_synced);
        printf("done: %s %s -> %s: %llu entries, %s; downtime %.2f s (the final pass synced %llu "
               "entries, %s)\n",
               job->rename ? "renamed" : "moved", lv->old_arg, lv->new_arg,
               (unsigned long long)res.files_copied, size, (double)commit_ms / 1000.0,
               (unsigned long long)res.files_synced, synced);
        fflush(stdout);
    }
    /* As a plain move: the old files go after the answer, in the foreground. */
    return res.reclaim ? cli_reclaim(&res.reclaimed, lv->stop, lv->json) : 0;
}

static int cli_live_main(struct cli_move *cm, struct engine_job *job, atomic_int *stop,
                         long commit_after, bool json, const char *old_arg, const char *new_arg)
{
    struct cli_live lv;
    const char *tmp;
    int rc;
    memset(&lv, 0, sizeof lv);
    lv.cm = cm;
    lv.job = job;
    lv.stop = stop;
    lv.commit_after = commit_after;
    lv.json = json;
    lv.old_arg = old_arg;
    lv.new_arg = new_arg;
    /* The identity record lives in a directory only we can read, gone at
     * exit (the daemon keeps its own in state_dir). */
    tmp = getenv("TMPDIR");
    if (!tmp || tmp[0] != '/' || strlen(tmp) >= 24)
        tmp = "/tmp";
    util_fmt(lv.dir, sizeof lv.dir, "%s/hostagent-live-XXXXXX", tmp);
    if (!mkdtemp(lv.dir)) {
        fprintf(stderr, "hostagent move: io_error: cannot make a temporary directory %s: %s\n",
                lv.dir, strerror(errno));
        return 1;
    }
    util_fmt(lv.ident, sizeof lv.ident, "%s/ident", lv.dir);
    job->ident_path = lv.ident;
    rc = cli_live_run(&lv);
    (void)unlink(lv.ident);
    (void)rmdir(lv.dir);
    for (size_t i = 0; i < lv.n_made; i++)
        free(lv.made_parents[i]);
    free(lv.made_parents);
    return rc;
}

int cli_move_main(int argc, char **argv)
{
    struct cli_move cm;
    struct engine_job job;
    struct engine_knobs knobs;
    struct engine_result res;
    struct sigaction sa;
    atomic_int stop;
    char old_real[PATH_MAX], new_real[PATH_MAX], size[16];
    const char *args[2];
    char move_id[MOVE_ID_MAX + 1];
    int nargs = 0, rc;
    bool json = false, live = false;
    long commit_after = -1;

    memset(&cm, 0, sizeof cm);
    memset(&job, 0, sizeof job);
    job.verify = VERIFY_METADATA;
    /* The daemon's defaults: the low I/O class, no cap (the adaptive pace). */
    atomic_init(&knobs.max_rate, 0);
    atomic_init(&knobs.io_class, (int)IO_PRIORITY_LOW);
    job.knobs = &knobs;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else if (strcmp(argv[i], "--verify=metadata") == 0)
            job.verify = VERIFY_METADATA;
        else if (strcmp(argv[i], "--verify=checksum") == 0)
            job.verify = VERIFY_CHECKSUM;
        else if (strcmp(argv[i], "--live") == 0)
            live = true;
        else if (strncmp(argv[i], "--max-rate=", 11) == 0) {
            uint64_t r;
            if (config_parse_size(argv[i] + 11, &r) != 0 || r < CONFIG_MAX_RATE_MIN ||
                r > CONFIG_MAX_RATE_MAX) {
                fprintf(stderr, "hostagent move: --max-rate takes bytes per second, at least 1M "
                                "(K, M, G are powers of 1024)\n");
                return 2;
            }
            atomic_store(&knobs.max_rate, r);
        } else if (strcmp(argv[i], "--io-priority=idle") == 0)
            atomic_store(&knobs.io_class, (int)IO_PRIORITY_IDLE);
        else if (strcmp(argv[i], "--io-priority=low") == 0)
            atomic_store(&knobs.io_class, (int)IO_PRIORITY_LOW);
        else if (strcmp(argv[i], "--io-priority=normal") == 0)
            atomic_store(&knobs.io_class, (int)IO_PRIORITY_NORMAL);
        else if (strncmp(argv[i], "--commit-after=", 15) == 0) {
            char *end;
            errno = 0;
            commit_after = strtol(argv[i] + 15, &end, 10);
            if (argv[i][15] < '0' || argv[i][15] > '9' || *end || errno || commit_after > 86400) {
                fprintf(stderr,
                        "hostagent move: --commit-after takes whole seconds (0 to 86400)\n");
                return 2;
            }
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
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
        fprintf(stderr, "usage: hostagent move [--verify=metadata|checksum] [--max-rate=RATE] "
                        "[--io-priority=idle|low|normal] [--json] OLD NEW\n"
                        "       hostagent move --live [--commit-after=SECONDS] "
                        "[--verify=metadata|checksum] [--max-rate=RATE] "
                        "[--io-priority=idle|low|normal] [--json] OLD NEW\n");
        return 2;
    }
    if (commit_after >= 0 && !live) {
        fprintf(stderr, "hostagent move: --commit-after goes with --live\n");
        return 2;
    }
    if ((rc = cli_check(args[0], args[1], old_real, new_real, &job.rename)) != 0)
        return rc;

    atomic_init(&stop, CODE_NONE);
    cli_stop = &stop;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = cli_on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    cm.out = json ? OUT_JSON : isatty(STDOUT_FILENO) ? OUT_TTY : OUT_LINES;
    cm.old_path = args[0];
    cm.new_path = args[1];
    cm.started_ms = util_mono_ms();
    cm.rename = job.rename;
    job.src = old_real;
    job.dst = new_real;
    job.stop = &stop;
    job.report = cli_report;
    job.arg = &cm;
    /* The source is renamed away and deleted after the completion line
     * (below, in the foreground): the name only has to be unique here. */
    util_fmt(move_id, sizeof move_id, "cli-%d-%llx", (int)getpid(),
             (unsigned long long)util_wall_ms());
    job.reclaim = RECLAIM_DEFERRED;
    job.move_id = move_id;
    if (live)
        return cli_live_main(&cm, &job, &stop, commit_after, json, args[0], args[1]);
    rc = engine_run(&job, &res);
    if (json || rc == 0) {
        struct engine_progress end;
        memset(&end, 0, sizeof end);
        end.phase = rc == 0                      ? PHASE_COMPLETE
                    : res.code == CODE_CANCELLED ? PHASE_CANCELLED
                                                 : PHASE_ERROR;
        end.count.bytes_copied = end.count.bytes_total = res.bytes_copied;
        end.count.files_copied = end.count.files_total = res.files_copied;
        if (rc == 0)
            cli_emit(&cm, &end, res.warning_code, res.warning_code ? res.warning : NULL);
        else
            cli_emit(&cm, &end, res.code, res.error);
    }
    if (cm.drawn)
        putchar('\n');
    fflush(stdout);
    if (rc != 0) {
        fprintf(stderr, "hostagent move: %s: %s\n", move_code_name(res.code), res.error);
        return 1;
    }
    if (res.warning_code != CODE_NONE)
        fprintf(stderr, "hostagent move: warning: %s: %s\n", move_code_name(res.warning_code),
                res.warning);
    fmt_bytes(size, sizeof size, res.bytes_copied);
    if (!json) {
        uint64_t ms = util_mono_ms() - cm.started_ms;
        char avg[16];
        util_fmt_rate(avg, sizeof avg, res.bytes_copied * 1000u / (ms ? ms : 1));
        printf("done: %s %s -> %s: %llu entries, %s in %.2f s", job.rename ? "renamed" : "moved",
               args[0], args[1], (unsigned long long)res.files_copied, size, (double)ms / 1000.0);
        if (!job.rename)
            printf(" (avg %s)", avg);
        putchar('\n');
        fflush(stdout);
    }
    return res.reclaim ? cli_reclaim(&res.reclaimed, &stop, json) : 0;
}
