/* SPDX-License-Identifier: MIT */
/* The warehouse: one nonblocking PostgreSQL session on the event loop, migrations, and the
 * one-transaction-per-batch write. */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "log.h"
#include "migrations.h"
#include "store.h"

#ifndef WITLINKD_VERSION
#define WITLINKD_VERSION "0"
#endif

#define CONNECT_TIMEOUT_USEC (30 * USEC_PER_SEC)
#define RECONNECT_MIN_USEC (1 * USEC_PER_SEC)
#define RECONNECT_MAX_USEC (30 * USEC_PER_SEC)
#define COPY_CHUNK (256 * 1024)
/* Serialises migrations of every witlinkd on one database ("witlink" in ASCII). */
#define MIGRATION_LOCK_KEY "7453106170129771" /* any constant bigint of our own */

typedef enum JobKind {
        JOB_REGISTER,
        JOB_APPLY,
        JOB_RECORD_ERROR,
        JOB_RELEASE,
        JOB_MIGRATE_CHECK,
        JOB_MIGRATE_APPLY,
        JOB_SETUP,
        JOB_ROLLBACK,
} JobKind;

typedef enum CopyState {
        COPY_NONE,
        COPY_SENDING,
        COPY_DONE,
} CopyState;

struct StoreJob {
        StoreJob *next;
        JobKind kind;
        bool cancelled;

        /* JOB_REGISTER and JOB_RECORD_ERROR: a parameterised statement */
        char *params[10];
        int n_params;

        /* JOB_APPLY */
        int64_t feed_id;
        char *token;
        bool caught_up;
        bool fresh;
        size_t n_events;
        char *copy_data;
        size_t copy_size, copy_sent;
        CopyState copy_state;

        /* outcome */
        char *error;
        bool got_row;
        int64_t out_feed_id;
        char *out_token;
        bool out_caught_up;
        bool out_owned;
        char *out_owner_host;
        int out_owner_pid;
        int64_t out_count;

        StoreRegisterFunc on_register;
        StoreApplyFunc on_apply;
        StoreSentFunc on_sent;
        void *userdata;
};

struct Store {
        sd_event *event;
        char *conninfo;
        bool synchronous_commit;
        uint64_t statement_timeout_usec;
        PGconn *conn;
        int fd;
        sd_event_source *io;
        sd_event_source *timer;
        StoreState state;
        uint64_t backoff_usec;
        int schema_version;

        StoreJob *current;
        StoreJob *queue_head, *queue_tail;

        StoreStateFunc on_state;
        void *userdata;
};

static const char *const state_names[_STORE_STATE_MAX] = {
        [STORE_DISCONNECTED] = "disconnected", [STORE_CONNECTING] = "connecting",
        [STORE_MIGRATING] = "migrating",       [STORE_READY] = "ready",
        [STORE_BUSY] = "busy",                 [STORE_CLOSED] = "closed",
};

const char *store_state_to_string(StoreState state) {
        return state >= 0 && state < _STORE_STATE_MAX ? state_names[state] : NULL;
}

static const char stage_columns[] =
        "seq, rel, link_type, source_id, target_id, changed_date, op, is_active_reported, "
        "changed_by_id, changed_by, changed_by_display_name, comment, source_project_id, "
        "target_project_id";

static const char stage_table_sql[] =
        "CREATE TEMP TABLE IF NOT EXISTS witlink_stage ("
        " seq integer NOT NULL, rel text NOT NULL, link_type text, source_id integer NOT NULL,"
        " target_id integer NOT NULL, changed_date timestamptz NOT NULL, op text NOT NULL,"
        " is_active_reported boolean, changed_by_id text, changed_by text,"
        " changed_by_display_name text, comment text, source_project_id uuid,"
        " target_project_id uuid) ON COMMIT DELETE ROWS;";

static const char migrate_check_sql[] =
        "BEGIN;"
        "SELECT pg_advisory_xact_lock(" MIGRATION_LOCK_KEY ");"
        "CREATE SCHEMA IF NOT EXISTS witlink;"
        "CREATE TABLE IF NOT EXISTS witlink.schema_version ("
        " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now(),"
        " witlinkd_version text NOT NULL);"
        "SELECT coalesce(max(version), 0) FROM witlink.schema_version;";

