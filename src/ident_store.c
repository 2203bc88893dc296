/* ident_store.c: the preparing copy's identity record (issue 12): records
 * of source entries, their compact file (written streaming or from a set),
 * the in-memory set with its path index. The format is described in
 * include/ident_store.h; the block hashes a record keeps are ident_blocks.c's. */
#include "ident_store.h"

#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define IDENT_VERSION 2u /* 2: IDENT_DST and the copy's identity */
#define IDENT_HEADER_BYTES 8u
#define IDENT_TRAILER_BYTES 16u
/* The smallest record: eleven one-byte varints and an empty suffix's length. */
#define IDENT_REC_MIN_BYTES 12u
#define IDENT_WBUF (64u << 10)

static const unsigned char ident_magic[4] = {'H', 'A', 'I', 'D'};

/* --- little helpers ------------------------------------------------------ */

static void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_le32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t zigzag(uint64_t delta)
{
    /* delta is a two's complement difference; (delta >> 63) is its sign. */
    return delta << 1 ^ (0 - (delta >> 63));
}

static uint64_t unzigzag(uint64_t z)
{
    return z >> 1 ^ (0 - (z & 1));
}

static size_t varint_encode(unsigned char *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (unsigned char)v;
    return n;
}

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static bool rel_valid(const char *rel)
{
    return rel && rel[0] != '\0' && rel[0] != '/';
}

static int fsync_dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? xstrndup(path, slash == path ? 1 : (size_t)(slash - path)) : xstrdup(".");
    int rc = util_fsync_dir(dir);
    free(dir);
    return rc;
}

void ident_rec_from_stat(struct ident_rec *r, const struct stat *st)
{
    memset(r, 0, sizeof *r);
    r->mode = (uint32_t)st->st_mode;
    r->uid = (uint32_t)st->st_uid;
    r->gid = (uint32_t)st->st_gid;
    r->nlink = (uint32_t)st->st_nlink;
    r->dev = (uint64_t)st->st_dev;
    r->ino = (uint64_t)st->st_ino;
    r->size = (uint64_t)st->st_size;
    r->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    r->ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
}

void ident_rec_set_dst(struct ident_rec *r, const struct stat *d)
{
    r->flags |= IDENT_DST;
    r->dst_ino = (uint64_t)d->st_ino;
    r->dst_ctime_ns = (int64_t)d->st_ctim.tv_sec * 1000000000 + d->st_ctim.tv_nsec;
}

bool ident_rec_dst_same(const struct ident_rec *r, const struct stat *d)
{
    return (r->flags & IDENT_DST) && r->dst_ino == (uint64_t)d->st_ino &&
           r->dst_ctime_ns == (int64_t)d->st_ctim.tv_sec * 1000000000 + d->st_ctim.tv_nsec;
}

/* --- the streaming writer ------------------------------------------------- */

struct ident_writer {
    int fd;
    int err; /* sticky */
    char *path, *tmp;
    XXH3_state_t *hash; /* of every byte written */
    unsigned char *buf;
    size_t used;
    char *prev; /* the previous record's path, for the shared prefix */
    size_t prev_len, prev_cap;
    struct ident_rec last; /* the previous record's fields, for the deltas */
    uint64_t last_dst_ino; /* of the last record with IDENT_DST */
    int64_t last_dst_ctime_ns;
    uint64_t count;
};

/* Writes out the buffer, hashed first unless it is the hash itself. */
static int writer_flush(struct ident_writer *w, bool hash)
{
    size_t off = 0;
    if (hash)
        XXH3_64bits_update(w->hash, w->buf, w->used);
    while (off < w->used) {
        ssize_t k = write(w->fd, w->buf + off, w->used - off);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        off += (size_t)k;
    }
    w->used = 0;
    return 0;
}

