-- Migration 0001, the baseline: the schema as lmnh/schema.sql, dashboard/views.sql and
-- lmnh/roles.sql made it before the database recorded its version, the three files in the
-- order they were applied. Every statement is "create if missing" (or replaces a function,
-- trigger or view with the same), so it is safe on an empty database and on one made by an
-- earlier release, whose data it keeps; applied once, it is recorded in the ledger. Frozen:
-- a change to the schema is a new numbered migration (docs/operations.md, "Schema versions
-- and migrations"), and the same change in the files, which a test keeps equal to these.

-- LMNH kiosk feedback: reference tables, fact tables, and what exactly-once loading needs.
-- Applying this file is idempotent and never destroys data: every statement is
-- "create if missing" or "insert if missing". Dropping happens only through
-- `python -m stack schema --reset`, which names what it deletes.

-- Reference tables ---------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS department (
    department_id smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    department_name varchar(100) NOT NULL UNIQUE CHECK (department_name <> '')
);

CREATE TABLE IF NOT EXISTS floor (
    floor_id smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    floor_name varchar(100) NOT NULL UNIQUE CHECK (floor_name <> '')
);

CREATE TABLE IF NOT EXISTS exhibition (
    exhibition_id smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exhibition_name varchar(100) NOT NULL UNIQUE CHECK (exhibition_name <> ''),
    exhibition_description text NOT NULL,
    department_id smallint NOT NULL REFERENCES department (department_id),
    floor_id smallint NOT NULL REFERENCES floor (floor_id),
    exhibition_start_date date NOT NULL
        CHECK (exhibition_start_date BETWEEN DATE '1900-01-01' AND CURRENT_DATE),
    -- Kiosks name an exhibition by site number N, which is the public id EXH_0N.
    public_id varchar(10) NOT NULL UNIQUE CHECK (public_id ~ '^EXH_[0-9]{2,6}$')
);

CREATE TABLE IF NOT EXISTS request (
    request_id smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_value smallint NOT NULL UNIQUE CHECK (request_value BETWEEN 0 AND 1),
    request_description varchar(100) NOT NULL
);

CREATE TABLE IF NOT EXISTS rating (
    rating_id smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rating_value smallint NOT NULL UNIQUE CHECK (rating_value BETWEEN 0 AND 4),
    rating_description varchar(100) NOT NULL
);

CREATE INDEX IF NOT EXISTS exhibition_department_id_idx ON exhibition (department_id);
CREATE INDEX IF NOT EXISTS exhibition_floor_id_idx ON exhibition (floor_id);
CREATE INDEX IF NOT EXISTS exhibition_start_date_idx ON exhibition (exhibition_start_date);
-- request_value and rating_value are indexed by their UNIQUE constraints.

-- Fact tables --------------------------------------------------------------------------------
-- Every row carries the Kafka coordinates of the message it came from, unique across the
-- table, so that a replayed message can never be stored twice.

CREATE TABLE IF NOT EXISTS rating_interaction (
    rating_interaction_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exhibition_id smallint NOT NULL,  -- references exhibition: see "References" below
    rating_id smallint NOT NULL,  -- references rating
    event_at timestamptz NOT NULL,
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL CHECK (kafka_partition >= 0),
    kafka_offset bigint NOT NULL CHECK (kafka_offset >= 0),
    CONSTRAINT rating_interaction_kafka_coordinates UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);

CREATE TABLE IF NOT EXISTS request_interaction (
    request_interaction_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exhibition_id smallint NOT NULL,  -- references exhibition: see "References" below
    request_id smallint NOT NULL,  -- references request
    event_at timestamptz NOT NULL,
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL CHECK (kafka_partition >= 0),
    kafka_offset bigint NOT NULL CHECK (kafka_offset >= 0),
    CONSTRAINT request_interaction_kafka_coordinates UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);

CREATE INDEX IF NOT EXISTS rating_interaction_exhibition_event_idx
    ON rating_interaction (exhibition_id, event_at);
CREATE INDEX IF NOT EXISTS rating_interaction_event_at_idx ON rating_interaction (event_at);
CREATE INDEX IF NOT EXISTS request_interaction_exhibition_event_idx
    ON request_interaction (exhibition_id, event_at);
CREATE INDEX IF NOT EXISTS request_interaction_event_at_idx ON request_interaction (event_at);

-- References ---------------------------------------------------------------------------------
-- Every fact names an exhibition and a rating or request that exist, and none of those can be
-- deleted (or get another id) while a fact names it: what foreign keys guarantee, enforced once
-- per statement instead of once per row. A foreign key runs a query and takes a row lock for
-- every row stored, which halved what a COPY could store; these triggers lock each referenced
-- row once per statement (FOR KEY SHARE, as a foreign key does), so a concurrent delete waits
-- for the loading transaction and then sees its facts. The errors carry the foreign key
-- violation's SQLSTATE (23503). SECURITY DEFINER, as PostgreSQL's own foreign key checks run
-- as the table owner: the loading role needs no UPDATE on the reference tables to lock them.

CREATE OR REPLACE FUNCTION lock_referenced(ids smallint[], ref_table regclass, ref_column name,
                                           fact_table name, fact_column name) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    locked bigint;
    missing smallint[];
BEGIN
    -- format() with %I and %s of a regclass: identifiers, never data.
    EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM %s WHERE %I = ANY ($1) FOR KEY SHARE) AS l',
                   ref_table, ref_column)
        INTO locked USING ids;
    IF locked < cardinality(ids) THEN
        EXECUTE format('SELECT array_agg(id ORDER BY id) FROM unnest($1) AS id'
                       ' WHERE NOT EXISTS (SELECT FROM %s WHERE %I = id)', ref_table, ref_column)
            INTO missing USING ids;
        RAISE foreign_key_violation USING
            MESSAGE = format('insert or update on table "%s" violates foreign key on %s:'
                             ' %s %s not present in table "%s"', fact_table, fact_column,
                             fact_column, array_to_string(missing, ', '), ref_table),
            TABLE = fact_table, COLUMN = fact_column;
    END IF;
