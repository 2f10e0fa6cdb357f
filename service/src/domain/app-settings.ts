// Owns what an app's settings are: the limits on its login role and the settings of its database, each the
// operator's override for this app (app_settings, src/db/system-store/app-settings.ts) or else the service's
// default (APP_CONNECTION_LIMIT, …, src/shared/config.ts); which ones an operator may change and to what (the rules
// PATCH /apps/:name/settings validates with); and whether what Postgres has in force matches them.
//
// effectiveAppLimits is THE answer to "which limits does this app's login get": every place that makes or re-applies
// an app login role's limits takes them from here (provisioning, a restore's put-back, the reconciler, and any
// other login of the app, such as extra credentials).
import { z } from 'zod';
import { roleSettings, type AppRoleLimits } from '../db/postgres-server/app-objects.js';
import { appSettingsInForce, applyAppSettings, identifierList, type DatabaseSetting, type SettingsInForce } from '../db/postgres-server/app-settings-objects.js';
import type { Queryable } from '../db/queryable.js';
import { allAppSettings, findAppSettings, type StoredAppSettings } from '../db/system-store/app-settings.js';
import { appsInState } from '../db/system-store/registry.js';
import type { Config } from '../shared/config.js';
import type { AppIdentifiers } from '../shared/object-names.js';
import { durationMs, durationText, sizeBytes, sizeText } from '../shared/setting-values.js';
import type { AppSession } from './operation-envelope.js';

// --- the values an operator may give ----------------------------------------------------------------------------

const MB = 1024 ** 2;
const HOUR_MS = 3_600_000;

/** A size between `min` and `max` bytes, written as Postgres writes one (512MB, 1GB). */
function sizeSchema(name: string, minBytes: number, maxBytes: number) {
  const message = `${name} must be a size from ${sizeText(minBytes)} to ${sizeText(maxBytes)}, written like 512MB or 2GB (units kB, MB, GB, TB), or null for the default`;
  return z.string({ error: message }).refine((text) => {
    const bytes = sizeBytes(text);
    return bytes !== undefined && bytes >= minBytes && bytes <= maxBytes;
  }, message);
}

/** A duration of at most `maxMs`, or 0 (off), written as Postgres writes one (250ms, 30s, 5min, 1h). */
function durationSchema(name: string, maxMs: number) {
  const message = `${name} must be 0 (off) or a duration up to ${durationText(maxMs)}, written like 30s or 5min (units ms, s, min, h, d), or null for the default`;
  return z.string({ error: message }).refine((text) => {
    const ms = durationMs(text);
    return ms !== undefined && ms <= maxMs;
  }, message);
}

/**
 * The connection limit's own bounds. The server's are checked when it is set (connectionCeiling): max_connections
 * less the superusers' reserved slots, which no role's sessions can pass whatever its limit says.
 */
export const CONNECTION_LIMIT_MAX = 1000;

/**
 * The limits on the app's login role (ALTER ROLE … CONNECTION LIMIT, ALTER ROLE … SET), by their names in the API
 * and in app_settings.role_limits. A role's own setting wins over its database's in Postgres, so these are set on
 * the role, never on the database.
 */
export const ROLE_LIMIT_SCHEMAS = {
  connection_limit: z
    .number({ error: `connection_limit must be a whole number from 1 to ${CONNECTION_LIMIT_MAX}, or null for the default` })
    .int(`connection_limit must be a whole number from 1 to ${CONNECTION_LIMIT_MAX}`)
    .min(1, `connection_limit must be a whole number from 1 to ${CONNECTION_LIMIT_MAX}`)
    .max(CONNECTION_LIMIT_MAX, `connection_limit must be a whole number from 1 to ${CONNECTION_LIMIT_MAX}`),
  // From 1MB (a smaller limit refuses any sort worth spilling) to 1TB (more than any disk this service runs on:
  // a larger value means "the disk", which no app should have).
  temp_file_limit: sizeSchema('temp_file_limit', MB, 1024 ** 4),
  // At most a day: a longer statement timeout is in effect none; 0 turns it off.
  statement_timeout: durationSchema('statement_timeout', 24 * HOUR_MS),
  idle_in_transaction_session_timeout: durationSchema('idle_in_transaction_session_timeout', 24 * HOUR_MS),
  idle_session_timeout: durationSchema('idle_session_timeout', 24 * HOUR_MS),
} as const;

