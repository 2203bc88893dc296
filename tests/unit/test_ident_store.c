/* test_ident_store.c: the preparing copy's identity record: every entry kind
 * through the file and back (written streaming and saved from a set), the
 * prefix compression, the set's index (put/replace/remove/get, marks, the
 * children-first walk of unseen records), rejection of torn or corrupt
 * files, odd paths, and the block hashes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ident_store.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

static char dir[64];
static char file[128];

static int setup(void **state)
{
    (void)state;
    strcpy(dir, "/tmp/test_ident_store.XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(file, sizeof file, "%s/ident", dir);
    return 0;
}

static int teardown(void **state)
{
    char p[160];
    (void)state;
    unlink(file);
    snprintf(p, sizeof p, "%s.tmp", file);
    unlink(p);
    return rmdir(dir);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static struct ident_rec mkrec(uint32_t mode, uint64_t ino, uint64_t size)
{
    struct ident_rec r;
    memset(&r, 0, sizeof r);
    r.mode = mode;
    r.uid = 1000;
    r.gid = 1000;
    r.nlink = S_ISDIR(mode) ? 2 : 1;
    r.dev = 0x10302;
    r.ino = ino;
    r.size = size;
    r.mtime_ns = 1700000000123456789 + (int64_t)(ino % 1000000000000u) * 1000;
    r.ctime_ns = r.mtime_ns + 17;
    r.flags = IDENT_COPIED;
    return r;
}

static void assert_rec_equal(const struct ident_rec *a, const struct ident_rec *b)
{
    assert_int_equal(a->mode, b->mode);
    assert_int_equal(a->uid, b->uid);
    assert_int_equal(a->gid, b->gid);
    assert_int_equal(a->nlink, b->nlink);
    assert_int_equal(a->flags, b->flags);
    assert_int_equal(a->dev, b->dev);
    assert_int_equal(a->ino, b->ino);
    assert_int_equal(a->size, b->size);
    assert_true(a->mtime_ns == b->mtime_ns);
    assert_true(a->ctime_ns == b->ctime_ns);
    if (a->flags & IDENT_DST) {
        assert_int_equal(a->dst_ino, b->dst_ino);
        assert_true(a->dst_ctime_ns == b->dst_ctime_ns);
    }
    if (a->target || b->target) {
        assert_non_null(a->target);
        assert_non_null(b->target);
        assert_string_equal(a->target, b->target);
    }
    assert_int_equal(a->n_blocks, b->n_blocks);
    if (a->n_blocks)
        assert_memory_equal(a->blocks, b->blocks, a->n_blocks * sizeof(uint64_t));
    else
        assert_null(b->blocks);
}

/* Every record of `want` is in `got` with the same fields, and nothing else. */
static void assert_set_equal(const struct ident_set *want, const char *const *paths, size_t n,
                             const struct ident_set *got)
{
    assert_int_equal(ident_set_count(got), ident_set_count(want));
    for (size_t i = 0; i < n; i++) {
        const struct ident_rec *a = ident_set_get(want, paths[i]),
                               *b = ident_set_get(got, paths[i]);
        if (!a) {
            assert_null(b);
            continue;
        }
        assert_non_null(b);
        assert_rec_equal(a, b);
    }
}

static void read_file(const char *path, unsigned char **buf, size_t *len)
{
    struct stat st;
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &st), 0);
    *len = (size_t)st.st_size;
    *buf = malloc(*len + 1);
    assert_int_equal(read(fd, *buf, *len), (ssize_t)*len);
    close(fd);
}

static void write_file(const char *path, const unsigned char *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    close(fd);
}

static struct ident_set *load_ok(const char *path)
{
    struct ident_set *s = NULL;
    assert_int_equal(ident_set_load(&s, path), 0);
    assert_non_null(s);
    return s;
}

/* Writes the records through the streaming writer. */
static void write_all(const char *path, const char *const *paths, const struct ident_rec *recs,
                      size_t n)
{
    struct ident_writer *w;
    assert_int_equal(ident_writer_open(&w, path), 0);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ident_writer_add(w, paths[i], &recs[i]), 0);
    assert_int_equal(ident_writer_finish(w), 0);
}

static const uint64_t some_blocks[] = {
    0x0123456789abcdefu, 0, UINT64_MAX, 42, 0xfeedfacecafebeefu, 7, 8, 9, 10};

/* One of every kind, in walk order. */
#define KINDS 9
static void kinds(const char **paths, struct ident_rec *recs)
{
    static const char *p[KINDS] = {
        "world",        "world/level.dat", "world/region", "world/region/r.0.0.mca",
        "world/latest", "world/fifo",      "world/link1",  "world/link2",
        "vanished"};
    for (int i = 0; i < KINDS; i++)
        paths[i] = p[i];
    recs[0] = mkrec(S_IFDIR | 0755, 100, 4096);
    recs[1] = mkrec(S_IFREG | 0644, 101, 1234);
    recs[2] = mkrec(S_IFDIR | 0700, 99, 4096);
    recs[3] = mkrec(S_IFREG | 0600, 5000000000u, 9 * (uint64_t)IDENT_BLOCK_SIZE - 5);
    recs[3].n_blocks = 9;
    recs[3].blocks = some_blocks;
    recs[3].flags = IDENT_COPIED | IDENT_SUSPECT;
    recs[4] = mkrec(S_IFLNK | 0777, 103, 9);
    recs[4].target = "level.dat";
    recs[5] = mkrec(S_IFIFO | 0640, 104, 0);
    recs[5].uid = 0; /* owner deltas both ways */
    recs[5].gid = 4294967295u;
    recs[6] = mkrec(S_IFREG | 0644, 105, 77);
    recs[6].nlink = 2;
    recs[7] = recs[6]; /* the other name of the same file */
    recs[8] = mkrec(S_IFREG | 0644, 1, 0);
    recs[8].flags = 0;                 /* vanished while being read */
    recs[8].mtime_ns = -1234567890123; /* before 1970 */
    recs[8].ctime_ns = INT64_MAX;      /* the widest ctime delta */
    recs[8].dev = UINT64_MAX;          /* the widest dev delta */
    /* The copy's identity, on some records only: the deltas skip the others,
     * and go both ways. */
    recs[1].flags |= IDENT_DST;
    recs[1].dst_ino = 900000;
    recs[1].dst_ctime_ns = 1700000000123456789;
    recs[3].flags |= IDENT_DST;
    recs[3].dst_ino = 899999;
    recs[3].dst_ctime_ns = 1700000000123456790;
    recs[4].flags |= IDENT_DST;
    recs[4].dst_ino = UINT64_MAX;
    recs[4].dst_ctime_ns = -5;
}

