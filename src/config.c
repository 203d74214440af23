/* SPDX-License-Identifier: MIT */
/* Configuration: one declarative key table, an INI reader and credential loading. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

#define TOKEN_MAX 16384
#define LINE_MAX_LEN 8192

static const char *const auth_names[_AUTH_KIND_MAX] = {
        [AUTH_PAT] = "pat",
        [AUTH_BEARER] = "bearer",
};

const char *auth_kind_to_string(AuthKind k) {
        return k >= 0 && k < _AUTH_KIND_MAX ? auth_names[k] : NULL;
}

const char *config_section_to_string(ConfigSection s) {
        return s == CONFIG_SECTION_DAEMON ? "daemon" : "source";
}

static int reason(char **ret_reason, const char *fmt, ...) _printf_(2, 3);
static int reason(char **ret_reason, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        if (vasprintf(ret_reason, fmt, ap) < 0)
                *ret_reason = NULL;
        va_end(ap);
        return -EINVAL;
}

static bool has_control_chars(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        return true;
        return false;
}

/* ---- value parsers ---------------------------------------------------------------------- */

int config_parse_timespan(const char *s, uint64_t *ret_usec) {
        static const struct {
                const char *suffix;
                uint64_t usec;
        } units[] = {
                { "us", 1 },
                { "usec", 1 },
                { "ms", 1000 },
                { "msec", 1000 },
                { "s", USEC_PER_SEC },
                { "sec", USEC_PER_SEC },
                { "second", USEC_PER_SEC },
                { "seconds", USEC_PER_SEC },
                { "m", 60 * USEC_PER_SEC },
                { "min", 60 * USEC_PER_SEC },
                { "minute", 60 * USEC_PER_SEC },
                { "minutes", 60 * USEC_PER_SEC },
                { "h", 3600 * USEC_PER_SEC },
                { "hr", 3600 * USEC_PER_SEC },
                { "hour", 3600 * USEC_PER_SEC },
                { "hours", 3600 * USEC_PER_SEC },
                { "d", 86400 * USEC_PER_SEC },
                { "day", 86400 * USEC_PER_SEC },
                { "days", 86400 * USEC_PER_SEC },
                { "w", 604800 * USEC_PER_SEC },
                { "week", 604800 * USEC_PER_SEC },
                { "weeks", 604800 * USEC_PER_SEC },
        };
        long double total = 0;
        bool any = false;

        while (*s) {
                char *end;
                long double v;
                size_t ulen;
                uint64_t mult = 0;

                while (isspace((unsigned char) *s))
                        s++;
                if (!*s)
                        break;
                /* Plain decimal numbers only: no sign, exponent or hexadecimal. */
                end = (char *) s;
                while (isdigit((unsigned char) *end))
                        end++;
                if (*end == '.') {
                        end++;
                        while (isdigit((unsigned char) *end))
                                end++;
                }
                if (end == s || (end == s + 1 && *s == '.'))
                        return -EINVAL;
                {
                        _cleanup_free_ char *num = strndup(s, (size_t) (end - s));
                        if (!num)
                                return -ENOMEM;
                        v = strtold(num, NULL);
                }
                s = end;
                while (*s == ' ')
                        s++;
                ulen = 0;
                while (isalpha((unsigned char) s[ulen]))
                        ulen++;
                if (ulen == 0)
                        mult = USEC_PER_SEC;
                else
                        for (size_t i = 0; i < ELEMENTSOF(units); i++)
                                if (strlen(units[i].suffix) == ulen &&
                                    strncasecmp(units[i].suffix, s, ulen) == 0) {
                                        mult = units[i].usec;
                                        break;
                                }
                if (mult == 0)
                        return -EINVAL;
                s += ulen;
                total += v * (long double) mult;
                if (total > (long double) (UINT64_MAX / 2))
                        return -ERANGE;
                any = true;
        }
        if (!any)
                return -EINVAL;
        *ret_usec = (uint64_t) total;
        return 0;
}

