/* SPDX-License-Identifier: MIT */
/* One batch of the link feed: JSON parsing and validation of both record shapes. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "batch.h"
#include "url.h"

#define TOKEN_MAX 16384
#define NAME_MAX_LEN 1024
#define TEXT_MAX_LEN (1024 * 1024)

static const char *const operation_names[_LINK_OPERATION_MAX] = {
        [LINK_OPERATION_CREATE] = "create",
        [LINK_OPERATION_REMOVE] = "remove",
};

const char *link_operation_to_string(LinkOperation op) {
        return op >= 0 && op < _LINK_OPERATION_MAX ? operation_names[op] : NULL;
}

Batch *batch_free(Batch *b) {
        if (!b)
                return NULL;
        json_decref(b->root);
        free(b->events);
        free(b->token);
        free(b);
        return NULL;
}

static int fail(char **ret_error, const char *fmt, ...) _printf_(2, 3);
static int fail(char **ret_error, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        if (vasprintf(ret_error, fmt, ap) < 0)
                *ret_error = NULL;
        va_end(ap);
        return -EBADMSG;
}

static bool digits(const char *s, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (!isdigit((unsigned char) s[i]))
                        return false;
        return true;
}

static int num(const char *s, size_t n) {
        int v = 0;

        for (size_t i = 0; i < n; i++)
                v = v * 10 + (s[i] - '0');
        return v;
}

/* YYYY-MM-DDTHH:MM:SS[.f{1,7}]Z */
bool batch_valid_date(const char *s, size_t len) {
        size_t frac = 0;

        if (len < 20 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' ||
            !digits(s + 8, 2) || s[10] != 'T' || !digits(s + 11, 2) || s[13] != ':' ||
            !digits(s + 14, 2) || s[16] != ':' || !digits(s + 17, 2))
                return false;
        static const int days[12] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
        int year = num(s, 4), month = num(s + 5, 2), day = num(s + 8, 2);

        if (year < 1 || month < 1 || month > 12 || day < 1 || day > days[month - 1] ||
            num(s + 11, 2) > 23 || num(s + 14, 2) > 59 || num(s + 17, 2) > 59)
                return false;
        if (month == 2 && day == 29 && !(year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)))
                return false;
        if (s[19] == '.') {
                while (20 + frac < len && isdigit((unsigned char) s[20 + frac]))
                        frac++;
                if (frac < 1 || frac > 7)
                        return false;
                return len == 21 + frac && s[20 + frac] == 'Z';
        }
        return len == 20 && s[19] == 'Z';
}

bool batch_valid_guid(const char *s, size_t len) {
        if (len != 36)
                return false;
        for (size_t i = 0; i < 36; i++) {
                if (i == 8 || i == 13 || i == 18 || i == 23) {
                        if (s[i] != '-')
                                return false;
                } else if (!isxdigit((unsigned char) s[i]))
                        return false;
        }
        return true;
}

/* Looks a field up in the record's attributes first, then at its top level (flat shape). */
static json_t *field(json_t *attrs, json_t *value, const char *name) {
        json_t *v = attrs ? json_object_get(attrs, name) : NULL;

        if (!v && attrs != value)
                v = json_object_get(value, name);
        return json_is_null(v) ? NULL : v;
}

static int get_string(json_t *v, size_t max, BatchString *ret, bool required, size_t i,
                      const char *name, char **ret_error) {
        if (!v) {
                if (required)
                        return fail(ret_error, "values[%zu].%s: missing or null", i, name);
                *ret = (BatchString){};
                return 0;
        }
        if (!json_is_string(v))
                return fail(ret_error, "values[%zu].%s: expected a string", i, name);
        ret->p = json_string_value(v);
        ret->len = json_string_length(v);
        if (ret->len > max)
                return fail(ret_error, "values[%zu].%s: longer than %zu bytes", i, name, max);
        if (required && ret->len == 0)
                return fail(ret_error, "values[%zu].%s: empty", i, name);
        return 0;
}

