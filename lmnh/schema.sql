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