int config_parse_size(const char *s, uint64_t *ret) {
        char *end;
        unsigned long long v;
        uint64_t mult = 1;

        while (isspace((unsigned char) *s))
                s++;
        if (!isdigit((unsigned char) *s))
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno != 0)
                return -ERANGE;
        while (*end == ' ')
                end++;
        switch (toupper((unsigned char) *end)) {
        case 0:
                break;
        case 'K':
                mult = 1ULL << 10;
                end++;
                break;
        case 'M':
                mult = 1ULL << 20;
                end++;
                break;
        case 'G':
                mult = 1ULL << 30;
                end++;
                break;
        case 'B':
                break;
        default:
                return -EINVAL;
        }
        if (*end == 'i')
                end++;
        if (*end == 'B')
                end++;
        while (isspace((unsigned char) *end))
                end++;
        if (*end)
                return -EINVAL;
        if (v > UINT64_MAX / mult)
                return -ERANGE;
        *ret = v * mult;
        return 0;
}

static int parse_string(const char *value, void *dst, char **ret_reason) {
        char **p = dst;
        char *copy;

        if (has_control_chars(value))
                return reason(ret_reason, "control characters are not allowed");
        copy = strdup(value);
        if (!copy)
                return -ENOMEM;
        free(*p);
        *p = copy;
        return 0;
}

/* Like parse_string(), but an empty value means "unset" (NULL). */
static int parse_optional_string(const char *value, void *dst, char **ret_reason) {
        char **p = dst;

        if (!*value) {
                *p = mfree(*p);
                return 0;
        }
        return parse_string(value, dst, ret_reason);
}

static int parse_path(const char *value, void *dst, char **ret_reason) {
        if (*value && *value != '/')
                return reason(ret_reason, "'%s' is not an absolute path", value);
        return parse_optional_string(value, dst, ret_reason);
}

static int parse_credential_name(const char *value, void *dst, char **ret_reason) {
        if (strchr(value, '/') || strcmp(value, ".") == 0 || strcmp(value, "..") == 0)
                return reason(ret_reason, "'%s' is not a credential name (no '/' allowed)", value);
        return parse_optional_string(value, dst, ret_reason);
}

static int parse_timespan(const char *value, void *dst, char **ret_reason) {
        uint64_t *p = dst, v;

        if (config_parse_timespan(value, &v) < 0)
                return reason(ret_reason, "'%s' is not a time span (e.g. 90s, 5min, 1h)", value);
        if (v < 100 * USEC_PER_MSEC || v > 7 * 86400 * USEC_PER_SEC)
                return reason(ret_reason, "'%s' is out of range (100ms to 7d)", value);
        *p = v;
        return 0;
}

static int parse_size(const char *value, void *dst, char **ret_reason) {
        uint64_t *p = dst, v;

        if (config_parse_size(value, &v) < 0)
                return reason(ret_reason, "'%s' is not a size (e.g. 64M)", value);
        if (v < (64ULL << 10) || v > (1ULL << 30))
                return reason(ret_reason, "'%s' is out of range (64K to 1G)", value);
        *p = v;
        return 0;
}

static int parse_bool(const char *value, void *dst, char **ret_reason) {
        static const char *const yes[] = { "on", "yes", "true", "1" };
        static const char *const no[] = { "off", "no", "false", "0" };

        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                if (strcasecmp(value, yes[i]) == 0) {
                        *(bool *) dst = true;
                        return 0;
                }
                if (strcasecmp(value, no[i]) == 0) {
                        *(bool *) dst = false;
                        return 0;
                }
        }
        return reason(ret_reason, "'%s' is not a boolean (on or off)", value);
}

static int parse_log_level(const char *value, void *dst, char **ret_reason) {
        int *p = dst, l = log_level_from_string(value);

        if (l < 0)
                return reason(ret_reason,
                              "'%s' is not a log level (err, warning, notice, info, debug)", value);
        *p = l;
        return 0;
}

static int parse_auth(const char *value, void *dst, char **ret_reason) {
        AuthKind *p = dst;

        for (AuthKind k = 0; k < _AUTH_KIND_MAX; k++)
                if (strcasecmp(value, auth_names[k]) == 0) {
                        *p = k;
                        return 0;
                }
        return reason(ret_reason, "'%s' is not an authentication kind (pat, bearer)", value);
}

