// Owns the SQL of the storage quota on the Postgres server: how big each app's databases are (its own and its
// companions, app_<app>-<companion>), which of them may have grown since they were last measured, and what the
// quota enforces on the app's login roles (its own, app_<app>_user, and its extra credentials', app_<app>.<name>):
// read-only (default_transaction_read_only) and suspended (CONNECTION LIMIT 0). What is enforced is written on each
// role as settings only a superuser can set or remove (pgprov.*), so the service can tell its own enforcement from
// anything an app set for itself, and what to put back: a role's connection limit before its suspension.
// Decisions are src/domain/storage-quota.ts's; nothing here decides.
import pg from 'pg';
import { APP_SQL, appIdentifiers, COMPANION_SQL, CREDENTIAL_SQL } from '../../shared/object-names.js';
import type { Queryable } from '../queryable.js';

const { escapeIdentifier: ident, escapeLiteral: literal } = pg;

/** The app a database name belongs to: its own database, or one of its companions (COMPANION_SQL.appDatabasePattern). */
const APP_OF_DATABASE_SQL = (column: string) => `substring(${column} FROM '${COMPANION_SQL.appDatabasePattern}')`;
const IS_APP_DATABASE_SQL = (column: string) => `${column} ~ '${COMPANION_SQL.appDatabasePattern}'`;

/** One of an app's databases, as the statistics see it now. */
export interface AppDatabaseActivity {
  oid: number;
  datname: string;
  app: string;
  /** Transactions ended in it so far (committed and rolled back), as pg_stat_database counts them. */
  transactions: number;
  /** A session is in it and not idle (running a statement, or inside a transaction): it may be growing now. */
  busy: boolean;
}

/**
 * Every app database and companion database, with what tells whether it may have grown: its ended transactions
 * and whether a session is busy in it. Reads shared memory only (20 to 50 ms for 2,000 databases, measured): no
 * file is looked at. A write happens in a transaction, which is either still open (busy) or ended (counted), so a
 * database whose count has not moved and where nobody is busy has not been written since.
 */
export async function appDatabaseActivity(db: Queryable): Promise<AppDatabaseActivity[]> {
  const { rows } = await db.query<AppDatabaseActivity>(
    `SELECT d.oid::int8::float8 AS oid, d.datname, ${APP_OF_DATABASE_SQL('d.datname')} AS app,
            COALESCE(s.xact_commit + s.xact_rollback, 0)::float8 AS transactions,
            EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid AND a.state IS DISTINCT FROM 'idle' AND a.pid <> pg_backend_pid()) AS busy
       FROM pg_database d LEFT JOIN pg_stat_database s ON s.datid = d.oid
      WHERE ${IS_APP_DATABASE_SQL('d.datname')}`,
  );
  return rows;
}

/**
 * The sizes of the databases whose oids are given, by oid: pg_database_size, which walks every file of the
 * database (0.6 to 0.8 ms each, measured over 2,000 new ones). A database dropped meanwhile is absent.
 */
export async function databaseSizes(db: Queryable, oids: number[]): Promise<Map<number, number>> {
  if (oids.length === 0) return new Map();
  const { rows } = await db.query<{ oid: number; size: number | null }>(
    `SELECT oid::int8::float8 AS oid, pg_database_size(oid)::float8 AS size FROM pg_database WHERE oid = ANY ($1::oid[])`,
    [oids],
  );
  return new Map(rows.filter((row) => row.size !== null).map((row) => [row.oid, row.size!]));
}

/** What the storage quota enforces on a role: nothing, read-only, or read-only and suspended. */
export type StorageEnforcement = 'none' | 'read_only' | 'suspended';

/** The settings (ALTER ROLE … SET, superuser-only) in which the enforcement is written on each role. */
const ENFORCEMENT_SETTING = 'pgprov.storage_enforcement';
const LIMIT_BEFORE_SETTING = 'pgprov.connection_limit_before_suspension';
/** The quota set default_transaction_read_only (a read-only credential carries it as its own: never lifted by the quota). */
const SET_READ_ONLY_SETTING = 'pgprov.storage_set_read_only';
const READ_ONLY_SETTING = 'default_transaction_read_only';

/** One login role of an app, and what the storage quota has made of it. */
export interface LoginRoleStorage {
  role: string;
  app: string;
  /** What the service recorded it enforces (its pgprov.* setting). */
  enforcement: StorageEnforcement;
  /** default_transaction_read_only=on is set on the role (the app can lift it, in a read-write transaction). */
  readOnlySet: boolean;
  /** …and the quota set it (pgprov.storage_set_read_only): only then does the quota lift it. */
  readOnlySetByQuota: boolean;
  connectionLimit: number;
  /** The connection limit the role had before its suspension, to put back; null when not suspended by us. */
  limitBefore: number | null;
}