export type RoleLimitName = keyof typeof ROLE_LIMIT_SCHEMAS;
export const ROLE_LIMIT_NAMES = Object.keys(ROLE_LIMIT_SCHEMAS) as RoleLimitName[];

/** The app's storage limit (measured by the storage quota; Postgres has none): from 1MB to 64TB. */
export const StorageLimitSchema = sizeSchema('storage_limit', MB, 64 * 1024 ** 4);

/**
 * The settings of the app's database an operator may set (ALTER DATABASE app_<name> SET …), each with why it is
 * here. Left out on purpose:
 * - statement_timeout, idle_in_transaction_session_timeout, idle_session_timeout, temp_file_limit: the app's login
 *   role carries each, and in Postgres a role's setting wins over its database's, so a database value would never
 *   take effect: they are the role limits above.
 * - client_encoding: every client sends its own when it connects, which wins; drivers expect UTF8.
 * - DateStyle, IntervalStyle: drivers parse dates and intervals in Postgres's default styles (pgx, lib/pq and
 *   JDBC refuse or misread others); a database that answers otherwise breaks them.
 * - default_transaction_read_only: the storage quota's read-only mode uses it.
 * - Anything only a superuser may set (log_*, session_replication_role, …): postgres.conf decides them for every
 *   app alike, and an app must not get through the operator what it could not set itself.
 */
export const DATABASE_SETTINGS = {
  // The app's local time (now()::text, timestamptz shown as text, date_trunc by day): apps written for one zone
  // get it without a SET in every session. Only names Postgres knows (pg_timezone_names), checked when set.
  timezone: z
    .string({ error: 'database.timezone must be a time zone name such as Europe/Paris or UTC, or null for the server\'s' })
    .regex(/^[A-Za-z0-9_+\-/]{1,64}$/, 'database.timezone must be a time zone name such as Europe/Paris or UTC (pg_timezone_names)'),
  // Where unqualified names resolve: apps that keep their tables in a schema of their own. Plain lower-case
  // identifiers and "$user" only, and never a pg_ name: pg_temp first would let temporary objects shadow the app's
  // tables and functions; pg_catalog is searched first anyway. A schema name cannot reach another database
  // (Postgres resolves names in the session's own database only).
  search_path: z
    .array(
      z
        .string({ error: 'database.search_path must be a list of schema names' })
        .regex(/^(?:\$user|[a-z_][a-z0-9_]{0,62})$/, 'database.search_path takes plain schema names (a-z, 0-9, _, not starting with a digit) and "$user"')
        .refine((name) => !name.startsWith('pg_'), 'database.search_path cannot name pg_ schemas (pg_temp, pg_catalog)'),
      { error: 'database.search_path must be a list of schema names, e.g. ["app", "public"], or null for the server\'s' },
    )
    .min(1, 'database.search_path must name at least one schema')
    .max(8, 'database.search_path takes at most 8 schemas')
    .refine((names) => new Set(names).size === names.length, 'database.search_path names a schema twice'),
  // How long a statement waits for a lock before it fails: a migration queued behind a long transaction fails
  // instead of stalling every query that queues behind its own lock. No role sets it, so the database's holds.
  lock_timeout: durationSchema('database.lock_timeout', HOUR_MS),
  // Memory per sort or hash before it spills to temporary files (postgres.conf: 4MB). At most 64MB on the 1 GB
  // machine: shared_buffers takes 256MB, and each of the app's connections (connection_limit) may run several such
  // nodes at once.
  work_mem: sizeSchema('database.work_mem', 64 * 1024, 64 * MB),
  // Apps written for REPEATABLE READ or SERIALIZABLE (retrying on 40001) get it without SET in each transaction.
  // 'read uncommitted' is left out: Postgres runs it as read committed.
  default_transaction_isolation: z.enum(['read committed', 'repeatable read', 'serializable'], {
    error: "database.default_transaction_isolation must be 'read committed', 'repeatable read' or 'serializable', or null for the server's",
  }),
} as const;

