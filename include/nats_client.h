/* nats_client.h: the agent on NATS (nats.c on the agent's libuv loop):
 * requests from subjects, events published, outcomes stored through
 * JetStream, failover across the cluster. Its files (nats_client.c and those
 * below it) share include/nats_internal.h. */
#ifndef HOSTAGENT_NATS_CLIENT_H
#define HOSTAGENT_NATS_CLIENT_H

#include "config.h"
#include "transport.h"

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Private to the NATS client's files (include/nats_internal.h). */
struct nats_event;
struct nats_peer;
struct nats_out;
struct nats_outcome;

/* A run's random instance id: 16 hex digits. */
#define NATS_INSTANCE_LEN 16

struct nats_client {
    struct transport base; /* first: the agent holds a struct transport * */
    uv_loop_t *loop;
    const struct config *cfg;
    natsOptions *opts;
    natsOptions *probe_opts; /* one plain attempt, to learn why connecting fails */
    natsConnection *nc;      /* set by the loop once the connect thread is back */
    jsCtx *js;
    natsSubscription *sub_agent, *sub_all;     /* the requests: only while serving */
    char prefix[CONFIG_NATS_PREFIX_MAX + 200]; /* "<prefix>.<agentId>." */
    char all_prefix[CONFIG_NATS_PREFIX_MAX + 8];
    char outcome_subject[CONFIG_NATS_PREFIX_MAX + 200];

    /* Shared with nats.c's threads, under lock: */
    uv_mutex_t lock;
    uv_cond_t cond;
    bool lock_ready;
    uv_async_t wake; /* closed by nats_client_close(); no send after */
    bool wake_open;
    struct nats_event *ev_head, *ev_tail;
    unsigned ev_msgs;       /* requests among them */
    unsigned ev_dropped;    /* requests dropped because the queue was full */
    natsConnection *ev_nc;  /* the adapter's connection (from attach) */
    natsSock ev_sock;       /* the adapter's socket */
    int ev_want;            /* UV_READABLE | UV_WRITABLE wanted */
    unsigned ev_attach_gen; /* bumped at each attach */
    bool ev_detached;
    uint64_t flush_want, flush_done; /* flush generations (the flusher thread) */
    bool h_connect, h_close;         /* tasks for the helper thread */
    natsConnection *h_nc;            /* the helper's connection (it destroys a failed one) */
    uint64_t h_probe_ms;             /* helper thread only: its last probe (monotonic) */
    uint32_t rnd;                    /* the reconnect jitter's generator */

    /* The loop's own: */
    uv_poll_t *poll; /* one per attached socket (heap: closed asynchronously) */
    unsigned poll_gen;
    uv_thread_t loop_thread;
    uv_thread_t helper; /* connects, flushes, closes: the calls that block */
    bool helper_running;
    uv_timer_t retry_timer;   /* outcomes not yet stored by JetStream */
    uv_timer_t restart_timer; /* a new connection after nats.c closed one */
    uv_timer_t close_timer;   /* the shutdown waits this long for the last flush */
    int open_handles;
    struct nats_out *head, *tail; /* held while not up */
    struct nats_out *unacked_head, *unacked_tail;
    uint64_t gen;
    struct nats_outcome *outcomes;
    unsigned restarts;
    uint64_t last_warn_ms, last_fail_log_ms;
    uint64_t last_cause_log_ms; /* a failure with a known cause (see nats_client.c) */
    bool helper_done, got_closed, had_nc;

    /* One agent per agent_id (the loop's; see nats_presence.c): */
    char instance[NATS_INSTANCE_LEN + 1]; /* this run's, random */
    char hostname[256];
    uint64_t started_ms; /* this run's start (wall clock) */
    char presence_subject[CONFIG_NATS_PREFIX_MAX + 200];
    char inbox[64]; /* where the answers to this run's presence queries come */
    natsSubscription *sub_presence, *sub_inbox;
    bool serving;              /* subscribed to the requests (sub_agent, sub_all) */
    bool claiming;             /* a presence query is out; claim_timer runs */
    bool yielded;              /* has left the agent_id to another run since it last served */
    uint64_t serving_since_ms; /* wall clock, while serving */
    struct nats_peer *peers;   /* other runs heard, each for its presence_ttl */
    unsigned n_peers;
    uv_timer_t presence_timer; /* announcements every heartbeat_interval; expiry */
    uv_timer_t claim_timer;    /* the wait for answers to a presence query */
    uint64_t last_conflict_log_ms;
};

/* Prepares the options (servers, auth, TLS, callbacks) on loop. 0 or
 * negative errno; the owner closes and destroys it in every case. */
int nats_client_init(struct nats_client *c, uv_loop_t *loop, const struct config *cfg,
                     const struct transport_ops *ops, void *owner);

/* The NATS transport's implementation of transport.h. */
extern const struct transport_impl nats_client_impl;

#endif
