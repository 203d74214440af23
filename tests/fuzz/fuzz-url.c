/* SPDX-License-Identifier: MIT */
/* libFuzzer target: url_build_feed() with any query fields, url_token_from_next_link() on any
 * text, and the round trip: the token of a URL we build is the token we put in. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "url.h"

#define CHECK(x)                  \
        do {                      \
                if (!(x))         \
                        abort();  \
        } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Splits the input at NUL bytes into up to n fields (missing ones are NULL). */
static void split(char *s, size_t size, char **f, size_t n) {
        size_t k = 0;
        char *p = s, *end = s + size;

        memset(f, 0, n * sizeof(char *));
        while (k < n && p <= end) {
                f[k++] = p;
                p += strlen(p) + 1;
        }
}

static bool unreserved_or_escape(const char *s) {
        for (; *s; s++) {
                unsigned char c = (unsigned char) *s;

                if (c == '%') {
                        if (!strchr("0123456789ABCDEF", s[1]) || !s[1] ||
                            !strchr("0123456789ABCDEF", s[2]) || !s[2])
                                return false;
                        s += 2;
                } else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                             (c >= '0' && c <= '9') || strchr("-._~,", c)))
                        return false;
        }
        return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *s = malloc(size + 1), *f[7], *url = NULL, *tok = NULL, *esc;
        int r;

        if (!s)
                return 0;
        memcpy(s, data, size);
        s[size] = 0;

        /* Any text as a nextLink: a token, or -ENOENT / -EBADMSG; never more than 16 KiB. */
        r = url_token_from_next_link(s, &tok);
        CHECK(r == 0 || r == -ENOENT || r == -EBADMSG || r == -ENOMEM);
        if (r == 0) {
                CHECK(tok[0] && strlen(tok) <= 16384);
                free(tok);
                tok = NULL;
        }

        /* Fields: base URL, project, api-version, token, types, link types, start date. */
        split(s, size, f, 7);
        esc = url_escape(s, strlen(s), 0);
        CHECK(esc && unreserved_or_escape(esc));
        free(esc);

        FeedQuery q = {
                .base_url = f[0],
                .project = f[1] && *f[1] ? f[1] : NULL,
                .api_version = f[2],
                .token = f[3] && *f[3] ? f[3] : NULL,
                .types = f[4],
                .link_types = f[5],
                .start_date = f[6],
        };
        r = url_build_feed(&q, &url);
        if (!q.base_url || !q.api_version) {
                CHECK(r == -EINVAL);
                free(s);
                return 0;
        }
        CHECK(r == 0 || r == -ENOMEM);
        if (r == 0) {
                CHECK(strncmp(url, q.base_url, strlen(q.base_url)) == 0);
                /* Past the base URL: no space, no control character, no second '?'. */
                const char *rest = url + strlen(q.base_url);
                for (const char *c = rest; *c; c++)
                        CHECK((unsigned char) *c > ' ' && *c != 0x7f);
                CHECK(strchr(rest, '?') && !strchr(strchr(rest, '?') + 1, '?'));
                /* Round trip: the token parsed back from the URL we built is the one we sent
                 * (as long as the base URL itself carries no query or fragment). */
                if (q.token && strlen(q.token) <= 16384 && !strpbrk(q.base_url, "?#")) {
                        r = url_token_from_next_link(url, &tok);
                        CHECK(r == 0 || r == -ENOMEM);
                        if (r == 0) {
                                CHECK(strcmp(tok, q.token) == 0);
                                free(tok);
                        }
                }
                free(url);
        }
        free(s);
        return 0;
}
