/* SPDX-License-Identifier: MIT */
/* The warehouse: one nonblocking PostgreSQL session on the event loop, migrations, and the
 * one-transaction-per-batch write. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "batch.h"
#include "macro.h"

typedef struct Store Store;
typedef struct StoreJob StoreJob;

typedef enum StoreState {
        STORE_DISCONNECTED, /* waiting to (re)connect */
        STORE_CONNECTING,
        STORE_MIGRATING,    /* bringing the schema up to date, setting up the session */
        STORE_READY,        /* idle */
        STORE_BUSY,         /* a job is on the wire */
        STORE_CLOSED,       /* stopped for good */
        _STORE_STATE_MAX,
} StoreState;

typedef struct FeedIdentity {
        const char *organization;
        const char *base_url;
        const char *project; /* NULL: collection-wide */
        const char *types;
        const char *link_types;
        const char *api_version;
        const char *start_date;
} FeedIdentity;

/* r: 0, or -ECONNRESET (the session was lost: the outcome of an apply is unknown until the
 * feed's position is read again), -EIO (the statement failed; error says why), -ENOTRECOVERABLE
 * (the schema is newer than this witlinkd). */
typedef struct FeedClaim {
        int64_t feed_id;
        const char *token; /* NULL: the start of the feed */
        bool caught_up;
        bool owned;             /* this session holds the feed's advisory lock */
        const char *owner_host; /* the last owner, when not owned */
        int owner_pid;
} FeedClaim;

typedef void (*StoreRegisterFunc)(int r, const char *error, const FeedClaim *claim,
                                  void *userdata);
typedef void (*StoreApplyFunc)(int r, const char *error, int64_t new_events, void *userdata);
typedef void (*StoreSentFunc)(void *userdata);
typedef void (*StoreStateFunc)(Store *s, StoreState old_state, StoreState new_state,
                               const char *error, void *userdata);

typedef struct StoreOptions {
        const char *conninfo;
        bool synchronous_commit;
        uint64_t statement_timeout_usec;
} StoreOptions;

int store_new(sd_event *event, const StoreOptions *o, StoreStateFunc on_state, void *userdata,
              Store **ret);
Store *store_free(Store *s);
DEFINE_CLEANUP_FUNC(Store, store_free);

/* Starts connecting; the state callback reports READY once the schema is current. */
int store_start(Store *s);
StoreState store_get_state(Store *s);
const char *store_state_to_string(StoreState state);
/* True when no job is queued or on the wire, or when no session could run one. */
bool store_is_idle(Store *s);
int store_schema_version(Store *s);

/* Finds or creates the feed row, tries to take the feed (its advisory lock) and returns its id,
 * stored position and owner. */
int store_register_feed(Store *s, const FeedIdentity *id, StoreRegisterFunc done, void *userdata,
                        StoreJob **ret);

/* Lets another instance take the feed; nobody waits for it. */
int store_release_feed(Store *s, int64_t feed_id);

/* A batch for store_apply_copy(). */
typedef struct StoreBatch {
        int64_t feed_id;
        char *copy_data; /* its events in COPY text form (store_format_copy()); taken */
        size_t copy_size;
        size_t n_events;
        const char *token; /* the feed's position after it (copied); NULL: the start */
        bool caught_up;    /* the server's isLastBatch */
        bool fresh;        /* none of the events is expected to be stored already
                            * (witlink.apply_batch()'s p_fresh: a faster insert, same outcome) */
} StoreBatch;

/* One transaction: the batch's events, the current state they lead to, the feed's new token
 * and counters, NOTIFY witlink. sent (may be NULL) runs once every row is on the wire, while
 * PostgreSQL applies them: from then on the session needs nothing from us until the result, so
 * that is when to start work that keeps the event loop busy (fetching and parsing the next
 * batch). done runs with the result; neither runs after store_job_cancel(). */
int store_apply_copy(Store *s, StoreBatch *b, StoreSentFunc sent, StoreApplyFunc done,
                     void *userdata, StoreJob **ret);

/* Records a feed's last error (NULL clears it) if this session owns the feed; nobody waits. */
int store_record_error(Store *s, int64_t feed_id, const char *message);

/* The job's callback will not run; the store forgets it when it is safe to. */
void store_job_cancel(StoreJob *j);

/* Exposed for the unit tests: the COPY text form of a batch. */
int store_format_copy(const Batch *b, char **ret, size_t *ret_size);
