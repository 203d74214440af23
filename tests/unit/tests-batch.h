/* SPDX-License-Identifier: MIT */
/* For the unit tests that start from a batch: parse a body that must parse. */
#pragma once

#include "batch.h"
#include "tests.h"

static inline Batch *tests_parse_batch(const char *body) {
        Batch *b = NULL;
        _cleanup_free_ char *err = NULL;
        int r;

        r = batch_parse(body, strlen(body), &b, &err);
        if (r < 0)
                fprintf(stderr, "batch_parse: %s\n", err ?: "(no message)");
        ASSERT_OK(r);
        ASSERT_NULL(err);
        ASSERT_NOT_NULL(b);
        return b;
}
