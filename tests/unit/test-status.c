/* SPDX-License-Identifier: MIT */
/* Unit tests of --status's time spans and its default lag threshold. */
#include <math.h>

#include "status.h"
#include "tests.h"

static void check_span(double seconds, const char *expected) {
        char buf[32];

        ASSERT_STREQ(status_format_span(seconds, buf, sizeof(buf)), expected);
}

static void test_format_span(void) {
        check_span(NAN, "-");
        check_span(-3, "0s");
        check_span(0, "0s");
        check_span(0.4, "0s");
        check_span(0.6, "1s");
        check_span(45, "45s");
        check_span(60, "1min");
        check_span(192, "3min 12s");
        check_span(3600, "1h");
        check_span(3601, "1h");          /* two units at most, and only adjacent ones */
        check_span(7500, "2h 5min");
        check_span(86400 * 3 + 3600 * 4 + 59, "3d 4h");
        check_span(86400 * 400, "400d");
}

static void test_format_span_small_buffer(void) {
        char buf[4];

        ASSERT_STREQ(status_format_span(7500, buf, sizeof(buf)), "2h ");
}

static void test_default_max_lag(void) {
        Config c = { .poll_interval_usec = 5 * 60 * USEC_PER_SEC };

        ASSERT_EQ_U64(status_default_max_lag(&c), 20 * 60 * USEC_PER_SEC);
        c.poll_interval_usec = 2 * USEC_PER_SEC;
        ASSERT_EQ_U64(status_default_max_lag(&c), 306 * USEC_PER_SEC);
}

int main(void) {
        test_format_span();
        test_format_span_small_buffer();
        test_default_max_lag();
        return tests_done("test-status");
}
