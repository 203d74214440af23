/* SPDX-License-Identifier: MIT */
/* Unit tests of the configuration reader: the key table, values, defaults, errors, secrets. */
#include <stdarg.h>
#include <syslog.h>

#include "config.h"
#include "tests.h"

#define TOKEN "s3cr3t-pat-0123456789abcdef"
#define CRED_TOKEN "cred-tok-zyxwvu"
#define PG_PASSWORD "pg-hunter2"

static char *conf_path; /* the config file every case writes */
static char *tok_path;  /* a valid token file holding TOKEN */

static int load_fmt(Config **ret, char **ret_error, const char *fmt, ...) _printf_(3, 4);
static int load_fmt(Config **ret, char **ret_error, const char *fmt, ...) {
        _cleanup_free_ char *text = NULL;
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&text, fmt, ap);
        va_end(ap);
        if (r < 0)
                abort();
        free(conf_path);
        conf_path = tests_write_file("witlinkd.conf", text);
        return config_load(conf_path, ret, ret_error);
}

/* Loads a config that must fail; the error must start with "FILE:LINE: " and name the key. */
static void check_error(const char *what, unsigned line, const char *key, const char *text) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *err = NULL, *prefix = NULL;
        int r;

        tests_context = what;
        r = load_fmt(&c, &err, "%s", text);
        ASSERT_ERR(r, -EINVAL);
        ASSERT_NULL(c);
        ASSERT_NOT_NULL(err);
        ASSERT_TRUE(asprintf(&prefix, "%s:%u: ", conf_path, line) > 0);
        ASSERT_STARTSWITH(err, prefix);
        if (key)
                ASSERT_CONTAINS(err, key);
        ASSERT_NOT_CONTAINS(err, TOKEN);
        ASSERT_NOT_CONTAINS(err, CRED_TOKEN);
        tests_context = NULL;
}

static char *dump(const Config *c) {
        char *out = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&out, &size);

        ASSERT_NOT_NULL(f);
        config_dump(c, f);
        ASSERT_TRUE(fclose(f) == 0);
        ASSERT_EQ_INT(strlen(out), size);
        return out;
}

static void test_key_table(void) {
        static const struct {
                ConfigSection section;
                const char *name;
        } spec_keys[] = {
                { CONFIG_SECTION_DAEMON, "database" },
                { CONFIG_SECTION_DAEMON, "poll-interval" },
                { CONFIG_SECTION_DAEMON, "http-timeout" },
                { CONFIG_SECTION_DAEMON, "max-response-size" },
                { CONFIG_SECTION_DAEMON, "log-level" },
                { CONFIG_SECTION_SOURCE, "url" },
                { CONFIG_SECTION_SOURCE, "token-file" },
                { CONFIG_SECTION_SOURCE, "credential" },
                { CONFIG_SECTION_SOURCE, "auth" },
                { CONFIG_SECTION_SOURCE, "projects" },
                { CONFIG_SECTION_SOURCE, "types" },
                { CONFIG_SECTION_SOURCE, "link-types" },
                { CONFIG_SECTION_SOURCE, "api-version" },
                { CONFIG_SECTION_SOURCE, "start-date" },
                { CONFIG_SECTION_SOURCE, "ca-file" },
                { CONFIG_SECTION_SOURCE, "max-parallel" },
        };
        const ConfigKey *keys;
        size_t n = 0;

        keys = config_keys(&n);
        ASSERT_NOT_NULL(keys);
        /* Every key of SPEC §4 is in the table. */
        for (size_t i = 0; i < ELEMENTSOF(spec_keys); i++) {
                bool found = false;

                for (size_t j = 0; j < n; j++)
                        found = found || (keys[j].section == spec_keys[i].section &&
                                          strcmp(keys[j].name, spec_keys[i].name) == 0);
                tests_context = spec_keys[i].name;
                ASSERT_TRUE(found);
        }
        tests_context = NULL;
        for (size_t i = 0; i < n; i++) {
                ASSERT_NOT_NULL(keys[i].name);
                ASSERT_NOT_NULL(keys[i].parse);
                ASSERT_NOT_NULL(keys[i].help);
                ASSERT_TRUE(keys[i].section == CONFIG_SECTION_DAEMON ||
                            keys[i].section == CONFIG_SECTION_SOURCE);
                for (size_t j = 0; j < i; j++)
                        ASSERT_TRUE(keys[i].section != keys[j].section ||
                                    strcmp(keys[i].name, keys[j].name) != 0);
        }
        ASSERT_STREQ(config_section_to_string(CONFIG_SECTION_DAEMON), "daemon");
        ASSERT_STREQ(config_section_to_string(CONFIG_SECTION_SOURCE), "source");
        TEST_OK("key-table");
}