static int writer_put(struct ident_writer *w, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len > 0) {
        size_t k = IDENT_WBUF - w->used < len ? IDENT_WBUF - w->used : len;
        memcpy(w->buf + w->used, p, k);
        w->used += k;
        p += k;
        len -= k;
        if (w->used == IDENT_WBUF) {
            int rc = writer_flush(w, true);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

int ident_writer_open(struct ident_writer **out, const char *path)
{
    struct ident_writer *w = xcalloc(1, sizeof *w);
    size_t len = strlen(path);
    unsigned char head[IDENT_HEADER_BYTES];
    w->path = xstrdup(path);
    w->tmp = xmalloc(len + 5);
    memcpy(w->tmp, path, len);
    memcpy(w->tmp + len, ".tmp", 5);
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (w->fd < 0) {
        int rc = -errno;
        free(w->tmp);
        free(w->path);
        free(w);
        return rc;
    }
    w->hash = XXH3_createState();
    if (!w->hash)
        util_oom(1);
    XXH3_64bits_reset(w->hash);
    w->buf = xmalloc(IDENT_WBUF);
    memcpy(head, ident_magic, sizeof ident_magic);
    put_le32(head + 4, IDENT_VERSION);
    w->err = writer_put(w, head, sizeof head);
    *out = w;
    return 0;
}

static int writer_varint(struct ident_writer *w, uint64_t v)
{
    unsigned char b[10];
    return writer_put(w, b, varint_encode(b, v));
}

/* The record's fields after its path: head, the deltas, target, blocks. */
static int writer_fields(struct ident_writer *w, const struct ident_rec *r)
{
    const struct ident_rec *p = &w->last;
    bool has_target = r->target != NULL, has_blocks = r->n_blocks > 0;
    unsigned char b[10 * 10];
    size_t n = 0;
    int rc;
    /* The two times: either mtime from the previous record's and ctime from
     * this mtime (a file written in place: ctime == mtime), or ctime from the
     * previous record's and mtime from this ctime (a tree copied or restored
     * earlier: ctimes close in walk order, mtimes scattered), whichever is
     * shorter. */
    uint64_t m_prev = zigzag((uint64_t)r->mtime_ns - (uint64_t)p->mtime_ns);
    uint64_t c_own = zigzag((uint64_t)r->ctime_ns - (uint64_t)r->mtime_ns);
    uint64_t c_prev = zigzag((uint64_t)r->ctime_ns - (uint64_t)p->ctime_ns);
    uint64_t m_own = zigzag((uint64_t)r->mtime_ns - (uint64_t)r->ctime_ns);
    bool ctime_first =
        varint_len(c_prev) + varint_len(m_own) < varint_len(m_prev) + varint_len(c_own);
    n += varint_encode(b + n, (uint64_t)r->flags << 3 | (uint64_t)ctime_first << 2 |
                                  (uint64_t)has_target << 1 | has_blocks);
    n += varint_encode(b + n, zigzag((uint64_t)r->mode - p->mode));
    n += varint_encode(b + n, zigzag(r->dev - p->dev));
    n += varint_encode(b + n, zigzag(r->ino - p->ino));
    n += varint_encode(b + n, r->size);
    n += varint_encode(b + n, zigzag((uint64_t)r->uid - p->uid));
    n += varint_encode(b + n, zigzag((uint64_t)r->gid - p->gid));
    n += varint_encode(b + n, r->nlink);
    n += varint_encode(b + n, ctime_first ? c_prev : m_prev);
    n += varint_encode(b + n, ctime_first ? m_own : c_own);
    if (r->flags & IDENT_DST) {
        n += varint_encode(b + n, zigzag(r->dst_ino - w->last_dst_ino));
        n += varint_encode(b + n,
                           zigzag((uint64_t)r->dst_ctime_ns - (uint64_t)w->last_dst_ctime_ns));
        w->last_dst_ino = r->dst_ino;
        w->last_dst_ctime_ns = r->dst_ctime_ns;
    }
    if ((rc = writer_put(w, b, n)) < 0)
        return rc;
    if (has_target) {
        size_t tl = strlen(r->target);
        if ((rc = writer_varint(w, tl)) < 0 || (rc = writer_put(w, r->target, tl)) < 0)
            return rc;
    }
    if (has_blocks) {
        if ((rc = writer_varint(w, r->n_blocks)) < 0)
            return rc;
        for (uint32_t i = 0; i < r->n_blocks; i++) {
            unsigned char h[8];
            put_le64(h, r->blocks[i]);
            if ((rc = writer_put(w, h, sizeof h)) < 0)
                return rc;
        }
    }
    return 0;
}

int ident_writer_add(struct ident_writer *w, const char *rel, const struct ident_rec *r)
{
    size_t len, shared = 0;
    int rc;
    if (!rel_valid(rel) || (r->flags & ~(uint32_t)IDENT_FLAGS_KNOWN))
        return -EINVAL;
    if (w->err)
        return w->err;
    len = strlen(rel);
    while (shared < len && shared < w->prev_len && rel[shared] == w->prev[shared])
        shared++;
    if ((rc = writer_varint(w, shared)) < 0 || (rc = writer_varint(w, len - shared)) < 0 ||
        (rc = writer_put(w, rel + shared, len - shared)) < 0 || (rc = writer_fields(w, r)) < 0) {
        w->err = rc;
        return rc;
    }
    if (len > w->prev_cap) {
        w->prev_cap = len * 2;
        w->prev = xrealloc(w->prev, w->prev_cap);
    }
    memcpy(w->prev + shared, rel + shared, len - shared);
    w->prev_len = len;
    w->last = *r;
    w->count++;
    return 0;
}

static void writer_free(struct ident_writer *w)
{
    XXH3_freeState(w->hash);
    free(w->buf);
    free(w->prev);
    free(w->tmp);
    free(w->path);
    free(w);
}

int ident_writer_finish(struct ident_writer *w)
{
    unsigned char tail[8];
    int rc = w->err;
    put_le64(tail, w->count);
    if (rc == 0)
        rc = writer_put(w, tail, sizeof tail);
    if (rc == 0)
        rc = writer_flush(w, true); /* the hash now covers the count too */
    if (rc == 0) {
        put_le64(tail, XXH3_64bits_digest(w->hash));
        rc = writer_put(w, tail, sizeof tail);
    }
    if (rc == 0)
        rc = writer_flush(w, false);
    if (rc == 0 && fsync(w->fd) != 0)
        rc = -errno;
    if (close(w->fd) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(w->tmp, w->path) != 0)
        rc = -errno;
    if (rc == 0)
        rc = fsync_dir_of(w->path);
    else
        (void)unlink(w->tmp);
    writer_free(w);
    return rc;
}

void ident_writer_abort(struct ident_writer *w)
{
    close(w->fd);
    (void)unlink(w->tmp);
    writer_free(w);
}

/* --- the set --------------------------------------------------------------- */

/* Paths, targets and block hashes live in chunks that never move, so the
 * records' pointers stay valid for the set's life. */
struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    _Alignas(8) unsigned char data[];
};
#define ARENA_CHUNK (1u << 20)

struct ident_entry {
    struct ident_rec rec;
    const char *path;
    uint32_t len, tag;
    bool seen, dead;
};
/* Entries live in fixed chunks too (so a record's address never changes). */
struct ent_ref {
    struct ident_entry *e;
};
#define ENT_SHIFT 12u
#define ENT_PER_CHUNK (1u << ENT_SHIFT)

struct ident_slot {
    uint32_t idx1; /* entry index + 1; 0: empty */
    uint32_t tag;  /* the upper half of the path's hash */
};

struct ident_set {
    struct ent_ref *chunks;
    size_t n_chunks;
    uint32_t n_ent; /* entries used, removed ones too */
    size_t live;
    struct ident_slot *slots;
    uint32_t mask; /* slots - 1, a power of two minus one */
    struct arena_chunk *arena;
};

static void *arena_alloc(struct ident_set *s, size_t n)
{
    struct arena_chunk *c = s->arena;
    size_t need = (n + 7) & ~(size_t)7;
    void *p;
    if (!c || c->cap - c->used < need) {
        size_t cap = need > ARENA_CHUNK ? need : ARENA_CHUNK;
        c = xmalloc(sizeof *c + cap);
        c->used = 0;
        c->cap = cap;
        c->next = s->arena;
        s->arena = c;
    }
    p = c->data + c->used;
    c->used += need;
    return p;
}

static struct ident_entry *ent_at(const struct ident_set *s, uint32_t i)
{
    return &s->chunks[i >> ENT_SHIFT].e[i & (ENT_PER_CHUNK - 1)];
}

static void index_resize(struct ident_set *s, size_t want_live)
{
    size_t cap = 16;
    while (cap / 2 < want_live)
        cap *= 2;
    free(s->slots);
    s->slots = xcalloc(cap, sizeof *s->slots);
    s->mask = (uint32_t)(cap - 1);
    for (uint32_t i = 0; i < s->n_ent; i++) {
        const struct ident_entry *e = ent_at(s, i);
        uint64_t h;
        uint32_t pos;
        if (e->dead)
            continue;
        h = XXH3_64bits(e->path, e->len);
        pos = (uint32_t)h & s->mask;
        while (s->slots[pos].idx1)
            pos = (pos + 1) & s->mask;
        s->slots[pos].idx1 = i + 1;
        s->slots[pos].tag = e->tag;
    }
}

struct ident_set *ident_set_new(void)
{
    struct ident_set *s = xcalloc(1, sizeof *s);
    index_resize(s, 0);
    return s;
}

/* The slot holding rel, or -1; *hash gets rel's hash either way. */
static long index_find(const struct ident_set *s, const char *rel, size_t len, uint64_t *hash)
{
    uint64_t h = XXH3_64bits(rel, len);
    uint32_t pos = (uint32_t)h & s->mask, tag = (uint32_t)(h >> 32);
    *hash = h;
    for (;;) {
        const struct ident_slot *sl = &s->slots[pos];
        const struct ident_entry *e;
        if (!sl->idx1)
            return -1;
        e = ent_at(s, sl->idx1 - 1);
        if (sl->tag == tag && e->len == len && memcmp(e->path, rel, len) == 0)
            return (long)pos;
        pos = (pos + 1) & s->mask;
    }
}

/* Stores src in dst, copying its target and blocks into the arena unless
 * they are there already (a record being loaded). */
static void rec_store(struct ident_set *s, struct ident_rec *dst, const struct ident_rec *src,
                      bool in_arena)
{
    *dst = *src;
    if (in_arena)
        return;
    if (src->target) {
        size_t tl = strlen(src->target) + 1;
        char *t = arena_alloc(s, tl);
        memcpy(t, src->target, tl);
        dst->target = t;
    }
    if (src->n_blocks > 0) {
        uint64_t *b = arena_alloc(s, (size_t)src->n_blocks * sizeof *b);
        memcpy(b, src->blocks, (size_t)src->n_blocks * sizeof *b);
        dst->blocks = b;
    } else {
        dst->blocks = NULL;
    }
}

/* Insert or replace; rel need not be NUL-terminated at len. */
static void set_put(struct ident_set *s, const char *rel, size_t len, const struct ident_rec *r,
                    bool in_arena)
{
    uint64_t h;
    long at = index_find(s, rel, len, &h);
    struct ident_entry *e;
    char *p;
    uint32_t pos;
    if (at >= 0) {
        rec_store(s, &ent_at(s, s->slots[at].idx1 - 1)->rec, r, in_arena);
        return;
    }
    if (s->live + 1 > ((size_t)s->mask + 1) / 2)
        index_resize(s, s->live + 1);
    if ((s->n_ent >> ENT_SHIFT) >= s->n_chunks) {
        s->chunks = xrealloc(s->chunks, (s->n_chunks + 1) * sizeof *s->chunks);
        s->chunks[s->n_chunks++].e = xmalloc(ENT_PER_CHUNK * sizeof(struct ident_entry));
    }
    e = ent_at(s, s->n_ent);
    memset(e, 0, sizeof *e);
    p = arena_alloc(s, len + 1);
    memcpy(p, rel, len);
    p[len] = '\0';
    e->path = p;
    e->len = (uint32_t)len;
    e->tag = (uint32_t)(h >> 32);
    rec_store(s, &e->rec, r, in_arena);
    pos = (uint32_t)h & s->mask;
    while (s->slots[pos].idx1)
        pos = (pos + 1) & s->mask;
    s->slots[pos].idx1 = ++s->n_ent;
    s->slots[pos].tag = e->tag;
    s->live++;
}

int ident_set_put(struct ident_set *s, const char *rel, const struct ident_rec *r)
{
    if (!rel_valid(rel) || (r->flags & ~(uint32_t)IDENT_FLAGS_KNOWN))
        return -EINVAL;
    set_put(s, rel, strlen(rel), r, false);
    return 0;
}

const struct ident_rec *ident_set_get(const struct ident_set *s, const char *rel)
{
    uint64_t h;
    long at = index_find(s, rel, strlen(rel), &h);
    return at < 0 ? NULL : &ent_at(s, s->slots[at].idx1 - 1)->rec;
}

bool ident_set_remove(struct ident_set *s, const char *rel)
{
    uint64_t h;
    long at = index_find(s, rel, strlen(rel), &h);
    uint32_t hole, pos;
    if (at < 0)
        return false;
    ent_at(s, s->slots[at].idx1 - 1)->dead = true;
    s->live--;
    /* Backward-shift deletion: every later slot of the probe run that may
     * move into the hole does, so lookups never need tombstones. */
    hole = (uint32_t)at;
    pos = hole;
    for (;;) {
        const struct ident_entry *e;
        uint32_t home;
        pos = (pos + 1) & s->mask;
        if (!s->slots[pos].idx1)
            break;
        e = ent_at(s, s->slots[pos].idx1 - 1);
        home = (uint32_t)XXH3_64bits(e->path, e->len) & s->mask;
        /* It may move when its home is not in (hole, pos] cyclically. */
        if (((pos - home) & s->mask) >= ((pos - hole) & s->mask)) {
            s->slots[hole] = s->slots[pos];
            hole = pos;
        }
    }
    s->slots[hole].idx1 = 0;
    s->slots[hole].tag = 0;
    return true;
}

size_t ident_set_count(const struct ident_set *s)
{
    return s->live;
}

void ident_set_mark(struct ident_set *s, const char *rel)
{
    uint64_t h;
    long at = index_find(s, rel, strlen(rel), &h);
    if (at >= 0)
        ent_at(s, s->slots[at].idx1 - 1)->seen = true;
}

void ident_set_clear_marks(struct ident_set *s)
{
    for (uint32_t i = 0; i < s->n_ent; i++)
        ent_at(s, i)->seen = false;
}

static int entry_path_desc(const void *a, const void *b)
{
    const struct ident_entry *x = ((const struct ent_ref *)a)->e;
    const struct ident_entry *y = ((const struct ent_ref *)b)->e;
    return strcmp(y->path, x->path);
}

int ident_set_each_unseen(const struct ident_set *s,
                          int (*fn)(void *arg, const char *rel, const struct ident_rec *r),
                          void *arg)
{
    struct ent_ref *v;
    size_t n = 0;
    int rc = 0;
    for (uint32_t i = 0; i < s->n_ent; i++) {
        const struct ident_entry *e = ent_at(s, i);
        if (!e->dead && !e->seen)
            n++;
    }
    if (n == 0)
        return 0;
    v = xmalloc(n * sizeof *v);
    n = 0;
    for (uint32_t i = 0; i < s->n_ent; i++) {
        struct ident_entry *e = ent_at(s, i);
        if (!e->dead && !e->seen)
            v[n++].e = e;
    }
    /* A proper prefix sorts first in byte order, so descending order puts
     * every entry below a directory before the directory. */
    qsort(v, n, sizeof *v, entry_path_desc);
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (!v[i].e->dead) /* fn may have removed it */
            rc = fn(arg, v[i].e->path, &v[i].e->rec);
    }
    free(v);
    return rc;
}