static void test_round_trip_every_kind(void **state)
{
    const char *paths[KINDS];
    struct ident_rec recs[KINDS];
    struct ident_set *s = ident_set_new(), *l;
    (void)state;
    kinds(paths, recs);
    for (int i = 0; i < KINDS; i++)
        assert_int_equal(ident_set_put(s, paths[i], &recs[i]), 0);
    assert_int_equal(ident_set_count(s), KINDS);
    for (int i = 0; i < KINDS; i++)
        assert_rec_equal(ident_set_get(s, paths[i]), &recs[i]);

    assert_int_equal(ident_set_save(s, file), 0);
    l = load_ok(file);
    assert_set_equal(s, paths, KINDS, l);
    ident_set_free(l);

    write_all(file, paths, recs, KINDS);
    l = load_ok(file);
    assert_set_equal(s, paths, KINDS, l);
    /* Stored copies: the set does not point at the caller's memory. */
    assert_ptr_not_equal(ident_set_get(l, "world/latest")->target, recs[4].target);
    assert_ptr_not_equal(ident_set_get(s, "world/latest")->target, recs[4].target);
    assert_ptr_not_equal(ident_set_get(s, "world/region/r.0.0.mca")->blocks, some_blocks);
    ident_set_free(l);
    ident_set_free(s);
}

static void test_rec_from_stat(void **state)
{
    struct stat st;
    struct ident_rec r;
    (void)state;
    memset(&st, 0, sizeof st);
    st.st_mode = S_IFREG | 0640;
    st.st_uid = 7;
    st.st_gid = 8;
    st.st_nlink = 3;
    st.st_dev = 0x803;
    st.st_ino = 123456789012u;
    st.st_size = 5555;
    st.st_mtim.tv_sec = 1700000000;
    st.st_mtim.tv_nsec = 999999999;
    st.st_ctim.tv_sec = -2;
    st.st_ctim.tv_nsec = 1;
    memset(&r, 0xff, sizeof r);
    ident_rec_from_stat(&r, &st);
    assert_int_equal(r.mode, S_IFREG | 0640);
    assert_int_equal(r.uid, 7);
    assert_int_equal(r.gid, 8);
    assert_int_equal(r.nlink, 3);
    assert_int_equal(r.dev, 0x803);
    assert_int_equal(r.ino, 123456789012u);
    assert_int_equal(r.size, 5555);
    assert_true(r.mtime_ns == 1700000000999999999);
    assert_true(r.ctime_ns == -1999999999);
    assert_int_equal(r.flags, 0);
    assert_null(r.target);
    assert_null(r.blocks);
    assert_int_equal(r.n_blocks, 0);
}

static void test_prefix_compression_deep_and_shallow(void **state)
{
    static const char *paths[] = {"a",
                                  "a/b",
                                  "a/b/c",
                                  "a/b/c/d/e/f/g/h",
                                  "a/b/c/d/e/f/g/i",
                                  "a/b/c/d/e/f/g",
                                  "a/b/x",
                                  "z",
                                  "a/b/c/d",
                                  "ab",
                                  "a", /* the same path again: the later one wins */
                                  "a/bc",
                                  "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z",
                                  "b",
                                  "a/b/c/d/e/f/g/h2"};
    enum { N = sizeof paths / sizeof paths[0] };
    struct ident_rec recs[N];
    struct ident_set *s = ident_set_new(), *l;
    struct stat st;
    (void)state;
    for (size_t i = 0; i < N; i++) {
        recs[i] = mkrec(S_IFREG | 0644, 1000 + i * 3, i);
        assert_int_equal(ident_set_put(s, paths[i], &recs[i]), 0);
    }
    assert_int_equal(ident_set_count(s), N - 1);
    assert_int_equal(ident_set_get(s, "a")->ino, recs[10].ino);
    write_all(file, paths, recs, N);
    l = load_ok(file);
    assert_set_equal(s, paths, N, l);
    ident_set_free(l);
    /* The shared prefixes are really left out: the long path follows "b"
     * and after "ab"... shares "a/b" with "a/bc" only, so its bytes from
     * there on are in the file and the whole path is not. */
    {
        unsigned char *buf;
        size_t len;
        const char *whole = paths[12], *tail = paths[12] + 3;
        read_file(file, &buf, &len);
        assert_null(memmem(buf, len, whole, strlen(whole)));
        assert_non_null(memmem(buf, len, tail, strlen(tail)));
        free(buf);
    }
    /* 1000 names under one 120-byte directory path take about their own
     * bytes and fields each, not the directory's path again. */
    {
        struct ident_writer *w;
        char p[200];
        const char *deepdir = "server/world/plugins/dynmap/web/tiles/world/flat/0_0/zoomed/"
                              "level/one/two/three/four/five/six/seven/eight/nine";
        assert_int_equal(ident_writer_open(&w, file), 0);
        for (int i = 0; i < 1000; i++) {
            snprintf(p, sizeof p, "%s/tile_%d.png", deepdir, i);
            assert_int_equal(ident_writer_add(w, p, &recs[0]), 0);
        }
        assert_int_equal(ident_writer_finish(w), 0);
        assert_int_equal(stat(file, &st), 0);
        assert_true(st.st_size < 1000 * 20);
        l = load_ok(file);
        assert_int_equal(ident_set_count(l), 1000);
        snprintf(p, sizeof p, "%s/tile_%d.png", deepdir, 999);
        assert_non_null(ident_set_get(l, p));
        ident_set_free(l);
    }
    ident_set_free(s);
}

