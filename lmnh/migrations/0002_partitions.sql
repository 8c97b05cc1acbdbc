-- Migration 0002: the fact tables, the rejects and the load minutes partitioned by calendar
-- month (UTC month boundaries), with a DEFAULT partition each, and the partition maintenance
-- and retention of lmnh/schema.sql ("Partitions and retention"). A loaded database is
-- converted in this one transaction: each table is set aside under another name, made again
-- partitioned, given a partition for every month its rows span, and its rows are copied in
-- with their ids (the identity goes on after the highest); the triggers are made after the
-- copy, so the dashboard's rollups (which already count these rows) are not counted twice,
-- and the views that read the tables are made again as they were. The four tables are locked
-- first, under the applier's lock_timeout; the pipeline waits for the copy (about 20 s per
-- million rows on two cores) and then goes on where it was. Frozen once released, like 0001.

-- Writers and readers of the four tables wait for this transaction from here on.
LOCK TABLE rating_interaction, request_interaction, rejected_message, load_minute
    IN ACCESS EXCLUSIVE MODE;

-- The views of dashboard/views.sql that read them, made again below.
DROP VIEW data_freshness, rating_detail, request_detail;

-- Each table aside under <table>_unpartitioned, without the keys, checks, indexes and identity
-- whose names the new table takes; the identity's state is kept for the new one.
CREATE TEMPORARY TABLE identity_before (parent text PRIMARY KEY, last_value bigint)
    ON COMMIT DROP;
DO $$
DECLARE
    aside record;
    sequence_name text;
    last_value bigint;
    is_called boolean;
    index_name name;
BEGIN
    FOR aside IN
        SELECT * FROM (VALUES ('rating_interaction', 'rating_interaction_id'),
                              ('request_interaction', 'request_interaction_id'),
                              ('rejected_message', 'rejected_message_id'),
                              ('load_minute', NULL)) AS t (parent, id_column)
    LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', aside.parent,
                       aside.parent || '_unpartitioned');
        IF aside.id_column IS NOT NULL THEN
            sequence_name := pg_get_serial_sequence(aside.parent || '_unpartitioned',
                                                    aside.id_column);
            EXECUTE format('SELECT last_value, is_called FROM %s', sequence_name)
                INTO last_value, is_called;
            INSERT INTO identity_before
            VALUES (aside.parent, CASE WHEN is_called THEN last_value END);
            EXECUTE format('ALTER TABLE %I ALTER COLUMN %I DROP IDENTITY',
                           aside.parent || '_unpartitioned', aside.id_column);
        END IF;
        FOR index_name IN
            SELECT conname FROM pg_constraint
            WHERE conrelid = (aside.parent || '_unpartitioned')::regclass
                AND contype IN ('p', 'u', 'c')
        LOOP
            EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', aside.parent || '_unpartitioned',
                           index_name);
        END LOOP;
        FOR index_name IN
            SELECT indexrelid::regclass::name FROM pg_index
            WHERE indrelid = (aside.parent || '_unpartitioned')::regclass
        LOOP
            EXECUTE format('DROP INDEX %I', index_name);
        END LOOP;
    END LOOP;
END
$$;

-- The tables as lmnh/schema.sql makes them --------------------------------------------------

-- A partition of `parent` named `part`, made apart (attached by the caller) with the parent's
-- columns, defaults and checks, and its coordinates' key named <part>_kafka_coordinates: a
-- duplicate is reported under the partition's key, and the loaders know it by that suffix.
CREATE OR REPLACE FUNCTION lmnh_partition_table(parent text, part text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    coordinates text;
BEGIN
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   part, parent);
    SELECT pg_get_constraintdef(oid) INTO coordinates FROM pg_constraint
    WHERE conrelid = parent::regclass AND conname = parent || '_kafka_coordinates';
    IF coordinates IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', part, part || '_kafka_coordinates',
                       coordinates);
    END IF;
END
$$;

