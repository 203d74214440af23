/* SPDX-License-Identifier: MIT */
/* witlinkd --status: each feed's state from the warehouse, as a table or as JSON. */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "status.h"

DEFINE_CLEANUP_FUNC(PGconn, PQfinish);
DEFINE_CLEANUP_FUNC(PGresult, PQclear);

#define USEC_PER_MIN (60 * USEC_PER_SEC)
#define STATUS_MIN_SCHEMA_VERSION 2
#define STATUS_ERROR_MAX 300 /* bytes of a last error shown in the table */

typedef struct StatusFeed {
        /* From the warehouse (pointers into the query result) or, for a configured feed that
         * is not registered yet, from the configuration. */
        int64_t feed_id; /* 0: not in the warehouse */
        const char *organization;
        const char *base_url;
        const char *project; /* NULL: collection-wide */
        const char *types;
        const char *link_types;
        const char *db_state; /* feed_status.state */
        bool caught_up;
        int64_t events_total;
        int64_t batches_total;
        const char *last_success_at;
        double lag; /* seconds; NAN when NULL */
        const char *token_changed_at;
        double token_age;
        const char *last_error;
        const char *last_error_at;
        double error_age;
        const char *owner_host;
        int owner_pid;
        bool owner_active;
        const char *owner_since;
        double age; /* since the feed was created */

        /* The verdict. */
        bool configured;
        const char *state;
        bool healthy;
} StatusFeed;

/* The columns of status_query, in order. */
enum {
        COL_FEED_ID,
        COL_ORGANIZATION,
        COL_BASE_URL,
        COL_PROJECT,
        COL_TYPES,
        COL_LINK_TYPES,
        COL_STATE,
        COL_CAUGHT_UP,
        COL_EVENTS_TOTAL,
        COL_BATCHES_TOTAL,
        COL_LAST_SUCCESS_AT,
        COL_LAG,
        COL_TOKEN_CHANGED_AT,
        COL_TOKEN_AGE,
        COL_LAST_ERROR,
        COL_LAST_ERROR_AT,
        COL_ERROR_AGE,
        COL_OWNER_HOST,
        COL_OWNER_PID,
        COL_OWNER_ACTIVE,
        COL_OWNER_SINCE,
        COL_AGE,
        _COL_MAX,
};

#define ISO_UTC(x) "to_char((" x ") AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

static const char status_query[] =
        "SELECT feed_id, organization, base_url, project, types, link_types, state, caught_up,"
        " events_total, batches_total,"
        " " ISO_UTC("last_success_at") ", extract(epoch FROM lag),"
        " " ISO_UTC("token_changed_at") ", extract(epoch FROM token_age),"
        " last_error, " ISO_UTC("last_error_at") ", extract(epoch FROM now() - last_error_at),"
        " owner_host, owner_pid, owner_active, " ISO_UTC("owner_since") ","
        " extract(epoch FROM now() - created_at)"
        " FROM witlink.feed_status ORDER BY feed_id";

static const char schema_query[] =
        "SELECT to_regclass('witlink.feed') IS NOT NULL,"
        " to_regclass('witlink.schema_version') IS NOT NULL";

uint64_t status_default_max_lag(const Config *c) {
        return 3 * c->poll_interval_usec + 5 * USEC_PER_MIN;
}

char *status_format_span(double seconds, char *buf, size_t size) {
        static const struct {
                const char *suffix;
                uint64_t sec;
        } units[] = {
                { "d", 86400 },
                { "h", 3600 },
                { "min", 60 },
                { "s", 1 },
        };
        uint64_t t;
        size_t n = 0;
        unsigned shown = 0;

        assert(buf && size > 0);
        if (isnan(seconds)) {
                snprintf(buf, size, "-");
                return buf;
        }
        t = seconds > 0 ? (uint64_t) (seconds + 0.5) : 0;
        if (t == 0) {
                snprintf(buf, size, "0s");
                return buf;
        }
        buf[0] = 0;
        /* The two largest units, like "3min 12s" or "2d 5h". */
        for (size_t i = 0; i < ELEMENTSOF(units) && shown < 2; i++) {
                uint64_t v = t / units[i].sec;

                if (v == 0) {
                        if (shown > 0)
                                break;
                        continue;
                }
                t -= v * units[i].sec;
                n += (size_t) snprintf(buf + n, n < size ? size - n : 0, "%s%" PRIu64 "%s",
                                       shown ? " " : "", v, units[i].suffix);
                shown++;
        }
        return buf;
}

