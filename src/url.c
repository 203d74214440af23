/* SPDX-License-Identifier: MIT */
/* Request URLs of the link feed, and continuation tokens taken from a nextLink. */
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "macro.h"
#include "url.h"

#define TOKEN_MAX 16384

char *url_escape(const char *s, size_t len, int keep_comma) {
        static const char hex[] = "0123456789ABCDEF";
        char *out = malloc(len * 3 + 1), *o = out;

        if (!out)
                return NULL;
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char) s[i];

                if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' ||
                    (keep_comma && c == ','))
                        *o++ = (char) c;
                else {
                        *o++ = '%';
                        *o++ = hex[c >> 4];
                        *o++ = hex[c & 15];
                }
        }
        *o = 0;
        return out;
}

static int append_param(FILE *f, const char *name, const char *value, bool keep_comma) {
        _cleanup_free_ char *e = NULL;

        if (!value || !*value)
                return 0;
        e = url_escape(value, strlen(value), keep_comma);
        if (!e)
                return -ENOMEM;
        fprintf(f, "&%s=%s", name, e);
        return 0;
}

int url_build_feed(const FeedQuery *q, char **ret) {
        _cleanup_free_ char *out = NULL;
        size_t size = 0;
        FILE *f;
        int r = 0;

        if (!q->base_url || !q->api_version)
                return -EINVAL;
        f = open_memstream(&out, &size);
        if (!f)
                return -ENOMEM;
        fputs(q->base_url, f);
        if (q->project) {
                _cleanup_free_ char *p = url_escape(q->project, strlen(q->project), false);
                if (!p)
                        r = -ENOMEM;
                else
                        fprintf(f, "/%s", p);
        }
        fputs("/_apis/wit/reporting/workitemlinks?api-version=", f);
        {
                _cleanup_free_ char *v = url_escape(q->api_version, strlen(q->api_version), false);
                if (!v)
                        r = -ENOMEM;
                else
                        fputs(v, f);
        }
        if (r >= 0)
                r = append_param(f, "continuationToken", q->token, false);
        if (r >= 0)
                r = append_param(f, "types", q->types, true);
        if (r >= 0)
                r = append_param(f, "linkTypes", q->link_types, true);
        if (r >= 0 && !(q->token && *q->token))
                r = append_param(f, "startDateTime", q->start_date, false);
        if (fclose(f) != 0 && r >= 0)
                r = -ENOMEM;
        if (r < 0)
                return r;
        *ret = TAKE_PTR(out);
        return 0;
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        c = (char) tolower((unsigned char) c);
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

/* Decodes application/x-www-form-urlencoded text, as the server's own query parser does. */
static int url_unescape(const char *s, size_t len, char **ret) {
        char *out = malloc(len + 1), *o = out;

        if (!out)
                return -ENOMEM;
        for (size_t i = 0; i < len; i++) {
                if (s[i] == '%') {
                        int hi, lo;

                        if (i + 2 >= len) {
                                free(out);
                                return -EBADMSG;
                        }
                        hi = unhex(s[i + 1]);
                        lo = unhex(s[i + 2]);
                        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                                free(out);
                                return -EBADMSG;
                        }
                        *o++ = (char) (hi << 4 | lo);
                        i += 2;
                } else if (s[i] == '+')
                        *o++ = ' ';
                else
                        *o++ = s[i];
        }
        *o = 0;
        *ret = out;
        return 0;
}

int url_token_from_next_link(const char *next_link, char **ret) {
        static const char *const names[] = { "continuationToken", "watermark" };
        const char *query, *end;

        if (!next_link)
                return -ENOENT;
        /* The query ends at the fragment; a '?' inside the fragment is no query. */
        end = next_link + strcspn(next_link, "#");
        query = memchr(next_link, '?', (size_t) (end - next_link));
        if (!query)
                return -ENOENT;
        query++;

        for (size_t n = 0; n < ELEMENTSOF(names); n++) {
                const char *p = query;

                while (p < end) {
                        const char *amp = memchr(p, '&', (size_t) (end - p)) ?: end;
                        const char *eq = memchr(p, '=', (size_t) (amp - p));
                        size_t klen = (size_t) ((eq ?: amp) - p);

                        if (eq && klen == strlen(names[n]) && strncasecmp(p, names[n], klen) == 0) {
                                size_t vlen = (size_t) (amp - eq - 1);
                                char *v;
                                int r;

                                if (vlen == 0 || vlen > TOKEN_MAX * 3)
                                        return -EBADMSG;
                                r = url_unescape(eq + 1, vlen, &v);
                                if (r < 0)
                                        return r;
                                if (!*v || strlen(v) > TOKEN_MAX) {
                                        free(v);
                                        return -EBADMSG;
                                }
                                *ret = v;
                                return 0;
                        }
                        p = amp + 1;
                }
        }
        return -ENOENT;
}
