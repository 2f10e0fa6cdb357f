// Owns the names the service gives Postgres objects, and the rule for the app names most of them derive from:
// an app's database and roles (app_<name>, app_<name>_user), a ready-pool set's (pgprov_ready_<id>…), the
// agents' and the work databases' (pgprov_dump_<app>, pgprov_restore_<app>, pgprov_retired_<app>), and the
// group roles. Each is stated once, here: as a function, as a pattern, and as the SQL fragments of the queries
// that look for them. Every identifier the service sends to Postgres passes through here first (the allowlist),
// and is then quoted with escapeIdentifier where the SQL is built (src/db/).
import { z } from 'zod';

// --- app names ------------------------------------------------------------------------------------------------

export const APP_NAME_MIN_LENGTH = 3;
export const APP_NAME_MAX_LENGTH = 32;
const APP_NAME_CHARACTER = '[a-z0-9_]';
/** The rule as a regular expression without anchors: the same text in JavaScript and in Postgres (`~`, substring). */
export const APP_NAME_REGEX = `${APP_NAME_CHARACTER}{${APP_NAME_MIN_LENGTH},${APP_NAME_MAX_LENGTH}}`;
export const APP_NAME_PATTERN = new RegExp(`^${APP_NAME_REGEX}$`);

export const AppNameSchema = z
  .string({ error: 'app_name must be a string' })
  .min(APP_NAME_MIN_LENGTH, `app_name must be at least ${APP_NAME_MIN_LENGTH} characters`)
  .max(APP_NAME_MAX_LENGTH, `app_name must be at most ${APP_NAME_MAX_LENGTH} characters`)
  .regex(new RegExp(`^${APP_NAME_CHARACTER}*$`), 'app_name may contain only lowercase letters a-z, digits 0-9 and underscore');

const APP_PREFIX = 'app_';
const LOGIN_ROLE_SUFFIX = '_user';
/** An app's database name as a regular expression without anchors, capturing the app name (backup files start so). */
export const APP_DATABASE_REGEX = `${APP_PREFIX}(${APP_NAME_REGEX})`;

export interface AppIdentifiers {
  appName: string;
  /** The app's database: app_<name>. */
  database: string;
  /** The app's login role: app_<name>_user. */
  username: string;
  /**
   * A NOLOGIN role named exactly like the database, app_<name>, whose only member is the login role.
   * pg_hba.conf's `samerole` admits a login to a database only if it is a member of the role named like that
   * database: the pairing of app and database that Postgres 15's pg_hba.conf can express.
   */
  accessRole: string;
}

/** The Postgres names of one set of app objects: an app's, or a prepared set in the ready pool. */
export type ObjectNames = Pick<AppIdentifiers, 'database' | 'username' | 'accessRole'>;

/**
 * Derives the database and role names of an app. Throws on a name outside the allowlist, so no caller can
 * build SQL from an unchecked name even by mistake.
 */
export function appIdentifiers(appName: string): AppIdentifiers {
  if (!APP_NAME_PATTERN.test(appName)) throw new TypeError(`not a valid app name: ${JSON.stringify(appName)}`);
  const database = `${APP_PREFIX}${appName}`;
  return { appName, database, username: `${database}${LOGIN_ROLE_SUFFIX}`, accessRole: database };
}

/**
 * The other app names whose roles would collide with this app's: app `x`'s login role app_x_user is named like
 * app `x_user`'s access role, so `x` collides with `x_user`, and `x_user` also with `x_user_user`. Such a pair
 * cannot coexist without one app's login passing pg_hba.conf for the other's database, so the second of a
 * pair is refused (409), whichever comes first.
 */
export function collidingAppNames(appName: string): string[] {
  const candidates = [`${appName}${LOGIN_ROLE_SUFFIX}`];
  if (appName.endsWith(LOGIN_ROLE_SUFFIX)) candidates.push(appName.slice(0, -LOGIN_ROLE_SUFFIX.length));
  return candidates.filter((name) => APP_NAME_PATTERN.test(name));
}

/** A LIKE pattern for the names that start with `prefix` (its _ and % taken literally): 'app_' gives app\_%. */
export const sqlLikePrefix = (prefix: string): string => `${prefix.replace(/[\\_%]/g, '\\$&')}%`;