/* Every key of the table, over two sources (token-file and credential exclude each other). */
static const char full_config[] =
        "# witlinkd test configuration: a whole-line comment\n"
        "; another whole-line comment\n"
        "[daemon]\n"
        "database = host=/run/postgresql dbname=warehouse password=" PG_PASSWORD
        "   # libpq conninfo\n"
        "poll-interval = 90s\n"
        "http-timeout = 1h 30min\n"
        "max-response-size = 8M\n"
        "max-backoff = 30min\n"
        "statement-timeout = 45s\n"
        "synchronous-commit = on\n"
        "log-level = debug\n"
        "\n"
        "[source fabrikam]\n"
        "url = https://dev.azure.com/fabrikam/   # trailing slash is dropped\n"
        "token-file = %s\n"
        "auth = bearer\n"
        "projects = Fabrikam-Fiber, Contoso Web,v1.2.Proj , \xCE\xA9mega Proj\n"
        "types =  Bug , Task,bug\n"
        "link-types = System.LinkTypes.Related, System.LinkTypes.Hierarchy-Forward\n"
        "api-version = 7.0\n"
        "start-date = 2024-01-01T00:00:00Z\n"
        "ca-file = /etc/ssl/certs/onprem.pem\n"
        "max-parallel = 4\n"
        "\n"
        "[source onprem]\n"
        "url = https://tfs.example.com/tfs/DefaultCollection\n"
        "credential = onprem.pat\n";

