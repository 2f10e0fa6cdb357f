// The benchmark's floors: what the service does for an app, sent straight to Postgres over one open superuser
// connection to today's one server, which holds the system store too (no HTTP, no nginx, no pool checkout), made of the service's own steps so that it cannot drift from
// them: the db functions the on-demand provisioning runs, in its order (src/domain/operations/provision.ts,
// provisionOnDemand), the app's lock taken as SystemStore.withAppLock takes it (pg_try_advisory_lock), the
// limits the service derives from its settings (appRoleLimits), and the delete's own removal of the app's objects
// (removeAppObjects). test/app/provision-on-demand.test.ts checks that the floor makes what the service makes.
import type pg from 'pg';
import { createAppRoles, createDatabase, handDatabaseToApp, type AppRoleLimits } from '../../../src/db/postgres-server/app-objects.js';
import type { PostgresServer } from '../../../src/db/postgres-server/postgres-server.js';
import { appendAudit } from '../../../src/db/system-store/audit-log.js';
import { appLockKey, tryLock, unlock } from '../../../src/db/system-store/locks.js';
import { findApp, registerApp, setAppState, unregisterApp } from '../../../src/db/system-store/registry.js';
import { renameReadySetToApp } from '../../../src/db/postgres-server/ready-set-objects.js';
import { claimReadySet, endClaim } from '../../../src/db/system-store/ready-set-rows.js';
import { removeAppObjects } from '../../../src/domain/operations/delete.js';
import type { AppIdentifiers } from '../../../src/shared/object-names.js';
import type { AppCredential } from '../../../src/shared/secrets.js';

/** No crash points in the floor (they are the tests' CRASH_AT, never set here). */
const noCrashPoint = async () => {};

/** Runs `work` holding the app's lock, taken and let go with the service's statements; the floor never waits for it. */
async function withAppLock(client: pg.ClientBase, appName: string, work: () => Promise<void>): Promise<void> {
  if (!(await tryLock(client, appLockKey(appName)))) throw new Error(`floor: the lock of app ${appName} is taken`);
  try {
    await work();
  } finally {
    await unlock(client, appLockKey(appName));
  }
}

/** The statements of the on-demand provisioning path, in order, on one connection (plus the connection into the new database that ALTER SCHEMA needs). */
export async function floorProvision(client: pg.ClientBase, server: PostgresServer, app: AppIdentifiers, credential: AppCredential, limits: AppRoleLimits): Promise<void> {
  await withAppLock(client, app.appName, async () => {
    if (!(await registerApp(client, app.appName))) throw new Error(`floor: app ${app.appName} exists`);
    await createAppRoles(client, app, credential.verifier, limits);
    await createDatabase(client, app.database);
    await handDatabaseToApp(client, server, app.database, app);
    await setAppState(client, app.appName, 'ready');
  });
  await appendAudit(client, { action: 'provision', appName: app.appName, outcome: 'ok', requestId: 'floor', client: '127.0.0.1' });
}

/** The statements of DELETE /apps/:name?backup=false, in order, on one connection. */
export async function floorDelete(client: pg.ClientBase, server: PostgresServer, app: AppIdentifiers): Promise<void> {
  await withAppLock(client, app.appName, async () => {
    if (!(await findApp(client, app.appName))) throw new Error(`floor: app ${app.appName} does not exist`);
    await setAppState(client, app.appName, 'deleting');
    await removeAppObjects(server, noCrashPoint, client, app);
    await unregisterApp(client, app.appName);
  });
  await appendAudit(client, { action: 'delete', appName: app.appName, outcome: 'ok', requestId: 'floor', client: '127.0.0.1' });
}

/**
 * The hand-over's steps (ReadyPool.handOverTo), on one connection: the store claims the oldest of the ready sets
 * `ids`, the server renames it to the app's names in one transaction, the store marks the app ready; then the
 * audit row. False when no set could be claimed.
 */
export async function floorHandOver(client: pg.ClientBase, app: AppIdentifiers, ids: string[]): Promise<boolean> {
  const claim = await claimReadySet(client, app.appName, ids);
  if (!claim) return false;
  if (!claim.appLocked || !claim.setLocked || !(await renameReadySetToApp(client, claim.id, app))) throw new Error(`floor: set ${claim.id} could not be handed over`);
  await endClaim(client, app.appName, claim, 'ready');
  await appendAudit(client, { action: 'provision', appName: app.appName, outcome: 'ok', requestId: 'floor', client: '127.0.0.1' });
  return true;
}
