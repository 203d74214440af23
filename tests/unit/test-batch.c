/* SPDX-License-Identifier: MIT */
/* Unit tests of batch parsing: both record shapes, operations, validation errors, tokens. */
#include "tests-batch.h"

#define GUID_A "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
#define GUID_B "6B29FC40-CA47-1067-B31D-00DD010662DA"

#define FLAT_OK                                                                \
        "{\"rel\":\"System.LinkTypes.Hierarchy\",\"sourceId\":7,\"targetId\":8," \
        "\"changedDate\":\"2014-03-18T17:17:52.02Z\",\"isActive\":true}"

static void check_bad_body_len(const char *what, const char *body, size_t len, const char *needle) {
        Batch *b = NULL;
        _cleanup_free_ char *err = NULL;

        tests_context = what;
        ASSERT_ERR(batch_parse(body, len, &b, &err), -EBADMSG);
        ASSERT_NULL(b);
        ASSERT_NOT_NULL(err);
        if (needle)
                ASSERT_CONTAINS(err, needle);
        tests_context = NULL;
}

static void check_bad_body(const char *what, const char *body, const char *needle) {
        check_bad_body_len(what, body, strlen(body), needle);
}

/* The bad value is values[1], behind a good one: the message must name index and field. */
static void check_bad_value(const char *what, const char *value, const char *needle) {
        _cleanup_free_ char *body = NULL;

        ASSERT_TRUE(asprintf(&body, "{\"values\":[" FLAT_OK ",%s],\"isLastBatch\":true}", value) >
                    0);
        check_bad_body(what, body, needle);
}

static void test_flat(void) {
        _cleanup_(batch_freep) Batch *b = NULL;
        const LinkEvent *e;

        b = tests_parse_batch("{\"values\":[" FLAT_OK ","
                     "{\"rel\":\"System.LinkTypes.Related\",\"sourceId\":9,\"targetId\":10,"
                     "\"changedDate\":\"2014-03-18T17:17:53Z\",\"isActive\":false}],"
                     "\"nextLink\":\"https://dev.azure.com/fabrikam/_apis/wit/reporting/"
                     "workItemLinks?continuationToken=6281123&api-version=7.1\","
                     "\"continuationToken\":\"6281123\",\"isLastBatch\":false}");
        ASSERT_EQ_INT(b->n_events, 2);
        ASSERT_STREQ(b->token, "6281123");
        ASSERT_FALSE(b->is_last);

        e = &b->events[0];
        ASSERT_MEMEQ(e->rel.p, e->rel.len, "System.LinkTypes.Hierarchy", 26);
        ASSERT_NULL(e->link_type.p);
        ASSERT_EQ_INT(e->source_id, 7);
        ASSERT_EQ_INT(e->target_id, 8);
        ASSERT_MEMEQ(e->changed_date.p, e->changed_date.len, "2014-03-18T17:17:52.02Z", 23);
        ASSERT_EQ_INT(e->operation, LINK_OPERATION_CREATE);
        ASSERT_EQ_INT(e->is_active_reported, 1);
        ASSERT_NULL(e->changed_by_id.p);
        ASSERT_NULL(e->changed_by.p);
        ASSERT_NULL(e->changed_by_display_name.p);
        ASSERT_NULL(e->comment.p);
        ASSERT_NULL(e->source_project_id.p);
        ASSERT_NULL(e->target_project_id.p);

        e = &b->events[1];
        ASSERT_MEMEQ(e->rel.p, e->rel.len, "System.LinkTypes.Related", 24);
        ASSERT_EQ_INT(e->source_id, 9);
        ASSERT_EQ_INT(e->target_id, 10);
        ASSERT_EQ_INT(e->operation, LINK_OPERATION_REMOVE);
        ASSERT_EQ_INT(e->is_active_reported, 0);
        TEST_OK("flat-shape");
}