/** The app names in SQL: patterns that capture the app name (for `~` and substring), and names derived from a column. */
export const APP_SQL = {
  databasePattern: `^${APP_DATABASE_REGEX}$`,
  loginRolePattern: `^${APP_PREFIX}(${APP_NAME_REGEX})${LOGIN_ROLE_SUFFIX}$`,
  /** Every name an app's objects may have, and some others: for LIKE. */
  like: sqlLikePrefix(APP_PREFIX),
  databaseOf: (appNameColumn: string) => `'${APP_PREFIX}' || ${appNameColumn}`,
  loginRoleOf: (appNameColumn: string) => `'${APP_PREFIX}' || ${appNameColumn} || '${LOGIN_ROLE_SUFFIX}'`,
} as const;

// --- extra credentials ------------------------------------------------------------------------------------------
// An app may have more logins than its own (src/domain/operations/credentials.ts): each is a login role named
// app_<app>.<credential>. App names never contain '.', so no app's, ready set's, agent's or work database's name can
// be a credential's, and a credential's role never matches the app patterns above (APP_SQL: [a-z0-9_] only).

export const CREDENTIAL_NAME_MAX_LENGTH = 20;
const CREDENTIAL_NAME_REGEX = `${APP_NAME_CHARACTER}{1,${CREDENTIAL_NAME_MAX_LENGTH}}`;
export const CREDENTIAL_NAME_PATTERN = new RegExp(`^${CREDENTIAL_NAME_REGEX}$`);
const CREDENTIAL_SEPARATOR = '.';

export const CredentialNameSchema = z
  .string({ error: 'name must be a string' })
  .min(1, 'name must be at least 1 character')
  .max(CREDENTIAL_NAME_MAX_LENGTH, `name must be at most ${CREDENTIAL_NAME_MAX_LENGTH} characters`)
  .regex(new RegExp(`^${APP_NAME_CHARACTER}*$`), 'name may contain only lowercase letters a-z, digits 0-9 and underscore');

/** The login role of an app's extra credential: app_<app>.<credential>. Throws on a name outside the allowlist. */
export function credentialRole(app: AppIdentifiers, credential: string): string {
  if (!CREDENTIAL_NAME_PATTERN.test(credential)) throw new TypeError(`not a valid credential name: ${JSON.stringify(credential)}`);
  return `${app.database}${CREDENTIAL_SEPARATOR}${credential}`;
}

const CREDENTIAL_ROLE = new RegExp(`^${APP_PREFIX}(${APP_NAME_REGEX})\\${CREDENTIAL_SEPARATOR}(${CREDENTIAL_NAME_REGEX})$`);

/** The app and credential a credential role belongs to, or undefined for a name that is not a credential's. */
export function credentialOfRole(role: string): { appName: string; credential: string } | undefined {
  const match = CREDENTIAL_ROLE.exec(role);
  return match ? { appName: match[1]!, credential: match[2]! } : undefined;
}

/** Credential roles in SQL: a pattern capturing the app and the credential, and the LIKE prefix of one app's. */
export const CREDENTIAL_SQL = {
  rolePattern: `^${APP_PREFIX}(${APP_NAME_REGEX})\\${CREDENTIAL_SEPARATOR}(${CREDENTIAL_NAME_REGEX})$`,
  /** Every credential role of `app`, and nothing else: for LIKE. */
  likeOf: (app: AppIdentifiers) => sqlLikePrefix(`${app.database}${CREDENTIAL_SEPARATOR}`),
} as const;

// --- companion databases ------------------------------------------------------------------------------------------
// An app's extra databases (tests, a shadow for Prisma, a scratch copy). Each is named app_<app>-<companion>, the
// database and its NOLOGIN access role alike: the hyphen is a character no app name (nor any name derived from one,
// nor a ready set's, an agent's or a work database's) can hold, so a companion's name is never another object's,
// and it splits back into exactly one (app, companion) pair at its only hyphen (test/unit/object-names.test.ts).

