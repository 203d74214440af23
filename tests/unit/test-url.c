/* SPDX-License-Identifier: MIT */
/* Unit tests of request URLs and of continuation tokens taken from a nextLink. */
#include "tests.h"
#include "url.h"

#define BASE "https://dev.azure.com/fabrikam"
#define PATH "/_apis/wit/reporting/workitemlinks?api-version="

static void check_feed(const char *what, const FeedQuery *q, const char *expected) {
        _cleanup_free_ char *u = NULL;

        tests_context = what;
        ASSERT_OK(url_build_feed(q, &u));
        ASSERT_STREQ(u, expected);
        tests_context = NULL;
}

static void test_collection_and_project(void) {
        check_feed("collection-wide", &(FeedQuery){ .base_url = BASE, .api_version = "7.1" },
                   BASE PATH "7.1");
        check_feed("project", &(FeedQuery){ .base_url = BASE, .project = "Fabrikam-Fiber",
                                            .api_version = "7.1" },
                   BASE "/Fabrikam-Fiber" PATH "7.1");
        check_feed("project with a space",
                   &(FeedQuery){ .base_url = BASE, .project = "Contoso Web", .api_version = "7.1" },
                   BASE "/Contoso%20Web" PATH "7.1");
        check_feed("project with dots",
                   &(FeedQuery){ .base_url = BASE, .project = "v1.2.Proj", .api_version = "7.1" },
                   BASE "/v1.2.Proj" PATH "7.1");
        check_feed("project with '#'",
                   &(FeedQuery){ .base_url = BASE, .project = "C# Tools", .api_version = "7.1" },
                   BASE "/C%23%20Tools" PATH "7.1");
        check_feed("project with '/'",
                   &(FeedQuery){ .base_url = BASE, .project = "a/b", .api_version = "7.1" },
                   BASE "/a%2Fb" PATH "7.1");
        check_feed("project with '?', '&', '%' and '+'",
                   &(FeedQuery){ .base_url = BASE, .project = "x?y&z%+", .api_version = "7.1" },
                   BASE "/x%3Fy%26z%25%2B" PATH "7.1");
        check_feed("non-ASCII project",
                   &(FeedQuery){ .base_url = BASE, .project = "\xCE\xA9mega Proj",
                                 .api_version = "7.1" },
                   BASE "/%CE%A9mega%20Proj" PATH "7.1");
        check_feed("project by GUID",
                   &(FeedQuery){ .base_url = BASE,
                                 .project = "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
                                 .api_version = "5.0" },
                   BASE "/3f2504e0-4f89-11d3-9a0c-0305e82c3301" PATH "5.0");
        check_feed("base URL with a path prefix",
                   &(FeedQuery){ .base_url = "https://tfs.example.com/tfs/DefaultCollection",
                                 .project = "Web", .api_version = "7.0" },
                   "https://tfs.example.com/tfs/DefaultCollection/Web" PATH "7.0");
        check_feed("on-prem with a port, collection-wide",
                   &(FeedQuery){ .base_url = "http://server:8080/tfs/DefaultCollection",
                                 .api_version = "4.1" },
                   "http://server:8080/tfs/DefaultCollection" PATH "4.1");
        check_feed("preview api-version",
                   &(FeedQuery){ .base_url = BASE, .api_version = "7.2-preview.3" },
                   BASE PATH "7.2-preview.3");
        TEST_OK("feed-path");
}

