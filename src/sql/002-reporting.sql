-- SPDX-License-Identifier: MIT
-- witlinkd schema version 2: the reporting layer (views, functions and the indexes they need)
-- and the feed status that `witlinkd --status` prints. Recipes: docs/REPORTING.md.

-- When the feed's position (continuation token) last moved: the token's age in feed_status.
-- A feed that polls successfully but whose token stays put is idle, not stuck; one whose
-- token is old while its lag is small has simply had no new changes.
ALTER TABLE witlink.feed ADD COLUMN token_changed_at timestamptz;
UPDATE witlink.feed SET token_changed_at = last_batch_at WHERE continuation_token IS NOT NULL;

CREATE FUNCTION witlink.feed_track_token()
RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.token_changed_at := now();
    RETURN NEW;
END
$fn$;

CREATE TRIGGER feed_track_token
    BEFORE UPDATE OF continuation_token ON witlink.feed
    FOR EACH ROW
    WHEN (NEW.continuation_token IS DISTINCT FROM OLD.continuation_token)
    EXECUTE FUNCTION witlink.feed_track_token();

-- Links by their target work item (ancestors of forward hierarchy links, descendants of
-- reverse ones, "links pointing at X"). Only columns that never change once a row exists, so
-- an update of a link's state stays eligible for a HOT update. The primary key (source,
-- target, link type, organization) already serves lookups by source.
CREATE INDEX work_item_link_target_idx
    ON witlink.work_item_link (target_work_item_id, link_type_reference_name, organization);

-- The one index on the event log, for questions about a time window (removals last week,
-- churn of a month, what changed between two dates). links_as_of() does not need it: it reads
-- the log through the unique constraint (source, target, changed_date, ...). A BRIN index is
-- a few pages per million events and costs ingest next to nothing (an insert only touches it
-- when its page range is already summarized); it works because the log is appended roughly in
-- changed_date order (strictly so once the feeds are caught up).
CREATE INDEX work_item_link_event_changed_date_brin
    ON witlink.work_item_link_event USING brin (changed_date);

-- The active links.
CREATE VIEW witlink.active_link AS
SELECT w.organization, w.link_type_reference_name, w.link_type,
       w.source_work_item_id, w.target_work_item_id,
       w.source_project_id, w.target_project_id,
       w.comment, w.created_date, w.created_by, w.changed_date, w.changed_by, w.last_event_id
  FROM witlink.work_item_link w
 WHERE w.is_active;

COMMENT ON VIEW witlink.active_link IS
    'The active links (current state), with both ends'' project ids and the link''s dates.';

-- Active parent/child links, whatever end the server sent: a Hierarchy-Forward (or unnamed)
-- end has the parent as its source; a Hierarchy-Reverse end has the child as its source. A
-- link stored in both directions appears once (the forward row wins).
CREATE VIEW witlink.hierarchy AS
SELECT w.organization,
       w.source_work_item_id AS parent_id, w.target_work_item_id AS child_id,
       w.source_project_id AS parent_project_id, w.target_project_id AS child_project_id,
       coalesce(w.created_date, w.changed_date) AS since, w.created_by, w.link_type
  FROM witlink.work_item_link w
 WHERE w.is_active AND w.link_type_reference_name = 'System.LinkTypes.Hierarchy'
   AND w.link_type IS DISTINCT FROM 'System.LinkTypes.Hierarchy-Reverse'
UNION ALL
SELECT r.organization,
       r.target_work_item_id, r.source_work_item_id,
       r.target_project_id, r.source_project_id,
       coalesce(r.created_date, r.changed_date), r.created_by, r.link_type
  FROM witlink.work_item_link r
 WHERE r.is_active AND r.link_type_reference_name = 'System.LinkTypes.Hierarchy'
   AND r.link_type = 'System.LinkTypes.Hierarchy-Reverse'
   AND NOT EXISTS (
       SELECT 1 FROM witlink.work_item_link f
        WHERE f.organization = r.organization
          AND f.link_type_reference_name = r.link_type_reference_name
          AND f.source_work_item_id = r.target_work_item_id
          AND f.target_work_item_id = r.source_work_item_id
          AND f.is_active
          AND f.link_type IS DISTINCT FROM 'System.LinkTypes.Hierarchy-Reverse');