static void test_nested(void) {
        _cleanup_(batch_freep) Batch *b = NULL;
        const LinkEvent *e;

        b = tests_parse_batch("{\"values\":[{\"rel\":\"System.LinkTypes.Hierarchy\",\"attributes\":{"
                     "\"linkType\":\"System.LinkTypes.Hierarchy-Forward\",\"sourceId\":28,"
                     "\"targetId\":58,\"isActive\":true,\"changedDate\":\"2024-11-09T14:28:13.133Z\","
                     "\"changedBy\":{\"id\":\"" GUID_A "\",\"displayName\":\"Ana\","
                     "\"uniqueName\":\"ana@example.com\",\"descriptor\":\"aad.x\"},"
                     "\"comment\":\"\",\"changedOperation\":\"create\","
                     "\"sourceProjectId\":\"" GUID_A "\",\"targetProjectId\":\"" GUID_B "\"}}],"
                     "\"continuationToken\":\"42\",\"isLastBatch\":true}");
        ASSERT_EQ_INT(b->n_events, 1);
        ASSERT_STREQ(b->token, "42");
        ASSERT_TRUE(b->is_last);

        e = &b->events[0];
        ASSERT_MEMEQ(e->rel.p, e->rel.len, "System.LinkTypes.Hierarchy", 26);
        ASSERT_MEMEQ(e->link_type.p, e->link_type.len, "System.LinkTypes.Hierarchy-Forward", 34);
        ASSERT_EQ_INT(e->source_id, 28);
        ASSERT_EQ_INT(e->target_id, 58);
        ASSERT_MEMEQ(e->changed_date.p, e->changed_date.len, "2024-11-09T14:28:13.133Z", 24);
        ASSERT_EQ_INT(e->operation, LINK_OPERATION_CREATE);
        ASSERT_EQ_INT(e->is_active_reported, 1);
        ASSERT_MEMEQ(e->changed_by_id.p, e->changed_by_id.len, GUID_A, 36);
        ASSERT_MEMEQ(e->changed_by.p, e->changed_by.len, "ana@example.com", 15);
        ASSERT_MEMEQ(e->changed_by_display_name.p, e->changed_by_display_name.len, "Ana", 3);
        ASSERT_NOT_NULL(e->comment.p); /* "" is not null */
        ASSERT_EQ_INT(e->comment.len, 0);
        ASSERT_MEMEQ(e->source_project_id.p, e->source_project_id.len, GUID_A, 36);
        ASSERT_MEMEQ(e->target_project_id.p, e->target_project_id.len, GUID_B, 36);
        TEST_OK("nested-shape");
}

static void test_operation(void) {
        _cleanup_(batch_freep) Batch *b = NULL;

        b = tests_parse_batch("{\"values\":["
                     /* changedOperation decides, even against isActive */
                     "{\"rel\":\"r\",\"attributes\":{\"sourceId\":1,\"targetId\":2,"
                     "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":true,"
                     "\"changedOperation\":\"remove\"}},"
                     "{\"rel\":\"r\",\"attributes\":{\"sourceId\":1,\"targetId\":2,"
                     "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":false,"
                     "\"changedOperation\":\"create\"}},"
                     /* changedOperation without isActive */
                     "{\"rel\":\"r\",\"attributes\":{\"sourceId\":1,\"targetId\":2,"
                     "\"changedDate\":\"2024-01-01T00:00:00Z\",\"changedOperation\":\"remove\"}},"
                     /* isActive decides when changedOperation is absent or null */
                     "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,"
                     "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":false},"
                     "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,"
                     "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":true,"
                     "\"changedOperation\":null}"
                     "]}");
        ASSERT_EQ_INT(b->n_events, 5);
        ASSERT_EQ_INT(b->events[0].operation, LINK_OPERATION_REMOVE);
        ASSERT_EQ_INT(b->events[0].is_active_reported, 1);
        ASSERT_EQ_INT(b->events[1].operation, LINK_OPERATION_CREATE);
        ASSERT_EQ_INT(b->events[1].is_active_reported, 0);
        ASSERT_EQ_INT(b->events[2].operation, LINK_OPERATION_REMOVE);
        ASSERT_EQ_INT(b->events[2].is_active_reported, -1);
        ASSERT_EQ_INT(b->events[3].operation, LINK_OPERATION_REMOVE);
        ASSERT_EQ_INT(b->events[3].is_active_reported, 0);
        ASSERT_EQ_INT(b->events[4].operation, LINK_OPERATION_CREATE);
        ASSERT_EQ_INT(b->events[4].is_active_reported, 1);
        ASSERT_FALSE(b->is_last); /* isLastBatch absent, values not empty */
        ASSERT_NULL(b->token);

        check_bad_value("neither changedOperation nor isActive",
                        "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,"
                        "\"changedDate\":\"2024-01-01T00:00:00Z\"}",
                        "values[1]");
        check_bad_value("both null",
                        "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,"
                        "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":null,"
                        "\"changedOperation\":null}",
                        "changedOperation");
        TEST_OK("operation");
}