export type DatabaseSettingName = keyof typeof DATABASE_SETTINGS;
export const DATABASE_SETTING_NAMES = (Object.keys(DATABASE_SETTINGS) as DatabaseSettingName[]).sort();

/** Every name PATCH takes, as a newcomer would write it (database settings as database.<name>). */
export const ALLOWED_SETTING_NAMES = [...ROLE_LIMIT_NAMES, 'storage_limit', ...DATABASE_SETTING_NAMES.map((name) => `database.${name}`)];

/**
 * What PATCH /apps/:name/settings takes: any of the settings, each a new value, or null for the default. Names it
 * does not know pass here and are refused by the operation (422, naming them and listing the allowed ones).
 */
export const AppSettingsPatchSchema = z
  .object(
    {
      connection_limit: ROLE_LIMIT_SCHEMAS.connection_limit.nullable().optional(),
      temp_file_limit: ROLE_LIMIT_SCHEMAS.temp_file_limit.nullable().optional(),
      statement_timeout: ROLE_LIMIT_SCHEMAS.statement_timeout.nullable().optional(),
      idle_in_transaction_session_timeout: ROLE_LIMIT_SCHEMAS.idle_in_transaction_session_timeout.nullable().optional(),
      idle_session_timeout: ROLE_LIMIT_SCHEMAS.idle_session_timeout.nullable().optional(),
      storage_limit: StorageLimitSchema.nullable().optional(),
      database: z
        .object(
          {
            timezone: DATABASE_SETTINGS.timezone.nullable().optional(),
            search_path: DATABASE_SETTINGS.search_path.nullable().optional(),
            lock_timeout: DATABASE_SETTINGS.lock_timeout.nullable().optional(),
            work_mem: DATABASE_SETTINGS.work_mem.nullable().optional(),
            default_transaction_isolation: DATABASE_SETTINGS.default_transaction_isolation.nullable().optional(),
          },
          { error: 'database must be an object of database settings, e.g. {"timezone": "Europe/Paris"}' },
        )
        .catchall(z.unknown())
        .optional(),
    },
    { error: 'the body must be a JSON object of settings' },
  )
  .catchall(z.unknown());

export type AppSettingsPatch = z.infer<typeof AppSettingsPatchSchema>;

/** The names in a patch that are no setting this API changes (database ones as database.<name>). */
export function unknownSettingNames(patch: AppSettingsPatch): string[] {
  const known = new Set<string>([...ROLE_LIMIT_NAMES, 'storage_limit', 'database']);
  const databaseNames = new Set<string>(DATABASE_SETTING_NAMES);
  return [
    ...Object.keys(patch).filter((name) => !known.has(name)),
    ...Object.keys(patch.database ?? {}).filter((name) => !databaseNames.has(name)).map((name) => `database.${name}`),
  ];
}

// --- what an app's settings are -----------------------------------------------------------------------------------

/** Every setting as the API shows it: the values in force, the defaults, or (some of them) the overrides. */
export interface SettingsValues {
  connection_limit: number;
  temp_file_limit: string;
  statement_timeout: string;
  idle_in_transaction_session_timeout: string;
  idle_session_timeout: string;
  storage_limit: string;
  database: Partial<{ timezone: string; search_path: string[]; lock_timeout: string; work_mem: string; default_transaction_isolation: string }>;
}