END
$$;

-- It runs as the owner with the names it is given: only the triggers below may call it.
REVOKE ALL ON FUNCTION lock_referenced(smallint[], regclass, name, name, name) FROM PUBLIC;

-- TG_ARGV[0]: the fact's own reference table (rating or request), keyed by <table>_id.
CREATE OR REPLACE FUNCTION fact_references() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    value_key name := TG_ARGV[0] || '_id';
    exhibitions smallint[];
    value_ids smallint[];
BEGIN
    EXECUTE format('SELECT array_agg(DISTINCT exhibition_id), array_agg(DISTINCT %I)'
                   ' FROM new_rows', value_key)
        INTO exhibitions, value_ids;
    IF exhibitions IS NOT NULL THEN  -- NULL: the statement stored no row
        PERFORM lock_referenced(exhibitions, 'exhibition', 'exhibition_id',
                                TG_TABLE_NAME, 'exhibition_id');
        PERFORM lock_referenced(value_ids, TG_ARGV[0]::regclass, value_key,
                                TG_TABLE_NAME, value_key);
    END IF;
    RETURN NULL;
END
$$;

-- The other side: a referenced row cannot be deleted, truncated or given another id. Row
-- triggers on the small reference tables; BEFORE, so the row is locked first and a loading
-- transaction holding it is waited for, and its facts are then seen.
CREATE OR REPLACE FUNCTION refuse_referenced_removal() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    fact_table text;
    referenced boolean;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF EXISTS (SELECT FROM rating_interaction) OR EXISTS (SELECT FROM request_interaction) THEN
            RAISE foreign_key_violation USING
                MESSAGE = format('cannot truncate table "%s": facts reference it', TG_TABLE_NAME);
        END IF;
        RETURN NULL;
    END IF;
    -- TG_ARGV: the key column, then the fact tables that reference it.
    IF TG_OP = 'UPDATE' AND to_jsonb(NEW) -> TG_ARGV[0] = to_jsonb(OLD) -> TG_ARGV[0] THEN
        RETURN NEW;  -- the key stays
    END IF;
    FOREACH fact_table IN ARRAY TG_ARGV[1:] LOOP
        EXECUTE format('SELECT EXISTS (SELECT FROM %I WHERE %I = $1::smallint)', fact_table,
                       TG_ARGV[0])
            INTO referenced USING to_jsonb(OLD) ->> TG_ARGV[0];
        IF referenced THEN
            RAISE foreign_key_violation USING
                MESSAGE = format('update or delete on table "%s" violates foreign key on %s:'
                                 ' %s %s is still referenced from table "%s"', TG_TABLE_NAME,
                                 TG_ARGV[0], TG_ARGV[0], to_jsonb(OLD) ->> TG_ARGV[0],
                                 fact_table),
                TABLE = fact_table;
        END IF;
    END LOOP;
    RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END