static int parse_max_parallel(const char *value, void *dst, char **ret_reason) {
        unsigned *p = dst;
        char *end;
        long v;

        errno = 0;
        v = strtol(value, &end, 10);
        if (errno != 0 || end == value || *end || v < 1 || v > 64)
                return reason(ret_reason, "'%s' is not a number from 1 to 64", value);
        *p = (unsigned) v;
        return 0;
}

/* The messages never quote the value: a URL may carry a secret in its user info. */
static int parse_url(const char *value, void *dst, char **ret_reason) {
        const char *host;
        size_t len;
        char *copy;

        if (strncasecmp(value, "https://", 8) == 0)
                host = value + 8;
        else if (strncasecmp(value, "http://", 7) == 0)
                host = value + 7;
        else
                return reason(ret_reason, "not an http:// or https:// URL");
        len = strcspn(host, "/?#");
        if (memchr(host, '@', len))
                return reason(ret_reason, "credentials do not belong in the URL; use token-file");
        if (len == 0)
                return reason(ret_reason, "the URL names no host");
        for (const char *c = value; *c; c++)
                if ((unsigned char) *c <= ' ' || *c == 0x7f || *c == '?' || *c == '#' || *c == '\\')
                        return reason(ret_reason,
                                      "must be a plain base URL (no spaces, query or fragment)");
        len = strlen(value);
        while (len > 0 && value[len - 1] == '/')
                len--;
        copy = strndup(value, len);
        if (!copy)
                return -ENOMEM;
        free(*(char **) dst);
        *(char **) dst = copy;
        return 0;
}

static int parse_api_version(const char *value, void *dst, char **ret_reason) {
        unsigned major, minor;
        int n = 0;

        if (sscanf(value, "%u.%u%n", &major, &minor, &n) != 2 ||
            (value[n] && strncmp(value + n, "-preview", 8) != 0))
                return reason(ret_reason, "'%s' is not an api-version (e.g. 7.1)", value);
        for (const char *c = value + n; *c; c++)
                if (!isalnum((unsigned char) *c) && *c != '-' && *c != '.')
                        return reason(ret_reason, "'%s' is not an api-version (e.g. 7.1)", value);
        if (major < 2 || (major == 2 && minor < 2))
                return reason(ret_reason,
                              "'%s' is too old: the feed needs api-version 2.2 or later", value);
        return parse_string(value, dst, ret_reason);
}

static int parse_start_date(const char *value, void *dst, char **ret_reason) {
        unsigned y, mo, d;
        int n = 0;

        if (!*value)
                return parse_optional_string(value, dst, ret_reason);
        if (sscanf(value, "%4u-%2u-%2u%n", &y, &mo, &d, &n) != 3 || n != 10 || mo < 1 ||
            mo > 12 || d < 1 || d > 31 || y < 1900)
                return reason(ret_reason, "'%s' is not a date (YYYY-MM-DD[THH:MM:SSZ])", value);
        for (const char *c = value + n; *c; c++)
                if (!isdigit((unsigned char) *c) && !strchr("T:.Z+-", *c))
                        return reason(ret_reason, "'%s' is not a date (YYYY-MM-DD[THH:MM:SSZ])",
                                      value);
        return parse_string(value, dst, ret_reason);
}

static void strv_free(char **l) {
        if (!l)
                return;
        for (char **i = l; *i; i++)
                free(*i);
        free(l);
}

/* Splits a comma list, trimming items and dropping empty ones. */
static int split_list(const char *value, char ***ret, size_t *ret_n) {
        char **l = NULL;
        size_t n = 0;
        const char *p = value;

        while (*p) {
                const char *start, *end, *comma = strchr(p, ',');
                char **nl;

                end = comma ?: p + strlen(p);
                start = p;
                while (start < end && isspace((unsigned char) *start))
                        start++;
                while (end > start && isspace((unsigned char) end[-1]))
                        end--;
                if (end > start) {
                        nl = realloc(l, (n + 2) * sizeof(char *));
                        if (!nl) {
                                strv_free(l);
                                return -ENOMEM;
                        }
                        l = nl;
                        l[n] = strndup(start, (size_t) (end - start));
                        l[++n] = NULL;
                        if (!l[n - 1]) {
                                strv_free(l);
                                return -ENOMEM;
                        }
                }
                if (!comma)
                        break;
                p = comma + 1;
        }
        if (!l) {
                l = calloc(1, sizeof(char *));
                if (!l)
                        return -ENOMEM;
        }
        *ret = l;
        *ret_n = n;
        return 0;
}

