/* SPDX-License-Identifier: MIT */
/* The config table and its docs agree: every key of config_keys() is in conf/witlinkd.conf (with
 * its default) and in docs/witlinkd.conf.5.rst (under its section, naming its default, and
 * saying when it is not reloadable), neither documents a key that does not exist, and the shipped
 * file loads as it is. */
#include <ctype.h>
#include <stdarg.h>

#include "config.h"
#include "tests.h"

#define CONF_FILE "conf/witlinkd.conf"
#define MAN_FILE "docs/witlinkd.conf.5.rst"
#define MAX_ENTRIES 128
#define KEY_MAX 64

/* A key found in a document: its section, line, and the value (conf) or entry text (man). */
typedef struct DocEntry {
        ConfigSection section;
        char key[KEY_MAX];
        unsigned line;
        bool commented; /* "#key = value" in the conf file */
        char *text;
} DocEntry;

typedef struct Doc {
        const char *name;
        DocEntry entries[MAX_ENTRIES];
        size_t n;
        unsigned problems;
        bool quiet; /* count problems without printing them */
} Doc;

static void doc_problem(Doc *d, unsigned line, const char *fmt, ...) _printf_(3, 4);
static void doc_problem(Doc *d, unsigned line, const char *fmt, ...) {
        va_list ap;

        d->problems++;
        if (d->quiet)
                return;
        fprintf(stderr, "%s:%u: ", d->name, line);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
}

static void doc_clear(Doc *d) {
        for (size_t i = 0; i < d->n; i++)
                free(d->entries[i].text);
        d->n = 0;
}

static char *read_text(const char *relpath) {
        const char *srcdir = getenv("SRCDIR");
        _cleanup_free_ char *path = NULL;
        _cleanup_(fclosep) FILE *f = NULL;
        char *text = NULL;
        size_t size = 0;
        FILE *m;
        int c;

        ASSERT_TRUE(asprintf(&path, "%s/%s", srcdir && *srcdir ? srcdir : ".", relpath) > 0);
        f = fopen(path, "re");
        if (!f)
                TESTS_FAIL("cannot open %s: %s (is SRCDIR set to the source tree?)", path,
                           strerror(errno));
        m = open_memstream(&text, &size);
        ASSERT_NOT_NULL(m);
        while ((c = fgetc(f)) != EOF)
                fputc(c, m);
        ASSERT_TRUE(fclose(m) == 0);
        return text;
}

/* The length of a key name at p: [a-z][a-z0-9-]*, 0 when there is none. */
static size_t key_span(const char *p) {
        size_t n = 0;

        if (!islower((unsigned char) *p))
                return 0;
        while (islower((unsigned char) p[n]) || isdigit((unsigned char) p[n]) || p[n] == '-')
                n++;
        return n;
}

static char *strip_dup(const char *s, size_t len) {
        while (len > 0 && isspace((unsigned char) *s))
                s++, len--;
        while (len > 0 && isspace((unsigned char) s[len - 1]))
                len--;
        return strndup(s, len);
}

static DocEntry *doc_add(Doc *d, ConfigSection section, const char *key, size_t key_len,
                         unsigned line) {
        DocEntry *e;

        ASSERT_TRUE(d->n < MAX_ENTRIES);
        ASSERT_TRUE(key_len < KEY_MAX);
        e = &d->entries[d->n++];
        *e = (DocEntry){ .section = section, .line = line };
        memcpy(e->key, key, key_len);
        e->key[key_len] = 0;
        return e;
}

static const ConfigKey *table_find(ConfigSection section, const char *key) {
        size_t n;
        const ConfigKey *keys = config_keys(&n);

        for (size_t i = 0; i < n; i++)
                if (keys[i].section == section && strcmp(keys[i].name, key) == 0)
                        return &keys[i];
        return NULL;
}

/* Section headers "[daemon]" and "[source NAME]", also commented out ("#[source fabrikam]").
 * Returns 1 and sets *ret for a known section, 0 for any other line. */
