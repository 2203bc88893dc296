/* journal.c: the move journal in state_dir (see journal.h). */
#include "journal.h"
#include "log.h"
#include "state_file.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#define JOURNAL_VERSION 1
#define JOURNAL_MAX_BYTES (1u << 20)

int journal_open(struct journal *j, const char *state_dir, char *why, size_t whysz)
{
    char path[PATH_MAX], pid[32];
    int rc, n;
    memset(j, 0, sizeof *j);
    j->lock_fd = -1;
    if ((rc = util_mkdir_p(state_dir, 0700)) != 0) {
        util_fmt(why, whysz, "cannot create state_dir %s: %s", state_dir, strerror(-rc));
        return rc;
    }
    util_fmt(path, sizeof path, "%s/moves", state_dir);
    /* Durable before a record is renamed into it (docs/design.md, "Power cuts"). */
    if ((rc = util_mkdir_durable(path, 0700)) != 0) {
        util_fmt(why, whysz, "cannot create %s: %s", path, strerror(-rc));
        return rc;
    }
    j->dir = xstrdup(state_dir);
    j->moves = xstrdup(path);
    util_fmt(path, sizeof path, "%s/lock", state_dir);
    j->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (j->lock_fd < 0) {
        rc = -errno;
        util_fmt(why, whysz, "cannot open %s: %s", path, strerror(errno));
        goto fail;
    }
    if (flock(j->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        char other[32] = "";
        rc = -errno;
        n = (int)pread(j->lock_fd, other, sizeof other - 1, 0);
        other[n > 0 ? n : 0] = '\0';
        other[strcspn(other, "\n")] = '\0';
        if (other[0])
            util_fmt(why, whysz,
                     "another hostagent (pid %s) is running with state_dir %s (it holds %s)", other,
                     state_dir, path);
        else
            util_fmt(why, whysz, "another hostagent is running with state_dir %s (it holds %s)",
                     state_dir, path);
        goto fail;
    }
    n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    rc = ftruncate(j->lock_fd, 0) != 0 ? -errno : util_pwrite_all(j->lock_fd, pid, (size_t)n, 0);
    if (rc != 0) {
        util_fmt(why, whysz, "cannot write %s: %s", path, strerror(-rc));
        goto fail;
    }
    return 0;
fail:
    journal_close(j);
    return rc;
}

void journal_close(struct journal *j)
{
    if (j->lock_fd >= 0)
        close(j->lock_fd);
    j->lock_fd = -1;
    free(j->dir);
    free(j->moves);
    j->dir = j->moves = NULL;
}

/* --- writing ----------------------------------------------------------------------- */

static void add_time(cJSON *o, const char *key, const struct timespec *t)
{
    cJSON *a = cJSON_AddArrayToObject(o, key);
    cJSON_AddItemToArray(a, cJSON_CreateNumber((double)t->tv_sec));
    cJSON_AddItemToArray(a, cJSON_CreateNumber((double)t->tv_nsec));
}

/* "dev:ino" in decimal: exact for any 64-bit value (a JSON number is not). */
static void add_id(cJSON *o, const char *key, const struct journal_id *id)
{
    char buf[48];
    if (!id->known)
        return;
    util_fmt(buf, sizeof buf, "%llu:%llu", (unsigned long long)id->dev,
             (unsigned long long)id->ino);
    cJSON_AddStringToObject(o, key, buf);
}

static cJSON *rec_to_json(const struct journal_rec *r)
{
    cJSON *o = cJSON_CreateObject(), *a;
    cJSON_AddNumberToObject(o, "version", JOURNAL_VERSION);
    cJSON_AddStringToObject(o, "moveId", r->move_id);
    cJSON_AddStringToObject(o, "serverName", r->server_name);
    cJSON_AddStringToObject(o, "oldPath", r->old_path);
    cJSON_AddStringToObject(o, "newPath", r->new_path);
    cJSON_AddStringToObject(o, "src", r->src);
    cJSON_AddStringToObject(o, "dst", r->dst);
    if (r->reply)
        cJSON_AddStringToObject(o, "reply", r->reply);
    cJSON_AddStringToObject(o, "method", r->rename ? "rename" : "copy");
    cJSON_AddStringToObject(o, "verify", r->verify == VERIFY_CHECKSUM ? "checksum" : "metadata");
    add_id(o, "srcId", &r->src_id);
    add_id(o, "dstId", &r->dst_id);
    cJSON_AddBoolToObject(o, "dstPreexisted", r->dst_preexisted);
    if (r->dst_preexisted) {
        cJSON_AddNumberToObject(o, "dstMode", r->dst_orig.st_mode & 07777);
        cJSON_AddNumberToObject(o, "dstUid", r->dst_orig.st_uid);
        cJSON_AddNumberToObject(o, "dstGid", r->dst_orig.st_gid);
        add_time(o, "dstAtime", &r->dst_orig.st_atim);
        add_time(o, "dstMtime", &r->dst_orig.st_mtim);
    }
    a = cJSON_AddArrayToObject(o, "madeParents");
    for (size_t i = 0; i < r->n_made; i++)
        cJSON_AddItemToArray(a, cJSON_CreateString(r->made_parents[i]));
    json_add_u64(o, "startedAtMs", r->started_at_ms);
    json_add_u64(o, "seq", r->seq);
    cJSON_AddStringToObject(o, "phase", move_phase_name(r->phase));
    json_add_u64(o, "bytesTotal", r->count.bytes_total);
    json_add_u64(o, "bytesCopied", r->count.bytes_copied);
    json_add_u64(o, "filesTotal", r->count.files_total);
    json_add_u64(o, "filesCopied", r->count.files_copied);
    if (r->reclaim.dir) {
        cJSON *rc = cJSON_AddObjectToObject(o, "reclaim");
        cJSON_AddStringToObject(rc, "dir", r->reclaim.dir);
        add_id(rc, "id", &r->reclaim.id);
        cJSON_AddBoolToObject(rc, "inMount", r->reclaim.in_mount);
        json_add_u64(rc, "entries", r->reclaim.entries);
        json_add_u64(rc, "bytes", r->reclaim.bytes);
        cJSON_AddBoolToObject(rc, "undone", r->reclaim.undone);
    }
    if (move_phase_terminal(r->phase)) {
        json_add_u64(o, "endedAtMs", r->ended_at_ms);
        cJSON_AddStringToObject(o, "code", move_code_name(r->code));
        cJSON_AddStringToObject(o, "error", r->error);
        if (r->answer)
            cJSON_AddRawToObject(o, "answer", r->answer);
        cJSON_AddBoolToObject(o, "delivered", r->delivered);
        if (r->rollback_pending) /* the phase it was in: a rename settles differently */
            cJSON_AddStringToObject(o, "rollbackPending", move_phase_name(r->rollback_phase));
    }
    if (r->prepared) {
        cJSON_AddTrueToObject(o, "prepared");
        if (r->ready_answer) {
            json_add_u64(o, "readyAtMs", r->ready_at_ms);
            if (r->ready_reply)
                cJSON_AddStringToObject(o, "readyReply", r->ready_reply);
            cJSON_AddRawToObject(o, "readyAnswer", r->ready_answer);
            cJSON_AddBoolToObject(o, "readyDelivered", r->ready_delivered);
        }
    }
    return o;
}

/* The room a slot gets: the record as it is, twice over (the answer repeats
 * the paths), plus the error text twice (in the record and in the answer),
 * each escaped at worst six bytes per byte, and the other outcome fields. */
static size_t slot_size(size_t len)
{
    size_t n = 2 * len + (size_t)2 * 6 * MOVE_ERROR_MAX + 1024;
    return (n + 4095) / 4096 * 4096;
}

char *journal_format(const struct journal_rec *rec)
{
    cJSON *o = rec_to_json(rec);
    char *printed = cJSON_PrintUnformatted(o), *text;
    cJSON_Delete(o);
    if (!printed)
        util_oom(0);
    text = xstrdup(printed);
    cJSON_free(printed);
    return text;
}

int journal_write(const struct journal *j, const struct journal_rec *rec)
{
    char *text = journal_format(rec);
    int rc = journal_write_text(j->moves, rec->move_id, text);
    free(text);
    return rc;
}

int journal_write_text(const char *moves, const char *move_id, const char *text)
{
    int rc = state_file_write(moves, move_id, text, slot_size(strlen(text)));
    char path[PATH_MAX];
    if (rc != 0) {
        util_fmt(path, sizeof path, "%s/%s.json", moves, move_id);
        LOG(LOG_ERROR, "cannot write the journal", LF_S("move", move_id), LF_S("path", path),
            LF_S("reason", strerror(-rc)));
    }
    return rc;
}

/* The slot for a record of this text and its outcome. */
static int reserve_text(const char *moves, const char *move_id, const char *text)
{
    int rc = state_file_reserve(moves, move_id, slot_size(strlen(text)));
    char path[PATH_MAX];
    if (rc != 0) {
        util_fmt(path, sizeof path, "%s/.%s.tmp", moves, move_id);
        LOG(LOG_ERROR, "cannot reserve room for the move's outcome in the journal",
            LF_S("move", move_id), LF_S("path", path), LF_S("reason", strerror(-rc)));
    }
    return rc;
}

int journal_reserve(const struct journal *j, const struct journal_rec *rec)
{
    char *text = journal_format(rec);
    int rc = reserve_text(j->moves, rec->move_id, text);
    free(text);
    return rc;
}

/* --- writing on the writer thread ----------------------------------------------- */

/* A record's write as a job of the journal writer: copies only. */
struct journal_job {
    char *moves, *move_id, *text; /* text NULL: a removal */
    bool reserve;
};

static struct journal_job *job_new(const char *moves, const char *move_id, char *text)
{
    struct journal_job *d = xcalloc(1, sizeof *d);
    d->moves = xstrdup(moves);
    d->move_id = xstrdup(move_id);
    d->text = text;
    return d;
}

static void job_free(void *data)
{
    struct journal_job *d = data;
    free(d->moves);
    free(d->move_id);
    free(d->text);
    free(d);
}

/* The record (and at acceptance its slot: on a failure both go, so that
 * nothing of a refused move stays). */
static int job_write(void *data)
{
    struct journal_job *d = data;
    int rc = journal_write_text(d->moves, d->move_id, d->text);
    if (rc == 0 && d->reserve)
        rc = reserve_text(d->moves, d->move_id, d->text);
    if (rc != 0 && d->reserve)
        state_file_remove(d->moves, d->move_id, true);
    return rc;
}

static int job_remove(void *data)
{
    struct journal_job *d = data;
    state_file_remove(d->moves, d->move_id, true);
    return 0;
}

/* A prepared move's identity record: d->moves holds state_dir here. */
static int job_ident_remove(void *data)
{
    struct journal_job *d = data;
    char path[PATH_MAX];
    util_fmt(path, sizeof path, "%s/%s.ident", d->moves, d->move_id);
    if (unlink(path) == 0)
        (void)util_fsync_dir(d->moves);
    return 0;
}

static void no_done(void *arg, int rc)
{
    (void)arg;
    (void)rc;
}

void journal_write_queued(struct journal_writer *w, const struct journal *j,
                          const struct journal_rec *rec, bool reserve, jw_done_fn done, void *arg)
{
    struct journal_job *d = job_new(j->moves, rec->move_id, journal_format(rec));
    d->reserve = reserve;
    (void)journal_writer_submit(w, job_write, job_free, d, done ? done : no_done, arg);
}

void journal_remove_queued(struct journal_writer *w, const struct journal *j, const char *move_id)
{
    (void)journal_writer_submit(w, job_remove, job_free, job_new(j->moves, move_id, NULL), no_done,
                                NULL);
}

void journal_ident_remove_queued(struct journal_writer *w, const struct journal *j,
                                 const char *move_id)
{
    (void)journal_writer_submit(w, job_ident_remove, job_free, job_new(j->dir, move_id, NULL),
                                no_done, NULL);
}

struct jw_job *journal_post_text(struct jw_shared *s, const char *moves, const char *move_id,
                                 char *text)
{
    return journal_writer_post(s, job_write, job_free, job_new(moves, move_id, text));
}

void journal_id_of(struct journal_id *id, const char *path)
{
    struct stat st;
    memset(id, 0, sizeof *id);
    if (lstat(path, &st) != 0)
        return;
    id->known = true;
    id->dev = (uint64_t)st.st_dev;
    id->ino = (uint64_t)st.st_ino;
}

void journal_ident_path(const struct journal *j, const char *move_id, char *buf, size_t size)
{
    util_fmt(buf, size, "%s/%s.ident", j->dir, move_id);
}

void journal_ident_remove(const struct journal *j, const char *move_id)
{
    char path[PATH_MAX];
    journal_ident_path(j, move_id, path, sizeof path);
    if (unlink(path) == 0)
        (void)util_fsync_dir(j->dir);
}

void journal_sweep_idents(const struct journal *j, bool (*keep)(void *arg, const char *move_id),
                          void *arg)
{
    DIR *d = opendir(j->dir);
    struct dirent *de;
    if (!d)
        return;
    while ((de = readdir(d)) != NULL) {
        size_t nl = strlen(de->d_name);
        char id[MOVE_ID_MAX + 1];
        if (nl <= 6 || nl - 6 > MOVE_ID_MAX || strcmp(de->d_name + nl - 6, ".ident") != 0)
            continue;
        memcpy(id, de->d_name, nl - 6);
        id[nl - 6] = '\0';
        if (keep(arg, id))
            continue;
        LOG(LOG_INFO, "removed the identity record of a prepared move that has ended",
            LF_S("move", id));
        (void)unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
}

void journal_remove(const struct journal *j, const char *move_id)
{
    state_file_remove(j->moves, move_id, true);
}

/* --- reading ------------------------------------------------------------------------ */

static const char *get_str(const cJSON *o, const char *key, bool required, bool *bad)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsString(v))
        return v->valuestring;
    if (v || required)
        *bad = true;
    return NULL;
}