static void test_full(void) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *err = NULL, *out = NULL, *credpath = NULL, *creddir = NULL;
        const ConfigKey *keys;
        const SourceConfig *s;
        size_t n;

        creddir = tests_make_dir("creds");
        credpath = tests_write_file("creds/onprem.pat", CRED_TOKEN "\n");
        ASSERT_TRUE(setenv("CREDENTIALS_DIRECTORY", creddir, 1) == 0);

        /* The text must really set every key of the table. */
        keys = config_keys(&n);
        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *needle = NULL;

                ASSERT_TRUE(asprintf(&needle, "\n%s = ", keys[i].name) > 0);
                ASSERT_CONTAINS(full_config, needle);
        }

        ASSERT_OK(load_fmt(&c, &err, full_config, tok_path));
        ASSERT_NULL(err);
        ASSERT_NOT_NULL(c);
        ASSERT_STREQ(c->path, conf_path);
        ASSERT_STREQ(c->database, "host=/run/postgresql dbname=warehouse password=" PG_PASSWORD);
        ASSERT_EQ_U64(c->poll_interval_usec, 90 * USEC_PER_SEC);
        ASSERT_EQ_U64(c->http_timeout_usec, 5400 * USEC_PER_SEC);
        ASSERT_EQ_U64(c->max_response_size, 8ULL << 20);
        ASSERT_EQ_U64(c->max_backoff_usec, 1800 * USEC_PER_SEC);
        ASSERT_EQ_U64(c->statement_timeout_usec, 45 * USEC_PER_SEC);
        ASSERT_TRUE(c->synchronous_commit);
        ASSERT_EQ_INT(c->log_level, LOG_DEBUG);
        ASSERT_EQ_INT(c->n_sources, 2);

        s = c->sources[0];
        ASSERT_STREQ(s->name, "fabrikam");
        ASSERT_STREQ(s->url, "https://dev.azure.com/fabrikam");
        ASSERT_STREQ(s->token_file, tok_path);
        ASSERT_NULL(s->credential);
        ASSERT_STREQ(s->token, TOKEN);
        ASSERT_EQ_INT(s->auth, AUTH_BEARER);
        ASSERT_EQ_INT(s->n_projects, 4);
        ASSERT_STREQ(s->projects[0], "Fabrikam-Fiber");
        ASSERT_STREQ(s->projects[1], "Contoso Web");
        ASSERT_STREQ(s->projects[2], "v1.2.Proj");
        ASSERT_STREQ(s->projects[3], "\xCE\xA9mega Proj");
        ASSERT_NULL(s->projects[4]);
        ASSERT_STREQ(s->types, "Bug,Task");
        ASSERT_STREQ(s->link_types,
                     "System.LinkTypes.Hierarchy-Forward,System.LinkTypes.Related");
        ASSERT_STREQ(s->api_version, "7.0");
        ASSERT_STREQ(s->start_date, "2024-01-01T00:00:00Z");
        ASSERT_STREQ(s->ca_file, "/etc/ssl/certs/onprem.pem");
        ASSERT_EQ_INT(s->max_parallel, 4);
        ASSERT_EQ_INT(s->line, 13);

        s = c->sources[1];
        ASSERT_STREQ(s->name, "onprem");
        ASSERT_STREQ(s->url, "https://tfs.example.com/tfs/DefaultCollection");
        ASSERT_NULL(s->token_file);
        ASSERT_STREQ(s->credential, "onprem.pat");
        ASSERT_STREQ(s->token, CRED_TOKEN); /* trailing newline trimmed */
        ASSERT_EQ_INT(s->line, 25);

        /* --check-config output: settings shown, secrets not. */
        out = dump(c);
        ASSERT_NOT_CONTAINS(out, TOKEN);
        ASSERT_NOT_CONTAINS(out, CRED_TOKEN);
        ASSERT_NOT_CONTAINS(out, PG_PASSWORD);
        ASSERT_CONTAINS(out, "password=<redacted>");
        ASSERT_CONTAINS(out, "dbname='warehouse'");
        ASSERT_CONTAINS(out, "[daemon]\n");
        ASSERT_CONTAINS(out, "\npoll-interval = 90s\n");
        ASSERT_CONTAINS(out, "\nhttp-timeout = 90min\n");
        ASSERT_CONTAINS(out, "\nmax-response-size = 8M\n");
        ASSERT_CONTAINS(out, "\nlog-level = debug\n");
        ASSERT_CONTAINS(out, "\n[source fabrikam]\n");
        ASSERT_CONTAINS(out, "\nurl = https://dev.azure.com/fabrikam\n");
        ASSERT_CONTAINS(out, "\nauth = bearer\n");
        ASSERT_CONTAINS(out,
                        "\nprojects = Fabrikam-Fiber, Contoso Web, v1.2.Proj, \xCE\xA9mega Proj\n");
        ASSERT_CONTAINS(out, "\ntypes = Bug,Task\n");
        ASSERT_CONTAINS(out, "\nmax-parallel = 4\n");
        ASSERT_CONTAINS(out, "\n[source onprem]\n");
        ASSERT_CONTAINS(out, "\ncredential = onprem.pat\n");

        ASSERT_TRUE(unsetenv("CREDENTIALS_DIRECTORY") == 0);
        TEST_OK("full-config");
}

