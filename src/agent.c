/* agent.c: the daemon's lifecycle: start, hello and heartbeat, signals,
 * reload, metrics and systemd notifications, stop and teardown. */
#include "agent_internal.h"
#include "log.h"
#include "paths.h"
#include "protocol.h"
#include "transport_create.h"
#include "util.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* --- hello and heartbeat ---------------------------------------------------------- */

static cJSON *agent_hello(struct transport *t)
{
    struct agent *a = t->owner;
    cJSON *d = cJSON_CreateObject(), *caps, *moves;
    char ts[UTIL_TIME_LEN];
    unsigned listed = 0;

    cJSON_AddStringToObject(d, "agentId", a->cfg.agent_id);
    cJSON_AddStringToObject(d, "hostname", a->hostname);
    cJSON_AddStringToObject(d, "version", HOSTAGENT_VERSION);
    cJSON_AddNumberToObject(d, "protocol", PROTOCOL_VERSION);
    cJSON_AddNumberToObject(d, "pid", (double)getpid());
    util_rfc3339(a->started_wall_ms, ts);
    cJSON_AddStringToObject(d, "startedAt", ts);
    caps = cJSON_AddArrayToObject(d, "capabilities");
    agent_capabilities(caps);
    moves = cJSON_AddArrayToObject(d, "moves");
    for (struct move *m = a->moves; m; m = m->next)
        cJSON_AddItemToArray(moves, move_state_to_json(&m->st));
    agent_history_prune(a);
    for (unsigned k = 0; k < a->hist_len && listed < AGENT_HISTORY_MAX; k++, listed++) {
        unsigned i = (a->hist_pos + AGENT_HISTORY_MAX - 1 - k) % AGENT_HISTORY_MAX;
        cJSON_AddItemToArray(moves, agent_history_state_json(&a->history[i]));
    }
    return d;
}

static void agent_on_heartbeat(uv_timer_t *t)
{
    struct agent *a = container_of(t, struct agent, heartbeat);
    cJSON *d;
    if (a->tr->state != CONN_UP)
        return;
    d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "agentId", a->cfg.agent_id);
    json_add_u64(d, "uptimeMs", util_mono_ms() - a->started_mono);
    cJSON_AddNumberToObject(d, "activeMoves", a->n_moves);
    agent_add_reclaiming(a, d);
    agent_send(a, "heartbeat", d, NULL, false, NULL);
}

/* --- reclaims ----------------------------------------------------------------------- */

/* A reclaim recorded by the last run whose move is being recovered now: its
 * move hands it over when it ends (it checks the directory first). Known by
 * the directory its journal record names, not by the moveId alone: an older
 * move with the same id may have a reclaim of its own to resume. */
static bool agent_reclaim_skip(void *arg, const struct reclaim_item *it)
{
    struct agent *a = arg;
    for (struct move *m = a->moves; m; m = m->next) {
        const struct journal_reclaim *rc = m->jr ? &m->jr->reclaim : NULL;
        if (rc && rc->dir && strcmp(m->st.move_id, it->move_id) == 0 &&
            strcmp(rc->dir, it->dir) == 0 && rc->id.dev == (uint64_t)it->dev &&
            rc->id.ino == (uint64_t)it->ino)
            return true;
    }
    return false;
}

/* --- metrics ------------------------------------------------------------------------ */

/* The gauges as they are now, then the file (when metrics_file is set). */
static void agent_write_metrics(struct agent *a)
{
    unsigned active = 0;
    for (struct move *m = a->moves; m; m = m->next)
        active += move_is_running(m);
    a->metrics.moves_active = active;
    a->metrics.moves_queued = a->n_moves - active;
    a->metrics.last_pong_wall_ms = a->tr->last_pong_wall_ms;
    metrics_conn_state(&a->metrics, a->tr->state);
    reclaimer_totals(&a->reclaimer, &a->metrics.reclaiming_bytes, &a->metrics.reclaiming_entries);
    metrics_update_file(&a->metrics, a->cfg.metrics_file);
}