static int get_id(json_t *v, int32_t *ret, size_t i, const char *name, char **ret_error) {
        json_int_t n;

        if (!v)
                return fail(ret_error, "values[%zu].%s: missing or null", i, name);
        if (!json_is_integer(v))
                return fail(ret_error, "values[%zu].%s: expected an integer", i, name);
        n = json_integer_value(v);
        if (n < 1 || n > INT32_MAX)
                return fail(ret_error, "values[%zu].%s: %lld is not a work item id (1 to %d)", i,
                            name, (long long) n, INT32_MAX);
        *ret = (int32_t) n;
        return 0;
}

static int parse_event(json_t *value, size_t i, LinkEvent *e, char **ret_error) {
        json_t *attrs, *v, *who;
        int r;

        if (!json_is_object(value))
                return fail(ret_error, "values[%zu]: expected an object", i);
        attrs = json_object_get(value, "attributes");
        if (json_is_null(attrs) || !attrs)
                attrs = value;
        else if (!json_is_object(attrs))
                return fail(ret_error, "values[%zu].attributes: expected an object", i);

        r = get_string(field(attrs, value, "rel"), NAME_MAX_LEN, &e->rel, true, i, "rel",
                       ret_error);
        if (r < 0)
                return r;
        r = get_string(field(attrs, value, "linkType"), NAME_MAX_LEN, &e->link_type, false, i,
                       "linkType", ret_error);
        if (r < 0)
                return r;
        r = get_id(field(attrs, value, "sourceId"), &e->source_id, i, "sourceId", ret_error);
        if (r < 0)
                return r;
        r = get_id(field(attrs, value, "targetId"), &e->target_id, i, "targetId", ret_error);
        if (r < 0)
                return r;
        r = get_string(field(attrs, value, "changedDate"), 40, &e->changed_date, true, i,
                       "changedDate", ret_error);
        if (r < 0)
                return r;
        if (!batch_valid_date(e->changed_date.p, e->changed_date.len))
                return fail(ret_error,
                            "values[%zu].changedDate: '%.40s' is not UTC ISO 8601 "
                            "(YYYY-MM-DDTHH:MM:SS[.fffffff]Z)",
                            i, e->changed_date.p);

        v = field(attrs, value, "isActive");
        if (!v)
                e->is_active_reported = -1;
        else if (json_is_boolean(v))
                e->is_active_reported = json_is_true(v);
        else
                return fail(ret_error, "values[%zu].isActive: expected a boolean", i);

        v = field(attrs, value, "changedOperation");
        if (v) {
                const char *op;

                if (!json_is_string(v))
                        return fail(ret_error, "values[%zu].changedOperation: expected a string", i);
                op = json_string_value(v);
                if (strcasecmp(op, "create") == 0)
                        e->operation = LINK_OPERATION_CREATE;
                else if (strcasecmp(op, "remove") == 0)
                        e->operation = LINK_OPERATION_REMOVE;
                else
                        return fail(ret_error,
                                    "values[%zu].changedOperation: '%.32s' is neither create nor "
                                    "remove",
                                    i, op);
        } else if (e->is_active_reported >= 0)
                e->operation = e->is_active_reported ? LINK_OPERATION_CREATE : LINK_OPERATION_REMOVE;
        else
                return fail(ret_error, "values[%zu]: neither changedOperation nor isActive", i);

        who = field(attrs, value, "changedBy");
        if (who && !json_is_object(who))
                return fail(ret_error, "values[%zu].changedBy: expected an object", i);
        if (who) {
                r = get_string(field(who, who, "id"), NAME_MAX_LEN, &e->changed_by_id, false, i,
                               "changedBy.id", ret_error);
                if (r < 0)
                        return r;
                r = get_string(field(who, who, "uniqueName"), NAME_MAX_LEN, &e->changed_by, false,
                               i, "changedBy.uniqueName", ret_error);
                if (r < 0)
                        return r;
                r = get_string(field(who, who, "displayName"), NAME_MAX_LEN,
                               &e->changed_by_display_name, false, i, "changedBy.displayName",
                               ret_error);
                if (r < 0)
                        return r;
        }
        r = get_string(field(attrs, value, "comment"), TEXT_MAX_LEN, &e->comment, false, i,
                       "comment", ret_error);
        if (r < 0)
                return r;
        r = get_string(field(attrs, value, "sourceProjectId"), 36, &e->source_project_id, false,
                       i, "sourceProjectId", ret_error);
        if (r < 0)
                return r;
        r = get_string(field(attrs, value, "targetProjectId"), 36, &e->target_project_id, false,
                       i, "targetProjectId", ret_error);
        if (r < 0)
                return r;
        if (e->source_project_id.p &&
            !batch_valid_guid(e->source_project_id.p, e->source_project_id.len))
                return fail(ret_error, "values[%zu].sourceProjectId: not a GUID", i);
        if (e->target_project_id.p &&
            !batch_valid_guid(e->target_project_id.p, e->target_project_id.len))
                return fail(ret_error, "values[%zu].targetProjectId: not a GUID", i);
        return 0;
}