static const char register_sql[] =
        "SELECT feed_id, continuation_token, caught_up, owned, owner_host, owner_pid "
        "FROM witlink.claim_feed($1, $2, $3, $4, $5, $6, $7, $8, $9)";

static const char release_sql[] = "SELECT witlink.release_feed($1)";

static const char record_error_sql[] =
        "UPDATE witlink.feed SET last_error = $2::text, "
        "last_error_at = CASE WHEN $2::text IS NULL THEN NULL ELSE now() END "
        "WHERE feed_id = $1::bigint AND witlink.feed_lock_held($1::bigint, pg_backend_pid())";

static void store_set_state(Store *s, StoreState state, const char *error);
static void store_pump(Store *s);
static int store_connect(Store *s);

/* ---- jobs ------------------------------------------------------------------------------- */

static StoreJob *job_free(StoreJob *j) {
        if (!j)
                return NULL;
        for (int i = 0; i < j->n_params; i++)
                free(j->params[i]);
        free(j->token);
        free(j->copy_data);
        free(j->error);
        free(j->out_token);
        free(j->out_owner_host);
        free(j);
        return NULL;
}

static StoreJob *job_new(JobKind kind) {
        StoreJob *j = calloc(1, sizeof(StoreJob));

        if (j)
                j->kind = kind;
        return j;
}

static int job_add_param(StoreJob *j, const char *v) {
        if (!v) {
                j->params[j->n_params++] = NULL;
                return 0;
        }
        j->params[j->n_params] = strdup(v);
        if (!j->params[j->n_params])
                return -ENOMEM;
        j->n_params++;
        return 0;
}

static void store_enqueue(Store *s, StoreJob *j, bool front) {
        if (front) {
                j->next = s->queue_head;
                s->queue_head = j;
                if (!s->queue_tail)
                        s->queue_tail = j;
        } else {
                j->next = NULL;
                if (s->queue_tail)
                        s->queue_tail->next = j;
                else
                        s->queue_head = j;
                s->queue_tail = j;
        }
}

static StoreJob *store_dequeue(Store *s) {
        StoreJob *j = s->queue_head;

        if (j) {
                s->queue_head = j->next;
                if (!s->queue_head)
                        s->queue_tail = NULL;
                j->next = NULL;
        }
        return j;
}

void store_job_cancel(StoreJob *j) {
        if (j)
                j->cancelled = true;
}

static void job_complete(StoreJob *j, int r) {
        if (!j->cancelled) {
                if (j->on_register) {
                        FeedClaim claim = {
                                .feed_id = j->out_feed_id,
                                .token = j->out_token,
                                .caught_up = j->out_caught_up,
                                .owned = j->out_owned,
                                .owner_host = j->out_owner_host,
                                .owner_pid = j->out_owner_pid,
                        };
                        j->on_register(r, j->error, &claim, j->userdata);
                }
                else if (j->on_apply)
                        j->on_apply(r, j->error, j->out_count, j->userdata);
        }
        job_free(j);
}

/* ---- COPY text ---------------------------------------------------------------------------- */

typedef struct CopyBuffer {
        char *data;
        size_t size, allocated;
        bool failed;
} CopyBuffer;

static char *copy_reserve(CopyBuffer *b, size_t n) {
        if (b->failed)
                return NULL;
        if (b->size + n > b->allocated) {
                size_t a = b->allocated ? b->allocated : 64 * 1024;
                char *d;

                while (a < b->size + n)
                        a *= 2;
                d = realloc(b->data, a);
                if (!d) {
                        b->failed = true;
                        return NULL;
                }
                b->data = d;
                b->allocated = a;
        }
        return b->data + b->size;
}

static void copy_raw(CopyBuffer *b, const char *s, size_t n) {
        char *o = copy_reserve(b, n);

        if (o) {
                memcpy(o, s, n);
                b->size += n;
        }
}

/* One column: NULL as \N, the text escaped; PostgreSQL text cannot hold U+0000, so it becomes
 * U+FFFD. Runs without special characters are copied in one go. */
