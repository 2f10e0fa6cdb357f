// Owns the SQL that puts an app's settings in force on the Postgres server, and reads what is in force: the login
// role's limits (ALTER ROLE … CONNECTION LIMIT, ALTER ROLE … SET) and the database's own settings (ALTER DATABASE
// … SET); and what Postgres knows that the settings are checked against (its time zone names, how many
// connections it can give). Which settings exist and which values they may take is the domain's
// (src/domain/app-settings.ts); setting names reach SQL only from there, and are checked here once more.
import pg from 'pg';
import { APP_SQL, APPS_GROUP_ROLE, appIdentifiers } from '../../shared/object-names.js';
import type { Queryable } from '../queryable.js';
import { roleSettingsSql, type AppRoleLimits } from './app-objects.js';
import { connectionLimitInForce, connectionLimitSql } from './app-storage.js';

const { escapeIdentifier: ident, escapeLiteral: literal } = pg;

/** A database-level setting: Postgres's name, and its value (search_path: a list of schema names), or undefined: RESET. */
export interface DatabaseSetting {
  name: string;
  value: string | string[] | undefined;
}

/** Setting names are the domain's constants; never anything that needs quoting. */
const SETTING_NAME = /^[a-z_]{1,63}$/;

function databaseSettingSql(database: string, { name, value }: DatabaseSetting): string {
  if (!SETTING_NAME.test(name)) throw new TypeError(`not a setting name: ${JSON.stringify(name)}`);
  if (value === undefined) return `ALTER DATABASE ${ident(database)} RESET ${name};`;
  // A list setting takes identifiers (search_path = a, b); one quoted string would be one schema named "a, b".
  const written = Array.isArray(value) ? value.map((item) => ident(item)).join(', ') : literal(value);
  return `ALTER DATABASE ${ident(database)} SET ${name} = ${written};`;
}

/**
 * A login role's connection limit and settings (roleSettingsSql): an app's own, or any other login of the app's. The
 * limit goes where the storage quota keeps it while it suspends the role (connectionLimitSql).
 */
function loginRoleLimitsSql(role: string, limits: AppRoleLimits): string {
  return `${connectionLimitSql(role, limits.connectionLimit)}\n${roleSettingsSql(role, limits)}`;
}

/**
 * Puts an app's settings in force, in one message (one implicit transaction, or a part of the caller's): the login
 * role's connection limit and settings (as roleSettingsSql), and each of `databaseSettings` on its database, set or
 * reset. Database settings not named are left as they are. Sessions already open keep the values they started with.
 */
export async function applyAppSettings(db: Queryable, role: string, limits: AppRoleLimits, database: string, databaseSettings: DatabaseSetting[]): Promise<void> {
  await db.query([loginRoleLimitsSql(role, limits), ...databaseSettings.map((setting) => databaseSettingSql(database, setting))].join('\n'));
}

/** Puts `limits` on one login role (e.g. another login of the app, which is held to the app's limits). */
export async function applyLoginRoleLimits(db: Queryable, role: string, limits: AppRoleLimits): Promise<void> {
  await db.query(loginRoleLimitsSql(role, limits));
}

/** Sets or resets `databaseSettings` on `database` (a restore's copy, before it is swapped in). */
export async function applyDatabaseSettings(db: Queryable, database: string, databaseSettings: DatabaseSetting[]): Promise<void> {
  if (databaseSettings.length === 0) return;
  await db.query(databaseSettings.map((setting) => databaseSettingSql(database, setting)).join('\n'));
}

/** How many connections the server can give any one role: max_connections less the superusers' reserved slots. */
export async function connectionCeiling(db: Queryable): Promise<{ ceiling: number; maxConnections: number; superuserReserved: number }> {
  const { rows } = await db.query<{ max: number; reserved: number }>(
    `SELECT current_setting('max_connections')::int AS max, current_setting('superuser_reserved_connections')::int AS reserved`,
  );
  const { max, reserved } = rows[0]!;
  return { ceiling: max - reserved, maxConnections: max, superuserReserved: reserved };
}

/** The time zone `name` names in pg_timezone_names, in Postgres's spelling (asia/tokyo → Asia/Tokyo), or undefined. */
export async function timezoneNamed(db: Queryable, name: string): Promise<string | undefined> {
  const { rows } = await db.query<{ name: string }>(
    `SELECT name FROM pg_timezone_names WHERE lower(name) = lower($1) ORDER BY name = $1 DESC, name LIMIT 1`,
    [name],
  );
  return rows[0]?.name;
}

/** What is in force for one app: its login role's connection limit and settings, and its database's settings. */
export interface SettingsInForce {
  appName: string;
  connectionLimit: number;
  /** The login role's own settings (for every database), by Postgres's name. */
  roleSettings: Record<string, string>;
  /** The database's own settings (for every role), by Postgres's name in lower case; null: no database. */
  databaseSettings: Record<string, string> | null;
}

/** `name=value` items of a setconfig array, by name (lower case: Postgres writes TimeZone, DateStyle…). */
function settingsOf(config: string[]): Record<string, string> {
  const settings: Record<string, string> = {};
  for (const item of config) {
    const at = item.indexOf('=');
    if (at > 0) settings[item.slice(0, at).toLowerCase()] = item.slice(at + 1);
  }
  return settings;
}

/**
 * What is in force for every app whose login role exists (or the apps named): one read of the catalogs. Read by
 * the reconciler, which applies an app's settings again where they differ.
 */
export async function appSettingsInForce(db: Queryable, appNames?: string[]): Promise<SettingsInForce[]> {
  const appNameOf = `substring(r.rolname FROM '${APP_SQL.loginRolePattern}')`;
  const { rows } = await db.query<{ app_name: string; connection_limit: number; role_config: string[]; database_config: string[] | null }>(
    `SELECT ${appNameOf} AS app_name, r.rolconnlimit AS connection_limit,
            COALESCE((SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setrole = r.oid AND s.setdatabase = 0), '{}') AS role_config,
            (SELECT COALESCE(s.setconfig, '{}') FROM pg_database d
               LEFT JOIN pg_db_role_setting s ON s.setdatabase = d.oid AND s.setrole = 0
              WHERE d.datname = ${APP_SQL.databaseOf(appNameOf)}) AS database_config
       FROM pg_roles r
      WHERE r.rolname ~ '${APP_SQL.loginRolePattern}' AND pg_has_role(r.oid, $1, 'MEMBER')
        AND ($2::text[] IS NULL OR r.rolname = ANY ($2::text[]))`,
    [APPS_GROUP_ROLE, appNames ? appNames.map((name) => appIdentifiers(name).username) : null],
  );
  return rows.map((row) => ({
    appName: row.app_name,
    // Under a storage suspension (CONNECTION LIMIT 0), the limit the role gets back is the one in force.
    connectionLimit: connectionLimitInForce(row.connection_limit, row.role_config),
    roleSettings: settingsOf(row.role_config),
    databaseSettings: row.database_config === null ? null : settingsOf(row.database_config),
  }));
}

/**
 * A list setting's value as Postgres writes it (search_path: `"$user", public, "order"`), as its items: quotes
 * taken off where Postgres put them (a name that needs quoting, or a keyword).
 */
export function identifierList(text: string): string[] {
  const items: string[] = [];
  for (const match of text.matchAll(/\s*("(?:[^"]|"")*"|[^,\s]+)\s*(?:,|$)/g)) {
    const item = match[1]!;
    items.push(item.startsWith('"') ? item.slice(1, -1).replaceAll('""', '"') : item);
  }
  return items;
}
