/* SPDX-License-Identifier: MIT */
/* Unit tests of the COPY text form of a batch: column order, NULLs, escaping, U+0000. */
#include "store.h"
#include "tests-batch.h"

#define GUID_A "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
#define GUID_B "6b29fc40-ca47-1067-b31d-00dd010662da"
#define GUID_U "11111111-2222-3333-4444-555555555555"

/* Formats the batch and compares with the expected bytes, which never hold a NUL. */
static void check_copy(const char *what, const char *body, const char *expected) {
        _cleanup_(batch_freep) Batch *b = NULL;
        _cleanup_free_ char *out = NULL;
        size_t size = 12345;

        tests_context = what;
        b = tests_parse_batch(body);
        ASSERT_OK(store_format_copy(b, &out, &size));
        ASSERT_NOT_NULL(out);
        ASSERT_NULL(memchr(out, 0, size));
        ASSERT_EQ_INT(strlen(out), size);
        ASSERT_MEMEQ(out, size, expected, strlen(expected));
        tests_context = NULL;
}

static void test_columns(void) {
        /* seq, rel, link_type, source_id, target_id, changed_date, op, is_active_reported,
         * changed_by_id, changed_by, changed_by_display_name, comment, source_project_id,
         * target_project_id */
        check_copy("nested, every column",
                   "{\"values\":[{\"rel\":\"System.LinkTypes.Hierarchy\",\"attributes\":{"
                   "\"linkType\":\"System.LinkTypes.Hierarchy-Forward\",\"sourceId\":28,"
                   "\"targetId\":58,\"isActive\":true,\"changedDate\":\"2024-11-09T14:28:13.133Z\","
                   "\"changedBy\":{\"id\":\"" GUID_U "\",\"displayName\":\"Ana\","
                   "\"uniqueName\":\"ana@example.com\",\"descriptor\":\"aad.x\"},"
                   "\"comment\":\"re-parented\",\"changedOperation\":\"create\","
                   "\"sourceProjectId\":\"" GUID_A "\",\"targetProjectId\":\"" GUID_B "\"}}]}",
                   "0\tSystem.LinkTypes.Hierarchy\tSystem.LinkTypes.Hierarchy-Forward\t28\t58\t"
                   "2024-11-09T14:28:13.133Z\tcreate\tt\t" GUID_U "\tana@example.com\tAna\t"
                   "re-parented\t" GUID_A "\t" GUID_B "\n");
        check_copy("flat, minimal: NULLs",
                   "{\"values\":[{\"rel\":\"System.LinkTypes.Related\",\"sourceId\":7,"
                   "\"targetId\":2147483647,\"changedDate\":\"2014-03-18T17:17:52.02Z\","
                   "\"isActive\":false}]}",
                   "0\tSystem.LinkTypes.Related\t\\N\t7\t2147483647\t2014-03-18T17:17:52.02Z\t"
                   "remove\tf\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n");
        check_copy("empty strings are not NULL",
                   "{\"values\":[{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,"
                   "\"changedDate\":\"2024-01-01T00:00:00Z\",\"changedOperation\":\"remove\","
                   "\"linkType\":\"\",\"comment\":\"\",\"changedBy\":{\"id\":\"\","
                   "\"uniqueName\":\"\",\"displayName\":\"\"}}]}",
                   "0\tr\t\t1\t2\t2024-01-01T00:00:00Z\tremove\t\\N\t\t\t\t\t\\N\t\\N\n");
        check_copy("sequence numbers follow the feed's order",
                   "{\"values\":["
                   "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,"
                   "\"changedDate\":\"2024-01-01T00:00:00Z\",\"changedOperation\":\"remove\"},"
                   "{\"rel\":\"r\",\"sourceId\":3,\"targetId\":2,"
                   "\"changedDate\":\"2024-01-01T00:00:00Z\",\"changedOperation\":\"create\","
                   "\"isActive\":false},"
                   "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,"
                   "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":true}]}",
                   "0\tr\t\\N\t1\t2\t2024-01-01T00:00:00Z\tremove\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n"
                   "1\tr\t\\N\t3\t2\t2024-01-01T00:00:00Z\tcreate\tf\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n"
                   "2\tr\t\\N\t1\t2\t2024-01-01T00:00:00Z\tcreate\tt\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n");
        check_copy("empty batch", "{\"values\":[],\"isLastBatch\":true}", "");
        TEST_OK("columns");
}

