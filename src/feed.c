/* SPDX-License-Identifier: MIT */
/* One feed: a chain of batches of one source (a project or the whole collection), its state
 * machine, request scheduling, backoff and the hand-over of each batch to the store. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "batch.h"
#include "feed.h"
#include "url.h"

#define BACKOFF_MIN_USEC (1 * USEC_PER_SEC)
#define AUTH_BACKOFF_USEC (5 * 60 * USEC_PER_SEC)
#define NOT_FOUND_BACKOFF_USEC (5 * 60 * USEC_PER_SEC)
#define HOST_OFFLINE_BACKOFF_USEC (10 * 60 * USEC_PER_SEC)
/* --once gives a feed up after this many consecutive failures spread over at least this long. */
#define ONCE_MAX_FAILURES 8
#define ONCE_MIN_FAILING_USEC (60 * USEC_PER_SEC)

struct FeedSource {
        const SourceConfig *config;
        unsigned in_flight;
        uint64_t not_before; /* CLOCK_MONOTONIC: no request before (throttling is per identity) */
        bool throttled;      /* a throttling episode was logged */
        Feed **feeds; /* every feed of this source, to hand free slots on */
        size_t n_feeds;
};

struct Feed {
        const FeedContext *ctx;
        char activity_id[80]; /* of the response being handled */
        FeedSource *source;
        char *project;
        LogContext log;

        FeedState state;
        FeedFailure failure;
        int64_t id;
        char *token;      /* the committed position */
        bool caught_up;   /* as stored */
        bool reached_end; /* this process committed a last batch */
        bool stopping;
        bool need_register;
        bool owned;
        bool standby_logged;

        HttpRequest *request;
        char *request_token; /* the token the request in flight was built from */
        StoreJob *job;
        char *pending_token; /* the token the batch being stored will commit */
        bool pending_last;
        size_t pending_events;
        bool saw_duplicates; /* the last committed batch held events stored already */

        /* The next batch, fetched while the previous one is stored, in COPY text form. */
        char *held_copy;
        size_t held_size, held_events;
        char *held_token;
        bool held_last;

        /* A fetch failure that happened while a batch was being stored: it is acted upon once
         * the store has answered, so the committed position is known. */
        FeedFailure deferred_kind;
        uint64_t deferred_delay;
        char *deferred_message;
        bool holds_slot;

        sd_event_source *timer;
        uint64_t backoff_usec;
        unsigned failures;   /* consecutive */
        uint64_t failing_since;
        unsigned requests;
        uint64_t events_applied;
        char *last_error;
};

static const char *const state_names[_FEED_STATE_MAX] = {
        [FEED_NEW] = "new",           [FEED_REGISTERING] = "registering",
        [FEED_QUEUED] = "queued",     [FEED_FETCHING] = "fetching",
        [FEED_STORING] = "storing",   [FEED_PIPELINING] = "pipelining",
        [FEED_WAITING] = "waiting",
        [FEED_BACKOFF] = "backoff",   [FEED_STANDBY] = "standby",
        [FEED_STOPPED] = "stopped",
};

static const char *const failure_names[_FEED_FAILURE_MAX] = {
        [FEED_FAILURE_NONE] = "none",         [FEED_FAILURE_TRANSIENT] = "transient",
        [FEED_FAILURE_AUTH] = "authentication", [FEED_FAILURE_TLS] = "tls",
        [FEED_FAILURE_DATABASE] = "database",
        [FEED_FAILURE_FATAL] = "fatal",
};

/* Legal transitions: bit N of allowed[S] is set when S → N is allowed. */
#define B(s) (1u << (s))
static const unsigned allowed[_FEED_STATE_MAX] = {
        [FEED_NEW] = B(FEED_REGISTERING) | B(FEED_STOPPED),
        [FEED_REGISTERING] = B(FEED_QUEUED) | B(FEED_FETCHING) | B(FEED_BACKOFF) |
                             B(FEED_STOPPED) | B(FEED_WAITING) | B(FEED_STANDBY),
        [FEED_QUEUED] = B(FEED_FETCHING) | B(FEED_BACKOFF) | B(FEED_STOPPED) |
                        B(FEED_REGISTERING),
        [FEED_FETCHING] = B(FEED_STORING) | B(FEED_PIPELINING) | B(FEED_BACKOFF) |
                          B(FEED_STOPPED) | B(FEED_REGISTERING),
        [FEED_STORING] = B(FEED_QUEUED) | B(FEED_FETCHING) | B(FEED_PIPELINING) |
                         B(FEED_WAITING) | B(FEED_BACKOFF) | B(FEED_REGISTERING) |
                         B(FEED_STOPPED),
        [FEED_PIPELINING] = B(FEED_FETCHING) | B(FEED_STORING) | B(FEED_WAITING) |
                            B(FEED_BACKOFF) | B(FEED_REGISTERING) | B(FEED_STOPPED),
        [FEED_WAITING] = B(FEED_QUEUED) | B(FEED_FETCHING) | B(FEED_REGISTERING) |
                         B(FEED_BACKOFF) | B(FEED_STOPPED),
        [FEED_BACKOFF] = B(FEED_REGISTERING) | B(FEED_QUEUED) | B(FEED_FETCHING) |
                         B(FEED_BACKOFF) | B(FEED_STOPPED),
        [FEED_STANDBY] = B(FEED_REGISTERING) | B(FEED_STOPPED),
        [FEED_STOPPED] = B(FEED_REGISTERING),
};
#undef B

