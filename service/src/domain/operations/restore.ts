// Owns restoring a backup into an app: restored into a new database beside the app's by pg_restore, logged in as
// the app's restore agent, then swapped in.
import { setTimeout as sleep } from 'node:timers/promises';
import { withAgent } from '../../db/postgres-server/agent-roles.js';
import { allowConnections, createDatabase, dropDatabase, handDatabaseToApp, loginRoleState, putBackLoginRoleState, swapInDatabase } from '../../db/postgres-server/app-objects.js';
import { applyDatabaseSettings } from '../../db/postgres-server/app-settings-objects.js';
import { findAppSettings } from '../../db/system-store/app-settings.js';
import type { Queryable } from '../../db/queryable.js';
import { findApp } from '../../db/system-store/registry.js';
import { BackupNotFoundError, BackupOfLiveAppError } from '../../shared/errors.js';
import { agentName, WORK_DATABASE_PREFIXES, type AppIdentifiers } from '../../shared/object-names.js';
import { SQLSTATE, sqlState } from '../../shared/sqlstate.js';
import { databaseSettingsToApply, effectiveAppLimits } from '../app-settings.js';
import { doorReconnects, doorTakesLogins } from '../apps-door.js';
import type { RequestContext } from '../operation-envelope.js';
import { backupSlot } from './backup.js';
import { planDumpExtensions, prepareDumpExtensions } from './extensions.js';
import { credentialStates, grantCredentialsIn, putBackCredentialStates } from './credentials.js';
import type { OperationDeps } from './deps.js';

/**
 * Restores a backup into a new database beside the app's, then swaps the two in one transaction: the app sees
 * either its old data or the restored data, never a mix, even across a crash. The backup must be of this
 * incarnation of the app, unless `fromDeletedApp` says the operator means to restore a deleted app's backup (of
 * this name or another) into this one; a live app's backup never goes into another app.
 */
export async function restore(deps: OperationDeps, appName: string, file: string, options: { fromDeletedApp: boolean }, request: RequestContext): Promise<void> {
  const { server, crashPoint, log } = deps;
  const source: Record<string, unknown> = { file };
  await deps.envelope.onApp('restore', appName, request, { slot: backupSlot(deps), detail: () => source }, async ({ store, server: client }, app) => {
    const backup = await deps.backupFiles.find(appName, file);
    const ours = backup.app_name === appName && backup.incarnation === app.incarnation;
    if (!ours) {
      if (!options.fromDeletedApp) throw new BackupNotFoundError(appName, file);
      const owner = await findApp(store, backup.app_name);
      if (owner && owner.incarnation === backup.incarnation) throw new BackupOfLiveAppError(file, backup.app_name);
      Object.assign(source, { from_deleted_app: true, source_app: backup.app_name, source_incarnation: backup.incarnation });
    }
    // Extensions the app's agent cannot create (APP_EXTENSIONS_ALLOWED): refused now, before anything is made, or
    // made by the service in the restore's database before pg_restore runs (src/domain/operations/extensions.ts).
    const extensions = await planDumpExtensions(deps, client, backup.path, file, app);
    if (extensions.install.length > 0) source.extensions = extensions.install;
    // Named like the restore's agent, so that pg_hba.conf admits the agent there (src/shared/object-names.ts).
    const restoring = agentName('restore', app);
    const settings = await findAppSettings(store, appName);
    const retired = WORK_DATABASE_PREFIXES.retired + appName;
    await dropDatabase(client, restoring);
    await createDatabase(client, restoring);
    await crashPoint('restore:after-create-copy');
    try {
      await handDatabaseToApp(client, server, restoring, app);
      await prepareDumpExtensions(deps, restoring, app, extensions);
      const roleBefore = await loginRoleState(client, app);
      const credentialsBefore = await credentialStates(client, app);
      try {
        await withAgent(server, client, app, 'restore', deps.config.BACKUP_TIMEOUT_MS, log, async (agent) => {
          await crashPoint('restore:after-create-agent');
          await server.dumpAndRestore.restore(backup.path, file, restoring, app, agent, extensions.useList);
        });
      } finally {
        // The app's own limits (its overrides, else today's defaults), not the defaults alone.
        const limits = await effectiveAppLimits(store, deps.config, appName);
        const putBack = roleBefore ? await putBackLoginRoleState(client, app, roleBefore, limits) : [];
        if (putBack.length > 0) {
          source.login_role_put_back = putBack;
          log.warn({ app: appName, put_back: putBack }, "the restored dump changed the app's login role; put back as it was");
        }
        const credentialsPutBack = await putBackCredentialStates(client, app, credentialsBefore, limits);
        if (Object.keys(credentialsPutBack).length > 0) {
          source.credentials_put_back = credentialsPutBack;
          log.warn({ app: appName, put_back: credentialsPutBack }, "the restored dump changed the app's credentials; put back as they were");
        }
      }
      // The restored database is a new one: the read-only credentials' grants in it are made again.
      await grantCredentialsIn(server, restoring, app, credentialsBefore);
      await crashPoint('restore:after-restore');
      // Database settings belong to a database (ALTER DATABASE … SET), not to its name: the restored copy gets the
      // app's before it is swapped in, so that no session of the restored database starts without them.
      await applyDatabaseSettings(client, restoring, databaseSettingsToApply(settings));
      // The swap ends every session in the app's database, the pooler's server connections among them; those
      // also close at the pooler as they are released. Its clients stay, and their next transaction runs on the
      // restored database. (KILL would end them too, but it is unsafe while the app's logins go on: apps-door.ts.)
      await doorReconnects(server, app);
      await swapWithRetries(client, app, restoring, retired);
      await crashPoint('restore:after-swap');
    } catch (err) {
      await dropDatabase(client, restoring).catch(() => {});
      await allowConnections(client, app.database).catch(() => {});
      throw err;
    }
    await dropDatabase(client, retired);
    if (source.login_role_put_back || source.credentials_put_back) await doorTakesLogins(server, app);
  });
}

/** Renaming needs a database nobody is in; ended sessions take a moment to go. */
async function swapWithRetries(client: Queryable, app: AppIdentifiers, replacement: string, retired: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await swapInDatabase(client, app, replacement, retired);
      return;
    } catch (err) {
      if (sqlState(err) !== SQLSTATE.objectInUse || attempt >= 50) throw err;
      await sleep(100);
    }
  }
}
