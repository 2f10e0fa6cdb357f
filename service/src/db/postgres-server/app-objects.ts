// Owns the DDL that makes, changes and removes an app's Postgres objects on the server: its login role, its access
// role and its database, and the catalog reads that find them. Identifiers come only from src/shared/object-names.ts
// (the allowlist) and are quoted with escapeIdentifier; values that DDL cannot take as $n parameters are quoted
// with escapeLiteral. Every function takes the superuser connection to run on; none decides what to do on failure
// (the operations of src/domain/ do).
import pg from 'pg';
import { setTimeout as sleep } from 'node:timers/promises';
import { watchLockWaits } from '../../shared/lock-watch.js';
import { AGENTS_GROUP_ROLE, APP_SQL, APPS_GROUP_ROLE, COMPANION_SQL, WORK_DATABASE_PREFIXES, type ObjectNames } from '../../shared/object-names.js';
import { SQLSTATE, sqlState } from '../../shared/sqlstate.js';
import type { DatabaseOpener, Queryable } from '../queryable.js';
import { storageSettingsSql } from './app-storage.js';

const { escapeIdentifier: ident, escapeLiteral: literal } = pg;

export interface AppRoleLimits {
  connectionLimit: number;
  tempFileLimit: string;
  statementTimeout: string;
  idleInTransactionTimeout: string;
  idleSessionTimeout: string;
}

/**
 * The settings every app login role carries, by Postgres's name: its limits, and log_min_messages = fatal, so that
 * nothing a tenant's session sends (RAISE LOG, RAISE WARNING) reaches Postgres's log; the server's own FATAL and
 * PANIC lines still do. All are superuser-only or settable by the app for its own sessions only.
 */
export function roleSettings(limits: AppRoleLimits): Array<[string, string]> {
  return [
    ['temp_file_limit', limits.tempFileLimit],
    ['statement_timeout', limits.statementTimeout],
    ['idle_in_transaction_session_timeout', limits.idleInTransactionTimeout],
    ['idle_session_timeout', limits.idleSessionTimeout],
    ['log_min_messages', 'fatal'],
  ];
}