static const char *col(const PGresult *res, int row, int column) {
        return PQgetisnull(res, row, column) ? NULL : PQgetvalue(res, row, column);
}

static double col_double(const PGresult *res, int row, int column) {
        const char *v = col(res, row, column);

        return v ? strtod(v, NULL) : NAN;
}

static int64_t col_int64(const PGresult *res, int row, int column) {
        const char *v = col(res, row, column);

        return v ? strtoll(v, NULL, 10) : 0;
}

static bool col_bool(const PGresult *res, int row, int column) {
        const char *v = col(res, row, column);

        return v && v[0] == 't';
}

static bool str_eq(const char *a, const char *b) {
        if (!a || !b)
                return a == b;
        return strcmp(a, b) == 0;
}

static void status_feed_from_row(StatusFeed *f, const PGresult *res, int row) {
        *f = (StatusFeed){
                .feed_id = col_int64(res, row, COL_FEED_ID),
                .organization = col(res, row, COL_ORGANIZATION),
                .base_url = col(res, row, COL_BASE_URL),
                .project = col(res, row, COL_PROJECT),
                .types = col(res, row, COL_TYPES) ?: "",
                .link_types = col(res, row, COL_LINK_TYPES) ?: "",
                .db_state = col(res, row, COL_STATE),
                .caught_up = col_bool(res, row, COL_CAUGHT_UP),
                .events_total = col_int64(res, row, COL_EVENTS_TOTAL),
                .batches_total = col_int64(res, row, COL_BATCHES_TOTAL),
                .last_success_at = col(res, row, COL_LAST_SUCCESS_AT),
                .lag = col_double(res, row, COL_LAG),
                .token_changed_at = col(res, row, COL_TOKEN_CHANGED_AT),
                .token_age = col_double(res, row, COL_TOKEN_AGE),
                .last_error = col(res, row, COL_LAST_ERROR),
                .last_error_at = col(res, row, COL_LAST_ERROR_AT),
                .error_age = col_double(res, row, COL_ERROR_AGE),
                .owner_host = col(res, row, COL_OWNER_HOST),
                .owner_pid = (int) col_int64(res, row, COL_OWNER_PID),
                .owner_active = col_bool(res, row, COL_OWNER_ACTIVE),
                .owner_since = col(res, row, COL_OWNER_SINCE),
                .age = col_double(res, row, COL_AGE),
        };
}

/* A feed of the configuration is the warehouse's feed with the same identity (the one that
 * witlink.claim_feed() finds); a configured feed without a row is "not registered". */
static size_t status_match_config(const Config *c, StatusFeed *feeds, size_t n) {
        for (size_t s = 0; s < c->n_sources; s++) {
                const SourceConfig *sc = c->sources[s];
                size_t n_projects = sc->n_projects ? sc->n_projects : 1;

                for (size_t p = 0; p < n_projects; p++) {
                        const char *project = sc->n_projects ? sc->projects[p] : NULL;
                        bool found = false;

                        for (size_t i = 0; i < n; i++) {
                                StatusFeed *f = feeds + i;

                                if (f->feed_id > 0 && str_eq(f->organization, sc->name) &&
                                    str_eq(f->base_url, sc->url) && str_eq(f->project, project) &&
                                    str_eq(f->types, sc->types) &&
                                    str_eq(f->link_types, sc->link_types)) {
                                        f->configured = true;
                                        found = true;
                                }
                        }
                        if (!found)
                                feeds[n++] = (StatusFeed){
                                        .organization = sc->name,
                                        .base_url = sc->url,
                                        .project = project,
                                        .types = sc->types,
                                        .link_types = sc->link_types,
                                        .lag = NAN,
                                        .token_age = NAN,
                                        .error_age = NAN,
                                        .age = NAN,
                                        .configured = true,
                                };
                }
        }
        return n;
}

static void status_judge(StatusFeed *f, double max_lag) {
        double since;

        if (!f->configured) {
                /* Another configuration's feed, or one a filter change retired: shown, not
                 * judged. */
                f->state = "not configured";
                f->healthy = true;
                return;
        }
        f->healthy = false;
        if (f->feed_id == 0) {
                f->state = "not registered";
                return;
        }
        if (f->last_error) {
                f->state = "failing";
                return;
        }
        /* A feed that never succeeded lags since it was created. */
        since = isnan(f->lag) ? f->age : f->lag;
        if (isnan(since) || since > max_lag) {
                f->state = "lagging";
                return;
        }
        f->state = f->db_state ?: (f->caught_up ? "caught up" : "backfilling");
        f->healthy = true;
}