void ident_set_free(struct ident_set *s)
{
    if (!s)
        return;
    while (s->arena) {
        struct arena_chunk *c = s->arena;
        s->arena = c->next;
        free(c);
    }
    for (size_t i = 0; i < s->n_chunks; i++)
        free(s->chunks[i].e);
    free(s->chunks);
    free(s->slots);
    free(s);
}

int ident_set_save(const struct ident_set *s, const char *path)
{
    struct ident_writer *w = NULL;
    int rc = ident_writer_open(&w, path);
    if (rc < 0 || !w)
        return rc < 0 ? rc : -EIO;
    for (uint32_t i = 0; i < s->n_ent && rc == 0; i++) {
        const struct ident_entry *e = ent_at(s, i);
        if (!e->dead)
            rc = ident_writer_add(w, e->path, &e->rec);
    }
    if (rc < 0) {
        ident_writer_abort(w);
        return rc;
    }
    return ident_writer_finish(w);
}

/* --- loading ---------------------------------------------------------------- */

struct cursor {
    const unsigned char *p, *end;
    bool bad;
};

static uint64_t cur_varint(struct cursor *c)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        unsigned char b;
        if (c->p >= c->end)
            break;
        b = *c->p++;
        /* The tenth byte may carry only the 64th bit. */
        if (shift == 63 && b > 1)
            break;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return v;
    }
    c->bad = true;
    return 0;
}