static uint64_t get_u64(const cJSON *o, const char *key, bool *bad)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 9007199254740992.0 ||
        v->valuedouble != (double)(uint64_t)v->valuedouble) {
        *bad = true;
        return 0;
    }
    return (uint64_t)v->valuedouble;
}

static void get_time(const cJSON *o, const char *key, struct timespec *t, bool *bad)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
    const cJSON *s = cJSON_GetArrayItem(a, 0), *n = cJSON_GetArrayItem(a, 1);
    if (!cJSON_IsArray(a) || !cJSON_IsNumber(s) || !cJSON_IsNumber(n)) {
        *bad = true;
        return;
    }
    t->tv_sec = (time_t)s->valuedouble;
    t->tv_nsec = (long)n->valuedouble;
}

/* An optional "dev:ino" member (absent in records of older agents). */
static void get_id(const cJSON *o, const char *key, struct journal_id *id, bool *bad)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    unsigned long long dev, ino;
    char tail;
    memset(id, 0, sizeof *id);
    if (!v)
        return;
    if (!cJSON_IsString(v) || sscanf(v->valuestring, "%llu:%llu%c", &dev, &ino, &tail) != 2) {
        *bad = true;
        return;
    }
    id->known = true;
    id->dev = dev;
    id->ino = ino;
}