static void copy_field(CopyBuffer *b, const BatchString *v, char sep) {
        const char *p, *end;
        char *o;

        if (!v->p) {
                copy_raw(b, sep ? "\\N\t" : "\\N\n", 3);
                return;
        }
        o = copy_reserve(b, v->len * 3 + 1);
        if (!o)
                return;
        for (p = v->p, end = v->p + v->len; p < end;) {
                const char *q = p;

                while (q < end && *q != '\\' && *q != '\t' && *q != '\n' && *q != '\r' && *q)
                        q++;
                memcpy(o, p, (size_t) (q - p));
                o += q - p;
                if (q == end)
                        break;
                switch (*q) {
                case '\\':
                        *o++ = '\\';
                        *o++ = '\\';
                        break;
                case '\t':
                        *o++ = '\\';
                        *o++ = 't';
                        break;
                case '\n':
                        *o++ = '\\';
                        *o++ = 'n';
                        break;
                case '\r':
                        *o++ = '\\';
                        *o++ = 'r';
                        break;
                default: /* U+0000 */
                        memcpy(o, "\xEF\xBF\xBD", 3);
                        o += 3;
                }
                p = q + 1;
        }
        *o++ = sep ? '\t' : '\n';
        b->size = (size_t) (o - b->data);
}

int store_format_copy(const Batch *b, char **ret, size_t *ret_size) {
        CopyBuffer c = {};

        for (size_t i = 0; i < b->n_events; i++) {
                const LinkEvent *e = &b->events[i];
                char num[96];
                int n;

                n = snprintf(num, sizeof(num), "%zu\t", i);
                copy_raw(&c, num, (size_t) n);
                copy_field(&c, &e->rel, '\t');
                copy_field(&c, &e->link_type, '\t');
                n = snprintf(num, sizeof(num), "%" PRIi32 "\t%" PRIi32 "\t", e->source_id,
                             e->target_id);
                copy_raw(&c, num, (size_t) n);
                copy_field(&c, &e->changed_date, '\t');
                n = snprintf(num, sizeof(num), "%s\t%s\t", link_operation_to_string(e->operation),
                             e->is_active_reported < 0 ? "\\N"
                             : e->is_active_reported ? "t"
                                                     : "f");
                copy_raw(&c, num, (size_t) n);
                copy_field(&c, &e->changed_by_id, '\t');
                copy_field(&c, &e->changed_by, '\t');
                copy_field(&c, &e->changed_by_display_name, '\t');
                copy_field(&c, &e->comment, '\t');
                copy_field(&c, &e->source_project_id, '\t');
                copy_field(&c, &e->target_project_id, 0);
        }
        if (c.failed || !copy_reserve(&c, 1)) {
                free(c.data);
                return -ENOMEM;
        }
        c.data[c.size] = 0;
        *ret = c.data;
        *ret_size = c.size;
        return 0;
}

/* ---- public job constructors ---------------------------------------------------------------- */

int store_register_feed(Store *s, const FeedIdentity *id, StoreRegisterFunc done, void *userdata,
                        StoreJob **ret) {
        StoreJob *j = job_new(JOB_REGISTER);
        char host[256] = "", pid[32];
        int r = 0;

        (void) gethostname(host, sizeof(host) - 1);
        snprintf(pid, sizeof(pid), "%d", (int) getpid());

        if (!j)
                return -ENOMEM;
        r = job_add_param(j, id->organization);
        if (r >= 0)
                r = job_add_param(j, id->base_url);
        if (r >= 0)
                r = job_add_param(j, id->project);
        if (r >= 0)
                r = job_add_param(j, id->types ?: "");
        if (r >= 0)
                r = job_add_param(j, id->link_types ?: "");
        if (r >= 0)
                r = job_add_param(j, id->api_version);
        if (r >= 0)
                r = job_add_param(j, id->start_date);
        if (r >= 0)
                r = job_add_param(j, host);
        if (r >= 0)
                r = job_add_param(j, pid);
        if (r < 0) {
                job_free(j);
                return r;
        }
        j->on_register = done;
        j->userdata = userdata;
        store_enqueue(s, j, false);
        if (ret)
                *ret = j;
        store_pump(s);
        return 0;
}

int store_apply_copy(Store *s, StoreBatch *b, StoreSentFunc sent, StoreApplyFunc done,
                     void *userdata, StoreJob **ret) {
        StoreJob *j = job_new(JOB_APPLY);

        if (!j) {
                b->copy_data = mfree(b->copy_data);
                return -ENOMEM;
        }
        j->copy_data = TAKE_PTR(b->copy_data);
        j->copy_size = b->copy_size;
        j->feed_id = b->feed_id;
        j->caught_up = b->caught_up;
        j->fresh = b->fresh;
        j->n_events = b->n_events;
        j->token = b->token ? strdup(b->token) : NULL;
        if (b->token && !j->token) {
                job_free(j);
                return -ENOMEM;
        }
        j->on_apply = done;
        j->on_sent = sent;
        j->userdata = userdata;
        store_enqueue(s, j, false);
        if (ret)
                *ret = j;
        store_pump(s);
        return 0;
}

