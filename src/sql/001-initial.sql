-- SPDX-License-Identifier: MIT
-- witlinkd schema version 1: feeds, the event log, the current link state, the batch function.

CREATE TABLE witlink.feed (
    feed_id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization        text NOT NULL,
    base_url            text NOT NULL,
    project             text,                      -- NULL: the collection-wide feed
    types               text NOT NULL DEFAULT '',  -- normalised filter lists ('' = none)
    link_types          text NOT NULL DEFAULT '',
    api_version         text NOT NULL,
    start_date          text,
    continuation_token  text,
    caught_up           boolean NOT NULL DEFAULT false,
    last_success_at     timestamptz,
    last_batch_at       timestamptz,
    events_total        bigint NOT NULL DEFAULT 0,
    batches_total       bigint NOT NULL DEFAULT 0,
    last_error          text,
    last_error_at       timestamptz,
    owner_host          text,      -- the witlinkd that last took the feed ...
    owner_pid           integer,
    owner_backend_pid   integer,   -- ... owns it while this backend holds its advisory lock
    owner_since         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT feed_identity UNIQUE NULLS NOT DISTINCT
        (organization, base_url, project, types, link_types)
);

COMMENT ON TABLE witlink.feed IS
    'One row per feed (source, project or whole collection, filters) with its continuation token.';

-- Append-only: one row per distinct link change, event_id in arrival (feed) order.
CREATE TABLE witlink.work_item_link_event (
    event_id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization              text COLLATE "C" NOT NULL,
    feed_id                   bigint NOT NULL,   -- the feed that brought it first
    link_type_reference_name  text COLLATE "C" NOT NULL,
    link_type                 text,
    source_work_item_id       integer NOT NULL,
    target_work_item_id       integer NOT NULL,
    changed_date              timestamptz NOT NULL,
    changed_operation         text COLLATE "C" NOT NULL
                              CHECK (changed_operation IN ('create', 'remove')),
    is_active_reported        boolean,
    changed_by_id             text,
    changed_by                text,
    changed_by_display_name   text,
    comment                   text,
    source_project_id         uuid,
    target_project_id         uuid,
    ingested_at               timestamptz NOT NULL DEFAULT now(),
    -- What makes a change the same change when it is seen again (a replayed batch, or a
    -- cross-project link in two project feeds). Keys in the order that tells them apart
    -- soonest; the text columns compare bytewise (COLLATE "C"), whatever the database's locale.
    CONSTRAINT work_item_link_event_change UNIQUE
        (source_work_item_id, target_work_item_id, changed_date, link_type_reference_name,
         changed_operation, organization)
);

COMMENT ON TABLE witlink.work_item_link_event IS
    'Every distinct work item link change, once, in the order the feeds delivered them.';

CREATE TABLE witlink.work_item_link (
    organization              text COLLATE "C" NOT NULL,
    link_type_reference_name  text COLLATE "C" NOT NULL,
    source_work_item_id       integer NOT NULL,
    target_work_item_id       integer NOT NULL,
    is_active                 boolean NOT NULL,
    link_type                 text,
    source_project_id         uuid,
    target_project_id         uuid,
    comment                   text,
    created_date              timestamptz,
    created_by                text,
    deleted_date              timestamptz,
    deleted_by                text,
    changed_date              timestamptz NOT NULL,
    changed_by                text,
    last_event_id             bigint NOT NULL,
    updated_at                timestamptz NOT NULL DEFAULT now(),
    -- The work item ids lead: they tell keys apart at once, where the organization (the same
    -- in almost every row) and the link type would be compared first otherwise.
    PRIMARY KEY (source_work_item_id, target_work_item_id, link_type_reference_name, organization)
);

COMMENT ON TABLE witlink.work_item_link IS
    'Current state of every link ever seen: the last change per link in feed order.';

-- Feed ownership: a feed is written by at most one witlinkd at a time, the one whose database
-- session holds the advisory lock (7826539, feed_id). witlink.claim_feed() takes it;
-- witlink.apply_batch() refuses to commit for a session that does not hold it, so a stale owner
-- can never write.
CREATE FUNCTION witlink.feed_lock_held(p_feed bigint, p_backend integer)
RETURNS boolean
LANGUAGE sql STABLE AS $fn$
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted
           AND l.database = (SELECT oid FROM pg_catalog.pg_database
                              WHERE datname = current_database())
           AND l.classid = 7826539 AND l.objid = p_feed::oid AND l.objsubid = 2
           AND l.pid = p_backend)
$fn$;