#define V(fields) "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,\"isActive\":true," fields "}"
#define D(date)                                                                \
        "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,\"isActive\":true,\"changedDate\":\"" date \
        "\"}"

static void test_value_errors(void) {
        static const struct {
                const char *what, *value, *needle;
        } cases[] = {
                { "missing rel", "{\"sourceId\":1,\"targetId\":2,\"isActive\":true,"
                                 "\"changedDate\":\"2024-01-01T00:00:00Z\"}",
                  "values[1].rel" },
                { "null rel", "{\"rel\":null,\"sourceId\":1,\"targetId\":2,\"isActive\":true,"
                              "\"changedDate\":\"2024-01-01T00:00:00Z\"}",
                  "values[1].rel" },
                { "empty rel", "{\"rel\":\"\",\"sourceId\":1,\"targetId\":2,\"isActive\":true,"
                               "\"changedDate\":\"2024-01-01T00:00:00Z\"}",
                  "values[1].rel" },
                { "rel not a string", "{\"rel\":5,\"sourceId\":1,\"targetId\":2,\"isActive\":true,"
                                      "\"changedDate\":\"2024-01-01T00:00:00Z\"}",
                  "values[1].rel" },
                { "sourceId a string", "{\"rel\":\"r\",\"sourceId\":\"7\",\"targetId\":2,"
                                       "\"isActive\":true,\"changedDate\":\"2024-01-01T00:00:00Z\"}",
                  "values[1].sourceId" },
                { "sourceId missing", "{\"rel\":\"r\",\"targetId\":2,\"isActive\":true,"
                                      "\"changedDate\":\"2024-01-01T00:00:00Z\"}",
                  "values[1].sourceId" },
                { "sourceId a float", "{\"rel\":\"r\",\"sourceId\":7.0,\"targetId\":2,"
                                      "\"isActive\":true,\"changedDate\":\"2024-01-01T00:00:00Z\"}",
                  "values[1].sourceId" },
                { "sourceId 7.5", "{\"rel\":\"r\",\"sourceId\":7.5,\"targetId\":2,"
                                  "\"isActive\":true,\"changedDate\":\"2024-01-01T00:00:00Z\"}",
                  "values[1].sourceId" },
                { "targetId 0", "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":0,"
                                "\"isActive\":true,\"changedDate\":\"2024-01-01T00:00:00Z\"}",
                  "values[1].targetId" },
                { "targetId negative", "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":-3,"
                                       "\"isActive\":true,\"changedDate\":\"2024-01-01T00:00:00Z\"}",
                  "values[1].targetId" },
                { "sourceId 2147483648", "{\"rel\":\"r\",\"sourceId\":2147483648,\"targetId\":2,"
                                         "\"isActive\":true,\"changedDate\":\"2024-01-01T00:00:00Z\"}",
                  "values[1].sourceId" },
                { "targetId 4294967297", "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":4294967297,"
                                         "\"isActive\":true,\"changedDate\":\"2024-01-01T00:00:00Z\"}",
                  "values[1].targetId" },
                { "targetId huge", "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":99999999999999999999,"
                                   "\"isActive\":true,\"changedDate\":\"2024-01-01T00:00:00Z\"}",
                  NULL /* jansson refuses the number itself */ },
                { "changedDate missing", V("\"x\":1"), "values[1].changedDate" },
                { "changedDate a number", V("\"changedDate\":1395163072"), "values[1].changedDate" },
                { "changedDate 8 fractional digits", D("2014-03-18T17:17:52.12345678Z"),
                  "values[1].changedDate" },
                { "changedDate without Z", D("2014-03-18T17:17:52.02"), "values[1].changedDate" },
                { "changedDate with +01:00", D("2014-03-18T17:17:52.02+01:00"),
                  "values[1].changedDate" },
                { "changedDate date only", D("2014-03-18"), "values[1].changedDate" },
                { "changedDate empty", D(""), "values[1].changedDate" },
                { "isActive a string",
                  "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,\"isActive\":\"yes\","
                  "\"changedDate\":\"2024-01-01T00:00:00Z\"}",
                  "values[1].isActive" },
                { "unknown changedOperation",
                  V("\"changedDate\":\"2024-01-01T00:00:00Z\",\"changedOperation\":\"update\""),
                  "values[1].changedOperation" },
                { "changedOperation not a string",
                  V("\"changedDate\":\"2024-01-01T00:00:00Z\",\"changedOperation\":1"),
                  "values[1].changedOperation" },
                { "changedBy a string",
                  V("\"changedDate\":\"2024-01-01T00:00:00Z\",\"changedBy\":\"ana\""),
                  "values[1].changedBy" },
                { "changedBy.uniqueName a number",
                  V("\"changedDate\":\"2024-01-01T00:00:00Z\",\"changedBy\":{\"uniqueName\":1}"),
                  "values[1].changedBy.uniqueName" },
                { "comment an object",
                  V("\"changedDate\":\"2024-01-01T00:00:00Z\",\"comment\":{}"),
                  "values[1].comment" },
                { "bad sourceProjectId",
                  V("\"changedDate\":\"2024-01-01T00:00:00Z\",\"sourceProjectId\":\"Fabrikam\""),
                  "values[1].sourceProjectId" },
                { "bad targetProjectId (a 'g')",
                  V("\"changedDate\":\"2024-01-01T00:00:00Z\","
                    "\"targetProjectId\":\"3f2504e0-4f89-11d3-9a0c-0305e82c330g\""),
                  "values[1].targetProjectId" },
                { "targetProjectId in braces",
                  V("\"changedDate\":\"2024-01-01T00:00:00Z\","
                    "\"targetProjectId\":\"{" GUID_A "}\""),
                  "values[1].targetProjectId" },
                { "value not an object", "[1,2]", "values[1]" },
                { "attributes not an object",
                  "{\"rel\":\"r\",\"attributes\":[1]}", "values[1].attributes" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++)
                check_bad_value(cases[i].what, cases[i].value, cases[i].needle);
        TEST_OK("value-errors");
}

static void test_body_errors(void) {
        static const char truncated[] = "{\"values\":[" FLAT_OK "],\"isLastBatch\":true}";

        check_bad_body("values not an array", "{\"values\":{},\"isLastBatch\":true}", "values");
        check_bad_body("values missing", "{\"count\":0}", "values");
        check_bad_body("values null", "{\"values\":null}", "values");
        check_bad_body("body an array", "[]", "object");
        check_bad_body("body a string", "\"values\"", NULL);
        check_bad_body("invalid JSON", "{\"values\":[}", "JSON");
        check_bad_body("empty body", "", "JSON");
        check_bad_body("HTML body", "<html><body>Sign in</body></html>", "JSON");
        check_bad_body("trailing garbage", "{\"values\":[]} x", "JSON");
        for (size_t n = 1; n < sizeof(truncated) - 1; n += 7)
                check_bad_body_len("truncated JSON", truncated, n, "JSON");
        check_bad_body_len("truncated JSON (last byte)", truncated, sizeof(truncated) - 2, "JSON");
        check_bad_body("isLastBatch a string", "{\"values\":[],\"isLastBatch\":\"yes\"}",
                       "isLastBatch");
        check_bad_body("continuationToken an object", "{\"values\":[],\"continuationToken\":{}}",
                       "continuationToken");
        check_bad_body("continuationToken with a control character",
                       "{\"values\":[],\"continuationToken\":\"a\\nb\"}", "continuationToken");
        check_bad_body("nextLink not a string", "{\"values\":[],\"nextLink\":5}", "nextLink");
        check_bad_body("nextLink with a malformed token",
                       "{\"values\":[],\"nextLink\":\"https://x.example/?continuationToken=%zz\"}",
                       "nextLink");
        TEST_OK("body-errors");
}

static void test_ids(void) {
        _cleanup_(batch_freep) Batch *b = NULL;

        b = tests_parse_batch("{\"values\":[{\"rel\":\"r\",\"sourceId\":2147483647,\"targetId\":1,"
                     "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":true}]}");
        ASSERT_EQ_INT(b->events[0].source_id, 2147483647);
        ASSERT_EQ_INT(b->events[0].target_id, 1);
        TEST_OK("ids");
}

