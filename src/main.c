/* SPDX-License-Identifier: MIT */
/* witlinkd: the command line. */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "manager.h"

#define DEFAULT_CONFIG "/etc/witlinkd/witlinkd.conf"

static void help(void) {
        printf("witlinkd %s — keeps a PostgreSQL warehouse of Azure DevOps work item links current.\n\n"
               "Usage: witlinkd [OPTIONS]\n\n"
               "  -c, --config FILE   configuration file (default %s)\n"
               "      --once          sync every feed until it is caught up, then exit\n"
               "      --check-config  validate the configuration and print it, secrets redacted\n"
               "      --version       print the version\n"
               "  -h, --help          print this help\n\n"
               "Without --once, witlinkd runs in the foreground until SIGTERM; SIGHUP reloads.\n"
               "Exit codes: 0 success, 78 bad configuration or credential, 69 a dependency\n"
               "refused for good (e.g. authentication rejected in --once), 1 anything else.\n"
               "See witlinkd(8) and witlinkd.conf(5).\n",
               WITLINKD_VERSION, DEFAULT_CONFIG);
}

int main(int argc, char *argv[]) {
        enum { ARG_ONCE = 0x100, ARG_CHECK_CONFIG, ARG_VERSION };
        static const struct option options[] = {
                { "config", required_argument, NULL, 'c' },
                { "once", no_argument, NULL, ARG_ONCE },
                { "check-config", no_argument, NULL, ARG_CHECK_CONFIG },
                { "version", no_argument, NULL, ARG_VERSION },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        const char *config_path = DEFAULT_CONFIG;
        bool once = false, check = false;
        _cleanup_(manager_freep) Manager *m = NULL;
        Config *config = NULL;
        _cleanup_free_ char *error = NULL;
        int c, r;

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
        if (optind < argc) {
                fprintf(stderr, "witlinkd: unexpected argument '%s'; try 'witlinkd --help'.\n",
                        argv[optind]);
                return 1;
        }

        r = config_load(config_path, &config, &error);
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
