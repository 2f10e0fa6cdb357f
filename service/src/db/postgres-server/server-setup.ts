// Owns what the service needs on a Postgres server before it can serve apps there, beyond what init/ makes on a
// new data directory: the group of the agent roles, and the log setting of app login roles made by versions
// before it. Idempotent, run once per start (PostgresServer.ensureSetUp): a server whose data directory an older
// version initialised is brought up to date. (The system store's schema is versioned apart:
// src/db/system-store/migrations.ts.)
import { AGENTS_GROUP_ROLE, APPS_GROUP_ROLE } from '../../shared/object-names.js';
import type { Queryable } from '../queryable.js';

const SERVER_SETUP_SQL = `
-- The group of the service's agent roles (init/01-create-users.sql makes it on new data directories).
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${AGENTS_GROUP_ROLE}') THEN
    CREATE ROLE ${AGENTS_GROUP_ROLE} WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
  END IF;
END
$$;

-- Nothing an app's session sends reaches Postgres's log (RAISE LOG): app login roles made before this setting
-- get it here (new ones get it when they are made; src/db/app-objects.ts, roleSettingsSql).
DO $$
DECLARE
  app_role name;
BEGIN
  FOR app_role IN
    SELECT m.rolname FROM pg_auth_members am
      JOIN pg_roles g ON g.oid = am.roleid AND g.rolname = '${APPS_GROUP_ROLE}'
      JOIN pg_roles m ON m.oid = am.member
     WHERE NOT EXISTS (SELECT 1 FROM pg_db_role_setting s
                        WHERE s.setrole = m.oid AND s.setdatabase = 0 AND s.setconfig @> ARRAY['log_min_messages=fatal'])
  LOOP
    EXECUTE format('ALTER ROLE %I SET log_min_messages = fatal', app_role);
  END LOOP;
END
$$;
`;

export async function setUpServer(db: Queryable): Promise<void> {
  await db.query(SERVER_SETUP_SQL);
}
