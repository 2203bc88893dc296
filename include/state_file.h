/* state_file.h: the small records kept in a directory of state_dir (the
 * journal's moves/, the reclaimer's reclaim/), written atomically and read
 * back. A record is "<key>.json"; its temp ".<key>.tmp" (a key never ends in
 * ".tmp", so the two names never meet). Every function here may wait for the
 * disk: the daemon calls the writing ones on its journal writer thread
 * (journal_writer.h), never on the loop. */
#ifndef HOSTAGENT_STATE_FILE_H
#define HOSTAGENT_STATE_FILE_H

#include <stdbool.h>
#include <stddef.h>

/* Writes text (and a newline) as the record `key` in dir: into the temp,
 * fsync, renamed over the record, fsync of dir. With slot > 0 the temp is a
 * reserved slot (state_file_reserve): overwritten in place and kept at its
 * size (zeros after the text: readers stop at the first NUL; grown to slot
 * when too small), then exchanged with the record (renameat2
 * RENAME_EXCHANGE; the old record becomes the next slot), so that a full
 * filesystem cannot stop the write; the temp stays after a failure (the next
 * try's slot). With slot 0 the temp is written afresh and removed after a
 * failure. 0 or -errno (the write's own error). */
int state_file_write(const char *dir, const char *key, const char *text, size_t slot);

/* Grows the temp of `key` to size bytes of zeros (real blocks, not holes)
 * and makes it durable: the slot of the record's later writes. Removed on a
 * failure. 0 or -errno. */
int state_file_reserve(const char *dir, const char *key, size_t size);

/* Removes the record `key` (and, with temp, its temp); dir is fsynced when
 * the record was there. */
void state_file_remove(const char *dir, const char *key, bool temp);

/* How state_file_scan reads a directory. */
struct state_scan {
    size_t key_max;   /* longer keys are not records */
    size_t max_bytes; /* a larger file is unreadable */
    /* The daemon, which holds state_dir: temps of writes cut short are
     * removed and unreadable records renamed "<name>.corrupt"; without it
     * (a reader such as `hostagent status`) nothing is changed. */
    bool repair;
    bool keep_slots;        /* a temp whose record exists is its slot: kept */
    const char *unreadable; /* the log line for a record set aside */
    /* Takes a record's text (up to its first NUL); false when it cannot be
     * read (the record is then unreadable). */
    bool (*take)(void *arg, const char *key, const char *text);
    void *arg;
};

/* Reads every record of dir, in directory order. 0 (with *unreadable the
 * number of records that could not be read), or -errno when dir cannot be
 * opened. */
int state_file_scan(const char *dir, const struct state_scan *how, unsigned *unreadable);

#endif
