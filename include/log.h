/* log.h: the agent's one logger: text or JSON lines on stderr, journald-aware. */
#ifndef HOSTAGENT_LOG_H
#define HOSTAGENT_LOG_H

#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };
enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON = 1 };

enum log_field_type { LOG_F_END = 0, LOG_F_STR, LOG_F_INT, LOG_F_UINT };

struct log_field {
    const char *key;
    enum log_field_type type;
    const char *s;
    long long i;
    unsigned long long u;
};

#define LF_S(k, v) ((struct log_field){.key = (k), .type = LOG_F_STR, .s = (v)})
#define LF_I(k, v) ((struct log_field){.key = (k), .type = LOG_F_INT, .i = (long long)(v)})
#define LF_U(k, v)                                                                                 \
    ((struct log_field){.key = (k), .type = LOG_F_UINT, .u = (unsigned long long)(v)})

/* LOG(level, "message", LF_S("move", id), LF_U("bytes", n)); LOG0 without fields. */
#define LOG(level, msg, ...) log_emit((level), (msg), (const struct log_field[]){__VA_ARGS__, {0}})
#define LOG0(level, msg) log_emit((level), (msg), NULL)

/* Sets level and format; safe to call at any time from the loop thread
 * (the workers only read them). Detects the journal from JOURNAL_STREAM. */
void log_setup(enum log_level level, enum log_format format);
enum log_level log_get_level(void);
int log_level_parse(const char *s, enum log_level *out);

/* Emits one line (a single write(2)); thread-safe. fields ends with {0}. */
void log_emit(enum log_level level, const char *msg, const struct log_field *fields);

/* Formats one line into buf without writing it (for tests); returns length. */
size_t log_format_line(char *buf, size_t sz, enum log_level level, const char *msg,
                       const struct log_field *fields, uint64_t wall_ms, int journal,
                       enum log_format format);

#endif