static uint32_t cur_u32(struct cursor *c)
{
    uint64_t v = cur_varint(c);
    if (v > UINT32_MAX)
        c->bad = true;
    return (uint32_t)v;
}

static int read_all(const char *path, unsigned char **out, size_t *len)
{
    struct stat st;
    unsigned char *buf;
    size_t off = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc = 0;
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        goto out_close;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = -EINVAL;
        goto out_close;
    }
    buf = xmalloc((size_t)st.st_size);
    while (off < (size_t)st.st_size) {
        ssize_t k = read(fd, buf + off, (size_t)st.st_size - off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            rc = k < 0 ? -errno : -EBADMSG; /* cut short under us */
            free(buf);
            goto out_close;
        }
        off += (size_t)k;
    }
    *out = buf;
    *len = off;
out_close:
    close(fd);
    return rc;
}

/* A 32-bit field stored as a delta from the previous record's. */
static uint32_t cur_delta32(struct cursor *c, uint32_t base)
{
    uint64_t v = base + unzigzag(cur_varint(c));
    if (v > UINT32_MAX)
        c->bad = true;
    return (uint32_t)v;
}

/* Decodes one record's fields after its path into r (target and blocks in
 * the set's arena). False when they do not parse. */
static bool load_fields(struct ident_set *s, struct cursor *c, const struct ident_rec *last,
                        struct ident_rec *dst_last, unsigned version, struct ident_rec *r)
{
    uint64_t head = cur_varint(c);
    memset(r, 0, sizeof *r);
    if (head >> 3 > IDENT_FLAGS_KNOWN || (version < 2 && (head >> 3) & IDENT_DST))
        return false;
    r->flags = (uint32_t)(head >> 3);
    r->mode = cur_delta32(c, last->mode);
    r->dev = last->dev + unzigzag(cur_varint(c));
    r->ino = last->ino + unzigzag(cur_varint(c));
    r->size = cur_varint(c);
    r->uid = cur_delta32(c, last->uid);
    r->gid = cur_delta32(c, last->gid);
    r->nlink = cur_u32(c);
    if (head & 4) {
        r->ctime_ns = (int64_t)((uint64_t)last->ctime_ns + unzigzag(cur_varint(c)));
        r->mtime_ns = (int64_t)((uint64_t)r->ctime_ns + unzigzag(cur_varint(c)));
    } else {
        r->mtime_ns = (int64_t)((uint64_t)last->mtime_ns + unzigzag(cur_varint(c)));
        r->ctime_ns = (int64_t)((uint64_t)r->mtime_ns + unzigzag(cur_varint(c)));
    }
    if (r->flags & IDENT_DST) {
        r->dst_ino = dst_last->dst_ino + unzigzag(cur_varint(c));
        r->dst_ctime_ns = (int64_t)((uint64_t)dst_last->dst_ctime_ns + unzigzag(cur_varint(c)));
        dst_last->dst_ino = r->dst_ino;
        dst_last->dst_ctime_ns = r->dst_ctime_ns;
    }
    if (head & 2) {
        uint64_t tl = cur_varint(c);
        char *t;
        if (c->bad || tl > (uint64_t)(c->end - c->p) || memchr(c->p, '\0', tl))
            return false;
        t = arena_alloc(s, tl + 1);
        memcpy(t, c->p, tl);
        t[tl] = '\0';
        c->p += tl;
        r->target = t;
    }
    if (head & 1) {
        uint64_t nb = cur_varint(c);
        uint64_t *blocks;
        if (c->bad || nb == 0 || nb > UINT32_MAX || nb > (uint64_t)(c->end - c->p) / 8)
            return false;
        blocks = arena_alloc(s, nb * sizeof *blocks);
        for (uint64_t i = 0; i < nb; i++)
            blocks[i] = get_le64(c->p + 8 * i);
        c->p += 8 * nb;
        r->n_blocks = (uint32_t)nb;
        r->blocks = blocks;
    }
    return !c->bad;
}