static void test_put_replace_remove_get(void **state)
{
    struct ident_set *s = ident_set_new();
    struct ident_rec r = mkrec(S_IFLNK | 0777, 5, 3), r2 = mkrec(S_IFREG | 0644, 6, 1 << 21);
    uint64_t blocks[16];
    const struct ident_rec *got;
    char target[8] = "abc";
    (void)state;
    assert_null(ident_set_get(s, "x"));
    assert_false(ident_set_remove(s, "x"));
    assert_int_equal(ident_set_count(s), 0);
    assert_int_equal(ident_set_put(s, "", &r), -EINVAL);
    assert_int_equal(ident_set_put(s, "/abs", &r), -EINVAL);
    r.flags = 1u << 5;
    assert_int_equal(ident_set_put(s, "x", &r), -EINVAL);
    r.flags = IDENT_COPIED;
    assert_int_equal(ident_set_count(s), 0);

    r.target = target;
    assert_int_equal(ident_set_put(s, "x", &r), 0);
    strcpy(target, "zzz"); /* the set keeps its own copy */
    got = ident_set_get(s, "x");
    assert_non_null(got);
    assert_string_equal(got->target, "abc");

    /* Replace: same count, same address, new fields. */
    for (int i = 0; i < 16; i++)
        blocks[i] = (uint64_t)i * 77;
    r2.n_blocks = 16;
    r2.blocks = blocks;
    assert_int_equal(ident_set_put(s, "x", &r2), 0);
    assert_int_equal(ident_set_count(s), 1);
    assert_ptr_equal(ident_set_get(s, "x"), got);
    assert_rec_equal(got, &r2);
    assert_null(got->target);
    blocks[3] = 1;
    assert_int_equal(got->blocks[3], 3 * 77);

    assert_true(ident_set_remove(s, "x"));
    assert_false(ident_set_remove(s, "x"));
    assert_null(ident_set_get(s, "x"));
    assert_int_equal(ident_set_count(s), 0);
    assert_int_equal(ident_set_put(s, "x", &r), 0);
    assert_int_equal(ident_set_count(s), 1);
    assert_int_equal(ident_set_get(s, "x")->ino, 5);
    ident_set_free(s);
}

/* Many random puts and removes against a plain array: exercises the index's
 * growth and the backward-shift deletion in long probe runs. */
static void test_put_remove_churn(void **state)
{
    enum { KEYS = 5000, OPS = 60000 };
    static bool present[KEYS];
    static uint64_t ino[KEYS];
    struct ident_set *s = ident_set_new(), *l;
    size_t live = 0;
    char p[64];
    (void)state;
    memset(present, 0, sizeof present);
    for (int op = 0; op < OPS; op++) {
        int k = (int)(rng() % KEYS);
        snprintf(p, sizeof p, "d%d/f%d", k % 37, k);
        if (rng() % 3 == 0) {
            assert_int_equal(ident_set_remove(s, p), present[k]);
            live -= present[k];
            present[k] = false;
        } else {
            struct ident_rec r = mkrec(S_IFREG | 0644, rng(), (uint64_t)k);
            assert_int_equal(ident_set_put(s, p, &r), 0);
            live += !present[k];
            present[k] = true;
            ino[k] = r.ino;
        }
        if (op % 997 == 0)
            assert_int_equal(ident_set_count(s), live);
    }
    assert_int_equal(ident_set_save(s, file), 0);
    l = load_ok(file);
    for (int k = 0; k < KEYS; k++) {
        snprintf(p, sizeof p, "d%d/f%d", k % 37, k);
        if (present[k]) {
            assert_non_null(ident_set_get(s, p));
            assert_int_equal(ident_set_get(s, p)->ino, ino[k]);
            assert_int_equal(ident_set_get(l, p)->ino, ino[k]);
        } else {
            assert_null(ident_set_get(s, p));
            assert_null(ident_set_get(l, p));
        }
    }
    assert_int_equal(ident_set_count(l), live);
    ident_set_free(l);
    ident_set_free(s);
}

struct visit {
    char seen[32][64];
    int n, stop_at;
};

static int visit_cb(void *arg, const char *rel, const struct ident_rec *r)
{
    struct visit *v = arg;
    assert_non_null(r);
    assert_true(v->n < 32);
    snprintf(v->seen[v->n], sizeof v->seen[0], "%s", rel);
    v->n++;
    return v->n == v->stop_at ? 99 : 0;
}

static int visit_index(const struct visit *v, const char *rel)
{
    for (int i = 0; i < v->n; i++)
        if (strcmp(v->seen[i], rel) == 0)
            return i;
    return -1;
}