static bool phase_from(const char *s, enum move_phase *p)
{
    for (int i = PHASE_QUEUED; i <= PHASE_CANCELLED; i++) {
        if (strcmp(move_phase_name((enum move_phase)i), s) == 0) {
            *p = (enum move_phase)i;
            return true;
        }
    }
    return false;
}

static bool code_from(const char *s, enum move_code *c)
{
    for (int i = CODE_NONE; i <= CODE_LAST; i++) {
        if (strcmp(move_code_name((enum move_code)i), s) == 0) {
            *c = (enum move_code)i;
            return true;
        }
    }
    return false;
}

/* Parses one record strictly; NULL when anything is missing or odd. */
static struct journal_rec *rec_from_json(const cJSON *o, const char *file_id)
{
    struct journal_rec *r = xcalloc(1, sizeof *r);
    const cJSON *mp, *ans, *dl, *rc;
    const char *s;
    bool bad = false;

    if (!cJSON_IsObject(o) || get_u64(o, "version", &bad) != JOURNAL_VERSION || bad)
        goto fail;
    s = get_str(o, "moveId", true, &bad);
    if (!s || strlen(s) > MOVE_ID_MAX || strcmp(s, file_id) != 0)
        goto fail;
    util_fmt(r->move_id, sizeof r->move_id, "%s", s);
    s = get_str(o, "serverName", true, &bad);
    if (!s || strlen(s) > SERVER_NAME_MAX)
        goto fail;
    util_fmt(r->server_name, sizeof r->server_name, "%s", s);
#define DUP_STR(field, key, req)                                                                   \
    do {                                                                                           \
        const char *v_ = get_str(o, key, req, &bad);                                               \
        r->field = v_ ? xstrdup(v_) : NULL;                                                        \
    } while (0)
    DUP_STR(old_path, "oldPath", true);
    DUP_STR(new_path, "newPath", true);
    DUP_STR(src, "src", true);
    DUP_STR(dst, "dst", true);
    DUP_STR(reply, "reply", false);
#undef DUP_STR
    s = get_str(o, "method", true, &bad);
    if (bad || (strcmp(s, "rename") != 0 && strcmp(s, "copy") != 0))
        goto fail;
    r->rename = strcmp(s, "rename") == 0;
    s = get_str(o, "verify", true, &bad);
    if (bad)
        goto fail;
    r->verify = strcmp(s, "checksum") == 0 ? VERIFY_CHECKSUM : VERIFY_METADATA;
    get_id(o, "srcId", &r->src_id, &bad);
    get_id(o, "dstId", &r->dst_id, &bad);
    r->dst_preexisted = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "dstPreexisted"));
    if (r->dst_preexisted) {
        r->dst_orig.st_mode = (mode_t)get_u64(o, "dstMode", &bad);
        r->dst_orig.st_uid = (uid_t)get_u64(o, "dstUid", &bad);
        r->dst_orig.st_gid = (gid_t)get_u64(o, "dstGid", &bad);
        get_time(o, "dstAtime", &r->dst_orig.st_atim, &bad);
        get_time(o, "dstMtime", &r->dst_orig.st_mtim, &bad);
    }
    mp = cJSON_GetObjectItemCaseSensitive(o, "madeParents");
    if (!cJSON_IsArray(mp))
        goto fail;
    r->made_parents = xcalloc((size_t)cJSON_GetArraySize(mp) + 1, sizeof(char *));
    for (const cJSON *it = mp->child; it; it = it->next) {
        if (!cJSON_IsString(it))
            goto fail;
        r->made_parents[r->n_made++] = xstrdup(it->valuestring);
    }
    r->started_at_ms = get_u64(o, "startedAtMs", &bad);
    r->seq = get_u64(o, "seq", &bad);
    r->count.bytes_total = get_u64(o, "bytesTotal", &bad);
    r->count.bytes_copied = get_u64(o, "bytesCopied", &bad);
    r->count.files_total = get_u64(o, "filesTotal", &bad);
    r->count.files_copied = get_u64(o, "filesCopied", &bad);
    s = get_str(o, "phase", true, &bad);
    if (bad || !phase_from(s, &r->phase))
        goto fail;
    rc = cJSON_GetObjectItemCaseSensitive(o, "reclaim");
    if (rc) {
        s = cJSON_IsObject(rc) ? get_str(rc, "dir", true, &bad) : NULL;
        if (!s || s[0] != '/')
            goto fail;
        r->reclaim.dir = xstrdup(s);
        get_id(rc, "id", &r->reclaim.id, &bad);
        r->reclaim.in_mount = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rc, "inMount"));
        r->reclaim.undone = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rc, "undone"));
        r->reclaim.entries = get_u64(rc, "entries", &bad);
        r->reclaim.bytes = get_u64(rc, "bytes", &bad);
        if (!r->reclaim.id.known)
            goto fail;
    }
    if (move_phase_terminal(r->phase)) {
        r->ended_at_ms = get_u64(o, "endedAtMs", &bad);
        s = get_str(o, "code", true, &bad);
        if (bad || !code_from(s, &r->code))
            goto fail;
        s = get_str(o, "error", true, &bad);
        if (bad)
            goto fail;
        util_fmt(r->error, sizeof r->error, "%s", s);
        ans = cJSON_GetObjectItemCaseSensitive(o, "answer");
        if (!cJSON_IsObject(ans))
            goto fail;
        {
            char *printed = cJSON_PrintUnformatted(ans);
            if (!printed)
                util_oom(0);
            r->answer = xstrdup(printed);
            cJSON_free(printed);
        }
        dl = cJSON_GetObjectItemCaseSensitive(o, "delivered");
        if (!cJSON_IsBool(dl))
            goto fail;
        r->delivered = cJSON_IsTrue(dl);
        s = get_str(o, "rollbackPending", false, &bad);
        if (s) {
            r->rollback_pending = true;
            if (!phase_from(s, &r->rollback_phase) || move_phase_terminal(r->rollback_phase))
                goto fail;
        }
    }
    r->prepared = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "prepared"));
    ans = cJSON_GetObjectItemCaseSensitive(o, "readyAnswer");
    if (ans) {
        char *printed;
        if (!r->prepared || !cJSON_IsObject(ans))
            goto fail;
        printed = cJSON_PrintUnformatted(ans);
        if (!printed)
            util_oom(0);
        r->ready_answer = xstrdup(printed);
        cJSON_free(printed);
        r->ready_at_ms = get_u64(o, "readyAtMs", &bad);
        s = get_str(o, "readyReply", false, &bad);
        r->ready_reply = s ? xstrdup(s) : NULL;
        dl = cJSON_GetObjectItemCaseSensitive(o, "readyDelivered");
        if (!cJSON_IsBool(dl))
            goto fail;
        r->ready_delivered = cJSON_IsTrue(dl);
    } else if (r->phase == PHASE_READY) {
        goto fail; /* a move in ready has its answer recorded */
    }
    if (bad)
        goto fail;
    return r;