-- The DEFAULT partition of `parent`, <parent>_default, unless it has one: a row of a month
-- whose partition is not made yet is stored there, never refused.
CREATE OR REPLACE PROCEDURE lmnh_default_partition(parent text)
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass(format('%I', parent || '_default')) IS NULL THEN
        PERFORM lmnh_partition_table(parent, parent || '_default');
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I DEFAULT', parent, parent || '_default');
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS rating_interaction (
    rating_interaction_id bigint GENERATED ALWAYS AS IDENTITY,
    exhibition_id smallint NOT NULL,  -- references exhibition: see "References" below
    rating_id smallint NOT NULL,  -- references rating
    event_at timestamptz NOT NULL,
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL CHECK (kafka_partition >= 0),
    kafka_offset bigint NOT NULL CHECK (kafka_offset >= 0),
    PRIMARY KEY (rating_interaction_id, event_at),
    CONSTRAINT rating_interaction_kafka_coordinates
        UNIQUE (kafka_topic, kafka_partition, kafka_offset, event_at)
) PARTITION BY RANGE (event_at);
CALL lmnh_default_partition('rating_interaction');

CREATE TABLE IF NOT EXISTS request_interaction (
    request_interaction_id bigint GENERATED ALWAYS AS IDENTITY,
    exhibition_id smallint NOT NULL,  -- references exhibition: see "References" below
    request_id smallint NOT NULL,  -- references request
    event_at timestamptz NOT NULL,
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL CHECK (kafka_partition >= 0),
    kafka_offset bigint NOT NULL CHECK (kafka_offset >= 0),
    PRIMARY KEY (request_interaction_id, event_at),
    CONSTRAINT request_interaction_kafka_coordinates
        UNIQUE (kafka_topic, kafka_partition, kafka_offset, event_at)
) PARTITION BY RANGE (event_at);
CALL lmnh_default_partition('request_interaction');

CREATE INDEX IF NOT EXISTS rating_interaction_exhibition_event_idx
    ON rating_interaction (exhibition_id, event_at);
CREATE INDEX IF NOT EXISTS rating_interaction_event_at_idx ON rating_interaction (event_at);
CREATE INDEX IF NOT EXISTS request_interaction_exhibition_event_idx
    ON request_interaction (exhibition_id, event_at);
CREATE INDEX IF NOT EXISTS request_interaction_event_at_idx ON request_interaction (event_at);

CREATE TABLE IF NOT EXISTS rejected_message (
    rejected_message_id bigint GENERATED ALWAYS AS IDENTITY,
    raw bytea,  -- NULL only for a record that had no value at all
    reason_code text NOT NULL CHECK (reason_code ~ '^[a-z_]+$'),
    reason text NOT NULL,
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL CHECK (kafka_partition >= 0),
    kafka_offset bigint NOT NULL CHECK (kafka_offset >= 0),
    kafka_timestamp timestamptz,
    received_at timestamptz NOT NULL DEFAULT now(),
    -- The known exhibition (its public id) that a rejected message's `site` named, when it
    -- was a JSON object naming one: a kiosk that starts sending bad data shows up as one
    -- site's rejects. No reference: the rejected message is kept as it came, whatever happens
    -- to the exhibition.
    named_exhibition varchar(10),
    PRIMARY KEY (rejected_message_id, received_at),
    CONSTRAINT rejected_message_kafka_coordinates
        UNIQUE (kafka_topic, kafka_partition, kafka_offset, received_at)
) PARTITION BY RANGE (received_at);
CALL lmnh_default_partition('rejected_message');

CREATE INDEX IF NOT EXISTS rejected_message_reason_code_idx ON rejected_message (reason_code);
-- The Feed page reads the latest rejects and counts them over time.
CREATE INDEX IF NOT EXISTS rejected_message_received_at_idx ON rejected_message (received_at);

CREATE TABLE IF NOT EXISTS load_minute (
    minute timestamptz NOT NULL,
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL CHECK (kafka_partition >= 0),
    messages bigint NOT NULL CHECK (messages > 0),
    PRIMARY KEY (minute, kafka_topic, kafka_partition)
) PARTITION BY RANGE (minute);
CALL lmnh_default_partition('load_minute');

-- What the dropped months counted, per UTC date (a month partition holds whole UTC dates, so
-- a day is either here or still in its table, never in both): counts over a longer span are
-- these plus what the tables still hold. Kept for ever.
CREATE TABLE IF NOT EXISTS rejected_daily (
    day date NOT NULL,
    reason_code text NOT NULL CHECK (reason_code ~ '^[a-z_]+$'),
    named_exhibition varchar(10),
    messages bigint NOT NULL CHECK (messages > 0),
    CONSTRAINT rejected_daily_key UNIQUE NULLS NOT DISTINCT (day, reason_code, named_exhibition)
);

