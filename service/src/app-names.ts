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
}

/**
 * Derives the database and role names of an app. Throws on a name outside the allowlist, so no caller can
 * build SQL from an unchecked name even by mistake. Databases and roles live in separate catalogs, so
 * app_<name> and app_<name>_user are each unique across all valid names (see test/app-names.test.ts).
 */
export function appIdentifiers(appName: string): AppIdentifiers {
  if (!APP_NAME_PATTERN.test(appName)) throw new TypeError(`not a valid app name: ${JSON.stringify(appName)}`);
  return { appName, database: `app_${appName}`, username: `app_${appName}_user` };
}