-- Finds or creates the feed and tries to take it. Never blocks on another instance.
CREATE FUNCTION witlink.claim_feed(p_organization text, p_base_url text, p_project text,
                                   p_types text, p_link_types text, p_api_version text,
                                   p_start_date text, p_host text, p_pid integer,
                                   OUT feed_id bigint, OUT continuation_token text,
                                   OUT caught_up boolean, OUT owned boolean,
                                   OUT owner_host text, OUT owner_pid integer)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    -- Look first, so that claims of existing feeds do not use up identity values.
    FOR attempt IN 1..2 LOOP
        SELECT f.feed_id INTO feed_id
          FROM witlink.feed f
         WHERE f.organization = p_organization AND f.base_url = p_base_url
           AND f.project IS NOT DISTINCT FROM p_project
           AND f.types = p_types AND f.link_types = p_link_types;
        EXIT WHEN FOUND;
        INSERT INTO witlink.feed (organization, base_url, project, types, link_types,
                                  api_version, start_date)
        VALUES (p_organization, p_base_url, p_project, p_types, p_link_types, p_api_version,
                p_start_date)
        ON CONFLICT ON CONSTRAINT feed_identity DO NOTHING;
    END LOOP;

    -- Session locks stack: take it only if this session does not hold it already.
    owned := witlink.feed_lock_held(feed_id, pg_backend_pid())
             OR pg_try_advisory_lock(7826539, feed_id::integer);
    IF owned THEN
        UPDATE witlink.feed f
           SET api_version = p_api_version, start_date = p_start_date,
               owner_host = p_host, owner_pid = p_pid, owner_backend_pid = pg_backend_pid(),
               owner_since = CASE WHEN f.owner_backend_pid = pg_backend_pid()
                                  THEN f.owner_since ELSE now() END
         WHERE f.feed_id = claim_feed.feed_id;
    END IF;

    SELECT f.continuation_token, f.caught_up, f.owner_host, f.owner_pid
      INTO continuation_token, caught_up, owner_host, owner_pid
      FROM witlink.feed f WHERE f.feed_id = claim_feed.feed_id;
END
$fn$;

-- Lets another instance take the feed (after a reload removed it from this one's config).
CREATE FUNCTION witlink.release_feed(p_feed bigint)
RETURNS boolean
LANGUAGE sql AS $fn$
    SELECT CASE WHEN witlink.feed_lock_held(p_feed, pg_backend_pid())
                THEN pg_advisory_unlock(7826539, p_feed::integer) ELSE false END
$fn$;

-- Applies the batch staged in pg_temp.witlink_stage (filled by COPY in the same transaction):
-- new events are appended once, the current state follows them in feed order without ever
-- going back to an older changed_date (within a batch too: the state a batch leaves is its
-- event with the greatest (changed_date, event_id)), and the feed's token and counters move
-- with them.
CREATE FUNCTION witlink.apply_batch(p_feed bigint, p_token text, p_caught_up boolean,
                                    p_received integer)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    v_org text;
    v_new integer;
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

    WITH ins AS (
        INSERT INTO witlink.work_item_link_event AS e
            (organization, feed_id, link_type_reference_name, link_type,
             source_work_item_id, target_work_item_id, changed_date, changed_operation,
             is_active_reported, changed_by_id, changed_by, changed_by_display_name, comment,
             source_project_id, target_project_id)
        SELECT v_org, p_feed, s.rel, s.link_type, s.source_id, s.target_id, s.changed_date, s.op,
               s.is_active_reported, s.changed_by_id, s.changed_by, s.changed_by_display_name,
               s.comment, s.source_project_id, s.target_project_id
          FROM pg_temp.witlink_stage s
         ORDER BY s.seq
        ON CONFLICT ON CONSTRAINT work_item_link_event_change DO NOTHING
        RETURNING e.*
    ), last AS (
        SELECT DISTINCT ON (link_type_reference_name, source_work_item_id, target_work_item_id) *
          FROM ins
         ORDER BY link_type_reference_name, source_work_item_id, target_work_item_id,
                  changed_date DESC, event_id DESC
    ), last_create AS (
        SELECT DISTINCT ON (link_type_reference_name, source_work_item_id, target_work_item_id)
               link_type_reference_name, source_work_item_id, target_work_item_id,
               changed_date, changed_by
          FROM ins
         WHERE changed_operation = 'create'
         ORDER BY link_type_reference_name, source_work_item_id, target_work_item_id,
                  changed_date DESC, event_id DESC
    ), upsert AS (
        INSERT INTO witlink.work_item_link AS w
            (organization, link_type_reference_name, source_work_item_id, target_work_item_id,
             is_active, link_type, source_project_id, target_project_id, comment,
             created_date, created_by, deleted_date, deleted_by, changed_date, changed_by,
             last_event_id, updated_at)
        SELECT l.organization, l.link_type_reference_name, l.source_work_item_id,
               l.target_work_item_id, l.changed_operation = 'create', l.link_type,
               l.source_project_id, l.target_project_id, l.comment,
               c.changed_date, c.changed_by,
               CASE WHEN l.changed_operation = 'remove' THEN l.changed_date END,
               CASE WHEN l.changed_operation = 'remove' THEN l.changed_by END,
               l.changed_date, l.changed_by, l.event_id, now()
          FROM last l
          LEFT JOIN last_create c
               USING (link_type_reference_name, source_work_item_id, target_work_item_id)
        ON CONFLICT (organization, link_type_reference_name, source_work_item_id,
                     target_work_item_id) DO UPDATE SET
            is_active = EXCLUDED.is_active,
            link_type = EXCLUDED.link_type,
            source_project_id = EXCLUDED.source_project_id,
            target_project_id = EXCLUDED.target_project_id,
            comment = EXCLUDED.comment,
            created_date = CASE WHEN EXCLUDED.created_date IS NOT NULL
                                THEN EXCLUDED.created_date ELSE w.created_date END,
            created_by = CASE WHEN EXCLUDED.created_date IS NOT NULL
                              THEN EXCLUDED.created_by ELSE w.created_by END,
            deleted_date = EXCLUDED.deleted_date,
            deleted_by = EXCLUDED.deleted_by,
            changed_date = EXCLUDED.changed_date,
            changed_by = EXCLUDED.changed_by,
            last_event_id = EXCLUDED.last_event_id,
            updated_at = EXCLUDED.updated_at
        WHERE w.changed_date <= EXCLUDED.changed_date
    )
    SELECT count(*) INTO v_new FROM ins;

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