static int section_of(const char *p, ConfigSection *ret) {
        if (strncmp(p, "[daemon]", 8) == 0) {
                *ret = CONFIG_SECTION_DAEMON;
                return 1;
        }
        if (strncmp(p, "[source ", 8) == 0 && strchr(p, ']')) {
                *ret = CONFIG_SECTION_SOURCE;
                return 1;
        }
        return 0;
}

/* ---- conf/witlinkd.conf: "key = value" or "#key = value" lines below a section header ------- */

static void conf_parse(Doc *d, const char *text) {
        ConfigSection section = CONFIG_SECTION_DAEMON;
        bool in_section = false;
        unsigned lineno = 0;

        for (const char *line = text; line && *line; ) {
                const char *end = strchr(line, '\n') ?: line + strlen(line);
                const char *p = line, *q;
                bool commented = false;
                size_t n;

                lineno++;
                while (p < end && (*p == ' ' || *p == '\t'))
                        p++;
                if (p < end && (*p == '#' || *p == ';')) {
                        commented = true;
                        p++;
                        while (p < end && (*p == ' ' || *p == '\t'))
                                p++;
                }
                if (p < end && *p == '[') {
                        if (section_of(p, &section))
                                in_section = true;
                } else if ((n = key_span(p)) > 0 && p + n <= end) {
                        q = p + n;
                        while (q < end && (*q == ' ' || *q == '\t'))
                                q++;
                        if (q < end && *q == '=') {
                                const char *v = q + 1, *vend = end;

                                /* An inline comment starts at '#' after whitespace. */
                                for (const char *c = v; c < end; c++)
                                        if (*c == '#' && c > v && isspace((unsigned char) c[-1])) {
                                                vend = c;
                                                break;
                                        }
                                if (!in_section)
                                        doc_problem(d, lineno, "key '%.*s' outside a section",
                                                    (int) n, p);
                                else {
                                        DocEntry *e = doc_add(d, section, p, n, lineno);
                                        e->commented = commented;
                                        e->text = strip_dup(v, (size_t) (vend - v));
                                        ASSERT_NOT_NULL(e->text);
                                }
                        }
                }
                line = *end ? end + 1 : NULL;
        }
}

static void conf_check(Doc *d) {
        size_t n;
        const ConfigKey *keys = config_keys(&n);

        for (size_t i = 0; i < n; i++) {
                bool found = false, with_default = false;
                unsigned set = 0;

                for (size_t j = 0; j < d->n; j++) {
                        const DocEntry *e = &d->entries[j];

                        if (e->section != keys[i].section || strcmp(e->key, keys[i].name) != 0)
                                continue;
                        found = true;
                        /* The file has one [daemon] section; [source] keys are all examples. */
                        if (!e->commented && ++set > 1)
                                doc_problem(d, e->line, "key '%s' is set twice", e->key);
                        if (!keys[i].default_value || strcmp(e->text, keys[i].default_value) == 0)
                                with_default = true;
                }
                if (!found)
                        doc_problem(d, 0, "key '%s' of [%s] is missing", keys[i].name,
                                    config_section_to_string(keys[i].section));
                else if (!with_default)
                        doc_problem(d, 0, "key '%s' of [%s] is not shown with its default '%s'",
                                    keys[i].name, config_section_to_string(keys[i].section),
                                    keys[i].default_value);
        }
        for (size_t j = 0; j < d->n; j++)
                if (!table_find(d->entries[j].section, d->entries[j].key))
                        doc_problem(d, d->entries[j].line, "'%s' is not a key of [%s]",
                                    d->entries[j].key,
                                    config_section_to_string(d->entries[j].section));
}

/* ---- docs/witlinkd.conf.5.rst: terms "``key =`` ..." below "[daemon] ..." / "[source ...]"
 * headings; an entry's text runs to the next term or heading ------------------------------- */

static bool is_underline(const char *p) {
        if (*p != '=' && *p != '-')
                return false;
        for (char c = *p; *p && *p != '\n'; p++)
                if (*p != c)
                        return false;
        return true;
}

