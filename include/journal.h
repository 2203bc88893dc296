/* journal.h: the move journal in state_dir: one small JSON file per move,
 * written atomically (temp file, fsync, rename, fsync of the directory) at
 * acceptance, at every phase change and at the end, so that a restarted agent
 * knows what each move was doing and which answers were never delivered. The
 * running agent holds an exclusive lock on state_dir.
 *
 * Names in state_dir/moves: a record is "<moveId>.json", its temp (and
 * reserved slot) ".<moveId>.tmp". No record name ends in ".tmp" and no temp
 * name in ".json", so every moveId of the contract (also one starting with
 * '.') has its own two names. */
#ifndef HOSTAGENT_JOURNAL_H
#define HOSTAGENT_JOURNAL_H

#include "config.h"
#include "journal_writer.h"
#include "move_state.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

/* A restarted agent continues a move's seq from the journal plus this much,
 * so its frames always follow whatever was sent after the last write. */
#define JOURNAL_SEQ_HEADROOM (1ull << 24)

struct journal {
    char *dir;   /* state_dir */
    char *moves; /* state_dir/moves */
    int lock_fd;
};

/* A directory's identity as seen on disk (device and inode). */
struct journal_id {
    bool known;
    uint64_t dev, ino;
};

/* The reclaim directory a deferred reclaim renames the source into, named
 * by the worker before the first rename (engine on_reclaim), so that
 * recovery finds the source there; `undone` once it was renamed back. */
struct journal_reclaim {
    char *dir; /* NULL: none */
    bool in_mount, undone;
    struct journal_id id;
    uint64_t entries, bytes;
};

/* Everything needed to answer a move, or to finish or undo it after a crash. */
struct journal_rec {
    char move_id[MOVE_ID_MAX + 1];
    char server_name[SERVER_NAME_MAX + 1];
    char *old_path, *new_path; /* as requested */
    char *src, *dst;           /* resolved */
    /* Where the answer that ends the move goes (NULL: none wanted). For a
     * prepared move: the prepare's reply until it is ready, none while it
     * rests in ready (a move ended then has its terminal frame only), the
     * commit's while a commit runs. */
    char *reply;
    bool rename;
    enum verify_mode verify;
    struct journal_id src_id; /* oldPath at acceptance */
    /* The directory the move writes into: the one it created (recorded before
     * anything is written into it) or the empty one that was there at
     * acceptance. Recovery removes nothing under a newPath of another identity. */
    struct journal_id dst_id;
    bool dst_preexisted;  /* newPath was an empty directory */
    struct stat dst_orig; /* its mode, owner and times then */
    char **made_parents;  /* ancestors of dst missing at acceptance, outermost first */
    size_t n_made;
    uint64_t started_at_ms, ended_at_ms, seq;
    enum move_phase phase;
    struct move_counters count; /* phase_done and phase_total are not kept */
    enum move_code code;
    char error[MOVE_ERROR_MAX];
    char *answer;   /* the answer's data object, printed; NULL until the end */
    bool delivered; /* the manager acknowledged the answer (a pong after it) */
    /* Ended (and answered) while its worker was stuck on a disk that does not
     * answer: the partial copy at dst still has to be rolled back. */
    bool rollback_pending;
    enum move_phase rollback_phase; /* the phase it was in then */
    /* server.move_prepare: the copy rests in phase ready until its commit. */
    bool prepared;
    uint64_t ready_at_ms; /* wall clock, entering ready (prepare_ttl counts from it); 0 before */
    char *ready_reply;    /* the prepare's reply subject, once ready (NULL: none wanted) */
    char *ready_answer;   /* the prepare's answer at ready, printed; NULL before */
    bool ready_delivered; /* the manager acknowledged it (a pong after it) */
    struct journal_reclaim reclaim;
};

/* Creates state_dir (and moves/) if needed and takes the lock. Fails with a
 * sentence in why when another agent holds it. 0 or negative errno. */
int journal_open(struct journal *j, const char *state_dir, char *why, size_t whysz);
void journal_close(struct journal *j);