const char *feed_state_to_string(FeedState s) {
        return s >= 0 && s < _FEED_STATE_MAX ? state_names[s] : NULL;
}

const char *feed_failure_to_string(FeedFailure f) {
        return f >= 0 && f < _FEED_FAILURE_MAX ? failure_names[f] : NULL;
}

static void feed_set_state(Feed *f, FeedState state) {
        if (f->state == state)
                return;
        if (!(allowed[f->state] & (1u << state))) {
                log_full(LOG_ERR, 0, NULL, &f->log, "Illegal feed transition %s → %s",
                         feed_state_to_string(f->state), feed_state_to_string(state));
                abort();
        }
        log_full(LOG_DEBUG, 0, NULL, &f->log, "State %s → %s", feed_state_to_string(f->state),
                 feed_state_to_string(state));
        f->state = state;
        if (f->ctx && f->ctx->on_change)
                f->ctx->on_change(f, f->ctx->userdata);
}

/* ---- sources ------------------------------------------------------------------------------ */

int feed_source_new(const SourceConfig *config, FeedSource **ret) {
        FeedSource *s = calloc(1, sizeof(FeedSource));

        if (!s)
                return -ENOMEM;
        s->config = config;
        *ret = s;
        return 0;
}

FeedSource *feed_source_free(FeedSource *s) {
        if (!s)
                return NULL;
        free(s->feeds);
        free(s);
        return NULL;
}

const SourceConfig *feed_source_config(FeedSource *s) {
        return s->config;
}

void feed_source_set_config(FeedSource *s, const SourceConfig *config) {
        s->config = config;
        /* The feeds' log lines name the organization from the configuration in force. */
        for (size_t i = 0; i < s->n_feeds; i++)
                s->feeds[i]->log.organization = config->name;
}

static int feed_source_attach(FeedSource *s, Feed *f) {
        Feed **n = realloc(s->feeds, (s->n_feeds + 1) * sizeof(Feed *));

        if (!n)
                return -ENOMEM;
        s->feeds = n;
        s->feeds[s->n_feeds++] = f;
        return 0;
}

static void feed_source_detach(FeedSource *s, Feed *f) {
        for (size_t i = 0; i < s->n_feeds; i++)
                if (s->feeds[i] == f) {
                        memmove(s->feeds + i, s->feeds + i + 1,
                                (s->n_feeds - i - 1) * sizeof(Feed *));
                        s->n_feeds--;
                        return;
                }
}

static void feed_fetch(Feed *f);

static void feed_release_slot(Feed *f) {
        FeedSource *s = f->source;

        if (!f->holds_slot)
                return;
        f->holds_slot = false;
        s->in_flight--;
        /* Hand the slot to the feed that has waited; round robin by position. */
        for (size_t i = 0; i < s->n_feeds; i++)
                if (s->feeds[i]->state == FEED_QUEUED && s->in_flight < s->config->max_parallel) {
                        Feed *next = s->feeds[i];

                        /* Move it to the end so the next free slot goes to another feed. */
                        memmove(s->feeds + i, s->feeds + i + 1,
                                (s->n_feeds - i - 1) * sizeof(Feed *));
                        s->feeds[s->n_feeds - 1] = next;
                        feed_fetch(next);
                        return;
                }
}

/* ---- object --------------------------------------------------------------------------------- */

int feed_new(const FeedContext *ctx, FeedSource *source, const char *project, Feed **ret) {
        _cleanup_(feed_freep) Feed *f = NULL;
        int r;

        f = calloc(1, sizeof(Feed));
        if (!f)
                return -ENOMEM;
        f->ctx = ctx;
        f->source = source;
        f->log = LOG_CONTEXT_NULL;
        if (project) {
                f->project = strdup(project);
                if (!f->project)
                        return -ENOMEM;
        }
        r = feed_source_attach(source, f);
        if (r < 0) {
                f->source = NULL;
                return r;
        }
        f->log.organization = source->config->name;
        f->log.project = f->project;
        *ret = TAKE_PTR(f);
        return 0;
}