static void man_parse(Doc *d, const char *text) {
        ConfigSection section = CONFIG_SECTION_DAEMON;
        bool in_section = false;
        unsigned lineno = 0;
        DocEntry *cur = NULL;
        _cleanup_free_ char *body = NULL;
        size_t body_size = 0;
        FILE *bf = NULL;

#define CLOSE_ENTRY()                                       \
        do {                                                \
                if (bf) {                                   \
                        ASSERT_TRUE(fclose(bf) == 0);       \
                        bf = NULL;                          \
                        cur->text = TAKE_PTR(body);         \
                }                                           \
                cur = NULL;                                 \
        } while (0)

        for (const char *line = text; line && *line; ) {
                const char *end = strchr(line, '\n') ?: line + strlen(line);
                const char *next = *end ? end + 1 : NULL;
                size_t n;

                lineno++;
                if (next && line < end && !isspace((unsigned char) *line) && is_underline(next) &&
                    !is_underline(line)) {
                        /* A heading: a section of the config file, or any other. */
                        CLOSE_ENTRY();
                        in_section = section_of(line, &section);
                } else if (strncmp(line, "``", 2) == 0 && (n = key_span(line + 2)) > 0 &&
                           strncmp(line + 2 + n, " =``", 4) == 0) {
                        CLOSE_ENTRY();
                        if (!in_section)
                                doc_problem(d, lineno, "term '%.*s' outside a config section",
                                            (int) n, line + 2);
                        else {
                                cur = doc_add(d, section, line + 2, n, lineno);
                                bf = open_memstream(&body, &body_size);
                                ASSERT_NOT_NULL(bf);
                        }
                } else if (bf) {
                        /* Collapse all whitespace, so that wrapped lines read as one. */
                        for (const char *c = line; c < end; c++) {
                                if (isspace((unsigned char) *c))
                                        continue;
                                if (c > line && isspace((unsigned char) c[-1]) && ftell(bf) > 0)
                                        fputc(' ', bf);
                                fputc(*c, bf);
                        }
                }
                line = next;
        }
        CLOSE_ENTRY();
#undef CLOSE_ENTRY
}

static void man_check(Doc *d) {
        size_t n;
        const ConfigKey *keys = config_keys(&n);

        for (size_t i = 0; i < n; i++) {
                const DocEntry *e = NULL;
                _cleanup_free_ char *want = NULL;

                for (size_t j = 0; j < d->n; j++)
                        if (d->entries[j].section == keys[i].section &&
                            strcmp(d->entries[j].key, keys[i].name) == 0) {
                                if (e)
                                        doc_problem(d, d->entries[j].line,
                                                    "key '%s' is documented twice", keys[i].name);
                                e = &d->entries[j];
                        }
                if (!e) {
                        doc_problem(d, 0, "key '%s' of [%s] is not documented", keys[i].name,
                                    config_section_to_string(keys[i].section));
                        continue;
                }
                if (!keys[i].default_value)
                        want = strdup("Required");
                else if (!*keys[i].default_value)
                        want = strdup("Default: empty");
                else
                        ASSERT_TRUE(asprintf(&want, "Default: ``%s``", keys[i].default_value) > 0);
                ASSERT_NOT_NULL(want);
                if (!strstr(e->text ?: "", want))
                        doc_problem(d, e->line, "the entry of '%s' does not say \"%s\"",
                                    keys[i].name, want);
                if (!keys[i].reloadable && !strstr(e->text ?: "", "Takes effect at the next start"))
                        doc_problem(d, e->line,
                                    "'%s' is not reloadable, but its entry does not say \"Takes "
                                    "effect at the next start\"",
                                    keys[i].name);
        }
        for (size_t j = 0; j < d->n; j++)
                if (!table_find(d->entries[j].section, d->entries[j].key))
                        doc_problem(d, d->entries[j].line, "'%s' is not a key of [%s]",
                                    d->entries[j].key,
                                    config_section_to_string(d->entries[j].section));
}

/* ---- tests -------------------------------------------------------------------------------- */

static unsigned check_conf_text(const char *name, const char *text, bool quiet) {
        Doc d = { .name = name, .quiet = quiet };

        conf_parse(&d, text);
        conf_check(&d);
        doc_clear(&d);
        return d.problems;
}

