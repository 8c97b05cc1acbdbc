-- Migration 0003: daily rollups for the dashboard. The same counts as rating_rollup and
-- request_rollup per London date alone (ten times fewer rows), kept by the same statement-level
-- triggers, whose functions now upsert both; built from the finer rollups; read through the new
-- views rating_daily and request_daily. dashboard/views.sql holds the same; lmnh/roles.sql
-- grants the pipeline what the triggers need on them.
-- depends: 0002_partitions

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

-- Nothing may be stored between the rebuild below and the triggers taking over, or the daily
-- rollups would miss it: hold off writers (readers go on) until this migration commits.
LOCK TABLE rating_interaction, request_interaction IN SHARE ROW EXCLUSIVE MODE;

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

DO $$
BEGIN
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

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_pipeline') THEN
        GRANT SELECT, INSERT, UPDATE ON rating_daily_rollup, request_daily_rollup
            TO lmnh_pipeline;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_reader') THEN
        GRANT SELECT ON rating_daily_rollup, request_daily_rollup, rating_daily, request_daily
            TO lmnh_reader;
    END IF;
END $$;