/* Writes (replaces) the record of rec->move_id atomically. 0 or -errno.
 * When the move's reserved slot is there (journal_reserve) and large enough,
 * the text is written into it and swapped with the record
 * (renameat2 RENAME_EXCHANGE): no new inode or block is needed, so a full
 * state_dir cannot make the write fail (on filesystems that overwrite in
 * place; copy-on-write ones may still say ENOSPC). The old record becomes
 * the next slot. */
int journal_write(const struct journal *j, const struct journal_rec *rec);

/* journal_write in two steps, for a thread that must hold no lock while it
 * writes (a move's worker, move.c): the record's text (the caller frees
 * it), taken while rec is stable; then that text written as the record of
 * move_id in the directory `moves` (a journal's j->moves, copied: the
 * writer may outlive the journal struct). 0 or -errno. */
char *journal_format(const struct journal_rec *rec);
int journal_write_text(const char *moves, const char *move_id, const char *text);

/* On the journal writer (journal_writer.h; w NULL: here and now): rec's
 * record, its text taken now (the caller may change rec at once); with
 * reserve (acceptance) its slot too (journal_reserve), and on a failure the
 * record and its slot are removed. done(arg, rc) follows on the loop (may be
 * NULL: nothing waits for it). Records of one move are written in the order
 * they were queued. */
void journal_write_queued(struct journal_writer *w, const struct journal *j,
                          const struct journal_rec *rec, bool reserve, jw_done_fn done, void *arg);
/* journal_remove and journal_ident_remove, queued on the writer the same way. */
void journal_remove_queued(struct journal_writer *w, const struct journal *j, const char *move_id);
void journal_ident_remove_queued(struct journal_writer *w, const struct journal *j,
                                 const char *move_id);
/* A worker's record: text (taken, a journal_format) queued on the writer's
 * shared block, to wait for with journal_writer_wait. NULL when the writer
 * is closing. */
struct jw_job *journal_post_text(struct jw_shared *s, const char *moves, const char *move_id,
                                 char *text);

/* Reserves, once rec's record exists, the slot for its later writes: room
 * for the record with its outcome (the error text and the answer). Called at
 * acceptance; a failure means the outcome might not be recordable later, and
 * the move is refused. 0 or -errno. */
int journal_reserve(const struct journal *j, const struct journal_rec *rec);

/* Fills id from lstat of path (known = false when it cannot be examined). */
void journal_id_of(struct journal_id *id, const char *path);

/* The identity record of a prepared move's copy: "<state_dir>/<moveId>.ident"
 * (beside moves/, so the journal's scan never reads it). */
void journal_ident_path(const struct journal *j, const char *move_id, char *buf, size_t size);

/* Removes a prepared move's identity record (when the move ends). */
void journal_ident_remove(const struct journal *j, const char *move_id);

/* At start, after the records were loaded: removes every "<id>.ident" in
 * state_dir whose id keep() does not claim (its move ended or is unknown: a
 * crash between the move's end and the file's removal). */
void journal_sweep_idents(const struct journal *j, bool (*keep)(void *arg, const char *move_id),
                          void *arg);

/* Removes a move's record and its slot. */
void journal_remove(const struct journal *j, const char *move_id);

/* Calls fn for every readable record "*.json" (fn takes ownership: free it
 * with journal_rec_free). A file that cannot be parsed is logged and renamed
 * to "<name>.corrupt": nothing is deleted on a guess. A temp ".<id>.tmp" is
 * kept as the slot of its record when "<id>.json" exists, else removed (a
 * first write cut short). Returns the number of records set aside. */
unsigned journal_load(const struct journal *j, void (*fn)(void *arg, struct journal_rec *rec),
                      void *arg);

/* The same without the lock and without touching anything (for `hostagent
 * status` while no daemon runs): unreadable files are only counted. 0, or
 * -errno when state_dir/moves cannot be read. */
int journal_read(const char *state_dir, void (*fn)(void *arg, struct journal_rec *rec), void *arg,
                 unsigned *unreadable);

/* The MoveState a record stands for (counters, phase, outcome; no rate).
 * Clear st with move_state_clear. */
void journal_rec_state(const struct journal_rec *r, struct move_state *st);

void journal_rec_free(struct journal_rec *rec);

#endif
