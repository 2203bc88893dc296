/* pace.h: how fast a move's copy may write: an operator's cap (max_rate,
 * maxRate) and a controller that yields the disk to the neighbours when its
 * latency for us rises above what it was when the disk was ours, and gives
 * the speed back when it falls (the way LEDBAT yields a network link).
 *
 * Pure arithmetic on the times it is given (the caller reads the clock and
 * sleeps), owned by one worker thread; only the cap is set from outside
 * (pace_set_max: an atomic store, read at the next step). */
#ifndef HOSTAGENT_PACE_H
#define HOSTAGENT_PACE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* Below this the controller never goes: a move on a disk that stays busy
 * still ends. */
#define PACE_MIN_RATE (4ull << 20)
/* A latency this far above the idle one (or half of it, whichever is more)
 * means someone else is waiting for the disk. */
#define PACE_TARGET_NS (5ull * 1000 * 1000)
/* Time the token bucket lends: writes may run this far ahead of the rate. */
#define PACE_BURST_NS (50ull * 1000 * 1000)
/* Quiet again: the rate doubles every this long. */
#define PACE_RISE_NS (200ull * 1000 * 1000)
#define PACE_BASE_SLOTS 10 /* seconds of step latencies the idle one is the lowest of */

struct pace {
    _Atomic uint64_t max_rate; /* bytes/s, 0: no cap */
    bool adaptive;
    uint64_t base_ns;                   /* the idle latency of a step: the disk when it was ours */
    uint64_t base_min[PACE_BASE_SLOTS]; /* the lowest of each recent second (0: none) */
    uint64_t base_slot;                 /* the second of the newest */
    uint64_t rate;                      /* the controller's limit, bytes/s; 0: full speed */
    uint64_t rate_at_ns;                /* when it was set (it doubles every PACE_RISE_NS since) */
    uint64_t full_rate; /* bytes/s written at full speed (moving average); 0: not yet known */
    uint64_t last_ns;   /* the previous sample's time */
    uint64_t next_ns;   /* token bucket: when the bytes so far are paid for */
    uint64_t yields;    /* times the controller slowed down */
};

void pace_init(struct pace *p, uint64_t max_rate, bool adaptive);

/* Sets the cap (0: none); safe from another thread. */
void pace_set_max(struct pace *p, uint64_t max_rate);

/* One step of written-back data: its bytes, the time from starting its
 * writeback to its end, and now. Adjusts the controller's rate. */
void pace_sample(struct pace *p, uint64_t bytes, uint64_t latency_ns, uint64_t now_ns);

/* bytes were written at now_ns: the nanoseconds to wait before going on
 * (0: none) under the lower of the cap and the controller's rate. */
uint64_t pace_delay(struct pace *p, uint64_t bytes, uint64_t now_ns);

/* The bytes written so far count as paid at now_ns (the cap was lifted
 * or raised while the copy waited for it). */
void pace_forgive(struct pace *p, uint64_t now_ns);

/* The rate the copy is held to now, bytes/s (0: none), and whether what
 * holds it is the controller yielding to someone else (not the cap). */
uint64_t pace_limit(struct pace *p);
bool pace_yielding(struct pace *p);

#endif
