// Owns the DDL that makes, changes and removes an app's Postgres objects: its login role, its access role and
// its database. Identifiers come only from appIdentifiers() (the allowlist) and are quoted with
// escapeIdentifier; values that DDL cannot take as $n parameters are quoted with escapeLiteral.
// Every function takes the superuser connection to run on; none decides what to do on failure (src/lifecycle.ts
// does).
import pg from 'pg';
import type { AppIdentifiers } from '../app-names.js';

/** The Postgres names of one set of app objects: an app's, or a prepared set in the ready pool. */
export type ObjectNames = Pick<AppIdentifiers, 'database' | 'username' | 'accessRole'>;
import type { Database } from './database.js';

const { escapeIdentifier: ident, escapeLiteral: literal } = pg;

type Queryable = Pick<pg.ClientBase, 'query'>;

/** The group role every app login role belongs to; pg_hba.conf names it as +provisioned_apps. */
export const APPS_GROUP_ROLE = 'provisioned_apps';

export const DUPLICATE_ROLE_STATES = new Set(['42710', '23505']);
export const DUPLICATE_DATABASE_STATE = '42P04';

export interface AppRoleLimits {
  connectionLimit: number;
  tempFileLimit: string;
  statementTimeout: string;
  idleInTransactionTimeout: string;
}

/**
 * The access role (NOLOGIN, named like the database, for pg_hba.conf's samerole) and the login role, with
 * their limits. One message of several statements runs as one implicit transaction: both appear, or neither.
 * Without a password verifier (the ready pool), the login role is made NOLOGIN and gets no password.
 */
export async function createAppRoles(db: Queryable, app: ObjectNames, passwordVerifier: string | null, limits: AppRoleLimits): Promise<void> {
  const role = ident(app.username);
  const accessRole = ident(app.accessRole);
  await db.query(
    `CREATE ROLE ${accessRole} WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
     CREATE ROLE ${role} WITH ${passwordVerifier === null ? 'NOLOGIN' : `LOGIN PASSWORD ${literal(passwordVerifier)}`}
       NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS CONNECTION LIMIT ${limits.connectionLimit}
       IN ROLE ${ident(APPS_GROUP_ROLE)}, ${accessRole};
     ALTER ROLE ${role} SET temp_file_limit = ${literal(limits.tempFileLimit)};
     ALTER ROLE ${role} SET statement_timeout = ${literal(limits.statementTimeout)};
     ALTER ROLE ${role} SET idle_in_transaction_session_timeout = ${literal(limits.idleInTransactionTimeout)};`,
  );
}

/** Which other apps' login roles exist among `usernames` (to explain a name collision). */
export async function existingAppLogins(db: Queryable, usernames: string[]): Promise<string[]> {
  const { rows } = await db.query<{ rolname: string }>(
    `SELECT r.rolname FROM pg_roles r
      WHERE r.rolname = ANY($1::text[]) AND r.rolcanlogin AND pg_has_role(r.oid, $2, 'MEMBER')`,
    [usernames, APPS_GROUP_ROLE],
  );
  return rows.map((row) => row.rolname);
}

/**
 * How long the service waits for CREATE and DROP DATABASE, longer than for other statements: each forces or
 * waits for a checkpoint, which takes tens of seconds over thousands of databases. (query_timeout per query
 * is supported by pg but missing from @types/pg.)
 */
export const DATABASE_DDL_TIMEOUT_MS = 60_000;
const ddl = (text: string) => ({ text, query_timeout: DATABASE_DDL_TIMEOUT_MS }) as pg.QueryConfig;

/** CREATE DATABASE cannot run in a transaction, so it is a statement of its own. */
export async function createDatabase(db: Queryable, database: string): Promise<void> {
  await db.query(ddl(`CREATE DATABASE ${ident(database)}`));
}

/**
 * Makes `database` the app's: only its login role may connect; the database stays owned by the superuser, so
 * the app cannot GRANT CONNECT on it to anyone else; the app may create schemas, extensions and temp tables,
 * and owns its public schema (which needs a connection into that database).
 */
export async function handDatabaseToApp(db: Queryable, database: Database, name: string, app: ObjectNames): Promise<void> {
  await db.query(
    `REVOKE ALL ON DATABASE ${ident(name)} FROM PUBLIC;
     GRANT CONNECT, CREATE, TEMPORARY ON DATABASE ${ident(name)} TO ${ident(app.username)};`,
  );
  await database.inDatabase(name, (appDb) => appDb.query(`ALTER SCHEMA public OWNER TO ${ident(app.username)}`));
}

export async function dropDatabase(db: Queryable, database: string): Promise<void> {
  await db.query(ddl(`DROP DATABASE IF EXISTS ${ident(database)} WITH (FORCE)`));
}

/**
 * Drops the app's login role, and its access role if that is a NOLOGIN role: a LOGIN role of that name is
 * another app's login (app x's app_x_user for app x_user), never ours to drop.
 */