/* A fire-and-forget statement about one feed. */
static int store_feed_statement(Store *s, JobKind kind, int64_t feed_id, const char *arg,
                                bool with_arg) {
        StoreJob *j = job_new(kind);
        char id[32];
        int r;

        if (!j)
                return -ENOMEM;
        snprintf(id, sizeof(id), "%" PRIi64, feed_id);
        r = job_add_param(j, id);
        if (r >= 0 && with_arg)
                r = job_add_param(j, arg);
        if (r < 0) {
                job_free(j);
                return r;
        }
        store_enqueue(s, j, false);
        store_pump(s);
        return 0;
}

int store_record_error(Store *s, int64_t feed_id, const char *message) {
        return store_feed_statement(s, JOB_RECORD_ERROR, feed_id, message, true);
}

int store_release_feed(Store *s, int64_t feed_id) {
        return store_feed_statement(s, JOB_RELEASE, feed_id, NULL, false);
}

/* ---- the session ------------------------------------------------------------------------ */

static void notice_processor(void *arg _unused_, const char *message) {
        log_debug("PostgreSQL: %s", message);
}

static int store_watch(Store *s, uint32_t events);

static void store_drop_connection(Store *s) {
        s->io = sd_event_source_disable_unref(s->io);
        s->fd = -1;
        if (s->conn) {
                PQfinish(s->conn);
                s->conn = NULL;
        }
}

static int arm_timer(Store *s, uint64_t usec) {
        uint64_t now;
        int r;

        r = sd_event_now(s->event, CLOCK_MONOTONIC, &now);
        if (r < 0)
                return r;
        r = sd_event_source_set_time(s->timer, now + usec);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(s->timer, SD_EVENT_ONESHOT);
}

/* The session is gone: fail the job on the wire, keep the queue, retry with backoff. */
static void store_lost(Store *s, const char *why) {
        _cleanup_free_ char *msg = strdup(why ?: "connection failed");
        StoreJob *j = TAKE_PTR(s->current);

        if (msg) {
                size_t n = strlen(msg);
                while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
                        msg[--n] = 0;
        }
        store_drop_connection(s);
        /* Internal jobs belong to the session; they are redone after reconnecting. So do
         * statements about feeds this session owned: the next session owns nothing yet. */
        while (s->queue_head && s->queue_head->kind >= JOB_MIGRATE_CHECK)
                job_free(store_dequeue(s));
        for (StoreJob **p = &s->queue_head; *p;) {
                StoreJob *q = *p;

                if (q->kind == JOB_RECORD_ERROR || q->kind == JOB_RELEASE) {
                        *p = q->next;
                        job_free(q);
                        continue;
                }
                p = &q->next;
        }
        s->queue_tail = s->queue_head;
        while (s->queue_tail && s->queue_tail->next)
                s->queue_tail = s->queue_tail->next;
        if (j) {
                if (j->kind >= JOB_MIGRATE_CHECK)
                        job_free(j);
                else
                        job_complete(j, -ECONNRESET);
        }
        if (s->state == STORE_CLOSED)
                return;
        s->backoff_usec = s->backoff_usec ? s->backoff_usec * 2 : RECONNECT_MIN_USEC;
        if (s->backoff_usec > RECONNECT_MAX_USEC)
                s->backoff_usec = RECONNECT_MAX_USEC;
        (void) arm_timer(s, s->backoff_usec);
        store_set_state(s, STORE_DISCONNECTED, msg ?: "connection failed");
}

static int on_timer(sd_event_source *src _unused_, uint64_t usec _unused_, void *userdata) {
        Store *s = userdata;

        if (s->state == STORE_CONNECTING) {
                store_lost(s, "timed out connecting to PostgreSQL");
                return 0;
        }
        if (s->state == STORE_DISCONNECTED) {
                int r = store_connect(s);
                if (r < 0)
                        store_lost(s, s->conn ? PQerrorMessage(s->conn) : strerror(-r));
        }
        return 0;
}

