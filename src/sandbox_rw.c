/* sandbox_rw.c: a path read-only in the service's sandbox, not on the host
 * (see sandbox_rw.h). */
#include "sandbox_rw.h"
#include "util.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

/* A mountinfo field up to the next space, with its octal escapes (\040 for
 * a space) decoded into out (out_sz bytes). Returns the rest after it. */
static const char *field(const char *p, char *out, size_t out_sz)
{
    size_t n = 0;
    while (*p == ' ')
        p++;
    while (*p && *p != ' ' && *p != '\n') {
        char c = *p++;
        if (c == '\\' && p[0] >= '0' && p[0] <= '3' && p[1] >= '0' && p[1] <= '7' && p[2] >= '0' &&
            p[2] <= '7') {
            c = (char)((p[0] - '0') * 64 + (p[1] - '0') * 8 + (p[2] - '0'));
            p += 3;
        }
        if (n + 1 < out_sz)
            out[n++] = c;
    }
    out[n] = '\0';
    return p;
}

/* `dir` is `path` or one of its ancestors ("/" holds everything). */
static bool holds(const char *dir, const char *path)
{
    size_t n = strlen(dir);
    if (strcmp(dir, "/") == 0)
        return true;
    return strncmp(dir, path, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* name is one of the comma-separated options. */
static bool has_option(const char *opts, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = opts;; p++) {
        if (strncmp(p, name, n) == 0 && (p[n] == ',' || p[n] == '\0'))
            return true;
        if ((p = strchr(p, ',')) == NULL)
            return false;
    }
}

/* /proc/self/mountinfo whole (NUL-terminated, to free), or NULL. */
static char *read_mountinfo(void)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char *text = NULL, buf[8192];
    size_t len = 0, n;
    if (!f)
        return NULL;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        text = xrealloc(text, len + n + 1);
        memcpy(text + len, buf, n);
        len += n;
        text[len] = '\0';
    }
    fclose(f);
    return text;
}

int sandbox_rw_super_ro(const char *mountinfo, const char *path)
{
    size_t best = 0;
    int ro = -1;
    for (const char *line = mountinfo; line && *line;) {
        const char *end = strchr(line, '\n'), *p = line, *dash;
        char point[4096], skip[4096], super[1024];
        /* id parent major:minor root mountpoint options [optional...] - type source superoptions */
        for (int i = 0; i < 4; i++)
            p = field(p, skip, sizeof skip);
        p = field(p, point, sizeof point);
        dash = strstr(p, " - ");
        if (dash && (!end || dash < end) && holds(point, path) && strlen(point) >= best) {
            p = field(dash + 3, skip, sizeof skip); /* type */
            p = field(p, skip, sizeof skip);        /* source */
            (void)field(p, super, sizeof super);
            best = strlen(point);
            ro = has_option(super, "rw") ? 0 : 1;
        }
        line = end ? end + 1 : NULL;
    }
    return ro;
}

bool sandbox_rw_denied(const char *path, const char *what, char *why, size_t whysz)
{
    struct statvfs vfs;
    char *text;
    int super_ro;

    /* systemd gives every service an INVOCATION_ID; only there can a sandbox
     * be the cause, and anywhere else nothing is looked at. */
    if (!getenv("INVOCATION_ID") || statvfs(path, &vfs) != 0 || !(vfs.f_flag & ST_RDONLY))
        return false;
    /* The whole text: later lines (later mounts) shadow earlier ones. */
    text = read_mountinfo();
    super_ro = text ? sandbox_rw_super_ro(text, path) : -1;
    free(text);
    if (super_ro != 0)
        return false;
    util_fmt(why, whysz,
             "%s %s is read-only in this service's sandbox (its filesystem is mounted read-write): "
             "add it to ReadWritePaths= (systemctl edit hostagent), then restart the service",
             what, path);
    return true;
}