/** app_ + 32 + - + 20 = 57 characters: within Postgres's 63, which would otherwise cut names (and make them collide). */
export const COMPANION_NAME_MAX_LENGTH = 20;
const COMPANION_NAME_REGEX = `${APP_NAME_CHARACTER}{1,${COMPANION_NAME_MAX_LENGTH}}`;
const COMPANION_SEPARATOR = '-';
/** What copy_of says for the app's main database; so no companion may be called that. */
export const MAIN_DATABASE_ALIAS = 'main';

export const CompanionNameSchema = z
  .string({ error: 'name must be a string' })
  .min(1, 'name must be at least 1 character')
  .max(COMPANION_NAME_MAX_LENGTH, `name must be at most ${COMPANION_NAME_MAX_LENGTH} characters`)
  .regex(new RegExp(`^${APP_NAME_CHARACTER}*$`), 'name may contain only lowercase letters a-z, digits 0-9 and underscore');

export interface CompanionIdentifiers {
  appName: string;
  /** The companion's own name, as the API takes it. */
  name: string;
  /** The companion's database: app_<app>-<name>. */
  database: string;
  /** Its NOLOGIN access role, named like the database (pg_hba.conf's samerole); the app's login role is its one member. */
  accessRole: string;
  /** The app's login role, which alone may connect to it. */
  username: string;
}

const COMPANION_PATTERN = new RegExp(`^${APP_PREFIX}(${APP_NAME_REGEX})${COMPANION_SEPARATOR}(${COMPANION_NAME_REGEX})$`);

/** The names of one companion of an app. Throws on a name outside the allowlist, as appIdentifiers does. */
export function companionIdentifiers(appName: string, name: string): CompanionIdentifiers {
  const app = appIdentifiers(appName);
  if (!new RegExp(`^${COMPANION_NAME_REGEX}$`).test(name)) throw new TypeError(`not a valid companion name: ${JSON.stringify(name)}`);
  const database = `${app.database}${COMPANION_SEPARATOR}${name}`;
  return { appName, name, database, accessRole: database, username: app.username };
}

/** The app and companion a database (or access role) name belongs to, or undefined for a name that is no companion's. */
export function parseCompanionName(objectName: string): { appName: string; name: string } | undefined {
  const match = COMPANION_PATTERN.exec(objectName);
  return match ? { appName: match[1]!, name: match[2]! } : undefined;
}

/** The companions' names in SQL: a pattern capturing the app (1) and the companion (2), for `~` and substring. */
export const COMPANION_SQL = {
  pattern: COMPANION_PATTERN.source,
  /** An app's main database or one of its companions; captures the app name (sizes count companions into their app). */
  appDatabasePattern: `^${APP_PREFIX}(${APP_NAME_REGEX})(?:${COMPANION_SEPARATOR}${COMPANION_NAME_REGEX})?$`,
  databaseOf: (appNameColumn: string, companionColumn: string) => `'${APP_PREFIX}' || ${appNameColumn} || '${COMPANION_SEPARATOR}' || ${companionColumn}`,
} as const;

// --- the service's own objects ----------------------------------------------------------------------------------
// Outside the app_ namespace: no app name makes them.

/** The group role every app login role belongs to; pg_hba.conf names it as +provisioned_apps. */
export const APPS_GROUP_ROLE = 'provisioned_apps';

/** PgBouncer's admin user (pgbouncer.ini admin_users): it exists in PgBouncer's auth_file only, never in Postgres. */
export const POOLER_ADMIN_USER = 'pgprov_pooler_admin';

/** The group role of the short-lived agent roles; pg_hba.conf names it as +pgprov_agents. */
export const AGENTS_GROUP_ROLE = 'pgprov_agents';

/** Every name of the service's own objects starts so (prepared sets, agents, work databases). */
const SERVICE_PREFIX = 'pgprov_';

const READY_SET_PREFIX = `${SERVICE_PREFIX}ready_`;
const READY_SET_ID_REGEX = '[a-z0-9]{12}';
export const READY_SET_ID_PATTERN = new RegExp(`^${READY_SET_ID_REGEX}$`);
export const READY_SET_ID_ALPHABET = '0123456789abcdefghijklmnopqrstuvwxyz';
export const READY_SET_ID_LENGTH = 12;

