/* progress_ring.h: bounded single-producer/single-consumer ring of progress
 * reports, from a move's worker thread to the event loop. */
#ifndef HOSTAGENT_PROGRESS_RING_H
#define HOSTAGENT_PROGRESS_RING_H

#include "move_state.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum progress_kind {
    PROGRESS_STEP = 0,  /* intermediate: may be merged into a later one */
    PROGRESS_PHASE = 1, /* a phase began: never merged away */
    PROGRESS_END = 2,   /* the worker's last word (result): never merged away */
};

struct progress_item {
    enum progress_kind kind;
    enum move_phase phase;
    struct move_counters count;
    enum move_code code;        /* PROGRESS_END only */
    char error[MOVE_ERROR_MAX]; /* PROGRESS_END only */
    bool warning;               /* PROGRESS_END: a success; code and error are its warning */
    /* PROGRESS_END of a commit: what its final pass copied, and whether it
     * failed with the copy kept (the move is ready again). */
    bool back_to_ready;
    uint64_t bytes_synced, files_synced;
    char current[MOVE_CURRENT_MAX]; /* relative path, "" when none */
};

#define RING_CAP 64u /* power of two */
/* Slots only PHASE and END items may take. A move has at most 5 of them
 * (calculating, copying, verifying, cleaning, end), so they always fit. */
#define RING_RESERVE 8u

/* The kept STEP is also handed to the consumer through a triple buffer (the
 * producer's back buffer, the middle one, the consumer's front one; `mid`
 * names the middle buffer, with RING_KEPT_FRESH while the consumer has not
 * taken it), so that the loop sees the newest counters as soon as it has
 * drained the ring, even when the worker then blocks (a sync, a slow read)
 * and pushes nothing more for a while. */
#define RING_KEPT_FRESH 4u

struct progress_ring {
    struct progress_item slots[RING_CAP];
    _Atomic uint32_t head; /* next slot to write; only the producer stores it */
    _Atomic uint32_t tail; /* next slot to read; only the consumer stores it */
    /* Producer-private: the newest STEP that did not fit is kept aside (in
     * kept[], offered to the consumer). */
    bool has_pending;
    uint64_t merged; /* STEP items merged away, for tests and debug logs */
    struct progress_item kept[3];
    _Atomic uint32_t kept_mid; /* index of the middle buffer | RING_KEPT_FRESH */
    uint32_t kept_back;        /* producer-private */
    uint32_t kept_front;       /* consumer-private */
};

void ring_init(struct progress_ring *r);

/* Producer side. Never blocks: a STEP that finds fewer than RING_RESERVE+1
 * free slots is kept aside (and offered to the consumer, ring_take_kept) and
 * replaced by the next one (merged); a PHASE or END item, or a STEP that
 * finds room, drops a kept STEP the consumer has not taken (it carries newer
 * counters) before it goes into the ring. Returns true when the consumer
 * should be woken: false only when the item replaced a kept STEP that the
 * consumer has not taken yet (the wake-up for that one is still due). */
bool ring_push(struct progress_ring *r, const struct progress_item *it);

/* Consumer side: takes the oldest item; false when the ring is empty. */
bool ring_pop(struct progress_ring *r, struct progress_item *out);

/* Consumer side, once ring_pop found the ring empty: takes the STEP the
 * producer kept aside, if there is one it has not taken yet. It is newer than
 * everything popped so far and older than anything pushed after it. */
bool ring_take_kept(struct progress_ring *r, struct progress_item *out);

#endif
