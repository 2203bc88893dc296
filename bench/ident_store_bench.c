/* ident_store_bench.c: the measurement of the preparing copy's identity
 * record (docs/design.md): writes N records of a game-server-like tree (or
 * the entries of a real directory) with the streaming writer and from a set,
 * loads them back cold and warm, looks every path up, and prints the file's
 * size per entry and the times (medians of --runs runs). Checks what it
 * loads: exits 1 when a record is missing or differs.
 *
 *   ident_store_bench [--entries N] [--runs R] [--copied] [--dir D] [--tree T]
 *
 * --copied: the tree was copied once before (ctimes in walk order, mtimes
 * scattered) instead of written in place (ctime == mtime); --dir: where the
 * file goes (default /var/tmp, a disk like state_dir); --tree: record the
 * real entries below T (lstat, readlink; no block hashes) instead. */
#include "ident_store.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct tree {
    char **path;
    struct ident_rec *rec;
    size_t n, cap;
    uint64_t n_blocks, files_with_blocks;
    /* the generator's state */
    uint64_t rng, ino;
    int64_t ctime;
    bool copied;
};

static struct tree T;

static uint64_t rnd(void)
{
    T.rng ^= T.rng << 13;
    T.rng ^= T.rng >> 7;
    T.rng ^= T.rng << 17;
    return T.rng;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static bool full(void)
{
    return T.n == T.cap;
}

#define NS 1000000000LL
#define DAY (86400 * NS)
static const int64_t T_NOW = 1735000000 * NS; /* the tree's "now" */

/* One entry: its inode from the parent's range (readdir order is not
 * creation order), its times from [now - age, now), with the ctime of the
 * scenario. */
static void emit(const char *path, uint32_t mode, uint64_t size, uint64_t ino_base, uint64_t span,
                 int64_t age)
{
    struct ident_rec *r;
    if (full())
        return;
    r = &T.rec[T.n];
    memset(r, 0, sizeof *r);
    T.path[T.n] = strdup(path);
    r->mode = mode;
    r->uid = r->gid = 988;
    r->nlink = S_ISDIR(mode) ? 2 : 1;
    r->dev = 0x10302;
    r->ino = ino_base + rnd() % (span ? span : 1);
    r->size = size;
    r->mtime_ns = T_NOW - (int64_t)(rnd() % (uint64_t)age);
    if (T.copied) {
        T.ctime += 5000 + (int64_t)(rnd() % 40000); /* the copy's pace: ~25 us an entry */
        r->ctime_ns = T.ctime;
    } else {
        r->ctime_ns = rnd() % 10 ? r->mtime_ns : r->mtime_ns + (int64_t)(rnd() % (uint64_t)DAY);
    }
    r->flags = IDENT_COPIED;
    if (S_ISREG(mode) && size >= IDENT_BLOCK_MIN) {
        uint32_t nb = (uint32_t)((size + IDENT_BLOCK_SIZE - 1) / IDENT_BLOCK_SIZE);
        uint64_t *b = malloc(nb * sizeof *b);
        for (uint32_t i = 0; i < nb; i++)
            b[i] = rnd();
        r->n_blocks = nb;
        r->blocks = b;
        T.n_blocks += nb;
        T.files_with_blocks++;
    }
    T.n++;
}

/* A directory and the range of inodes its k entries get. */
static uint64_t dir(const char *path, int64_t age, uint64_t k)
{
    uint64_t base;
    emit(path, S_IFDIR | 0755, 4096, T.ino, 1, age);
    base = T.ino + 1;
    T.ino += k + 1 + rnd() % 64;
    return base;
}

static void file(const char *path, uint64_t size, uint64_t base, uint64_t k, int64_t age)
{
    emit(path, S_IFREG | 0644, size, base, k, age);
}

static void world(const char *root, const char *sub, int radius, int players)
{
    char p[PATH_MAX], d[PATH_MAX];
    static const char *kinds[] = {"region", "entities", "poi"};
    int side = 2 * radius + 1;
    uint64_t b;
    snprintf(d, sizeof d, "%s%s", root, sub);
    b = dir(root, 30 * DAY, 12);
    snprintf(p, sizeof p, "%s/level.dat", root);
    file(p, 3000 + rnd() % 2000, b, 12, DAY);
    snprintf(p, sizeof p, "%s/level.dat_old", root);
    file(p, 3000 + rnd() % 2000, b, 12, DAY);
    snprintf(p, sizeof p, "%s/session.lock", root);
    file(p, 3, b, 12, DAY);
    snprintf(p, sizeof p, "%s/uid.dat", root);
    file(p, 16, b, 12, 400 * DAY);
    if (sub[0])
        dir(d, 30 * DAY, 3);
    for (size_t k = 0; k < 3; k++) {
        char kd[PATH_MAX];
        snprintf(kd, sizeof kd, "%s/%s", d, kinds[k]);
        b = dir(kd, 30 * DAY, (uint64_t)side * side);
        for (int x = -radius; x <= radius; x++)
            for (int y = -radius; y <= radius; y++) {
                /* Region files: 1-12 MiB with block hashes; the others small. */
                uint64_t size = k == 0 ? (1u << 20) + rnd() % (11u << 20) : 4096 + rnd() % 60000;
                snprintf(p, sizeof p, "%s/r.%d.%d.mca", kd, x, y);
                file(p, size, b, (uint64_t)side * side, 60 * DAY);
            }
    }
    if (players > 0) {
        static const char *pk[] = {"playerdata", "stats", "advancements"};
        for (size_t k = 0; k < 3; k++) {
            snprintf(d, sizeof d, "%s/%s", root, pk[k]);
            b = dir(d, 30 * DAY, (uint64_t)players * 2);
            for (int i = 0; i < players; i++) {
                unsigned long long u1 = rnd(), u2 = rnd();
                snprintf(p, sizeof p, "%s/%08llx-%04llx-4%03llx-a%03llx-%012llx.%s", d, u1 >> 32,
                         u1 >> 16 & 0xffff, u1 & 0xfff, u2 >> 52, u2 & 0xffffffffffffull,
                         k == 0 ? "dat" : "json");
                file(p, 500 + rnd() % 8000, b, (uint64_t)players * 2, 300 * DAY);
                if (k == 0) {
                    strcat(p, "_old");
                    file(p, 500 + rnd() % 8000, b, (uint64_t)players * 2, 300 * DAY);
                }
            }
        }
    }
}

/* A game server: jars and libraries, logs, three worlds, plugins with their
 * data; dynmap's tiles fill the rest up to T.cap. */
static void game_tree(void)
{
    static const char *top[] = {"server.properties", "eula.txt",
                                "paper.jar",         "bukkit.yml",
                                "spigot.yml",        "commands.yml",
                                "help.yml",          "permissions.yml",
                                "ops.json",          "whitelist.json",
                                "banned-ips.json",   "banned-players.json",
                                "usercache.json",    "version_history.json"};
    static const char *plugins[] = {
        "Essentials",  "LuckPerms",       "WorldEdit",       "WorldGuard", "Vault",
        "CoreProtect", "Multiverse-Core", "GriefPrevention", "ViaVersion", "PlaceholderAPI",
        "TAB",         "Citizens",        "mcMMO",           "Jobs",       "ChestShop",
        "DiscordSRV",  "dynmap"};
    char p[PATH_MAX], q[PATH_MAX];
    uint64_t b = 1000;
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
        file(top[i], 100 + rnd() % 50000, b, 40, 200 * DAY);
    b = dir("cache", 200 * DAY, 1);
    file("cache/mojang_1.20.4.jar", 48u << 20, b, 1, 200 * DAY);
    dir("libraries", 200 * DAY, 1);
    dir("libraries/org", 200 * DAY, 30);
    for (int g = 0; g < 30; g++) {
        static const char *cls[] = {
            "", "-sources", "-javadoc", "-natives-linux", "-natives-windows", "-natives-macos"};
        uint64_t gb;
        snprintf(q, sizeof q, "libraries/org/group%d", g);
        dir(q, 200 * DAY, 1);
        snprintf(q, sizeof q, "libraries/org/group%d/artifact-%d", g, g);
        dir(q, 200 * DAY, 1);
        snprintf(q, sizeof q, "libraries/org/group%d/artifact-%d/1.%d.%d", g, g, g % 7, g % 3);
        gb = dir(q, 200 * DAY, 6);
        for (int j = 0; j < 6; j++) {
            snprintf(p, sizeof p, "%s/artifact-%d-1.%d.%d%s.jar", q, g, g % 7, g % 3, cls[j]);
            file(p, 20000 + rnd() % 3000000, gb, 6, 200 * DAY);
        }
    }
    b = dir("logs", DAY, 600);
    for (int i = 0; i < 600; i++) {
        snprintf(p, sizeof p, "logs/2024-%02d-%02d-%d.log.gz", 1 + i / 50 % 12, 1 + i % 28,
                 1 + i % 3);
        file(p, 2000 + rnd() % 200000, b, 600, 365 * DAY);
    }
    world("world", "", 20, 2500);
    world("world_nether", "/DIM-1", 10, 0);
    world("world_the_end", "/DIM1", 7, 0);
    b = dir("plugins", 100 * DAY, 40);
    for (size_t i = 0; i < sizeof plugins / sizeof plugins[0] && !full(); i++) {
        uint64_t pb;
        snprintf(p, sizeof p, "plugins/%s.jar", plugins[i]);
        file(p, 100000 + rnd() % 5000000, b, 40, 100 * DAY);
        snprintf(q, sizeof q, "plugins/%s", plugins[i]);
        pb = dir(q, 100 * DAY, 20);
        snprintf(p, sizeof p, "%s/config.yml", q);
        file(p, 1000 + rnd() % 30000, pb, 20, 100 * DAY);
        if (strcmp(plugins[i], "Essentials") == 0) {
            char u[PATH_MAX];
            uint64_t ub;
            snprintf(u, sizeof u, "%s/userdata", q);
            ub = dir(u, 30 * DAY, 2500);
            for (int k = 0; k < 2500; k++) {
                unsigned long long u1 = rnd(), u2 = rnd();
                snprintf(p, sizeof p, "%s/%08llx-%04llx-4%03llx-a%03llx-%012llx.yml", u, u1 >> 32,
                         u1 >> 16 & 0xffff, u1 & 0xfff, u2 >> 52, u2 & 0xffffffffffffull);
                file(p, 300 + rnd() % 3000, ub, 2500, 300 * DAY);
            }
        }
        if (strcmp(plugins[i], "CoreProtect") == 0) {
            snprintf(p, sizeof p, "%s/database.db", q);
            file(p, 900u << 20, pb, 20, DAY);
        }
        if (strcmp(plugins[i], "dynmap") == 0) {
            static const char *worlds[] = {"world", "world_nether", "world_the_end"};
            static const char *maps[] = {"flat", "surface", "cave", "t", "ct"};
            snprintf(q, sizeof q, "plugins/dynmap/web");
            dir(q, 100 * DAY, 5);
            snprintf(q, sizeof q, "plugins/dynmap/web/tiles");
            dir(q, 100 * DAY, 3);
            for (int w = 0; w < 3 && !full(); w++) {
                for (int m = 0; m < 5 && !full(); m++) {
                    snprintf(q, sizeof q, "plugins/dynmap/web/tiles/%s/%s", worlds[w], maps[m]);
                    if (m == 0) {
                        char wd[PATH_MAX];
                        snprintf(wd, sizeof wd, "plugins/dynmap/web/tiles/%s", worlds[w]);
                        dir(wd, 100 * DAY, 5);
                    }
                    dir(q, 100 * DAY, 400);
                    for (int rx = -10; rx < 10 && !full(); rx++)
                        for (int ry = -10; ry < 10 && !full(); ry++) {
                            char rd[PATH_MAX];
                            int tiles = 50 + (int)(rnd() % 300);
                            uint64_t rb;
                            snprintf(rd, sizeof rd, "%s/%d_%d", q, rx, ry);
                            rb = dir(rd, 30 * DAY, (uint64_t)tiles);
                            for (int t = 0; t < tiles && !full(); t++) {
                                int zoom = t % 7 == 0 ? 1 + t % 3 : 0;
                                snprintf(p, sizeof p, "%s/%.*s%s%d_%d.png", rd, zoom, "zzz",
                                         zoom ? "_" : "", rx * 32 + t / 16, ry * 32 + t % 16);
                                file(p, 1000 + rnd() % 30000, rb, (uint64_t)tiles, 30 * DAY);
                            }
                        }
                }
            }
        }
    }
}

static size_t tree_prefix_len;

static int tree_visit(const char *fpath, const struct stat *st, int flag, struct FTW *ftw)
{
    struct ident_rec *r;
    (void)flag;
    if (ftw->level == 0)
        return 0;
    if (full())
        return 1;
    r = &T.rec[T.n];
    ident_rec_from_stat(r, st);
    r->flags = IDENT_COPIED;
    T.path[T.n] = strdup(fpath + tree_prefix_len);
    if (S_ISLNK(st->st_mode)) {
        char buf[PATH_MAX];
        ssize_t k = readlink(fpath, buf, sizeof buf - 1);
        if (k >= 0) {
            buf[k] = '\0';
            r->target = strdup(buf);
        }
    }
    T.n++;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static void drop_cache(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        (void)fdatasync(fd);
        (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
}

static int count_cb(void *arg, const char *rel, const struct ident_rec *r)
{
    (void)rel;
    (void)r;
    (*(size_t *)arg)++;
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = 200000;
    int runs = 5, rc;
    const char *where = "/var/tmp", *tree = NULL;
    char dirbuf[PATH_MAX], path[PATH_MAX + 16];
    double t_write[32], t_save[32], t_cold[32], t_warm[32], t_get[32], t_put[32];
    struct stat st;
    struct ident_set *s = NULL, *l = NULL;
    uint64_t blocks_bytes;
    size_t heap_before;
    struct mallinfo2 mi;

    T.rng = 0x2545f4914f6cdd1dull;
    T.ino = 131073;
    T.ctime = T_NOW + DAY;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--entries") == 0 && i + 1 < argc)
            n = strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
            where = argv[++i];
        else if (strcmp(argv[i], "--tree") == 0 && i + 1 < argc)
            tree = argv[++i];
        else if (strcmp(argv[i], "--copied") == 0)
            T.copied = true;
        else {
            fprintf(stderr, "usage: %s [--entries N] [--runs R] [--copied] [--dir D] [--tree T]\n",
                    argv[0]);
            return 2;
        }
    }
    if (runs < 1 || runs > 32 || n == 0) {
        fprintf(stderr, "ident_store_bench: --runs 1..32, --entries > 0\n");
        return 2;
    }
    T.cap = n;
    T.path = calloc(n, sizeof *T.path);
    T.rec = calloc(n, sizeof *T.rec);
    if (tree) {
        tree_prefix_len = strlen(tree) + 1;
        nftw(tree, tree_visit, 64, FTW_PHYS | FTW_MOUNT);
    } else {
        game_tree();
    }
    n = T.n;
    snprintf(dirbuf, sizeof dirbuf, "%s/ident_bench.XXXXXX", where);
    if (!mkdtemp(dirbuf)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/ident", dirbuf);

    for (int r = 0; r < runs; r++) {
        struct ident_writer *w;
        double t0 = now_ms();
        if ((rc = ident_writer_open(&w, path)) < 0)
            goto fail;
        for (size_t i = 0; i < n; i++)
            if ((rc = ident_writer_add(w, T.path[i], &T.rec[i])) < 0)
                goto fail;
        if ((rc = ident_writer_finish(w)) < 0)
            goto fail;
        t_write[r] = now_ms() - t0;

        drop_cache(path);
        t0 = now_ms();
        if ((rc = ident_set_load(&l, path)) < 0)
            goto fail;
        t_cold[r] = now_ms() - t0;
        ident_set_free(l);

        mi = mallinfo2();
        heap_before = mi.uordblks;
        t0 = now_ms();
        if ((rc = ident_set_load(&l, path)) < 0)
            goto fail;
        t_warm[r] = now_ms() - t0;

        t0 = now_ms();
        for (size_t i = 0; i < n; i++) {
            const struct ident_rec *g = ident_set_get(l, T.path[i]);
            if (!g || g->ino != T.rec[i].ino || g->mtime_ns != T.rec[i].mtime_ns ||
                g->ctime_ns != T.rec[i].ctime_ns || g->n_blocks != T.rec[i].n_blocks) {
                fprintf(stderr, "ident_store_bench: %s differs after loading\n", T.path[i]);
                return 1;
            }
        }
        t_get[r] = now_ms() - t0;
        if (ident_set_count(l) != n) {
            fprintf(stderr, "ident_store_bench: %zu records loaded, %zu written\n",
                    ident_set_count(l), n);
            return 1;
        }
        t0 = now_ms();
        if ((rc = ident_set_save(l, path)) < 0)
            goto fail;
        t_save[r] = now_ms() - t0;
        ident_set_free(l);
        l = NULL;

        ident_set_free(s);
        s = ident_set_new();
        t0 = now_ms();
        for (size_t i = 0; i < n; i++)
            if ((rc = ident_set_put(s, T.path[i], &T.rec[i])) < 0)
                goto fail;
        t_put[r] = now_ms() - t0;
    }
    if ((rc = ident_set_load(&l, path)) < 0)
        goto fail;
    mi = mallinfo2();
    {
        size_t unseen = 0;
        double t0 = now_ms(), t_unseen;
        ident_set_each_unseen(l, count_cb, &unseen);
        t_unseen = now_ms() - t0;
        if (unseen != n)
            return 1;
        if (stat(path, &st) != 0) {
            rc = -errno;
            goto fail;
        }
        blocks_bytes = T.n_blocks * 8;
        printf("ident_store_bench: %zu entries (%s), file in %s, medians of %d runs\n", n,
               tree ? tree : (T.copied ? "game-server tree, copied before" : "game-server tree"),
               where, runs);
        printf("  file:   %lld bytes = %.1f bytes/entry; without the block hashes of %llu files "
               "(%llu bytes): %.1f bytes/entry\n",
               (long long)st.st_size, (double)st.st_size / (double)n,
               (unsigned long long)T.files_with_blocks, (unsigned long long)blocks_bytes,
               (double)((uint64_t)st.st_size - blocks_bytes) / (double)n);
        printf("  memory: %.1f MB for the loaded set (%.0f bytes/entry)\n",
               (double)(mi.uordblks - heap_before) / 1e6,
               (double)(mi.uordblks - heap_before) / (double)n);
        printf("  write (streaming writer, fsync, rename): %.1f ms\n", median(t_write, runs));
        printf("  save (from a set):                       %.1f ms\n", median(t_save, runs));
        printf("  load, cold cache:                        %.1f ms\n", median(t_cold, runs));
        printf("  load, warm cache:                        %.1f ms\n", median(t_warm, runs));
        printf("  lookup of every entry:                   %.1f ms (%.0f ns each)\n",
               median(t_get, runs), median(t_get, runs) * 1e6 / (double)n);
        printf("  put of every entry into a new set:       %.1f ms\n", median(t_put, runs));
        printf("  each_unseen over every entry:            %.1f ms\n", t_unseen);
    }
    ident_set_free(l);
    ident_set_free(s);
    unlink(path);
    rmdir(dirbuf);
    for (size_t i = 0; i < n; i++) {
        free(T.path[i]);
        free((void *)T.rec[i].blocks);
        free((void *)T.rec[i].target);
    }
    free(T.path);
    free(T.rec);
    return 0;
fail:
    fprintf(stderr, "ident_store_bench: %s\n", strerror(-rc));
    return 1;
}
