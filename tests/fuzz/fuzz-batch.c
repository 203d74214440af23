/* SPDX-License-Identifier: MIT */
/* libFuzzer target: batch_parse() on any response body, then the COPY text of what it accepts. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "store.h"

#define CHECK(x)                  \
        do {                      \
                if (!(x))         \
                        abort();  \
        } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        Batch *b = NULL;
        char *error = NULL, *copy = NULL;
        size_t copy_size = 0, lines = 0, tabs = 0;
        int r;

        r = batch_parse((const char *) data, size, &b, &error);
        if (r < 0) {
                /* Refused: nothing returned, a reason unless memory ran out. */
                CHECK(r == -EBADMSG || r == -ENOMEM);
                CHECK(!b);
                CHECK(r == -ENOMEM || error);
                free(error);
                return 0;
        }
        CHECK(b && !error);
        for (size_t i = 0; i < b->n_events; i++) {
                const LinkEvent *e = &b->events[i];

                CHECK(e->rel.p && e->rel.len > 0);
                CHECK(e->source_id >= 1 && e->target_id >= 1);
                CHECK(e->changed_date.p && batch_valid_date(e->changed_date.p, e->changed_date.len));
                CHECK(e->operation == LINK_OPERATION_CREATE || e->operation == LINK_OPERATION_REMOVE);
                CHECK(e->is_active_reported >= -1 && e->is_active_reported <= 1);
                CHECK(!e->source_project_id.p ||
                      batch_valid_guid(e->source_project_id.p, e->source_project_id.len));
                CHECK(!e->target_project_id.p ||
                      batch_valid_guid(e->target_project_id.p, e->target_project_id.len));
        }
        if (b->token)
                CHECK(b->token[0] && strlen(b->token) <= 16384);

        /* What the store sends: one line per event, 14 columns, never a NUL byte. */
        r = store_format_copy(b, &copy, &copy_size);
        CHECK(r == 0 || r == -ENOMEM);
        if (r == 0) {
                CHECK(strlen(copy) == copy_size);
                for (size_t i = 0; i < copy_size; i++) {
                        lines += copy[i] == '\n';
                        tabs += copy[i] == '\t';
                }
                CHECK(lines == b->n_events);
                CHECK(tabs == 13 * b->n_events);
                free(copy);
        }
        batch_free(b);
        return 0;
}