/* ---- output ------------------------------------------------------------------------------- */

static json_t *json_string_or_null(const char *s) {
        return s ? json_string(s) : json_null();
}

static json_t *json_real_or_null(double v) {
        /* Milliseconds are plenty (and no libm for round()). */
        if (isnan(v))
                return json_null();
        return json_real((double) (int64_t) (v * 1000.0 + (v < 0 ? -0.5 : 0.5)) / 1000.0);
}

static int status_print_json(const StatusFeed *feeds, size_t n, double max_lag, bool healthy,
                             FILE *out) {
        json_auto_t *root = NULL;
        json_t *list;

        list = json_array();
        root = json_pack("{s:b, s:f, s:o}", "healthy", healthy, "max_lag_seconds", max_lag,
                         "feeds", list);
        if (!root)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                const StatusFeed *f = feeds + i;
                json_t *o, *owner;

                owner = f->owner_host ? json_pack("{s:s, s:i, s:b, s:o}", "host", f->owner_host,
                                                  "pid", f->owner_pid, "active", f->owner_active,
                                                  "since", json_string_or_null(f->owner_since))
                                      : json_null();
                o = json_pack("{s:o, s:s, s:s, s:o, s:s, s:s, s:b, s:s, s:o,"
                              " s:b, s:I, s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
                              "feed_id", f->feed_id > 0 ? json_integer(f->feed_id) : json_null(),
                              "organization", f->organization,
                              "base_url", f->base_url,
                              "project", json_string_or_null(f->project),
                              "types", f->types,
                              "link_types", f->link_types,
                              "configured", f->configured,
                              "state", f->state,
                              "healthy", f->configured ? json_boolean(f->healthy) : json_null(),
                              "caught_up", f->caught_up,
                              "events_total", (json_int_t) f->events_total,
                              "batches_total", (json_int_t) f->batches_total,
                              "last_success_at", json_string_or_null(f->last_success_at),
                              "lag_seconds", json_real_or_null(f->lag),
                              "token_changed_at", json_string_or_null(f->token_changed_at),
                              "token_age_seconds", json_real_or_null(f->token_age),
                              "last_error", json_string_or_null(f->last_error),
                              "last_error_at", json_string_or_null(f->last_error_at),
                              "owner", owner ?: json_null());
                if (!o || json_array_append_new(list, o) < 0)
                        return -ENOMEM;
        }
        if (json_dumpf(root, out, JSON_INDENT(2) | JSON_REAL_PRECISION(12)) < 0 ||
            fputc('\n', out) == EOF || fflush(out) != 0)
                return -EIO;
        return 0;
}

/* Display width of a UTF-8 string (code points; good enough for names and spans). */
static size_t utf8_width(const char *s) {
        size_t w = 0;

        for (; *s; s++)
                if (((unsigned char) *s & 0xC0) != 0x80)
                        w++;
        return w;
}

enum {
        TCOL_FEED,
        TCOL_SOURCE,
        TCOL_PROJECT,
        TCOL_STATE,
        TCOL_EVENTS,
        TCOL_BATCHES,
        TCOL_LAG,
        TCOL_TOKEN_AGE,
        TCOL_OWNER,
        _TCOL_MAX,
};

static const char *const table_header[_TCOL_MAX] = {
        "FEED", "SOURCE", "PROJECT", "STATE", "EVENTS", "BATCHES", "LAG", "TOKEN AGE", "OWNER",
};
static const bool table_right[_TCOL_MAX] = {
        [TCOL_FEED] = true,
        [TCOL_EVENTS] = true,
        [TCOL_BATCHES] = true,
};

static void cells_free(char **cells, size_t n) {
        if (!cells)
                return;
        for (size_t i = 0; i < n; i++)
                free(cells[i]);
        free(cells);
}