static void test_defaults(void) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *err = NULL, *out = NULL;
        const SourceConfig *s;

        ASSERT_OK(load_fmt(&c, &err, "[source fabrikam]\nurl = https://dev.azure.com/fabrikam\n"
                                     "token-file = %s\n",
                           tok_path));
        ASSERT_STREQ(c->database, "");
        ASSERT_EQ_U64(c->poll_interval_usec, 5 * 60 * USEC_PER_SEC);
        ASSERT_EQ_U64(c->max_backoff_usec, 10 * 60 * USEC_PER_SEC);
        ASSERT_EQ_U64(c->statement_timeout_usec, 2 * 60 * USEC_PER_SEC);
        ASSERT_FALSE(c->synchronous_commit);
        ASSERT_EQ_U64(c->http_timeout_usec, 60 * USEC_PER_SEC);
        ASSERT_EQ_U64(c->max_response_size, 64ULL << 20);
        ASSERT_EQ_INT(c->log_level, LOG_INFO);
        ASSERT_EQ_INT(c->n_sources, 1);
        s = c->sources[0];
        ASSERT_EQ_INT(s->auth, AUTH_PAT);
        ASSERT_STREQ(s->api_version, "7.1");
        ASSERT_EQ_INT(s->max_parallel, 2);
        ASSERT_EQ_INT(s->n_projects, 0);
        ASSERT_NOT_NULL(s->projects);
        ASSERT_NULL(s->projects[0]);
        ASSERT_STREQ(s->types, "");
        ASSERT_STREQ(s->link_types, "");
        ASSERT_NULL(s->start_date);
        ASSERT_NULL(s->ca_file);
        ASSERT_NULL(s->credential);
        ASSERT_STREQ(s->token, TOKEN);

        out = dump(c);
        ASSERT_CONTAINS(out, "\npoll-interval = 5min\n");
        ASSERT_CONTAINS(out, "\nhttp-timeout = 1min\n");
        ASSERT_CONTAINS(out, "\nmax-response-size = 64M\n");
        ASSERT_CONTAINS(out, "\nlog-level = info\n");
        ASSERT_CONTAINS(out, "\nauth = pat\n");
        ASSERT_CONTAINS(out, "\napi-version = 7.1\n");
        ASSERT_CONTAINS(out, "\nmax-parallel = 2\n");
        ASSERT_NOT_CONTAINS(out, TOKEN);
        TEST_OK("defaults");
}

static void test_inline_comments(void) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *err = NULL;

        ASSERT_OK(load_fmt(&c, &err,
                           "   # indented whole-line comment\n"
                           "[daemon]   # comment after a section header\n"
                           "poll-interval = 10min  # a comment\n"
                           "\n"
                           "[source a]\n"
                           "url = https://dev.azure.com/a\t# tab before the comment\n"
                           "token-file = %s # comment\n"
                           "projects = C#, F# Lab   # '#' inside words is kept\n"
                           "types = Bug#1, Task # trailing\n",
                           tok_path));
        ASSERT_EQ_U64(c->poll_interval_usec, 600 * USEC_PER_SEC);
        ASSERT_STREQ(c->sources[0]->url, "https://dev.azure.com/a");
        ASSERT_STREQ(c->sources[0]->token_file, tok_path);
        ASSERT_EQ_INT(c->sources[0]->n_projects, 2);
        ASSERT_STREQ(c->sources[0]->projects[0], "C#");
        ASSERT_STREQ(c->sources[0]->projects[1], "F# Lab");
        ASSERT_STREQ(c->sources[0]->types, "Bug#1,Task");
        TEST_OK("comments");
}

static void test_filters(void) {
        static const struct {
                const char *in, *out;
        } cases[] = {
                { " Bug , Task,bug", "Bug,Task" },
                { "Task,Bug", "Bug,Task" },
                { "User Story, bug , Epic,EPIC,,", "bug,Epic,User Story" },
                { " , ,", "" },
                { "", "" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_(config_freep) Config *c = NULL;
                _cleanup_free_ char *err = NULL;

                tests_context = cases[i].in;
                ASSERT_OK(load_fmt(&c, &err,
                                   "[source a]\nurl = https://x.example\ntoken-file = %s\n"
                                   "types = %s\nlink-types = %s\n",
                                   tok_path, cases[i].in, cases[i].in));
                ASSERT_STREQ(c->sources[0]->types, cases[i].out);
                ASSERT_STREQ(c->sources[0]->link_types, cases[i].out);
        }
        tests_context = NULL;
        TEST_OK("filters-normalised");
}

static void test_projects(void) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *err = NULL;

        ASSERT_OK(load_fmt(&c, &err,
                           "[source a]\nurl = https://x.example\ntoken-file = %s\n"
                           "projects =  My Project  ,a.b.c,Caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC, "
                           "\xD7\xA4\xD7\xA8\xD7\x95\xD7\x99\xD7\xA7\xD7\x98\n",
                           tok_path));
        ASSERT_EQ_INT(c->sources[0]->n_projects, 4);
        ASSERT_STREQ(c->sources[0]->projects[0], "My Project");
        ASSERT_STREQ(c->sources[0]->projects[1], "a.b.c");
        ASSERT_STREQ(c->sources[0]->projects[2], "Caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC");
        ASSERT_STREQ(c->sources[0]->projects[3], "\xD7\xA4\xD7\xA8\xD7\x95\xD7\x99\xD7\xA7\xD7\x98");
        ASSERT_NULL(c->sources[0]->projects[4]);
        TEST_OK("projects-verbatim");
}