export async function dropAppRoles(db: Queryable, app: ObjectNames): Promise<void> {
  await db.query(`DROP ROLE IF EXISTS ${ident(app.username)}`);
  const { rows } = await db.query<{ rolcanlogin: boolean }>(`SELECT rolcanlogin FROM pg_roles WHERE rolname = $1`, [app.accessRole]);
  if (rows[0] && !rows[0].rolcanlogin) await db.query(`DROP ROLE ${ident(app.accessRole)}`);
}

/** Gives an app made before access roles existed its access role, so pg_hba.conf's samerole admits it. */
export async function addAccessRole(db: Queryable, app: ObjectNames): Promise<void> {
  await db.query(
    `CREATE ROLE ${ident(app.accessRole)} WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
     GRANT ${ident(app.accessRole)} TO ${ident(app.username)};`,
  );
}

export async function setPassword(db: Queryable, app: AppIdentifiers, passwordVerifier: string): Promise<void> {
  await db.query(`ALTER ROLE ${ident(app.username)} WITH LOGIN PASSWORD ${literal(passwordVerifier)}`);
}

/** The login role can no longer open sessions (its password stays). */
export async function disableLogin(db: Queryable, app: ObjectNames): Promise<void> {
  await db.query(`ALTER ROLE ${ident(app.username)} WITH NOLOGIN`);
}

/** Ends every session of the app's login role, in every database. Returns how many were ended. */
export async function endSessionsOfRole(db: Queryable, app: ObjectNames): Promise<number> {
  const { rows } = await db.query<{ ended: number }>(
    `SELECT count(pg_terminate_backend(pid))::int AS ended FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()`,
    [app.username],
  );
  return rows[0]?.ended ?? 0;
}

/**
 * Puts `replacement` in the place of the app's database, in one transaction: the live database is renamed to
 * `retired` and `replacement` to the app's name. New sessions are refused while it happens; existing ones are
 * ended (renaming needs a database nobody is connected to).
 */
export async function swapInDatabase(db: Queryable, app: ObjectNames, replacement: string, retired: string): Promise<void> {
  await db.query(`ALTER DATABASE ${ident(app.database)} WITH ALLOW_CONNECTIONS false`);
  await db.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, [app.database]);
  await db.query(
    `ALTER DATABASE ${ident(app.database)} RENAME TO ${ident(retired)};
     ALTER DATABASE ${ident(replacement)} RENAME TO ${ident(app.database)};`,
  );
}

/** Lets sessions into the app's database again (after a swap, or a crash in the middle of one). */
export async function allowConnections(db: Queryable, database: string): Promise<void> {
  await db.query(`ALTER DATABASE ${ident(database)} WITH ALLOW_CONNECTIONS true`);
}

export interface AppObjects {
  loginRole: boolean;
  accessRole: boolean;
  database: boolean;
  databaseAllowsConnections: boolean;
}

/** Which of the app's objects exist right now. */
export async function appObjects(db: Queryable, app: ObjectNames): Promise<AppObjects> {
  const { rows } = await db.query<AppObjects>(
    `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) AS "loginRole",
            EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2 AND NOT rolcanlogin) AS "accessRole",
            EXISTS (SELECT 1 FROM pg_database WHERE datname = $3) AS "database",
            COALESCE((SELECT datallowconn FROM pg_database WHERE datname = $3), false) AS "databaseAllowsConnections"`,
    [app.username, app.accessRole, app.database],
  );
  return rows[0]!;
}

/** Databases the service makes for its own work (restores), never apps' own: left over only after a crash. */
export const WORK_DATABASE_PREFIXES = { restoring: 'pgprov_restore_', retired: 'pgprov_retired_' };

export async function workDatabases(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ datname: string }>(
    `SELECT datname FROM pg_database WHERE starts_with(datname, $1) OR starts_with(datname, $2) ORDER BY 1`,
    [WORK_DATABASE_PREFIXES.restoring, WORK_DATABASE_PREFIXES.retired],
  );
  return rows.map((row) => row.datname);
}

/** App names that have Postgres objects (an app login role in provisioned_apps, or an app_* database). */
export async function appNamesWithObjects(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ app_name: string }>(
    `SELECT substring(r.rolname FROM '^app_([a-z0-9_]{3,32})_user$') AS app_name
       FROM pg_roles r
      WHERE r.rolcanlogin AND pg_has_role(r.oid, $1, 'MEMBER') AND r.rolname ~ '^app_[a-z0-9_]{3,32}_user$'
     UNION
     SELECT substring(datname FROM '^app_([a-z0-9_]{3,32})$') FROM pg_database WHERE datname ~ '^app_[a-z0-9_]{3,32}$'`,
    [APPS_GROUP_ROLE],
  );
  return rows.map((row) => row.app_name);
}
