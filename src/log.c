/* log.c: formats and writes log lines: text (key=value) or JSON, one write each. */
#include "log.h"
#include "util.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static atomic_int log_level_cur = LOG_INFO;
static atomic_int log_format_cur = LOG_FORMAT_TEXT;
static atomic_int log_journal = 0;

static const char *const level_names[] = {"error", "warn", "info", "debug"};
/* syslog priorities for the journal's <N> prefix: err, warning, info, debug. */
static const int level_prio[] = {3, 4, 6, 7};

static int log_stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2)
        return 0;
    if (fstat(2, &st) != 0)
        return 0;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_setup(enum log_level level, enum log_format format)
{
    atomic_store(&log_level_cur, (int)level);
    atomic_store(&log_format_cur, (int)format);
    atomic_store(&log_journal, log_stderr_is_journal());
}

enum log_level log_get_level(void)
{
    return (enum log_level)atomic_load(&log_level_cur);
}

int log_level_parse(const char *s, enum log_level *out)
{
    for (size_t i = 0; i < ARRAY_SIZE(level_names); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    if (strcmp(s, "warning") == 0) {
        *out = LOG_WARN;
        return 0;
    }
    return -1;
}

struct out {
    char *buf;
    size_t sz, len;
};

static void out_raw(struct out *o, const char *s, size_t n)
{
    /* Keep one byte for '\n' and one for NUL; silently truncate the rest. */
    if (o->len + 2 >= o->sz)
        return;
    if (n > o->sz - 2 - o->len)
        n = o->sz - 2 - o->len;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

static void out_str(struct out *o, const char *s)
{
    out_raw(o, s, strlen(s));
}

static int needs_quotes(const char *s)
{
    if (*s == '\0')
        return 1;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= ' ' || *p == '"' || *p == '\\' || *p == '=' || *p == 0x7f)
            return 1;
    return 0;
}

/* Escapes control characters, quotes and backslashes; json selects \u00XX
 * (JSON) over \xXX (C style). Bytes >= 0x80 pass through. */
static void out_escaped(struct out *o, const char *s, int json)
{
    char tmp[8];
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"':
            out_raw(o, "\\\"", 2);
            break;
        case '\\':
            out_raw(o, "\\\\", 2);
            break;
        case '\n':
            out_raw(o, "\\n", 2);
            break;
        case '\r':
            out_raw(o, "\\r", 2);
            break;
        case '\t':
            out_raw(o, "\\t", 2);
            break;
        default:
            if (*p < 0x20 || *p == 0x7f) {
                snprintf(tmp, sizeof tmp, json ? "\\u%04x" : "\\x%02x", *p);
                out_str(o, tmp);
            } else {
                out_raw(o, (const char *)p, 1);
            }
        }
    }
}

static void out_value_text(struct out *o, const struct log_field *f)
{
    char num[32];
    switch (f->type) {
    case LOG_F_STR: {
        const char *s = f->s ? f->s : "";
        if (needs_quotes(s)) {
            out_raw(o, "\"", 1);
            out_escaped(o, s, 0);
            out_raw(o, "\"", 1);
        } else {
            out_str(o, s);
        }
        break;
    }
    case LOG_F_INT:
        snprintf(num, sizeof num, "%lld", f->i);
        out_str(o, num);
        break;
    case LOG_F_UINT:
        snprintf(num, sizeof num, "%llu", f->u);
        out_str(o, num);
        break;
    case LOG_F_END:
        break;
    }
}

static void out_value_json(struct out *o, const struct log_field *f)
{
    if (f->type == LOG_F_STR) {
        char clean[1024];
        util_utf8_sanitize(clean, sizeof clean, f->s ? f->s : "");
        out_raw(o, "\"", 1);
        out_escaped(o, clean, 1);
        out_raw(o, "\"", 1);
    } else {
        out_value_text(o, f);
    }
}

size_t log_format_line(char *buf, size_t sz, enum log_level level, const char *msg,
                       const struct log_field *fields, uint64_t wall_ms, int journal,
                       enum log_format format)
{
    struct out o = {buf, sz, 0};
    char ts[UTIL_TIME_LEN];
    char tmp[16];
    util_rfc3339(wall_ms, ts);
    if (format == LOG_FORMAT_JSON) {
        out_str(&o, "{\"time\":\"");
        out_str(&o, ts);
        out_str(&o, "\",\"level\":\"");
        out_str(&o, level_names[level]);
        out_str(&o, "\",\"msg\":\"");
        out_escaped(&o, msg, 1);
        out_raw(&o, "\"", 1);
        for (const struct log_field *f = fields; f && f->key; f++) {
            out_str(&o, ",\"");
            out_escaped(&o, f->key, 1);
            out_str(&o, "\":");
            out_value_json(&o, f);
        }
        out_raw(&o, "}", 1);
    } else {
        if (journal) {
            snprintf(tmp, sizeof tmp, "<%d>", level_prio[level]);
            out_str(&o, tmp);
        } else {
            out_str(&o, ts);
            out_raw(&o, " ", 1);
        }
        out_str(&o, level_names[level]);
        out_raw(&o, " ", 1);
        out_escaped(&o, msg, 0);
        for (const struct log_field *f = fields; f && f->key; f++) {
            out_raw(&o, " ", 1);
            out_str(&o, f->key);
            out_raw(&o, "=", 1);
            out_value_text(&o, f);
        }
    }
    o.buf[o.len++] = '\n';
    o.buf[o.len] = '\0';
    return o.len;
}

void log_emit(enum log_level level, const char *msg, const struct log_field *fields)
{
    char line[4096];
    size_t n;
    if ((int)level > atomic_load(&log_level_cur))
        return;
    n = log_format_line(line, sizeof line, level, msg, fields, util_wall_ms(),
                        atomic_load(&log_journal), (enum log_format)atomic_load(&log_format_cur));
    /* One write per line keeps lines whole when the worker threads log too. */
    (void)!write(2, line, n);
}