static void agent_on_metrics_timer(uv_timer_t *t)
{
    agent_write_metrics(container_of(t, struct agent, metrics_timer));
}

/* --- stopping --------------------------------------------------------------------- */

static void agent_on_handle_closed(uv_handle_t *h)
{
    (void)h;
}

/* Closes every handle so that uv_run returns (notes: teardown order). */
static void agent_teardown(struct agent *a)
{
    if (a->torn_down)
        return;
    a->torn_down = true;
    /* First, while every move and request its completions look for is
     * still there: what is queued is written (a stop waited for it; one
     * that did not is bounded), the completions not yet run are told it is
     * too late (-ECANCELED: they only free). */
    journal_writer_close(&a->writer, a->writer_left ? 0 : AGENT_STOP_STUCK_MS);
    path_checker_close(&a->checker);
    while (a->deferred) {
        struct agent_deferred *d = a->deferred;
        a->deferred = d->next;
        frame_free(&d->f);
        free(d);
    }
    /* Threads stuck on a disk that does not answer stay behind: they own
     * what they use and never touch the loop again. */
    while (a->moves) {
        struct move *m = a->moves;
        a->moves = m->next;
        a->n_moves--;
        move_detach(m);
        /* Its file stays: the next start finishes it (or finds it ready). */
        journal_rec_free(m->jr);
        m->jr = NULL;
        move_close(m, agent_free_move);
    }
    while (a->orphans) {
        struct move *m = a->orphans;
        a->orphans = m->next;
        move_detach(m);
        if (m->owns_jr)
            journal_rec_free(m->jr); /* else the history's */
        m->jr = NULL;
        move_close(m, agent_free_move);
    }
    transport_close(a->tr);
    /* A stop has waited for the reclaim thread already (agent_maybe_finish_stop);
     * a start that failed has not (it exits at once, being idle). */
    reclaimer_close(&a->reclaimer, a->reclaim_left ? 0 : AGENT_STOP_STUCK_MS, NULL);
    control_close(&a->control);
    uv_close((uv_handle_t *)&a->sig_term, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->sig_int, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->sig_hup, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->heartbeat, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->stop_timer, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->stop_wait, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->notify_timer, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->metrics_timer, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->held_timer, agent_on_handle_closed);
    uv_close((uv_handle_t *)&a->order_timer, agent_on_handle_closed);
}

static void agent_on_stop_timer(uv_timer_t *t)
{
    struct agent *a = container_of(t, struct agent, stop_timer);
    LOG0(LOG_WARN, "the manager did not take the last frames in time; closing anyway");
    agent_teardown(a);
}

/* STATUS= for systemctl status: the connection and the moves. */
static void agent_notify_status(struct agent *a)
{
    notify_send(&a->notify, "STATUS=%s%s; %u move%s active", a->stopping ? "stopping, " : "",
                a->tr->state == CONN_UP ? "connected to the manager"
                : a->tr->state == CONN_DUPLICATE
                    ? "NOT SERVING: another hostagent runs with this agent_id (see the log)"
                    : transport_state_name(a->tr->state),
                a->n_moves, a->n_moves == 1 ? "" : "s");
}

/* Once a second under systemd: the watchdog, and while a stop waits for
 * rollbacks, more time before systemd would kill us half-way. */
static void agent_on_notify_timer(uv_timer_t *t)
{
    struct agent *a = container_of(t, struct agent, notify_timer);
    uint64_t now = util_mono_ms();
    if (a->notify.watchdog_usec && now - a->last_watchdog_ms >= a->notify.watchdog_usec / 2000) {
        notify_send(&a->notify, "WATCHDOG=1");
        a->last_watchdog_ms = now;
    }
    if (a->stopping && a->n_moves > 0 && now - a->last_extend_ms >= AGENT_EXTEND_EVERY_MS) {
        notify_send(&a->notify, "EXTEND_TIMEOUT_USEC=%llu", (unsigned long long)AGENT_EXTEND_USEC);
        agent_notify_status(a);
        a->last_extend_ms = now;
    }
}