export function roleSettingsSql(role: string, limits: AppRoleLimits): string {
  return roleSettings(limits).map(([name, value]) => `ALTER ROLE ${ident(role)} SET ${name} = ${literal(value)};`).join('\n     ');
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
     ${roleSettingsSql(app.username, limits)}`,
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
export async function handDatabaseToApp(db: Queryable, opener: DatabaseOpener, name: string, app: ObjectNames): Promise<void> {
  await db.query(
    `REVOKE ALL ON DATABASE ${ident(name)} FROM PUBLIC;
     GRANT CONNECT, CREATE, TEMPORARY ON DATABASE ${ident(name)} TO ${ident(app.username)};`,
  );
  await opener.inDatabase(name, (appDb) => appDb.query(`ALTER SCHEMA public OWNER TO ${ident(app.username)}`));
}

export async function dropDatabase(db: Queryable, database: string): Promise<void> {
  await db.query(ddl(`DROP DATABASE IF EXISTS ${ident(database)} WITH (FORCE)`));
}

/**
 * Drops the app's login role, and its access role if that is a NOLOGIN role: a LOGIN role of that name is
 * another app's login (app x's app_x_user for app x_user), never ours to drop. Whatever other tenants granted
 * to these roles is removed first (dropRoleEverywhere), so no tenant can keep another app's roles alive.
 */
export async function dropAppRoles(db: Queryable, opener: DatabaseOpener, app: ObjectNames): Promise<void> {
  await dropRoleEverywhere(db, opener, app.username);
  const { rows } = await db.query<{ rolcanlogin: boolean }>(`SELECT rolcanlogin FROM pg_roles WHERE rolname = $1`, [app.accessRole]);
  if (rows[0] && !rows[0].rolcanlogin) await dropRoleEverywhere(db, opener, app.accessRole);
}

/**
 * The databases where `role` is named by something (a privilege, a default privilege, a policy, an owned
 * object): pg_shdepend's rows for it. Any tenant can GRANT on its own objects to any role it sees in pg_roles,
 * and each such grant makes a plain DROP ROLE fail.
 */
async function databasesNamingRole(db: Queryable, role: string): Promise<string[]> {
  const { rows } = await db.query<{ datname: string }>(
    `SELECT DISTINCT d.datname
       FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid JOIN pg_database d ON d.oid = s.dbid
      WHERE s.refclassid = 'pg_authid'::regclass AND r.rolname = $1 AND d.datallowconn
      ORDER BY 1`,
    [role],
  );
  return rows.map((row) => row.datname);
}

/**
 * Drops `role` whatever anyone granted to it: in every database where something names it, objects it owns
 * go to `reassignTo` (or are dropped) and privileges granted to it are revoked (DROP OWNED BY), then the role
 * goes. No statement here runs code a tenant wrote: REASSIGN and DROP OWNED change catalogs only, and tenants
 * cannot create event triggers. A database that refuses connections (mid-restore) makes DROP ROLE fail; the
 * caller's operation then fails and the reconciler finishes it.
 */
export async function dropRoleEverywhere(db: Queryable, opener: DatabaseOpener, role: string, reassignTo?: string): Promise<void> {
  if (!(await existingRoles(db, [role])).has(role)) return;
  const databases = await databasesNamingRole(db, role);
  for (const name of databases) {
    await opener.inDatabase(name, (inside) => dropOwnedInside(inside, db, role, reassignTo));
  }
  // DROP OWNED in one database also revokes privileges on shared objects (databases), so nothing is left. A role
  // named by no database's objects may still hold such a privilege (an extra credential's CONNECT): DROP OWNED
  // here, in the service's own database, where no tenant has anything, revokes it.
  if (databases.length === 0) await db.query(`DROP OWNED BY ${ident(role)}`);
  await db.query(`DROP ROLE IF EXISTS ${ident(role)}`);
}

/** How long DROP OWNED waits for a lock before it ends the sessions that hold it. */
const DROP_OWNED_LOCK_PATIENCE_MS = 2_000;

/**
 * DROP OWNED BY `role` in the database `inside` is connected to. Removing a role from a row-level security
 * policy needs an ACCESS EXCLUSIVE lock on the policy's table, and the tenant whose table it is can hold a
 * lock on it for as long as it likes: it chose to name another app's role, and could so keep that app from
 * ever being deleted. So while it runs, the statement is watched from `outside`: once it has waited
 * DROP_OWNED_LOCK_PATIENCE_MS for a lock, the non-superuser sessions that block it (that database's tenant's)
 * are ended.
 */
async function dropOwnedInside(inside: Queryable, outside: Queryable, role: string, reassignTo?: string): Promise<void> {
  const { rows } = await inside.query<{ pid: number }>(`SELECT pg_backend_pid() AS pid`);
  const pid = rows[0]!.pid;
  const done = new AbortController();
  const dropping = inside
    .query(`${reassignTo ? `REASSIGN OWNED BY ${ident(role)} TO ${ident(reassignTo)}; ` : ''}DROP OWNED BY ${ident(role)}`)
    .finally(() => done.abort());
  dropping.catch(() => {}); // awaited below, once the watch ends
  const isWaiting = async () =>
    (await outside.query<{ waiting: boolean }>(`SELECT wait_event_type = 'Lock' AS waiting FROM pg_stat_activity WHERE pid = $1`, [pid])).rows[0]?.waiting ?? false;
  const endBlockers = () =>
    outside.query(
      `SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a JOIN pg_roles r ON r.rolname = a.usename
        WHERE a.pid = ANY (pg_blocking_pids($1)) AND NOT r.rolsuper`,
      [pid],
    );
  await watchLockWaits(done.signal, isWaiting, DROP_OWNED_LOCK_PATIENCE_MS, endBlockers);
  await dropping;
}

/** Gives an app made before access roles existed its access role, so pg_hba.conf's samerole admits it. */
export async function addAccessRole(db: Queryable, app: ObjectNames): Promise<void> {
  await db.query(
    `CREATE ROLE ${ident(app.accessRole)} WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
     GRANT ${ident(app.accessRole)} TO ${ident(app.username)};`,
  );
}

/**
 * The login role can no longer open sessions. Postgres checks LOGIN when a session starts, after the password
 * exchange, so this also stops a login whose exchange is under way (its password stays).
 */
export async function disableLogin(db: Queryable, role: string): Promise<void> {
  // A session of the role may be changing its own password at this very moment (a tenant holding a leaked
  // password, trying to keep it): Postgres then fails one of the two ALTER ROLEs with "tuple concurrently
  // updated". Ours is tried again; once it holds, no new session can start.
  for (let attempt = 1; ; attempt++) {
    try {
      await db.query(`ALTER ROLE ${ident(role)} WITH NOLOGIN`);
      return;
    } catch (err) {
      if (!isConcurrentUpdate(err) || attempt >= 50) throw err;
      await sleep(10 * attempt);
    }
  }
}

/** Postgres's "tuple concurrently updated" (XX000): two statements changed the same catalog row at once. */
function isConcurrentUpdate(err: unknown): boolean {
  const { message } = err as { message?: unknown };
  return sqlState(err) === SQLSTATE.internalError && typeof message === 'string' && /tuple concurrently updated/.test(message);
}

/** Lets a login role (the app's, or an extra credential's) open sessions again (the end of a rotation, or after one was interrupted). */
export async function enableLogin(db: Queryable, role: string): Promise<void> {
  await db.query(`ALTER ROLE ${ident(role)} WITH LOGIN`);
}

/** Sets a login role's password (SCRAM verifier); LOGIN or NOLOGIN stays as it is. */
export async function setPassword(db: Queryable, role: string, passwordVerifier: string): Promise<void> {
  await db.query(`ALTER ROLE ${ident(role)} WITH PASSWORD ${literal(passwordVerifier)}`);
}

/** Whether a login role's password is still `passwordVerifier` (a role can change its own password). */
export async function passwordIs(db: Queryable, role: string, passwordVerifier: string): Promise<boolean> {
  const { rows } = await db.query<{ same: boolean }>(`SELECT rolpassword = $2 AS same FROM pg_authid WHERE rolname = $1`, [role, passwordVerifier]);
  return rows[0]?.same ?? false;
}

/**
 * The server's authentication_timeout in milliseconds: how long a login may take between its connection and
 * the end of its password exchange. Postgres reads a role's password verifier when the exchange begins, so a
 * login begun before a password change can finish with the old password until this has passed.
 */
export async function authenticationTimeoutMs(db: Queryable): Promise<number> {
  const { rows } = await db.query<{ ms: number }>(`SELECT setting::int * 1000 AS ms FROM pg_settings WHERE name = 'authentication_timeout'`);
  return rows[0]?.ms ?? 60_000;
}

/** How many sessions `role` has open now (terminated ones take a moment to go). */
export async function sessionCount(db: Queryable, role: string): Promise<number> {
  const { rows } = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()`, [role]);
  return rows[0]?.n ?? 0;
}