static void test_dates(void) {
        static const char *const good[] = {
                "2014-03-18T17:17:52Z",         "2014-03-18T17:17:52.0Z",
                "2014-03-18T17:17:52.02Z",      "2014-03-18T17:17:52.1234567Z",
                "1999-12-31T23:59:59.9999999Z", "2024-02-29T00:00:00Z",
        };
        static const char *const bad[] = {
                "",
                "2014-03-18",
                "2014-03-18T17:17:52",
                "2014-03-18T17:17:52.02",
                "2014-03-18T17:17:52.12345678Z",
                "2014-03-18T17:17:52.Z",
                "2014-03-18T17:17:52.02+01:00",
                "2014-03-18T17:17:52+00:00",
                "2014-03-18 17:17:52Z",
                "2014-03-18T17:17:52.02Zx",
                "2014-13-18T17:17:52Z",
                "2014-00-18T17:17:52Z",
                "2014-03-32T17:17:52Z",
                "2014-03-00T17:17:52Z",
                "2014-03-18T24:00:00Z",
                "2014-03-18T17:60:00Z",
                "2014-03-18T17:17:61Z",
                "0000-03-18T17:17:52Z",
                "14-03-18T17:17:52Z",
                "2014-3-18T17:17:52Z",
                "2014-03-18T17:17:5aZ",
                "+2014-03-18T17:17:52Z",
                /* calendar-impossible days that PostgreSQL's timestamptz would refuse */
                "2014-02-30T00:00:00Z",
                "2023-02-29T00:00:00Z",
                "2014-04-31T00:00:00Z",
        };
        _cleanup_(batch_freep) Batch *b = NULL;

        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                tests_context = good[i];
                ASSERT_TRUE(batch_valid_date(good[i], strlen(good[i])));
                /* The length is what counts, not a terminating NUL. */
                ASSERT_FALSE(batch_valid_date(good[i], strlen(good[i]) - 1));
        }
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                tests_context = bad[i];
                ASSERT_FALSE(batch_valid_date(bad[i], strlen(bad[i])));
        }
        tests_context = NULL;

        /* 0 and 7 fractional digits through the parser. */
        b = tests_parse_batch("{\"values\":[" D("2014-03-18T17:17:52Z") "," D("2014-03-18T17:17:52.1234567Z")
                     "]}");
        ASSERT_EQ_INT(b->n_events, 2);
        ASSERT_MEMEQ(b->events[0].changed_date.p, b->events[0].changed_date.len,
                     "2014-03-18T17:17:52Z", 20);
        ASSERT_MEMEQ(b->events[1].changed_date.p, b->events[1].changed_date.len,
                     "2014-03-18T17:17:52.1234567Z", 28);
        TEST_OK("dates");
}