fail:
    journal_rec_free(r);
    return NULL;
}

struct scan_ctx {
    void (*fn)(void *arg, struct journal_rec *rec);
    void *arg;
};

static bool scan_take(void *arg, const char *key, const char *text)
{
    struct scan_ctx *c = arg;
    /* A record written into a slot is followed by zeros: text ends there. */
    cJSON *o = cJSON_ParseWithLength(text, strlen(text));
    struct journal_rec *rec = o ? rec_from_json(o, key) : NULL;
    cJSON_Delete(o);
    if (!rec)
        return false;
    c->fn(c->arg, rec);
    return true;
}

/* Reads every record of the moves directory and hands the readable ones to
 * fn; with repair (the daemon holding the lock), a temp cut short is
 * removed and an unreadable record renamed "*.corrupt". */
static int journal_scan(const char *moves, bool repair,
                        void (*fn)(void *arg, struct journal_rec *rec), void *arg,
                        unsigned *unreadable)
{
    struct scan_ctx c = {fn, arg};
    struct state_scan how = {
        .key_max = MOVE_ID_MAX,
        .max_bytes = JOURNAL_MAX_BYTES,
        .repair = repair,
        .keep_slots = true,
        .unreadable = "journal file is unreadable; set aside, nothing touched: check this "
                      "move's paths by hand",
        .take = scan_take,
        .arg = &c,
    };
    return state_file_scan(moves, &how, unreadable);
}