static int parse_projects(const char *value, void *dst, char **ret_reason) {
        SourceConfig *s = (SourceConfig *) ((char *) dst - offsetof(SourceConfig, projects));
        char **l;
        size_t n;
        int r;

        if (has_control_chars(value))
                return reason(ret_reason, "control characters are not allowed");
        r = split_list(value, &l, &n);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < i; j++)
                        if (strcasecmp(l[i], l[j]) == 0) {
                                r = reason(ret_reason, "project '%s' is listed twice", l[i]);
                                strv_free(l);
                                return r;
                        }
        strv_free(s->projects);
        s->projects = l;
        s->n_projects = n;
        return 0;
}

static int cmp_casestr(const void *a, const void *b) {
        return strcasecmp(*(char *const *) a, *(char *const *) b);
}

/* A filter is part of a feed's identity: normalise it (trimmed, sorted, no duplicates). */
static int parse_filter(const char *value, void *dst, char **ret_reason) {
        char **l, *out;
        size_t n, len = 0, k = 0;
        int r;

        if (has_control_chars(value))
                return reason(ret_reason, "control characters are not allowed");
        r = split_list(value, &l, &n);
        if (r < 0)
                return r;
        qsort(l, n, sizeof(char *), cmp_casestr);
        for (size_t i = 0; i < n; i++)
                len += strlen(l[i]) + 1;
        out = malloc(len + 1);
        if (!out) {
                strv_free(l);
                return -ENOMEM;
        }
        out[0] = 0;
        for (size_t i = 0; i < n; i++) {
                if (i > 0 && strcasecmp(l[i], l[i - 1]) == 0)
                        continue;
                if (k++ > 0)
                        strcat(out, ",");
                strcat(out, l[i]);
        }
        strv_free(l);
        free(*(char **) dst);
        *(char **) dst = out;
        return 0;
}

/* ---- the table -------------------------------------------------------------------------- */

#define DAEMON(name, parser, field) CONFIG_SECTION_DAEMON, name, parser, offsetof(Config, field)
#define SOURCE(name, parser, field) CONFIG_SECTION_SOURCE, name, parser, offsetof(SourceConfig, field)

static const ConfigKey keys[] = {
        { DAEMON("database", parse_string, database), "", false,
          "libpq connection string; empty: libpq defaults and PG* environment variables" },
        { DAEMON("poll-interval", parse_timespan, poll_interval_usec), "5min", true,
          "pause after a batch with isLastBatch=true (the target latency)" },
        { DAEMON("http-timeout", parse_timespan, http_timeout_usec), "60s", true,
          "limit for one whole HTTP request" },
        { DAEMON("max-response-size", parse_size, max_response_size), "64M", true,
          "larger response bodies are refused, not buffered" },
        { DAEMON("max-backoff", parse_timespan, max_backoff_usec), "10min", true,
          "cap of the exponential backoff after failed requests" },
        { DAEMON("statement-timeout", parse_timespan, statement_timeout_usec), "2min", false,
          "limit for every statement witlinkd runs in PostgreSQL" },
        { DAEMON("synchronous-commit", parse_bool, synchronous_commit), "off", false,
          "wait for the WAL flush of each batch's commit (safe either way: rows and token "
          "commit together)" },
        { DAEMON("log-level", parse_log_level, log_level), "info", true,
          "err, warning, notice, info or debug" },
        { SOURCE("url", parse_url, url), NULL, true,
          "https://dev.azure.com/ORG or https://server/tfs/COLLECTION (required)" },
        { SOURCE("token-file", parse_path, token_file), "", true,
          "file holding the PAT or bearer token" },
        { SOURCE("credential", parse_credential_name, credential), "", true,
          "name of a systemd credential ($CREDENTIALS_DIRECTORY/NAME) holding the token" },
        { SOURCE("auth", parse_auth, auth), "pat", true, "pat (Basic, empty user) or bearer" },
        { SOURCE("projects", parse_projects, projects), "", true,
          "comma list of projects, one feed each; empty: one collection-wide feed" },
        { SOURCE("types", parse_filter, types), "", true, "work item types filter (comma list)" },
        { SOURCE("link-types", parse_filter, link_types), "", true,
          "link type reference names filter (comma list)" },
        { SOURCE("api-version", parse_api_version, api_version), "7.1", true,
          "REST api-version to request" },
        { SOURCE("start-date", parse_start_date, start_date), "", true,
          "seeds a brand-new feed only (startDateTime)" },
        { SOURCE("ca-file", parse_path, ca_file), "", true,
          "CA bundle to verify the server with instead of the system's (on-prem TLS)" },
        { SOURCE("max-parallel", parse_max_parallel, max_parallel), "2", true,
          "concurrent requests to this source" },
};