CREATE TABLE IF NOT EXISTS load_daily (
    day date NOT NULL,
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL CHECK (kafka_partition >= 0),
    messages bigint NOT NULL CHECK (messages > 0),
    PRIMARY KEY (day, kafka_topic, kafka_partition)
);

-- The partitioned tables, the column each is partitioned by, and whether its old months are
-- dropped (after the days given to lmnh_maintain).
CREATE OR REPLACE FUNCTION lmnh_partitioned(OUT parent text, OUT partition_key text,
                                            OUT dropped_when_old boolean)
RETURNS SETOF record
LANGUAGE sql IMMUTABLE AS $$
    VALUES ('rating_interaction', 'event_at', false),
           ('request_interaction', 'event_at', false),
           ('rejected_message', 'received_at', true),
           ('load_minute', 'minute', true)
$$;

-- Make `parent`'s partition of the month starting `month` (a first of the month), moving into
-- it in the same transaction the rows of that month its DEFAULT partition holds. Returns the
-- rows moved, or NULL if the partition was there already. Made apart and attached, so the
-- parent is locked only in SHARE UPDATE EXCLUSIVE mode (readers and writers go on); the
-- DEFAULT partition is locked while it is checked. Asks each lock under the caller's
-- lock_timeout.
CREATE OR REPLACE FUNCTION lmnh_make_partition(parent text, month date) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    key text := (SELECT p.partition_key FROM lmnh_partitioned() AS p WHERE p.parent = $1);
    part text := format('%s_p%s', parent, to_char(month, 'YYYY_MM'));
    low text := to_char(date_trunc('month', month), 'YYYY-MM-DD') || ' 00:00:00+00';
    high text := to_char(date_trunc('month', month) + interval '1 month', 'YYYY-MM-DD')
                 || ' 00:00:00+00';
    moved bigint;
BEGIN
    IF key IS NULL THEN
        RAISE invalid_parameter_value USING MESSAGE = format('%s is not partitioned', parent);
    END IF;
    -- Self-conflicting: two maintainers make a month one after the other.
    EXECUTE format('LOCK TABLE %I IN SHARE UPDATE EXCLUSIVE MODE', parent);
    IF to_regclass(format('%I', part)) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', parent || '_default');
    PERFORM lmnh_partition_table(parent, part);
    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= $1 AND %I < $2 RETURNING *)'
                   ' INSERT INTO %I SELECT * FROM moved', parent || '_default', key, key, part)
        USING low::timestamptz, high::timestamptz;
    GET DIAGNOSTICS moved = ROW_COUNT;
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   parent, part, low, high);
    RETURN moved;
END
$$;

-- Drop `parent`'s partition of the month starting `month` after adding its counts to the daily
-- rollup, in one transaction: the counts are kept whatever happens. Only rejected_message and
-- load_minute. Returns the rows dropped, or NULL if there was no such partition. The parent is
-- locked first (dropping a partition needs ACCESS EXCLUSIVE on it), under lock_timeout, so
-- nothing is stored into or taken from the month between its counting and its drop.
CREATE OR REPLACE FUNCTION lmnh_drop_partition(parent text, month date) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    part text := format('%s_p%s', parent, to_char(month, 'YYYY_MM'));
    dropped bigint;