/** Ends every session of the app's login role, in every database. Returns how many were ended. */
export async function endSessionsOfRole(db: Queryable, app: ObjectNames): Promise<number> {
  return endSessionsOf(db, app.username);
}

/** Ends every session of `role`, in every database. Returns how many were ended. */
export async function endSessionsOf(db: Queryable, role: string): Promise<number> {
  const { rows } = await db.query<{ ended: number }>(
    `SELECT count(pg_terminate_backend(pid))::int AS ended FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()`,
    [role],
  );
  return rows[0]?.ended ?? 0;
}

/**
 * A short-lived login role with exactly the app's rights, for the client programs (pg_dump, pg_restore) that
 * work in an app's database: a member of the app's login role only (INHERIT, so it has the app's privileges and
 * may SET ROLE to it), of AGENTS_GROUP_ROLE (so pg_hba.conf admits it over the service's socket), with a
 * password only the service holds, valid for `validForMs`. Whatever a tenant's code does while it runs (RESET
 * ROLE included) reaches nothing the app could not reach itself.
 */
export async function createAgentRole(db: Queryable, agent: string, app: ObjectNames, passwordVerifier: string, validForMs: number): Promise<void> {
  const validUntil = new Date(Date.now() + validForMs).toISOString();
  await db.query(
    `CREATE ROLE ${ident(agent)} WITH LOGIN PASSWORD ${literal(passwordVerifier)} VALID UNTIL ${literal(validUntil)}
       NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 2
       IN ROLE ${ident(AGENTS_GROUP_ROLE)}, ${ident(app.username)};
     ALTER ROLE ${ident(agent)} SET log_min_messages = 'fatal';`,
  );
}

