-- Least-privilege roles, applied last by lmnh.database.apply_schema: after schema.sql and any
-- extension applied with it (dashboard/views.sql, when `python -m stack schema` applies the
-- schema), so that the grants cover what they made. All are group roles (NOLOGIN); give them
-- to login users, for example:
--   CREATE ROLE etl LOGIN PASSWORD '...' IN ROLE lmnh_pipeline;
--   CREATE ROLE wallboard LOGIN PASSWORD '...' IN ROLE lmnh_dashboard CONNECTION LIMIT 20;
-- lmnh_pipeline may read the reference tables and add facts, rejects and offsets; it can
-- neither delete nor change what is stored, nor touch the reference data. lmnh_reprocess
-- (`lmnh-reprocess`) may do what lmnh_pipeline does and also read, update the reason of and
-- delete rejects: it moves those that now pass into the fact tables. lmnh_reader (BI tools) may
-- only read, and reads neither staff accounts nor sessions. lmnh_dashboard (the dashboard)
-- reads what lmnh_reader reads and the accounts, and keeps the sessions. Creating roles needs
-- CREATEROLE: a user without it (as on some managed databases) gets a notice and the rest of
-- the schema is applied all the same.

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
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_dashboard') THEN
        CREATE ROLE lmnh_dashboard NOLOGIN IN ROLE lmnh_reader;
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'roles lmnh_pipeline, lmnh_reader, lmnh_reprocess and lmnh_dashboard not created: %',
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
        IF to_regclass('rating_daily_rollup') IS NOT NULL THEN
            GRANT SELECT, INSERT, UPDATE ON rating_daily_rollup, request_daily_rollup
                TO lmnh_pipeline;
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
        REVOKE ALL ON staff_account, staff_session FROM lmnh_reader;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_dashboard') THEN
        GRANT SELECT ON staff_account TO lmnh_dashboard;
        GRANT SELECT, INSERT, UPDATE, DELETE ON staff_session TO lmnh_dashboard;
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