/** The limits every app's login role gets unless the operator set its own: the service's settings. */
export function defaultRoleLimits(config: Config): AppRoleLimits {
  return {
    connectionLimit: config.APP_CONNECTION_LIMIT,
    tempFileLimit: config.APP_TEMP_FILE_LIMIT,
    statementTimeout: config.APP_STATEMENT_TIMEOUT,
    idleInTransactionTimeout: config.APP_IDLE_IN_TRANSACTION_TIMEOUT,
    idleSessionTimeout: config.APP_IDLE_SESSION_TIMEOUT,
  };
}

/** The API's names of the role limits, and AppRoleLimits's. */
const LIMIT_FIELDS: Record<RoleLimitName, keyof AppRoleLimits> = {
  connection_limit: 'connectionLimit',
  temp_file_limit: 'tempFileLimit',
  statement_timeout: 'statementTimeout',
  idle_in_transaction_session_timeout: 'idleInTransactionTimeout',
  idle_session_timeout: 'idleSessionTimeout',
};

/** The overrides of the role limits in a stored row, each only if it has the type it must have. */
function roleOverrides(stored: StoredAppSettings | undefined): Partial<Record<RoleLimitName, string | number>> {
  const overrides: Partial<Record<RoleLimitName, string | number>> = {};
  for (const name of ROLE_LIMIT_NAMES) {
    const value = stored?.role_limits[name];
    if (name === 'connection_limit' ? typeof value === 'number' : typeof value === 'string') overrides[name] = value;
  }
  return overrides;
}

/** The limits in force for an app: each of its overrides, or else the default. */
export function mergeRoleLimits(defaults: AppRoleLimits, stored: StoredAppSettings | undefined): AppRoleLimits {
  const limits: AppRoleLimits = { ...defaults };
  for (const [name, value] of Object.entries(roleOverrides(stored)) as Array<[RoleLimitName, string | number]>) {
    (limits as unknown as Record<string, string | number>)[LIMIT_FIELDS[name]] = value;
  }
  return limits;
}

/**
 * The limits of the app's login role (and of any other login of the app): the defaults (the service's settings
 * now) with the operator's overrides for this app (app_settings). A new app has no overrides yet (its row is made
 * by its first PATCH, and goes with it when it is deleted), so it gets the defaults.
 */
export async function effectiveAppLimits(store: Queryable, config: Config, appName: string): Promise<AppRoleLimits> {
  return mergeRoleLimits(defaultRoleLimits(config), await findAppSettings(store, appName));
}

/** The app's database settings to put in force: every allowed name, with its value, or undefined (RESET: the server's). */
export function databaseSettingsToApply(stored: StoredAppSettings | undefined): DatabaseSetting[] {
  return DATABASE_SETTING_NAMES.map((name) => {
    const value = stored?.database_settings[name];
    if (typeof value !== 'string') return { name, value: undefined };
    return { name, value: name === 'search_path' ? storedList(value) : value };
  });
}

/** search_path is stored as its names joined by ", " (none holds a comma or a space). */
const storedList = (value: string): string[] => value.split(', ');

/** The database overrides of a stored row, as the API shows them. */
function databaseOverrides(stored: StoredAppSettings | undefined): SettingsValues['database'] {
  const shown: Record<string, string | string[]> = {};
  for (const { name, value } of databaseSettingsToApply(stored)) if (value !== undefined) shown[name] = value;
  return shown;
}

/** What GET /apps/:name/settings answers: what is in force, what the operator set for this app, and the defaults. */
export interface AppSettingsView {
  app_name: string;
  in_force: SettingsValues;
  overrides: Partial<SettingsValues> & { database: SettingsValues['database'] };
  defaults: SettingsValues;
  allowed_database_settings: string[];
}