/**
 * Makes an agent left behind (one a tenant keeps from being dropped: it can GRANT on its own objects to any role
 * it sees, faster than DROP OWNED and DROP ROLE revoke it) exactly what createAgentRole makes: the same
 * attributes, a new password valid for `validForMs`, no settings but the service's, and no membership but
 * AGENTS_GROUP_ROLE and the app's login role (a tenant may have granted its own login role to it). Privileges a
 * tenant granted it on its own objects stay: they are in that tenant's database, which the agent never reaches.
 */
export async function rearmAgentRole(db: Queryable, agent: string, app: ObjectNames, passwordVerifier: string, validForMs: number): Promise<void> {
  const validUntil = new Date(Date.now() + validForMs).toISOString();
  const { rows: settings } = await db.query<{ datname: string | null }>(
    `SELECT d.datname FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole LEFT JOIN pg_database d ON d.oid = s.setdatabase
      WHERE r.rolname = $1 AND (s.setdatabase = 0 OR d.datname IS NOT NULL)`,
    [agent],
  );
  for (const { datname } of settings) await db.query(`ALTER ROLE ${ident(agent)}${datname ? ` IN DATABASE ${ident(datname)}` : ''} RESET ALL`);
  const { rows: memberships } = await db.query<{ rolname: string }>(
    `SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member
      WHERE r.rolname = $1 AND g.rolname <> ALL($2::text[])`,
    [agent, [AGENTS_GROUP_ROLE, app.username]],
  );
  for (const { rolname } of memberships) await db.query(`REVOKE ${ident(rolname)} FROM ${ident(agent)} CASCADE`);
  await db.query(
    `ALTER ROLE ${ident(agent)} WITH LOGIN PASSWORD ${literal(passwordVerifier)} VALID UNTIL ${literal(validUntil)}
       NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 2;
     GRANT ${ident(AGENTS_GROUP_ROLE)}, ${ident(app.username)} TO ${ident(agent)};
     ALTER ROLE ${ident(agent)} SET log_min_messages = 'fatal';`,
  );
}

/**
 * What a restore must not change about a login role (the app's own, or one of its extra credentials): its password,
 * its settings, and its memberships (both ways).
 */
export interface RoleState {
  verifier: string | null;
  /** pg_db_role_setting's rows for the role, as text, to compare. */
  settings: string;
  /** The roles it is a member of, and its members (each sorted). */
  memberOf: string[];
  members: string[];
}

/** What a restore must not change about the app's login role. */
export type LoginRoleState = RoleState;

export async function roleState(db: Queryable, role: string): Promise<RoleState | undefined> {
  const { rows } = await db.query<RoleState>(
    `SELECT a.rolpassword AS verifier,
            COALESCE((SELECT json_agg(json_build_object('database', s.setdatabase, 'config', s.setconfig) ORDER BY s.setdatabase)
                        FROM pg_db_role_setting s WHERE s.setrole = a.oid), '[]')::text AS settings,
            ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = a.oid ORDER BY 1) AS "memberOf",
            ARRAY(SELECT u.rolname::text FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member WHERE m.roleid = a.oid ORDER BY 1) AS members
       FROM pg_authid a WHERE a.rolname = $1`,
    [role],
  );
  return rows[0];
}

export function loginRoleState(db: Queryable, app: ObjectNames): Promise<LoginRoleState | undefined> {
  return roleState(db, app.username);
}

/**
 * Puts back what a restore changed about a login role. The dump's code runs with the app's rights, and a role may set
 * its own password and settings: a restored dump could otherwise undo a rotation, or hand the login of the app it
 * is restored into to whoever wrote it (from_deleted_app). The password verifier and the memberships are put back
 * exactly; changed settings are reset, and the service's own (`serviceSettingsSql`) set again, the storage quota's
 * enforcement included (settings the app had made itself are then gone: a dump that changes settings is not a plain
 * dump). Returns what was put back.
 */
