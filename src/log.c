/* SPDX-License-Identifier: MIT */
/* Logging: structured journal entries under systemd, plain lines on stderr elsewhere. */
#define SD_JOURNAL_SUPPRESS_LOCATION 1

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>

#include "log.h"

static int max_level = LOG_INFO;
static bool use_journal = false;

static const char *const level_names[] = {
        [LOG_EMERG] = "emerg",   [LOG_ALERT] = "alert",   [LOG_CRIT] = "crit",
        [LOG_ERR] = "err",       [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
        [LOG_INFO] = "info",     [LOG_DEBUG] = "debug",
};

const char *log_level_to_string(int level) {
        if (level < 0 || (size_t) level >= ELEMENTSOF(level_names))
                return NULL;
        return level_names[level];
}

int log_level_from_string(const char *s) {
        for (size_t i = 0; i < ELEMENTSOF(level_names); i++)
                if (strcasecmp(s, level_names[i]) == 0)
                        return (int) i;
        if (strcasecmp(s, "error") == 0)
                return LOG_ERR;
        if (strcasecmp(s, "warn") == 0)
                return LOG_WARNING;
        return -EINVAL;
}

void log_set_max_level(int level) {
        max_level = level;
}

int log_get_max_level(void) {
        return max_level;
}

void log_open(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        use_journal = false;
        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return;
        if (fstat(STDERR_FILENO, &st) < 0)
                return;
        use_journal = (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
}

/* Journal field values must not contain newlines only for the "FIELD=value" form;
 * sd_journal_sendv() accepts binary-safe values, so each field is one iovec. */
static void log_to_journal(int level, int error, const char *file, int line, const char *func,
                           const char *message_id, const LogContext *ctx, const char *message) {
        char buf[16][128];
        struct iovec iov[24];
        size_t n = 0, b = 0;
        _cleanup_free_ char *msg = NULL, *org = NULL, *proj = NULL, *act = NULL;

#define ADD_FMT(...)                                                                  \
        do {                                                                          \
                snprintf(buf[b], sizeof(buf[b]), __VA_ARGS__);                        \
                iov[n++] = (struct iovec){ .iov_base = buf[b], .iov_len = strlen(buf[b]) }; \
                b++;                                                                  \
        } while (0)
#define ADD_STR(dst, prefix, value)                                                   \
        do {                                                                          \
                if (asprintf(&dst, prefix "%s", value) >= 0)                          \
                        iov[n++] = (struct iovec){ .iov_base = dst, .iov_len = strlen(dst) }; \
        } while (0)

        ADD_STR(msg, "MESSAGE=", message);
        ADD_FMT("PRIORITY=%d", level);
        ADD_FMT("SYSLOG_IDENTIFIER=witlinkd");
        ADD_FMT("CODE_FILE=%s", file);
        ADD_FMT("CODE_LINE=%d", line);
        ADD_FMT("CODE_FUNC=%s", func);
        if (message_id)
                ADD_FMT("MESSAGE_ID=%s", message_id);
        if (error != 0)
                ADD_FMT("ERRNO=%d", error < 0 ? -error : error);
        if (ctx) {
                if (ctx->feed_id > 0)
                        ADD_FMT("WITLINK_FEED=%" PRIi64, ctx->feed_id);
                if (ctx->organization)
                        ADD_STR(org, "WITLINK_ORGANIZATION=", ctx->organization);
                if (ctx->project)
                        ADD_STR(proj, "WITLINK_PROJECT=", ctx->project);
                if (ctx->http_status > 0)
                        ADD_FMT("WITLINK_HTTP_STATUS=%d", ctx->http_status);
                if (ctx->activity_id)
                        ADD_STR(act, "WITLINK_ACTIVITY_ID=", ctx->activity_id);
                if (ctx->events >= 0)
                        ADD_FMT("WITLINK_EVENTS=%" PRIi64, ctx->events);
        }
#undef ADD_FMT
#undef ADD_STR
        (void) sd_journal_sendv(iov, (int) n);
}

static void log_to_stderr(int level, const LogContext *ctx, const char *message) {
        char prefix[256] = "";

        if (ctx && ctx->feed_id > 0)
                snprintf(prefix, sizeof(prefix), "feed %" PRIi64 " (%s%s%s): ", ctx->feed_id,
                         ctx->organization ?: "?", ctx->project ? "/" : "",
                         ctx->project ?: "");
        fprintf(stderr, "witlinkd: %s: %s%s\n", log_level_to_string(level) ?: "?", prefix, message);
}

int log_emit(int level, int error, const char *file, int line, const char *func,
             const char *message_id, const LogContext *ctx, const char *format, ...) {
        char message[2048];
        int saved = errno;
        va_list ap;

        if (level > max_level)
                goto finish;

        /* Let "%m" print the error we were handed. */
        errno = error < 0 ? -error : error;
        va_start(ap, format);
        vsnprintf(message, sizeof(message), format, ap);
        va_end(ap);

        if (use_journal)
                log_to_journal(level, error, file, line, func, message_id, ctx, message);
        else
                log_to_stderr(level, ctx, message);

finish:
        errno = saved;
        return error < 0 ? error : -error;
}
