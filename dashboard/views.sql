-- The reporting contract: views that join the facts to their exhibition, floor, department,
-- rating and request, on the museum's clock (Europe/London). The dashboard reads these views
-- (and the rating and request tables for their names); Tableau, Metabase or Superset can read
-- them too. Their columns are documented in docs/dashboards.md and only ever grow.
--
-- Rollups keep the dashboard fast at any number of rows: counts per London date, hour
-- (ratings) or quarter hour (requests), exhibition and value, and the same per London date
-- alone, ten times fewer rows for the ranges and charts that need no time of day. Their size
-- grows with days, never with interactions. PostgreSQL maintains them itself, with
-- statement-level triggers over each statement's transition table, so a COPY of a batch adds
-- one grouped upsert per rollup, not one per row; the pipeline knows nothing of them.
--
-- Applying this file is idempotent and never deletes facts. `python -m stack schema` applies it
-- after the pipeline's schema.sql, in the same transaction (lmnh.database.apply_schema with this
-- file as an extension), and it rebuilds a rollup only when it no longer adds up to its fact
-- table (for example the first time it is applied to existing data).

-- The museum's clock -------------------------------------------------------------------------
-- The London date, hour and quarter hour of an instant, written once: the triggers, the
-- rebuild and the views all call these, so they cannot drift apart. IMMUTABLE (as PostgreSQL
-- holds `AT TIME ZONE` with a named zone to be) and plain SQL, so the planner inlines them.

CREATE OR REPLACE FUNCTION london_time(at timestamptz) RETURNS timestamp
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN at AT TIME ZONE 'Europe/London';

CREATE OR REPLACE FUNCTION london_date(at timestamptz) RETURNS date
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN london_time(at)::date;

CREATE OR REPLACE FUNCTION london_hour(at timestamptz) RETURNS smallint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN extract(hour FROM london_time(at))::smallint;

-- 0 for 00:00-00:14, ..., 35 for 08:45-08:59, ..., 95 for 23:45-23:59.
CREATE OR REPLACE FUNCTION london_quarter_hour(at timestamptz) RETURNS smallint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (extract(hour FROM london_time(at)) * 4
        + floor(extract(minute FROM london_time(at)) / 15))::smallint;

-- Rollups ------------------------------------------------------------------------------------
-- No foreign keys: every row is derived from a fact row that already passed them, and the
-- checks would only slow the triggers down.

CREATE TABLE IF NOT EXISTS rating_rollup (
    london_date date NOT NULL,
    hour_of_day smallint NOT NULL CHECK (hour_of_day BETWEEN 0 AND 23),
    exhibition_id smallint NOT NULL,
    rating_id smallint NOT NULL,
    interactions bigint NOT NULL CHECK (interactions > 0),
    PRIMARY KEY (london_date, hour_of_day, exhibition_id, rating_id)
);

CREATE TABLE IF NOT EXISTS request_rollup (
    london_date date NOT NULL,
    quarter_hour smallint NOT NULL CHECK (quarter_hour BETWEEN 0 AND 95),  -- of the London day
    exhibition_id smallint NOT NULL,
    request_id smallint NOT NULL,
    interactions bigint NOT NULL CHECK (interactions > 0),
    PRIMARY KEY (london_date, quarter_hour, exhibition_id, request_id)
);

-- The same counts per London date: what a range without an hour filter, and a chart without a
-- time of day, reads.
CREATE TABLE IF NOT EXISTS rating_daily_rollup (
    london_date date NOT NULL,
    exhibition_id smallint NOT NULL,
    rating_id smallint NOT NULL,
    interactions bigint NOT NULL CHECK (interactions > 0),
    PRIMARY KEY (london_date, exhibition_id, rating_id)
);

CREATE TABLE IF NOT EXISTS request_daily_rollup (
    london_date date NOT NULL,
    exhibition_id smallint NOT NULL,
    request_id smallint NOT NULL,
    interactions bigint NOT NULL CHECK (interactions > 0),
    PRIMARY KEY (london_date, exhibition_id, request_id)
);

