/* SPDX-License-Identifier: MIT */
/* Configuration: one declarative key table, an INI reader and credential loading. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "macro.h"

typedef enum AuthKind {
        AUTH_PAT,    /* HTTP Basic, empty user name, the PAT as password */
        AUTH_BEARER, /* Authorization: Bearer (Microsoft Entra tokens) */
        _AUTH_KIND_MAX,
} AuthKind;

typedef struct SourceConfig {
        char *name; /* the organization column */
        char *url;  /* base URL, verbatim but without a trailing slash */
        char *token_file;
        char *credential;
        AuthKind auth;
        char **projects; /* NULL-terminated; empty: one collection-wide feed */
        size_t n_projects;
        char *types;      /* normalised comma list, "" when unfiltered */
        char *link_types; /* normalised comma list, "" when unfiltered */
        char *api_version;
        char *start_date; /* NULL when unset */
        char *ca_file;    /* NULL when unset */
        unsigned max_parallel;
        unsigned line;
        char *token; /* the secret itself, loaded from token_file or credential */
} SourceConfig;

typedef struct Config {
        char *path;
        char *database; /* libpq conninfo; "" means libpq's defaults and PG* variables */
        uint64_t poll_interval_usec;
        uint64_t http_timeout_usec;
        uint64_t max_response_size;
        uint64_t max_backoff_usec;
        uint64_t statement_timeout_usec;
        bool synchronous_commit;
        int log_level;
        SourceConfig **sources;
        size_t n_sources;
} Config;

typedef enum ConfigSection {
        CONFIG_SECTION_DAEMON,
        CONFIG_SECTION_SOURCE,
} ConfigSection;

typedef int (*ConfigParser)(const char *value, void *dst, char **ret_reason);

typedef struct ConfigKey {
        ConfigSection section;
        const char *name;
        ConfigParser parse;
        size_t offset;
        const char *default_value; /* parsed like a value from the file; NULL: no default */
        bool reloadable;
        const char *help;
} ConfigKey;

/* The declarative table of every key, for docs and their tests. */
const ConfigKey *config_keys(size_t *ret_n);
const char *config_section_to_string(ConfigSection s);

/* Parses and validates FILE and loads the credentials. On failure returns a negative errno and,
 * in ret_error, "FILE:LINE: key: reason" (never containing a secret). */
int config_load(const char *path, Config **ret, char **ret_error);

typedef enum ConfigLoadFlags {
        CONFIG_LOAD_NO_CREDENTIALS = 1 << 0, /* --status: the tokens are not needed */
} ConfigLoadFlags;

int config_load_flags(const char *path, ConfigLoadFlags flags, Config **ret, char **ret_error);
Config *config_free(Config *c);
DEFINE_CLEANUP_FUNC(Config, config_free);

/* Prints the effective configuration, secrets redacted. */
void config_dump(const Config *c, FILE *f);

const char *auth_kind_to_string(AuthKind k);

/* Exposed for the unit tests. */
int config_parse_timespan(const char *s, uint64_t *ret_usec);
int config_parse_size(const char *s, uint64_t *ret);
