-- Least-privilege roles, applied last by lmnh.database.apply_schema: after schema.sql and any
-- extension applied with it (dashboard/views.sql, when `python -m stack schema` applies the
-- schema), so that the grants cover what they made. Both are group roles (NOLOGIN); give them
-- to login users, for example:
--   CREATE ROLE etl LOGIN PASSWORD '...' IN ROLE lmnh_pipeline;
--   CREATE ROLE wallboard LOGIN PASSWORD '...' IN ROLE lmnh_reader;
-- lmnh_pipeline may read the reference tables and add facts, rejects and offsets; it can
-- neither delete nor change what is stored, nor touch the reference data. lmnh_reader (the
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
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'roles lmnh_pipeline and lmnh_reader not created: %', SQLERRM;
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
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_reader') THEN
        GRANT SELECT ON ALL TABLES IN SCHEMA public TO lmnh_reader;
    END IF;
END $$;