static void test_guids(void) {
        static const char *const bad[] = {
                "",
                "3f2504e0-4f89-11d3-9a0c-0305e82c330",
                "3f2504e0-4f89-11d3-9a0c-0305e82c33011",
                "3f2504e04f8911d39a0c0305e82c3301",
                "3f2504e0-4f89-11d3-9a0c_0305e82c3301",
                "3f2504e0-4f89-11d3-9a0c-0305e82c330g",
                "{3f2504e0-4f89-11d3-9a0c-0305e82c33}",
                "3f2504e-04f89-11d3-9a0c-0305e82c3301",
        };

        ASSERT_TRUE(batch_valid_guid(GUID_A, 36));
        ASSERT_TRUE(batch_valid_guid(GUID_B, 36));
        ASSERT_TRUE(batch_valid_guid("00000000-0000-0000-0000-000000000000", 36));
        ASSERT_FALSE(batch_valid_guid(GUID_A, 35));
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                tests_context = bad[i];
                ASSERT_FALSE(batch_valid_guid(bad[i], strlen(bad[i])));
        }
        tests_context = NULL;
        TEST_OK("guids");
}

static void test_nul_in_comment(void) {
        _cleanup_(batch_freep) Batch *b = NULL;
        const LinkEvent *e;

        b = tests_parse_batch("{\"values\":[" V("\"changedDate\":\"2024-01-01T00:00:00Z\","
                                       "\"comment\":\"a\\u0000b\\u0000\"") "]}");
        e = &b->events[0];
        ASSERT_NOT_NULL(e->comment.p);
        ASSERT_EQ_INT(e->comment.len, 4);
        ASSERT_MEMEQ(e->comment.p, e->comment.len, "a\0b\0", 4);
        TEST_OK("nul-in-comment");
}

