/* SPDX-License-Identifier: MIT */
/* The Manager owns the event loop and everything on it: signals, the watchdog, the HTTP client,
 * the store, the feeds, the sd_notify lifecycle and reloads. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "feed.h"
#include "http.h"
#include "log.h"
#include "manager.h"
#include "store.h"

#define STOP_GRACE_USEC (4 * USEC_PER_SEC)
#define STATUS_MIN_INTERVAL_USEC (1 * USEC_PER_SEC)

struct Manager {
        sd_event *event;
        Config *config;
        HttpClient *http;
        Store *store;
        FeedContext ctx;

        FeedSource **sources;
        size_t n_sources;
        Feed **feeds;
        size_t n_feeds;

        bool once;
        bool ready_sent;
        bool feeds_started;
        bool db_lost;
        bool stopping;
        int exit_code;

        sd_event_source *status_timer;
        sd_event_source *stop_timer;
        uint64_t status_sent_at;
        uint64_t rate_at;      /* when the events/s figure was last taken */
        uint64_t rate_events;  /* the events committed then */
        double rate;
        char status[256];
};

static uint64_t manager_now(Manager *m) {
        uint64_t now = 0;

        (void) sd_event_now(m->event, CLOCK_MONOTONIC, &now);
        return now;
}

static void manager_exit(Manager *m, int code) {
        m->exit_code = code;
        (void) sd_event_exit(m->event, code);
}

/* ---- status ------------------------------------------------------------------------------- */

static void manager_format_status(Manager *m, char *buf, size_t n) {
        unsigned caught_up = 0, backfilling = 0, failing = 0, stopped = 0, standby = 0;
        uint64_t events = 0, now = manager_now(m);

        for (size_t i = 0; i < m->n_feeds; i++) {
                Feed *f = m->feeds[i];
                FeedState st = feed_get_state(f);

                events += feed_events_applied(f);
                if (st == FEED_STOPPED)
                        stopped++;
                else if (st == FEED_STANDBY)
                        standby++;
                else if (feed_get_failure(f) != FEED_FAILURE_NONE)
                        failing++;
                else if (feed_caught_up(f))
                        caught_up++;
                else
                        backfilling++;
        }
        if (m->rate_at == 0 || now - m->rate_at >= 5 * USEC_PER_SEC) {
                if (m->rate_at != 0)
                        m->rate = (double) (events - m->rate_events) * 1e6 /
                                  (double) (now - m->rate_at);
                m->rate_at = now;
                m->rate_events = events;
        }
        if (m->stopping)
                snprintf(buf, n, "Stopping.");
        else if (store_get_state(m->store) == STORE_DISCONNECTED ||
                 store_get_state(m->store) == STORE_CONNECTING)
                snprintf(buf, n, "Waiting for the database; %zu feeds, %" PRIu64 " events committed.",
                         m->n_feeds, events);
        else
                snprintf(buf, n,
                         "%zu feeds: %u caught up, %u backfilling, %u failing, %u stopped, "
                         "%u standby; %.0f events/s, %" PRIu64 " events committed.",
                         m->n_feeds, caught_up, backfilling, failing, stopped, standby, m->rate,
                         events);
}

static void manager_send_status(Manager *m) {
        char buf[256];

        manager_format_status(m, buf, sizeof(buf));
        m->status_sent_at = manager_now(m);
        if (strcmp(buf, m->status) == 0)
                return;
        snprintf(m->status, sizeof(m->status), "%s", buf);
        (void) sd_notifyf(false, "STATUS=%s", buf);
}

static int on_status_timer(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        manager_send_status(userdata);
        return 0;
}

/* Status changes are sent at most about once a second. */
static void manager_status_changed(Manager *m) {
        uint64_t now = manager_now(m);
        int enabled = SD_EVENT_OFF;

        if (now - m->status_sent_at >= STATUS_MIN_INTERVAL_USEC) {
                manager_send_status(m);
                return;
        }
        (void) sd_event_source_get_enabled(m->status_timer, &enabled);
        if (enabled != SD_EVENT_OFF)
                return;
        (void) sd_event_source_set_time(m->status_timer, m->status_sent_at + STATUS_MIN_INTERVAL_USEC);
        (void) sd_event_source_set_enabled(m->status_timer, SD_EVENT_ONESHOT);
}

/* ---- stopping ----------------------------------------------------------------------------- */

static void manager_check_stopped(Manager *m) {
        if (m->stopping && store_is_idle(m->store))
                manager_exit(m, m->exit_code);
}