static void test_errors(void) {
        _cleanup_free_ char *t = NULL;
        char buf[4096];

#define SRC_OK "url = https://dev.azure.com/o\ntoken-file = %s\n"
#define CASE(what, line, key, fmt)                                             \
        do {                                                                   \
                snprintf(buf, sizeof(buf), fmt, tok_path);                     \
                check_error(what, line, key, buf);                             \
        } while (0)

        CASE("unknown key", 3, "'bogus'",
             "[daemon]\nlog-level = info\nbogus = 1\n[source a]\n" SRC_OK);
        CASE("daemon key in source", 4, "'log-level'", "[source a]\n" SRC_OK "log-level = info\n");
        CASE("unknown section", 2, "[sauce a]", "[daemon]\n[sauce a]\n" SRC_OK);
        CASE("key outside a section", 1, NULL, "log-level = info\n[source a]\n" SRC_OK);
        CASE("duplicate key", 3, "'log-level'",
             "[daemon]\nlog-level = info\nlog-level = debug\n[source a]\n" SRC_OK);
        CASE("duplicate source key", 4, "'url'", "[source a]\n" SRC_OK "url = https://y.example\n");
        CASE("duplicate source", 4, "[source a]",
             "[source a]\n" SRC_OK "[source a]\nurl = https://y.example\n");
        CASE("duplicate daemon", 5, "[daemon]", "[daemon]\n[source a]\n" SRC_OK "[daemon]\n");
        CASE("bad source name", 1, "a/b", "[source a/b]\n" SRC_OK);
        CASE("bad time span", 2, "'poll-interval'", "[daemon]\npoll-interval = 5 fortnights\n"
                                                    "[source a]\n" SRC_OK);
        CASE("negative time span", 2, "'http-timeout'", "[daemon]\nhttp-timeout = -5s\n"
                                                        "[source a]\n" SRC_OK);
        CASE("time span too short", 2, "'poll-interval'", "[daemon]\npoll-interval = 10ms\n"
                                                          "[source a]\n" SRC_OK);
        CASE("bad size", 2, "'max-response-size'", "[daemon]\nmax-response-size = lots\n"
                                                   "[source a]\n" SRC_OK);
        CASE("size too large", 2, "'max-response-size'", "[daemon]\nmax-response-size = 2G\n"
                                                         "[source a]\n" SRC_OK);
        CASE("'#' without a space before it is no comment", 2, "'log-level'",
             "[daemon]\nlog-level = notice# x\n[source a]\n" SRC_OK);
        CASE("bad log level", 2, "'log-level'", "[daemon]\nlog-level = loud\n[source a]\n" SRC_OK);
        CASE("bad auth", 4, "'auth'", "[source a]\n" SRC_OK "auth = ntlm\n");
        CASE("bad url scheme", 2, "'url'", "[source a]\nurl = ftp://dev.azure.com/o\n"
                                           "token-file = %s\n");
        CASE("url without host", 2, "'url'", "[source a]\nurl = https:///o\ntoken-file = %s\n");
        CASE("url with query", 2, "'url'", "[source a]\nurl = https://dev.azure.com/o?x=1\n"
                                           "token-file = %s\n");
        CASE("url with fragment", 2, "'url'", "[source a]\nurl = https://dev.azure.com/o#x\n"
                                              "token-file = %s\n");
        CASE("url with credentials", 2, "'url'",
             "[source a]\nurl = https://user:" TOKEN "@dev.azure.com/o\ntoken-file = %s\n");
        /* Credentials in a URL that is also wrong otherwise must not be echoed either. */
        CASE("url with credentials and a query", 2, "'url'",
             "[source a]\nurl = https://user:" TOKEN "@dev.azure.com/o?x=1\ntoken-file = %s\n");
        CASE("api-version 2.1", 4, "'api-version'", "[source a]\n" SRC_OK "api-version = 2.1\n");
        CASE("api-version 1.0", 4, "'api-version'", "[source a]\n" SRC_OK "api-version = 1.0\n");
        CASE("api-version garbage", 4, "'api-version'", "[source a]\n" SRC_OK "api-version = v7\n");
        CASE("max-parallel 0", 4, "'max-parallel'", "[source a]\n" SRC_OK "max-parallel = 0\n");
        CASE("bad start-date", 4, "'start-date'", "[source a]\n" SRC_OK "start-date = yesterday\n");
        CASE("relative token-file", 3, "'token-file'", "[source a]\nurl = https://x.example\n"
                                                       "token-file = relative/path\n%.0s");
        CASE("relative ca-file", 4, "'ca-file'", "[source a]\n" SRC_OK "ca-file = ca.pem\n");
        CASE("duplicate project", 4, "'projects'",
             "[source a]\n" SRC_OK "projects = Alpha, Beta, ALPHA\n");
        CASE("no source", 1, "source", "[daemon]\n%.0s");
        CASE("missing url", 2, "'url'", "[daemon]\n[source a]\ntoken-file = %s\n");
        CASE("both token-file and credential", 1, "token-file",
             "[source a]\n" SRC_OK "credential = a.pat\n");
        CASE("neither token-file nor credential", 2, "credential",
             "[daemon]\n%.0s[source a]\nurl = https://x.example\n");
        CASE("credential with a slash", 3, "'credential'",
             "[source a]\nurl = https://x.example\ncredential = ../a.pat\n%.0s");

        /* Token files: the message names the key and the file, never the content. */
        CASE("unreadable token file", 1, "/nonexistent/witlinkd.pat",
             "[source a]\nurl = https://x.example\ntoken-file = /nonexistent/witlinkd.pat\n%.0s");
        CASE("unreadable token file (key)", 1, "'token-file'",
             "[source a]\nurl = https://x.example\ntoken-file = /nonexistent/witlinkd.pat\n%.0s");

        t = tests_write_file("empty.pat", "");
        snprintf(buf, sizeof(buf), "[source a]\nurl = https://x.example\ntoken-file = %s\n", t);
        check_error("empty token file", 1, t, buf);
        free(t);
        t = tests_write_file("blank.pat", "\n\n");
        snprintf(buf, sizeof(buf), "[source a]\nurl = https://x.example\ntoken-file = %s\n", t);
        check_error("token file of empty lines", 1, t, buf);
        free(t);
        t = tests_write_file("two-lines.pat", TOKEN "\n" TOKEN "\n");
        snprintf(buf, sizeof(buf), "[source a]\nurl = https://x.example\ntoken-file = %s\n", t);
        check_error("token file with two lines", 1, t, buf);
        free(t);
        t = tests_make_dir("a-directory.pat");
        snprintf(buf, sizeof(buf), "[source a]\nurl = https://x.example\ntoken-file = %s\n", t);
        check_error("token file is a directory", 1, t, buf);
        t = mfree(t);

        /* A credential needs $CREDENTIALS_DIRECTORY. */
        ASSERT_TRUE(unsetenv("CREDENTIALS_DIRECTORY") == 0);
        check_error("credential without $CREDENTIALS_DIRECTORY", 1, "CREDENTIALS_DIRECTORY",
                    "[source a]\nurl = https://x.example\ncredential = a.pat\n");
        t = tests_make_dir("empty-creds");
        ASSERT_TRUE(setenv("CREDENTIALS_DIRECTORY", t, 1) == 0);
        check_error("missing credential", 1, "a.pat",
                    "[source a]\nurl = https://x.example\ncredential = a.pat\n");
        ASSERT_TRUE(unsetenv("CREDENTIALS_DIRECTORY") == 0);

        /* A config file that is not there. */
        {
                _cleanup_(config_freep) Config *c = NULL;
                _cleanup_free_ char *err = NULL;

                ASSERT_ERR(config_load("/nonexistent/witlinkd.conf", &c, &err), -ENOENT);
                ASSERT_NULL(c);
                ASSERT_CONTAINS(err, "/nonexistent/witlinkd.conf");
        }
#undef CASE
#undef SRC_OK
        TEST_OK("errors");
}