static void test_unknown_and_null_fields(void) {
        _cleanup_(batch_freep) Batch *b = NULL;
        const LinkEvent *e;

        b = tests_parse_batch("{\"count\":2,\"$id\":\"1\",\"extra\":{\"deep\":[1,2,{}]},\"values\":["
                     /* nested with unknown and null fields */
                     "{\"rel\":\"r\",\"url\":\"https://x\",\"attributes\":{\"sourceId\":1,"
                     "\"targetId\":2,\"changedDate\":\"2024-01-01T00:00:00Z\","
                     "\"changedOperation\":\"create\",\"isActive\":null,\"linkType\":null,"
                     "\"changedBy\":null,\"comment\":null,\"sourceProjectId\":null,"
                     "\"targetProjectId\":null,\"isLocked\":false,\"whatever\":[1]}},"
                     /* flat with null optional fields and a null attributes */
                     "{\"rel\":\"r\",\"attributes\":null,\"sourceId\":3,\"targetId\":4,"
                     "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":true,"
                     "\"changedBy\":{\"id\":null,\"displayName\":null,\"uniqueName\":null,"
                     "\"imageUrl\":\"x\"},\"newField\":{\"a\":1}}"
                     "],\"isLastBatch\":null,\"continuationToken\":null}");
        ASSERT_EQ_INT(b->n_events, 2);
        ASSERT_FALSE(b->is_last); /* null isLastBatch is absent: values not empty */
        ASSERT_NULL(b->token);

        e = &b->events[0];
        ASSERT_EQ_INT(e->source_id, 1);
        ASSERT_EQ_INT(e->is_active_reported, -1);
        ASSERT_EQ_INT(e->operation, LINK_OPERATION_CREATE);
        ASSERT_NULL(e->link_type.p);
        ASSERT_NULL(e->changed_by_id.p);
        ASSERT_NULL(e->changed_by.p);
        ASSERT_NULL(e->changed_by_display_name.p);
        ASSERT_NULL(e->comment.p);
        ASSERT_NULL(e->source_project_id.p);
        ASSERT_NULL(e->target_project_id.p);

        e = &b->events[1];
        ASSERT_EQ_INT(e->source_id, 3);
        ASSERT_EQ_INT(e->target_id, 4);
        ASSERT_NULL(e->changed_by_id.p);
        ASSERT_NULL(e->changed_by.p);
        ASSERT_NULL(e->changed_by_display_name.p);
        TEST_OK("unknown-and-null-fields");
}