static void agent_on_conn_state(struct transport *t, enum conn_state s)
{
    struct agent *a = t->owner;
    metrics_conn_state(&a->metrics, s);
    agent_notify_status(a);
    if (s == CONN_CLOSED && a->stopping)
        agent_teardown(a);
}

/* Is this worker stuck, for a stop? No sign of life for AGENT_STOP_STUCK_MS,
 * counted from the stop at the earliest. */
static bool agent_left_behind(const struct agent *a, const struct move *m, uint64_t now)
{
    uint64_t quiet = move_quiet_ms(m, now), since = now - a->stop_started_ms;
    return move_is_running(m) && quiet >= AGENT_STOP_STUCK_MS && since >= AGENT_STOP_STUCK_MS;
}

/* Is the journal writer stuck, for a stop? It writes what was queued before
 * it exits (the outcomes of the moves the stop ended among them): only a
 * write held in the kernel keeps it. */
static bool agent_writer_left_behind(struct agent *a, uint64_t now)
{
    return journal_writer_quiet_ms(&a->writer, now) >= AGENT_STOP_STUCK_MS &&
           now - a->stop_started_ms >= AGENT_STOP_STUCK_MS;
}

/* Is the reclaim thread stuck, for a stop? The same rule as a worker's: it
 * stops at its next entry, so only a deletion held in the kernel keeps it. */
static bool agent_reclaim_left_behind(struct agent *a, uint64_t now)
{
    return reclaimer_quiet_ms(&a->reclaimer, now) >= AGENT_STOP_STUCK_MS &&
           now - a->stop_started_ms >= AGENT_STOP_STUCK_MS;
}

/* Once every move has ended (and its answer is queued), close the link. A
 * stopped move whose worker does not come back is ended by its own timer
 * (move.c) and waited for like the other workers still out there (rollbacks
 * of ended moves, a move in cleaning, the reclaim thread): while they show
 * signs of life, and at least AGENT_STOP_STUCK_MS after the stop began; then
 * they are left behind (their journal records, and the reclaim's records,
 * say what the next start must finish). */
static void agent_maybe_finish_stop(struct agent *a)
{
    uint64_t now = util_mono_ms();
    unsigned stuck = 0;
    if (!a->stopping || a->torn_down || a->stop_finishing)
        return;
    for (struct move *m = a->moves; m; m = m->next) {
        if (move_is_resting(m))
            continue; /* a prepared move in ready stays ready (its record says so) */
        /* A move in cleaning refuses the stop, and one whose worker is stuck
         * in its journal write cannot be ended beside it (move_abandon): both
         * are left behind once silent, their records as their workers left
         * them. Any other move ends (or is ended) by itself. */
        if ((m->st.phase != PHASE_CLEANING && !m->abandon_waits) || !agent_left_behind(a, m, now))
            return;
        stuck++;
    }
    for (struct move *m = a->orphans; m; m = m->next) {
        if (!agent_left_behind(a, m, now))
            return;
        stuck++;
    }
    /* The records queued on the journal writer (the ended moves' outcomes,
     * whose answers wait for them) are written before the link closes, or
     * left behind with the writer, unsent (the next start settles those
     * moves from what is on disk). */
    if (journal_writer_busy(&a->writer)) {
        if (!agent_writer_left_behind(a, now))
            return; /* its completions call this again (agent_on_writer_idle) */
        a->writer_left = true;
        stuck++;
    }
    if (reclaimer_running(&a->reclaimer)) {
        if (!agent_reclaim_left_behind(a, now))
            return; /* it exits at its next entry (reclaimer's exited callback) */
        a->reclaim_left = true;
        stuck++;
    }
    if (stuck)
        LOG(LOG_ERROR, "stopping without threads stuck on a disk that does not answer",
            LF_U("threads", stuck));
    a->stop_finishing = true;
    uv_timer_stop(&a->stop_wait);
    uv_timer_start(&a->stop_timer, agent_on_stop_timer, AGENT_STOP_GRACE_MS, 0);
    transport_shutdown(a->tr);
}