static void test_api_versions(void) {
        static const char *const good[] = { "2.2", "4.1", "5.0", "7.1", "7.2-preview.3" };

        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                _cleanup_(config_freep) Config *c = NULL;
                _cleanup_free_ char *err = NULL;

                tests_context = good[i];
                ASSERT_OK(load_fmt(&c, &err,
                                   "[source a]\nurl = https://x.example\ntoken-file = %s\n"
                                   "api-version = %s\n",
                                   tok_path, good[i]));
                ASSERT_STREQ(c->sources[0]->api_version, good[i]);
        }
        tests_context = NULL;
        TEST_OK("api-versions");
}

static void test_credential(void) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *err = NULL, *dir = NULL, *p = NULL, *out = NULL;

        dir = tests_make_dir("creds2");
        p = tests_write_file("creds2/fabrikam.pat", CRED_TOKEN "\n");
        ASSERT_TRUE(setenv("CREDENTIALS_DIRECTORY", dir, 1) == 0);
        ASSERT_OK(load_fmt(&c, &err,
                           "[source fabrikam]\nurl = https://dev.azure.com/fabrikam\n"
                           "credential = fabrikam.pat\n"));
        ASSERT_STREQ(c->sources[0]->credential, "fabrikam.pat");
        ASSERT_NULL(c->sources[0]->token_file);
        ASSERT_STREQ(c->sources[0]->token, CRED_TOKEN);
        out = dump(c);
        ASSERT_NOT_CONTAINS(out, CRED_TOKEN);
        ASSERT_CONTAINS(out, "credential = fabrikam.pat");
        ASSERT_TRUE(unsetenv("CREDENTIALS_DIRECTORY") == 0);
        TEST_OK("credential");
}