static void test_parameters(void) {
        check_feed("token percent-encoded",
                   &(FeedQuery){ .base_url = BASE, .api_version = "7.1", .token = "813;350;1" },
                   BASE PATH "7.1&continuationToken=813%3B350%3B1");
        check_feed("numeric token",
                   &(FeedQuery){ .base_url = BASE, .api_version = "7.1", .token = "6281123" },
                   BASE PATH "7.1&continuationToken=6281123");
        check_feed("token with '&', '=', '+', '/' and a space",
                   &(FeedQuery){ .base_url = BASE, .api_version = "7.1", .token = "a&b=c+d/e f" },
                   BASE PATH "7.1&continuationToken=a%26b%3Dc%2Bd%2Fe%20f");
        check_feed("types and linkTypes keep their commas",
                   &(FeedQuery){ .base_url = BASE, .api_version = "7.1", .types = "Bug,User Story",
                                 .link_types = "System.LinkTypes.Hierarchy-Forward,"
                                               "System.LinkTypes.Related" },
                   BASE PATH "7.1&types=Bug,User%20Story"
                             "&linkTypes=System.LinkTypes.Hierarchy-Forward,System.LinkTypes.Related");
        check_feed("empty filters are left out",
                   &(FeedQuery){ .base_url = BASE, .api_version = "7.1", .types = "",
                                 .link_types = "" },
                   BASE PATH "7.1");
        check_feed("startDateTime without a token",
                   &(FeedQuery){ .base_url = BASE, .api_version = "7.1",
                                 .start_date = "2024-01-01T00:00:00Z" },
                   BASE PATH "7.1&startDateTime=2024-01-01T00%3A00%3A00Z");
        check_feed("startDateTime dropped with a token",
                   &(FeedQuery){ .base_url = BASE, .api_version = "7.1", .token = "5",
                                 .start_date = "2024-01-01T00:00:00Z" },
                   BASE PATH "7.1&continuationToken=5");
        check_feed("startDateTime with an empty token",
                   &(FeedQuery){ .base_url = BASE, .api_version = "7.1", .token = "",
                                 .start_date = "2024-01-01" },
                   BASE PATH "7.1&startDateTime=2024-01-01");
        check_feed("everything",
                   &(FeedQuery){ .base_url = "https://tfs.example.com/tfs/DefaultCollection",
                                 .project = "\xCE\xA9mega Proj", .api_version = "6.0",
                                 .token = "813;350;1", .types = "Bug,Task",
                                 .link_types = "System.LinkTypes.Related",
                                 .start_date = "2024-01-01" },
                   "https://tfs.example.com/tfs/DefaultCollection/%CE%A9mega%20Proj" PATH
                   "6.0&continuationToken=813%3B350%3B1&types=Bug,Task"
                   "&linkTypes=System.LinkTypes.Related");
        TEST_OK("feed-parameters");
}

static void test_build_errors(void) {
        char *u = (char *) "untouched";

        ASSERT_ERR(url_build_feed(&(FeedQuery){ .api_version = "7.1" }, &u), -EINVAL);
        ASSERT_ERR(url_build_feed(&(FeedQuery){ .base_url = BASE }, &u), -EINVAL);
        ASSERT_STREQ(u, "untouched");
        TEST_OK("feed-errors");
}