static void test_marks_and_unseen_children_first(void **state)
{
    /* Walk order, directory first; "a.b" sorts between "a" and "a/..." in
     * byte order ('.' < '/'), which must not break the order. */
    static const char *paths[] = {"a",     "a/x", "a/y", "a/y/1", "a/y/2", "a/y/2/deep", "a.b",
                                  "a.b/q", "a0",  "b",   "b/c",   "kept",  "kept/k"};
    enum { N = sizeof paths / sizeof paths[0] };
    struct ident_set *s = ident_set_new();
    struct visit v;
    (void)state;
    for (size_t i = 0; i < N; i++) {
        struct ident_rec r = mkrec(S_IFDIR | 0755, i + 1, 0);
        assert_int_equal(ident_set_put(s, paths[i], &r), 0);
    }
    ident_set_mark(s, "kept");
    ident_set_mark(s, "kept/k");
    ident_set_mark(s, "not/there"); /* no-op */
    memset(&v, 0, sizeof v);
    assert_int_equal(ident_set_each_unseen(s, visit_cb, &v), 0);
    assert_int_equal(v.n, N - 2);
    assert_int_equal(visit_index(&v, "kept"), -1);
    assert_int_equal(visit_index(&v, "kept/k"), -1);
    /* Every entry comes before each of its ancestors. */
    for (size_t i = 0; i < N - 2; i++) {
        for (size_t j = 0; j < N - 2; j++) {
            size_t li = strlen(paths[i]);
            if (i != j && strncmp(paths[j], paths[i], li) == 0 && paths[j][li] == '/')
                assert_true(visit_index(&v, paths[j]) < visit_index(&v, paths[i]));
        }
    }

    /* A replace keeps the mark; a new record starts unseen. */
    {
        struct ident_rec r = mkrec(S_IFREG | 0644, 77, 1);
        assert_int_equal(ident_set_put(s, "kept/k", &r), 0);
        assert_int_equal(ident_set_put(s, "kept/new", &r), 0);
    }
    memset(&v, 0, sizeof v);
    assert_int_equal(ident_set_each_unseen(s, visit_cb, &v), 0);
    assert_int_equal(v.n, N - 2 + 1);
    assert_int_equal(visit_index(&v, "kept/k"), -1);
    assert_true(visit_index(&v, "kept/new") >= 0);

    /* Stops at the first nonzero value and returns it. */
    memset(&v, 0, sizeof v);
    v.stop_at = 3;
    assert_int_equal(ident_set_each_unseen(s, visit_cb, &v), 99);
    assert_int_equal(v.n, 3);

    /* Marked all: nothing to visit; cleared: everything. */
    for (size_t i = 0; i < N; i++)
        ident_set_mark(s, paths[i]);
    ident_set_mark(s, "kept/new");
    memset(&v, 0, sizeof v);
    assert_int_equal(ident_set_each_unseen(s, visit_cb, &v), 0);
    assert_int_equal(v.n, 0);
    ident_set_clear_marks(s);
    assert_true(ident_set_remove(s, "a/y/2/deep"));
    memset(&v, 0, sizeof v);
    assert_int_equal(ident_set_each_unseen(s, visit_cb, &v), 0);
    assert_int_equal(v.n, N);
    assert_int_equal(visit_index(&v, "a/y/2/deep"), -1);
    ident_set_free(s);
}

struct remover {
    struct ident_set *s;
    int calls;
};

/* Removes what it visits, and the directory "d" with the first of them. */
static int remove_cb(void *arg, const char *rel, const struct ident_rec *r)
{
    struct remover *rm = arg;
    (void)r;
    assert_string_not_equal(rel, "d");
    assert_true(ident_set_remove(rm->s, rel));
    if (rm->calls++ == 0)
        assert_true(ident_set_remove(rm->s, "d"));
    return 0;
}

static void test_unseen_callback_may_remove(void **state)
{
    struct ident_set *s = ident_set_new();
    struct ident_rec r = mkrec(S_IFREG | 0644, 1, 1);
    struct remover rm = {s, 0};
    char p[32];
    (void)state;
    for (int i = 0; i < 300; i++) {
        snprintf(p, sizeof p, "d/%d", i);
        assert_int_equal(ident_set_put(s, p, &r), 0);
    }
    assert_int_equal(ident_set_put(s, "d", &r), 0);
    ident_set_mark(s, "d/7");
    assert_int_equal(ident_set_each_unseen(s, remove_cb, &rm), 0);
    assert_int_equal(rm.calls, 299);
    assert_int_equal(ident_set_count(s), 1);
    assert_non_null(ident_set_get(s, "d/7"));
    ident_set_free(s);
}

/* A game-server-like walk of n records, directory before its entries. */
static size_t gen_tree(char (*paths)[96], struct ident_rec *recs, size_t n)
{
    size_t k = 0;
    for (int d = 0; k < n; d++) {
        snprintf(paths[k], 96, "plugins/P%d", d);
        recs[k] = mkrec(S_IFDIR | 0755, 10 + k, 4096);
        k++;
        for (int f = 0; f < 40 && k < n; f++) {
            snprintf(paths[k], 96, "plugins/P%d/data %d.yml", d, f);
            recs[k] = mkrec(S_IFREG | 0644, 10 + k + (rng() % 50), rng() % 100000);
            recs[k].mtime_ns += (int64_t)(rng() % 1000000000000u);
            /* Written in place (ctime at mtime), or copied earlier (ctimes
             * in walk order, mtimes scattered): both time encodings. */
            if (d % 2)
                recs[k].ctime_ns = recs[k].mtime_ns + (int64_t)(rng() % 3);
            else
                recs[k].ctime_ns = 1750000000000000000 + (int64_t)k * 20011;
            k++;
        }
    }
    return k;
}

