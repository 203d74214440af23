/* SPDX-License-Identifier: MIT */
/* The schema migrations, embedded from src/sql/ at build time. */
#pragma once

typedef struct Migration {
        unsigned version;
        const char *sql;
} Migration;

extern const Migration migrations[];
extern const unsigned migrations_count;
