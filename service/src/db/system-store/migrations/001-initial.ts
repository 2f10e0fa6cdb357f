// Owns migration 1 of the system's own database, the baseline: the registry (apps), the audit log and the ready
// pool's rows. It is the system's part of the schema every version before versioned migrations applied at each
// start (the server's part, the agents' group role and the log setting of apps' login roles, is
// src/db/postgres-server/server-setup.ts), and stays idempotent (IF NOT EXISTS, OR REPLACE, DROP …
// IF EXISTS), so that it runs as well on a fresh database as on one those versions made, which it adopts
// keeping every row. Never edit it: change the schema with a new migration.
import { APP_NAME_PATTERN, READY_SET_ID_PATTERN } from '../../../shared/object-names.js';
import type { Migration } from '../migrations.js';

export const initial: Migration = {
  version: 1,
  name: 'initial',
  sql: `
CREATE TABLE IF NOT EXISTS apps (
  app_name   text PRIMARY KEY CHECK (app_name ~ '${APP_NAME_PATTERN.source}'),
  -- creating: objects may be half-made; ready: complete; deleting: objects may be half-removed.
  state      text NOT NULL CHECK (state IN ('creating', 'ready', 'deleting')),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
-- Which life of the name this is: an app deleted and provisioned again under the same name is a new
-- incarnation, and its backups are not the old one's (backup file names carry it).
ALTER TABLE apps ADD COLUMN IF NOT EXISTS incarnation text NOT NULL
  DEFAULT substr(md5(random()::text || clock_timestamp()::text), 1, 16) CHECK (incarnation ~ '^[0-9a-f]{16}$');

CREATE TABLE IF NOT EXISTS audit_log (
  id         bigserial PRIMARY KEY,
  at         timestamptz NOT NULL DEFAULT now(),
  action     text NOT NULL,
  app_name   text,
  outcome    text NOT NULL,
  request_id text,
  client     text,
  detail     jsonb
);
CREATE INDEX IF NOT EXISTS audit_log_app_name ON audit_log (app_name, at);

-- Append-only: rows can be added, never changed or removed (not even by the superuser, short of dropping
-- the trigger).
CREATE OR REPLACE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only';
END
$$;
DROP TRIGGER IF EXISTS audit_log_no_update_or_delete ON audit_log;
CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();

-- The ready pool: sets of objects (roles and a database) made ahead of time, named pgprov_ready_<id>,
-- handed to an app in one transaction. preparing: may be half-made; ready: complete, never logged into.
CREATE TABLE IF NOT EXISTS ready_pool (
  id         text PRIMARY KEY CHECK (id ~ '${READY_SET_ID_PATTERN.source}'),
  state      text NOT NULL CHECK (state IN ('preparing', 'ready')),
  created_at timestamptz NOT NULL DEFAULT now()
);

REVOKE ALL ON apps, audit_log, ready_pool FROM PUBLIC;
`,
};