COMMENT ON VIEW witlink.hierarchy IS
    'Active parent/child links (System.LinkTypes.Hierarchy), forward or reverse ends alike.';

-- The links active at an instant, from the event log: per link, the event with the greatest
-- (changed_date, event_id) among those with changed_date <= p_at (equal dates in feed order,
-- never back to an older date: the rule the current state follows). A link whose current state
-- is no newer than p_at is in that state at p_at (work_item_link.last_event_id is that event),
-- so only links changed after p_at are looked up in the log.
CREATE FUNCTION witlink.links_as_of(p_at timestamptz)
RETURNS TABLE (organization text, link_type_reference_name text, link_type text,
               source_work_item_id integer, target_work_item_id integer,
               source_project_id uuid, target_project_id uuid, comment text,
               changed_date timestamptz, changed_by text, event_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT w.organization, w.link_type_reference_name, w.link_type,
           w.source_work_item_id, w.target_work_item_id,
           w.source_project_id, w.target_project_id, w.comment,
           w.changed_date, w.changed_by, w.last_event_id
      FROM witlink.work_item_link w
     WHERE w.is_active AND w.changed_date <= p_at
    UNION ALL
    SELECT e.organization, e.link_type_reference_name, e.link_type,
           e.source_work_item_id, e.target_work_item_id,
           e.source_project_id, e.target_project_id, e.comment,
           e.changed_date, e.changed_by, e.event_id
      FROM witlink.work_item_link w
     CROSS JOIN LATERAL (
           SELECT x.* FROM witlink.work_item_link_event x
            WHERE x.source_work_item_id = w.source_work_item_id
              AND x.target_work_item_id = w.target_work_item_id
              AND x.link_type_reference_name = w.link_type_reference_name
              AND x.organization = w.organization
              AND x.changed_date <= p_at
            ORDER BY x.changed_date DESC, x.event_id DESC
            LIMIT 1) e
     WHERE w.changed_date > p_at AND e.changed_operation = 'create'
$fn$;

COMMENT ON FUNCTION witlink.links_as_of(timestamptz) IS
    'The links active at an instant, from the event log (changed_date is the date of the '
    'create that made each active).';

-- Per feed: identity, progress, lag, token age, last error and the owning instance.
CREATE VIEW witlink.feed_status AS
SELECT f.feed_id, f.organization, f.base_url, f.project, f.types, f.link_types, f.api_version,
       CASE WHEN f.last_error IS NOT NULL THEN 'failing'
            WHEN f.caught_up THEN 'caught up'
            ELSE 'backfilling' END AS state,
       f.caught_up, f.events_total, f.batches_total,
       f.last_success_at, now() - f.last_success_at AS lag,
       f.token_changed_at, now() - f.token_changed_at AS token_age,
       f.last_error, f.last_error_at,
       f.owner_host, f.owner_pid, f.owner_since,
       coalesce(witlink.feed_lock_held(f.feed_id, f.owner_backend_pid), false) AS owner_active,
       f.created_at
  FROM witlink.feed f;

COMMENT ON VIEW witlink.feed_status IS
    'Per feed: caught up, counters, lag (now - last success), token age (now - last position '
    'change), last error, and whether the owning witlinkd still holds the feed.';

-- The link types seen, per organization.
CREATE VIEW witlink.link_type AS
SELECT w.organization, w.link_type_reference_name,
       array_remove(array_agg(DISTINCT w.link_type), NULL) AS end_names,
       count(*) AS links,
       count(*) FILTER (WHERE w.is_active) AS active_links,
       min(w.created_date) AS first_created_date,
       max(w.changed_date) AS last_changed_date
  FROM witlink.work_item_link w
 GROUP BY w.organization, w.link_type_reference_name;

COMMENT ON VIEW witlink.link_type IS
    'Link types seen: reference name, end names sent, links ever seen and active now.';

-- Everything below a work item in the active hierarchy: each descendant once, at its smallest
-- depth (1 = a child), with the path from p_work_item_id. A cycle ends where it comes back to a
-- work item already on the path; p_max_depth (NULL: no limit) bounds the walk further.
CREATE FUNCTION witlink.descendants(p_organization text, p_work_item_id integer,
                                    p_max_depth integer DEFAULT NULL)
RETURNS TABLE (work_item_id integer, parent_id integer, depth integer, path integer[])
LANGUAGE sql STABLE AS $fn$
    WITH RECURSIVE tree (work_item_id, parent_id, depth, path) AS (
        SELECT h.child_id, h.parent_id, 1, ARRAY[h.parent_id, h.child_id]
          FROM witlink.hierarchy h
         WHERE h.organization = p_organization AND h.parent_id = p_work_item_id
           AND h.child_id <> p_work_item_id
        UNION ALL
        SELECT c.child_id, t.work_item_id, t.depth + 1, t.path || c.child_id
          FROM tree t
         CROSS JOIN LATERAL (
               -- OFFSET 0 keeps this a per-row index lookup (otherwise the planner joins
               -- the whole hierarchy by hash on every level).
               SELECT h.child_id FROM witlink.hierarchy h
                WHERE h.organization = p_organization AND h.parent_id = t.work_item_id
               OFFSET 0) c
         WHERE c.child_id <> ALL (t.path)
           AND (p_max_depth IS NULL OR t.depth < p_max_depth)
    )
    SELECT DISTINCT ON (t.work_item_id) t.work_item_id, t.parent_id, t.depth, t.path
      FROM tree t
     ORDER BY t.work_item_id, t.depth, t.path
$fn$;

COMMENT ON FUNCTION witlink.descendants(text, integer, integer) IS
    'Descendants in the active hierarchy with depth and path; cycle-safe.';

-- Everything above a work item: each ancestor once, at its smallest depth (1 = a parent),
-- with the path from p_work_item_id upwards. Cycle-safe like descendants().
CREATE FUNCTION witlink.ancestors(p_organization text, p_work_item_id integer,
                                  p_max_depth integer DEFAULT NULL)
RETURNS TABLE (work_item_id integer, child_id integer, depth integer, path integer[])
LANGUAGE sql STABLE AS $fn$
    WITH RECURSIVE up (work_item_id, child_id, depth, path) AS (
        SELECT h.parent_id, h.child_id, 1, ARRAY[h.child_id, h.parent_id]
          FROM witlink.hierarchy h
         WHERE h.organization = p_organization AND h.child_id = p_work_item_id
           AND h.parent_id <> p_work_item_id
        UNION ALL
        SELECT p.parent_id, u.work_item_id, u.depth + 1, u.path || p.parent_id
          FROM up u
         CROSS JOIN LATERAL (
               SELECT h.parent_id FROM witlink.hierarchy h
                WHERE h.organization = p_organization AND h.child_id = u.work_item_id
               OFFSET 0) p
         WHERE p.parent_id <> ALL (u.path)
           AND (p_max_depth IS NULL OR u.depth < p_max_depth)
    )
    SELECT DISTINCT ON (u.work_item_id) u.work_item_id, u.child_id, u.depth, u.path
      FROM up u
     ORDER BY u.work_item_id, u.depth, u.path
$fn$;

COMMENT ON FUNCTION witlink.ancestors(text, integer, integer) IS
    'Ancestors in the active hierarchy with depth and path; cycle-safe.';
