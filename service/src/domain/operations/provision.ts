// Owns provisioning: an app's roles and database, from the ready pool when it has a set (a hand-over: one short
// transaction on the server), else made on demand under the app's lock, with its intent registered first so that
// a crash between any two steps leaves something the reconciler removes.
import { createAppRoles, createDatabase, dropAppRoles, dropDatabase, existingAppLogins, handDatabaseToApp } from '../../db/postgres-server/app-objects.js';
import type { Queryable } from '../../db/queryable.js';
import { registerApp, setAppState, unregisterApp } from '../../db/system-store/registry.js';
import { AppExistsError, AppNameConflictError } from '../../shared/errors.js';
import { appIdentifiers, collidingAppNames, type AppIdentifiers } from '../../shared/object-names.js';
import type { AppCredential } from '../../shared/secrets.js';
import { DUPLICATE_ROLE_SQLSTATES, SQLSTATE, sqlState } from '../../shared/sqlstate.js';
import { effectiveAppLimits } from '../app-settings.js';
import { doorTakesLogins } from '../apps-door.js';
import type { AppSession, RequestContext } from '../operation-envelope.js';
import type { Credentials, OperationDeps } from './deps.js';

/**
 * Creates the app. From the ready pool when it has a set: the app is registered as creating, one transaction on
 * the server renames a prepared set to the app's names, and the app is marked ready (ReadyPool.handOverTo).
 * Otherwise on demand: registry row (state creating, committed first), roles,
 * database, hand-over, then state ready; a failure undoes the steps done, and a crash leaves the registry row,
 * from which the reconciler removes the rest.
 */
export function provision(deps: OperationDeps, appName: string, request: RequestContext): Promise<Credentials> {
  return deps.envelope.audited('provision', appName, request, async () => {
    const app = appIdentifiers(appName);
    const handed = deps.readyPool.enabled ? await handOverReadySet(deps, app) : undefined;
    let made: Credentials;
    if (handed) {
      await deps.crashPoint('provision:after-handover');
      made = { app, password: handed.password };
    } else {
      const { password, verifier } = await deps.credentials.take();
      made = await provisionOnDemand(deps, app, password, verifier);
    }
    // The app connects through the pooler the moment the answer reaches it.
    await doorTakesLogins(deps.server, app);
    return made;
  });
}

async function handOverReadySet(deps: OperationDeps, app: AppIdentifiers): Promise<AppCredential | undefined> {
  try {
    return await deps.readyPool.handOverTo(app);
  } catch (err) {
    const state = sqlState(err) ?? '';
    if (state === SQLSTATE.uniqueViolation || state === SQLSTATE.duplicateDatabase) throw new AppExistsError(app.appName);
    if (DUPLICATE_ROLE_SQLSTATES.includes(state)) throw await nameTakenError(deps.server.pool, app);
    throw err;
  }
}

async function provisionOnDemand(deps: OperationDeps, app: AppIdentifiers, password: string, verifier: string): Promise<Credentials> {
  const { server, crashPoint } = deps;
  const appName = app.appName;
  return deps.envelope.locked(appName, undefined, async (session) => {
    const client = session.server;
    if (!(await registerApp(session.store, appName))) throw new AppExistsError(appName);
    await crashPoint('provision:after-register');
    const progress = { rolesCreated: false, databaseCreated: false };
    try {
      try {
        await createAppRoles(client, app, verifier, await effectiveAppLimits(session.store, deps.config, appName));
      } catch (err) {
        if (DUPLICATE_ROLE_SQLSTATES.includes(sqlState(err) ?? '')) throw await nameTakenError(client, app);
        throw err;
      }
      progress.rolesCreated = true;
      await crashPoint('provision:after-create-roles');
      try {
        await createDatabase(client, app.database);
      } catch (err) {
        // A database of that name that is not registered: not ours, never dropped (the reconciler reports it).
        if (sqlState(err) === SQLSTATE.duplicateDatabase) throw new AppExistsError(appName);
        throw err;
      }
      progress.databaseCreated = true;
      await crashPoint('provision:after-create-database');
      await handDatabaseToApp(client, server, app.database, app);
      await crashPoint('provision:after-hand-over');
      await setAppState(session.store, appName, 'ready');
      return { app, password };
    } catch (err) {
      // After a SQL error, or a name found taken, the connection is sound and the steps done are known: undo them
      // now. After a lost connection or a timeout, a statement may still complete in Postgres: leave the registry
      // row (creating) to the reconciler, which removes whatever exists once this session is gone.
      if (sqlState(err) || err instanceof AppExistsError || err instanceof AppNameConflictError) await undoProvision(deps, session, app, progress);
      throw err;
    }
  });
}

/** Removes what a failed provision made, under the app's lock; if that fails, the reconciler will. */
async function undoProvision(deps: OperationDeps, session: AppSession, app: AppIdentifiers, progress: { rolesCreated: boolean; databaseCreated: boolean }): Promise<void> {
  try {
    if (progress.databaseCreated) await dropDatabase(session.server, app.database);
    if (progress.rolesCreated) await dropAppRoles(session.server, deps.server, app);
    await unregisterApp(session.store, app.appName);
    if (progress.rolesCreated) deps.log.warn({ app: app.appName }, 'provisioning failed; the steps already done were undone');
  } catch (err) {
    deps.log.error({ err, app: app.appName }, 'provisioning failed and could not be undone now; the reconciler will remove it');
  }
}

/** Why the app's role names are taken: a colliding app exists, or the roles are leftovers of this app. */
async function nameTakenError(client: Queryable, app: AppIdentifiers): Promise<Error> {
  const siblings = collidingAppNames(app.appName).map(appIdentifiers);
  const existing = await existingAppLogins(client, siblings.map((s) => s.username));
  const sibling = siblings.find((s) => existing.includes(s.username));
  if (!sibling) return new AppExistsError(app.appName);
  const shared = sibling.username === app.accessRole ? app.accessRole : app.username;
  return new AppNameConflictError(app.appName, sibling.appName, shared);
}