export async function putBackRoleState(db: Queryable, role: string, before: RoleState, serviceSettingsSql: string): Promise<string[]> {
  const now = await roleState(db, role);
  if (!now) return [];
  const putBack: string[] = [];
  if (now.verifier !== before.verifier) {
    await db.query(before.verifier ? `ALTER ROLE ${ident(role)} PASSWORD ${literal(before.verifier)}` : `ALTER ROLE ${ident(role)} PASSWORD NULL`);
    putBack.push('password');
  }
  if (JSON.stringify([now.memberOf, now.members]) !== JSON.stringify([before.memberOf, before.members])) {
    for (const group of now.memberOf.filter((g) => !before.memberOf.includes(g))) await db.query(`REVOKE ${ident(group)} FROM ${ident(role)}`);
    for (const group of before.memberOf.filter((g) => !now.memberOf.includes(g))) await db.query(`GRANT ${ident(group)} TO ${ident(role)}`);
    for (const member of now.members.filter((m) => !before.members.includes(m))) await db.query(`REVOKE ${ident(role)} FROM ${ident(member)}`);
    putBack.push('memberships');
  }
  if (now.settings !== before.settings) {
    const { rows } = await db.query<{ datname: string | null }>(
      `SELECT d.datname FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole LEFT JOIN pg_database d ON d.oid = s.setdatabase
        WHERE r.rolname = $1 AND (s.setdatabase = 0 OR d.datname IS NOT NULL)`,
      [role],
    );
    for (const { datname } of rows) await db.query(`ALTER ROLE ${ident(role)}${datname ? ` IN DATABASE ${ident(datname)}` : ''} RESET ALL`);
    await db.query(serviceSettingsSql);
    // What the storage quota enforced before the restore (read-only, suspended) holds after it too.
    const storageSettings = storageSettingsSql(role, before.settings);
    if (storageSettings) await db.query(storageSettings);
    putBack.push('settings');
  }
  return putBack;
}

/** putBackRoleState for the app's login role, whose service settings are its limits. */
export function putBackLoginRoleState(db: Queryable, app: ObjectNames, before: LoginRoleState, limits: AppRoleLimits): Promise<string[]> {
  return putBackRoleState(db, app.username, before, roleSettingsSql(app.username, limits));
}

/** Which of `roles` exist. */
export async function existingRoles(db: Queryable, roles: string[]): Promise<Set<string>> {
  const { rows } = await db.query<{ rolname: string }>(`SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])`, [roles]);
  return new Set(rows.map((row) => row.rolname));
}

