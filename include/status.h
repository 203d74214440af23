/* SPDX-License-Identifier: MIT */
/* witlinkd --status: each feed's state from the warehouse as a table or JSON, and a verdict
 * that lets the command serve as a health check. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

/* The non-negative results of status_run(). */
enum {
        STATUS_HEALTHY = 0,
        STATUS_UNHEALTHY = 1, /* a configured feed is failing, lagging or not registered */
};

typedef struct StatusOptions {
        bool json;             /* one JSON document instead of the table */
        uint64_t max_lag_usec; /* a feed whose last success is older is lagging; 0: default */
} StatusOptions;

/* 3 × poll-interval + 5 min: a healthy feed polls at least every poll-interval, and one
 * failed poll with its backoff fits in the margin. */
uint64_t status_default_max_lag(const Config *c);

/* Reads witlink.feed_status from the configured database (a blocking session: this is a one-shot
 * command, not the daemon), prints every feed to out and judges the feeds of the configuration.
 * Returns STATUS_HEALTHY or STATUS_UNHEALTHY; -ECONNREFUSED when the database cannot be reached,
 * -EPROTO when its schema is older than this witlinkd, another negative errno on failure.
 * Failures are logged here. */
int status_run(const Config *c, const StatusOptions *o, FILE *out);

/* Exposed for the unit tests: "45s", "3min 12s", "2h 5min", "3d 4h". */
char *status_format_span(double seconds, char *buf, size_t size);
