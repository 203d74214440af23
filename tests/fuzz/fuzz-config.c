/* SPDX-License-Identifier: MIT */
/* libFuzzer target: config_load() on any file contents (written to a file in /dev/shm, as the
 * reader takes a path), then config_dump() of what it accepts. Secrets never show: neither in
 * an error message nor in the dump. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

#define CHECK(x)                  \
        do {                      \
                if (!(x))         \
                        abort();  \
        } while (0)

/* Credentials the seeds refer to (token-file = FIXTURES/token, credential = token). */
#define FIXTURES "/dev/shm/witlink-fuzz"
#define SECRET "fuzz-SECRET-7f3a9c1e5b2d"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char path[128];

static void fixture(const char *name, const char *content) {
        char p[256];
        int fd;

        snprintf(p, sizeof(p), "%s/%s", FIXTURES, name);
        fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        CHECK(fd >= 0);
        CHECK(write(fd, content, strlen(content)) == (ssize_t) strlen(content));
        close(fd);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        (void) mkdir(FIXTURES, 0700);
        fixture("token", SECRET "\n");
        fixture("token-crlf", SECRET "\r\n");
        fixture("token-empty", "\n");
        fixture("token-two-lines", SECRET "\nsecond\n");
        setenv("CREDENTIALS_DIRECTORY", FIXTURES, 1);
        snprintf(path, sizeof(path), "%s/config-%d.conf", FIXTURES, (int) getpid());
        log_set_max_level(LOG_CRIT); /* the world-readable token warning and such */
        return 0;
}

/* Paths outside the fixtures could name a FIFO or a device, where open() or read() blocks. */
static bool names_special_path(const uint8_t *data, size_t size) {
        static const char *const prefixes[] = { "/dev", "/proc", "/sys", "/run", "/tmp", "/var" };

        for (size_t i = 0; i < size; i++)
                for (size_t k = 0; k < sizeof(prefixes) / sizeof(prefixes[0]); k++) {
                        size_t n = strlen(prefixes[k]);

                        if (size - i >= n && memcmp(data + i, prefixes[k], n) == 0 &&
                            !(size - i >= strlen(FIXTURES "/") &&
                              memcmp(data + i, FIXTURES "/", strlen(FIXTURES "/")) == 0))
                                return true;
                }
        return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        Config *c = NULL;
        char *error = NULL, *dump = NULL;
        size_t dump_size = 0;
        FILE *f;
        int fd, r;

        if (names_special_path(data, size) || memmem(data, size, SECRET, strlen(SECRET)))
                return 0;
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        CHECK(fd >= 0);
        CHECK(write(fd, data, size) == (ssize_t) size);
        close(fd);

        r = config_load(path, &c, &error);
        if (r < 0) {
                CHECK(!c);
                CHECK(r == -ENOMEM || error);
                if (error)
                        CHECK(!strstr(error, SECRET));
                free(error);
                return 0;
        }
        CHECK(c && !error);
        CHECK(c->n_sources > 0);
        for (size_t i = 0; i < c->n_sources; i++) {
                const SourceConfig *s = c->sources[i];

                CHECK(s->name && s->url && s->token && s->token[0]);
                CHECK(s->max_parallel >= 1);
                CHECK(s->n_projects == 0 || s->projects);
        }
        f = open_memstream(&dump, &dump_size);
        CHECK(f);
        config_dump(c, f);
        CHECK(fclose(f) == 0);
        CHECK(!memmem(dump, dump_size, SECRET, strlen(SECRET)));
        free(dump);
        config_free(c);
        return 0;
}