static void store_connected(Store *s) {
        StoreJob *check, *setup;

        (void) sd_event_source_set_enabled(s->timer, SD_EVENT_OFF);
        if (PQsetnonblocking(s->conn, 1) < 0) {
                store_lost(s, PQerrorMessage(s->conn));
                return;
        }
        PQsetNoticeProcessor(s->conn, notice_processor, NULL);
        check = job_new(JOB_MIGRATE_CHECK);
        setup = job_new(JOB_SETUP);
        if (!check || !setup) {
                job_free(check);
                job_free(setup);
                store_lost(s, "out of memory");
                return;
        }
        store_enqueue(s, setup, true);
        store_enqueue(s, check, true);
        store_set_state(s, STORE_MIGRATING, NULL);
        store_pump(s);
}

static void store_connect_poll(Store *s) {
        PostgresPollingStatusType st = PQconnectPoll(s->conn);

        switch (st) {
        case PGRES_POLLING_FAILED:
                store_lost(s, PQerrorMessage(s->conn));
                return;
        case PGRES_POLLING_OK:
                store_connected(s);
                return;
        case PGRES_POLLING_READING:
                if (store_watch(s, EPOLLIN) < 0)
                        store_lost(s, "cannot watch the PostgreSQL socket");
                return;
        default:
                if (store_watch(s, EPOLLOUT) < 0)
                        store_lost(s, "cannot watch the PostgreSQL socket");
                return;
        }
}

static int on_io(sd_event_source *src _unused_, int fd _unused_, uint32_t revents _unused_,
                 void *userdata) {
        Store *s = userdata;

        if (s->state == STORE_CONNECTING) {
                store_connect_poll(s);
                return 0;
        }
        /* Read before write, on every wake-up. */
        if (!PQconsumeInput(s->conn)) {
                store_lost(s, PQerrorMessage(s->conn));
                return 0;
        }
        store_pump(s);
        return 0;
}

/* Watches the session's socket (which may change while connecting) for events. */
static int store_watch(Store *s, uint32_t events) {
        int fd = PQsocket(s->conn), r;

        if (fd < 0)
                return -EBADF;
        if (s->io && fd != s->fd)
                s->io = sd_event_source_disable_unref(s->io);
        if (!s->io) {
                r = sd_event_add_io(s->event, &s->io, fd, events, on_io, s);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_description(s->io, "postgresql");
                s->fd = fd;
                return 0;
        }
        return sd_event_source_set_io_events(s->io, events);
}

static int store_connect(Store *s) {
        const char *const keywords[] = { "application_name", "dbname", "client_encoding", NULL };
        const char *const values[] = { "witlinkd", s->conninfo, "UTF8", NULL };

        store_drop_connection(s);
        s->conn = PQconnectStartParams(keywords, values, 1);
        if (!s->conn)
                return -ENOMEM;
        if (PQstatus(s->conn) == CONNECTION_BAD)
                return -ECONNREFUSED;
        store_set_state(s, STORE_CONNECTING, NULL);
        (void) arm_timer(s, CONNECT_TIMEOUT_USEC);
        if (store_watch(s, EPOLLOUT) < 0)
                return -EBADF;
        return 0;
}

int store_start(Store *s) {
        int r = store_connect(s);

        if (r < 0)
                store_lost(s, s->conn ? PQerrorMessage(s->conn) : strerror(-r));
        return 0;
}

/* ---- sending and receiving -------------------------------------------------------------------- */

static char *build_migration_sql(int from) {
        char *out = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&out, &size);

        if (!f)
                return NULL;
        for (unsigned i = 0; i < migrations_count; i++) {
                if ((int) migrations[i].version <= from)
                        continue;
                fputs(migrations[i].sql, f);
                fprintf(f,
                        ";\nINSERT INTO witlink.schema_version (version, witlinkd_version) "
                        "VALUES (%u, '%s');\n",
                        migrations[i].version, WITLINKD_VERSION);
        }
        fputs("COMMIT;", f);
        if (fclose(f) != 0) {
                free(out);
                return NULL;
        }
        return out;
}