/* Decodes the records between c->p and c->end (header and trailer already
 * checked) into s. 0 or -EBADMSG. */
static int load_records(struct ident_set *s, struct cursor *c, uint64_t count, unsigned version)
{
    char *path = NULL;
    size_t plen = 0, pcap = 0;
    struct ident_rec last, dst_last, r;
    uint64_t n = 0;
    memset(&last, 0, sizeof last);
    memset(&dst_last, 0, sizeof dst_last);
    while (c->p < c->end) {
        uint64_t shared = cur_varint(c), suf = cur_varint(c);
        if (c->bad || shared > plen || suf > (uint64_t)(c->end - c->p) || shared + suf == 0 ||
            memchr(c->p, '\0', suf)) {
            c->bad = true;
            break;
        }
        if (shared + suf > pcap) {
            pcap = (shared + suf) * 2;
            path = xrealloc(path, pcap);
        }
        memcpy(path + shared, c->p, suf);
        plen = shared + suf;
        c->p += suf;
        if (path[0] == '/' || !load_fields(s, c, &last, &dst_last, version, &r)) {
            c->bad = true;
            break;
        }
        set_put(s, path, plen, &r, true);
        last = r;
        n++;
    }
    free(path);
    if (c->bad || n != count)
        return -EBADMSG;
    return 0;
}