/** The names of a prepared set in the ready pool: its access role and database pgprov_ready_<id>, its login role …_user. */
export function readySetNames(id: string): ObjectNames {
  if (!READY_SET_ID_PATTERN.test(id)) throw new TypeError(`not a ready-pool id: ${JSON.stringify(id)}`);
  const database = `${READY_SET_PREFIX}${id}`;
  return { database, accessRole: database, username: `${database}${LOGIN_ROLE_SUFFIX}` };
}

/** The prepared sets' names in SQL: patterns that capture the id, and a set's database derived from an id column. */
export const READY_SET_SQL = {
  /** A set's role, either of them; captures the id. */
  rolePattern: `^${READY_SET_PREFIX}(${READY_SET_ID_REGEX})(${LOGIN_ROLE_SUFFIX})?$`,
  databasePattern: `^${READY_SET_PREFIX}(${READY_SET_ID_REGEX})$`,
  /** The start of any of a set's names; captures the id. */
  idPrefixPattern: `^${READY_SET_PREFIX}(${READY_SET_ID_REGEX})`,
  /** The start of any of a set's names; captures the set's database name. */
  databasePrefixPattern: `^(${READY_SET_PREFIX}${READY_SET_ID_REGEX})`,
  like: sqlLikePrefix(READY_SET_PREFIX),
  databaseOf: (idColumn: string) => `'${READY_SET_PREFIX}' || ${idColumn}`,
} as const;

/** Databases the service makes for its own work (restores), never apps' own: left over only after a crash. */
export const WORK_DATABASE_PREFIXES = { restoring: `${SERVICE_PREFIX}restore_`, retired: `${SERVICE_PREFIX}retired_` } as const;

/** Every name of the service's own objects, prepared sets' included: for LIKE. */
export const SERVICE_OBJECTS_LIKE = sqlLikePrefix(SERVICE_PREFIX);

export type AgentKind = 'dump' | 'restore';

/**
 * Agent names: `pgprov_dump_<app>`, and `pgprov_restore_<app>`, which is also the name of the database a restore
 * works in: pg_hba.conf's samerole admits an agent to databases named like a role it belongs to, so the restore's
 * agent reaches its work database and the app's, nothing else.
 */
const AGENT_PREFIXES: Record<AgentKind, string> = { dump: `${SERVICE_PREFIX}dump_`, restore: WORK_DATABASE_PREFIXES.restoring };
const AGENT_NAME = new RegExp(`^${SERVICE_PREFIX}(?:dump|restore)_(${APP_NAME_REGEX})$`);
/** Any agent's name, for `~`: the names of the agents of dumps and of restores. */
export const AGENT_SQL_PATTERN = `^${SERVICE_PREFIX}(dump|restore)_`;

export function agentName(kind: AgentKind, app: AppIdentifiers): string {
  return AGENT_PREFIXES[kind] + app.appName;
}

/** The app an agent role works for, or undefined for a name that is not an agent's. */
export function appOfAgent(role: string): string | undefined {
  return AGENT_NAME.exec(role)?.[1];
}

/** The app a work database (a restore's copy, or a retired original) belongs to. */
export function appOfWorkDatabase(database: string): string {
  return database.replace(WORK_DATABASE_PREFIXES.restoring, '').replace(WORK_DATABASE_PREFIXES.retired, '');
}

// --- extensions an operator enables (src/shared/extension-policy.ts) ------------------------------------------

/**
 * The schema the service installs extensions into, in an app's database: owned by the superuser, USAGE for every
 * role that may connect there, CREATE for no one else. A superuser's CREATE EXTENSION runs its script with this
 * schema first on its search_path, so nothing in it may be a tenant's (src/db/postgres-server/extensions.ts).
 */
export const SERVICE_EXTENSIONS_SCHEMA = 'extensions';

/** An extension's name as the service takes it: lowercase letters, digits, _ and - (uuid-ossp), at most 63. */
const EXTENSION_NAME_REGEX = '[a-z0-9_][a-z0-9_-]{0,62}';
export const EXTENSION_NAME_PATTERN = new RegExp(`^${EXTENSION_NAME_REGEX}$`);

export const ExtensionNameSchema = z
  .string({ error: 'the extension name must be a string' })
  .regex(EXTENSION_NAME_PATTERN, 'an extension name has 1 to 63 characters: lowercase letters a-z, digits 0-9, _ and -');
