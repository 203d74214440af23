/* SPDX-License-Identifier: MIT */
/* One batch of the link feed: JSON parsing and validation of both record shapes. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"

/* A string decoded from the JSON document; p == NULL when absent or null. May hold U+0000. */
typedef struct BatchString {
        const char *p;
        size_t len;
} BatchString;

typedef enum LinkOperation {
        LINK_OPERATION_CREATE,
        LINK_OPERATION_REMOVE,
        _LINK_OPERATION_MAX,
} LinkOperation;

typedef struct LinkEvent {
        BatchString rel;          /* link type reference name, required */
        BatchString link_type;    /* end name, e.g. ...Hierarchy-Forward */
        BatchString changed_date; /* validated ISO 8601 UTC */
        BatchString changed_by_id;
        BatchString changed_by; /* uniqueName */
        BatchString changed_by_display_name;
        BatchString comment;
        BatchString source_project_id; /* validated GUID */
        BatchString target_project_id;
        int32_t source_id;
        int32_t target_id;
        LinkOperation operation; /* changedOperation, or isActive when that is absent */
        int is_active_reported;  /* 1, 0, or -1 when not sent */
} LinkEvent;

typedef struct Batch {
        char *arena; /* owns every BatchString: the decoded strings of the body */
        LinkEvent *events;
        size_t n_events;
        char *token; /* continuationToken, or the one in nextLink; NULL when neither */
        bool is_last;
} Batch;

/* Parses a response body. On -EBADMSG, ret_error says what and where (never the whole body). */
int batch_parse(const char *body, size_t len, Batch **ret, char **ret_error);
Batch *batch_free(Batch *b);
DEFINE_CLEANUP_FUNC(Batch, batch_free);

const char *link_operation_to_string(LinkOperation op);

/* Exposed for the unit tests. */
bool batch_valid_date(const char *s, size_t len);
bool batch_valid_guid(const char *s, size_t len);
