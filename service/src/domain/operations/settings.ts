// Owns reading and changing one app's settings (GET and PATCH /apps/:name/settings): its login role's limits, its
// database's settings and its storage limit, each an override of the operator's or the service's default
// (src/domain/app-settings.ts says which exist and what they may be).
import { endSessionsOfRole } from '../../db/postgres-server/app-objects.js';
import { applyAppSettings, applyLoginRoleLimits, connectionCeiling, timezoneNamed } from '../../db/postgres-server/app-settings-objects.js';
import type { Queryable } from '../../db/queryable.js';
import { findAppSettings, saveAppSettingsWhile, type StoredAppSettings } from '../../db/system-store/app-settings.js';
import { SettingNotAllowedError, SettingValueRefusedError } from '../../shared/errors.js';
import { sizeBytes } from '../../shared/setting-values.js';
import {
  ALLOWED_SETTING_NAMES,
  DATABASE_SETTING_NAMES,
  databaseSettingsToApply,
  defaultRoleLimits,
  mergeRoleLimits,
  ROLE_LIMIT_NAMES,
  settingsView,
  unknownSettingNames,
  type AppSettingsPatch,
  type AppSettingsView,
} from '../app-settings.js';
import { doorEndsConnections } from '../apps-door.js';
import type { RequestContext } from '../operation-envelope.js';
import { credentialRoles, liveCredentials } from '../../db/postgres-server/credential-objects.js';
import type { OperationDeps } from './deps.js';

/** The app's settings: in force, its overrides, the defaults. */
export async function readAppSettings(deps: OperationDeps, appName: string): Promise<AppSettingsView> {
  await deps.store.ensureSchema();
  await deps.envelope.requireApp(deps.store.pool, appName, 'ready');
  return settingsView(deps.config, appName, await findAppSettings(deps.store.pool, appName));
}

export interface ChangedSettings extends AppSettingsView {
  /** With end_sessions: how many of the app's sessions were ended (they reconnect with the new settings). */
  sessions_ended?: number;
}

/**
 * Changes the app's settings: each given value becomes its override, each null goes back to the default. Names it
 * does not know (422), values the server cannot take (422: a connection limit above what it can give, a time zone it
 * does not know): nothing is changed. Otherwise the app's row is saved and put in force, in one transaction (the
 * row commits only once Postgres has taken every statement): the login role's connection limit and settings, and
 * the database's settings. New sessions get them; sessions already open keep what they started with, unless
 * `endSessions`, which ends them all (at the pooler too: its clients reconnect). Audited with the names and values
 * changed (none is a secret).
 */
export function changeAppSettings(deps: OperationDeps, appName: string, patch: AppSettingsPatch, options: { endSessions: boolean }, request: RequestContext): Promise<ChangedSettings> {
  const changed: Record<string, unknown> = {};
  return deps.envelope.onApp(
    'change_settings',
    appName,
    request,
    { detail: (result) => ({ changed, ...(result.sessions_ended !== undefined ? { sessions_ended: result.sessions_ended } : {}) }) },
    async (session, app) => {
      const unknown = unknownSettingNames(patch);
      if (unknown.length > 0) throw new SettingNotAllowedError(unknown, ALLOWED_SETTING_NAMES);
      const next = await patched(session.server, await findAppSettings(session.store, appName), patch, changed, (await credentialRoles(session.server, app)).length);
      const limits = mergeRoleLimits(defaultRoleLimits(deps.config), next);
      await saveAppSettingsWhile(session.store, appName, next, async () => {
        await deps.crashPoint('settings:after-save');
        await applyAppSettings(session.server, app.username, limits, app.database, databaseSettingsToApply(next));
        // The app's extra credentials are held to the same limits as its own login.
        for (const credential of await liveCredentials(session.server, app)) await applyLoginRoleLimits(session.server, credential.role, limits);
      });
      let sessionsEnded: number | undefined;
      if (options.endSessions) {
        await doorEndsConnections(deps.server, app);
        sessionsEnded = await endSessionsOfRole(session.server, app);
      }
      return { ...settingsView(deps.config, appName, next), ...(sessionsEnded !== undefined ? { sessions_ended: sessionsEnded } : {}) };
    },
  );
}

/**
 * The app's stored settings with `patch` applied (records each change in `changed`), after the checks only the
 * server can make; SettingValueRefusedError naming every value it cannot take.
 */
async function patched(server: Queryable, stored: StoredAppSettings, patch: AppSettingsPatch, changed: Record<string, unknown>, credentials: number): Promise<StoredAppSettings> {
  const next: StoredAppSettings = { role_limits: { ...stored.role_limits }, database_settings: { ...stored.database_settings }, storage_limit_bytes: stored.storage_limit_bytes };
  const problems: string[] = [];
  for (const name of ROLE_LIMIT_NAMES) {
    const value = patch[name];
    if (value === undefined) continue;
    changed[name] = value;
    if (value === null) delete next.role_limits[name];
    else next.role_limits[name] = value;
  }
  const connectionLimit = patch.connection_limit;
  if (typeof connectionLimit === 'number') {
    // Postgres counts every session of the role against it, and gives no role more than its own slots.
    const capacity = await connectionCeiling(server);
    if (connectionLimit > capacity.ceiling) {
      problems.push(
        `connection_limit ${connectionLimit} is more than this server can give an app: at most ${capacity.ceiling} (max_connections ${capacity.maxConnections} less superuser_reserved_connections ${capacity.superuserReserved})`,
      );
    } else if (credentials > 0 && (credentials + 1) * connectionLimit > capacity.ceiling) {
      // Each of the app's extra credentials carries the same limit, on a role of its own (refuseLoginsBeyondServer).
      problems.push(
        `connection_limit ${connectionLimit} for each of the app's ${credentials + 1} logins (its own and ${credentials} credentials) is ${(credentials + 1) * connectionLimit} connections together, more than this server can give an app: at most ${capacity.ceiling}`,
      );
    }
  }
  if (patch.storage_limit !== undefined) {
    changed.storage_limit = patch.storage_limit;
    next.storage_limit_bytes = patch.storage_limit === null ? null : sizeBytes(patch.storage_limit)!;
  }
  for (const name of DATABASE_SETTING_NAMES) {
    const value = patch.database?.[name];
    if (value === undefined) continue;
    changed[`database.${name}`] = value;
    if (value === null) {
      delete next.database_settings[name];
    } else if (name === 'timezone') {
      const zone = await timezoneNamed(server, value as string);
      if (zone) next.database_settings[name] = zone;
      else problems.push(`database.timezone '${value as string}' is not a time zone Postgres knows (see pg_timezone_names), e.g. Europe/Paris or UTC`);
    } else {
      // search_path is kept as its names joined by ", " (src/domain/app-settings.ts, databaseSettingsToApply).
      next.database_settings[name] = Array.isArray(value) ? value.join(', ') : (value as string);
    }
  }
  if (problems.length > 0) throw new SettingValueRefusedError(problems);
  return next;
}
