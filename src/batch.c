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

/*
 * The batch is read by a purpose-built pull parser instead of a general JSON tree: a batch is
 * a thousand records of ~900 bytes, and building a tree of hash tables for each of them cost
 * about half of the daemon's CPU time and most of its memory. The parser checks the whole
 * document (RFC 8259 syntax, UTF-8, escapes, surrogate pairs), skips what it does not know, and
 * decodes the strings it keeps into one arena no larger than the body. U+0000 is kept (with its
 * length); the store replaces it.
 */

#define TOKEN_MAX 16384
#define NAME_MAX_LEN 1024
#define TEXT_MAX_LEN (1024 * 1024)
#define DEPTH_MAX 64

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
        free(b->arena);
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

/* ---- dates and GUIDs ------------------------------------------------------------------------ */

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

/* YYYY-MM-DDTHH:MM:SS[.f{1,7}]Z, a real calendar date. */
bool batch_valid_date(const char *s, size_t len) {
        static const int days[12] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
        size_t frac = 0;
        int year, month, day;

        if (len < 20 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' ||
            !digits(s + 8, 2) || s[10] != 'T' || !digits(s + 11, 2) || s[13] != ':' ||
            !digits(s + 14, 2) || s[16] != ':' || !digits(s + 17, 2))
                return false;
        year = num(s, 4);
        month = num(s + 5, 2);
        day = num(s + 8, 2);
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

/* ---- the JSON reader ------------------------------------------------------------------------ */

typedef enum JsonType {
        JSON_ABSENT,
        JSON_NULL,
        JSON_FALSE,
        JSON_TRUE,
        JSON_NUMBER,
        JSON_STRING,
        JSON_OBJECT,
        JSON_ARRAY,
} JsonType;

/* A value as far as the batch cares: strings decoded, numbers as their text. */
typedef struct JsonValue {
        JsonType type;
        const char *s;
        size_t len;
} JsonValue;

typedef struct Parser {
        const char *start, *p, *end;
        char *arena;
        size_t arena_used;
        unsigned depth;
        const char *syntax; /* the first syntax error, with p at its place */
} Parser;

static bool syntax_error(Parser *P, const char *what) {
        if (!P->syntax)
                P->syntax = what;
        return false;
}

static void skip_ws(Parser *P) {
        while (P->p < P->end && (*P->p == ' ' || *P->p == '\n' || *P->p == '\r' || *P->p == '\t'))
                P->p++;
}

static bool expect(Parser *P, char c) {
        skip_ws(P);
        if (P->p >= P->end || *P->p != c)
                return syntax_error(P, c == ':' ? "':' expected" : "unexpected character");
        P->p++;
        return true;
}

static int hex4(const char *s) {
        int v = 0;

        for (int i = 0; i < 4; i++) {
                char c = s[i];

                v <<= 4;
                if (c >= '0' && c <= '9')
                        v |= c - '0';
                else if (c >= 'a' && c <= 'f')
                        v |= c - 'a' + 10;
                else if (c >= 'A' && c <= 'F')
                        v |= c - 'A' + 10;
                else
                        return -1;
        }
        return v;
}

static char *put_utf8(char *o, unsigned cp) {
        if (cp < 0x80)
                *o++ = (char) cp;
        else if (cp < 0x800) {
                *o++ = (char) (0xC0 | cp >> 6);
                *o++ = (char) (0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
                *o++ = (char) (0xE0 | cp >> 12);
                *o++ = (char) (0x80 | (cp >> 6 & 0x3F));
                *o++ = (char) (0x80 | (cp & 0x3F));
        } else {
                *o++ = (char) (0xF0 | cp >> 18);
                *o++ = (char) (0x80 | (cp >> 12 & 0x3F));
                *o++ = (char) (0x80 | (cp >> 6 & 0x3F));
                *o++ = (char) (0x80 | (cp & 0x3F));
        }
        return o;
}

/* Length of the well-formed UTF-8 sequence at s (no overlongs, surrogates or > U+10FFFF), 0 if
 * there is none. */
static size_t utf8_sequence(const unsigned char *s, const unsigned char *end) {
        size_t n;
        unsigned cp;

        if (s[0] >= 0xC2 && s[0] <= 0xDF)
                n = 2, cp = s[0] & 0x1F;
        else if (s[0] >= 0xE0 && s[0] <= 0xEF)
                n = 3, cp = s[0] & 0x0F;
        else if (s[0] >= 0xF0 && s[0] <= 0xF4)
                n = 4, cp = s[0] & 0x07;
        else
                return 0;
        if ((size_t) (end - s) < n)
                return 0;
        for (size_t i = 1; i < n; i++) {
                if ((s[i] & 0xC0) != 0x80)
                        return 0;
                cp = cp << 6 | (s[i] & 0x3F);
        }
        if ((n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
                return 0;
        return n;
}

/* At '"': decodes the string into the arena. */
static bool parse_string(Parser *P, JsonValue *ret) {
        char *out = P->arena + P->arena_used, *o = out;
        const char *p = P->p + 1, *end = P->end;

        for (;;) {
                const char *run = p;

                while (p < end && (unsigned char) *p >= 0x20 && (unsigned char) *p < 0x80 &&
                       *p != '"' && *p != '\\')
                        p++;
                memcpy(o, run, (size_t) (p - run));
                o += p - run;
                if (p >= end) {
                        P->p = p;
                        return syntax_error(P, "unterminated string");
                }
                if (*p == '"')
                        break;
                if ((unsigned char) *p < 0x20) {
                        P->p = p;
                        return syntax_error(P, "control character in a string");
                }
                if ((unsigned char) *p >= 0x80) {
                        size_t n = utf8_sequence((const unsigned char *) p,
                                                 (const unsigned char *) end);
                        if (n == 0) {
                                P->p = p;
                                return syntax_error(P, "invalid UTF-8 in a string");
                        }
                        memcpy(o, p, n);
                        o += n;
                        p += n;
                        continue;
                }
                /* An escape. */
                if (end - p < 2) {
                        P->p = p;
                        return syntax_error(P, "unterminated string");
                }
                switch (p[1]) {
                case '"':
                case '\\':
                case '/':
                        *o++ = p[1];
                        p += 2;
                        continue;
                case 'b':
                        *o++ = '\b';
                        p += 2;
                        continue;
                case 'f':
                        *o++ = '\f';
                        p += 2;
                        continue;
                case 'n':
                        *o++ = '\n';
                        p += 2;
                        continue;
                case 'r':
                        *o++ = '\r';
                        p += 2;
                        continue;
                case 't':
                        *o++ = '\t';
                        p += 2;
                        continue;
                case 'u':
                        break;
                default:
                        P->p = p;
                        return syntax_error(P, "invalid escape in a string");
                }
                int cp = end - p >= 6 ? hex4(p + 2) : -1;
                if (cp < 0) {
                        P->p = p;
                        return syntax_error(P, "invalid \\u escape");
                }
                p += 6;
                if (cp >= 0xDC00 && cp <= 0xDFFF) {
                        P->p = p - 6;
                        return syntax_error(P, "lone low surrogate");
                }
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                        int lo = end - p >= 6 && p[0] == '\\' && p[1] == 'u' ? hex4(p + 2) : -1;

                        if (lo < 0xDC00 || lo > 0xDFFF) {
                                P->p = p - 6;
                                return syntax_error(P, "lone high surrogate");
                        }
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        p += 6;
                }
                o = put_utf8(o, (unsigned) cp);
        }
        *o = 0;
        ret->type = JSON_STRING;
        ret->s = out;
        ret->len = (size_t) (o - out);
        P->arena_used += ret->len + 1;
        P->p = p + 1;
        return true;
}

static bool parse_number(Parser *P, JsonValue *ret) {
        const char *p = P->p, *end = P->end, *start = p;

        if (p < end && *p == '-')
                p++;
        if (p >= end || !isdigit((unsigned char) *p))
                return syntax_error(P, "invalid number");
        if (*p == '0')
                p++;
        else
                while (p < end && isdigit((unsigned char) *p))
                        p++;
        if (p < end && *p == '.') {
                p++;
                if (p >= end || !isdigit((unsigned char) *p))
                        return syntax_error(P, "invalid number");
                while (p < end && isdigit((unsigned char) *p))
                        p++;
        }
        if (p < end && (*p == 'e' || *p == 'E')) {
                p++;
                if (p < end && (*p == '+' || *p == '-'))
                        p++;
                if (p >= end || !isdigit((unsigned char) *p))
                        return syntax_error(P, "invalid number");
                while (p < end && isdigit((unsigned char) *p))
                        p++;
        }
        ret->type = JSON_NUMBER;
        ret->s = start;
        ret->len = (size_t) (p - start);
        P->p = p;
        return true;
}

static bool parse_literal(Parser *P, const char *word, JsonType type, JsonValue *ret) {
        size_t n = strlen(word);

        if ((size_t) (P->end - P->p) < n || memcmp(P->p, word, n) != 0)
                return syntax_error(P, "invalid literal");
        P->p += n;
        ret->type = type;
        return true;
}

typedef bool (*MemberFunc)(Parser *P, const JsonValue *key, void *userdata);

static bool skip_value(Parser *P);

/* At '{': calls member() for each key, which must consume the value. */
static bool parse_object(Parser *P, MemberFunc member, void *userdata) {
        if (++P->depth > DEPTH_MAX)
                return syntax_error(P, "nested too deeply");
        P->p++;
        skip_ws(P);
        if (P->p < P->end && *P->p == '}') {
                P->p++;
                P->depth--;
                return true;
        }
        for (;;) {
                JsonValue key = {};

                skip_ws(P);
                if (P->p >= P->end || *P->p != '"')
                        return syntax_error(P, "string or '}' expected");
                if (!parse_string(P, &key) || !expect(P, ':'))
                        return false;
                skip_ws(P);
                if (!(member ? member(P, &key, userdata) : skip_value(P)))
                        return false;
                skip_ws(P);
                if (P->p < P->end && *P->p == ',') {
                        P->p++;
                        continue;
                }
                if (P->p < P->end && *P->p == '}') {
                        P->p++;
                        P->depth--;
                        return true;
                }
                return syntax_error(P, "',' or '}' expected");
        }
}

typedef bool (*ElementFunc)(Parser *P, size_t index, void *userdata);

/* At '[': calls element() for each element, which must consume it. */
static bool parse_array(Parser *P, ElementFunc element, void *userdata) {
        size_t i = 0;

        if (++P->depth > DEPTH_MAX)
                return syntax_error(P, "nested too deeply");
        P->p++;
        skip_ws(P);
        if (P->p < P->end && *P->p == ']') {
                P->p++;
                P->depth--;
                return true;
        }
        for (;; i++) {
                skip_ws(P);
                if (!(element ? element(P, i, userdata) : skip_value(P)))
                        return false;
                skip_ws(P);
                if (P->p < P->end && *P->p == ',') {
                        P->p++;
                        continue;
                }
                if (P->p < P->end && *P->p == ']') {
                        P->p++;
                        P->depth--;
                        return true;
                }
                return syntax_error(P, "',' or ']' expected");
        }
}

/* Reads any value; containers are checked and skipped, their type reported. */
static bool parse_value(Parser *P, JsonValue *ret) {
        skip_ws(P);
        if (P->p >= P->end)
                return syntax_error(P, "unexpected end of input");
        switch (*P->p) {
        case '{':
                ret->type = JSON_OBJECT;
                return parse_object(P, NULL, NULL);
        case '[':
                ret->type = JSON_ARRAY;
                return parse_array(P, NULL, NULL);
        case '"':
                return parse_string(P, ret);
        case 't':
                return parse_literal(P, "true", JSON_TRUE, ret);
        case 'f':
                return parse_literal(P, "false", JSON_FALSE, ret);
        case 'n':
                return parse_literal(P, "null", JSON_NULL, ret);
        default:
                return parse_number(P, ret);
        }
}

static bool skip_value(Parser *P) {
        JsonValue v;

        return parse_value(P, &v);
}

static bool key_is(const JsonValue *key, const char *name) {
        return key->len == strlen(name) && memcmp(key->s, name, key->len) == 0;
}

/* ---- records -------------------------------------------------------------------------------- */

typedef enum Field {
        FIELD_REL,
        FIELD_LINK_TYPE,
        FIELD_SOURCE_ID,
        FIELD_TARGET_ID,
        FIELD_CHANGED_DATE,
        FIELD_IS_ACTIVE,
        FIELD_CHANGED_OPERATION,
        FIELD_CHANGED_BY,
        FIELD_COMMENT,
        FIELD_SOURCE_PROJECT_ID,
        FIELD_TARGET_PROJECT_ID,
        _FIELD_MAX,
} Field;

static const char *const field_names[_FIELD_MAX] = {
        [FIELD_REL] = "rel",
        [FIELD_LINK_TYPE] = "linkType",
        [FIELD_SOURCE_ID] = "sourceId",
        [FIELD_TARGET_ID] = "targetId",
        [FIELD_CHANGED_DATE] = "changedDate",
        [FIELD_IS_ACTIVE] = "isActive",
        [FIELD_CHANGED_OPERATION] = "changedOperation",
        [FIELD_CHANGED_BY] = "changedBy",
        [FIELD_COMMENT] = "comment",
        [FIELD_SOURCE_PROJECT_ID] = "sourceProjectId",
        [FIELD_TARGET_PROJECT_ID] = "targetProjectId",
};

typedef enum Who {
        WHO_ID,
        WHO_UNIQUE_NAME,
        WHO_DISPLAY_NAME,
        _WHO_MAX,
} Who;

static const char *const who_names[_WHO_MAX] = {
        [WHO_ID] = "id",
        [WHO_UNIQUE_NAME] = "uniqueName",
        [WHO_DISPLAY_NAME] = "displayName",
};

/* The fields of one level of a record (the top level, or "attributes"). */
typedef struct FieldSet {
        JsonValue v[_FIELD_MAX];
        JsonValue who[_WHO_MAX]; /* of changedBy, when it is an object */
} FieldSet;

typedef struct Record {
        FieldSet top, attrs;
        JsonType attrs_type;
} Record;

static bool who_member(Parser *P, const JsonValue *key, void *userdata) {
        JsonValue *who = userdata;

        for (Who w = 0; w < _WHO_MAX; w++)
                if (key_is(key, who_names[w]))
                        return parse_value(P, &who[w]);
        return skip_value(P);
}

static bool field_member(Parser *P, FieldSet *set, const JsonValue *key) {
        for (Field f = 0; f < _FIELD_MAX; f++) {
                if (!key_is(key, field_names[f]))
                        continue;
                if (f == FIELD_CHANGED_BY && P->p < P->end && *P->p == '{') {
                        memset(set->who, 0, sizeof(set->who));
                        set->v[f].type = JSON_OBJECT;
                        return parse_object(P, who_member, set->who);
                }
                return parse_value(P, &set->v[f]);
        }
        return skip_value(P);
}

static bool attrs_member(Parser *P, const JsonValue *key, void *userdata) {
        return field_member(P, userdata, key);
}

static bool record_member(Parser *P, const JsonValue *key, void *userdata) {
        Record *rec = userdata;

        if (key_is(key, "attributes")) {
                if (P->p < P->end && *P->p == '{') {
                        memset(&rec->attrs, 0, sizeof(rec->attrs));
                        rec->attrs_type = JSON_OBJECT;
                        return parse_object(P, attrs_member, &rec->attrs);
                }
                JsonValue v = {};
                if (!parse_value(P, &v))
                        return false;
                rec->attrs_type = v.type;
                return true;
        }
        return field_member(P, &rec->top, key);
}

/* The attributes first, then the top level (flat shape); null counts as absent. */
static const JsonValue *record_field(const Record *rec, Field f, const FieldSet **ret_set) {
        const FieldSet *set = &rec->top;

        if (rec->attrs_type == JSON_OBJECT && rec->attrs.v[f].type != JSON_ABSENT)
                set = &rec->attrs;
        if (ret_set)
                *ret_set = set;
        return set->v[f].type == JSON_NULL || set->v[f].type == JSON_ABSENT ? NULL : &set->v[f];
}

static int get_string(const JsonValue *v, size_t max, BatchString *ret, bool required, size_t i,
                      const char *name, char **ret_error) {
        if (!v) {
                if (required)
                        return fail(ret_error, "values[%zu].%s: missing or null", i, name);
                *ret = (BatchString){};
                return 0;
        }
        if (v->type != JSON_STRING)
                return fail(ret_error, "values[%zu].%s: expected a string", i, name);
        ret->p = v->s;
        ret->len = v->len;
        if (ret->len > max)
                return fail(ret_error, "values[%zu].%s: longer than %zu bytes", i, name, max);
        if (required && ret->len == 0)
                return fail(ret_error, "values[%zu].%s: empty", i, name);
        return 0;
}

static bool number_is_integer(const JsonValue *v) {
        for (size_t k = 0; k < v->len; k++)
                if (v->s[k] == '.' || v->s[k] == 'e' || v->s[k] == 'E')
                        return false;
        return true;
}

static int get_id(const JsonValue *v, int32_t *ret, size_t i, const char *name, char **ret_error) {
        long long n = 0;
        bool neg;
        size_t k;

        if (!v)
                return fail(ret_error, "values[%zu].%s: missing or null", i, name);
        if (v->type != JSON_NUMBER || !number_is_integer(v))
                return fail(ret_error, "values[%zu].%s: expected an integer", i, name);
        neg = v->s[0] == '-';
        for (k = neg; k < v->len && n <= INT32_MAX; k++)
                n = n * 10 + (v->s[k] - '0');
        if (neg || n < 1 || n > INT32_MAX)
                return fail(ret_error, "values[%zu].%s: %.*s is not a work item id (1 to %d)", i,
                            name, (int) (v->len > 24 ? 24 : v->len), v->s, INT32_MAX);
        *ret = (int32_t) n;
        return 0;
}

static int record_to_event(const Record *rec, size_t i, LinkEvent *e, char **ret_error) {
        const JsonValue *v;
        const FieldSet *who_set;
        int r;

        if (rec->attrs_type != JSON_ABSENT && rec->attrs_type != JSON_NULL &&
            rec->attrs_type != JSON_OBJECT)
                return fail(ret_error, "values[%zu].attributes: expected an object", i);

        r = get_string(record_field(rec, FIELD_REL, NULL), NAME_MAX_LEN, &e->rel, true, i, "rel",
                       ret_error);
        if (r < 0)
                return r;
        r = get_string(record_field(rec, FIELD_LINK_TYPE, NULL), NAME_MAX_LEN, &e->link_type,
                       false, i, "linkType", ret_error);
        if (r < 0)
                return r;
        r = get_id(record_field(rec, FIELD_SOURCE_ID, NULL), &e->source_id, i, "sourceId",
                   ret_error);
        if (r < 0)
                return r;
        r = get_id(record_field(rec, FIELD_TARGET_ID, NULL), &e->target_id, i, "targetId",
                   ret_error);
        if (r < 0)
                return r;
        r = get_string(record_field(rec, FIELD_CHANGED_DATE, NULL), 40, &e->changed_date, true, i,
                       "changedDate", ret_error);
        if (r < 0)
                return r;
        if (!batch_valid_date(e->changed_date.p, e->changed_date.len))
                return fail(ret_error,
                            "values[%zu].changedDate: '%.40s' is not UTC ISO 8601 "
                            "(YYYY-MM-DDTHH:MM:SS[.fffffff]Z)",
                            i, e->changed_date.p);

        v = record_field(rec, FIELD_IS_ACTIVE, NULL);
        if (!v)
                e->is_active_reported = -1;
        else if (v->type == JSON_TRUE || v->type == JSON_FALSE)
                e->is_active_reported = v->type == JSON_TRUE;
        else
                return fail(ret_error, "values[%zu].isActive: expected a boolean", i);

        v = record_field(rec, FIELD_CHANGED_OPERATION, NULL);
        if (v) {
                if (v->type != JSON_STRING)
                        return fail(ret_error, "values[%zu].changedOperation: expected a string", i);
                if (v->len == 6 && strncasecmp(v->s, "create", 6) == 0)
                        e->operation = LINK_OPERATION_CREATE;
                else if (v->len == 6 && strncasecmp(v->s, "remove", 6) == 0)
                        e->operation = LINK_OPERATION_REMOVE;
                else
                        return fail(ret_error,
                                    "values[%zu].changedOperation: '%.32s' is neither create nor "
                                    "remove",
                                    i, v->s);
        } else if (e->is_active_reported >= 0)
                e->operation = e->is_active_reported ? LINK_OPERATION_CREATE : LINK_OPERATION_REMOVE;
        else
                return fail(ret_error, "values[%zu]: neither changedOperation nor isActive", i);

        v = record_field(rec, FIELD_CHANGED_BY, &who_set);
        if (v && v->type != JSON_OBJECT)
                return fail(ret_error, "values[%zu].changedBy: expected an object", i);
        if (v) {
                static const char *const names[_WHO_MAX] = {
                        [WHO_ID] = "changedBy.id",
                        [WHO_UNIQUE_NAME] = "changedBy.uniqueName",
                        [WHO_DISPLAY_NAME] = "changedBy.displayName",
                };
                BatchString *dst[_WHO_MAX] = {
                        [WHO_ID] = &e->changed_by_id,
                        [WHO_UNIQUE_NAME] = &e->changed_by,
                        [WHO_DISPLAY_NAME] = &e->changed_by_display_name,
                };

                for (Who w = 0; w < _WHO_MAX; w++) {
                        const JsonValue *x = &who_set->who[w];

                        r = get_string(x->type == JSON_ABSENT || x->type == JSON_NULL ? NULL : x,
                                       NAME_MAX_LEN, dst[w], false, i, names[w], ret_error);
                        if (r < 0)
                                return r;
                }
        }
        r = get_string(record_field(rec, FIELD_COMMENT, NULL), TEXT_MAX_LEN, &e->comment, false, i,
                       "comment", ret_error);
        if (r < 0)
                return r;
        r = get_string(record_field(rec, FIELD_SOURCE_PROJECT_ID, NULL), 36, &e->source_project_id,
                       false, i, "sourceProjectId", ret_error);
        if (r < 0)
                return r;
        r = get_string(record_field(rec, FIELD_TARGET_PROJECT_ID, NULL), 36, &e->target_project_id,
                       false, i, "targetProjectId", ret_error);
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

/* ---- the envelope --------------------------------------------------------------------------- */

typedef struct Envelope {
        Batch *batch;
        size_t allocated;
        JsonValue values, is_last, token, next_link;
        char *error; /* the first validation error; the document is still read to its end */
        bool oom;
} Envelope;

static bool value_element(Parser *P, size_t index, void *userdata) {
        Envelope *env = userdata;
        Batch *b = env->batch;
        Record rec = {};

        if (P->p >= P->end || *P->p != '{') {
                if (!skip_value(P))
                        return false;
                if (!env->error)
                        (void) fail(&env->error, "values[%zu]: expected an object", index);
                return true;
        }
        if (!parse_object(P, record_member, &rec))
                return false;
        if (env->error || env->oom)
                return true;
        if (b->n_events == env->allocated) {
                size_t a = env->allocated ? env->allocated * 2 : 256;
                LinkEvent *n = realloc(b->events, a * sizeof(LinkEvent));

                if (!n) {
                        env->oom = true;
                        return true;
                }
                b->events = n;
                env->allocated = a;
        }
        memset(&b->events[b->n_events], 0, sizeof(LinkEvent));
        if (record_to_event(&rec, index, &b->events[b->n_events], &env->error) >= 0)
                b->n_events++;
        return true;
}

static bool envelope_member(Parser *P, const JsonValue *key, void *userdata) {
        Envelope *env = userdata;

        if (key_is(key, "values")) {
                if (P->p < P->end && *P->p == '[') {
                        /* A repeated key replaces the earlier one. */
                        env->batch->n_events = 0;
                        env->values.type = JSON_ARRAY;
                        return parse_array(P, value_element, env);
                }
                return parse_value(P, &env->values);
        }
        if (key_is(key, "isLastBatch"))
                return parse_value(P, &env->is_last);
        if (key_is(key, "continuationToken"))
                return parse_value(P, &env->token);
        if (key_is(key, "nextLink"))
                return parse_value(P, &env->next_link);
        return skip_value(P);
}

static bool valid_token(const char *s, size_t len) {
        if (len == 0 || len > TOKEN_MAX || strlen(s) != len)
                return false;
        for (size_t i = 0; i < len; i++)
                if ((unsigned char) s[i] < 0x20 || s[i] == 0x7f)
                        return false;
        return true;
}

static int syntax_failure(const Parser *P, char **ret_error) {
        int line = 1, column = 1;

        for (const char *c = P->start; c < P->p && c < P->end; c++) {
                if (*c == '\n') {
                        line++;
                        column = 1;
                } else
                        column++;
        }
        return fail(ret_error, "invalid JSON at line %d column %d: %s", line, column,
                    P->syntax ?: "syntax error");
}

static int envelope_finish(Envelope *env, char **ret_error) {
        Batch *b = env->batch;
        int r;

        if (env->values.type != JSON_ARRAY)
                return fail(ret_error, "'values' is missing or not an array");
        if (env->error) {
                *ret_error = TAKE_PTR(env->error);
                return -EBADMSG;
        }

        switch (env->is_last.type) {
        case JSON_TRUE:
        case JSON_FALSE:
                b->is_last = env->is_last.type == JSON_TRUE;
                break;
        case JSON_ABSENT:
        case JSON_NULL:
                /* Servers that do not say: an empty batch is the end of what is available. */
                b->is_last = b->n_events == 0;
                break;
        default:
                return fail(ret_error, "'isLastBatch' is not a boolean");
        }

        if (env->token.type == JSON_STRING) {
                if (!valid_token(env->token.s, env->token.len))
                        return fail(ret_error, "'continuationToken' is empty, too long or not text");
                b->token = strdup(env->token.s);
                return b->token ? 0 : -ENOMEM;
        }
        if (env->token.type == JSON_NUMBER) {
                if (!number_is_integer(&env->token) || env->token.len > 20)
                        return fail(ret_error, "'continuationToken' is not a string");
                b->token = strndup(env->token.s, env->token.len);
                return b->token ? 0 : -ENOMEM;
        }
        if (env->token.type != JSON_ABSENT && env->token.type != JSON_NULL)
                return fail(ret_error, "'continuationToken' is not a string");

        if (env->next_link.type == JSON_STRING) {
                if (strlen(env->next_link.s) != env->next_link.len)
                        return fail(ret_error, "'nextLink' carries a malformed token");
                r = url_token_from_next_link(env->next_link.s, &b->token);
                if (r == -ENOMEM)
                        return r;
                if (r == -EBADMSG || (r >= 0 && !valid_token(b->token, strlen(b->token))))
                        return fail(ret_error, "'nextLink' carries a malformed token");
        } else if (env->next_link.type != JSON_ABSENT && env->next_link.type != JSON_NULL)
                return fail(ret_error, "'nextLink' is not a string");
        return 0;
}

int batch_parse(const char *body, size_t len, Batch **ret, char **ret_error) {
        _cleanup_(batch_freep) Batch *b = NULL;
        Envelope env = {};
        Parser P = { .start = body, .p = body, .end = body + len };
        bool ok, is_object;
        int r;

        *ret_error = NULL;
        b = calloc(1, sizeof(Batch));
        if (!b)
                return -ENOMEM;
        /* Decoded strings (each with its NUL) never outgrow the text they come from. */
        b->arena = malloc(len + 1);
        if (!b->arena)
                return -ENOMEM;
        P.arena = b->arena;
        env.batch = b;

        skip_ws(&P);
        if (P.p >= P.end) {
                P.syntax = "empty body";
                return syntax_failure(&P, ret_error);
        }
        is_object = *P.p == '{';
        if (is_object)
                ok = parse_object(&P, envelope_member, &env);
        else if (*P.p == '[')
                ok = skip_value(&P);
        else
                ok = syntax_error(&P, "'{' expected");
        if (ok) {
                skip_ws(&P);
                if (P.p < P.end)
                        ok = syntax_error(&P, "end of input expected");
        }
        if (!ok) {
                free(env.error);
                return syntax_failure(&P, ret_error);
        }
        if (env.oom) {
                free(env.error);
                return -ENOMEM;
        }
        if (!is_object) {
                free(env.error);
                return fail(ret_error, "the body is not a JSON object");
        }
        r = envelope_finish(&env, ret_error);
        free(env.error);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(b);
        return 0;
}