#undef DAEMON
#undef SOURCE

const ConfigKey *config_keys(size_t *ret_n) {
        *ret_n = ELEMENTSOF(keys);
        return keys;
}

static const ConfigKey *config_key_find(ConfigSection section, const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(keys); i++)
                if (keys[i].section == section && strcmp(keys[i].name, name) == 0)
                        return &keys[i];
        return NULL;
}

/* ---- objects ---------------------------------------------------------------------------- */

static SourceConfig *source_config_free(SourceConfig *s) {
        if (!s)
                return NULL;
        free(s->name);
        free(s->url);
        free(s->token_file);
        free(s->credential);
        strv_free(s->projects);
        free(s->types);
        free(s->link_types);
        free(s->api_version);
        free(s->start_date);
        free(s->ca_file);
        if (s->token) {
                explicit_bzero(s->token, strlen(s->token));
                free(s->token);
        }
        free(s);
        return NULL;
}

Config *config_free(Config *c) {
        if (!c)
                return NULL;
        free(c->path);
        free(c->database);
        for (size_t i = 0; i < c->n_sources; i++)
                source_config_free(c->sources[i]);
        free(c->sources);
        free(c);
        return NULL;
}

static int apply_defaults(ConfigSection section, void *base) {
        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                _cleanup_free_ char *why = NULL;
                int r;

                if (keys[i].section != section || !keys[i].default_value)
                        continue;
                r = keys[i].parse(keys[i].default_value, (char *) base + keys[i].offset, &why);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- credentials ------------------------------------------------------------------------ */

static int load_token(const char *path, bool warn_mode, char **ret, char **ret_reason) {
        _cleanup_close_ int fd = -EBADF;
        char buf[TOKEN_MAX + 2];
        struct stat st;
        ssize_t n;
        size_t len;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return reason(ret_reason, "cannot read '%s': %s", path, strerror(errno));
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
                return reason(ret_reason, "'%s' is not a regular file", path);
        if (warn_mode && (st.st_mode & S_IROTH))
                log_warning("Token file '%s' is readable by every user; chmod 600 it.", path);
        n = read(fd, buf, sizeof(buf) - 1);
        if (n < 0)
                return reason(ret_reason, "cannot read '%s': %s", path, strerror(errno));
        if ((size_t) n > TOKEN_MAX)
                return reason(ret_reason, "'%s' is larger than %d bytes", path, TOKEN_MAX);
        len = (size_t) n;
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ' ||
                           buf[len - 1] == '\t'))
                len--;
        buf[len] = 0;
        if (len == 0) {
                explicit_bzero(buf, sizeof(buf));
                return reason(ret_reason, "'%s' holds no token", path);
        }
        for (size_t i = 0; i < len; i++)
                if ((unsigned char) buf[i] <= ' ' || (unsigned char) buf[i] >= 0x7f) {
                        explicit_bzero(buf, sizeof(buf));
                        return reason(ret_reason,
                                      "'%s' holds more than one line or non-ASCII characters; a "
                                      "token is one line of printable ASCII",
                                      path);
                }
        *ret = strdup(buf);
        explicit_bzero(buf, sizeof(buf));
        return *ret ? 0 : -ENOMEM;
}

