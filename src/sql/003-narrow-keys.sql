-- SPDX-License-Identifier: MIT
-- witlinkd schema version 3: narrow keys for the write path.
--
-- Every batch probes and inserts into the unique key of the event log and the primary key of
-- the current state, once per event; in version 2 both keys carried the organization and the
-- link type's reference name as text. Here an (organization, link type) pair is a small
-- integer, witlink.link_kind.kind_id, so that both keys are fixed-width integers and dates
-- (compared without a collation call, three times fewer index pages). The tables are
-- witlink.link_event and witlink.link_state; witlink.work_item_link_event and
-- witlink.work_item_link stay, as views with the same columns as before. Also: fixed-width
-- columns first (rows are decoded faster), the state table at fillfactor 85 (a state update
-- usually finds room on its page: a HOT update, no new index entries), and lz4 for the comment
-- columns where the server has it. Measured in bench/README.md.

-- The reporting views of version 2 read the old tables: rebuilt below on the new ones
-- (descendants() and ancestors() read witlink.hierarchy by name and stay as they are).
DROP VIEW witlink.link_type;
DROP VIEW witlink.hierarchy;
DROP VIEW witlink.active_link;

-- One row per (organization, link type reference name) ever seen; never deleted or changed.
CREATE TABLE witlink.link_kind (
    kind_id                   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization              text COLLATE "C" NOT NULL,
    link_type_reference_name  text COLLATE "C" NOT NULL,
    CONSTRAINT link_kind_name UNIQUE (organization, link_type_reference_name)
);

COMMENT ON TABLE witlink.link_kind IS
    'The (organization, link type reference name) pairs seen; kind_id keys the link tables.';

