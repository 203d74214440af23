/* SPDX-License-Identifier: MIT */
/* witlinkd: the command line. */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "manager.h"
#include "status.h"

#ifndef WITLINKD_CONFIG_FILE
#define WITLINKD_CONFIG_FILE "/etc/witlinkd/witlinkd.conf"
#endif
#define DEFAULT_CONFIG WITLINKD_CONFIG_FILE

static void help(void) {
        printf("witlinkd %s — keeps a PostgreSQL warehouse of Azure DevOps work item links current.\n\n"
               "Usage: witlinkd [OPTIONS]\n\n"
               "  -c, --config FILE   configuration file (default %s)\n"
               "      --once          sync every feed until it is caught up, then exit\n"
               "      --check-config  validate the configuration and print it, secrets redacted\n"
               "      --status        print each feed's state from the database; exit 1 when a\n"
               "                      feed is failing or lagging, 69 when the database is down\n"
               "      --json          with --status: one JSON document instead of the table\n"
               "      --max-lag SPAN  with --status: a feed whose last success is older is\n"
               "                      lagging (default 3 x poll-interval + 5min)\n"
               "      --version       print the version\n"
               "  -h, --help          print this help\n\n"
               "Without --once, witlinkd runs in the foreground until SIGTERM; SIGHUP reloads.\n"
               "Exit codes: 0 success, 78 bad configuration or credential, 69 a dependency\n"
               "refused for good (e.g. authentication rejected in --once), 1 anything else.\n"
               "See witlinkd(8) and witlinkd.conf(5).\n",
               WITLINKD_VERSION, DEFAULT_CONFIG);
}

int main(int argc, char *argv[]) {
        enum { ARG_ONCE = 0x100, ARG_CHECK_CONFIG, ARG_VERSION, ARG_STATUS, ARG_JSON, ARG_MAX_LAG };
        static const struct option options[] = {
                { "config", required_argument, NULL, 'c' },
                { "once", no_argument, NULL, ARG_ONCE },
                { "check-config", no_argument, NULL, ARG_CHECK_CONFIG },
                { "version", no_argument, NULL, ARG_VERSION },
                { "status", no_argument, NULL, ARG_STATUS },
                { "json", no_argument, NULL, ARG_JSON },
                { "max-lag", required_argument, NULL, ARG_MAX_LAG },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        const char *config_path = DEFAULT_CONFIG;
        bool once = false, check = false, status = false;
        StatusOptions status_options = {};
        _cleanup_(manager_freep) Manager *m = NULL;
        Config *config = NULL;
        _cleanup_free_ char *error = NULL;
        int c, r;

        /* A fixed threshold keeps batch-sized buffers in their own mappings, returned to the
         * system when freed, instead of letting glibc raise it and fragment the heap: memory
         * stays flat however long the backlog. */
        (void) mallopt(M_MMAP_THRESHOLD, 256 * 1024);
        log_open();
        while ((c = getopt_long(argc, argv, "c:h", options, NULL)) >= 0)
                switch (c) {
                case 'c':
                        config_path = optarg;
                        break;
                case ARG_ONCE:
                        once = true;
                        break;
                case ARG_CHECK_CONFIG:
                        check = true;
                        break;
                case ARG_STATUS:
                        status = true;
                        break;
                case ARG_JSON:
                        status_options.json = true;
                        break;
                case ARG_MAX_LAG:
                        if (config_parse_timespan(optarg, &status_options.max_lag_usec) < 0 ||
                            status_options.max_lag_usec == 0) {
                                fprintf(stderr,
                                        "witlinkd: invalid --max-lag '%s' (e.g. 90s, 20min).\n",
                                        optarg);
                                return 1;
                        }
                        break;
                case ARG_VERSION:
                        printf("witlinkd %s\n", WITLINKD_VERSION);
                        return 0;
                case 'h':
                        help();
                        return 0;
                default:
                        fprintf(stderr, "Try 'witlinkd --help'.\n");
                        return 1;
                }
        if (!status && (status_options.json || status_options.max_lag_usec)) {
                fprintf(stderr, "witlinkd: --json and --max-lag go with --status.\n");
                return 1;
        }
        if (optind < argc) {
                fprintf(stderr, "witlinkd: unexpected argument '%s'; try 'witlinkd --help'.\n",
                        argv[optind]);
                return 1;
        }

        r = config_load_flags(config_path, status ? CONFIG_LOAD_NO_CREDENTIALS : 0, &config,
                              &error);
        if (r == -ENOMEM) {
                log_error("Out of memory.");
                return 1;
        }
        if (r < 0) {
                log_error("Invalid configuration: %s", error ?: config_path);
                return EX_CONFIG;
        }
        log_set_max_level(config->log_level);
        if (check) {
                config_dump(config, stdout);
                config_free(config);
                return 0;
        }
        if (status) {
                /* 0 healthy, 1 a feed is failing or lagging, 69 the database is unreachable. */
                r = status_run(config, &status_options, stdout);
                config_free(config);
                return r >= 0 ? r : r == -ECONNREFUSED ? EX_UNAVAILABLE : 1;
        }

        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                log_error("Failed to initialise libcurl.");
                config_free(config);
                return 1;
        }
        srandom((unsigned) time(NULL) ^ (unsigned) getpid());

        r = manager_new(config, once, &m);
        if (r < 0) {
                log_error_errno(r, "Failed to set up: %m");
                return 1;
        }
        r = manager_run(m);
        m = manager_free(m);
        curl_global_cleanup();
        return r;
}