-- The rows of a statement are grouped first, then upserted in key order, the finer rollup
-- first: two loaders that touch the same keys then lock them in the same order and cannot
-- deadlock on the rollups.
CREATE OR REPLACE FUNCTION rating_rollup_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO rating_rollup AS r
            (london_date, hour_of_day, exhibition_id, rating_id, interactions)
        SELECT london_date(n.event_at),
               london_hour(n.event_at),
               n.exhibition_id, n.rating_id, count(*)
        FROM new_rows AS n
        GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3, 4
        ON CONFLICT (london_date, hour_of_day, exhibition_id, rating_id)
        DO UPDATE SET interactions = r.interactions + excluded.interactions;
        INSERT INTO rating_daily_rollup AS r (london_date, exhibition_id, rating_id, interactions)
        SELECT london_date(n.event_at), n.exhibition_id, n.rating_id, count(*)
        FROM new_rows AS n
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT (london_date, exhibition_id, rating_id)
        DO UPDATE SET interactions = r.interactions + excluded.interactions;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        WITH gone AS (
            SELECT london_date(o.event_at) AS london_date,
                   london_hour(o.event_at) AS hour_of_day,
                   o.exhibition_id, o.rating_id, count(*) AS interactions
            FROM old_rows AS o
            GROUP BY 1, 2, 3, 4
        ), lowered AS (
            UPDATE rating_rollup AS r SET interactions = r.interactions - g.interactions
            FROM gone AS g
            WHERE (r.london_date, r.hour_of_day, r.exhibition_id, r.rating_id)
                = (g.london_date, g.hour_of_day, g.exhibition_id, g.rating_id)
                AND r.interactions > g.interactions
        )
        DELETE FROM rating_rollup AS r
        USING gone AS g
        WHERE (r.london_date, r.hour_of_day, r.exhibition_id, r.rating_id)
            = (g.london_date, g.hour_of_day, g.exhibition_id, g.rating_id)
            AND r.interactions <= g.interactions;
        WITH gone AS (
            SELECT london_date(o.event_at) AS london_date, o.exhibition_id, o.rating_id,
                   count(*) AS interactions
            FROM old_rows AS o
            GROUP BY 1, 2, 3
        ), lowered AS (
            UPDATE rating_daily_rollup AS r SET interactions = r.interactions - g.interactions
            FROM gone AS g
            WHERE (r.london_date, r.exhibition_id, r.rating_id)
                = (g.london_date, g.exhibition_id, g.rating_id)
                AND r.interactions > g.interactions
        )
        DELETE FROM rating_daily_rollup AS r
        USING gone AS g
        WHERE (r.london_date, r.exhibition_id, r.rating_id)
            = (g.london_date, g.exhibition_id, g.rating_id)
            AND r.interactions <= g.interactions;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION request_rollup_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO request_rollup AS r
            (london_date, quarter_hour, exhibition_id, request_id, interactions)
        SELECT london_date(n.event_at),
               london_quarter_hour(n.event_at),
               n.exhibition_id, n.request_id, count(*)
        FROM new_rows AS n
        GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3, 4
        ON CONFLICT (london_date, quarter_hour, exhibition_id, request_id)
        DO UPDATE SET interactions = r.interactions + excluded.interactions;
        INSERT INTO request_daily_rollup AS r (london_date, exhibition_id, request_id, interactions)
        SELECT london_date(n.event_at), n.exhibition_id, n.request_id, count(*)
        FROM new_rows AS n
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT (london_date, exhibition_id, request_id)
        DO UPDATE SET interactions = r.interactions + excluded.interactions;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        WITH gone AS (
            SELECT london_date(o.event_at) AS london_date,
                   london_quarter_hour(o.event_at) AS quarter_hour,
                   o.exhibition_id, o.request_id, count(*) AS interactions
            FROM old_rows AS o
            GROUP BY 1, 2, 3, 4
        ), lowered AS (
            UPDATE request_rollup AS r SET interactions = r.interactions - g.interactions
            FROM gone AS g
            WHERE (r.london_date, r.quarter_hour, r.exhibition_id, r.request_id)
                = (g.london_date, g.quarter_hour, g.exhibition_id, g.request_id)
                AND r.interactions > g.interactions
        )
        DELETE FROM request_rollup AS r
        USING gone AS g
        WHERE (r.london_date, r.quarter_hour, r.exhibition_id, r.request_id)
            = (g.london_date, g.quarter_hour, g.exhibition_id, g.request_id)
            AND r.interactions <= g.interactions;
        WITH gone AS (
            SELECT london_date(o.event_at) AS london_date, o.exhibition_id, o.request_id,
                   count(*) AS interactions
            FROM old_rows AS o
            GROUP BY 1, 2, 3
        ), lowered AS (
            UPDATE request_daily_rollup AS r SET interactions = r.interactions - g.interactions
            FROM gone AS g
            WHERE (r.london_date, r.exhibition_id, r.request_id)
                = (g.london_date, g.exhibition_id, g.request_id)
                AND r.interactions > g.interactions
        )
        DELETE FROM request_daily_rollup AS r
        USING gone AS g
        WHERE (r.london_date, r.exhibition_id, r.request_id)
            = (g.london_date, g.exhibition_id, g.request_id)
            AND r.interactions <= g.interactions;
    END IF;
    RETURN NULL;