static int on_stop_timer(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        Manager *m = userdata;

        log_warning("A commit did not finish within %llus; exiting, PostgreSQL rolls it back.",
                    (unsigned long long) (STOP_GRACE_USEC / USEC_PER_SEC));
        manager_exit(m, m->exit_code);
        return 0;
}

static void manager_stop(Manager *m, int exit_code) {
        if (m->stopping)
                return;
        m->stopping = true;
        m->exit_code = exit_code;
        (void) sd_notify(false, "STOPPING=1\nSTATUS=Stopping.");
        log_full(LOG_INFO, 0, MESSAGE_ID_STOPPING, NULL, "Stopping.");
        for (size_t i = 0; i < m->n_feeds; i++)
                feed_stop(m->feeds[i]);
        if (store_is_idle(m->store)) {
                manager_exit(m, exit_code);
                return;
        }
        (void) sd_event_add_time_relative(m->event, &m->stop_timer, CLOCK_MONOTONIC,
                                          STOP_GRACE_USEC, 0, on_stop_timer, m);
}

/* ---- feeds -------------------------------------------------------------------------------- */

static void on_feed_change(Feed *f, void *userdata) {
        Manager *m = userdata;

        if (m->stopping)
                return;
        manager_status_changed(m);
        if (!m->once)
                return;
        if (feed_get_failure(f) == FEED_FAILURE_AUTH || feed_get_failure(f) == FEED_FAILURE_TLS) {
                log_error("%s (--once): giving up.",
                          feed_get_failure(f) == FEED_FAILURE_AUTH
                                  ? "Authentication rejected"
                                  : "The server's TLS certificate is not trusted");
                manager_stop(m, EX_UNAVAILABLE);
                return;
        }
        /* --once: done when every feed reached its end, stopped for good, or is owned (and so
         * kept current) by another instance. */
        bool all = true, any_stopped = false;
        for (size_t i = 0; i < m->n_feeds; i++) {
                Feed *g = m->feeds[i];

                if (feed_get_state(g) == FEED_STOPPED)
                        any_stopped = true;
                else if (feed_get_state(g) == FEED_STANDBY)
                        continue;
                else if (!(feed_reached_end(g) && feed_get_state(g) == FEED_WAITING))
                        all = false;
        }
        if (all)
                manager_stop(m, any_stopped ? 1 : 0);
}

static FeedSource *manager_find_source(Manager *m, const char *name) {
        for (size_t i = 0; i < m->n_sources; i++)
                if (strcmp(feed_source_config(m->sources[i])->name, name) == 0)
                        return m->sources[i];
        return NULL;
}

static int manager_add_feed(Manager *m, FeedSource *src, const char *project, bool start) {
        Feed **n = realloc(m->feeds, (m->n_feeds + 1) * sizeof(Feed *));
        Feed *f;
        int r;

        if (!n)
                return -ENOMEM;
        m->feeds = n;
        r = feed_new(&m->ctx, src, project, &f);
        if (r < 0)
                return r;
        m->feeds[m->n_feeds++] = f;
        if (start)
                return feed_start(f);
        return 0;
}

static Feed *manager_find_feed(Manager *m, const SourceConfig *s, const char *project) {
        for (size_t i = 0; i < m->n_feeds; i++)
                if (feed_matches(m->feeds[i], s, project))
                        return m->feeds[i];
        return NULL;
}

/* Makes the feed set equal to the configuration's: keeps matching feeds (and their positions),
 * starts new ones, stops and drops the rest. */
