/* journal_writer.h: the one thread that writes the records of state_dir
 * (the journal's and the reclaimer's), so that the loop never waits for
 * that disk: a slow or hung state_dir stops no ping, heartbeat or frame.
 *
 * Jobs run one at a time, in the order they were queued: a later record of
 * a move is never overtaken by an earlier one, and no two writes of one
 * file ever run at once (one record, one writer). The loop queues a job with
 * a completion called back on the loop (journal_writer_submit): what
 * depends on the record (an answer, a frame, the next step) is done there,
 * once it is written. A move's worker queues its own records on the same
 * thread and waits for each (journal_writer_post, journal_writer_wait).
 *
 * A job's run sees only its own data (copies: the text of a record, the
 * directory's name), never the loop's memory, so the thread can be left
 * behind at exit (stuck on a disk that does not answer) like a worker: the
 * loop and the thread share one reference-counted block (struct jw_shared,
 * a bg_thread.h block), and the thread wakes the loop only through the
 * embedded async handle, under that block's lock, until the loop lets go. */
#ifndef HOSTAGENT_JOURNAL_WRITER_H
#define HOSTAGENT_JOURNAL_WRITER_H

#include "bg_thread.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* What a job does, on the writer thread: 0 or -errno. */
typedef int (*jw_run_fn)(void *data);
/* Frees a job's data (after it ran, or when it never will). May be NULL. */
typedef void (*jw_free_fn)(void *data);
/* On the loop, exactly once per submitted job: rc is run's, or -ECANCELED
 * when the writer was closed before the job's result reached the loop (then
 * only free what arg holds: nothing may be sent any more). */
typedef void (*jw_done_fn)(void *arg, int rc);

struct jw_shared;
struct jw_job;

struct journal_writer {
    uv_loop_t *loop;
    struct bg_thread bg; /* the thread; its handle: jobs done, the thread exited */
    struct jw_shared *s;
    unsigned pending; /* loop: submitted jobs whose done has not run */
    /* On the loop, after completions, when no submitted job is left (may be
     * NULL): a stop waiting for the records may go on. */
    void (*idle)(struct journal_writer *w);
    void *owner;
};

/* Starts the thread ("ha-journal"). 0 or negative errno; either way
 * journal_writer_close() follows. */
int journal_writer_init(struct journal_writer *w, uv_loop_t *loop);

/* Queues a job (loop thread); done(arg, rc) runs on the loop once it ran.
 * With w NULL (a tool or a test without a writer) the job runs here and
 * now and done is called before this returns, with run's result, which is
 * returned; else 0. */
int journal_writer_submit(struct journal_writer *w, jw_run_fn run, jw_free_fn drop, void *data,
                          jw_done_fn done, void *arg);

/* Submitted jobs not done yet (loop): queued, running, or their done
 * still to be called. */
bool journal_writer_busy(const struct journal_writer *w);

/* A reference to the shared block, for a thread that queues its own jobs
 * (a move's worker); dropped with journal_writer_unshare. NULL for w NULL. */
struct jw_shared *journal_writer_share(struct journal_writer *w);
void journal_writer_unshare(struct jw_shared *s);

/* From any thread but the loop: queues a job whose poster waits for it with
 * journal_writer_wait (which frees it). NULL when the writer is closing (the
 * data is dropped then). */
struct jw_job *journal_writer_post(struct jw_shared *s, jw_run_fn run, jw_free_fn drop, void *data);
/* Waits until the job ran: its result, or -ECANCELED for job NULL or when
 * the writer was left behind before it ran. */
int journal_writer_wait(struct jw_shared *s, struct jw_job *job);

/* How long the thread has shown no sign of life (a job done, its exit) while
 * it had work, as seen by the loop's calls; 0 when idle or exited. */
uint64_t journal_writer_quiet_ms(struct journal_writer *w, uint64_t now);

/* Lets the thread write what is queued, waits up to wait_ms for it to
 * exit, then joins it, or, when it has not exited (stuck in the kernel on a
 * disk that does not answer), detaches it: it keeps its own reference and
 * never wakes the loop again. Every submitted job's done not yet called is
 * called now with -ECANCELED. Closes the handle. */
void journal_writer_close(struct journal_writer *w, uint64_t wait_ms);

#endif