export function settingsView(config: Config, appName: string, stored: StoredAppSettings | undefined): AppSettingsView {
  const defaultLimits = defaultRoleLimits(config);
  const limitValues = (limits: AppRoleLimits) =>
    Object.fromEntries(ROLE_LIMIT_NAMES.map((name) => [name, limits[LIMIT_FIELDS[name]]])) as Pick<SettingsValues, RoleLimitName>;
  const storageLimit = stored?.storage_limit_bytes ?? null;
  const overrides = { ...roleOverrides(stored), ...(storageLimit !== null ? { storage_limit: sizeText(storageLimit) } : {}), database: databaseOverrides(stored) };
  return {
    app_name: appName,
    in_force: {
      ...limitValues(mergeRoleLimits(defaultLimits, stored)),
      storage_limit: storageLimit !== null ? sizeText(storageLimit) : config.APP_STORAGE_LIMIT,
      database: databaseOverrides(stored),
    },
    overrides: overrides as AppSettingsView['overrides'],
    // No database settings of the service's own: a name absent from in_force.database has the server's value (postgres.conf).
    defaults: { ...limitValues(defaultLimits), storage_limit: config.APP_STORAGE_LIMIT, database: {} },
    allowed_database_settings: DATABASE_SETTING_NAMES,
  };
}

// --- what Postgres has in force ------------------------------------------------------------------------------------

/** The settings (by Postgres's name, and 'connection_limit') where `inForce` differs from the app's settings. */
export function settingsAdrift(inForce: SettingsInForce, limits: AppRoleLimits, stored: StoredAppSettings | undefined): string[] {
  const adrift: string[] = [];
  if (inForce.connectionLimit !== limits.connectionLimit) adrift.push('connection_limit');
  for (const [name, value] of roleSettings(limits)) if (inForce.roleSettings[name] !== value) adrift.push(name);
  if (inForce.databaseSettings) {
    for (const { name, value } of databaseSettingsToApply(stored)) {
      const now = inForce.databaseSettings[name];
      const nowValue = now === undefined ? undefined : Array.isArray(value) ? identifierList(now) : now;
      if (JSON.stringify(nowValue) !== JSON.stringify(value)) adrift.push(`database.${name}`);
    }
  }
  return adrift;
}

/**
 * Ready apps whose login role or database does not carry their settings now: a default changed since (the service
 * restarted with another APP_… setting), the app changed a role setting of its own (ALTER ROLE … SET on itself,
 * which Postgres lets a role do for the settings it may SET), or the service stopped between saving an override
 * and applying it. One read of the catalogs and of the store.
 */
export async function appsWithSettingsAdrift(store: Queryable, server: Queryable, config: Config): Promise<string[]> {
  const ready = new Set((await appsInState(store, ['ready'])).map((app) => app.app_name));
  const stored = await allAppSettings(store);
  const defaults = defaultRoleLimits(config);
  return (await appSettingsInForce(server))
    .filter((inForce) => ready.has(inForce.appName))
    .filter((inForce) => settingsAdrift(inForce, mergeRoleLimits(defaults, stored.get(inForce.appName)), stored.get(inForce.appName)).length > 0)
    .map((inForce) => inForce.appName);
}

/**
 * Under the app's lock: puts the app's settings in force again if they are not (the reconciler's repair). Returns
 * what differed (nothing: nothing was done).
 */
export async function bringSettingsInForce(session: AppSession, config: Config, app: AppIdentifiers): Promise<string[]> {
  const stored = await findAppSettings(session.store, app.appName);
  const limits = mergeRoleLimits(defaultRoleLimits(config), stored);
  const [inForce] = await appSettingsInForce(session.server, [app.appName]);
  if (!inForce) return [];
  const adrift = settingsAdrift(inForce, limits, stored);
  if (adrift.length > 0) await applyAppSettings(session.server, app.username, limits, app.database, inForce.databaseSettings ? databaseSettingsToApply(stored) : []);
  return adrift;
}