static void test_escaping(void) {
        check_copy("backslash, tab, newline, CR",
                   "{\"values\":[{\"rel\":\"r\\\\x\",\"sourceId\":1,\"targetId\":2,"
                   "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":true,"
                   "\"comment\":\"a\\\\b\\tc\\nd\\re\\r\\n\","
                   "\"changedBy\":{\"displayName\":\"\\\\N\",\"uniqueName\":\"tab\\there\"}}]}",
                   "0\tr\\\\x\t\\N\t1\t2\t2024-01-01T00:00:00Z\tcreate\tt\t\\N\t"
                   "tab\\there\t\\\\N\ta\\\\b\\tc\\nd\\re\\r\\n\t\\N\t\\N\n");
        check_copy("U+0000 becomes U+FFFD",
                   "{\"values\":[{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,"
                   "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":true,"
                   "\"comment\":\"\\u0000a\\u0000\\u0000b\\u0000\"}]}",
                   "0\tr\t\\N\t1\t2\t2024-01-01T00:00:00Z\tcreate\tt\t\\N\t\\N\t\\N\t"
                   "\xEF\xBF\xBD" "a\xEF\xBF\xBD\xEF\xBF\xBD" "b\xEF\xBF\xBD\t\\N\t\\N\n");
        check_copy("emoji and right-to-left text verbatim",
                   "{\"values\":[{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,"
                   "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":true,"
                   "\"comment\":\"\\ud83d\\ude00 \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD done\","
                   "\"changedBy\":{\"displayName\":\"\xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D \xD8\xB9\xD9"
                   "\x84\xD9\x8A\",\"uniqueName\":\"\xE2\x80\x8F" "rtl@example.com\"}}]}",
                   "0\tr\t\\N\t1\t2\t2024-01-01T00:00:00Z\tcreate\tt\t\\N\t"
                   "\xE2\x80\x8F" "rtl@example.com\t\xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D \xD8\xB9\xD9"
                   "\x84\xD9\x8A\t\xF0\x9F\x98\x80 \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD done\t\\N\t\\N\n");
        check_copy("other control characters pass through",
                   "{\"values\":[{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,"
                   "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":true,"
                   "\"comment\":\"\\u0001\\u001f\\u007f\"}]}",
                   "0\tr\t\\N\t1\t2\t2024-01-01T00:00:00Z\tcreate\tt\t\\N\t\\N\t\\N\t"
                   "\x01\x1f\x7f\t\\N\t\\N\n");
        TEST_OK("escaping");
}

static void test_is_active(void) {
        check_copy("t/f/\\N",
                   "{\"values\":["
                   "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,"
                   "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":true,"
                   "\"changedOperation\":\"remove\"},"
                   "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,"
                   "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":false},"
                   "{\"rel\":\"r\",\"sourceId\":1,\"targetId\":2,"
                   "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":null,"
                   "\"changedOperation\":\"create\"}]}",
                   "0\tr\t\\N\t1\t2\t2024-01-01T00:00:00Z\tremove\tt\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n"
                   "1\tr\t\\N\t1\t2\t2024-01-01T00:00:00Z\tremove\tf\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n"
                   "2\tr\t\\N\t1\t2\t2024-01-01T00:00:00Z\tcreate\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n");
        TEST_OK("is-active-reported");
}

/* Every line has exactly 14 columns whatever the content. */
static void test_column_count(void) {
        _cleanup_(batch_freep) Batch *b = NULL;
        _cleanup_free_ char *out = NULL;
        size_t size = 0, lines = 0, tabs = 0;

        b = tests_parse_batch("{\"values\":[{\"rel\":\"\\t\\t\",\"sourceId\":1,\"targetId\":2,"
                  "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":true,"
                  "\"linkType\":\"\\n\",\"comment\":\"\\t\\n\\r\\\\\\u0000\","
                  "\"changedBy\":{\"id\":\"\\t\",\"uniqueName\":\"\\n\",\"displayName\":\"\\r\"},"
                  "\"sourceProjectId\":\"" GUID_A "\"},"
                  "{\"rel\":\"r\",\"sourceId\":3,\"targetId\":4,"
                  "\"changedDate\":\"2024-01-01T00:00:00Z\",\"isActive\":false}]}");
        ASSERT_OK(store_format_copy(b, &out, &size));
        for (size_t i = 0; i < size; i++) {
                if (out[i] == '\n') {
                        ASSERT_EQ_INT(tabs, 13);
                        lines++;
                        tabs = 0;
                } else if (out[i] == '\t')
                        tabs++;
        }
        ASSERT_EQ_INT(lines, 2);
        ASSERT_EQ_INT(tabs, 0);
        ASSERT_TRUE(size > 0 && out[size - 1] == '\n');
        TEST_OK("column-count");
}

int main(void) {
        test_columns();
        test_escaping();
        test_is_active();
        test_column_count();
        return tests_done("test-store-copy");
}
