// Owns the rule for app names and the Postgres identifiers derived from them.
// Every identifier the service sends to Postgres passes through here first (the allowlist),
// and is then quoted with escapeIdentifier where the SQL is built (src/db/).
import { z } from 'zod';

export const APP_NAME_PATTERN = /^[a-z0-9_]{3,32}$/;

export const AppNameSchema = z
  .string({ error: 'app_name must be a string' })
  .min(3, 'app_name must be at least 3 characters')
  .max(32, 'app_name must be at most 32 characters')
  .regex(/^[a-z0-9_]*$/, 'app_name may contain only lowercase letters a-z, digits 0-9 and underscore');

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

/**
 * Derives the database and role names of an app. Throws on a name outside the allowlist, so no caller can
 * build SQL from an unchecked name even by mistake.
 */
export function appIdentifiers(appName: string): AppIdentifiers {
  if (!APP_NAME_PATTERN.test(appName)) throw new TypeError(`not a valid app name: ${JSON.stringify(appName)}`);
  return { appName, database: `app_${appName}`, username: `app_${appName}_user`, accessRole: `app_${appName}` };
}

/**
 * The other app names whose roles would collide with this app's: app `x`'s login role app_x_user is named like
 * app `x_user`'s access role, so `x` collides with `x_user`, and `x_user` also with `x_user_user`. Such a pair
 * cannot coexist without one app's login passing pg_hba.conf for the other's database, so the second of a
 * pair is refused (409), whichever comes first.
 */
export function collidingAppNames(appName: string): string[] {
  const candidates = [`${appName}_user`];
  if (appName.endsWith('_user')) candidates.push(appName.slice(0, -'_user'.length));
  return candidates.filter((name) => APP_NAME_PATTERN.test(name));
}