static void test_token_trimming(void) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *err = NULL, *p = NULL;

        p = tests_write_file("crlf.pat", TOKEN "\r\n");
        ASSERT_OK(load_fmt(&c, &err, "[source a]\nurl = https://x.example\ntoken-file = %s\n", p));
        ASSERT_STREQ(c->sources[0]->token, TOKEN);
        c = config_free(c);
        err = mfree(err);
        p = mfree(p);

        /* A world-readable token file is only a warning. */
        p = tests_write_file_len("world.pat", TOKEN "\n", strlen(TOKEN "\n"), 0644);
        ASSERT_OK(load_fmt(&c, &err, "[source a]\nurl = https://x.example\ntoken-file = %s\n", p));
        ASSERT_STREQ(c->sources[0]->token, TOKEN);
        TEST_OK("token-trimming");
}

static void test_dump_redaction(void) {
        static const char *const conninfos[] = {
                "host=db.example password=" PG_PASSWORD " dbname=w",
                "password='" PG_PASSWORD "' host=db.example",
                "postgresql://witlink:" PG_PASSWORD "@db.example:5432/warehouse",
        };

        for (size_t i = 0; i < ELEMENTSOF(conninfos); i++) {
                _cleanup_(config_freep) Config *c = NULL;
                _cleanup_free_ char *err = NULL, *out = NULL;

                tests_context = conninfos[i];
                ASSERT_OK(load_fmt(&c, &err,
                                   "[daemon]\ndatabase = %s\n[source a]\nurl = https://x.example\n"
                                   "token-file = %s\n",
                                   conninfos[i], tok_path));
                out = dump(c);
                ASSERT_NOT_CONTAINS(out, PG_PASSWORD);
                ASSERT_NOT_CONTAINS(out, TOKEN);
                ASSERT_CONTAINS(out, "password=<redacted>");
                ASSERT_CONTAINS(out, "db.example");
        }
        tests_context = NULL;
        TEST_OK("dump-redaction");
}