static void test_escape(void) {
        static const struct {
                const char *in;
                int keep_comma;
                const char *out;
        } cases[] = {
                { "AZaz09-._~", 0, "AZaz09-._~" },
                { "a,b", 0, "a%2Cb" },
                { "a,b", 1, "a,b" },
                { " !\"#$%&'()*+/:;=?@[]", 1,
                  "%20%21%22%23%24%25%26%27%28%29%2A%2B%2F%3A%3B%3D%3F%40%5B%5D" },
                { "\xCE\xA9", 0, "%CE%A9" },
                { "\xF0\x9F\x98\x80", 0, "%F0%9F%98%80" },
                { "", 0, "" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *e = NULL;

                tests_context = cases[i].in;
                e = url_escape(cases[i].in, strlen(cases[i].in), cases[i].keep_comma);
                ASSERT_STREQ(e, cases[i].out);
        }
        tests_context = NULL;
        {
                /* Counted, not NUL-terminated. */
                _cleanup_free_ char *e = url_escape("ab\0c", 4, 0);
                ASSERT_STREQ(e, "ab%00c");
        }
        TEST_OK("escape");
}

static void test_token_found(void) {
        static const struct {
                const char *what, *link, *token;
        } cases[] = {
                { "official sample",
                  "https://dev.azure.com/fabrikam/_apis/wit/reporting/workItemLinks?"
                  "continuationToken=6281123&api-version=7.1",
                  "6281123" },
                { "last parameter", "https://x.example/p?api-version=7.1&continuationToken=42", "42" },
                { "percent-decoded",
                  "https://x.example/p?api-version=7.1&continuationToken=813%3B350%3B1", "813;350;1" },
                { "lower-case escapes", "https://x.example/p?continuationToken=a%3bb%2fc", "a;b/c" },
                { "'+' is a space", "https://x.example/p?continuationToken=a+b", "a b" },
                { "%2B is a plus", "https://x.example/p?continuationToken=a%2Bb", "a+b" },
                { "parameter name in another case", "https://x.example/p?CONTINUATIONTOKEN=7", "7" },
                { "parameter name in mixed case", "https://x.example/p?ContinuationToken=8", "8" },
                { "legacy watermark", "https://x.example/p?api-version=2.2&watermark=1234", "1234" },
                { "continuationToken wins over watermark",
                  "https://x.example/p?watermark=1&continuationToken=2", "2" },
                { "fragment ignored", "https://x.example/p?continuationToken=5#frag", "5" },
                { "fragment right after the value", "https://x.example/p?continuationToken=5#", "5" },
                { "another host", "https://evil.example.net:8443/other?continuationToken=9", "9" },
                { "not fooled by a longer name",
                  "https://x.example/p?xcontinuationToken=1&continuationTokens=2&"
                  "continuationToken=3",
                  "3" },
                { "empty parameters around", "https://x.example/p?&&continuationToken=4&", "4" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *t = NULL;

                tests_context = cases[i].what;
                ASSERT_OK(url_token_from_next_link(cases[i].link, &t));
                ASSERT_STREQ(t, cases[i].token);
        }
        tests_context = NULL;
        TEST_OK("next-link-token");
}

static void test_token_errors(void) {
        static const struct {
                const char *what, *link;
                int r;
        } cases[] = {
                { "NULL", NULL, -ENOENT },
                { "no query", "https://x.example/p", -ENOENT },
                { "empty query", "https://x.example/p?", -ENOENT },
                { "no token parameter", "https://x.example/p?api-version=7.1", -ENOENT },
                { "only a longer name", "https://x.example/p?continuationTokenX=1", -ENOENT },
                { "name without a value", "https://x.example/p?continuationToken&a=1", -ENOENT },
                { "token only in the fragment", "https://x.example/p?a=1#continuationToken=5",
                  -ENOENT },
                { "'?' only in the fragment", "https://x.example/p#x?continuationToken=5", -ENOENT },
                { "bad escape", "https://x.example/p?continuationToken=%zz", -EBADMSG },
                { "half an escape", "https://x.example/p?continuationToken=ab%4", -EBADMSG },
                { "bare percent", "https://x.example/p?continuationToken=ab%", -EBADMSG },
                { "half an escape before '&'", "https://x.example/p?continuationToken=%4&a=1",
                  -EBADMSG },
                { "escaped NUL", "https://x.example/p?continuationToken=a%00b", -EBADMSG },
                { "empty value", "https://x.example/p?continuationToken=&a=1", -EBADMSG },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *t = (char *) "untouched";

                tests_context = cases[i].what;
                ASSERT_ERR(url_token_from_next_link(cases[i].link, &t), cases[i].r);
                ASSERT_STREQ(t, "untouched");
        }
        tests_context = NULL;
        TEST_OK("next-link-token-errors");
}

int main(void) {
        test_collection_and_project();
        test_parameters();
        test_build_errors();
        test_escape();
        test_token_found();
        test_token_errors();
        return tests_done("test-url");
}
