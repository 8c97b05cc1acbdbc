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
    exhibition_id smallint NOT NULL REFERENCES exhibition (exhibition_id),
    rating_id smallint NOT NULL REFERENCES rating (rating_id),
    event_at timestamptz NOT NULL,
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL CHECK (kafka_partition >= 0),
    kafka_offset bigint NOT NULL CHECK (kafka_offset >= 0),
    CONSTRAINT rating_interaction_kafka_coordinates UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);

CREATE TABLE IF NOT EXISTS request_interaction (
    request_interaction_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exhibition_id smallint NOT NULL REFERENCES exhibition (exhibition_id),
    request_id smallint NOT NULL REFERENCES request (request_id),
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