/** A login role's storage columns, from pg_roles `r` and its settings in every database `s` (setdatabase 0). */
const LOGIN_ROLE_STORAGE_COLUMNS = `
  r.rolname AS role,
  COALESCE(substring(r.rolname FROM '${APP_SQL.loginRolePattern}'), substring(r.rolname FROM '${CREDENTIAL_SQL.rolePattern}')) AS app,
  COALESCE((SELECT substring(c FROM '^${ENFORCEMENT_SETTING.replace('.', '\\.')}=(read_only|suspended)$') FROM unnest(s.setconfig) c
             WHERE c LIKE '${ENFORCEMENT_SETTING}=%' LIMIT 1), 'none') AS enforcement,
  COALESCE(s.setconfig @> ARRAY['${READ_ONLY_SETTING}=on'], false) AS "readOnlySet",
  COALESCE(s.setconfig @> ARRAY['${SET_READ_ONLY_SETTING}=on'], false) AS "readOnlySetByQuota",
  r.rolconnlimit AS "connectionLimit",
  (SELECT substring(c FROM '^${LIMIT_BEFORE_SETTING.replace('.', '\\.')}=(-?[0-9]{1,6})$')::int FROM unnest(s.setconfig) c
    WHERE c LIKE '${LIMIT_BEFORE_SETTING}=%' LIMIT 1) AS "limitBefore"`;
const IS_APP_LOGIN_ROLE = `(r.rolname ~ '${APP_SQL.loginRolePattern}' OR r.rolname ~ '${CREDENTIAL_SQL.rolePattern}') AND NOT r.rolsuper`;

/**
 * The login roles of the apps named, each with what the quota enforces on it: the app's own login role and its
 * extra credentials' roles, whatever their LOGIN attribute (a rotation refuses a login for a while). Found by
 * name first (an index lookup and a prefix), so that it costs little however many apps there are.
 */
export async function loginRoleStorage(db: Queryable, appNames: string[]): Promise<LoginRoleStorage[]> {
  if (appNames.length === 0) return [];
  const apps = appNames.map(appIdentifiers);
  const { rows } = await db.query<LoginRoleStorage>(
    `SELECT * FROM (
       SELECT ${LOGIN_ROLE_STORAGE_COLUMNS}
         FROM pg_roles r LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0
        WHERE (r.rolname = ANY ($2::text[]) OR r.rolname LIKE ANY ($3::text[])) AND ${IS_APP_LOGIN_ROLE}) roles
      WHERE app = ANY ($1::text[])
      ORDER BY app, role`,
    [appNames, apps.map((app) => app.username), apps.map((app) => CREDENTIAL_SQL.likeOf(app))],
  );
  return rows;
}

/**
 * Every app login role on which the quota enforces something: found from the roles' settings (a few ms at 2,000
 * apps, measured, where reading every app's roles took 50 to 110 ms). Every other role is at 'none'.
 */
export async function enforcedLoginRoles(db: Queryable): Promise<LoginRoleStorage[]> {
  const { rows } = await db.query<LoginRoleStorage>(
    `SELECT ${LOGIN_ROLE_STORAGE_COLUMNS}
       FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
      WHERE s.setdatabase = 0 AND array_to_string(s.setconfig, ',') LIKE '%${ENFORCEMENT_SETTING}=%' AND ${IS_APP_LOGIN_ROLE}
      ORDER BY app, role`,
  );
  return rows;
}

/**
 * Brings one login role to `target` in one transaction (one message of several statements), from `now`, what
 * loginRoleStorage read under the app's lock. The record (pgprov.storage_enforcement) and the mechanism change
 * together, so a crash leaves the role as it was or as it should be, never between:
 * - read_only: default_transaction_read_only = on;
 * - suspended: read-only, and CONNECTION LIMIT 0, its limit until then kept in pgprov.connection_limit_before_suspension
 *   (a limit already 0 that the quota did not set, an operator's, stays, and is never lifted by it);
 * - none: the flag the quota set is reset, and the limit it kept put back.
 * Returns whether anything changed. Mechanisms an app lifted for itself (it may RESET its own read-only flag) are
 * set again too.
 */
export async function enforceOnLoginRole(db: Queryable, now: LoginRoleStorage, target: StorageEnforcement): Promise<boolean> {
  const role = ident(now.role);
  const statements: string[] = [];
  const wantReadOnly = target !== 'none';
  if (wantReadOnly && !now.readOnlySet) {
    statements.push(`ALTER ROLE ${role} SET ${READ_ONLY_SETTING} = on`);
    if (!now.readOnlySetByQuota) statements.push(`ALTER ROLE ${role} SET ${SET_READ_ONLY_SETTING} = on`);
  }
  // Only a flag the quota set is lifted: a read-only credential carries its own, and an app may have made itself
  // read-only by choice.
  if (!wantReadOnly && now.readOnlySetByQuota) {
    if (now.readOnlySet) statements.push(`ALTER ROLE ${role} RESET ${READ_ONLY_SETTING}`);
    statements.push(`ALTER ROLE ${role} RESET ${SET_READ_ONLY_SETTING}`);
  }
  if (target === 'suspended') {
    // A limit changed under a suspension (an operator's ALTER ROLE) is the one to put back later.
    if (now.connectionLimit !== 0) {
      statements.push(`ALTER ROLE ${role} SET ${LIMIT_BEFORE_SETTING} = ${literal(String(now.connectionLimit))}`, `ALTER ROLE ${role} CONNECTION LIMIT 0`);
    }
  } else if (now.limitBefore !== null) {
    if (now.connectionLimit === 0) statements.push(`ALTER ROLE ${role} CONNECTION LIMIT ${Number(now.limitBefore)}`);
    statements.push(`ALTER ROLE ${role} RESET ${LIMIT_BEFORE_SETTING}`);
  }
  if (target !== now.enforcement) {
    statements.push(target === 'none' ? `ALTER ROLE ${role} RESET ${ENFORCEMENT_SETTING}` : `ALTER ROLE ${role} SET ${ENFORCEMENT_SETTING} = ${literal(target)}`);
  }
  if (statements.length === 0) return false;
  await db.query(statements.join(';\n'));
  return true;
}

