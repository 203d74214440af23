/* SPDX-License-Identifier: MIT */
/* Unit tests of the string tables: every state and kind has a distinct name, out of range NULL. */
#include "batch.h"
#include "config.h"
#include "feed.h"
#include "log.h"
#include "store.h"
#include "tests.h"

/* Checks names for 0..max-1 and NULL for max, max+1 and -1 (as the enum type would carry it). */
static void check_table(const char *what, int max, const char *(*name)(int)) {
        tests_context = what;
        ASSERT_TRUE(max > 0);
        for (int i = 0; i < max; i++) {
                const char *n = name(i);

                ASSERT_NOT_NULL(n);
                ASSERT_TRUE(n[0] != 0);
                for (int j = 0; j < i; j++)
                        ASSERT_TRUE(strcmp(n, name(j)) != 0);
        }
        ASSERT_NULL(name(max));
        ASSERT_NULL(name(max + 1));
        ASSERT_NULL(name(-1));
        tests_context = NULL;
}

static const char *feed_state_name(int i) {
        return feed_state_to_string((FeedState) i);
}

static const char *feed_failure_name(int i) {
        return feed_failure_to_string((FeedFailure) i);
}

static const char *store_state_name(int i) {
        return store_state_to_string((StoreState) i);
}

static const char *link_operation_name(int i) {
        return link_operation_to_string((LinkOperation) i);
}

static const char *auth_kind_name(int i) {
        return auth_kind_to_string((AuthKind) i);
}

static void test_tables(void) {
        check_table("FeedState", _FEED_STATE_MAX, feed_state_name);
        check_table("FeedFailure", _FEED_FAILURE_MAX, feed_failure_name);
        check_table("StoreState", _STORE_STATE_MAX, store_state_name);
        check_table("LinkOperation", _LINK_OPERATION_MAX, link_operation_name);
        check_table("AuthKind", _AUTH_KIND_MAX, auth_kind_name);

        /* Names that operators see in --status, the journal and the warehouse. */
        ASSERT_STREQ(feed_state_to_string(FEED_NEW), "new");
        ASSERT_STREQ(feed_state_to_string(FEED_WAITING), "waiting");
        ASSERT_STREQ(feed_state_to_string(FEED_BACKOFF), "backoff");
        ASSERT_STREQ(feed_state_to_string(FEED_STOPPED), "stopped");
        ASSERT_STREQ(feed_failure_to_string(FEED_FAILURE_NONE), "none");
        ASSERT_STREQ(store_state_to_string(STORE_READY), "ready");
        ASSERT_STREQ(link_operation_to_string(LINK_OPERATION_CREATE), "create");
        ASSERT_STREQ(link_operation_to_string(LINK_OPERATION_REMOVE), "remove");
        ASSERT_STREQ(auth_kind_to_string(AUTH_PAT), "pat");
        ASSERT_STREQ(auth_kind_to_string(AUTH_BEARER), "bearer");
        TEST_OK("string-tables");
}

static void test_log_levels(void) {
        static const struct {
                const char *s;
                int level;
        } aliases[] = {
                { "error", LOG_ERR },   { "warn", LOG_WARNING }, { "INFO", LOG_INFO },
                { "Debug", LOG_DEBUG }, { "WARNING", LOG_WARNING },
        };
        static const char *const bad[] = { "", "loud", "inf", "debug2", "7", " info" };

        for (int l = LOG_EMERG; l <= LOG_DEBUG; l++) {
                const char *n = log_level_to_string(l);

                ASSERT_NOT_NULL(n);
                ASSERT_EQ_INT(log_level_from_string(n), l);
                for (int j = LOG_EMERG; j < l; j++)
                        ASSERT_TRUE(strcmp(n, log_level_to_string(j)) != 0);
        }
        ASSERT_STREQ(log_level_to_string(LOG_ERR), "err");
        ASSERT_STREQ(log_level_to_string(LOG_WARNING), "warning");
        ASSERT_STREQ(log_level_to_string(LOG_NOTICE), "notice");
        ASSERT_STREQ(log_level_to_string(LOG_INFO), "info");
        ASSERT_STREQ(log_level_to_string(LOG_DEBUG), "debug");
        ASSERT_NULL(log_level_to_string(-1));
        ASSERT_NULL(log_level_to_string(LOG_DEBUG + 1));
        for (size_t i = 0; i < ELEMENTSOF(aliases); i++) {
                tests_context = aliases[i].s;
                ASSERT_EQ_INT(log_level_from_string(aliases[i].s), aliases[i].level);
        }
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                tests_context = bad[i];
                ASSERT_TRUE(log_level_from_string(bad[i]) < 0);
        }
        tests_context = NULL;
        TEST_OK("log-levels");
}

int main(void) {
        test_tables();
        test_log_levels();
        return tests_done("test-feed-states");
}