static void test_tokens(void) {
        static const struct {
                const char *what, *body, *token;
        } cases[] = {
                { "string", "{\"values\":[],\"continuationToken\":\"813;350;1\"}", "813;350;1" },
                { "integer", "{\"values\":[],\"continuationToken\":6281123}", "6281123" },
                { "body wins over nextLink",
                  "{\"values\":[],\"continuationToken\":\"7\","
                  "\"nextLink\":\"https://dev.azure.com/f/_apis/wit/reporting/workItemLinks?"
                  "continuationToken=8&api-version=7.1\"}",
                  "7" },
                { "from nextLink",
                  "{\"values\":[],\"nextLink\":\"https://dev.azure.com/f/_apis/wit/reporting/"
                  "workItemLinks?continuationToken=6281123&api-version=7.1\"}",
                  "6281123" },
                { "from nextLink, percent-encoded",
                  "{\"values\":[],\"nextLink\":\"https://dev.azure.com/f/_apis/wit/reporting/"
                  "workItemLinks?api-version=7.1&continuationToken=813%3B350%3B1\"}",
                  "813;350;1" },
                { "from nextLink on another host and api-version",
                  "{\"values\":[],\"nextLink\":\"https://fabrikam.visualstudio.com/_apis/wit/"
                  "reporting/workItemLinks?continuationToken=99&api-version=5.0\"}",
                  "99" },
                { "null token, nextLink",
                  "{\"values\":[],\"continuationToken\":null,"
                  "\"nextLink\":\"https://x.example/?continuationToken=5\"}",
                  "5" },
                { "neither", "{\"values\":[]}", NULL },
                { "nextLink without a token",
                  "{\"values\":[],\"nextLink\":\"https://x.example/?api-version=7.1\"}", NULL },
                { "null nextLink", "{\"values\":[],\"nextLink\":null}", NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_(batch_freep) Batch *b = NULL;

                tests_context = cases[i].what;
                b = tests_parse_batch(cases[i].body);
                if (cases[i].token)
                        ASSERT_STREQ(b->token, cases[i].token);
                else
                        ASSERT_NULL(b->token);
        }
        tests_context = NULL;
        TEST_OK("tokens");
}

static void test_last_batch(void) {
        static const struct {
                const char *what, *body;
                bool is_last;
                size_t n;
        } cases[] = {
                { "true, empty", "{\"values\":[],\"isLastBatch\":true}", true, 0 },
                { "true, with values", "{\"values\":[" FLAT_OK "],\"isLastBatch\":true}", true, 1 },
                { "false, empty", "{\"values\":[],\"isLastBatch\":false}", false, 0 },
                { "false, with values", "{\"values\":[" FLAT_OK "],\"isLastBatch\":false}", false, 1 },
                { "absent, empty", "{\"values\":[]}", true, 0 },
                { "absent, with values", "{\"values\":[" FLAT_OK "," FLAT_OK "]}", false, 2 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_(batch_freep) Batch *b = NULL;

                tests_context = cases[i].what;
                b = tests_parse_batch(cases[i].body);
                ASSERT_EQ_INT(b->is_last, cases[i].is_last);
                ASSERT_EQ_INT(b->n_events, cases[i].n);
                if (cases[i].n == 0)
                        ASSERT_NULL(b->events);
        }
        tests_context = NULL;
        TEST_OK("is-last-batch");
}

static void test_names(void) {
        ASSERT_STREQ(link_operation_to_string(LINK_OPERATION_CREATE), "create");
        ASSERT_STREQ(link_operation_to_string(LINK_OPERATION_REMOVE), "remove");
        ASSERT_NULL(link_operation_to_string(_LINK_OPERATION_MAX));
        ASSERT_NULL(batch_free(NULL));
        TEST_OK("names");
}

int main(void) {
        test_flat();
        test_nested();
        test_operation();
        test_value_errors();
        test_body_errors();
        test_ids();
        test_dates();
        test_guids();
        test_nul_in_comment();
        test_unknown_and_null_fields();
        test_tokens();
        test_last_batch();
        test_names();
        return tests_done("test-batch");
}