static int source_load_token(SourceConfig *s, char **ret_reason) {
        _cleanup_free_ char *path = NULL;

        if (!!s->token_file == !!s->credential)
                return reason(ret_reason, "set exactly one of token-file and credential");
        if (s->token_file)
                return load_token(s->token_file, true, &s->token, ret_reason);

        const char *dir = getenv("CREDENTIALS_DIRECTORY");
        if (!dir || !*dir)
                return reason(ret_reason,
                              "credential '%s' needs $CREDENTIALS_DIRECTORY (LoadCredential= in the "
                              "unit)",
                              s->credential);
        if (asprintf(&path, "%s/%s", dir, s->credential) < 0)
                return -ENOMEM;
        return load_token(path, false, &s->token, ret_reason);
}

/* ---- the reader ------------------------------------------------------------------------- */

static char *strip(char *s) {
        char *e;

        while (isspace((unsigned char) *s))
                s++;
        e = s + strlen(s);
        while (e > s && isspace((unsigned char) e[-1]))
                e--;
        *e = 0;
        return s;
}

/* '#' or ';' starting a line, or '#' after whitespace, starts a comment. */
static void strip_comment(char *line) {
        char *p = line;

        while (isspace((unsigned char) *p))
                p++;
        if (*p == '#' || *p == ';') {
                *p = 0;
                return;
        }
        for (; *p; p++)
                if (*p == '#' && p > line && isspace((unsigned char) p[-1])) {
                        *p = 0;
                        return;
                }
}

static bool valid_source_name(const char *s) {
        if (!*s || strlen(s) > 128)
                return false;
        for (; *s; s++)
                if (!isalnum((unsigned char) *s) && !strchr("._-", *s))
                        return false;
        return true;
}

#define FAIL(r_, line_, ...)                                                          \
        do {                                                                          \
                _cleanup_free_ char *m_ = NULL;                                       \
                if (asprintf(&m_, __VA_ARGS__) < 0)                                   \
                        m_ = NULL;                                                    \
                if (asprintf(ret_error, "%s:%u: %s", path, line_, m_ ?: "error") < 0) \
                        *ret_error = NULL;                                            \
                return r_;                                                            \
        } while (0)

int config_load(const char *path, Config **ret, char **ret_error) {
        return config_load_flags(path, 0, ret, ret_error);
}

