/* SPDX-License-Identifier: MIT */
/* A tiny assertion kit for the unit tests: checks that print file:line and values, temp files. */
#pragma once

#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "macro.h"

/* Every ASSERT_* counts one check; tests_done() reports the total. */
static unsigned tests_checks __attribute__((unused));
/* Set by helpers shared by many checks, so that a failure names the case, not just the helper. */
static const char *tests_context __attribute__((unused));

static inline void tests_cleanup(void);

#define TESTS_FAIL(...)                                                        \
        do {                                                                   \
                fprintf(stderr, "%s:%d: %s: ", __FILE__, __LINE__, __func__);  \
                fprintf(stderr, __VA_ARGS__);                                  \
                if (tests_context)                                             \
                        fprintf(stderr, " [case: %s]", tests_context);         \
                fputc('\n', stderr);                                           \
                fflush(stderr);                                                \
                tests_cleanup();                                               \
                abort();                                                       \
        } while (0)

#define ASSERT_TRUE(expr)                                                      \
        do {                                                                   \
                tests_checks++;                                                \
                if (!(expr))                                                   \
                        TESTS_FAIL("assertion failed: %s", #expr);             \
        } while (0)

#define ASSERT_FALSE(expr) ASSERT_TRUE(!(expr))

#define ASSERT_NULL(expr)                                                      \
        do {                                                                   \
                const void *_p_ = (expr);                                      \
                tests_checks++;                                                \
                if (_p_)                                                       \
                        TESTS_FAIL("expected NULL: %s (got %p)", #expr, _p_);  \
        } while (0)

#define ASSERT_NOT_NULL(expr)                                                  \
        do {                                                                   \
                tests_checks++;                                                \
                if (!(expr))                                                   \
                        TESTS_FAIL("unexpected NULL: %s", #expr);              \
        } while (0)

#define ASSERT_EQ_INT(a, b)                                                    \
        do {                                                                   \
                long long _a_ = (long long) (a), _b_ = (long long) (b);        \
                tests_checks++;                                                \
                if (_a_ != _b_)                                                \
                        TESTS_FAIL("%s == %s: %lld != %lld", #a, #b, _a_, _b_); \
        } while (0)

#define ASSERT_EQ_U64(a, b)                                                    \
        do {                                                                   \
                uint64_t _a_ = (uint64_t) (a), _b_ = (uint64_t) (b);           \
                tests_checks++;                                                \
                if (_a_ != _b_)                                                \
                        TESTS_FAIL("%s == %s: %" PRIu64 " != %" PRIu64, #a, #b, _a_, _b_); \
        } while (0)

#define ASSERT_STREQ(a, b)                                                     \
        do {                                                                   \
                const char *_a_ = (a), *_b_ = (b);                             \
                tests_checks++;                                                \
                if (!_a_ || !_b_ || strcmp(_a_, _b_) != 0)                     \
                        TESTS_FAIL("%s == %s: \"%s\" != \"%s\"", #a, #b,       \
                                   _a_ ?: "(null)", _b_ ?: "(null)");          \
        } while (0)

/* Compares a counted string (which may hold NUL bytes) with an expected byte sequence. */
#define ASSERT_MEMEQ(p, len, expected, expected_len)                           \
        do {                                                                   \
                const char *_p_ = (p), *_e_ = (expected);                      \
                size_t _l_ = (len), _el_ = (expected_len);                     \
                tests_checks++;                                                \
                if (!_p_ || _l_ != _el_ || memcmp(_p_, _e_, _l_) != 0)         \
                        TESTS_FAIL("%s == %s: \"%.*s\" (%zu bytes) != \"%.*s\" (%zu bytes)", \
                                   #p, #expected, (int) (_p_ ? _l_ : 6),       \
                                   _p_ ?: "(null)", _l_, (int) _el_, _e_, _el_); \
        } while (0)

#define ASSERT_CONTAINS(haystack, needle)                                      \
        do {                                                                   \
                const char *_h_ = (haystack), *_n_ = (needle);                 \
                tests_checks++;                                                \
                if (!_h_ || !strstr(_h_, _n_))                                 \
                        TESTS_FAIL("%s does not contain \"%s\": \"%s\"", #haystack, _n_, \
                                   _h_ ?: "(null)");                           \
        } while (0)

#define ASSERT_NOT_CONTAINS(haystack, needle)                                  \
        do {                                                                   \
                const char *_h_ = (haystack), *_n_ = (needle);                 \
                tests_checks++;                                                \
                if (_h_ && strstr(_h_, _n_))                                   \
                        TESTS_FAIL("%s contains \"%s\": \"%s\"", #haystack, _n_, _h_); \
        } while (0)

#define ASSERT_STARTSWITH(s, prefix)                                           \
        do {                                                                   \
                const char *_s_ = (s), *_x_ = (prefix);                        \
                tests_checks++;                                                \
                if (!_s_ || strncmp(_s_, _x_, strlen(_x_)) != 0)               \
                        TESTS_FAIL("%s does not start with \"%s\": \"%s\"", #s, _x_, \
                                   _s_ ?: "(null)");                           \
        } while (0)

/* r must be >= 0 (the daemon's "0 or negative errno" convention). */
#define ASSERT_OK(expr)                                                        \
        do {                                                                   \
                int _r_ = (expr);                                              \
                tests_checks++;                                                \
                if (_r_ < 0)                                                   \
                        TESTS_FAIL("%s: expected success, got %d (%s)", #expr, _r_, \
                                   strerror(-_r_));                            \
        } while (0)

#define ASSERT_ERR(expr, err)                                                  \
        do {                                                                   \
                int _r_ = (expr), _e_ = (err);                                 \
                tests_checks++;                                                \
                if (_r_ != _e_)                                                \
                        TESTS_FAIL("%s: expected %d (%s), got %d (%s)", #expr, _e_, \
                                   strerror(_e_ < 0 ? -_e_ : _e_), _r_,        \
                                   _r_ < 0 ? strerror(-_r_) : "success");      \
        } while (0)

#define TEST_OK(name)                          \
        do {                                   \
                printf("ok %s\n", name);       \
                fflush(stdout);                \
        } while (0)

static inline int tests_rm_one(const char *path, const struct stat *st __attribute__((unused)),
                               int flag __attribute__((unused)),
                               struct FTW *ftw __attribute__((unused))) {
        (void) remove(path);
        return 0;
}

static char tests_dir[PATH_MAX] __attribute__((unused));

static inline void tests_cleanup(void) {
        if (tests_dir[0])
                (void) nftw(tests_dir, tests_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A private temporary directory, created on first use and removed at exit. */
static inline const char *tests_tmpdir(void) {
        const char *base;

        if (tests_dir[0])
                return tests_dir;
        base = getenv("TMPDIR");
        if (!base || !*base)
                base = "/tmp";
        snprintf(tests_dir, sizeof(tests_dir), "%s/witlinkd-unit-XXXXXX", base);
        if (!mkdtemp(tests_dir)) {
                perror("mkdtemp");
                abort();
        }
        atexit(tests_cleanup);
        return tests_dir;
}

/* Writes len bytes to NAME (relative to the temp dir, or absolute) with the given mode; returns
 * the path (malloc'd). */
static inline char *tests_write_file_len(const char *name, const void *content, size_t len,
                                         mode_t mode) {
        char *path;
        FILE *f;

        if (name[0] == '/')
                path = strdup(name);
        else if (asprintf(&path, "%s/%s", tests_tmpdir(), name) < 0)
                path = NULL;
        if (!path)
                abort();
        f = fopen(path, "we");
        if (!f || fwrite(content, 1, len, f) != len || fclose(f) != 0) {
                perror(path);
                abort();
        }
        if (chmod(path, mode) < 0) {
                perror(path);
                abort();
        }
        return path;
}

static inline char *tests_write_file(const char *name, const char *content) {
        return tests_write_file_len(name, content, strlen(content), 0600);
}

/* Creates a directory below the temp dir; returns its path (malloc'd). */
static inline char *tests_make_dir(const char *name) {
        char *path;

        if (asprintf(&path, "%s/%s", tests_tmpdir(), name) < 0)
                abort();
        if (mkdir(path, 0700) < 0 && errno != EEXIST) {
                perror(path);
                abort();
        }
        return path;
}

static inline int tests_done(const char *program) {
        printf("# %s: %u checks passed\n", program, tests_checks);
        return 0;
}