unsigned journal_load(const struct journal *j, void (*fn)(void *arg, struct journal_rec *rec),
                      void *arg)
{
    unsigned set_aside = 0;
    int rc = journal_scan(j->moves, true, fn, arg, &set_aside);
    if (rc != 0)
        LOG(LOG_ERROR, "cannot read the journal", LF_S("path", j->moves),
            LF_S("reason", strerror(-rc)));
    return set_aside;
}

int journal_read(const char *state_dir, void (*fn)(void *arg, struct journal_rec *rec), void *arg,
                 unsigned *unreadable)
{
    char moves[PATH_MAX];
    util_fmt(moves, sizeof moves, "%s/moves", state_dir);
    return journal_scan(moves, false, fn, arg, unreadable);
}

void journal_rec_state(const struct journal_rec *r, struct move_state *st)
{
    memset(st, 0, sizeof *st);
    util_fmt(st->move_id, sizeof st->move_id, "%s", r->move_id);
    util_fmt(st->server_name, sizeof st->server_name, "%s", r->server_name);
    st->old_path = xstrdup(r->old_path);
    st->new_path = xstrdup(r->new_path);
    st->rename = r->rename;
    st->phase = r->phase;
    st->count = r->count;
    st->percent = r->phase == PHASE_COMPLETE || r->phase == PHASE_READY ? 100
                  : r->count.bytes_total
                      ? 100.0 * (double)r->count.bytes_copied / (double)r->count.bytes_total
                      : 0;
    st->phase_percent = r->phase == PHASE_COMPLETE || r->phase == PHASE_READY ? 100 : 0;
    st->eta_seconds = r->phase == PHASE_COMPLETE ? 0 : -1;
    st->seq = r->seq;
    st->started_at_ms = r->started_at_ms;
    st->ended_at_ms = r->ended_at_ms;
    st->elapsed_ms = r->ended_at_ms > r->started_at_ms ? r->ended_at_ms - r->started_at_ms : 0;
    st->code = r->code;
    util_fmt(st->error, sizeof st->error, "%s", r->error);
    /* A success's warning lives in its recorded answer (the record's own
     * fields are those of every move). */
    if (r->phase == PHASE_COMPLETE && r->answer) {
        cJSON *ans = cJSON_Parse(r->answer);
        const cJSON *wc = cJSON_GetObjectItemCaseSensitive(ans, "warningCode");
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(ans, "warning");
        if (cJSON_IsString(wc) && cJSON_IsString(w) &&
            move_code_from(wc->valuestring, &st->warning_code))
            util_fmt(st->warning, sizeof st->warning, "%s", w->valuestring);
        cJSON_Delete(ans);
    }
}

void journal_rec_free(struct journal_rec *rec)
{
    if (!rec)
        return;
    free(rec->old_path);
    free(rec->new_path);
    free(rec->src);
    free(rec->dst);
    free(rec->reply);
    for (size_t i = 0; i < rec->n_made; i++)
        free(rec->made_parents[i]);
    free(rec->made_parents);
    free(rec->answer);
    free(rec->ready_reply);
    free(rec->ready_answer);
    free(rec->reclaim.dir);
    free(rec);
}