static int manager_apply_config(Manager *m, Config *config) {
        _cleanup_free_ bool *keep = calloc(m->n_feeds + 1, sizeof(bool));
        _cleanup_free_ Feed **fresh_src = NULL;
        size_t n_old = m->n_feeds;
        int r;

        if (!keep)
                return -ENOMEM;
        for (size_t i = 0; i < config->n_sources; i++) {
                const SourceConfig *s = config->sources[i];

                for (size_t p = 0; p < (s->n_projects ? s->n_projects : 1); p++) {
                        Feed *f = manager_find_feed(m, s, s->n_projects ? s->projects[p] : NULL);

                        for (size_t k = 0; f && k < n_old; k++)
                                if (m->feeds[k] == f)
                                        keep[k] = true;
                }
        }

        /* Sources: reuse by name, create the new ones. */
        for (size_t i = 0; i < config->n_sources; i++) {
                FeedSource *src = manager_find_source(m, config->sources[i]->name);

                if (src) {
                        feed_source_set_config(src, config->sources[i]);
                        continue;
                }
                FeedSource **n = realloc(m->sources, (m->n_sources + 1) * sizeof(FeedSource *));
                if (!n)
                        return -ENOMEM;
                m->sources = n;
                r = feed_source_new(config->sources[i], &m->sources[m->n_sources]);
                if (r < 0)
                        return r;
                m->n_sources++;
        }
        m->ctx.config = config;

        /* Drop the feeds the configuration no longer has. */
        size_t w = 0;
        for (size_t i = 0; i < n_old; i++) {
                if (keep[i]) {
                        m->feeds[w++] = m->feeds[i];
                        continue;
                }
                log_info("Feed %" PRIi64 " (%s) is no longer configured; its rows stay.",
                         feed_id(m->feeds[i]),
                         feed_project(m->feeds[i]) ?: "collection-wide");
                feed_release(m->feeds[i]);
                feed_free(m->feeds[i]);
        }
        for (size_t i = n_old; i < m->n_feeds; i++)
                m->feeds[w++] = m->feeds[i];
        m->n_feeds = w;

        /* Drop sources without configuration. */
        w = 0;
        for (size_t i = 0; i < m->n_sources; i++) {
                bool used = false;

                for (size_t j = 0; j < config->n_sources; j++)
                        if (feed_source_config(m->sources[i]) == config->sources[j])
                                used = true;
                if (used)
                        m->sources[w++] = m->sources[i];
                else
                        feed_source_free(m->sources[i]);
        }
        m->n_sources = w;

        /* Add the feeds that are new. */
        for (size_t i = 0; i < config->n_sources; i++) {
                const SourceConfig *s = config->sources[i];
                FeedSource *src = manager_find_source(m, s->name);

                for (size_t p = 0; p < (s->n_projects ? s->n_projects : 1); p++) {
                        const char *project = s->n_projects ? s->projects[p] : NULL;

                        if (manager_find_feed(m, s, project))
                                continue;
                        r = manager_add_feed(m, src, project, m->feeds_started);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static void manager_start_feeds(Manager *m) {
        m->feeds_started = true;
        for (size_t i = 0; i < m->n_feeds; i++)
                (void) feed_start(m->feeds[i]);
}

/* ---- the database ----------------------------------------------------------------------------- */

static void on_store_state(Store *s _unused_, StoreState old, StoreState state, const char *error,
                           void *userdata) {
        Manager *m = userdata;

        if (state == STORE_DISCONNECTED && !m->stopping) {
                if (old == STORE_CONNECTING && !m->db_lost && !m->ready_sent)
                        log_warning("Cannot connect to the database yet: %s", error ?: "?");
                else if (!m->db_lost)
                        log_full(LOG_ERR, 0, MESSAGE_ID_DATABASE_LOST, NULL,
                                 "Lost the database session: %s; reconnecting.", error ?: "?");
                m->db_lost = m->ready_sent;
                /* The feeds' advisory locks ended with the session. */
                for (size_t i = 0; i < m->n_feeds; i++)
                        feed_session_lost(m->feeds[i]);
        }
        if (state == STORE_READY && old == STORE_MIGRATING) {
                if (m->db_lost) {
                        log_full(LOG_NOTICE, 0, MESSAGE_ID_DATABASE_RESTORED, NULL,
                                 "Database session restored.");
                        m->db_lost = false;
                }
                if (!m->ready_sent) {
                        m->ready_sent = true;
                        log_full(LOG_INFO, 0, MESSAGE_ID_READY, NULL,
                                 "Ready: schema version %d, %zu feeds.",
                                 store_schema_version(m->store), m->n_feeds);
                        manager_start_feeds(m);
                        manager_format_status(m, m->status, sizeof(m->status));
                        (void) sd_notifyf(false, "READY=1\nSTATUS=%s", m->status);
                }
        }
        if (state == STORE_CLOSED && !m->stopping)
                manager_stop(m, 1);
        if (m->stopping && (state == STORE_READY || state == STORE_DISCONNECTED))
                manager_check_stopped(m);
        if (!m->stopping)
                manager_status_changed(m);
}

/* ---- signals -------------------------------------------------------------------------------- */

static int on_term(sd_event_source *s _unused_, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        log_info("Received %s.", strsignal((int) si->ssi_signo));
        manager_stop(m, 0);
        return 0;
}

static int on_hup(sd_event_source *s _unused_, const struct signalfd_siginfo *si _unused_,
                  void *userdata) {
        Manager *m = userdata;
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *error = NULL;
        int r;

        if (m->stopping)
                return 0;
        (void) sd_notifyf(false, "RELOADING=1\nSTATUS=Reloading %s.", m->config->path);
        r = config_load(m->config->path, &c, &error);
        if (r < 0) {
                log_error("Reload failed, keeping the running configuration: %s",
                          error ?: strerror(-r));
                (void) sd_notify(false, "READY=1");
                manager_send_status(m);
                return 0;
        }
        if (strcmp(c->database, m->config->database) != 0 ||
            c->synchronous_commit != m->config->synchronous_commit ||
            c->statement_timeout_usec != m->config->statement_timeout_usec)
                log_notice("A database setting changed; it takes effect at the next start.");
        log_set_max_level(c->log_level);
        r = manager_apply_config(m, c);
        if (r < 0) {
                log_error_errno(r, "Failed to apply the new configuration: %m");
                manager_stop(m, 1);
                return 0;
        }
        config_free(m->config);
        m->config = TAKE_PTR(c);
        /* Credentials may have changed: failing feeds try again now. */
        for (size_t i = 0; i < m->n_feeds; i++)
                feed_kick(m->feeds[i]);
        log_full(LOG_INFO, 0, MESSAGE_ID_RELOADED, NULL, "Reloaded %s: %zu feeds.",
                 m->config->path, m->n_feeds);
        (void) sd_notify(false, "READY=1");
        manager_send_status(m);
        return 0;
}

/* ---- object --------------------------------------------------------------------------------- */

int manager_new(Config *config, bool once, Manager **ret) {
        _cleanup_(manager_freep) Manager *m = NULL;
        sigset_t mask;
        int r;

        m = calloc(1, sizeof(Manager));
        if (!m) {
                config_free(config);
                return -ENOMEM;
        }
        m->config = config;
        m->once = once;

        r = sd_event_default(&m->event);
        if (r < 0)
                return r;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);
        r = sd_event_add_signal(m->event, NULL, SIGTERM, on_term, m);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGINT, on_term, m);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGHUP, on_hup, m);
        if (r < 0)
                return r;
        r = sd_event_set_watchdog(m->event, true);
        if (r < 0)
                return r;
        r = sd_event_add_time(m->event, &m->status_timer, CLOCK_MONOTONIC, UINT64_MAX, 0,
                              on_status_timer, m);
        if (r < 0)
                return r;

        r = http_client_new(m->event, &m->http);
        if (r < 0)
                return r;
        r = store_new(m->event,
                      &(StoreOptions){ .conninfo = config->database,
                                       .synchronous_commit = config->synchronous_commit,
                                       .statement_timeout_usec = config->statement_timeout_usec },
                      on_store_state, m, &m->store);
        if (r < 0)
                return r;

        m->ctx = (FeedContext){
                .event = m->event,
                .http = m->http,
                .store = m->store,
                .config = m->config,
                .once = once,
                .on_change = on_feed_change,
                .userdata = m,
        };
        r = manager_apply_config(m, config);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(m);
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        for (size_t i = 0; i < m->n_feeds; i++)
                feed_free(m->feeds[i]);
        free(m->feeds);
        for (size_t i = 0; i < m->n_sources; i++)
                feed_source_free(m->sources[i]);
        free(m->sources);
        store_free(m->store);
        http_client_free(m->http);
        sd_event_source_disable_unref(m->status_timer);
        sd_event_source_disable_unref(m->stop_timer);
        sd_event_unref(m->event);
        config_free(m->config);
        free(m);
        return NULL;
}

int manager_run(Manager *m) {
        int r;

        log_full(LOG_INFO, 0, MESSAGE_ID_STARTED, NULL,
                 "witlinkd " WITLINKD_VERSION " starting: %zu sources, %zu feeds%s.",
                 m->config->n_sources, m->n_feeds, m->once ? ", until caught up (--once)" : "");
        (void) sd_notify(false, "STATUS=Connecting to the database.");
        r = store_start(m->store);
        if (r < 0)
                return log_error_errno(r, "Failed to start the database session: %m"), 1;
        r = sd_event_loop(m->event);
        if (r < 0) {
                log_error_errno(r, "Event loop failed: %m");
                return 1;
        }
        return m->exit_code;
}
