#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The quick-start demo: a throwaway PostgreSQL, the bundled API simulator, one `witlinkd --once`
run that backfills three project feeds until they are caught up, then a short SQL report."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Daemon, PgCluster, Simulator, Source  # noqa: E402

REPORT = r"""
\echo '== Feeds =='
SELECT feed_id, coalesce(project, '(collection)') AS project, caught_up, events_total AS events,
       batches_total AS batches, left(continuation_token, 24) AS token
  FROM witlink.feed ORDER BY feed_id;
\echo '== Links by type =='
SELECT link_type_reference_name AS link_type,
       count(*) FILTER (WHERE is_active) AS active,
       count(*) FILTER (WHERE NOT is_active) AS removed
  FROM witlink.work_item_link GROUP BY 1 ORDER BY 2 DESC;
\echo '== Parents with the most children (active hierarchy links) =='
SELECT source_work_item_id AS parent, count(*) AS children
  FROM witlink.work_item_link
 WHERE is_active AND link_type_reference_name = 'System.LinkTypes.Hierarchy'
 GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5;
\echo '== The five latest removals =='
SELECT source_work_item_id AS source, target_work_item_id AS target,
       link_type_reference_name AS link_type, deleted_date, deleted_by
  FROM witlink.work_item_link WHERE NOT is_active
 ORDER BY deleted_date DESC, last_event_id DESC LIMIT 5;
\echo '== The event log =='
SELECT count(*) AS events, count(DISTINCT (organization, link_type_reference_name,
       source_work_item_id, target_work_item_id)) AS links,
       min(changed_date) AS first_change, max(changed_date) AS last_change
  FROM witlink.work_item_link_event;
"""


def main():
    events = int(os.environ.get("DEMO_EVENTS", "30000"))
    print("Starting a throwaway PostgreSQL and the API simulator (%d link changes)..." % events)
    with PgCluster() as pg, Simulator(events=events) as sim:
        d = Daemon(pg.conninfo, [Source.for_simulator(sim, projects=sim.projects)],
                   log_level="info")
        print("Config: %s" % d.config_path)
        print("Running: %s -c %s --once" % (d.binary, d.config_path))
        t = time.monotonic()
        rc, out, err = d.run_once(timeout=600)
        took = time.monotonic() - t
        sys.stdout.write(err)
        if rc != 0:
            print("witlinkd exited with %s" % rc)
            return 1
        print("\nAll feeds caught up in %.1fs.\n" % took)
        sys.stdout.write(pg.psql(REPORT, args=("-P", "pager=off", "--no-align", "--tuples-only",
                                               "-P", "format=aligned", "-P", "tuples_only=off")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
