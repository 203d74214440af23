/* SPDX-License-Identifier: MIT */
/* The Manager owns the event loop and everything on it: signals, the watchdog, the HTTP client,
 * the store, the feeds, the sd_notify lifecycle and reloads. */
#pragma once

#include <stdbool.h>

#include "config.h"
#include "macro.h"

typedef struct Manager Manager;

/* Takes ownership of config. */
int manager_new(Config *config, bool once, Manager **ret);
Manager *manager_free(Manager *m);
DEFINE_CLEANUP_FUNC(Manager, manager_free);

/* Runs the loop until the daemon stops; returns the process exit code. */
int manager_run(Manager *m);