static bool valid_token(const char *s, size_t len) {
        if (len == 0 || len > TOKEN_MAX || strlen(s) != len)
                return false;
        for (size_t i = 0; i < len; i++)
                if ((unsigned char) s[i] < 0x20 || s[i] == 0x7f)
                        return false;
        return true;
}

int batch_parse(const char *body, size_t len, Batch **ret, char **ret_error) {
        _cleanup_(batch_freep) Batch *b = NULL;
        json_error_t jerr;
        json_t *values, *v;
        int r;

        *ret_error = NULL;
        b = calloc(1, sizeof(Batch));
        if (!b)
                return -ENOMEM;
        b->root = json_loadb(body, len, JSON_ALLOW_NUL, &jerr);
        if (!b->root)
                return fail(ret_error, "invalid JSON at line %d column %d: %s", jerr.line,
                            jerr.column, jerr.text);
        if (!json_is_object(b->root))
                return fail(ret_error, "the body is not a JSON object");

        values = json_object_get(b->root, "values");
        if (!json_is_array(values))
                return fail(ret_error, "'values' is missing or not an array");
        b->n_events = json_array_size(values);
        if (b->n_events > 0) {
                b->events = calloc(b->n_events, sizeof(LinkEvent));
                if (!b->events)
                        return -ENOMEM;
        }
        for (size_t i = 0; i < b->n_events; i++) {
                r = parse_event(json_array_get(values, i), i, &b->events[i], ret_error);
                if (r < 0)
                        return r;
        }

        v = json_object_get(b->root, "isLastBatch");
        if (json_is_boolean(v))
                b->is_last = json_is_true(v);
        else if (!v || json_is_null(v))
                /* Servers that do not say: an empty batch is the end of what is available. */
                b->is_last = b->n_events == 0;
        else
                return fail(ret_error, "'isLastBatch' is not a boolean");

        v = json_object_get(b->root, "continuationToken");
        if (json_is_string(v)) {
                if (!valid_token(json_string_value(v), json_string_length(v)))
                        return fail(ret_error, "'continuationToken' is empty, too long or not text");
                b->token = strdup(json_string_value(v));
                if (!b->token)
                        return -ENOMEM;
        } else if (json_is_integer(v)) {
                if (asprintf(&b->token, "%lld", (long long) json_integer_value(v)) < 0)
                        return -ENOMEM;
        } else if (v && !json_is_null(v))
                return fail(ret_error, "'continuationToken' is not a string");
        else {
                json_t *next = json_object_get(b->root, "nextLink");

                if (json_is_string(next)) {
                        r = url_token_from_next_link(json_string_value(next), &b->token);
                        if (r == -ENOMEM)
                                return r;
                        if (r == -EBADMSG)
                                return fail(ret_error, "'nextLink' carries a malformed token");
                        if (r >= 0 && !valid_token(b->token, strlen(b->token)))
                                return fail(ret_error, "'nextLink' carries a malformed token");
                } else if (next && !json_is_null(next))
                        return fail(ret_error, "'nextLink' is not a string");
        }

        *ret = TAKE_PTR(b);
        return 0;
}