$$;

-- Applied once to a database made before these triggers: its foreign keys are replaced.
ALTER TABLE rating_interaction
    DROP CONSTRAINT IF EXISTS rating_interaction_exhibition_id_fkey,
    DROP CONSTRAINT IF EXISTS rating_interaction_rating_id_fkey;
ALTER TABLE request_interaction
    DROP CONSTRAINT IF EXISTS request_interaction_exhibition_id_fkey,
    DROP CONSTRAINT IF EXISTS request_interaction_request_id_fkey;

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
-- The two per-table functions that fact_references replaced, on a database that had them.
DROP FUNCTION IF EXISTS rating_interaction_references(), request_interaction_references();

CREATE OR REPLACE TRIGGER exhibition_referenced BEFORE DELETE OR UPDATE OF exhibition_id
    ON exhibition FOR EACH ROW
    EXECUTE FUNCTION refuse_referenced_removal('exhibition_id', 'rating_interaction',
                                               'request_interaction');
CREATE OR REPLACE TRIGGER rating_referenced BEFORE DELETE OR UPDATE OF rating_id ON rating
    FOR EACH ROW EXECUTE FUNCTION refuse_referenced_removal('rating_id', 'rating_interaction');
CREATE OR REPLACE TRIGGER request_referenced BEFORE DELETE OR UPDATE OF request_id ON request
    FOR EACH ROW EXECUTE FUNCTION refuse_referenced_removal('request_id', 'request_interaction');
CREATE OR REPLACE TRIGGER exhibition_truncate BEFORE TRUNCATE ON exhibition
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_referenced_removal();
CREATE OR REPLACE TRIGGER rating_truncate BEFORE TRUNCATE ON rating
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_referenced_removal();
CREATE OR REPLACE TRIGGER request_truncate BEFORE TRUNCATE ON request
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_referenced_removal();

-- Messages that failed validation, kept losslessly with the reason.
CREATE TABLE IF NOT EXISTS rejected_message (
    rejected_message_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    raw bytea,  -- NULL only for a record that had no value at all
    reason_code text NOT NULL CHECK (reason_code ~ '^[a-z_]+$'),
    reason text NOT NULL,
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL CHECK (kafka_partition >= 0),
    kafka_offset bigint NOT NULL CHECK (kafka_offset >= 0),
    kafka_timestamp timestamptz,
    received_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rejected_message_kafka_coordinates UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);

CREATE INDEX IF NOT EXISTS rejected_message_reason_code_idx ON rejected_message (reason_code);
-- The known exhibition (its public id) that a rejected message's `site` named, when it was a
-- JSON object naming one: a kiosk that starts sending bad data shows up as one site's rejects.
-- No reference: the rejected message is kept as it came, whatever happens to the exhibition.
ALTER TABLE rejected_message ADD COLUMN IF NOT EXISTS named_exhibition varchar(10);
-- The Feed page reads the latest rejects and counts them over time.
CREATE INDEX IF NOT EXISTS rejected_message_received_at_idx ON rejected_message (received_at);