static void test_writer_then_load_equals_set_and_save(void **state)
{
    enum { N = 3000 };
    static char paths[N][96];
    static struct ident_rec recs[N];
    static const char *pp[N];
    struct ident_set *s = ident_set_new(), *l;
    char file2[160];
    (void)state;
    gen_tree(paths, recs, N);
    for (size_t i = 0; i < N; i++) {
        pp[i] = paths[i];
        assert_int_equal(ident_set_put(s, pp[i], &recs[i]), 0);
    }
    write_all(file, pp, recs, N);
    l = load_ok(file);
    assert_set_equal(s, pp, N, l);

    /* Save the loaded set elsewhere and load it again: the same records. */
    snprintf(file2, sizeof file2, "%s/ident2", dir);
    assert_int_equal(ident_set_save(l, file2), 0);
    ident_set_free(l);
    l = load_ok(file2);
    assert_set_equal(s, pp, N, l);
    ident_set_free(l);
    assert_int_equal(unlink(file2), 0);
    ident_set_free(s);
}

static void assert_rejected(const char *path)
{
    struct ident_set *s = (struct ident_set *)(uintptr_t)0x1;
    assert_int_equal(ident_set_load(&s, path), -EBADMSG);
    assert_true(s == (struct ident_set *)(uintptr_t)0x1); /* untouched */
}

static void test_torn_and_corrupt_files_rejected(void **state)
{
    const char *paths[KINDS];
    struct ident_rec recs[KINDS];
    unsigned char *good, *bad;
    size_t len;
    char other[160];
    (void)state;
    kinds(paths, recs);
    write_all(file, paths, recs, KINDS);
    read_file(file, &good, &len);
    bad = malloc(len + 1);
    snprintf(other, sizeof other, "%s/bad", dir);
    /* Cut at every length. */
    for (size_t cut = 0; cut < len; cut++) {
        write_file(other, good, cut);
        assert_rejected(other);
    }
    /* One bit flipped anywhere. */
    for (size_t i = 0; i < len; i++) {
        memcpy(bad, good, len);
        bad[i] ^= (unsigned char)(1u << (i % 8));
        write_file(other, bad, len);
        assert_rejected(other);
    }
    /* One byte too many. */
    memcpy(bad, good, len);
    bad[len] = 0;
    write_file(other, bad, len + 1);
    assert_rejected(other);
    /* And the original still loads. */
    write_file(other, good, len);
    ident_set_free(load_ok(other));
    {
        struct ident_set *s = NULL;
        assert_int_equal(ident_set_load(&s, "/nonexistent/ident"), -ENOENT);
        assert_null(s);
    }
    unlink(other);
    free(bad);
    free(good);
}

/* A file whose checksum and count are right but whose records are not:
 * strict parsing, not only the checksum, keeps them out. */
static void write_sealed(const char *path, const unsigned char *body, size_t blen, uint64_t count,
                         unsigned version)
{
    unsigned char buf[512];
    size_t n = 0;
    assert_true(blen + 24 <= sizeof buf);
    memcpy(buf, "HAID\0\0\0\0", 8);
    buf[4] = (unsigned char)version;
    n = 8;
    memcpy(buf + n, body, blen);
    n += blen;
    for (int i = 0; i < 8; i++)
        buf[n++] = (unsigned char)(count >> (8 * i));
    {
        uint64_t h = XXH3_64bits(buf, n);
        for (int i = 0; i < 8; i++)
            buf[n++] = (unsigned char)(h >> (8 * i));
    }
    write_file(path, buf, n);
}