int config_load_flags(const char *path, ConfigLoadFlags flags, Config **ret, char **ret_error) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_(fclosep) FILE *f = NULL;
        char line[LINE_MAX_LEN + 2];
        ConfigSection section = CONFIG_SECTION_DAEMON;
        SourceConfig *source = NULL;
        bool in_section = false, seen_daemon = false;
        unsigned lineno = 0;
        uint64_t seen = 0; /* bit per key of the current section */
        int r;

        *ret_error = NULL;
        c = calloc(1, sizeof(Config));
        if (!c)
                return -ENOMEM;
        c->path = strdup(path);
        if (!c->path)
                return -ENOMEM;
        r = apply_defaults(CONFIG_SECTION_DAEMON, c);
        if (r < 0)
                return r;

        f = fopen(path, "re");
        if (!f)
                FAIL(-errno, 0, "cannot open: %s", strerror(errno));

        while (fgets(line, sizeof(line), f)) {
                char *s, *eq, *key, *value;
                const ConfigKey *k;
                _cleanup_free_ char *why = NULL;

                lineno++;
                if (strlen(line) > LINE_MAX_LEN)
                        FAIL(-EINVAL, lineno, "line too long");
                strip_comment(line);
                s = strip(line);
                if (!*s)
                        continue;

                if (*s == '[') {
                        char *end = strchr(s, ']'), *name;

                        if (!end || end[1])
                                FAIL(-EINVAL, lineno, "malformed section header");
                        *end = 0;
                        name = strip(s + 1);
                        seen = 0;
                        in_section = true;
                        if (strcmp(name, "daemon") == 0) {
                                if (seen_daemon)
                                        FAIL(-EINVAL, lineno, "[daemon] appears twice");
                                seen_daemon = true;
                                section = CONFIG_SECTION_DAEMON;
                                source = NULL;
                                continue;
                        }
                        if (strncmp(name, "source", 6) != 0 || !isspace((unsigned char) name[6]))
                                FAIL(-EINVAL, lineno,
                                     "unknown section [%s] (expected [daemon] or [source NAME])",
                                     name);
                        name = strip(name + 6);
                        if (!valid_source_name(name))
                                FAIL(-EINVAL, lineno,
                                     "source name '%s' must be letters, digits, '.', '_' or '-'",
                                     name);
                        for (size_t i = 0; i < c->n_sources; i++)
                                if (strcmp(c->sources[i]->name, name) == 0)
                                        FAIL(-EINVAL, lineno, "[source %s] appears twice", name);

                        SourceConfig **ns = realloc(c->sources,
                                                    (c->n_sources + 1) * sizeof(SourceConfig *));
                        if (!ns)
                                return -ENOMEM;
                        c->sources = ns;
                        source = calloc(1, sizeof(SourceConfig));
                        if (!source)
                                return -ENOMEM;
                        c->sources[c->n_sources++] = source;
                        source->line = lineno;
                        source->name = strdup(name);
                        if (!source->name)
                                return -ENOMEM;
                        r = apply_defaults(CONFIG_SECTION_SOURCE, source);
                        if (r < 0)
                                return r;
                        section = CONFIG_SECTION_SOURCE;
                        continue;
                }

                if (!in_section)
                        FAIL(-EINVAL, lineno, "key outside of a section");
                eq = strchr(s, '=');
                if (!eq)
                        FAIL(-EINVAL, lineno, "expected 'key = value'");
                *eq = 0;
                key = strip(s);
                value = strip(eq + 1);
                k = config_key_find(section, key);
                if (!k)
                        FAIL(-EINVAL, lineno, "unknown key '%s' in [%s]", key,
                             config_section_to_string(section));
                if (seen & (1ULL << (k - keys)))
                        FAIL(-EINVAL, lineno, "key '%s' is set twice", key);
                seen |= 1ULL << (k - keys);
                r = k->parse(value, (char *) (section == CONFIG_SECTION_DAEMON ? (void *) c
                                                                               : (void *) source) +
                                            k->offset,
                             &why);
                if (r == -ENOMEM)
                        return r;
                if (r < 0)
                        FAIL(r, lineno, "key '%s': %s", key, why ?: "invalid value");
        }
        if (ferror(f))
                FAIL(-EIO, lineno, "read error");

        if (c->n_sources == 0)
                FAIL(-EINVAL, lineno, "no [source NAME] section: nothing to follow");
        for (size_t i = 0; i < c->n_sources; i++) {
                SourceConfig *s = c->sources[i];
                _cleanup_free_ char *why = NULL;

                if (!s->url)
                        FAIL(-EINVAL, s->line, "[source %s]: key 'url' is required", s->name);
                if (flags & CONFIG_LOAD_NO_CREDENTIALS)
                        continue;
                r = source_load_token(s, &why);
                if (r == -ENOMEM)
                        return r;
                if (r < 0)
                        FAIL(r, s->line, "[source %s]: key '%s': %s", s->name,
                             s->token_file ? "token-file" : "credential", why ?: "invalid");
        }

        *ret = TAKE_PTR(c);
        return 0;
}

/* ---- output ----------------------------------------------------------------------------- */

static void format_timespan(char *buf, size_t n, uint64_t usec) {
        if (usec % (3600 * USEC_PER_SEC) == 0)
                snprintf(buf, n, "%lluh", (unsigned long long) (usec / (3600 * USEC_PER_SEC)));
        else if (usec % (60 * USEC_PER_SEC) == 0)
                snprintf(buf, n, "%llumin", (unsigned long long) (usec / (60 * USEC_PER_SEC)));
        else if (usec % USEC_PER_SEC == 0)
                snprintf(buf, n, "%llus", (unsigned long long) (usec / USEC_PER_SEC));
        else
                snprintf(buf, n, "%llums", (unsigned long long) (usec / USEC_PER_MSEC));
}