-- How far each partition has been loaded: the next offset to store. It is updated in the same
-- transaction as the rows, so it is the truth after any crash; the pipeline resumes from it and
-- skips anything below it, which also keeps the three tables above free of duplicates.
CREATE TABLE IF NOT EXISTS kafka_offset (
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL CHECK (kafka_partition >= 0),
    next_offset bigint NOT NULL CHECK (next_offset >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kafka_topic, kafka_partition)
);
-- The topic's id (Kafka's, unique to each creation of a topic name): offsets of a topic that
-- was deleted and recreated under the same name must never be applied to the new one.
ALTER TABLE kafka_offset ADD COLUMN IF NOT EXISTS topic_id text;
-- The partition's high watermark (the offset its next message will get) as the pipeline last
-- saw it when it stored this row: high_watermark - next_offset is how far behind it was then.
ALTER TABLE kafka_offset ADD COLUMN IF NOT EXISTS high_watermark bigint
    CHECK (high_watermark >= 0);

-- Messages stored (facts and rejected alike, each once) per minute of the database's clock and
-- partition, written in the same transaction as the rows: the Feed page's messages per second.
CREATE TABLE IF NOT EXISTS load_minute (
    minute timestamptz NOT NULL,
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL CHECK (kafka_partition >= 0),
    messages bigint NOT NULL CHECK (messages > 0),
    PRIMARY KEY (minute, kafka_topic, kafka_partition)
);