static int status_row_cells(const StatusFeed *f, char **row) {
        char lag[32], token_age[32];

        if (f->feed_id > 0) {
                if (asprintf(&row[TCOL_FEED], "%" PRIi64, f->feed_id) < 0)
                        return -ENOMEM;
        } else
                row[TCOL_FEED] = strdup("-");
        row[TCOL_SOURCE] = strdup(f->organization);
        if (asprintf(&row[TCOL_PROJECT], "%s%s%s%s%s", f->project ?: "(all projects)",
                     *f->types ? " types=" : "", f->types, *f->link_types ? " link-types=" : "",
                     f->link_types) < 0)
                return -ENOMEM;
        row[TCOL_STATE] = strdup(f->state);
        if (f->feed_id > 0) {
                if (asprintf(&row[TCOL_EVENTS], "%" PRIi64, f->events_total) < 0 ||
                    asprintf(&row[TCOL_BATCHES], "%" PRIi64, f->batches_total) < 0)
                        return -ENOMEM;
                row[TCOL_LAG] = strdup(isnan(f->lag) ? "never"
                                                     : status_format_span(f->lag, lag,
                                                                          sizeof(lag)));
        } else {
                row[TCOL_EVENTS] = strdup("-");
                row[TCOL_BATCHES] = strdup("-");
                row[TCOL_LAG] = strdup("-");
        }
        row[TCOL_TOKEN_AGE] = strdup(status_format_span(f->token_age, token_age,
                                                        sizeof(token_age)));
        if (f->owner_host) {
                if (asprintf(&row[TCOL_OWNER], f->owner_active ? "%s:%d" : "none (last %s:%d)",
                             f->owner_host, f->owner_pid) < 0)
                        return -ENOMEM;
        } else
                row[TCOL_OWNER] = strdup("-");
        for (size_t c = 0; c < _TCOL_MAX; c++)
                if (!row[c])
                        return -ENOMEM;
        return 0;
}

/* The last error on one line, cut at a character boundary. */
static void print_error_line(const StatusFeed *f, FILE *out) {
        char age[32];
        size_t n = 0;

        fprintf(out, "      last error%s%s%s: ", isnan(f->error_age) ? "" : " ",
                isnan(f->error_age) ? "" : status_format_span(f->error_age, age, sizeof(age)),
                isnan(f->error_age) ? "" : " ago");
        for (const char *p = f->last_error; *p; p++, n++) {
                if (n >= STATUS_ERROR_MAX && ((unsigned char) *p & 0xC0) != 0x80) {
                        fputs("…", out);
                        break;
                }
                fputc(*p == '\n' || *p == '\r' || *p == '\t' ? ' ' : *p, out);
        }
        fputc('\n', out);
}

static int status_print_table(const StatusFeed *feeds, size_t n, double max_lag, bool healthy,
                              bool have_schema, FILE *out) {
        size_t width[_TCOL_MAX] = {}, n_cells = (n + 1) * _TCOL_MAX, configured = 0, bad = 0;
        char **cells, span[32];
        int r = 0;

        cells = calloc(n_cells, sizeof(char *));
        if (!cells)
                return -ENOMEM;
        for (size_t c = 0; c < _TCOL_MAX; c++)
                if (!(cells[c] = strdup(table_header[c]))) {
                        r = -ENOMEM;
                        goto finish;
                }
        for (size_t i = 0; i < n; i++) {
                r = status_row_cells(feeds + i, cells + (i + 1) * _TCOL_MAX);
                if (r < 0)
                        goto finish;
                configured += feeds[i].configured;
                bad += feeds[i].configured && !feeds[i].healthy;
        }
        for (size_t i = 0; i < n_cells; i++) {
                size_t w = utf8_width(cells[i]);

                if (w > width[i % _TCOL_MAX])
                        width[i % _TCOL_MAX] = w;
        }

        if (!have_schema)
                fputs("The database holds no witlink schema yet: witlinkd has not run against "
                      "it.\n",
                      out);
        for (size_t row = 0; row <= n; row++) {
                for (size_t c = 0; c < _TCOL_MAX; c++) {
                        const char *cell = cells[row * _TCOL_MAX + c];
                        size_t pad = width[c] - utf8_width(cell);
                        bool last = c == _TCOL_MAX - 1;

                        if (table_right[c])
                                fprintf(out, "%*s%s", (int) pad, "", cell);
                        else
                                fprintf(out, "%s%*s", cell, last ? 0 : (int) pad, "");
                        fputs(last ? "\n" : "  ", out);
                }
                if (row > 0 && feeds[row - 1].last_error)
                        print_error_line(feeds + row - 1, out);
        }
        status_format_span(max_lag, span, sizeof(span));
        if (configured == 0)
                fprintf(out, "No feeds configured.\n");
        else if (healthy)
                fprintf(out, "Healthy: %zu of %zu configured feeds (max lag %s).\n",
                        configured, configured, span);
        else
                fprintf(out, "Unhealthy: %zu of %zu configured feeds failing, lagging or not "
                        "registered (max lag %s).\n",
                        bad, configured, span);
        if (fflush(out) != 0)
                r = -errno;
finish:
        cells_free(cells, n_cells);
        return r;
}

