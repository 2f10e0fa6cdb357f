// Owns the DDL and catalog reads of companion databases: an app's extra databases (app_<app>-<companion>), each with
// a NOLOGIN access role of the same name whose one member is the app's login role (pg_hba.conf's samerole admits
// the login there, and no one else), CONNECT, CREATE and TEMPORARY for the login role only, owned by the superuser.
// Companions are found in Postgres's own catalogs, never in the registry. Names come from
// src/shared/object-names.ts; identifiers are quoted with escapeIdentifier.
import pg from 'pg';
import { APP_SQL, COMPANION_SQL, parseCompanionName, type CompanionIdentifiers } from '../../shared/object-names.js';
import type { Queryable } from '../queryable.js';
import { DATABASE_DDL_TIMEOUT_MS } from './app-objects.js';

const { escapeIdentifier: ident } = pg;

/** The access role, NOLOGIN and without powers, with no member yet: the login is admitted last (admitAppToCompanion). */
export async function createCompanionAccessRole(db: Queryable, companion: CompanionIdentifiers): Promise<void> {
  await db.query(`CREATE ROLE ${ident(companion.accessRole)} WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS`);
}

/**
 * CREATE DATABASE, empty (a copy of template1, as an app's own) or a copy of `template`, which must then have no
 * session at all (the caller makes sure). A statement of its own: CREATE DATABASE cannot run in a transaction.
 * The copy does not take the source's privileges (Postgres gives every new database the default ones, PUBLIC's
 * CONNECT and TEMPORARY included): the hand-over that follows sets them, as for an empty one. Everything inside
 * the source (its schemas, their owners, the tables and their grants) is copied as it is.
 */
export async function createCompanionDatabase(db: Queryable, companion: CompanionIdentifiers, template?: string): Promise<void> {
  const text = `CREATE DATABASE ${ident(companion.database)}${template ? ` TEMPLATE ${ident(template)}` : ''}`;
  await db.query({ text, query_timeout: DATABASE_DDL_TIMEOUT_MS } as pg.QueryConfig);
}

/**
 * The last step of making a companion: the app's login role becomes the access role's member, after which
 * pg_hba.conf's samerole admits it. Until then nobody can log in to the database, so a companion whose login is
 * not a member holds nothing anyone wrote (the reconciler removes it as half-made).
 */
export async function admitAppToCompanion(db: Queryable, companion: CompanionIdentifiers): Promise<void> {
  await db.query(`GRANT ${ident(companion.accessRole)} TO ${ident(companion.username)}`);
}

/** The first step of removing a companion: pg_hba.conf refuses the app's new logins to it from now on. */
export async function refuseAppAtCompanion(db: Queryable, companion: CompanionIdentifiers): Promise<void> {
  const { rows } = await db.query<{ member: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member
                     WHERE g.rolname = $1 AND r.rolname = $2) AS member`,
    [companion.accessRole, companion.username],
  );
  if (rows[0]?.member) await db.query(`REVOKE ${ident(companion.accessRole)} FROM ${ident(companion.username)}`);
}

/** Refuses new sessions in `database`, the superuser's too (the moment of a copy: see createCompanionDatabase). */
export async function refuseConnections(db: Queryable, database: string): Promise<void> {
  await db.query(`ALTER DATABASE ${ident(database)} WITH ALLOW_CONNECTIONS false`);
}

/** Ends every other session in `database`. Returns how many were told to end (they take a moment to go). */
export async function endSessionsIn(db: Queryable, database: string): Promise<number> {
  const { rows } = await db.query<{ ended: number }>(
    `SELECT count(pg_terminate_backend(pid))::int AS ended FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`,
    [database],
  );
  return rows[0]?.ended ?? 0;
}

/** What exists of one companion, as the catalogs say. */
export interface CompanionState {
  appName: string;
  name: string;
  database: string;
  databaseExists: boolean;
  accessRoleExists: boolean;
  /** The app's login role is a member of the access role: the companion is complete (the last step of making it). */
  admitted: boolean;
  allowsConnections: boolean;
}

/**
 * Every companion that exists in part or whole (a database or an access role named like one), of one app or of
 * all: what the operations and the reconciler look at.
 */
export async function companionStates(db: Queryable, appName?: string): Promise<CompanionState[]> {
  const { rows } = await db.query<{ object_name: string; database_exists: boolean; access_role_exists: boolean; admitted: boolean; allows_connections: boolean }>(
    `WITH names AS (
       SELECT datname AS object_name FROM pg_database WHERE datname ~ $1
       UNION
       SELECT rolname FROM pg_roles WHERE rolname ~ $1 AND NOT rolcanlogin
     )
     SELECT n.object_name,
            d.oid IS NOT NULL AS database_exists,
            r.oid IS NOT NULL AS access_role_exists,
            EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles l ON l.oid = m.member
                     WHERE m.roleid = r.oid AND l.rolname = ${APP_SQL.loginRoleOf('substring(n.object_name FROM $1)')}) AS admitted,
            COALESCE(d.datallowconn, false) AS allows_connections
       FROM names n
       LEFT JOIN pg_database d ON d.datname = n.object_name
       LEFT JOIN pg_roles r ON r.rolname = n.object_name AND NOT r.rolcanlogin
      WHERE $2::text IS NULL OR substring(n.object_name FROM $1) = $2
      ORDER BY 1`,
    [COMPANION_SQL.pattern, appName ?? null],
  );
  return rows.map((row) => {
    const parsed = parseCompanionName(row.object_name)!;
    return {
      appName: parsed.appName,
      name: parsed.name,
      database: row.object_name,
      databaseExists: row.database_exists,
      accessRoleExists: row.access_role_exists,
      admitted: row.admitted,
      allowsConnections: row.allows_connections,
    };
  });
}

/** A complete companion as it is listed: its size and when Postgres made its directory. */
export interface CompanionDetail {
  name: string;
  database: string;
  sizeBytes: number;
  /** When the database's directory was made (its PG_VERSION file: Postgres keeps no creation time); null if unknown. */
  createdAt: Date | null;
}

/** The app's complete companions (the login admitted), with their sizes; `only` narrows to one name. */
export async function companionDetails(db: Queryable, appName: string, only?: string): Promise<CompanionDetail[]> {
  const { rows } = await db.query<{ datname: string; size_bytes: number; created_at: Date | null }>(
    `SELECT d.datname, pg_database_size(d.oid)::float8 AS size_bytes,
            CASE WHEN t.spcname = 'pg_default' THEN (pg_stat_file('base/' || d.oid || '/PG_VERSION', true)).modification END AS created_at
       FROM pg_database d
       JOIN pg_tablespace t ON t.oid = d.dattablespace
       JOIN pg_roles g ON g.rolname = d.datname AND NOT g.rolcanlogin
       JOIN pg_auth_members m ON m.roleid = g.oid
       JOIN pg_roles l ON l.oid = m.member AND l.rolname = ${APP_SQL.loginRoleOf('$2')}
      WHERE d.datname ~ $1 AND substring(d.datname FROM $1) = $2 AND ($3::text IS NULL OR d.datname = ${COMPANION_SQL.databaseOf('$2', '$3')})
      ORDER BY 1`,
    [COMPANION_SQL.pattern, appName, only ?? null],
  );
  return rows.map((row) => ({ name: parseCompanionName(row.datname)!.name, database: row.datname, sizeBytes: row.size_bytes, createdAt: row.created_at }));
}