static int job_send(Store *s, StoreJob *j) {
        _cleanup_free_ char *sql = NULL;
        int ok;

        switch (j->kind) {
        case JOB_REGISTER:
                ok = PQsendQueryParams(s->conn, register_sql, j->n_params, NULL,
                                       (const char *const *) j->params, NULL, NULL, 0);
                break;
        case JOB_RECORD_ERROR:
                ok = PQsendQueryParams(s->conn, record_error_sql, j->n_params, NULL,
                                       (const char *const *) j->params, NULL, NULL, 0);
                break;
        case JOB_RELEASE:
                ok = PQsendQueryParams(s->conn, release_sql, j->n_params, NULL,
                                       (const char *const *) j->params, NULL, NULL, 0);
                break;
        case JOB_APPLY: {
                char *lit = j->token ? PQescapeLiteral(s->conn, j->token, strlen(j->token)) : NULL;

                if (j->token && !lit)
                        return -ENOMEM;
                /* One round trip: the COPY's rows, the apply and the commit, in one query. */
                if (asprintf(&sql,
                             "BEGIN;"
                             "COPY pg_temp.witlink_stage (%s) FROM STDIN;"
                             "SELECT witlink.apply_batch(%" PRIi64 ", %s, %s, %zu, %s);"
                             "COMMIT;",
                             stage_columns, j->feed_id, lit ?: "NULL",
                             j->caught_up ? "true" : "false", j->n_events,
                             j->fresh ? "true" : "false") < 0)
                        sql = NULL;
                PQfreemem(lit);
                if (!sql)
                        return -ENOMEM;
                ok = PQsendQuery(s->conn, sql);
                break;
        }
        case JOB_MIGRATE_CHECK:
                ok = PQsendQuery(s->conn, migrate_check_sql);
                break;
        case JOB_MIGRATE_APPLY:
                sql = build_migration_sql(s->schema_version);
                if (!sql)
                        return -ENOMEM;
                ok = PQsendQuery(s->conn, sql);
                break;
        case JOB_SETUP:
                /* The session: a staging table, every statement bounded, and (by default) commits
                 * that do not wait for the WAL flush: a commit lost in a crash of PostgreSQL
                 * takes the batch's rows and its token together, and the batch is fetched
                 * again. */
                if (asprintf(&sql,
                             "%s"
                             "SET TIME ZONE 'UTC';"
                             "SET statement_timeout = '%" PRIu64 "ms';"
                             "SET idle_in_transaction_session_timeout = '%" PRIu64 "ms';"
                             "SET synchronous_commit = %s;",
                             stage_table_sql, s->statement_timeout_usec / USEC_PER_MSEC,
                             s->statement_timeout_usec / USEC_PER_MSEC,
                             s->synchronous_commit ? "on" : "off") < 0)
                        return -ENOMEM;
                ok = PQsendQuery(s->conn, sql);
                break;
        case JOB_ROLLBACK:
                ok = PQsendQuery(s->conn, "ROLLBACK");
                break;
        default:
                return -EINVAL;
        }
        return ok ? 0 : -EIO;
}

static void job_take_result(StoreJob *j, PGresult *res) {
        ExecStatusType st = PQresultStatus(res);

        if (st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE || st == PGRES_NONFATAL_ERROR) {
                if (!j->error && st != PGRES_NONFATAL_ERROR) {
                        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
                        const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);

                        if (asprintf(&j->error, "%s (SQLSTATE %s)",
                                     msg ?: PQresultErrorMessage(res), code ?: "?") < 0)
                                j->error = NULL;
                        if (!j->error)
                                j->error = strdup("error");
                }
                return;
        }
        if (st != PGRES_TUPLES_OK || PQntuples(res) < 1)
                return;
        j->got_row = true;
        switch (j->kind) {
        case JOB_REGISTER:
                j->out_feed_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
                if (!PQgetisnull(res, 0, 1))
                        j->out_token = strdup(PQgetvalue(res, 0, 1));
                j->out_caught_up = PQgetvalue(res, 0, 2)[0] == 't';
                j->out_owned = PQgetvalue(res, 0, 3)[0] == 't';
                if (!PQgetisnull(res, 0, 4))
                        j->out_owner_host = strdup(PQgetvalue(res, 0, 4));
                j->out_owner_pid = (int) strtol(PQgetvalue(res, 0, 5), NULL, 10);
                break;
        case JOB_APPLY:
        case JOB_MIGRATE_CHECK:
                /* The last row-returning statement wins: the apply's count, the version. */
                j->out_count = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
                break;
        default:
                break;
        }
}