/* ---- the database ------------------------------------------------------------------------- */

static void log_pq_error(const char *what, const char *message) {
        size_t len = strlen(message ?: "");

        while (len > 0 && (message[len - 1] == '\n' || message[len - 1] == ' '))
                len--;
        log_error("%s: %.*s", what, (int) len, message ?: "");
}

static int status_connect(const Config *c, PGconn **ret) {
        _cleanup_(PQfinishp) PGconn *conn = NULL;
        /* The configured conninfo comes last: what it says wins. */
        const char *const keywords[] = { "connect_timeout", "application_name", "dbname",
                                         "client_encoding", NULL };
        const char *const values[] = { getenv("PGCONNECT_TIMEOUT") ? NULL : "10",
                                       "witlinkd-status", c->database, "UTF8", NULL };

        conn = PQconnectdbParams(keywords, values, 1);
        if (!conn)
                return log_error_errno(-ENOMEM, "Out of memory.");
        if (PQstatus(conn) != CONNECTION_OK) {
                log_pq_error("Failed to connect to the database", PQerrorMessage(conn));
                return -ECONNREFUSED;
        }
        *ret = TAKE_PTR(conn);
        return 0;
}

static int status_exec(PGconn *conn, const char *sql, PGresult **ret) {
        _cleanup_(PQclearp) PGresult *res = NULL;

        res = PQexec(conn, sql);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
                log_pq_error("Failed to read the feeds' status",
                             res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
                return PQstatus(conn) == CONNECTION_OK ? -EIO : -ECONNREFUSED;
        }
        *ret = TAKE_PTR(res);
        return 0;
}

int status_run(const Config *c, const StatusOptions *o, FILE *out) {
        _cleanup_(PQfinishp) PGconn *conn = NULL;
        _cleanup_(PQclearp) PGresult *schema = NULL, *version = NULL, *res = NULL;
        _cleanup_free_ StatusFeed *feeds = NULL;
        size_t n = 0, n_configured = 0;
        bool have_schema, healthy = true;
        double max_lag;
        int r, rows = 0;

        assert(c && o && out);
        max_lag = (double) (o->max_lag_usec ?: status_default_max_lag(c)) / USEC_PER_SEC;

        r = status_connect(c, &conn);
        if (r < 0)
                return r;

        r = status_exec(conn, schema_query, &schema);
        if (r < 0)
                return r;
        have_schema = col_bool(schema, 0, 0);
        if (have_schema) {
                int v = 0;

                if (col_bool(schema, 0, 1)) {
                        r = status_exec(conn, "SELECT coalesce(max(version), 0) "
                                              "FROM witlink.schema_version",
                                        &version);
                        if (r < 0)
                                return r;
                        v = (int) col_int64(version, 0, 0);
                }
                if (v < STATUS_MIN_SCHEMA_VERSION) {
                        log_error("The warehouse schema is version %d; --status needs version "
                                  "%d or later. Start this witlinkd once to upgrade it.",
                                  v, STATUS_MIN_SCHEMA_VERSION);
                        return -EPROTO;
                }
                r = status_exec(conn, status_query, &res);
                if (r < 0)
                        return r;
                if (PQnfields(res) != _COL_MAX) {
                        log_error("Unexpected columns in witlink.feed_status.");
                        return -EBADMSG;
                }
                rows = PQntuples(res);
        }

        for (size_t s = 0; s < c->n_sources; s++)
                n_configured += c->sources[s]->n_projects ?: 1;
        feeds = calloc((size_t) rows + n_configured + 1, sizeof(StatusFeed));
        if (!feeds)
                return log_error_errno(-ENOMEM, "Out of memory.");
        for (int i = 0; i < rows; i++)
                status_feed_from_row(feeds + n++, res, i);
        n = status_match_config(c, feeds, n);
        for (size_t i = 0; i < n; i++) {
                status_judge(feeds + i, max_lag);
                if (feeds[i].configured && !feeds[i].healthy)
                        healthy = false;
        }

        if (o->json)
                r = status_print_json(feeds, n, max_lag, healthy, out);
        else
                r = status_print_table(feeds, n, max_lag, healthy, have_schema, out);
        if (r < 0)
                return log_error_errno(r, "Failed to print the status: %m");
        return healthy ? STATUS_HEALTHY : STATUS_UNHEALTHY;
}