static void test_sealed_but_invalid_records_rejected(void **state)
{
    /* shared, suffix_len, suffix, head, mode, dev, ino, size, uid, gid, nlink, mtime, ctime */
    static const unsigned char ok[] = {0, 1, 'a', IDENT_COPIED << 3, 2, 0, 2, 0, 0, 0, 1, 0, 0};
    static const unsigned char abs_path[] = {0, 1, '/', IDENT_COPIED << 3, 2, 0, 2, 0, 0, 0,
                                             1, 0, 0};
    static const unsigned char bad_shared[] = {1, 1, 'a', IDENT_COPIED << 3, 2, 0, 2, 0, 0, 0,
                                               1, 0, 0};
    static const unsigned char empty_path[] = {0, 0, IDENT_COPIED << 3, 2, 0, 2, 0, 0, 0, 1, 0,
                                               0, 0};
    static const unsigned char nul_path[] = {0, 1, 0, IDENT_COPIED << 3, 2, 0, 2, 0, 0, 0, 1, 0, 0};
    static const unsigned char bad_flags[] = {0, 1, 'a', 1 << 6, 2, 0, 2, 0, 0, 0, 1, 0, 0};
    static const unsigned char dst_ok[] = {
        0, 1, 'a', (IDENT_COPIED | IDENT_DST) << 3, 2, 0, 2, 0, 0, 0, 1, 0, 0, 10, 1};
    static const unsigned char long_name[] = {0,
                                              16,
                                              'a',
                                              'b',
                                              'c',
                                              'd',
                                              'e',
                                              'f',
                                              'g',
                                              'h',
                                              'i',
                                              'j',
                                              'k',
                                              'l',
                                              'm',
                                              'n',
                                              'o',
                                              'p',
                                              IDENT_COPIED << 3,
                                              2,
                                              0,
                                              2,
                                              0,
                                              0,
                                              0,
                                              1,
                                              0,
                                              0};
    static const unsigned char nul_target[] = {
        0, 1, 'a', IDENT_COPIED << 3 | 2, 2, 0, 2, 0, 0, 0, 1, 0, 0, 2, 'x', 0};
    static const unsigned char no_blocks[] = {0, 1, 'a', IDENT_COPIED << 3 | 1, 2, 0, 2, 0, 0, 0, 1,
                                              0, 0, 0};
    static const unsigned char big_nlink[] = {
        0, 1, 'a', IDENT_COPIED << 3, 2, 0, 2, 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0};
    static const unsigned char long_varint[] = {0,    1,    'a',  IDENT_COPIED << 3,
                                                0xff, 0xff, 0xff, 0xff,
                                                0xff, 0xff, 0xff, 0xff,
                                                0xff, 0x02, 0,    2,
                                                0,    0,    0,    1,
                                                0,    0};
    struct ident_set *s = NULL;
    (void)state;
    write_sealed(file, ok, sizeof ok, 1, 1);
    s = load_ok(file);
    assert_int_equal(ident_set_count(s), 1);
    assert_int_equal(ident_set_get(s, "a")->mode, 1);
    assert_int_equal(ident_set_get(s, "a")->ino, 1);
    assert_int_equal(ident_set_get(s, "a")->flags, IDENT_COPIED);
    ident_set_free(s);
    write_sealed(file, ok, sizeof ok, 2, 1); /* count mismatch, both ways */
    assert_rejected(file);
    write_sealed(file, ok, sizeof ok, 0, 1);
    assert_rejected(file);
    /* Long enough for two records by size, but it holds one. */
    write_sealed(file, long_name, sizeof long_name, 1, 1);
    ident_set_free(load_ok(file));
    write_sealed(file, long_name, sizeof long_name, 2, 1);
    assert_rejected(file);
    write_sealed(file, ok, sizeof ok - 1, 1, 1); /* record cut */
    assert_rejected(file);
    write_sealed(file, abs_path, sizeof abs_path, 1, 1);
    assert_rejected(file);
    write_sealed(file, bad_shared, sizeof bad_shared, 1, 1);
    assert_rejected(file);
    write_sealed(file, empty_path, sizeof empty_path, 1, 1);
    assert_rejected(file);
    write_sealed(file, nul_path, sizeof nul_path, 1, 1);
    assert_rejected(file);
    write_sealed(file, bad_flags, sizeof bad_flags, 1, 1);
    assert_rejected(file);
    write_sealed(file, nul_target, sizeof nul_target, 1, 1);
    assert_rejected(file);
    write_sealed(file, no_blocks, sizeof no_blocks, 1, 1);
    assert_rejected(file);
    write_sealed(file, big_nlink, sizeof big_nlink, 1, 1);
    assert_rejected(file);
    write_sealed(file, long_varint, sizeof long_varint, 1, 1);
    assert_rejected(file);
    write_sealed(file, ok, sizeof ok, 1, 2); /* version 2 reads version 1's records */
    ident_set_free(load_ok(file));
    write_sealed(file, ok, sizeof ok, 1, 3); /* another version */
    assert_rejected(file);
    write_sealed(file, ok, sizeof ok, 1, 0);
    assert_rejected(file);
    /* The copy's identity: known to version 2, never in a version 1 file. */
    write_sealed(file, dst_ok, sizeof dst_ok, 1, 2);
    s = load_ok(file);
    assert_int_equal(ident_set_get(s, "a")->flags, IDENT_COPIED | IDENT_DST);
    assert_int_equal(ident_set_get(s, "a")->dst_ino, 5);
    assert_true(ident_set_get(s, "a")->dst_ctime_ns == -1);
    ident_set_free(s);
    write_sealed(file, dst_ok, sizeof dst_ok, 1, 1);
    assert_rejected(file);
    write_sealed(file, dst_ok, sizeof dst_ok - 1, 1, 2); /* its identity cut */
    assert_rejected(file);
}

static void test_empty_set(void **state)
{
    struct ident_set *s = ident_set_new(), *l;
    struct ident_writer *w;
    struct stat st;
    struct visit v;
    (void)state;
    assert_int_equal(ident_set_count(s), 0);
    memset(&v, 0, sizeof v);
    assert_int_equal(ident_set_each_unseen(s, visit_cb, &v), 0);
    assert_int_equal(ident_set_save(s, file), 0);
    assert_int_equal(stat(file, &st), 0);
    assert_int_equal(st.st_size, 24);
    l = load_ok(file);
    assert_int_equal(ident_set_count(l), 0);
    ident_set_free(l);
    assert_int_equal(unlink(file), 0);
    assert_int_equal(ident_writer_open(&w, file), 0);
    assert_int_equal(ident_writer_finish(w), 0);
    l = load_ok(file);
    assert_int_equal(ident_set_count(l), 0);
    ident_set_free(l);
    ident_set_free(s);
    ident_set_free(NULL);
}

static void test_writer_rejects_and_abort_keeps_old(void **state)
{
    struct ident_writer *w;
    struct ident_rec r = mkrec(S_IFREG | 0644, 3, 3);
    struct ident_set *l;
    char tmp[160];
    (void)state;
    write_all(file, (const char *[]){"old"}, &r, 1);
    assert_int_equal(ident_writer_open(&w, file), 0);
    snprintf(tmp, sizeof tmp, "%s.tmp", file);
    assert_int_equal(access(tmp, F_OK), 0);
    assert_int_equal(ident_writer_add(w, "", &r), -EINVAL);
    assert_int_equal(ident_writer_add(w, "/x", &r), -EINVAL);
    r.flags = 1u << 7;
    assert_int_equal(ident_writer_add(w, "x", &r), -EINVAL);
    r.flags = 0;
    assert_int_equal(ident_writer_add(w, "new", &r), 0);
    ident_writer_abort(w);
    assert_int_equal(access(tmp, F_OK), -1);
    l = load_ok(file);
    assert_int_equal(ident_set_count(l), 1);
    assert_non_null(ident_set_get(l, "old"));
    ident_set_free(l);
    /* A writer whose directory is gone fails to open. */
    assert_int_equal(ident_writer_open(&w, "/nonexistent/dir/ident"), -ENOENT);
    l = ident_set_new();
    assert_int_equal(ident_set_save(l, "/nonexistent/dir/ident"), -ENOENT);
    ident_set_free(l);
}