END
$$;

-- DELETE, not TRUNCATE: `TRUNCATE rating_interaction, rating_rollup` must work too, and a
-- TRUNCATE here would fail on a table that the same statement is truncating.
CREATE OR REPLACE FUNCTION rollup_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'rating_interaction' THEN
        DELETE FROM rating_rollup;
        DELETE FROM rating_daily_rollup;
    ELSE
        DELETE FROM request_rollup;
        DELETE FROM request_daily_rollup;
    END IF;
    RETURN NULL;
END
$$;

-- Nothing may be stored between the check below and the triggers taking over, or the rollups
-- would miss it: hold off writers (readers go on) until this transaction commits.
LOCK TABLE rating_interaction, request_interaction IN SHARE ROW EXCLUSIVE MODE;

CREATE OR REPLACE TRIGGER rating_rollup_insert AFTER INSERT ON rating_interaction
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rating_rollup_apply();
CREATE OR REPLACE TRIGGER rating_rollup_update AFTER UPDATE ON rating_interaction
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rating_rollup_apply();
CREATE OR REPLACE TRIGGER rating_rollup_delete AFTER DELETE ON rating_interaction
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rating_rollup_apply();
CREATE OR REPLACE TRIGGER rating_rollup_truncate AFTER TRUNCATE ON rating_interaction
    FOR EACH STATEMENT EXECUTE FUNCTION rollup_truncate();

CREATE OR REPLACE TRIGGER request_rollup_insert AFTER INSERT ON request_interaction
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION request_rollup_apply();
CREATE OR REPLACE TRIGGER request_rollup_update AFTER UPDATE ON request_interaction
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION request_rollup_apply();
CREATE OR REPLACE TRIGGER request_rollup_delete AFTER DELETE ON request_interaction
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION request_rollup_apply();
CREATE OR REPLACE TRIGGER request_rollup_truncate AFTER TRUNCATE ON request_interaction
    FOR EACH STATEMENT EXECUTE FUNCTION rollup_truncate();

-- Rebuild a rollup that does not add up to its facts (new rollup over existing data).
DO $$
BEGIN
    IF (SELECT coalesce(sum(interactions), 0) FROM rating_rollup)
        <> (SELECT count(*) FROM rating_interaction) THEN
        DELETE FROM rating_rollup;
        INSERT INTO rating_rollup (london_date, hour_of_day, exhibition_id, rating_id,
                                   interactions)
        SELECT london_date(event_at),
               london_hour(event_at),
               exhibition_id, rating_id, count(*)
        FROM rating_interaction
        GROUP BY 1, 2, 3, 4;
    END IF;
    IF (SELECT coalesce(sum(interactions), 0) FROM request_rollup)
        <> (SELECT count(*) FROM request_interaction) THEN
        DELETE FROM request_rollup;
        INSERT INTO request_rollup (london_date, quarter_hour, exhibition_id, request_id,
                                    interactions)
        SELECT london_date(event_at),
               london_quarter_hour(event_at),
               exhibition_id, request_id, count(*)
        FROM request_interaction
        GROUP BY 1, 2, 3, 4;
    END IF;
    -- The daily rollups regroup the finer ones, which now add up: rebuilt when any count
    -- differs, from those (a few hundred thousand rows, however many facts).
    IF EXISTS (
        (SELECT london_date, exhibition_id, rating_id, sum(interactions) FROM rating_rollup
         GROUP BY 1, 2, 3
         EXCEPT ALL
         SELECT london_date, exhibition_id, rating_id, interactions FROM rating_daily_rollup)
        UNION ALL
        (SELECT london_date, exhibition_id, rating_id, interactions FROM rating_daily_rollup
         EXCEPT ALL
         SELECT london_date, exhibition_id, rating_id, sum(interactions) FROM rating_rollup
         GROUP BY 1, 2, 3)
    ) THEN
        DELETE FROM rating_daily_rollup;
        INSERT INTO rating_daily_rollup (london_date, exhibition_id, rating_id, interactions)
        SELECT london_date, exhibition_id, rating_id, sum(interactions)
        FROM rating_rollup
        GROUP BY 1, 2, 3;
    END IF;
    IF EXISTS (
        (SELECT london_date, exhibition_id, request_id, sum(interactions) FROM request_rollup
         GROUP BY 1, 2, 3
         EXCEPT ALL
         SELECT london_date, exhibition_id, request_id, interactions FROM request_daily_rollup)
        UNION ALL
        (SELECT london_date, exhibition_id, request_id, interactions FROM request_daily_rollup
         EXCEPT ALL
         SELECT london_date, exhibition_id, request_id, sum(interactions) FROM request_rollup
         GROUP BY 1, 2, 3)
    ) THEN
        DELETE FROM request_daily_rollup;
        INSERT INTO request_daily_rollup (london_date, exhibition_id, request_id, interactions)
        SELECT london_date, exhibition_id, request_id, sum(interactions)
        FROM request_rollup
        GROUP BY 1, 2, 3;
    END IF;