static unsigned check_man_text(const char *name, const char *text, bool quiet) {
        Doc d = { .name = name, .quiet = quiet };

        man_parse(&d, text);
        man_check(&d);
        doc_clear(&d);
        return d.problems;
}

/* Returns text with the first occurrence of from replaced by to (malloc'd). */
static char *replace(const char *text, const char *from, const char *to) {
        const char *p = strstr(text, from);
        char *out;

        ASSERT_NOT_NULL(p);
        ASSERT_TRUE(asprintf(&out, "%.*s%s%s", (int) (p - text), text, to, p + strlen(from)) > 0);
        return out;
}

static void test_conf(void) {
        _cleanup_free_ char *text = read_text(CONF_FILE);

        ASSERT_EQ_INT(check_conf_text(CONF_FILE, text, false), 0);
        TEST_OK("conf-has-every-key");
}

static void test_man(void) {
        _cleanup_free_ char *text = read_text(MAN_FILE);

        ASSERT_EQ_INT(check_man_text(MAN_FILE, text, false), 0);
        TEST_OK("man-has-every-key");
}

/* The shipped file, given a source, is a valid configuration as it is. */
static void test_conf_loads(void) {
        _cleanup_free_ char *text = read_text(CONF_FILE), *full = NULL, *tok = NULL;
        _cleanup_free_ char *path = NULL, *err = NULL;
        _cleanup_(config_freep) Config *c = NULL;

        tok = tests_write_file("docs-test.pat", "docs-test-token\n");
        ASSERT_TRUE(asprintf(&full, "%s\n[source docs-test]\nurl = https://dev.azure.com/x\n"
                                    "token-file = %s\n", text, tok) > 0);
        path = tests_write_file("witlinkd.conf", full);
        if (config_load(path, &c, &err) < 0)
                TESTS_FAIL("%s with a [source] appended does not load: %s", CONF_FILE,
                           err ?: "(no message)");
        ASSERT_EQ_INT(c->n_sources, 1);
        TEST_OK("conf-loads");
}

/* The checks themselves notice a missing, a stale and a misplaced key. */
static void test_checks_bite(void) {
        _cleanup_free_ char *conf = read_text(CONF_FILE), *man = read_text(MAN_FILE);
        _cleanup_free_ char *c1 = NULL, *c2 = NULL, *c3 = NULL, *c4 = NULL;
        _cleanup_free_ char *m1 = NULL, *m2 = NULL, *m3 = NULL;
        const char *section_src = "[source fabrikam]";

        c1 = replace(conf, "max-parallel", "max-paralel");
        ASSERT_EQ_INT(check_conf_text("conf without max-parallel", c1, true), 2);
        c2 = replace(conf, "poll-interval = 5min", "poll-interval = 6min");
        ASSERT_EQ_INT(check_conf_text("conf with a wrong default", c2, true), 1);
        c4 = replace(conf, "log-level = info", "log-level = info\nlog-level = info");
        ASSERT_EQ_INT(check_conf_text("conf with a key twice", c4, true), 1);
        ASSERT_NOT_NULL(strstr(conf, section_src));
        c3 = replace(conf, section_src, "[sauce fabrikam]"); /* source keys land in [daemon] */
        ASSERT_TRUE(check_conf_text("conf without [source]", c3, true) > 10);

        m1 = replace(man, "``log-level =``", "``log-levels =``");
        ASSERT_EQ_INT(check_man_text("man without log-level", m1, true), 2);
        m2 = replace(man, "Default: ``7.1``", "Default: ``7.0``");
        ASSERT_EQ_INT(check_man_text("man with a wrong default", m2, true), 1);
        m3 = replace(man, "[source NAME] sections", "Sources");
        ASSERT_TRUE(check_man_text("man without [source]", m3, true) > 10);
        TEST_OK("checks-bite");
}

int main(void) {
        size_t n;

        ASSERT_TRUE(config_keys(&n) != NULL && n > 0);
        test_conf();
        test_conf_loads();
        test_man();
        test_checks_bite();
        return tests_done("test-config-docs");
}