-- Reference data (the kiosk feed's) ----------------------------------------------------------

INSERT INTO department (department_name)
VALUES ('Entomology'), ('Geology'), ('Paleontology'), ('Zoology'), ('Ecology')
ON CONFLICT (department_name) DO NOTHING;

INSERT INTO floor (floor_name)
VALUES ('Vault'), ('1'), ('2'), ('3')
ON CONFLICT (floor_name) DO NOTHING;

INSERT INTO exhibition (exhibition_name, exhibition_description, department_id, floor_id,
                        exhibition_start_date, public_id)
SELECT e.name, e.description, d.department_id, f.floor_id, e.start_date, e.public_id
FROM (VALUES
    ('EXH_00', 'Measureless to Man',
     'An immersive 3D experience: delve deep into a previously-inaccessible cave system.',
     '1', 'Geology', DATE '2021-08-23'),
    ('EXH_01', 'Adaptation',
     'How insect evolution has kept pace with an industrialised world',
     'Vault', 'Entomology', DATE '2019-07-01'),
    ('EXH_02', 'The Crenshaw Collection',
     'An exhibition of 18th Century watercolours, mostly focused on South American wildlife.',
     '2', 'Zoology', DATE '2021-03-03'),
    ('EXH_03', 'Cetacean Sensations',
     'Whales: from ancient myth to critically endangered.',
     '1', 'Zoology', DATE '2019-07-01'),
    ('EXH_04', 'Our Polluted World',
     'A hard-hitting exploration of humanity''s impact on the environment.',
     '3', 'Ecology', DATE '2021-05-12'),
    ('EXH_05', 'Thunder Lizards',
     'How new research is making scientists rethink what dinosaurs really looked like.',
     '1', 'Paleontology', DATE '2023-02-01')
) AS e (public_id, name, description, floor_name, department_name, start_date)
JOIN department d ON d.department_name = e.department_name
JOIN floor f ON f.floor_name = e.floor_name
ON CONFLICT (public_id) DO NOTHING;

INSERT INTO rating (rating_value, rating_description)
VALUES (0, 'Terrible'), (1, 'Bad'), (2, 'Neutral'), (3, 'Good'), (4, 'Amazing')
ON CONFLICT (rating_value) DO NOTHING;

INSERT INTO request (request_value, request_description)
VALUES (0, 'Assistance'), (1, 'Emergency')
ON CONFLICT (request_value) DO NOTHING;

-- dashboard/views.sql ------------------------------------------------------------------------

-- The reporting contract: views that join the facts to their exhibition, floor, department,
-- rating and request, on the museum's clock (Europe/London). The dashboard reads these views
-- (and the rating and request tables for their names); Tableau, Metabase or Superset can read
-- them too. Their columns are documented in docs/dashboards.md and only ever grow.
--
-- Two rollups keep the dashboard fast at tens of millions of rows: counts per London date,
-- hour (ratings) or quarter hour (requests), exhibition and value. PostgreSQL maintains them
-- itself, with statement-level triggers over each statement's transition table, so a COPY of a
-- batch adds one grouped upsert, not one per row; the pipeline knows nothing of them.
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

-- The rows of a statement are grouped first, then upserted in key order: two loaders that
-- touch the same keys then lock them in the same order and cannot deadlock on the rollup.
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
    ELSE
        DELETE FROM request_rollup;
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

-- How fresh the data is: the newest interaction and the pipeline's latest load.
CREATE OR REPLACE VIEW data_freshness AS
SELECT (SELECT max(event_at) FROM rating_interaction) AS latest_rating_at,
       (SELECT max(event_at) FROM request_interaction) AS latest_request_at,
       greatest((SELECT max(event_at) FROM rating_interaction),
                (SELECT max(event_at) FROM request_interaction)) AS latest_interaction_at,
       (SELECT max(updated_at) FROM kafka_offset) AS last_loaded_at;

-- lmnh/roles.sql -----------------------------------------------------------------------------

-- Least-privilege roles, applied last by lmnh.database.apply_schema: after schema.sql and any
-- extension applied with it (dashboard/views.sql, when `python -m stack schema` applies the
-- schema), so that the grants cover what they made. Both are group roles (NOLOGIN); give them
-- to login users, for example:
--   CREATE ROLE etl LOGIN PASSWORD '...' IN ROLE lmnh_pipeline;
--   CREATE ROLE wallboard LOGIN PASSWORD '...' IN ROLE lmnh_reader CONNECTION LIMIT 20;
-- lmnh_pipeline may read the reference tables and add facts, rejects and offsets; it can
-- neither delete nor change what is stored, nor touch the reference data. lmnh_reprocess
-- (`lmnh-reprocess`) may do what lmnh_pipeline does and also read, update the reason of and
-- delete rejects: it moves those that now pass into the fact tables. lmnh_reader (the
-- dashboard, BI tools) may only read. Creating roles needs CREATEROLE: a user without it (as on
-- some managed databases) gets a notice and the rest of the schema is applied all the same.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_pipeline') THEN
        CREATE ROLE lmnh_pipeline NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_reader') THEN
        CREATE ROLE lmnh_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_reprocess') THEN
        CREATE ROLE lmnh_reprocess NOLOGIN IN ROLE lmnh_pipeline;
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'roles lmnh_pipeline, lmnh_reader and lmnh_reprocess not created: %',
            SQLERRM;
    WHEN duplicate_object OR unique_violation THEN
        NULL;  -- another session created them at the same moment
END $$;

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

-- A reader can never starve the writer: readers get at most 20 connections, enough for one
-- dashboard server (6 for the pages, 1 for the live feed, 1 at start-up) and two Tableau users.
-- PostgreSQL counts connections per login role, and a group role's limit binds only a login
-- as that role itself, so the limit is also given to each login in lmnh_reader that has none
-- (one created later gets it at the next apply, or with CONNECTION LIMIT as above). Only a
-- role whose limit differs is altered: applying again changes nothing.
DO $$
DECLARE
    reader name;
BEGIN
    FOR reader IN
        SELECT r.rolname FROM pg_roles AS r
        WHERE r.rolname = 'lmnh_reader' AND r.rolconnlimit <> 20
        UNION
        SELECT r.rolname FROM pg_roles AS r
        JOIN pg_auth_members AS m ON m.member = r.oid
        JOIN pg_roles AS g ON g.oid = m.roleid AND g.rolname = 'lmnh_reader'
        WHERE r.rolcanlogin AND NOT r.rolsuper AND r.rolconnlimit = -1
    LOOP
        BEGIN
            EXECUTE format('ALTER ROLE %I CONNECTION LIMIT 20', reader);
        EXCEPTION
            -- Another session altered or dropped it at the same moment ("tuple concurrently
            -- updated" is an internal error): its limit is that session's business.
            WHEN internal_error OR undefined_object THEN
                NULL;
        END;
    END LOOP;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'connection limit of lmnh_reader not set: %', SQLERRM;
END $$;

-- The ledger -----------------------------------------------------------------------------------
-- The pipeline reads the ledger at start to check the schema's version (lmnh_reader may read
-- every table already).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_pipeline') THEN
        GRANT SELECT ON _yoyo_migration TO lmnh_pipeline;
    END IF;
END $$;