END
$$;

-- Push ---------------------------------------------------------------------------------------
-- Each statement that stores requests announces their ids on channel `request_interaction`
-- ({"first": lowest, "last": highest}); PostgreSQL delivers it when the transaction commits,
-- never for one rolled back. The dashboard's one listener reads those rows and pushes them to
-- the Safety page. A range may take in ids of other transactions: each of those announces its
-- own, so none is missed, and the listener drops the ones it has sent. The pipeline knows
-- nothing of this, as of the rollups.
CREATE OR REPLACE FUNCTION request_interaction_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    first_id bigint;
    last_id bigint;
BEGIN
    SELECT min(request_interaction_id), max(request_interaction_id) INTO first_id, last_id
    FROM new_rows;
    IF first_id IS NOT NULL THEN
        PERFORM pg_notify('request_interaction',
                          json_build_object('first', first_id, 'last', last_id)::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER request_interaction_notify AFTER INSERT ON request_interaction
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION request_interaction_notify();

-- The contract -------------------------------------------------------------------------------

CREATE OR REPLACE VIEW exhibition_overview AS
SELECT e.exhibition_id,
       e.public_id,
       e.exhibition_name,
       e.exhibition_description,
       f.floor_name,
       d.department_name,
       e.exhibition_start_date
FROM exhibition AS e
LEFT JOIN floor AS f USING (floor_id)
LEFT JOIN department AS d USING (department_id);

-- The joins below are LEFT JOINs to unique keys, which PostgreSQL drops from a query that reads
-- none of their columns (a chart grouped by exhibition skips floor, department and rating).
-- They never add or lose rows: every fact's references are enforced by foreign keys, and every
-- rollup row comes from a fact.

-- One row per stored rating.
CREATE OR REPLACE VIEW rating_detail AS
SELECT i.rating_interaction_id,
       i.event_at,
       london_time(i.event_at) AS london_time,
       london_date(i.event_at) AS london_date,
       london_hour(i.event_at) AS hour_of_day,
       e.public_id,
       e.exhibition_name,
       f.floor_name,
       d.department_name,
       r.rating_value,
       r.rating_description
FROM rating_interaction AS i
LEFT JOIN exhibition AS e USING (exhibition_id)
LEFT JOIN floor AS f ON f.floor_id = e.floor_id
LEFT JOIN department AS d ON d.department_id = e.department_id
LEFT JOIN rating AS r USING (rating_id);

-- One row per stored assistance or emergency request.
CREATE OR REPLACE VIEW request_detail AS
SELECT i.request_interaction_id,
       i.event_at,
       london_time(i.event_at) AS london_time,
       london_date(i.event_at) AS london_date,
       london_hour(i.event_at) AS hour_of_day,
       e.public_id,
       e.exhibition_name,
       f.floor_name,
       d.department_name,
       q.request_value,
       q.request_description
FROM request_interaction AS i
LEFT JOIN exhibition AS e USING (exhibition_id)
LEFT JOIN floor AS f ON f.floor_id = e.floor_id
LEFT JOIN department AS d ON d.department_id = e.department_id
LEFT JOIN request AS q USING (request_id);

-- Ratings counted per London date, hour of day, exhibition and rating value.
CREATE OR REPLACE VIEW rating_hourly AS
SELECT u.london_date,
       u.hour_of_day,
       e.public_id,
       e.exhibition_name,
       f.floor_name,
       d.department_name,
       r.rating_value,
       r.rating_description,
       u.interactions
FROM rating_rollup AS u
LEFT JOIN exhibition AS e USING (exhibition_id)
LEFT JOIN floor AS f ON f.floor_id = e.floor_id
LEFT JOIN department AS d ON d.department_id = e.department_id
LEFT JOIN rating AS r USING (rating_id);

-- Requests counted per London date, quarter hour of the day, exhibition and request type.
CREATE OR REPLACE VIEW request_quarter_hourly AS
SELECT u.london_date,
       (u.quarter_hour / 4)::smallint AS hour_of_day,
       make_time(u.quarter_hour / 4, (u.quarter_hour % 4) * 15, 0) AS quarter_hour_start,
       e.public_id,
       e.exhibition_name,
       f.floor_name,
       d.department_name,
       q.request_value,
       q.request_description,
       u.interactions
FROM request_rollup AS u
LEFT JOIN exhibition AS e USING (exhibition_id)
LEFT JOIN floor AS f ON f.floor_id = e.floor_id
LEFT JOIN department AS d ON d.department_id = e.department_id
LEFT JOIN request AS q USING (request_id);

-- Ratings counted per London date, exhibition and rating value.
CREATE OR REPLACE VIEW rating_daily AS
SELECT u.london_date,
       e.public_id,
       e.exhibition_name,
       f.floor_name,
       d.department_name,
       r.rating_value,
       r.rating_description,
       u.interactions
FROM rating_daily_rollup AS u
LEFT JOIN exhibition AS e USING (exhibition_id)
LEFT JOIN floor AS f ON f.floor_id = e.floor_id
LEFT JOIN department AS d ON d.department_id = e.department_id
LEFT JOIN rating AS r USING (rating_id);

-- Requests counted per London date, exhibition and request type.
CREATE OR REPLACE VIEW request_daily AS
SELECT u.london_date,
       e.public_id,
       e.exhibition_name,
       f.floor_name,
       d.department_name,
       q.request_value,
       q.request_description,
       u.interactions
FROM request_daily_rollup AS u
LEFT JOIN exhibition AS e USING (exhibition_id)
LEFT JOIN floor AS f ON f.floor_id = e.floor_id
LEFT JOIN department AS d ON d.department_id = e.department_id
LEFT JOIN request AS q USING (request_id);

-- How fresh the data is: the newest interaction and the pipeline's latest load.
CREATE OR REPLACE VIEW data_freshness AS
SELECT (SELECT max(event_at) FROM rating_interaction) AS latest_rating_at,
       (SELECT max(event_at) FROM request_interaction) AS latest_request_at,
       greatest((SELECT max(event_at) FROM rating_interaction),
                (SELECT max(event_at) FROM request_interaction)) AS latest_interaction_at,
       (SELECT max(updated_at) FROM kafka_offset) AS last_loaded_at;

-- Staff ---------------------------------------------------------------------------------------
-- An account signs in with its username and password (argon2id; the hash alone is stored).
-- Its roles say which pages it may open: exhibitions, security, operations, admin.
CREATE TABLE IF NOT EXISTS staff_account (
    account_id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username text NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9][a-z0-9._@-]{0,99}$'),
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    roles text[] NOT NULL DEFAULT '{}'
        CHECK (roles <@ ARRAY['exhibitions', 'security', 'operations', 'admin']),
    password_hash text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    created_at timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

-- A session is found by the SHA-256 of its cookie's token, so that a copy of this table hands
-- out no session. A local account's session takes the account's roles as they are now (a
-- changed role or a disabled account counts at the next request); one signed in through the
-- identity provider keeps the roles its groups gave at sign-in, until it expires.
CREATE TABLE IF NOT EXISTS staff_session (
    token_sha256 bytea PRIMARY KEY CHECK (length(token_sha256) = 32),
    account_id integer REFERENCES staff_account ON DELETE CASCADE,
    username text NOT NULL,
    display_name text NOT NULL,
    roles text[] NOT NULL,
    csrf_token text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS staff_session_expires_at ON staff_session (expires_at);
