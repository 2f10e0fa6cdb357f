// Owns migration 2 of the system's own database: what the operator set for one app through the API, apart from
// the defaults every app gets from the service's settings. Postgres holds what is in force (role and database
// settings); this table holds what the operator asked for, so that it survives what replaces Postgres objects
// (a restore swaps the database, the ready pool hands over roles made with the defaults) and is applied again.
// A row goes with its app (ON DELETE CASCADE): a new app of the same name starts from the defaults. Idempotent
// (IF NOT EXISTS), as every migration here is: a database whose schema_migrations was lost runs them all again.
import type { Migration } from '../migrations.js';

export const appSettings: Migration = {
  version: 2,
  name: 'app-settings',
  sql: `
CREATE TABLE IF NOT EXISTS app_settings (
  app_name            text PRIMARY KEY REFERENCES apps (app_name) ON DELETE CASCADE,
  -- Overrides of the login roles' limits, by name (connection_limit, temp_file_limit, statement_timeout,
  -- idle_in_transaction_session_timeout, idle_session_timeout); a name absent takes the service's default.
  role_limits         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(role_limits) = 'object'),
  -- ALTER DATABASE … SET for the app's database, from an allowlist (timezone, search_path, …), by name.
  database_settings   jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(database_settings) = 'object'),
  -- The app's storage limit in bytes; NULL: the service's default (APP_STORAGE_LIMIT).
  storage_limit_bytes bigint CHECK (storage_limit_bytes > 0),
  updated_at          timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON app_settings FROM PUBLIC;
`,
};