int ident_set_load(struct ident_set **out, const char *path)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    uint64_t count;
    unsigned version = 0;
    struct cursor c;
    struct ident_set *s;
    int rc = read_all(path, &buf, &len);
    if (rc < 0)
        return rc;
    if (len >= IDENT_HEADER_BYTES)
        version = get_le32(buf + 4);
    /* Version 1 (before IDENT_DST) is read: a move prepared by an older agent
     * can still be committed (its entries are then all copied again). */
    if (len < IDENT_HEADER_BYTES + IDENT_TRAILER_BYTES ||
        memcmp(buf, ident_magic, sizeof ident_magic) != 0 || version < 1 ||
        version > IDENT_VERSION || XXH3_64bits(buf, len - 8) != get_le64(buf + len - 8)) {
        free(buf);
        return -EBADMSG;
    }
    count = get_le64(buf + len - IDENT_TRAILER_BYTES);
    if (count > (len - IDENT_HEADER_BYTES - IDENT_TRAILER_BYTES) / IDENT_REC_MIN_BYTES) {
        free(buf);
        return -EBADMSG;
    }
    s = xcalloc(1, sizeof *s);
    index_resize(s, count);
    c.p = buf + IDENT_HEADER_BYTES;
    c.end = buf + len - IDENT_TRAILER_BYTES;
    c.bad = false;
    rc = load_records(s, &c, count, version);
    free(buf);
    if (rc < 0) {
        ident_set_free(s);
        return rc;
    }
    *out = s;
    return 0;
}