/* A move left the list: its slot is free (the next queued one starts,
 * unless the agent stops), and a stop may be able to finish now. */
static void agent_on_move_gone(struct agent *a, bool released)
{
    if (!released && !a->stopping)
        agent_start_queued(a);
    agent_maybe_finish_stop(a);
}

static void agent_on_stop_wait(uv_timer_t *t)
{
    agent_maybe_finish_stop(container_of(t, struct agent, stop_wait));
}

/* The journal writer has nothing left to do: a stop may finish now. */
static void agent_on_writer_idle(struct journal_writer *w)
{
    agent_maybe_finish_stop(w->owner);
}

/* The reclaim thread has exited after the stop: the stop may finish now. */
static void agent_on_reclaimer_exited(struct reclaimer *r)
{
    agent_maybe_finish_stop(r->owner);
}

static void agent_stop(struct agent *a, const char *signame)
{
    struct move *m, *next;
    if (a->stopping)
        return;
    a->stopping = true;
    a->stop_started_ms = util_mono_ms();
    LOG(LOG_INFO, "stopping", LF_S("signal", signame), LF_U("active_moves", a->n_moves));
    notify_send(&a->notify, "STOPPING=1");
    a->last_extend_ms = 0;
    agent_on_notify_timer(&a->notify_timer); /* the first extension at once */
    uv_timer_stop(&a->heartbeat);
    reclaimer_stop(&a->reclaimer); /* its record stays: the next start resumes it */
    for (m = a->moves; m; m = next) {
        next = m->next; /* a queued move ends (and leaves the list) at once */
        /* A prepared move resting in ready keeps its copy: it is still ready
         * after the restart, and the manager may commit it then. */
        if (!move_is_resting(m))
            move_stop(m, CODE_SHUTTING_DOWN, "the agent is shutting down");
    }
    /* Requests still being checked: answered now, their checks forgotten. */
    while (a->pending) {
        struct agent_pending *p = a->pending;
        a->pending = p->next;
        if (p->check)
            path_checker_forget(&a->checker, p->check);
        agent_refuse(a, FROM_MANAGER(p->reply), CODE_SHUTTING_DOWN, "the agent is shutting down",
                     p->req.server_name);
        agent_pending_free(p);
    }
    agent_run_deferred(a);
    uv_timer_start(&a->stop_wait, agent_on_stop_wait, 500, 500);
    agent_maybe_finish_stop(a);
}

static void agent_reload(struct agent *a)
{
    struct config fresh;
    struct config_errors errs;
    if (config_load(a->config_path, &fresh, &errs) != 0) {
        for (size_t i = 0; i < errs.n; i++)
            LOG(LOG_ERROR, "config reload failed; keeping the old settings",
                LF_S("problem", errs.lines[i]));
        config_errors_free(&errs);
        return;
    }
    /* The URL, state_dir, control_socket, ping interval and the transport (transport and
     * the nats_* keys) are fixed for the process; the rest applies to new requests and
     * the next connection. */
    config_keep_transport(&fresh, &a->cfg);
    free(fresh.manager_url);
    config_url_free(&fresh.url);
    free(fresh.state_dir);
    free(fresh.control_socket);
    fresh.manager_url = a->cfg.manager_url;
    fresh.url = a->cfg.url;
    fresh.state_dir = a->cfg.state_dir;
    fresh.control_socket = a->cfg.control_socket;
    fresh.ping_interval_ms = a->cfg.ping_interval_ms;
    a->cfg.manager_url = NULL;
    a->cfg.url.host = a->cfg.url.path = NULL;
    a->cfg.state_dir = NULL;
    a->cfg.control_socket = NULL;
    config_free(&a->cfg);
    a->cfg = fresh;
    log_setup(a->cfg.log_level, a->cfg.log_format);
    uv_timer_set_repeat(&a->heartbeat, a->cfg.heartbeat_interval_ms);
    uv_timer_set_repeat(&a->metrics_timer, a->cfg.heartbeat_interval_ms);
    a->metrics.agent_id = a->cfg.agent_id;
    agent_write_metrics(a); /* a new metrics_file at once; the old one goes */
    /* The pace applies to the copies running now, at their next step. */
    for (struct move *m = a->moves; m; m = m->next)
        move_set_pace(m, a->cfg.max_rate, a->cfg.io_priority);
    /* Last: once this is logged, everything of the reload is in effect. */
    LOG(LOG_INFO, "config reloaded", LF_S("file", a->config_path));
}