/* A job's last result arrived: hand its outcome on, queue follow-ups of internal jobs. */
static void store_finish_job(Store *s, StoreJob *j) {
        bool in_tx = PQtransactionStatus(s->conn) != PQTRANS_IDLE;
        StoreJob *rb;

        if (j->error && in_tx) {
                rb = job_new(JOB_ROLLBACK);
                if (rb)
                        store_enqueue(s, rb, true);
        }
        switch (j->kind) {
        case JOB_MIGRATE_CHECK:
                if (j->error) {
                        log_error("Failed to check the warehouse schema: %s", j->error);
                        break;
                }
                s->schema_version = (int) j->out_count;
                if (s->schema_version > (int) migrations_count) {
                        log_error("The warehouse schema is at version %d, newer than this "
                                  "witlinkd knows (%u); refusing to write to it.",
                                  s->schema_version, migrations_count);
                        rb = job_new(JOB_ROLLBACK);
                        if (rb)
                                store_enqueue(s, rb, true);
                        job_free(j);
                        store_set_state(s, STORE_CLOSED, "schema is newer than this witlinkd");
                        return;
                }
                rb = job_new(JOB_MIGRATE_APPLY);
                if (rb)
                        store_enqueue(s, rb, true);
                break;
        case JOB_MIGRATE_APPLY:
                if (j->error)
                        log_error("Failed to migrate the warehouse schema: %s", j->error);
                else if ((unsigned) s->schema_version < migrations_count) {
                        log_info("Migrated the warehouse schema from version %d to %u.",
                                 s->schema_version, migrations_count);
                        s->schema_version = (int) migrations_count;
                }
                break;
        case JOB_SETUP:
                if (j->error)
                        log_error("Failed to set up the database session: %s", j->error);
                else {
                        s->backoff_usec = 0;
                        store_set_state(s, STORE_READY, NULL);
                }
                break;
        case JOB_ROLLBACK:
                break;
        case JOB_REGISTER:
                if (!j->error && !j->got_row)
                        j->error = strdup("no feed row returned");
                job_complete(j, j->error ? -EIO : 0);
                return;
        case JOB_APPLY:
                if (!j->error && !j->got_row)
                        j->error = strdup("no result from witlink.apply_batch()");
                job_complete(j, j->error ? -EIO : 0);
                return;
        case JOB_RECORD_ERROR:
        case JOB_RELEASE:
                if (j->error)
                        log_warning("Failed to update a feed's row: %s", j->error);
                break;
        }
        /* A failed migration or setup: start over with a fresh session. */
        if (j->error && (j->kind == JOB_MIGRATE_CHECK || j->kind == JOB_MIGRATE_APPLY ||
                         j->kind == JOB_SETUP)) {
                char msg[512];

                snprintf(msg, sizeof(msg), "%s", j->error);
                job_free(j);
                store_lost(s, msg);
                return;
        }
        job_free(j);
}

/* Pushes the COPY rows; returns 1 when all is sent and ended, 0 when the socket is full. */
static int push_copy(Store *s, StoreJob *j) {
        while (j->copy_sent < j->copy_size) {
                size_t n = j->copy_size - j->copy_sent;
                int r;

                if (n > COPY_CHUNK)
                        n = COPY_CHUNK;
                r = PQputCopyData(s->conn, j->copy_data + j->copy_sent, (int) n);
                if (r < 0)
                        return -EIO;
                if (r == 0)
                        return 0;
                j->copy_sent += n;
        }
        switch (PQputCopyEnd(s->conn, NULL)) {
        case 1:
                j->copy_state = COPY_DONE;
                j->copy_data = mfree(j->copy_data);
                return 1;
        case 0:
                return 0;
        default:
                return -EIO;
        }
}

