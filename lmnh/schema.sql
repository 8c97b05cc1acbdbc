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
-- table, so that a replayed message can never be stored twice. Partitioned by calendar month
-- of event_at ("Partitions and retention" below): a unique key must hold the partition key,
-- so the coordinates' key also names event_at, which a replayed message repeats (it is the
-- message's own), so it is refused all the same; the identity key is (id, event_at).

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

-- Messages that failed validation, kept losslessly with the reason, by calendar month of
-- received_at; a month is dropped once older than the retention, its counts kept in
-- rejected_daily. The coordinates' key names received_at (the partition key): what keeps a
-- message from being stored twice is the kafka_offset row below, locked and advanced in the
-- same transaction as the rows (docs/guarantees.md).
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
-- By calendar month, dropped once older than the retention, its counts kept in load_daily.
CREATE TABLE IF NOT EXISTS load_minute (
    minute timestamptz NOT NULL,
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL CHECK (kafka_partition >= 0),
    messages bigint NOT NULL CHECK (messages > 0),
    PRIMARY KEY (minute, kafka_topic, kafka_partition)
) PARTITION BY RANGE (minute);
CALL lmnh_default_partition('load_minute');

-- Partitions and retention -------------------------------------------------------------------
-- The four tables that grow with traffic are partitioned by calendar month (UTC month
-- boundaries), one partition each named <table>_pYYYY_MM, with a DEFAULT partition each so
-- that a row of a month not made yet is stored all the same, never refused. lmnh_maintain
-- (`lmnh-schema maintain`, a daily timer, or pg_cron) makes the months ahead, moves what landed
-- in a DEFAULT partition into its month, and drops the months of raw rejects and load minutes
-- past their retention after adding their counts to the daily rollups below. Facts are never
-- dropped. Run it as the schema's owner, outside a transaction block: each step commits alone.

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