-- The event log (read it through witlink.work_item_link_event). No foreign key to link_kind:
-- witlink.apply_batch() adds a batch's kinds before its events, kinds are never deleted, and a
-- foreign key would cost a look-up per inserted row.
CREATE TABLE witlink.link_event (
    event_id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    changed_date              timestamptz NOT NULL,
    ingested_at               timestamptz NOT NULL DEFAULT now(),
    feed_id                   bigint NOT NULL,
    source_work_item_id       integer NOT NULL,
    target_work_item_id       integer NOT NULL,
    kind_id                   integer NOT NULL,
    is_create                 boolean NOT NULL,   -- changed_operation: create (true) or remove
    is_active_reported        boolean,
    source_project_id         uuid,
    target_project_id         uuid,
    link_type                 text,
    changed_by_id             text,
    changed_by                text,
    changed_by_display_name   text,
    comment                   text,
    -- What makes a change the same change when it is seen again; the work item ids lead
    -- (they tell keys apart at once, and links_as_of() reads a link's history through them).
    CONSTRAINT link_event_change UNIQUE
        (source_work_item_id, target_work_item_id, changed_date, kind_id, is_create)
);

COMMENT ON TABLE witlink.link_event IS
    'Every distinct work item link change, once, in feed order (read: witlink.work_item_link_event).';

-- The current state (read it through witlink.work_item_link).
CREATE TABLE witlink.link_state (
    source_work_item_id       integer NOT NULL,
    target_work_item_id       integer NOT NULL,
    kind_id                   integer NOT NULL,
    is_active                 boolean NOT NULL,
    changed_date              timestamptz NOT NULL,
    last_event_id             bigint NOT NULL,
    updated_at                timestamptz NOT NULL DEFAULT now(),
    created_date              timestamptz,
    deleted_date              timestamptz,
    source_project_id         uuid,
    target_project_id         uuid,
    link_type                 text,
    created_by                text,
    deleted_by                text,
    changed_by                text,
    comment                   text,
    CONSTRAINT link_state_pkey PRIMARY KEY (source_work_item_id, target_work_item_id, kind_id)
) WITH (fillfactor = 85);

COMMENT ON TABLE witlink.link_state IS
    'Current state of every link ever seen (read: witlink.work_item_link).';

DO $do$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_settings
                WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE witlink.link_event ALTER COLUMN comment SET COMPRESSION lz4;
        ALTER TABLE witlink.link_state ALTER COLUMN comment SET COMPRESSION lz4;
    END IF;
END
$do$;

-- The rows of version 2, with their event ids.
INSERT INTO witlink.link_kind (organization, link_type_reference_name)
SELECT organization, link_type_reference_name FROM witlink.work_item_link_event
UNION
SELECT organization, link_type_reference_name FROM witlink.work_item_link
ORDER BY 1, 2;

INSERT INTO witlink.link_event
    (event_id, changed_date, ingested_at, feed_id, source_work_item_id, target_work_item_id,
     kind_id, is_create, is_active_reported, source_project_id, target_project_id, link_type,
     changed_by_id, changed_by, changed_by_display_name, comment)
OVERRIDING SYSTEM VALUE
SELECT e.event_id, e.changed_date, e.ingested_at, e.feed_id, e.source_work_item_id,
       e.target_work_item_id, k.kind_id, e.changed_operation = 'create', e.is_active_reported,
       e.source_project_id, e.target_project_id, e.link_type, e.changed_by_id, e.changed_by,
       e.changed_by_display_name, e.comment
  FROM witlink.work_item_link_event e
  JOIN witlink.link_kind k USING (organization, link_type_reference_name)
 ORDER BY e.event_id;

SELECT setval(pg_catalog.pg_get_serial_sequence('witlink.link_event', 'event_id'),
              greatest((SELECT last_value FROM witlink.work_item_link_event_event_id_seq),
                       (SELECT coalesce(max(event_id), 0) FROM witlink.link_event), 1));

INSERT INTO witlink.link_state
    (source_work_item_id, target_work_item_id, kind_id, is_active, changed_date, last_event_id,
     updated_at, created_date, deleted_date, source_project_id, target_project_id, link_type,
     created_by, deleted_by, changed_by, comment)
SELECT w.source_work_item_id, w.target_work_item_id, k.kind_id, w.is_active, w.changed_date,
       w.last_event_id, w.updated_at, w.created_date, w.deleted_date, w.source_project_id,
       w.target_project_id, w.link_type, w.created_by, w.deleted_by, w.changed_by, w.comment
  FROM witlink.work_item_link w
  JOIN witlink.link_kind k USING (organization, link_type_reference_name);

DROP TABLE witlink.work_item_link_event;
DROP TABLE witlink.work_item_link;

-- Links by their target work item (ancestors of forward hierarchy links, descendants of
-- reverse ones, "links pointing at X"); columns that never change once a row exists, so a
-- state update stays eligible for a HOT update.
CREATE INDEX link_state_target_idx ON witlink.link_state (target_work_item_id, kind_id);

-- Time windows over the log (see version 2): a few pages per million events.
CREATE INDEX link_event_changed_date_brin ON witlink.link_event USING brin (changed_date);

-- The relations of the schema's contract, with the columns of version 2. LEFT JOINs to the
-- kinds (there is always one): a query that reads neither the organization nor the link type
-- does not join at all.
CREATE VIEW witlink.work_item_link_event AS
SELECT e.event_id, k.organization, e.feed_id, k.link_type_reference_name, e.link_type,
       e.source_work_item_id, e.target_work_item_id, e.changed_date,
       CASE WHEN e.is_create THEN 'create' ELSE 'remove' END AS changed_operation,
       e.is_active_reported, e.changed_by_id, e.changed_by, e.changed_by_display_name,
       e.comment, e.source_project_id, e.target_project_id, e.ingested_at
  FROM witlink.link_event e
  LEFT JOIN witlink.link_kind k ON k.kind_id = e.kind_id;

COMMENT ON VIEW witlink.work_item_link_event IS
    'Every distinct work item link change, once, in the order the feeds delivered them.';

CREATE VIEW witlink.work_item_link AS
SELECT k.organization, k.link_type_reference_name, w.source_work_item_id,
       w.target_work_item_id, w.is_active, w.link_type, w.source_project_id,
       w.target_project_id, w.comment, w.created_date, w.created_by, w.deleted_date,
       w.deleted_by, w.changed_date, w.changed_by, w.last_event_id, w.updated_at
  FROM witlink.link_state w
  LEFT JOIN witlink.link_kind k ON k.kind_id = w.kind_id;

COMMENT ON VIEW witlink.work_item_link IS
    'Current state of every link ever seen: the last change per link in feed order.';

-- The batch staged in pg_temp.witlink_stage (the session's staging table, filled by COPY) as
-- rows of witlink.link_event, in feed order; event_id is left to the identity (INSERT …
-- OVERRIDING USER VALUE). Inlined into apply_batch()'s statements.
SET LOCAL check_function_bodies = off;   -- the staging table exists in the daemon's sessions
CREATE FUNCTION witlink.staged_events(p_organization text, p_feed bigint)
RETURNS SETOF witlink.link_event
LANGUAGE sql STABLE AS $fn$
    SELECT NULL::bigint, s.changed_date, now(), p_feed, s.source_id, s.target_id, k.kind_id,
           s.op = 'create', s.is_active_reported, s.source_project_id, s.target_project_id,
           s.link_type, s.changed_by_id, s.changed_by, s.changed_by_display_name, s.comment
      FROM pg_temp.witlink_stage s
      JOIN witlink.link_kind k
        ON k.organization = p_organization AND k.link_type_reference_name = s.rel
     ORDER BY s.seq
$fn$;
RESET check_function_bodies;

-- Applies the batch staged in pg_temp.witlink_stage (filled by COPY in the same transaction),
-- as in version 1: new events are appended once, the current state follows them in feed order
-- without ever going back to an older changed_date (the state a batch leaves is its event
-- with the greatest (changed_date, event_id)), and the feed's token and counters move with
-- them. The batch's link kinds are added first.
--
-- p_fresh: the caller expects none of the batch's events to be stored already (the feed's
-- previous batch had no duplicate). Then the events are inserted without ON CONFLICT, whose
-- extra probe of the unique key per event is a tenth of the batch's cost; should one be a
-- duplicate after all (unique_violation), that attempt is rolled back and the batch inserted
-- with ON CONFLICT DO NOTHING. The outcome is the same either way.
DROP FUNCTION witlink.apply_batch(bigint, text, boolean, integer);
CREATE FUNCTION witlink.apply_batch(p_feed bigint, p_token text, p_caught_up boolean,
                                    p_received integer, p_fresh boolean DEFAULT false)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    v_org text;
    v_new integer := 0;
    v_first bigint;
    v_last bigint;
BEGIN
    SELECT organization INTO v_org FROM witlink.feed WHERE feed_id = p_feed FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'feed % does not exist', p_feed USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT witlink.feed_lock_held(p_feed, pg_backend_pid()) THEN
        RAISE EXCEPTION 'this session does not own feed %', p_feed
              USING ERRCODE = 'lock_not_available',
                    HINT = 'The feed is claimed with witlink.claim_feed() first.';
    END IF;

    -- Look first, so that known kinds do not use up identity values.
    INSERT INTO witlink.link_kind (organization, link_type_reference_name)
    SELECT DISTINCT v_org, s.rel
      FROM pg_temp.witlink_stage s
     WHERE NOT EXISTS (SELECT 1 FROM witlink.link_kind k
                        WHERE k.organization = v_org AND k.link_type_reference_name = s.rel)
    ON CONFLICT ON CONSTRAINT link_kind_name DO NOTHING;

    -- The new events get consecutive event ids of this feed: only this session writes the
    -- feed (its lock), so they are the feed's events in [v_first, v_last].
    IF p_fresh THEN
        BEGIN
            WITH ins AS (
                INSERT INTO witlink.link_event AS e OVERRIDING USER VALUE
                SELECT * FROM witlink.staged_events(v_org, p_feed)
                RETURNING e.event_id)
            SELECT count(*), min(event_id), max(event_id) INTO v_new, v_first, v_last FROM ins;
            p_fresh := true;
        EXCEPTION WHEN unique_violation THEN
            p_fresh := false;
        END;
    END IF;
    IF NOT p_fresh THEN
        WITH ins AS (
            INSERT INTO witlink.link_event AS e OVERRIDING USER VALUE
            SELECT * FROM witlink.staged_events(v_org, p_feed)
            ON CONFLICT ON CONSTRAINT link_event_change DO NOTHING
            RETURNING e.event_id)
        SELECT count(*), min(event_id), max(event_id) INTO v_new, v_first, v_last FROM ins;
    END IF;

    -- Per link the new event with the greatest (changed_date, event_id), and the last new
    -- create among them (for created_*), in one sort.
    WITH last AS (
        SELECT DISTINCT ON (e.kind_id, e.source_work_item_id, e.target_work_item_id) e.*,
               (array_agg(e.changed_date) FILTER (WHERE e.is_create) OVER w)[1] AS c_date,
               (array_agg(e.changed_by) FILTER (WHERE e.is_create) OVER w)[1] AS c_by
          FROM witlink.link_event e
         WHERE e.event_id BETWEEN v_first AND v_last AND e.feed_id = p_feed
        WINDOW w AS (PARTITION BY e.kind_id, e.source_work_item_id, e.target_work_item_id
                     ORDER BY e.changed_date DESC, e.event_id DESC
                     ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
         ORDER BY e.kind_id, e.source_work_item_id, e.target_work_item_id,
                  e.changed_date DESC, e.event_id DESC
    )
    INSERT INTO witlink.link_state AS w
        (source_work_item_id, target_work_item_id, kind_id, is_active, changed_date,
         last_event_id, updated_at, created_date, deleted_date, source_project_id,
         target_project_id, link_type, created_by, deleted_by, changed_by, comment)
    SELECT l.source_work_item_id, l.target_work_item_id, l.kind_id, l.is_create,
           l.changed_date, l.event_id, now(), l.c_date,
           CASE WHEN NOT l.is_create THEN l.changed_date END,
           l.source_project_id, l.target_project_id, l.link_type, l.c_by,
           CASE WHEN NOT l.is_create THEN l.changed_by END, l.changed_by, l.comment
      FROM last l
    ON CONFLICT ON CONSTRAINT link_state_pkey DO UPDATE SET
        is_active = EXCLUDED.is_active,
        changed_date = EXCLUDED.changed_date,
        last_event_id = EXCLUDED.last_event_id,
        updated_at = EXCLUDED.updated_at,
        created_date = CASE WHEN EXCLUDED.created_date IS NOT NULL
                            THEN EXCLUDED.created_date ELSE w.created_date END,
        created_by = CASE WHEN EXCLUDED.created_date IS NOT NULL
                          THEN EXCLUDED.created_by ELSE w.created_by END,
        deleted_date = EXCLUDED.deleted_date,
        deleted_by = EXCLUDED.deleted_by,
        source_project_id = EXCLUDED.source_project_id,
        target_project_id = EXCLUDED.target_project_id,
        link_type = EXCLUDED.link_type,
        changed_by = EXCLUDED.changed_by,
        comment = EXCLUDED.comment
    WHERE w.changed_date <= EXCLUDED.changed_date;

    UPDATE witlink.feed
       SET continuation_token = p_token,
           caught_up = p_caught_up,
           last_success_at = now(),
           last_batch_at = now(),
           events_total = events_total + p_received,
           batches_total = batches_total + 1,
           last_error = NULL,
           last_error_at = NULL
     WHERE feed_id = p_feed;

    PERFORM pg_notify('witlink', p_feed::text);
    RETURN v_new;
END
$fn$;

-- The reporting layer of version 2 on the new tables (same columns, same rules).
CREATE VIEW witlink.active_link AS
SELECT k.organization, k.link_type_reference_name, w.link_type,
       w.source_work_item_id, w.target_work_item_id,
       w.source_project_id, w.target_project_id,
       w.comment, w.created_date, w.created_by, w.changed_date, w.changed_by, w.last_event_id
  FROM witlink.link_state w
  JOIN witlink.link_kind k ON k.kind_id = w.kind_id
 WHERE w.is_active;

COMMENT ON VIEW witlink.active_link IS
    'The active links (current state), with both ends'' project ids and the link''s dates.';

-- Active parent/child links, whatever end the server sent: a Hierarchy-Forward (or unnamed)
-- end has the parent as its source; a Hierarchy-Reverse end has the child as its source. A
-- link stored in both directions appears once (the forward row wins).
CREATE VIEW witlink.hierarchy AS
SELECT k.organization,
       w.source_work_item_id AS parent_id, w.target_work_item_id AS child_id,
       w.source_project_id AS parent_project_id, w.target_project_id AS child_project_id,
       coalesce(w.created_date, w.changed_date) AS since, w.created_by, w.link_type
  FROM witlink.link_state w
  JOIN witlink.link_kind k ON k.kind_id = w.kind_id
 WHERE w.is_active AND k.link_type_reference_name = 'System.LinkTypes.Hierarchy'
   AND w.link_type IS DISTINCT FROM 'System.LinkTypes.Hierarchy-Reverse'
UNION ALL
SELECT k.organization,
       r.target_work_item_id, r.source_work_item_id,
       r.target_project_id, r.source_project_id,
       coalesce(r.created_date, r.changed_date), r.created_by, r.link_type
  FROM witlink.link_state r
  JOIN witlink.link_kind k ON k.kind_id = r.kind_id
 WHERE r.is_active AND k.link_type_reference_name = 'System.LinkTypes.Hierarchy'
   AND r.link_type = 'System.LinkTypes.Hierarchy-Reverse'
   AND NOT EXISTS (
       SELECT 1 FROM witlink.link_state f
        WHERE f.kind_id = r.kind_id
          AND f.source_work_item_id = r.target_work_item_id
          AND f.target_work_item_id = r.source_work_item_id
          AND f.is_active
          AND f.link_type IS DISTINCT FROM 'System.LinkTypes.Hierarchy-Reverse');

COMMENT ON VIEW witlink.hierarchy IS
    'Active parent/child links (System.LinkTypes.Hierarchy), forward or reverse ends alike.';

-- The links active at an instant, from the event log: per link, the event with the greatest
-- (changed_date, event_id) among those with changed_date <= p_at (equal dates in feed order,
-- never back to an older date: the rule the current state follows). A link whose current state
-- is no newer than p_at is in that state at p_at (last_event_id is that event), so only links
-- changed after p_at are looked up in the log, through its unique key.
CREATE OR REPLACE FUNCTION witlink.links_as_of(p_at timestamptz)
RETURNS TABLE (organization text, link_type_reference_name text, link_type text,
               source_work_item_id integer, target_work_item_id integer,
               source_project_id uuid, target_project_id uuid, comment text,
               changed_date timestamptz, changed_by text, event_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT k.organization, k.link_type_reference_name, w.link_type,
           w.source_work_item_id, w.target_work_item_id,
           w.source_project_id, w.target_project_id, w.comment,
           w.changed_date, w.changed_by, w.last_event_id
      FROM witlink.link_state w
      JOIN witlink.link_kind k ON k.kind_id = w.kind_id
     WHERE w.is_active AND w.changed_date <= p_at
    UNION ALL
    SELECT k.organization, k.link_type_reference_name, e.link_type,
           e.source_work_item_id, e.target_work_item_id,
           e.source_project_id, e.target_project_id, e.comment,
           e.changed_date, e.changed_by, e.event_id
      FROM witlink.link_state w
      JOIN witlink.link_kind k ON k.kind_id = w.kind_id
     CROSS JOIN LATERAL (
           SELECT x.* FROM witlink.link_event x
            WHERE x.source_work_item_id = w.source_work_item_id
              AND x.target_work_item_id = w.target_work_item_id
              AND x.kind_id = w.kind_id
              AND x.changed_date <= p_at
            ORDER BY x.changed_date DESC, x.event_id DESC
            LIMIT 1) e
     WHERE w.changed_date > p_at AND e.is_create
$fn$;

COMMENT ON FUNCTION witlink.links_as_of(timestamptz) IS
    'The links active at an instant, from the event log (changed_date is the date of the '
    'create that made each active).';

-- The link types seen, per organization.
CREATE VIEW witlink.link_type AS
SELECT k.organization, k.link_type_reference_name,
       array_remove(array_agg(DISTINCT w.link_type), NULL) AS end_names,
       count(*) AS links,
       count(*) FILTER (WHERE w.is_active) AS active_links,
       min(w.created_date) AS first_created_date,
       max(w.changed_date) AS last_changed_date
  FROM witlink.link_state w
  JOIN witlink.link_kind k ON k.kind_id = w.kind_id
 GROUP BY k.organization, k.link_type_reference_name;

COMMENT ON VIEW witlink.link_type IS
    'Link types seen: reference name, end names sent, links ever seen and active now.';