static void test_odd_paths(void **state)
{
    enum { N = 8 };
    static char deep[PATH_MAX + 200];
    static char deep2[PATH_MAX + 200];
    char name255[256], under255[300];
    const char *paths[N];
    struct ident_rec recs[N];
    struct ident_set *s = ident_set_new(), *l;
    size_t k = 0;
    (void)state;
    memset(name255, 'n', 255);
    name255[0] = '\xff';
    name255[254] = '\x80';
    name255[255] = '\0';
    snprintf(under255, sizeof under255, "%s/x y", name255);
    /* A path deeper than PATH_MAX: the walk is descriptor-relative, so such
     * trees exist. */
    deep[0] = '\0';
    while (strlen(deep) < PATH_MAX + 100)
        strcat(deep, deep[0] ? "/dir with space" : "dir with space");
    strcpy(deep2, deep);
    deep2[strlen(deep2) - 3] = '\n';
    paths[k++] = "with space";
    paths[k++] = "line\nbreak";
    paths[k++] = "\xc3\x28 not utf8 \xfe\xfd";
    paths[k++] = "tab\there/\x01\x1f\x7f";
    paths[k++] = name255;
    paths[k++] = under255;
    paths[k++] = deep;
    paths[k++] = deep2;
    for (size_t i = 0; i < N; i++) {
        recs[i] = mkrec(S_IFLNK | 0777, 50 + i, 4);
        recs[i].target = paths[(i + 3) % N]; /* odd targets too */
        assert_int_equal(ident_set_put(s, paths[i], &recs[i]), 0);
    }
    write_all(file, paths, recs, N);
    l = load_ok(file);
    assert_set_equal(s, paths, N, l);
    ident_set_free(l);
    assert_int_equal(ident_set_save(s, file), 0);
    l = load_ok(file);
    assert_set_equal(s, paths, N, l);
    ident_set_free(l);
    ident_set_free(s);
}

/* --- block hashes --- */

static unsigned char *random_bytes(size_t n)
{
    unsigned char *p = malloc(n);
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)rng();
    return p;
}

static int file_with(const unsigned char *data, size_t n)
{
    char p[160];
    int fd;
    snprintf(p, sizeof p, "%s/content", dir);
    fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    unlink(p);
    if (n)
        assert_int_equal(write(fd, data, n), (ssize_t)n);
    return fd;
}

static void check_sizes_and_chunks(size_t n)
{
    static const size_t chunks[] = {1,
                                    7,
                                    4093,
                                    IDENT_BLOCK_SIZE - 1,
                                    IDENT_BLOCK_SIZE,
                                    IDENT_BLOCK_SIZE + 1,
                                    3 * IDENT_BLOCK_SIZE + 17};
    unsigned char *data = random_bytes(n);
    int fd = file_with(data, n);
    uint64_t *want;
    uint32_t nw;
    assert_int_equal(ident_hash_blocks(fd, n, &want, &nw), 0);
    assert_int_equal(nw, (n + IDENT_BLOCK_SIZE - 1) / IDENT_BLOCK_SIZE);
    /* Each block is the XXH3-64 of its bytes, the last one short. */
    for (uint32_t i = 0; i < nw; i++) {
        size_t off = (size_t)i * IDENT_BLOCK_SIZE;
        size_t len = n - off < IDENT_BLOCK_SIZE ? n - off : IDENT_BLOCK_SIZE;
        assert_true(want[i] == XXH3_64bits(data + off, len));
    }
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        struct ident_blocks b;
        size_t off = 0;
        ident_blocks_init(&b);
        while (off < n) {
            /* Vary the chunk size as we go: odd cuts everywhere. */
            size_t k = chunks[(c + off / 5) % (sizeof chunks / sizeof chunks[0])];
            if (k > n - off)
                k = n - off;
            ident_blocks_feed(&b, data + off, k);
            off += k;
        }
        ident_blocks_finish(&b);
        assert_int_equal(b.n, nw);
        if (nw)
            assert_memory_equal(b.v, want, nw * sizeof *want);
        ident_blocks_free(&b);
    }
    free(want);
    free(data);
    close(fd);
}

static void test_blocks_feed_equals_hash_blocks(void **state)
{
    (void)state;
    check_sizes_and_chunks(0);
    check_sizes_and_chunks(1);
    check_sizes_and_chunks(IDENT_BLOCK_SIZE - 1);
    check_sizes_and_chunks(IDENT_BLOCK_SIZE);     /* exact: no empty last block */
    check_sizes_and_chunks(2 * IDENT_BLOCK_SIZE); /* exact multiple */
    check_sizes_and_chunks(IDENT_BLOCK_MIN + 12345);
}