static void test_timespan(void) {
        static const struct {
                const char *in;
                uint64_t usec;
        } good[] = {
                { "90s", 90 * USEC_PER_SEC },
                { "5min", 300 * USEC_PER_SEC },
                { "1h", 3600 * USEC_PER_SEC },
                { "1h 30min", 5400 * USEC_PER_SEC },
                { "1h30min", 5400 * USEC_PER_SEC },
                { "500ms", 500 * USEC_PER_MSEC },
                { "2", 2 * USEC_PER_SEC },
                { " 7 s ", 7 * USEC_PER_SEC },
                { "1.5s", 1500 * USEC_PER_MSEC },
                { "2d", 2 * 86400 * USEC_PER_SEC },
                { "10us", 10 },
        };
        static const char *const bad[] = {
                "", "   ", "abc", "5 fortnights", "5mins", "s", "-5s", "1h -5min", "5min garbage",
                "0x10", "1e3s", "inf", "nan",
        };
        uint64_t v;

        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                tests_context = good[i].in;
                v = 0;
                ASSERT_OK(config_parse_timespan(good[i].in, &v));
                ASSERT_EQ_U64(v, good[i].usec);
        }
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                tests_context = bad[i];
                v = 4242;
                ASSERT_TRUE(config_parse_timespan(bad[i], &v) < 0);
                ASSERT_EQ_U64(v, 4242); /* untouched on failure */
        }
        tests_context = NULL;
        TEST_OK("parse-timespan");
}

static void test_size(void) {
        static const struct {
                const char *in;
                uint64_t v;
        } good[] = {
                { "64M", 64ULL << 20 }, { "1G", 1ULL << 30 },    { "512K", 512ULL << 10 },
                { "100", 100 },         { "64MiB", 64ULL << 20 }, { "2 k", 2048 },
        };
        static const char *const bad[] = {
                "", "abc", "12Q", "-1", "1.5M", "M", "64 M extra", "99999999999999999999",
        };
        uint64_t v;

        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                tests_context = good[i].in;
                v = 0;
                ASSERT_OK(config_parse_size(good[i].in, &v));
                ASSERT_EQ_U64(v, good[i].v);
        }
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                tests_context = bad[i];
                v = 4242;
                ASSERT_TRUE(config_parse_size(bad[i], &v) < 0);
                ASSERT_EQ_U64(v, 4242);
        }
        tests_context = NULL;
        TEST_OK("parse-size");
}

static void test_auth_names(void) {
        ASSERT_STREQ(auth_kind_to_string(AUTH_PAT), "pat");
        ASSERT_STREQ(auth_kind_to_string(AUTH_BEARER), "bearer");
        ASSERT_NULL(auth_kind_to_string(_AUTH_KIND_MAX));
        TEST_OK("auth-names");
}

int main(void) {
        /* Token files are mode 0600, so no "readable by every user" warning is expected. */
        tok_path = tests_write_file("fabrikam.pat", TOKEN "\n");
        ASSERT_TRUE(unsetenv("CREDENTIALS_DIRECTORY") == 0);

        test_key_table();
        test_full();
        test_defaults();
        test_inline_comments();
        test_filters();
        test_projects();
        test_errors();
        test_api_versions();
        test_credential();
        test_token_trimming();
        test_dump_redaction();
        test_timespan();
        test_size();
        test_auth_names();

        free(tok_path);
        free(conf_path);
        return tests_done("test-config");
}
