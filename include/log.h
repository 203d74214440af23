/* SPDX-License-Identifier: MIT */
/* Logging: structured journal entries under systemd, plain lines on stderr elsewhere. */
#pragma once

#include <stdint.h>
#include <syslog.h>

#include "macro.h"

/* Stable message IDs of operator events; each is documented in systemd/witlinkd.catalog. */
#define MESSAGE_ID_STARTED "44718e2303e34d8488298c4ef5457d86"
#define MESSAGE_ID_READY "18e1cc9a7c9244508c387d3371bb4e3c"
#define MESSAGE_ID_FEED_CAUGHT_UP "c683eddc38724c209343de437103a5bd"
#define MESSAGE_ID_FEED_FAILING "023f0ab1ade549b79a1efa9e006cd5fe"
#define MESSAGE_ID_THROTTLED "eed64108fb1e4af699696242b64cdb19"
#define MESSAGE_ID_AUTH_REJECTED "aec7d988b2674846a75fcd5fffb445fe"
#define MESSAGE_ID_DATABASE_LOST "5875e9ee356d4823b98b846488e445da"
#define MESSAGE_ID_DATABASE_RESTORED "1b94c691ef084d64a6a1f0beeb18a086"
#define MESSAGE_ID_RELOADED "bc66e67b18e34f8dbe530175bba7f60f"
#define MESSAGE_ID_STOPPING "1389279f494e412cb92bc974df247994"
#define MESSAGE_ID_FEED_STOPPED "115aa23b4c984da0bf334973c8e02652"

/* Structured context of a log line; every field is optional (0, NULL or -1 when unset). */
typedef struct LogContext {
        int64_t feed_id;
        const char *organization;
        const char *project;
        int http_status;
        const char *activity_id;
        int64_t events;
} LogContext;

#define LOG_CONTEXT_NULL ((LogContext){ .feed_id = 0, .events = -1 })

/* Decide between the journal and stderr (JOURNAL_STREAM names our stderr). */
void log_open(void);
void log_set_max_level(int level);
int log_get_max_level(void);
int log_level_from_string(const char *s);
const char *log_level_to_string(int level);

/* Returns -|error| (or 0 when error is 0) so callers can "return log_...errno(r, ...)". */
int log_emit(int level, int error, const char *file, int line, const char *func,
             const char *message_id, const LogContext *ctx, const char *format, ...)
        _printf_(8, 9);

#define log_full(level, error, msgid, ctx, ...) \
        log_emit(level, error, __FILE__, __LINE__, __func__, msgid, ctx, __VA_ARGS__)

#define log_debug(...) log_full(LOG_DEBUG, 0, NULL, NULL, __VA_ARGS__)
#define log_info(...) log_full(LOG_INFO, 0, NULL, NULL, __VA_ARGS__)
#define log_notice(...) log_full(LOG_NOTICE, 0, NULL, NULL, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, 0, NULL, NULL, __VA_ARGS__)
#define log_error(...) log_full(LOG_ERR, 0, NULL, NULL, __VA_ARGS__)
#define log_debug_errno(r, ...) log_full(LOG_DEBUG, r, NULL, NULL, __VA_ARGS__)
#define log_warning_errno(r, ...) log_full(LOG_WARNING, r, NULL, NULL, __VA_ARGS__)
#define log_error_errno(r, ...) log_full(LOG_ERR, r, NULL, NULL, __VA_ARGS__)