static void test_blocks_holes_equal_zeros(void **state)
{
    const size_t n = 5 * IDENT_BLOCK_SIZE + 999;
    unsigned char *data = random_bytes(n);
    struct ident_blocks a, b;
    uint64_t *got;
    uint32_t ng;
    int fd;
    (void)state;
    /* data | hole across two block boundaries | data | hole to the end */
    memset(data + 1000, 0, 2 * IDENT_BLOCK_SIZE + 5);
    memset(data + 4 * IDENT_BLOCK_SIZE, 0, n - 4 * IDENT_BLOCK_SIZE);
    ident_blocks_init(&a);
    ident_blocks_feed(&a, data, n);
    ident_blocks_finish(&a);
    ident_blocks_init(&b);
    ident_blocks_feed(&b, data, 1000);
    ident_blocks_zeros(&b, 2 * IDENT_BLOCK_SIZE + 5);
    ident_blocks_feed(&b, data + 1000 + 2 * IDENT_BLOCK_SIZE + 5,
                      4 * IDENT_BLOCK_SIZE - (1000 + 2 * IDENT_BLOCK_SIZE + 5));
    ident_blocks_zeros(&b, n - 4 * IDENT_BLOCK_SIZE);
    ident_blocks_finish(&b);
    assert_int_equal(a.n, 6);
    assert_int_equal(b.n, 6);
    assert_memory_equal(a.v, b.v, 6 * sizeof(uint64_t));

    /* A sparse file read by pread hashes the same. */
    fd = file_with(data, 4 * IDENT_BLOCK_SIZE);
    assert_int_equal(ftruncate(fd, (off_t)n), 0);
    assert_int_equal(ident_hash_blocks(fd, n, &got, &ng), 0);
    assert_int_equal(ng, 6);
    assert_memory_equal(got, a.v, 6 * sizeof(uint64_t));
    free(got);
    /* A file shorter than asked changed under us. */
    got = NULL;
    assert_int_equal(ident_hash_blocks(fd, n + 1, &got, &ng), -ESTALE);
    assert_null(got);
    close(fd);
    ident_blocks_free(&a);
    ident_blocks_free(&b);
    free(data);
}

static void test_blocks_zeros_hash_and_push(void **state)
{
    /* A hole's block hash without hashing it: the same as hashing zeros, for
     * a whole block (cached) and a short one; a pushed hash is a block. */
    unsigned char *zeros = calloc(1, IDENT_BLOCK_SIZE);
    struct ident_blocks a, b;
    (void)state;
    assert_non_null(zeros);
    assert_true(ident_zeros_hash(IDENT_BLOCK_SIZE) == XXH3_64bits(zeros, IDENT_BLOCK_SIZE));
    assert_true(ident_zeros_hash(IDENT_BLOCK_SIZE) == XXH3_64bits(zeros, IDENT_BLOCK_SIZE));
    assert_true(ident_zeros_hash(1) == XXH3_64bits(zeros, 1));
    assert_true(ident_zeros_hash(IDENT_BLOCK_SIZE - 4096) ==
                XXH3_64bits(zeros, IDENT_BLOCK_SIZE - 4096));
    ident_blocks_init(&a);
    ident_blocks_init(&b);
    for (int i = 0; i < 3; i++)
        ident_blocks_feed(&a, zeros, IDENT_BLOCK_SIZE);
    ident_blocks_feed(&a, zeros, 777);
    ident_blocks_finish(&a);
    ident_blocks_push(&b, ident_zeros_hash(IDENT_BLOCK_SIZE));
    ident_blocks_zeros(&b, 2 * IDENT_BLOCK_SIZE); /* at a boundary: whole blocks only */
    ident_blocks_push(&b, ident_zeros_hash(777));
    ident_blocks_finish(&b); /* nothing pending: no empty block */
    assert_int_equal(a.n, 4);
    assert_int_equal(b.n, 4);
    assert_memory_equal(a.v, b.v, 4 * sizeof(uint64_t));
    ident_blocks_free(&a);
    ident_blocks_free(&b);
    free(zeros);
}

static void test_blocks_change_in_one_place(void **state)
{
    /* What the commit relies on: a change in one block changes only that
     * block's hash; an append changes only the last block and adds more. */
    const size_t n = 8 * IDENT_BLOCK_SIZE + 100;
    unsigned char *data = random_bytes(n + IDENT_BLOCK_SIZE);
    struct ident_blocks a, b, c;
    (void)state;
    ident_blocks_init(&a);
    ident_blocks_feed(&a, data, n);
    ident_blocks_finish(&a);
    data[3 * IDENT_BLOCK_SIZE + 77] ^= 1;
    ident_blocks_init(&b);
    ident_blocks_feed(&b, data, n);
    ident_blocks_finish(&b);
    data[3 * IDENT_BLOCK_SIZE + 77] ^= 1;
    ident_blocks_init(&c);
    ident_blocks_feed(&c, data, n + IDENT_BLOCK_SIZE);
    ident_blocks_finish(&c);
    assert_int_equal(a.n, 9);
    assert_int_equal(b.n, 9);
    assert_int_equal(c.n, 10);
    for (uint32_t i = 0; i < 9; i++) {
        assert_true((a.v[i] != b.v[i]) == (i == 3));
        assert_true((a.v[i] != c.v[i]) == (i == 8));
    }
    ident_blocks_free(&a);
    ident_blocks_free(&b);
    ident_blocks_free(&c);
    free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rec_from_stat),
        cmocka_unit_test_setup_teardown(test_round_trip_every_kind, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefix_compression_deep_and_shallow, setup, teardown),
        cmocka_unit_test(test_put_replace_remove_get),
        cmocka_unit_test_setup_teardown(test_put_remove_churn, setup, teardown),
        cmocka_unit_test(test_marks_and_unseen_children_first),
        cmocka_unit_test(test_unseen_callback_may_remove),
        cmocka_unit_test_setup_teardown(test_writer_then_load_equals_set_and_save, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_and_corrupt_files_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sealed_but_invalid_records_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_set, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_rejects_and_abort_keeps_old, setup, teardown),
        cmocka_unit_test_setup_teardown(test_odd_paths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blocks_feed_equals_hash_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blocks_holes_equal_zeros, setup, teardown),
        cmocka_unit_test(test_blocks_zeros_hash_and_push),
        cmocka_unit_test(test_blocks_change_in_one_place),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
