// Owns deleting an app, and removing whatever exists of an app's objects (which the reconciler uses too, to
// finish a half-done delete or remove a half-made app).
import { appObjects, disableLogin, dropAppRoles, dropDatabase, endSessionsOfRole } from '../../db/postgres-server/app-objects.js';
import type { Queryable } from '../../db/queryable.js';
import type { PostgresServer } from '../../db/postgres-server/postgres-server.js';
import { setAppState, unregisterApp } from '../../db/system-store/registry.js';
import { AppNotDeletedError, BackupBlockedError, BackupFailedError, BackupRefusedError } from '../../shared/errors.js';
import type { AppIdentifiers } from '../../shared/object-names.js';
import type { CrashPoint } from '../crash-points.js';
import { doorEndsConnections, doorTakesLogins } from '../apps-door.js';
import type { RequestContext } from '../operation-envelope.js';
import { backupSlot, dumpApp } from './backup.js';
import { removeCredentialRoles } from './credentials.js';
import { removeCompanionsOf } from './companions.js';
import type { OperationDeps } from './deps.js';

/**
 * Backs the app up (unless told not to), marks it deleting (committed), ends its sessions and removes its
 * database and roles, whatever the app made inside; then the name is free again. An app found half-made or
 * half-deleted is removed too (without a backup). With a backup first, the delete holds the app's lock for as long
 * as pg_dump runs: a backup slot's own connection.
 */
export function deleteApp(deps: OperationDeps, appName: string, options: { backup: boolean }, request: RequestContext): Promise<{ backup: string | null }> {
  const { crashPoint } = deps;
  return deps.envelope.onApp(
    'delete',
    appName,
    request,
    { slot: options.backup ? backupSlot(deps) : undefined, appMustBe: 'registered', detail: (result) => ({ backup: result.backup }) },
    async ({ store, server }, app) => {
      let backup: string | null = null;
      if (options.backup && app.state === 'ready') backup = (await backupBeforeDelete(deps, server, app, app.incarnation)).file;
      await crashPoint('delete:after-backup');
      await setAppState(store, appName, 'deleting');
      await crashPoint('delete:after-mark-deleting');
      await removeAppObjects(deps.server, crashPoint, server, app);
      await unregisterApp(store, appName);
      deps.listing.forget(appName);
      return { backup };
    },
  );
}

/** The backup DELETE takes first; if it fails, nothing is removed and the answer says why (409). */
async function backupBeforeDelete(deps: OperationDeps, server: Queryable, app: AppIdentifiers, incarnation: string) {
  try {
    return await dumpApp(deps, server, app, incarnation);
  } catch (err) {
    if (err instanceof BackupBlockedError || err instanceof BackupRefusedError) throw new AppNotDeletedError(app.appName, err.message);
    if (err instanceof BackupFailedError) throw Object.assign(new AppNotDeletedError(app.appName, 'pg_dump failed; the service log has its exit code'), { cause: err });
    throw err; // Postgres away, or every backup slot taken: retry
  }
}

/** Removes whatever exists of the app's objects on `server` (`client`, a connection to it): its extra credentials first, then its login refused (at the pooler too), sessions ended (pooled ones too), companion databases, database, roles. */
export async function removeAppObjects(server: PostgresServer, crashPoint: CrashPoint, client: Queryable, app: AppIdentifiers): Promise<void> {
  await removeCredentialRoles(server, client, app);
  const objects = await appObjects(client, app);
  if (objects.loginRole) {
    await disableLogin(client, app.username);
    await doorTakesLogins(server, app);
    await doorEndsConnections(server, app);
    await endSessionsOfRole(client, app);
  }
  await crashPoint('delete:after-end-sessions');
  await removeCompanionsOf(server, client, app);
  await dropDatabase(client, app.database);
  await crashPoint('delete:after-drop-database');
  await dropAppRoles(client, server, app);
}
