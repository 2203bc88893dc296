/* metrics.c: counters and gauges of the daemon as a Prometheus text file. */
#include "metrics.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A failing write is logged at once, then at most this often while it keeps
 * failing the same way (heartbeat_interval may be 1 s). */
#define METRICS_FAIL_LOG_GAP_MS (10ull * 60 * 1000)

const uint64_t metrics_duration_bounds_ms[METRICS_DURATION_BUCKETS] = {
    100,    500,     1000,    5000,    10000,    30000,    60000,    300000,
    600000, 1800000, 3600000, 7200000, 14400000, 28800000, 86400000,
};

void metrics_init(struct metrics *m, const char *version, const char *agent_id)
{
    memset(m, 0, sizeof *m);
    m->start_wall_ms = util_wall_ms();
    m->version = version;
    m->agent_id = agent_id;
    m->conn_state = CONN_IDLE;
}

void metrics_free(struct metrics *m)
{
    free(m->written_path);
    m->written_path = NULL;
}

void metrics_conn_state(struct metrics *m, enum conn_state s)
{
    /* The first attempt leaves idle; every later one comes out of backoff. */
    if (s == CONN_CONNECTING && m->conn_state == CONN_BACKOFF)
        m->reconnects++;
    m->conn_state = s;
}

void metrics_move_ended(struct metrics *m, const struct move_state *st)
{
    /* Wall-clock times (a recovered move's start is from its journal); a
     * clock stepped back makes a negative span, counted as 0. */
    uint64_t dur = st->ended_at_ms > st->started_at_ms ? st->ended_at_ms - st->started_at_ms : 0;
    unsigned code = (unsigned)st->code < METRICS_N_CODES ? (unsigned)st->code : CODE_IO_ERROR;
    size_t b;
    m->moves_ended[code]++;
    m->bytes_copied += st->count.bytes_copied;
    m->files_copied += st->count.files_copied;
    for (b = 0; b < METRICS_DURATION_BUCKETS && dur > metrics_duration_bounds_ms[b]; b++)
        ;
    if (b < METRICS_DURATION_BUCKETS)
        m->duration_buckets[b]++;
    m->duration_count++;
    m->duration_sum_ms += dur;
}

void metrics_refused(struct metrics *m, enum move_code code)
{
    unsigned c = (unsigned)code < METRICS_N_CODES ? (unsigned)code : CODE_IO_ERROR;
    m->refused[c]++;
}

/* --- rendering ----------------------------------------------------------------- */

struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_reserve(struct sbuf *b, size_t more)
{
    if (b->len + more + 1 <= b->cap)
        return;
    while (b->len + more + 1 > b->cap)
        b->cap = b->cap ? b->cap * 2 : 4096;
    b->p = xrealloc(b->p, b->cap);
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    sb_reserve(b, (size_t)n);
    va_start(ap, fmt);
    (void)vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* A label value: backslash, double quote and line feed are escaped, as the
 * text format requires; everything else goes as it is (UTF-8). */
static void sb_label_value(struct sbuf *b, const char *v)
{
    sb_reserve(b, 2 * strlen(v));
    for (; *v; v++) {
        if (*v == '\\' || *v == '"') {
            b->p[b->len++] = '\\';
            b->p[b->len++] = *v;
        } else if (*v == '\n') {
            b->p[b->len++] = '\\';
            b->p[b->len++] = 'n';
        } else {
            b->p[b->len++] = *v;
        }
    }
    b->p[b->len] = '\0';
}

static void sb_head(struct sbuf *b, const char *name, const char *type, const char *help)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Milliseconds as seconds with three decimals: exact, no float rounding. */
static void sb_seconds(struct sbuf *b, uint64_t ms)
{
    sb_printf(b, "%" PRIu64 ".%03u", ms / 1000, (unsigned)(ms % 1000));
}

static void sb_by_code(struct sbuf *b, const char *name, const uint64_t *counts, bool with_none)
{
    for (unsigned c = with_none ? 0 : 1; c < METRICS_N_CODES; c++)
        sb_printf(b, "%s{code=\"%s\"} %" PRIu64 "\n", name,
                  c == CODE_NONE ? "none" : move_code_name((enum move_code)c), counts[c]);
}

void metrics_render(const struct metrics *m, char **out, size_t *len)
{
    struct sbuf b = {0};
    uint64_t cum = 0;

    sb_head(&b, "hostagent_info", "gauge", "The agent's version and agent_id (always 1).");
    sb_printf(&b, "hostagent_info{agent_id=\"");
    sb_label_value(&b, m->agent_id ? m->agent_id : "");
    sb_printf(&b, "\",version=\"");
    sb_label_value(&b, m->version ? m->version : "");
    sb_printf(&b, "\"} 1\n");

    sb_head(&b, "hostagent_start_time_seconds", "gauge",
            "Unix time the agent started; the counters count from there.");
    sb_printf(&b, "hostagent_start_time_seconds ");
    sb_seconds(&b, m->start_wall_ms);
    sb_printf(&b, "\n");

    sb_head(&b, "hostagent_connection_state", "gauge",
            "The manager connection's state: 1 for the current one, 0 for the others.");
    for (unsigned s = 0; s < METRICS_N_CONN_STATES; s++)
        sb_printf(&b, "hostagent_connection_state{state=\"%s\"} %d\n",
                  transport_state_name((enum conn_state)s), (unsigned)m->conn_state == s);

    sb_head(&b, "hostagent_reconnects_total", "counter",
            "Connection attempts after the first one (after a failed attempt or a lost "
            "connection).");
    sb_printf(&b, "hostagent_reconnects_total %" PRIu64 "\n", m->reconnects);

    sb_head(&b, "hostagent_last_pong_timestamp_seconds", "gauge",
            "Unix time the manager last answered a WebSocket ping of the agent (0: never).");
    sb_printf(&b, "hostagent_last_pong_timestamp_seconds ");
    sb_seconds(&b, m->last_pong_wall_ms);
    sb_printf(&b, "\n");

    sb_head(&b, "hostagent_moves_active", "gauge",
            "Moves running on a worker (calculating, copying, verifying, cleaning, or "
            "resuming after a restart).");
    sb_printf(&b, "hostagent_moves_active %u\n", m->moves_active);
    sb_head(&b, "hostagent_moves_queued", "gauge",
            "Accepted moves waiting for a free slot (max_concurrent_moves).");
    sb_printf(&b, "hostagent_moves_queued %u\n", m->moves_queued);
    sb_head(&b, "hostagent_reclaiming_bytes", "gauge",
            "Bytes of moved servers' old files still to be deleted after their answer "
            "(reclaim = deferred).");
    sb_printf(&b, "hostagent_reclaiming_bytes %llu\n", (unsigned long long)m->reclaiming_bytes);
    sb_head(&b, "hostagent_reclaiming_entries", "gauge",
            "Entries of moved servers' old files still to be deleted after their answer.");
    sb_printf(&b, "hostagent_reclaiming_entries %llu\n", (unsigned long long)m->reclaiming_entries);

    sb_head(&b, "hostagent_moves_ended_total", "counter",
            "Moves that ended, by code (none: complete).");
    sb_by_code(&b, "hostagent_moves_ended_total", m->moves_ended, true);
    sb_head(&b, "hostagent_requests_refused_total", "counter",
            "Requests answered with a failure before any move started, by code.");
    sb_by_code(&b, "hostagent_requests_refused_total", m->refused, false);

    sb_head(&b, "hostagent_copied_bytes_total", "counter",
            "bytesCopied of the moves that ended (failed ones too: the work was done).");
    sb_printf(&b, "hostagent_copied_bytes_total %" PRIu64 "\n", m->bytes_copied);
    sb_head(&b, "hostagent_copied_files_total", "counter",
            "filesCopied (entries) of the moves that ended (failed ones too).");
    sb_printf(&b, "hostagent_copied_files_total %" PRIu64 "\n", m->files_copied);

    sb_head(&b, "hostagent_move_duration_seconds", "histogram",
            "Duration of the moves that ended, from acceptance to the end.");
    for (size_t i = 0; i < METRICS_DURATION_BUCKETS; i++) {
        cum += m->duration_buckets[i];
        sb_printf(&b, "hostagent_move_duration_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
                  (double)metrics_duration_bounds_ms[i] / 1000.0, cum);
    }
    sb_printf(&b, "hostagent_move_duration_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n",
              m->duration_count);
    sb_printf(&b, "hostagent_move_duration_seconds_sum ");
    sb_seconds(&b, m->duration_sum_ms);
    sb_printf(&b, "\nhostagent_move_duration_seconds_count %" PRIu64 "\n", m->duration_count);

    *out = b.p;
    *len = b.len;
}

/* --- the file ------------------------------------------------------------------------ */

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* No fsync: readers only need the rename to be atomic, and after a crash the
 * agent writes the file anew as it starts; a flush to the disk every
 * heartbeat would only wear it. */
int metrics_write_file(const char *path, const char *buf, size_t len)
{
    char tmp[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int fd, rc;

    if (!slash || slash[1] == '\0')
        return -EINVAL;
    /* Hidden and with our pid: node_exporter reads only *.prom, and two
     * writers never share a temporary file. */
    if (snprintf(tmp, sizeof tmp, "%.*s/.%s.%ld.tmp", (int)(slash - path), path, slash + 1,
                 (long)getpid()) >= (int)sizeof tmp)
        return -ENAMETOOLONG;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0644);
    if (fd < 0)
        return -errno;
    /* Readable by the collector whatever our umask. */
    rc = fchmod(fd, 0644) != 0 ? -errno : 0;
    if (rc == 0)
        rc = write_all(fd, buf, len);
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc != 0)
        (void)unlink(tmp);
    return rc;
}