static void agent_on_signal(uv_signal_t *s, int signum)
{
    struct agent *a = s->data;
    if (signum == SIGHUP)
        agent_reload(a);
    else
        agent_stop(a, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* --- lifecycle ---------------------------------------------------------------------- */

/* A token file others can read is a token others can use. */
static void agent_check_token_file(struct agent *a)
{
    struct stat st;
    if (a->cfg.token_file && stat(a->cfg.token_file, &st) == 0 && (st.st_mode & 077))
        LOG(LOG_WARN, "token_file is readable by group or others; chmod 600 it",
            LF_S("token_file", a->cfg.token_file));
}

static const struct transport_ops agent_transport_ops = {
    .hello = agent_hello,
    .message = agent_on_message,
    .state = agent_on_conn_state,
    .acked = agent_on_acked,
};

int agent_init(struct agent *a, const char *config_path, struct config *cfg)
{
    int rc;
    memset(a, 0, sizeof *a);
    a->cfg = *cfg;
    memset(cfg, 0, sizeof *cfg);
    a->config_path = xstrdup(config_path);
    a->move_gone = agent_on_move_gone;
    a->decided = agent_run_deferred;
    a->started_wall_ms = util_wall_ms();
    a->started_mono = util_mono_ms();
    if (gethostname(a->hostname, sizeof a->hostname) != 0)
        util_fmt(a->hostname, sizeof a->hostname, "unknown");
    a->hostname[sizeof a->hostname - 1] = '\0';
    srand((unsigned)(a->started_wall_ms ^ (uint64_t)getpid()));

    {
        char why[512];
        rc = journal_open(&a->journal, a->cfg.state_dir, why, sizeof why);
        if (rc != 0) {
            LOG(LOG_ERROR, "cannot start", LF_S("reason", why));
            goto fail_journal;
        }
    }
    rc = uv_loop_init(&a->loop);
    if (rc != 0)
        goto fail_loop;
    uv_signal_init(&a->loop, &a->sig_term);
    uv_signal_init(&a->loop, &a->sig_int);
    uv_signal_init(&a->loop, &a->sig_hup);
    uv_timer_init(&a->loop, &a->heartbeat);
    uv_timer_init(&a->loop, &a->stop_timer);
    uv_timer_init(&a->loop, &a->stop_wait);
    {
        /* Both set up before either can fail: the teardown closes both. */
        int wrc = journal_writer_init(&a->writer, &a->loop);
        a->writer.owner = a;
        a->writer.idle = agent_on_writer_idle;
        rc = reclaimer_init(&a->reclaimer, &a->loop, a->cfg.state_dir);
        a->reclaimer.owner = a;
        a->reclaimer.exited = agent_on_reclaimer_exited;
        a->reclaimer.writer = &a->writer;
        if (rc == 0)
            rc = wrc;
        if (rc != 0)
            goto fail_ws;
    }
    rc = path_checker_init(&a->checker, &a->loop, agent_on_check, a);
    if (rc != 0)
        goto fail_ws;
    uv_timer_init(&a->loop, &a->notify_timer);
    uv_timer_init(&a->loop, &a->metrics_timer);
    metrics_init(&a->metrics, HOSTAGENT_VERSION, a->cfg.agent_id);
    uv_timer_init(&a->loop, &a->held_timer);
    uv_timer_init(&a->loop, &a->order_timer);
    notify_init(&a->notify);
    if (a->notify.fd >= 0)
        uv_timer_start(&a->notify_timer, agent_on_notify_timer, 1000, 1000);
    a->sig_term.data = a->sig_int.data = a->sig_hup.data = a;
    rc = transport_create(&a->tr, &a->loop, &a->cfg, &agent_transport_ops, a);
    if (rc != 0)
        goto fail_ws;
    {
        char why[512];
        rc = control_init(&a->control, &a->loop, a->cfg.control_socket, &agent_control_ops, a, why,
                          sizeof why);
        if (rc != 0) {
            LOG(LOG_ERROR, "cannot start", LF_S("reason", why));
            goto fail_ws;
        }
    }
    uv_signal_start(&a->sig_term, agent_on_signal, SIGTERM);
    uv_signal_start(&a->sig_int, agent_on_signal, SIGINT);
    uv_signal_start(&a->sig_hup, agent_on_signal, SIGHUP);
    uv_timer_start(&a->heartbeat, agent_on_heartbeat, a->cfg.heartbeat_interval_ms,
                   a->cfg.heartbeat_interval_ms);
    uv_timer_start(&a->metrics_timer, agent_on_metrics_timer, a->cfg.heartbeat_interval_ms,
                   a->cfg.heartbeat_interval_ms);
    if (a->cfg.n_allowed_roots == 0)
        LOG0(LOG_WARN, "no allowed_roots configured: every move will be refused");
    agent_check_token_file(a);
    agent_recover(a);
    reclaimer_load(&a->reclaimer, agent_reclaim_skip, a);
    return 0;

fail_ws:
    notify_close(&a->notify);
    a->stopping = true;
    agent_teardown(a);
    uv_run(&a->loop, UV_RUN_DEFAULT);
    transport_destroy(a->tr);
    uv_loop_close(&a->loop);
fail_loop:
    journal_close(&a->journal);
fail_journal:
    config_free(&a->cfg);
    free(a->config_path);
    return rc;
}

int agent_run(struct agent *a)
{
    int rc;
    LOG(LOG_INFO, "hostagent starting", LF_S("version", HOSTAGENT_VERSION),
        LF_S("agent_id", a->cfg.agent_id),
        LF_S("manager", a->cfg.manager_url ? a->cfg.manager_url : a->cfg.nats_servers_raw),
        LF_S("transport", a->tr->impl->name));
    transport_start(a->tr);
    notify_send(&a->notify, "READY=1");
    agent_notify_status(a);
    agent_write_metrics(a);
    uv_run(&a->loop, UV_RUN_DEFAULT);
    agent_write_metrics(a); /* the last values: closed, nothing running */
    metrics_free(&a->metrics);
    transport_destroy(a->tr);
    rc = uv_loop_close(&a->loop);
    if (rc != 0)
        LOG(LOG_ERROR, "event loop still had open handles at exit", LF_S("error", uv_strerror(rc)));
    /* Memory only: the journal files stay for the next start (delivered ones
     * still serve idempotent retries within the hour). */
    for (unsigned i = 0; i < AGENT_HISTORY_MAX; i++) {
        move_state_clear(&a->history[i].st);
        free(a->history[i].answer_data);
        journal_rec_free(a->history[i].jr);
    }
    journal_close(&a->journal);
    notify_close(&a->notify);
    LOG0(LOG_INFO, "hostagent stopped");
    config_free(&a->cfg);
    free(a->config_path);
    return 0;
}