BEGIN
    IF NOT coalesce((SELECT p.dropped_when_old FROM lmnh_partitioned() AS p
                     WHERE p.parent = $1), false) THEN
        RAISE invalid_parameter_value USING
            MESSAGE = format('%s keeps every month: only raw rejects and load minutes are'
                             ' dropped', parent);
    END IF;
    EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', parent);
    IF to_regclass(format('%I', part)) IS NULL THEN
        RETURN NULL;
    END IF;
    -- One scan counts the rows dropped and their rollup, under the lock that holds the loaders.
    IF parent = 'rejected_message' THEN
        EXECUTE format('WITH counted AS (SELECT (received_at AT TIME ZONE %L)::date AS day,'
                       ' reason_code, named_exhibition, count(*) AS messages'
                       ' FROM %I GROUP BY 1, 2, 3),'
                       ' kept AS (INSERT INTO rejected_daily AS d (day, reason_code,'
                       ' named_exhibition, messages) SELECT day, reason_code, named_exhibition,'
                       ' messages FROM counted ORDER BY 1, 2, 3'
                       ' ON CONFLICT ON CONSTRAINT rejected_daily_key'
                       ' DO UPDATE SET messages = d.messages + excluded.messages)'
                       ' SELECT coalesce(sum(messages), 0) FROM counted', 'UTC', part)
            INTO dropped;
    ELSE
        EXECUTE format('WITH counted AS (SELECT (minute AT TIME ZONE %L)::date AS day,'
                       ' kafka_topic, kafka_partition, sum(messages) AS messages,'
                       ' count(*) AS n FROM %I GROUP BY 1, 2, 3),'
                       ' kept AS (INSERT INTO load_daily AS d (day, kafka_topic,'
                       ' kafka_partition, messages) SELECT day, kafka_topic, kafka_partition,'
                       ' messages FROM counted ORDER BY 1, 2, 3'
                       ' ON CONFLICT (day, kafka_topic, kafka_partition)'
                       ' DO UPDATE SET messages = d.messages + excluded.messages)'
                       ' SELECT coalesce(sum(n), 0) FROM counted', 'UTC', part)
            INTO dropped;
    END IF;
    EXECUTE format('DROP TABLE %I', part);
    RETURN dropped;
END
$$;

-- What lmnh_maintain will do at `at`, in order: make every month from this one to
-- `months_ahead` ahead that has no partition, and the months of the rows in a DEFAULT
-- partition; then drop the months of raw rejects and load minutes that ended more than
-- `rejected_days` and `load_minute_days` before `at`.
CREATE OR REPLACE FUNCTION lmnh_maintenance_plan(rejected_days integer, load_minute_days integer,
                                                 months_ahead integer, at timestamptz)
RETURNS TABLE (step text, parent text, month date)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    tables record;
    this_month date := date_trunc('month', at AT TIME ZONE 'UTC')::date;
    existing date[];
    stray date[];
    kept integer;
BEGIN
    FOR tables IN SELECT * FROM lmnh_partitioned() LOOP
        SELECT coalesce(array_agg(to_date(right(c.relname, 7), 'YYYY_MM')), '{}')
        INTO existing
        FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
        WHERE i.inhparent = tables.parent::regclass
            AND c.relname ~ ('^' || tables.parent || '_p[0-9]{4}_[0-9]{2}$');
        EXECUTE format('SELECT coalesce(array_agg(DISTINCT date_trunc(''month'', %I AT TIME ZONE'
                       ' ''UTC'')::date), ''{}'') FROM %I', tables.partition_key,
                       tables.parent || '_default')
            INTO stray;
        step := 'make';
        parent := tables.parent;
        FOR month IN
            SELECT m FROM (
                SELECT (this_month + make_interval(months => n))::date AS m
                FROM generate_series(0, months_ahead) AS n
                UNION
                SELECT unnest(stray)
            ) AS wanted
            WHERE m <> ALL (existing)
            ORDER BY m
        LOOP
            existing := existing || month;
            RETURN NEXT;
        END LOOP;
        CONTINUE WHEN NOT tables.dropped_when_old;
        kept := CASE tables.parent WHEN 'rejected_message' THEN rejected_days
                ELSE load_minute_days END;
        step := 'drop';
        FOR month IN
            SELECT m FROM unnest(existing) AS m
            WHERE (m + interval '1 month')::timestamp AT TIME ZONE 'UTC'
                <= at - make_interval(days => kept)
            ORDER BY m
        LOOP
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;