/** Ends every session of `roles`, in every database (the pooler's server connections among them). Returns how many. */
export async function endSessionsOfRoles(db: Queryable, roles: string[]): Promise<number> {
  if (roles.length === 0) return 0;
  const { rows } = await db.query<{ ended: number }>(
    `SELECT count(pg_terminate_backend(pid))::int AS ended FROM pg_stat_activity WHERE usename = ANY ($1::text[]) AND pid <> pg_backend_pid()`,
    [roles],
  );
  return rows[0]?.ended ?? 0;
}

/**
 * The statements that set the quota's settings of `before` (pg_db_role_setting's rows of a login role, as
 * loginRoleState reads them: JSON text) on `role` again: for a restore, which resets the login role's settings when
 * the restored dump changed them, and must not lift what the quota enforces. '' when there are none.
 */
export function storageSettingsSql(role: string, before: string): string {
  const rows = JSON.parse(before) as Array<{ database: number; config: string[] | null }>;
  const config = rows.find((row) => Number(row.database) === 0)?.config ?? [];
  const kept = config
    .map((entry) => /^([a-z_.]+)=(.*)$/.exec(entry))
    .filter((match): match is RegExpExecArray => match !== null && [ENFORCEMENT_SETTING, LIMIT_BEFORE_SETTING, SET_READ_ONLY_SETTING, READ_ONLY_SETTING].includes(match[1]!));
  return kept.map((match) => `ALTER ROLE ${ident(role)} SET ${match[1]} = ${literal(match[2]!)};`).join('\n');
}

/** Whether a role is exactly as `target` wants it: recorded, and every mechanism in place (none tampered with). */
export function roleIsAt(now: LoginRoleStorage, target: StorageEnforcement): boolean {
  if (now.enforcement !== target) return false;
  if (target === 'none') return now.limitBefore === null && !now.readOnlySetByQuota;
  if (!now.readOnlySet) return false;
  return target === 'suspended' ? now.connectionLimit === 0 : now.limitBefore === null;
}

/** The app's databases by name: its own and its companions (the door is told of each). */
export async function appDatabaseNames(db: Queryable, appName: string): Promise<string[]> {
  const { rows } = await db.query<{ datname: string }>(
    `SELECT datname FROM pg_database WHERE ${IS_APP_DATABASE_SQL('datname')} AND ${APP_OF_DATABASE_SQL('datname')} = $1 ORDER BY datname`,
    [appName],
  );
  return rows.map((row) => row.datname);
}

/**
 * ALTER ROLE … CONNECTION LIMIT `limit` for a login role, as the settings put it (PATCH /apps/:name/settings, the
 * reconciler, a credential's limits): on a role the storage quota has suspended, the limit to put back when the
 * suspension is lifted is set instead, so that no settings change lifts a suspension. A DO block: decided in the
 * same transaction as the change. Role names come from the allowlist (no $ or quote), and go in as literals.
 */
export function connectionLimitSql(role: string, limit: number): string {
  const name = literal(role);
  const value = Math.trunc(limit);
  return `DO $pgprov$ BEGIN
       IF EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
                   WHERE r.rolname = ${name} AND s.setdatabase = 0 AND s.setconfig @> ARRAY['${ENFORCEMENT_SETTING}=suspended']) THEN
         EXECUTE format('ALTER ROLE %I SET ${LIMIT_BEFORE_SETTING} = %L', ${name}, '${value}');
       ELSE
         EXECUTE format('ALTER ROLE %I WITH CONNECTION LIMIT ${value}', ${name});
       END IF;
     END $pgprov$;`;
}

/**
 * The connection limit the settings have in force on a role, from its rolconnlimit and its settings (setconfig):
 * while the storage quota suspends it, the one it gets back, not the 0 that suspends it.
 */
export function connectionLimitInForce(connectionLimit: number, roleConfig: string[]): number {
  if (!roleConfig.includes(`${ENFORCEMENT_SETTING}=suspended`)) return connectionLimit;
  const before = roleConfig.find((item) => item.startsWith(`${LIMIT_BEFORE_SETTING}=`));
  const value = before === undefined ? NaN : Number(before.slice(LIMIT_BEFORE_SETTING.length + 1));
  return Number.isInteger(value) ? value : connectionLimit;
}