/* Drives the job on the wire as far as the socket allows, then starts the next one. */
static void store_pump(Store *s) {
        for (;;) {
                StoreJob *j;
                int r;

                if (!s->conn || s->state == STORE_CONNECTING || s->state == STORE_DISCONNECTED)
                        return;
                if (!s->current) {
                        StoreJob *next;

                        /* Only the session's own jobs run before the schema is ready. */
                        while ((next = s->queue_head) && next->cancelled &&
                               next->kind < JOB_MIGRATE_CHECK)
                                job_free(store_dequeue(s));
                        if (!next || (s->state != STORE_READY && s->state != STORE_BUSY &&
                                      next->kind < JOB_MIGRATE_CHECK)) {
                                if (s->state == STORE_BUSY)
                                        store_set_state(s, STORE_READY, NULL);
                                (void) store_watch(s, EPOLLIN);
                                return;
                        }
                        s->current = store_dequeue(s);
                        r = job_send(s, s->current);
                        if (r < 0) {
                                store_lost(s, PQerrorMessage(s->conn));
                                return;
                        }
                        if (s->state == STORE_READY)
                                store_set_state(s, STORE_BUSY, NULL);
                }
                j = s->current;

                if (j->copy_state == COPY_SENDING) {
                        r = push_copy(s, j);
                        if (r < 0) {
                                store_lost(s, PQerrorMessage(s->conn));
                                return;
                        }
                }
                r = PQflush(s->conn);
                if (r < 0) {
                        store_lost(s, PQerrorMessage(s->conn));
                        return;
                }
                if (r > 0 || j->copy_state == COPY_SENDING) {
                        (void) store_watch(s, EPOLLIN | EPOLLOUT);
                        return;
                }
                if (j->copy_state == COPY_DONE && j->on_sent) {
                        StoreSentFunc sent = j->on_sent;

                        j->on_sent = NULL;
                        if (!j->cancelled)
                                sent(j->userdata);
                }

                bool next_job = false;
                while (!PQisBusy(s->conn)) {
                        PGresult *res = PQgetResult(s->conn);

                        if (!res) {
                                s->current = NULL;
                                store_finish_job(s, j);
                                next_job = true;
                                break;
                        }
                        if (PQresultStatus(res) == PGRES_COPY_IN) {
                                PQclear(res);
                                if (j->copy_state == COPY_NONE && j->copy_data)
                                        j->copy_state = COPY_SENDING;
                                else if (j->copy_state == COPY_NONE) {
                                        /* A COPY we have no rows for: end it empty. */
                                        j->copy_state = COPY_SENDING;
                                }
                                break;
                        }
                        job_take_result(j, res);
                        PQclear(res);
                }
                if (next_job || j->copy_state == COPY_SENDING)
                        continue;
                (void) store_watch(s, EPOLLIN);
                return;
        }
}

static void store_set_state(Store *s, StoreState state, const char *error) {
        StoreState old = s->state;

        if (old == state)
                return;
        if (old == STORE_CLOSED && state != STORE_CLOSED)
                return;
        log_debug("Database session: %s → %s", store_state_to_string(old),
                  store_state_to_string(state));
        s->state = state;
        if (s->on_state)
                s->on_state(s, old, state, error, s->userdata);
}

/* ---- object ----------------------------------------------------------------------------- */

int store_new(sd_event *event, const StoreOptions *o, StoreStateFunc on_state, void *userdata,
              Store **ret) {
        _cleanup_(store_freep) Store *s = NULL;
        int r;

        s = calloc(1, sizeof(Store));
        if (!s)
                return -ENOMEM;
        s->fd = -1;
        s->event = sd_event_ref(event);
        s->conninfo = strdup(o->conninfo ?: "");
        if (!s->conninfo)
                return -ENOMEM;
        s->synchronous_commit = o->synchronous_commit;
        s->statement_timeout_usec = o->statement_timeout_usec;
        s->on_state = on_state;
        s->userdata = userdata;
        s->state = STORE_DISCONNECTED;
        r = sd_event_add_time(event, &s->timer, CLOCK_MONOTONIC, UINT64_MAX, 0, on_timer, s);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(s->timer, "postgresql-timer");
        *ret = TAKE_PTR(s);
        return 0;
}

Store *store_free(Store *s) {
        if (!s)
                return NULL;
        s->on_state = NULL;
        s->state = STORE_CLOSED;
        if (s->current) {
                job_free(s->current);
                s->current = NULL;
        }
        while (s->queue_head)
                job_free(store_dequeue(s));
        store_drop_connection(s);
        sd_event_source_disable_unref(s->timer);
        sd_event_unref(s->event);
        free(s->conninfo);
        free(s);
        return NULL;
}

StoreState store_get_state(Store *s) {
        return s->state;
}

int store_schema_version(Store *s) {
        return s->schema_version;
}

bool store_is_idle(Store *s) {
        /* Without a session nothing queued can make progress before the exit. */
        if (s->state != STORE_READY && s->state != STORE_BUSY && s->state != STORE_MIGRATING)
                return true;
        for (StoreJob *j = s->queue_head; j; j = j->next)
                if (!j->cancelled)
                        return false;
        return !s->current;
}