-- Partition maintenance and retention, every step of lmnh_maintenance_plan in a transaction of
-- its own. Each lock is asked for at most `lock_timeout_ms`: a request that waited longer would
-- queue the pipeline and the dashboards behind it. A step not granted its locks is rolled
-- back and tried again after a pause, `attempts` times in all, then skipped (the next run
-- does it). `report`: what was done, one object per step: {"step": "made", "moved", "dropped"
-- or "skipped", "table", "partition", "rows"}. Run twice, the second run does nothing.
CREATE OR REPLACE PROCEDURE lmnh_maintain(rejected_days integer DEFAULT 90,
                                          load_minute_days integer DEFAULT 35,
                                          months_ahead integer DEFAULT 3,
                                          lock_timeout_ms integer DEFAULT 3000,
                                          attempts integer DEFAULT 5,
                                          INOUT report jsonb DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    planned record;
    affected bigint;
    tries integer;
    done boolean;
BEGIN
    IF least(rejected_days, load_minute_days, lock_timeout_ms, attempts) < 1
        OR months_ahead < 0 THEN
        RAISE invalid_parameter_value USING
            MESSAGE = 'days, lock_timeout_ms and attempts must be 1 or more, months_ahead 0 or more';
    END IF;
    report := '[]';
    FOR planned IN
        SELECT * FROM lmnh_maintenance_plan(rejected_days, load_minute_days, months_ahead, now())
    LOOP
        tries := 0;
        done := false;
        LOOP
            BEGIN
                PERFORM set_config('lock_timeout', lock_timeout_ms || 'ms', true);
                IF planned.step = 'make' THEN
                    affected := lmnh_make_partition(planned.parent, planned.month);
                ELSE
                    affected := lmnh_drop_partition(planned.parent, planned.month);
                END IF;
                done := true;
            EXCEPTION
                WHEN lock_not_available OR deadlock_detected THEN
                    tries := tries + 1;
            END;
            EXIT WHEN done OR tries >= attempts;
            -- Nothing is held while waiting: the step's subtransaction was rolled back.
            PERFORM pg_sleep(least(0.25 * 2 ^ (tries - 1), 5));
        END LOOP;
        IF NOT done OR affected IS NOT NULL THEN  -- NULL: another run did it meanwhile
            report := report || jsonb_build_object(
                'step', CASE WHEN NOT done THEN 'skipped'
                             WHEN planned.step = 'drop' THEN 'dropped'
                             WHEN affected > 0 THEN 'moved'
                             ELSE 'made' END,
                'table', planned.parent,
                'partition', format('%s_p%s', planned.parent, to_char(planned.month, 'YYYY_MM')),
                'rows', coalesce(affected, 0));
        END IF;
        COMMIT;
    END LOOP;
END
$$;

-- They run with the caller's rights, which must be the owner's: no one else needs them.
REVOKE ALL ON FUNCTION lmnh_partition_table(text, text),
    lmnh_make_partition(text, date), lmnh_drop_partition(text, date),
    lmnh_maintenance_plan(integer, integer, integer, timestamptz) FROM PUBLIC;
REVOKE ALL ON PROCEDURE lmnh_default_partition(text),
    lmnh_maintain(integer, integer, integer, integer, integer, jsonb) FROM PUBLIC;

-- The rows, into a partition per month they span ---------------------------------------------

-- PERFORM in a DO block: what a SELECT returned would be printed by the migration tool.
DO $$
BEGIN
    PERFORM lmnh_make_partition(parent, month::date)
    FROM (SELECT 'rating_interaction', min(event_at), max(event_at)
          FROM rating_interaction_unpartitioned
          UNION ALL
          SELECT 'request_interaction', min(event_at), max(event_at)
          FROM request_interaction_unpartitioned
          UNION ALL
          SELECT 'rejected_message', min(received_at), max(received_at)
          FROM rejected_message_unpartitioned
          UNION ALL
          SELECT 'load_minute', min(minute), max(minute)
          FROM load_minute_unpartitioned) AS spans (parent, first_at, last_at)
    CROSS JOIN generate_series(date_trunc('month', first_at AT TIME ZONE 'UTC'),
                               date_trunc('month', last_at AT TIME ZONE 'UTC'),
                               interval '1 month') AS month
    ORDER BY parent, month;
END
$$;

INSERT INTO rating_interaction (rating_interaction_id, exhibition_id, rating_id, event_at,
                                kafka_topic, kafka_partition, kafka_offset)
OVERRIDING SYSTEM VALUE
SELECT rating_interaction_id, exhibition_id, rating_id, event_at, kafka_topic, kafka_partition,
       kafka_offset
FROM rating_interaction_unpartitioned;

INSERT INTO request_interaction (request_interaction_id, exhibition_id, request_id, event_at,
                                 kafka_topic, kafka_partition, kafka_offset)
OVERRIDING SYSTEM VALUE
SELECT request_interaction_id, exhibition_id, request_id, event_at, kafka_topic,
       kafka_partition, kafka_offset
FROM request_interaction_unpartitioned;

INSERT INTO rejected_message (rejected_message_id, raw, reason_code, reason, kafka_topic,
                              kafka_partition, kafka_offset, kafka_timestamp, received_at,
                              named_exhibition)
OVERRIDING SYSTEM VALUE
SELECT rejected_message_id, raw, reason_code, reason, kafka_topic, kafka_partition,
       kafka_offset, kafka_timestamp, received_at, named_exhibition
FROM rejected_message_unpartitioned;

INSERT INTO load_minute (minute, kafka_topic, kafka_partition, messages)
SELECT minute, kafka_topic, kafka_partition, messages FROM load_minute_unpartitioned;

-- Each identity goes on after the highest of the ids it gave and the ids stored.
DO $$
BEGIN
    PERFORM setval(pg_get_serial_sequence(parent, id_column), next_after)
    FROM (SELECT 'rating_interaction', 'rating_interaction_id',
                 greatest((SELECT last_value FROM identity_before
                           WHERE parent = 'rating_interaction'),
                          (SELECT max(rating_interaction_id) FROM rating_interaction))
          UNION ALL
          SELECT 'request_interaction', 'request_interaction_id',
                 greatest((SELECT last_value FROM identity_before
                           WHERE parent = 'request_interaction'),
                          (SELECT max(request_interaction_id) FROM request_interaction))
          UNION ALL
          SELECT 'rejected_message', 'rejected_message_id',
                 greatest((SELECT last_value FROM identity_before
                           WHERE parent = 'rejected_message'),
                          (SELECT max(rejected_message_id) FROM rejected_message)))
        AS identities (parent, id_column, next_after)
    WHERE next_after IS NOT NULL;
END
$$;

DROP TABLE rating_interaction_unpartitioned, request_interaction_unpartitioned,
    rejected_message_unpartitioned, load_minute_unpartitioned;

-- The triggers, after the copy: the references were checked when the rows were first stored,
-- and the rollups count them already ---------------------------------------------------------

CREATE OR REPLACE TRIGGER rating_interaction_references_insert AFTER INSERT ON rating_interaction
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fact_references('rating');
CREATE OR REPLACE TRIGGER rating_interaction_references_update AFTER UPDATE ON rating_interaction
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fact_references('rating');
CREATE OR REPLACE TRIGGER request_interaction_references_insert AFTER INSERT ON request_interaction
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fact_references('request');
CREATE OR REPLACE TRIGGER request_interaction_references_update AFTER UPDATE ON request_interaction
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fact_references('request');

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

CREATE OR REPLACE TRIGGER request_interaction_notify AFTER INSERT ON request_interaction
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION request_interaction_notify();

-- The views that read them, as dashboard/views.sql made them ------------------------------

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

-- How fresh the data is: the newest interaction and the pipeline's latest load.
CREATE OR REPLACE VIEW data_freshness AS
SELECT (SELECT max(event_at) FROM rating_interaction) AS latest_rating_at,
       (SELECT max(event_at) FROM request_interaction) AS latest_request_at,
       greatest((SELECT max(event_at) FROM rating_interaction),
                (SELECT max(event_at) FROM request_interaction)) AS latest_interaction_at,
       (SELECT max(updated_at) FROM kafka_offset) AS last_loaded_at;

-- The grants of lmnh/roles.sql, on the tables and views made again -------------------------

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_pipeline') THEN
        GRANT SELECT ON department, floor, exhibition, rating, request TO lmnh_pipeline;
        GRANT INSERT ON rating_interaction, request_interaction, rejected_message
            TO lmnh_pipeline;
        -- SELECT ... FOR UPDATE on the offsets needs UPDATE.
        GRANT SELECT, INSERT, UPDATE ON kafka_offset TO lmnh_pipeline;
        GRANT SELECT, INSERT, UPDATE ON load_minute TO lmnh_pipeline;
        -- The dashboard's rollups are kept by triggers that run as the inserting user.
        IF to_regclass('rating_rollup') IS NOT NULL THEN
            GRANT SELECT, INSERT, UPDATE ON rating_rollup, request_rollup TO lmnh_pipeline;
        END IF;
    END IF;
    -- Its SELECT ... FOR UPDATE needs UPDATE on a column; the raw bytes and coordinates stay
    -- as they were stored.
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_reprocess') THEN
        GRANT SELECT, DELETE, UPDATE (reason_code, reason, named_exhibition)
            ON rejected_message TO lmnh_reprocess;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_reader') THEN
        GRANT SELECT ON ALL TABLES IN SCHEMA public TO lmnh_reader;
    END IF;
END $$;