Feed *feed_free(Feed *f) {
        if (!f)
                return NULL;
        f->ctx = NULL;
        feed_stop(f);
        if (f->source)
                feed_source_detach(f->source, f);
        free(f->project);
        free(f->token);
        free(f->request_token);
        free(f->pending_token);
        free(f->held_copy);
        free(f->held_token);
        free(f->deferred_message);
        free(f->last_error);
        free(f);
        return NULL;
}

FeedState feed_get_state(Feed *f) {
        return f->state;
}

FeedFailure feed_get_failure(Feed *f) {
        return f->failure;
}

bool feed_caught_up(Feed *f) {
        return f->caught_up;
}

bool feed_owned(Feed *f) {
        return f->owned;
}

bool feed_reached_end(Feed *f) {
        return f->reached_end;
}

int64_t feed_id(Feed *f) {
        return f->id;
}

const char *feed_project(Feed *f) {
        return f->project;
}

FeedSource *feed_source(Feed *f) {
        return f->source;
}

uint64_t feed_events_applied(Feed *f) {
        return f->events_applied;
}

const char *feed_last_error(Feed *f) {
        return f->last_error;
}

unsigned feed_requests(Feed *f) {
        return f->requests;
}

static bool str_eq(const char *a, const char *b) {
        return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

bool feed_matches(Feed *f, const SourceConfig *s, const char *project) {
        const SourceConfig *c = f->source->config;

        return strcmp(c->name, s->name) == 0 && strcmp(c->url, s->url) == 0 &&
               str_eq(f->project, project) && strcmp(c->types, s->types) == 0 &&
               strcmp(c->link_types, s->link_types) == 0;
}

/* ---- timers ------------------------------------------------------------------------------- */

static uint64_t now_usec(Feed *f) {
        uint64_t now = 0;

        (void) sd_event_now(f->ctx->event, CLOCK_MONOTONIC, &now);
        return now;
}

static void feed_register(Feed *f);

static int on_timer(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        Feed *f = userdata;

        if (f->stopping)
                return 0;
        if (f->need_register)
                feed_register(f);
        else
                feed_fetch(f);
        return 0;
}

static void feed_arm_timer(Feed *f, uint64_t delay) {
        uint64_t when = now_usec(f) + delay;
        int r;

        if (!f->timer) {
                r = sd_event_add_time(f->ctx->event, &f->timer, CLOCK_MONOTONIC, when,
                                      USEC_PER_MSEC * 10, on_timer, f);
                if (r < 0) {
                        log_full(LOG_ERR, r, NULL, &f->log, "Failed to arm a timer: %m");
                        return;
                }
                (void) sd_event_source_set_description(f->timer, "feed-timer");
                return;
        }
        (void) sd_event_source_set_time(f->timer, when);
        (void) sd_event_source_set_enabled(f->timer, SD_EVENT_ONESHOT);
}

/* Between 80 % and 100 %: retries of a standby never come later than the interval. */
static uint64_t jitter_down(uint64_t usec) {
        uint64_t span = usec / 5;

        return usec - (span ? (uint64_t) random() % (span + 1) : 0);
}

static uint64_t jitter(uint64_t usec) {
        /* ±20 %, so that feeds and instances that failed together do not retry together. */
        uint64_t span = usec / 5;

        if (span == 0)
                return usec;
        return usec - span + ((uint64_t) random() % (2 * span + 1));
}

/* Records a failure and schedules the next attempt. */
static void feed_fail(Feed *f, FeedFailure kind, uint64_t min_delay, const char *message) {
        uint64_t delay;

        if (f->job && kind != FEED_FAILURE_DATABASE) {
                /* A fetch failed while a batch is being stored: act once the store answers. */
                f->deferred_kind = kind;
                f->deferred_delay = min_delay;
                free(f->deferred_message);
                f->deferred_message = strdup(message);
                feed_set_state(f, FEED_STORING);
                return;
        }

        if (f->failures++ == 0)
                f->failing_since = now_usec(f);
        f->failure = kind;
        free(f->last_error);
        f->last_error = strdup(message);
        if (f->id > 0 && f->owned)
                (void) store_record_error(f->ctx->store, f->id, message);

        if (kind == FEED_FAILURE_FATAL) {
                log_full(LOG_ERR, 0, MESSAGE_ID_FEED_STOPPED, &f->log,
                         "Feed stopped: %s", message);
                feed_set_state(f, FEED_STOPPED);
                return;
        }
        f->backoff_usec = f->backoff_usec ? f->backoff_usec * 2 : BACKOFF_MIN_USEC;
        if (f->backoff_usec > f->ctx->config->max_backoff_usec)
                f->backoff_usec = f->ctx->config->max_backoff_usec;
        delay = jitter(f->backoff_usec);
        /* Retrying soon cannot help a rejected credential or an untrusted certificate. */
        if ((kind == FEED_FAILURE_AUTH || kind == FEED_FAILURE_TLS) && delay < AUTH_BACKOFF_USEC)
                delay = jitter(AUTH_BACKOFF_USEC);
        if (delay < min_delay)
                delay = min_delay;

        if (kind == FEED_FAILURE_AUTH)
                log_full(LOG_ERR, 0, MESSAGE_ID_AUTH_REJECTED, &f->log,
                         "Authentication rejected: %s; trying again in %" PRIu64 "s.", message,
                         (uint64_t) (delay / USEC_PER_SEC));
        else
                log_full(f->failures == 1 ? LOG_WARNING : LOG_NOTICE, 0,
                         MESSAGE_ID_FEED_FAILING, &f->log,
                         "%s; attempt %u failed, trying again in %.1fs.", message, f->failures,
                         (double) delay / 1e6);
        feed_set_state(f, FEED_BACKOFF);
        if (f->ctx->once && kind != FEED_FAILURE_AUTH && kind != FEED_FAILURE_TLS &&
            f->failures >= ONCE_MAX_FAILURES &&
            now_usec(f) - f->failing_since >= ONCE_MIN_FAILING_USEC) {
                log_full(LOG_ERR, 0, MESSAGE_ID_FEED_STOPPED, &f->log,
                         "Giving up after %u attempts in %.0fs (--once).", f->failures,
                         (double) (now_usec(f) - f->failing_since) / 1e6);
                f->failure = FEED_FAILURE_FATAL;
                feed_set_state(f, FEED_STOPPED);
                return;
        }
        feed_arm_timer(f, delay);
}

static void feed_succeeded(Feed *f) {
        f->failures = 0;
        f->backoff_usec = 0;
        if (f->failure != FEED_FAILURE_NONE && f->last_error)
                log_full(LOG_NOTICE, 0, NULL, &f->log, "Recovered.");
        f->failure = FEED_FAILURE_NONE;
        f->last_error = mfree(f->last_error);
}

/* ---- registration ------------------------------------------------------------------------- */

static void on_registered(int r, const char *error, const FeedClaim *claim, void *userdata) {
        Feed *f = userdata;
        char msg[512];

        f->job = NULL;
        if (f->stopping)
                return;
        if (r < 0) {
                if (r == -ECONNRESET)
                        f->owned = false;
                snprintf(msg, sizeof(msg), "Failed to register the feed in the warehouse: %s",
                         error ?: strerror(-r));
                f->need_register = true;
                feed_fail(f, FEED_FAILURE_DATABASE, 0, msg);
                return;
        }
        f->id = claim->feed_id;
        f->log.feed_id = claim->feed_id;
        f->caught_up = claim->caught_up;
        f->owned = claim->owned;
        if (!claim->owned) {
                /* Another instance holds the feed: try again every poll interval. */
                if (!f->standby_logged)
                        log_full(LOG_INFO, 0, NULL, &f->log,
                                 "Owned by another instance (%s, pid %d); standing by.",
                                 claim->owner_host ?: "?", claim->owner_pid);
                f->standby_logged = true;
                feed_set_state(f, FEED_STANDBY);
                feed_arm_timer(f, jitter_down(f->ctx->config->poll_interval_usec));
                return;
        }
        if (f->standby_logged)
                log_full(LOG_INFO, 0, NULL, &f->log, "Took the feed over.");
        f->standby_logged = false;
        f->need_register = false;
        free(f->token);
        f->token = claim->token ? strdup(claim->token) : NULL;
        log_full(LOG_DEBUG, 0, NULL, &f->log, "Registered; position %s.",
                 claim->token ? "stored" : "at the start of the feed");
        feed_fetch(f);
}

static void feed_register(Feed *f) {
        const SourceConfig *c = f->source->config;
        FeedIdentity id = {
                .organization = c->name,
                .base_url = c->url,
                .project = f->project,
                .types = c->types,
                .link_types = c->link_types,
                .api_version = c->api_version,
                .start_date = c->start_date,
        };
        int r;

        feed_set_state(f, FEED_REGISTERING);
        f->need_register = true;
        r = store_register_feed(f->ctx->store, &id, on_registered, f, &f->job);
        if (r < 0)
                feed_fail(f, FEED_FAILURE_DATABASE, 0, "Failed to queue the feed's registration");
}

int feed_start(Feed *f) {
        f->stopping = false;
        feed_register(f);
        return 0;
}

/* Forgets the fetch side: the request in flight, a held batch, a deferred failure. */
static void feed_drop_fetched(Feed *f) {
        f->request = http_request_free(f->request);
        feed_release_slot(f);
        f->held_copy = mfree(f->held_copy);
        f->held_token = mfree(f->held_token);
        f->deferred_kind = FEED_FAILURE_NONE;
        f->deferred_message = mfree(f->deferred_message);
}

void feed_stop(Feed *f) {
        f->stopping = true;
        feed_drop_fetched(f);
        f->timer = sd_event_source_disable_unref(f->timer);
        /* A commit on the wire completes or rolls back by itself; only forget its callback. */
        store_job_cancel(f->job);
        f->job = NULL;
}

void feed_session_lost(Feed *f) {
        if (f->stopping || f->state == FEED_NEW || f->state == FEED_STOPPED)
                return;
        f->owned = false;
        feed_drop_fetched(f);
        /* A commit on the wire has failed already; a queued one would be refused. */
        store_job_cancel(f->job);
        f->job = NULL;
        if (f->timer)
                (void) sd_event_source_set_enabled(f->timer, SD_EVENT_OFF);
        feed_register(f);
}

void feed_release(Feed *f) {
        bool owned = f->owned && f->id > 0;

        feed_stop(f);
        if (owned)
                (void) store_release_feed(f->ctx->store, f->id);
        f->owned = false;
}

void feed_kick(Feed *f) {
        if (f->stopping)
                return;
        if (f->state == FEED_BACKOFF || f->state == FEED_WAITING || f->state == FEED_STOPPED) {
                f->backoff_usec = 0;
                if (f->state == FEED_STOPPED || f->need_register)
                        feed_register(f);
                else
                        feed_fetch(f);
        }
}

/* ---- batches -------------------------------------------------------------------------------- */

static void feed_submit(Feed *f, char *copy, size_t size, size_t n_events, char *token,
                        bool last);

/* The busy states follow from what is in flight. */
static void feed_update_busy_state(Feed *f) {
        if (f->job && (f->request || f->held_copy))
                feed_set_state(f, FEED_PIPELINING);
        else if (f->job)
                feed_set_state(f, FEED_STORING);
        else if (f->request)
                feed_set_state(f, FEED_FETCHING);
}

static void on_applied(int r, const char *error, int64_t new_events, void *userdata) {
        Feed *f = userdata;
        char msg[1024];
        bool last = f->pending_last;

        f->job = NULL;
        if (r < 0) {
                /* The commit's outcome is unknown, or it failed: read the position again. A lost
                 * session took the feed's lock with it. */
                if (r == -ECONNRESET)
                        f->owned = false;
                f->need_register = true;
                f->pending_token = mfree(f->pending_token);
                if (f->stopping)
                        return;
                feed_drop_fetched(f);
                snprintf(msg, sizeof(msg), "Failed to store a batch of %zu events: %s",
                         f->pending_events, error ?: strerror(-r));
                feed_fail(f, FEED_FAILURE_DATABASE, 0, msg);
                return;
        }
        free(f->token);
        f->token = TAKE_PTR(f->pending_token);
        f->events_applied += f->pending_events;
        /* Project feeds share cross-project links: while batches bring events stored already,
         * apply_batch() is told to expect them. */
        f->saw_duplicates = new_events < (int64_t) f->pending_events;
        /* A commit is progress: a failure after it starts the backoff afresh. */
        f->failures = 0;
        f->backoff_usec = 0;
        if (f->deferred_kind == FEED_FAILURE_NONE)
                feed_succeeded(f);
        log_full(LOG_DEBUG, 0, NULL,
                 &(LogContext){ .feed_id = f->id,
                                .organization = f->log.organization,
                                .project = f->project,
                                .events = (int64_t) f->pending_events },
                 "Committed a batch: %zu events, %" PRIi64 " new.", f->pending_events, new_events);
        if (last && (!f->caught_up || !f->reached_end)) {
                if (!f->caught_up || f->events_applied > 0)
                        log_full(LOG_INFO, 0, MESSAGE_ID_FEED_CAUGHT_UP,
                                 &(LogContext){ .feed_id = f->id,
                                                .organization = f->log.organization,
                                                .project = f->project,
                                                .events = (int64_t) f->events_applied },
                                 "Caught up (%" PRIu64 " events committed since start).",
                                 f->events_applied);
        }
        f->caught_up = last;
        if (last)
                f->reached_end = true;
        if (f->stopping)
                return;

        if (f->held_copy) {
                /* The batch fetched meanwhile goes next; its successor is fetched meanwhile. */
                feed_submit(f, TAKE_PTR(f->held_copy), f->held_size, f->held_events,
                            TAKE_PTR(f->held_token), f->held_last);
                return;
        }
        if (f->deferred_kind != FEED_FAILURE_NONE) {
                _cleanup_free_ char *m = TAKE_PTR(f->deferred_message);
                FeedFailure kind = f->deferred_kind;

                f->deferred_kind = FEED_FAILURE_NONE;
                feed_fail(f, kind, f->deferred_delay, m ?: "failed");
                return;
        }
        if (f->request) {
                feed_update_busy_state(f);
                return;
        }
        if (last) {
                feed_set_state(f, FEED_WAITING);
                if (!f->ctx->once) {
                        uint64_t delay = f->ctx->config->poll_interval_usec;
                        uint64_t now = now_usec(f);

                        if (f->source->not_before > now + delay)
                                delay = f->source->not_before - now;
                        feed_arm_timer(f, delay);
                }
                return;
        }
        feed_fetch(f);
}

/* The batch's rows are all on the wire: fetch (and parse) the next batch while PostgreSQL
 * applies this one. Not earlier: parsing keeps the event loop busy for milliseconds, and
 * PostgreSQL would wait that long for the rest of the COPY data. */
static void on_sent(void *userdata) {
        Feed *f = userdata;

        if (f->deferred_kind == FEED_FAILURE_NONE)
                feed_fetch(f);
}

/* Hands a batch to the store; unless it is the last, the next one is fetched once this one's
 * rows are sent (on_sent()). */
static void feed_submit(Feed *f, char *copy, size_t size, size_t n_events, char *token,
                        bool last) {
        int r;

        free(f->pending_token);
        f->pending_token = token;
        f->pending_last = last;
        f->pending_events = n_events;
        r = store_apply_copy(f->ctx->store,
                             &(StoreBatch){ .feed_id = f->id,
                                            .copy_data = copy,
                                            .copy_size = size,
                                            .n_events = n_events,
                                            .token = token,
                                            .caught_up = last,
                                            .fresh = !f->saw_duplicates },
                             last ? NULL : on_sent, on_applied, f, &f->job);
        if (r < 0) {
                f->pending_token = mfree(f->pending_token);
                feed_fail(f, FEED_FAILURE_TRANSIENT, 0, "Out of memory queueing a batch");
                return;
        }
        feed_update_busy_state(f);
}

static bool is_html(const HttpResponse *resp) {
        size_t i = 0;

        if (resp->content_type && strcasestr(resp->content_type, "html"))
                return true;
        while (i < resp->size && (resp->body[i] == ' ' || resp->body[i] == '\n' ||
                                  resp->body[i] == '\r' || resp->body[i] == '\t'))
                i++;
        return i < resp->size && resp->body[i] == '<';
}

/* The "message" of an Azure DevOps JSON error body, if there is one. */
static void error_body_message(const HttpResponse *resp, char *buf, size_t n) {
        json_t *root, *m, *k;

        buf[0] = 0;
        if (is_html(resp) || resp->size == 0)
                return;
        root = json_loadb(resp->body, resp->size, 0, NULL);
        if (!root)
                return;
        m = json_object_get(root, "message");
        k = json_object_get(root, "typeKey");
        if (json_is_string(m))
                snprintf(buf, n, ": %.300s%s%.100s%s", json_string_value(m),
                         json_is_string(k) ? " (" : "", json_is_string(k) ? json_string_value(k) : "",
                         json_is_string(k) ? ")" : "");
        json_decref(root);
}

static void feed_take_batch(Feed *f, const HttpResponse *resp) {
        _cleanup_(batch_freep) Batch *b = NULL;
        _cleanup_free_ char *why = NULL;
        const char *next;
        char msg[1024];
        int r;

        r = batch_parse(resp->body, resp->size, &b, &why);
        if (r == -ENOMEM) {
                feed_fail(f, FEED_FAILURE_TRANSIENT, 0, "Out of memory parsing a batch");
                return;
        }
        if (r < 0) {
                snprintf(msg, sizeof(msg),
                         "Rejected a batch that fails validation (%s; ActivityId %s)",
                         why ?: "invalid", f->activity_id);
                feed_fail(f, FEED_FAILURE_TRANSIENT, 0, msg);
                return;
        }
        next = b->token;
        if (!next && b->is_last)
                next = f->request_token; /* nothing new: keep the position (NULL: the start) */
        if (!next && !b->is_last) {
                feed_fail(f, FEED_FAILURE_TRANSIENT, 0,
                          "A non-final batch carries no continuation token");
                return;
        }
        if (!b->is_last && f->request_token && strcmp(next, f->request_token) == 0) {
                feed_fail(f, FEED_FAILURE_TRANSIENT, 0,
                          "A non-final batch did not advance the continuation token");
                return;
        }
        _cleanup_free_ char *token = next ? strdup(next) : NULL, *copy = NULL;
        size_t size;

        if ((next && !token) || store_format_copy(b, &copy, &size) < 0) {
                feed_fail(f, FEED_FAILURE_TRANSIENT, 0, "Out of memory");
                return;
        }
        if (f->job) {
                /* The previous batch is still being stored: this one waits its turn. */
                f->held_copy = TAKE_PTR(copy);
                f->held_size = size;
                f->held_events = b->n_events;
                f->held_token = TAKE_PTR(token);
                f->held_last = b->is_last;
                feed_update_busy_state(f);
                return;
        }
        feed_submit(f, TAKE_PTR(copy), size, b->n_events, TAKE_PTR(token), b->is_last);
}

/* Throttling is per identity, so per source: Retry-After (on any response, 200 included),
 * X-RateLimit-Delay, and a nearly spent X-RateLimit-Remaining push back the source's next request.
 * Returns the delay this response asks for. */
static uint64_t feed_source_throttle(Feed *f, const HttpResponse *resp, uint64_t now) {
        FeedSource *s = f->source;
        uint64_t delay = 0;

        if (resp->retry_after_usec >= 0)
                delay = (uint64_t) resp->retry_after_usec;
        if (resp->ratelimit_delay_usec > 0 && (uint64_t) resp->ratelimit_delay_usec > delay)
                delay = (uint64_t) resp->ratelimit_delay_usec;
        if (resp->ratelimit_remaining >= 0 && resp->ratelimit_limit > 0 &&
            resp->ratelimit_remaining * 10 < resp->ratelimit_limit) {
                /* Spread what is left of the window's budget until it resets. */
                int64_t left = resp->ratelimit_reset > 0 ? resp->ratelimit_reset - (int64_t) time(NULL)
                                                         : 60;
                uint64_t spread;

                if (left < 1)
                        left = 1;
                spread = (uint64_t) left * USEC_PER_SEC / (uint64_t) (resp->ratelimit_remaining + 1);
                if (spread > 60 * USEC_PER_SEC)
                        spread = 60 * USEC_PER_SEC;
                if (spread > delay)
                        delay = spread;
        }
        if (delay == 0) {
                s->throttled = false;
                return 0;
        }
        if (now + delay > s->not_before)
                s->not_before = now + delay;
        if (!s->throttled && delay >= USEC_PER_SEC) {
                log_full(LOG_NOTICE, 0, MESSAGE_ID_THROTTLED, &f->log,
                         "The server asks to slow down: next request to %s in %.1fs "
                         "(Retry-After %s, X-RateLimit-Remaining %" PRIi64 ").",
                         s->config->name, (double) delay / 1e6,
                         resp->retry_after_usec >= 0 ? "set" : "unset", resp->ratelimit_remaining);
                s->throttled = true;
        }
        return delay;
}

static void feed_handle_response(Feed *f, const HttpResponse *resp, uint64_t now,
                                 uint64_t min_delay, char *msg, size_t msg_size, char *detail,
                                 size_t detail_size);

/* The response is done with: free the request and its slot, then act on the failure. */
static void feed_fail_response(Feed *f, FeedFailure kind, uint64_t min_delay, const char *msg) {
        f->request = http_request_free(f->request);
        feed_release_slot(f);
        feed_fail(f, kind, min_delay, msg);
}

static void on_http_done(HttpRequest *req _unused_, const HttpResponse *resp, void *userdata) {
        Feed *f = userdata;
        char msg[1024], detail[512];
        uint64_t now = now_usec(f), min_delay = 0;

        /* Every line about this response carries its status and ActivityId. */
        snprintf(f->activity_id, sizeof(f->activity_id), "%s", resp->activity_id ?: "none");
        f->log.http_status = (int) resp->status;
        f->log.activity_id = resp->activity_id ? f->activity_id : NULL;
        feed_handle_response(f, resp, now, min_delay, msg, sizeof(msg), detail, sizeof(detail));
        f->log.http_status = 0;
        f->log.activity_id = NULL;
}

static void feed_handle_response(Feed *f, const HttpResponse *resp, uint64_t now,
                                 uint64_t min_delay, char *msg, size_t msg_size, char *detail,
                                 size_t detail_size) {

        min_delay = feed_source_throttle(f, resp, now);

        if (resp->code != CURLE_OK) {
                if (resp->code == CURLE_PEER_FAILED_VERIFICATION ||
                    resp->code == CURLE_SSL_CACERT_BADFILE || resp->code == CURLE_SSL_CERTPROBLEM) {
                        snprintf(msg, msg_size,
                                 "TLS: the server's certificate is not trusted (%s); %s",
                                 resp->error,
                                 f->source->config->ca_file
                                         ? "check ca-file and that the URL names the host the "
                                           "certificate is for"
                                         : "for a private CA set ca-file");
                        feed_fail_response(f, FEED_FAILURE_TLS, min_delay, msg);
                        return;
                }
                if (resp->too_large)
                        snprintf(msg, msg_size,
                                 "The response is larger than max-response-size (%" PRIu64
                                 " bytes); refused",
                                 f->ctx->config->max_response_size);
                else
                        snprintf(msg, msg_size, "Request failed: %s", resp->error);
                goto transient;
        }

        if (resp->status == 203 || (resp->status >= 300 && resp->status < 400) ||
            resp->status == 401 || resp->status == 403 ||
            (resp->status >= 200 && resp->status < 300 && is_html(resp))) {
                snprintf(msg, msg_size,
                         "HTTP %ld%s: the server did not accept the credential (check the token, "
                         "its expiry and its vso.work scope; ActivityId %s)",
                         resp->status, is_html(resp) ? " with an HTML page" : "", f->activity_id);
                feed_fail_response(f, FEED_FAILURE_AUTH, min_delay, msg);
                return;
        }

        if (resp->status >= 200 && resp->status < 300) {
                /* The request object owns the body; keep it until the batch is copied. */
                HttpRequest *r = TAKE_PTR(f->request);

                feed_release_slot(f);
                feed_take_batch(f, resp);
                http_request_free(r);
                return;
        }

        error_body_message(resp, detail, detail_size);
        if (resp->status == 400 && f->request_token) {
                snprintf(msg, msg_size,
                         "HTTP 400%s: the server rejected the stored continuation token; "
                         "reset the feed (UPDATE witlink.feed SET continuation_token = NULL "
                         "WHERE feed_id = %" PRIi64 ") to start it over (ActivityId %s)",
                         detail, f->id, f->activity_id);
                feed_fail_response(f, FEED_FAILURE_FATAL, 0, msg);
                return;
        }
        if (resp->status == 400 || resp->status == 404) {
                snprintf(msg, msg_size,
                         "HTTP %ld%s: check url, projects, filters and api-version (ActivityId %s)",
                         resp->status, detail, f->activity_id);
                if (min_delay < NOT_FOUND_BACKOFF_USEC)
                        min_delay = NOT_FOUND_BACKOFF_USEC;
                feed_fail_response(f, FEED_FAILURE_TRANSIENT, min_delay, msg);
                return;
        }
        snprintf(msg, msg_size, "HTTP %ld%s (ActivityId %s)", resp->status, detail,
                 f->activity_id);
        if (resp->host_offline && min_delay < HOST_OFFLINE_BACKOFF_USEC)
                min_delay = HOST_OFFLINE_BACKOFF_USEC;
        if (resp->status == 429)
                log_full(LOG_WARNING, 0, MESSAGE_ID_THROTTLED, &f->log,
                         "Throttled by the server (HTTP 429).");

transient:
        feed_fail_response(f, FEED_FAILURE_TRANSIENT, min_delay, msg);
}

static void feed_fetch(Feed *f) {
        const SourceConfig *c = f->source->config;
        _cleanup_free_ char *url = NULL;
        uint64_t now;
        int r;

        if (f->stopping || f->request || f->held_copy)
                return;
        now = now_usec(f);
        /* While a batch is being stored the next one is fetched only if that can start now;
         * otherwise on_applied() comes back here. */
        if (f->job && (f->source->not_before > now || f->source->in_flight >= c->max_parallel))
                return;
        if (f->source->not_before > now) {
                /* Retry-After or a rate-limit delay is still running. */
                if (f->state != FEED_WAITING && f->state != FEED_BACKOFF)
                        feed_set_state(f, FEED_BACKOFF);
                feed_arm_timer(f, f->source->not_before - now);
                return;
        }
        if (f->source->in_flight >= c->max_parallel) {
                feed_set_state(f, FEED_QUEUED);
                return;
        }

        FeedQuery q = {
                .base_url = c->url,
                .project = f->project,
                .api_version = c->api_version,
                .token = f->job ? f->pending_token : f->token,
                .types = c->types,
                .link_types = c->link_types,
                .start_date = c->start_date,
        };
        r = url_build_feed(&q, &url);
        if (r < 0) {
                feed_fail(f, FEED_FAILURE_TRANSIENT, 0, "Out of memory building a URL");
                return;
        }
        free(f->request_token);
        f->request_token = q.token ? strdup(q.token) : NULL;

        HttpRequestOptions o = {
                .url = url,
                .auth = c->auth,
                .token = c->token,
                .ca_file = c->ca_file,
                .timeout_usec = f->ctx->config->http_timeout_usec,
                .max_size = f->ctx->config->max_response_size,
        };
        f->request = http_request_free(f->request);
        r = http_request_start(f->ctx->http, &o, on_http_done, f, &f->request);
        if (r < 0) {
                feed_fail(f, FEED_FAILURE_TRANSIENT, 0, "Failed to start an HTTP request");
                return;
        }
        f->requests++;
        f->holds_slot = true;
        f->source->in_flight++;
        log_full(LOG_DEBUG, 0, NULL, &f->log, "GET %s", url);
        feed_update_busy_state(f);
}