static void format_size(char *buf, size_t n, uint64_t v) {
        if (v % (1ULL << 30) == 0)
                snprintf(buf, n, "%lluG", (unsigned long long) (v >> 30));
        else if (v % (1ULL << 20) == 0)
                snprintf(buf, n, "%lluM", (unsigned long long) (v >> 20));
        else if (v % (1ULL << 10) == 0)
                snprintf(buf, n, "%lluK", (unsigned long long) (v >> 10));
        else
                snprintf(buf, n, "%llu", (unsigned long long) v);
}

/* Rebuilds a conninfo string with any password replaced. */
static char *conninfo_redacted(const char *conninfo) {
        PQconninfoOption *opts;
        char *errmsg = NULL, *out = NULL;
        size_t size = 0;
        FILE *m;

        opts = PQconninfoParse(conninfo, &errmsg);
        if (!opts) {
                PQfreemem(errmsg);
                return strdup("<unparsable, not shown>");
        }
        m = open_memstream(&out, &size);
        if (!m) {
                PQconninfoFree(opts);
                return NULL;
        }
        for (PQconninfoOption *o = opts; o->keyword; o++) {
                if (!o->val)
                        continue;
                if (ftell(m) > 0)
                        fputc(' ', m);
                if (strcmp(o->keyword, "password") == 0) {
                        fprintf(m, "password=<redacted>");
                        continue;
                }
                fprintf(m, "%s='", o->keyword);
                for (const char *c = o->val; *c; c++) {
                        if (*c == '\'' || *c == '\\')
                                fputc('\\', m);
                        fputc(*c, m);
                }
                fputc('\'', m);
        }
        fclose(m);
        PQconninfoFree(opts);
        return out;
}

void config_dump(const Config *c, FILE *f) {
        _cleanup_free_ char *db = conninfo_redacted(c->database);
        char buf[64];

        fprintf(f, "# effective configuration of %s (secrets redacted)\n[daemon]\n", c->path);
        fprintf(f, "database = %s\n", db ?: "");
        format_timespan(buf, sizeof(buf), c->poll_interval_usec);
        fprintf(f, "poll-interval = %s\n", buf);
        format_timespan(buf, sizeof(buf), c->http_timeout_usec);
        fprintf(f, "http-timeout = %s\n", buf);
        format_size(buf, sizeof(buf), c->max_response_size);
        fprintf(f, "max-response-size = %s\n", buf);
        format_timespan(buf, sizeof(buf), c->max_backoff_usec);
        fprintf(f, "max-backoff = %s\n", buf);
        format_timespan(buf, sizeof(buf), c->statement_timeout_usec);
        fprintf(f, "statement-timeout = %s\n", buf);
        fprintf(f, "synchronous-commit = %s\n", c->synchronous_commit ? "on" : "off");
        fprintf(f, "log-level = %s\n", log_level_to_string(c->log_level));

        for (size_t i = 0; i < c->n_sources; i++) {
                const SourceConfig *s = c->sources[i];

                fprintf(f, "\n[source %s]\nurl = %s\n", s->name, s->url);
                if (s->token_file)
                        fprintf(f, "token-file = %s\n", s->token_file);
                if (s->credential)
                        fprintf(f, "credential = %s\n", s->credential);
                fprintf(f, "# token: <redacted, %zu characters>\n", strlen(s->token));
                fprintf(f, "auth = %s\nprojects = ", auth_kind_to_string(s->auth));
                for (size_t j = 0; j < s->n_projects; j++)
                        fprintf(f, "%s%s", j > 0 ? ", " : "", s->projects[j]);
                fprintf(f, "%s\n", s->n_projects == 0 ? "   # one collection-wide feed" : "");
                fprintf(f, "types = %s\nlink-types = %s\napi-version = %s\n", s->types,
                        s->link_types, s->api_version);
                fprintf(f, "start-date = %s\nca-file = %s\nmax-parallel = %u\n",
                        s->start_date ?: "", s->ca_file ?: "", s->max_parallel);
        }
}