/** Whether a session of `role` is waiting for a lock right now (a tenant's transaction holds it). */
export async function waitingOnLock(db: Queryable, role: string): Promise<boolean> {
  const { rows } = await db.query<{ waiting: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE usename = $1 AND wait_event_type = 'Lock') AS waiting`,
    [role],
  );
  return rows[0]?.waiting ?? false;
}

/** Agent roles that exist, by name (left behind only if the service died while one worked). */
export async function agentRoles(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ rolname: string }>(
    `SELECT r.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member
      WHERE g.rolname = $1 ORDER BY 1`,
    [AGENTS_GROUP_ROLE],
  );
  return rows.map((row) => row.rolname);
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
  /** The login role may log in (false only between the first and last step of a rotation, or after a crash there). */
  loginAllowed: boolean;
  accessRole: boolean;
  database: boolean;
  databaseAllowsConnections: boolean;
}

/** Which of the app's objects exist right now. */
export async function appObjects(db: Queryable, app: ObjectNames): Promise<AppObjects> {
  const { rows } = await db.query<AppObjects>(
    `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) AS "loginRole",
            EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1 AND rolcanlogin) AS "loginAllowed",
            EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2 AND NOT rolcanlogin) AS "accessRole",
            EXISTS (SELECT 1 FROM pg_database WHERE datname = $3) AS "database",
            COALESCE((SELECT datallowconn FROM pg_database WHERE datname = $3), false) AS "databaseAllowsConnections"`,
    [app.username, app.accessRole, app.database],
  );
  return rows[0]!;
}

/** The databases the service made for its own work (restores): left over only after a crash. */
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
    `SELECT substring(r.rolname FROM '${APP_SQL.loginRolePattern}') AS app_name
       FROM pg_roles r
      WHERE r.rolcanlogin AND pg_has_role(r.oid, $1, 'MEMBER') AND r.rolname ~ '${APP_SQL.loginRolePattern}'
     UNION
     SELECT substring(datname FROM '${APP_SQL.databasePattern}') FROM pg_database WHERE datname ~ '${APP_SQL.databasePattern}'`,
    [APPS_GROUP_ROLE],
  );
  return rows.map((row) => row.app_name);
}

/** Open sessions of the apps' login roles, by app name (apps with none are absent). */
export async function appSessionCounts(db: Queryable): Promise<Map<string, number>> {
  const { rows } = await db.query<{ app_name: string; sessions: number }>(
    `SELECT substring(usename FROM '${APP_SQL.loginRolePattern}') AS app_name, count(*)::int AS sessions
       FROM pg_stat_activity WHERE usename ~ '${APP_SQL.loginRolePattern}' GROUP BY usename`,
  );
  return new Map(rows.map((row) => [row.app_name, row.sessions]));
}

/**
 * Database sizes of apps (all, or the names given), by app name: its database and its companion databases
 * together. pg_database_size walks every file of a database: about a millisecond per database, so the full list is
 * refreshed in the background, not per request.
 */
export async function appDatabaseSizes(db: Queryable, appNames?: string[]): Promise<Map<string, number>> {
  const { rows } = await db.query<{ app_name: string; size_bytes: number }>(
    `SELECT substring(datname FROM $2) AS app_name, sum(pg_database_size(oid))::float8 AS size_bytes
       FROM pg_database
      WHERE datname ~ $2 AND ($1::text[] IS NULL OR substring(datname FROM $2) = ANY ($1::text[]))
      GROUP BY 1`,
    [appNames ?? null, COMPANION_SQL.appDatabasePattern],
  );
  return new Map(rows.map((row) => [row.app_name, row.size_bytes]));
}

/**
 * Every app login role on the server, with its database and its SCRAM verifier when it may log in now (else
 * null): what the apps' door (PgBouncer's auth_file and hba file) admits, and whom it must refuse. Direct members of provisioned_apps only (an agent
 * is a member of an app's login role, never of the group itself), named as app login roles are. A role that cannot
 * log in (a ready set's, or one whose rotation or delete is under way), may open no session (CONNECTION LIMIT 0: an
 * app suspended by its storage quota, src/domain/storage-quota.ts), has no SCRAM verifier, or whose verifier has
 * expired gets null. Never a superuser.
 */
export async function appLoginVerifiers(db: Queryable): Promise<Array<{ name: string; database: string; verifier: string | null; companions: string[] }>> {
  const { rows } = await db.query<{ name: string; database: string; verifier: string | null; companions: string[] }>(
    `SELECT r.rolname AS name, ${APP_SQL.databaseOf(`substring(r.rolname FROM '${APP_SQL.loginRolePattern}')`)} AS database,
            CASE WHEN r.rolcanlogin AND r.rolconnlimit <> 0 AND r.rolpassword LIKE 'SCRAM-SHA-256$%' AND (r.rolvaliduntil IS NULL OR r.rolvaliduntil > now())
                 THEN r.rolpassword END AS verifier,
            -- Its app's complete companion databases (the login a member of the access role named like each, as
            -- pg_hba.conf's samerole asks): the door admits the login there too.
            ARRAY(SELECT d.datname::text FROM pg_auth_members cm JOIN pg_authid c ON c.oid = cm.roleid JOIN pg_database d ON d.datname = c.rolname
                   WHERE cm.member = r.oid AND d.datname ~ $2
                     AND substring(d.datname FROM $2) = substring(r.rolname FROM '${APP_SQL.loginRolePattern}')
                   ORDER BY 1) AS companions
       FROM pg_auth_members m
       JOIN pg_authid g ON g.oid = m.roleid AND g.rolname = $1
       JOIN pg_authid r ON r.oid = m.member
      WHERE NOT r.rolsuper AND r.rolname ~ '${APP_SQL.loginRolePattern}'
      ORDER BY r.rolname`,
    [APPS_GROUP_ROLE, COMPANION_SQL.pattern],
  );
  return rows;
}
