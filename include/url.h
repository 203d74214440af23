/* SPDX-License-Identifier: MIT */
/* Request URLs of the link feed, and continuation tokens taken from a nextLink. */
#pragma once

#include <stddef.h>

typedef struct FeedQuery {
        const char *base_url;    /* verbatim from the config, no trailing slash */
        const char *project;     /* NULL: collection-wide */
        const char *api_version;
        const char *token;       /* NULL: start of the feed */
        const char *types;       /* normalised comma list or "" / NULL */
        const char *link_types;  /* normalised comma list or "" / NULL */
        const char *start_date;  /* only used without a token */
} FeedQuery;

/* Builds the GET URL of the next batch. */
int url_build_feed(const FeedQuery *q, char **ret);

/* Percent-encodes everything but RFC 3986 unreserved characters (and ',' when keep_comma). */
char *url_escape(const char *s, size_t len, int keep_comma);

/* Finds the continuationToken (or legacy watermark) parameter in a nextLink's query and decodes
 * it. Returns -ENOENT when there is none, -EBADMSG when it is malformed. The host of the link is
 * never used. */
int url_token_from_next_link(const char *next_link, char **ret);
