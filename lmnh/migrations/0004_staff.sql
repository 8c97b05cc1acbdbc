-- Migration 0004: the dashboard's staff. Local accounts (for a museum without single sign-on)
-- and the sessions of everyone signed in, local or through the museum's identity provider.
-- dashboard/views.sql holds the same tables; lmnh/roles.sql the same grants.
-- depends: 0003_dashboard_rollups

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

-- The dashboard's database login is in lmnh_dashboard: it reads what lmnh_reader reads, and
-- keeps sessions. Accounts are made by `lmnh-accounts`, as the schema's owner. lmnh_reader
-- (Tableau, BI tools) reads neither table: no password hash, no session leaves through it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_dashboard') THEN
        CREATE ROLE lmnh_dashboard NOLOGIN;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_reader') THEN
        GRANT lmnh_reader TO lmnh_dashboard;
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'role lmnh_dashboard not created: %', SQLERRM;
    WHEN duplicate_object OR unique_violation THEN
        NULL;  -- another session created it at the same moment
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_reader') THEN
        REVOKE ALL ON staff_account, staff_session FROM lmnh_reader;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_dashboard') THEN
        GRANT SELECT ON staff_account TO lmnh_dashboard;
        GRANT SELECT, INSERT, UPDATE, DELETE ON staff_session TO lmnh_dashboard;
    END IF;
END $$;
