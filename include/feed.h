/* SPDX-License-Identifier: MIT */
/* One feed: a chain of batches of one source (a project or the whole collection), its state
 * machine, request scheduling, backoff and the hand-over of each batch to the store. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "http.h"
#include "log.h"
#include "macro.h"
#include "store.h"

typedef struct Feed Feed;
typedef struct FeedSource FeedSource;

typedef enum FeedState {
        FEED_NEW,
        FEED_REGISTERING, /* reading (or creating) the feed's row and position */
        FEED_QUEUED,      /* waiting for a free request slot of its source */
        FEED_FETCHING,    /* a request is in flight */
        FEED_STORING,     /* a batch is being committed */
        FEED_PIPELINING,  /* a batch is being committed while the next is fetched or waits */
        FEED_WAITING,     /* caught up: the poll interval runs */
        FEED_BACKOFF,     /* after a failure: waiting to try again */
        FEED_STANDBY,     /* another instance owns the feed: try to take it every poll interval */
        FEED_STOPPED,     /* needs an operator (e.g. the server rejected the token) */
        _FEED_STATE_MAX,
} FeedState;

typedef enum FeedFailure {
        FEED_FAILURE_NONE,
        FEED_FAILURE_TRANSIENT, /* network, 5xx, 429, bad body: retried with backoff */
        FEED_FAILURE_AUTH,      /* credential rejected: long backoff */
        FEED_FAILURE_TLS,       /* the server's certificate is not trusted: long backoff */
        FEED_FAILURE_DATABASE,  /* the warehouse refused or went away */
        FEED_FAILURE_FATAL,     /* stopped until an operator acts */
        _FEED_FAILURE_MAX,
} FeedFailure;

/* What feeds share: the loop, the HTTP client, the store and the daemon settings. */
typedef struct FeedContext {
        sd_event *event;
        HttpClient *http;
        Store *store;
        const Config *config;
        bool once;
        /* Called after every state change (for the status line and --once). */
        void (*on_change)(Feed *f, void *userdata);
        void *userdata;
} FeedContext;

int feed_source_new(const SourceConfig *config, FeedSource **ret);
FeedSource *feed_source_free(FeedSource *s);
DEFINE_CLEANUP_FUNC(FeedSource, feed_source_free);
const SourceConfig *feed_source_config(FeedSource *s);
/* Points the source at a new configuration of the same name (after a reload). */
void feed_source_set_config(FeedSource *s, const SourceConfig *config);

int feed_new(const FeedContext *ctx, FeedSource *source, const char *project, Feed **ret);
Feed *feed_free(Feed *f);
DEFINE_CLEANUP_FUNC(Feed, feed_free);

/* Registers the feed and starts following it. */
int feed_start(Feed *f);
/* Stops starting new work: cancels requests and timers; a commit on the wire completes. */
void feed_stop(Feed *f);
/* Tries again at once if the feed is backing off or waiting (after a reload). */
void feed_kick(Feed *f);
/* The database session ended: the feed's lock is gone with it. Stop writing, claim it again. */
void feed_session_lost(Feed *f);
/* Stops the feed and lets another instance take it (the configuration no longer has it). */
void feed_release(Feed *f);

FeedState feed_get_state(Feed *f);
FeedFailure feed_get_failure(Feed *f);
const char *feed_state_to_string(FeedState s);
const char *feed_failure_to_string(FeedFailure f);
bool feed_caught_up(Feed *f);
/* True while this instance owns the feed. */
bool feed_owned(Feed *f);
/* True once this process has committed a batch with isLastBatch since it started. */
bool feed_reached_end(Feed *f);
int64_t feed_id(Feed *f);
const char *feed_project(Feed *f);
FeedSource *feed_source(Feed *f);
uint64_t feed_events_applied(Feed *f);
const char *feed_last_error(Feed *f);
/* HTTP requests sent since the feed started (for tests and --once's auth rule). */
unsigned feed_requests(Feed *f);
/* True when source, project and filters are those of the given configuration. */
bool feed_matches(Feed *f, const SourceConfig *s, const char *project);