static void metrics_remove_old(struct metrics *m, const char *path)
{
    if (!m->written_path || (path && strcmp(path, m->written_path) == 0))
        return;
    if (unlink(m->written_path) != 0 && errno != ENOENT)
        LOG(LOG_WARN, "cannot remove the old metrics file", LF_S("file", m->written_path),
            LF_S("error", strerror(errno)));
    else
        LOG(LOG_INFO, "old metrics file removed", LF_S("file", m->written_path));
    free(m->written_path);
    m->written_path = NULL;
}

void metrics_update_file(struct metrics *m, const char *path)
{
    char *buf;
    size_t len;
    int rc;
    uint64_t now;

    metrics_remove_old(m, path);
    if (!path)
        return;
    metrics_render(m, &buf, &len);
    rc = metrics_write_file(path, buf, len);
    free(buf);
    now = util_mono_ms();
    if (rc == 0) {
        if (m->last_error)
            LOG(LOG_INFO, "metrics file written again", LF_S("file", path),
                LF_U("failures_since_last_log", m->fails_unlogged));
        m->last_error = 0;
        m->fails_unlogged = 0;
        m->last_log_ms = 0;
        if (!m->written_path)
            m->written_path = xstrdup(path);
        return;
    }
    /* Logged at once, again when the reason changes, else now and then. */
    if (-rc != m->last_error || m->last_log_ms == 0 ||
        now - m->last_log_ms >= METRICS_FAIL_LOG_GAP_MS) {
        LOG(LOG_WARN, "cannot write the metrics file; the agent goes on without it",
            LF_S("file", path), LF_S("error", strerror(-rc)),
            LF_U("failures_since_last_log", m->fails_unlogged));
        m->last_log_ms = now;
        m->fails_unlogged = 0;
    } else {
        m->fails_unlogged++;
    }
    m->last_error = -rc;
}
