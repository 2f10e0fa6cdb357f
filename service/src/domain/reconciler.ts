// Owns the reconciler: finds and repairs what crashes left, one function per kind of repair. Apps half-made
// (creating) are removed, apps half-removed (deleting) are finished, leftover agent roles and restore databases
// are dropped, a database left refusing connections or a login left refused is opened again, half-prepared
// ready-pool sets are removed, complete apps missing from the registry (made before it existed) are adopted,
// ready apps whose login role or database no longer carries their settings get them again, and companion
// databases left half-made, half-removed or closed are removed or opened again.
// Each repair runs under the app's lock, taken only if it is free: an app being worked on right now is skipped
// until the next run. A repair that fails (Postgres away, a tenant's lock) is tried again at the next run and
// never keeps the others from running.
import type { Logger } from 'pino';
import { removeAgent } from '../db/postgres-server/agent-roles.js';
import { addAccessRole, agentRoles, allowConnections, appNamesWithObjects, appObjects, dropAppRoles, dropDatabase, dropRoleEverywhere, enableLogin, workDatabases } from '../db/postgres-server/app-objects.js';
import { allCredentialRoles, credentialRoles } from '../db/postgres-server/credential-objects.js';
import { companionStates, type CompanionState } from '../db/postgres-server/companion-objects.js';
import type { PostgresServer } from '../db/postgres-server/postgres-server.js';
import { adoptApp, appsInState, findApp, registeredAppNames, unregisterApp } from '../db/system-store/registry.js';
import type { SystemStore } from '../db/system-store/system-store.js';
import { appIdentifiers, appOfAgent, appOfWorkDatabase, companionIdentifiers } from '../shared/object-names.js';
import type { Config } from '../shared/config.js';
import { appsWithSettingsAdrift, bringSettingsInForce } from './app-settings.js';
import type { AuditTrail } from './audit-trail.js';
import type { CrashPoint } from './crash-points.js';
import type { AppSession } from './operation-envelope.js';
import { removeCompanionObjects } from './operations/companions.js';
import { removeCredentialRoles } from './operations/credentials.js';
import { removeAppObjects } from './operations/delete.js';
import type { ReadyPool } from './ready-pool.js';

export interface ReconcileReport {
  repaired: Array<{ app: string; action: string }>;
  skippedBusy: number;
  /** Repairs that failed this time (logged); the next run tries them again. */
  failed: number;
}

export interface ReconcilerDeps {
  store: SystemStore;
  server: PostgresServer;
  audit: AuditTrail;
  readyPool: ReadyPool;
  /** The defaults of the apps' settings (APP_CONNECTION_LIMIT, …). */
  config: Config;
  log: Logger;
  crashPoint: CrashPoint;
}

/** One run of the reconciler: its report, and how each repair is made and told. */
class ReconcileRun {
  readonly report: ReconcileReport = { repaired: [], skippedBusy: 0, failed: 0 };
  readonly deps: ReconcilerDeps;

  constructor(deps: ReconcilerDeps) {
    this.deps = deps;
  }

  /** Records a repair: in the report, the log and the audit log. */
  async repaired(app: string, action: string): Promise<void> {
    this.report.repaired.push({ app, action });
    this.deps.log.warn({ app, action }, 'reconciler repaired an app');
    await this.deps.audit.record({ action: 'reconcile', appName: app, outcome: action }).catch(() => {});
  }

  /**
   * Runs `work` under the app's lock if it is free (else counts the app as busy), with a connection to the store
   * (holding the lock) and one to the server; a failure is counted and logged.
   */
  async locked(appName: string, work: (session: AppSession) => Promise<void>): Promise<void> {
    try {
      const done = await this.deps.store.tryWithAppLock(appName, (store) =>
        this.deps.server.withClientBeside(this.deps.store, store, async (server) => {
          await work({ store, server });
          return true;
        }),
      );
      if (!done) this.report.skippedBusy++;
    } catch (err) {
      this.report.failed++;
      this.deps.log.warn({ err, app: appName }, 'reconciler could not repair an app now; it will try again');
    }
  }
}

/** Apps registered as creating or deleting: whatever exists of their objects is removed, then their row. */
async function finishHalfDoneApps(run: ReconcileRun): Promise<void> {
  const { store, server, crashPoint } = run.deps;
  for (const { app_name: appName } of await appsInState(store.pool, ['creating', 'deleting'])) {
    await run.locked(appName, async (session) => {
      const current = await findApp(session.store, appName);
      if (!current || current.state === 'ready') return;
      await removeAppObjects(server, crashPoint, session.server, appIdentifiers(appName));
      await unregisterApp(session.store, appName);
      await run.repaired(appName, current.state === 'creating' ? 'removed half-made app' : 'finished deleting app');
    });
  }
}

/** Agent roles left by a dump or restore the service died in. */
async function removeLeftoverAgents(run: ReconcileRun): Promise<void> {
  const { server } = run.deps;
  for (const agent of await agentRoles(server.pool)) {
    const appName = appOfAgent(agent);
    if (!appName) continue; // a member of pgprov_agents the operator made: not ours
    await run.locked(appName, async (session) => {
      await removeAgent(server, session.server, agent, appIdentifiers(appName).username);
      await run.repaired(appName, `removed agent role ${agent}`);
    });
  }
}

/** A restore's work databases left by a crash; the app's own database opened again if the swap had closed it. */
async function dropRestoreLeftovers(run: ReconcileRun): Promise<void> {
  for (const database of await workDatabases(run.deps.server.pool)) {
    const appName = appOfWorkDatabase(database);
    await run.locked(appName, async ({ server: client }) => {
      const app = appIdentifiers(appName);
      await dropDatabase(client, database);
      const objects = await appObjects(client, app);
      if (objects.database && !objects.databaseAllowsConnections) await allowConnections(client, app.database);
      await run.repaired(appName, `dropped restore leftover ${database}`);
    });
  }
}

/** Ready apps whose database refuses connections, or whose login is refused (an interrupted rotation). */
async function reopenReadyApps(run: ReconcileRun): Promise<void> {
  const { store, server, log } = run.deps;
  for (const { app_name: appName } of await appsInState(store.pool, ['ready'])) {
    const app = appIdentifiers(appName);
    const objects = await appObjects(server.pool, app);
    if (objects.database && objects.databaseAllowsConnections && objects.loginRole && objects.loginAllowed && objects.accessRole) continue;
    // Something looks wrong: look again under the app's lock (a delete may have been under way).
    await run.locked(appName, async ({ store: storeClient, server: client }) => {
      if ((await findApp(storeClient, appName))?.state !== 'ready') return;
      const now = await appObjects(client, app);
      if (now.database && !now.databaseAllowsConnections) {
        await allowConnections(client, app.database);
        await run.repaired(appName, 'allowed connections again');
      } else if (now.loginRole && !now.loginAllowed) {
        // A rotation stopped before its end: it was never answered, so the app keeps the password it has.
        await enableLogin(client, app.username);
        await run.repaired(appName, 'allowed login again after an interrupted rotation');
      } else if (!now.database || !now.loginRole || !now.accessRole) {
        log.error({ app: appName, objects: now }, 'app is registered as ready but some of its objects are missing; left for the operator');
      }
    });
  }
}

/** Ready-pool sets a crash left half-prepared, or whose entry or database is gone. */
async function removeLeftoverReadySets(run: ReconcileRun): Promise<void> {
  for (const id of await run.deps.readyPool.removeLeftoverSets()) await run.repaired(`ready pool set ${id}`, 'removed half-prepared set');
}

/** App objects without a registry row: a complete app is adopted, roles without a database are dropped. */
async function adoptUnregisteredApps(run: ReconcileRun): Promise<void> {
  const { store, server, log } = run.deps;
  const registered = new Set(await registeredAppNames(store.pool));
  for (const appName of await appNamesWithObjects(server.pool)) {
    if (registered.has(appName)) continue;
    await run.locked(appName, async ({ store: storeClient, server: client }) => {
      if (await findApp(storeClient, appName)) return;
      const app = appIdentifiers(appName);
      const objects = await appObjects(client, app);
      if (objects.loginRole && objects.accessRole && objects.database) {
        await adoptApp(storeClient, appName);
        await run.repaired(appName, 'adopted unregistered app');
      } else if (objects.loginRole && objects.database) {
        await addAccessRole(client, app);
        await adoptApp(storeClient, appName);
        await run.repaired(appName, 'adopted unregistered app made before access roles, and gave it one');
      } else if (!objects.database) {
        await dropAppRoles(client, server, app);
        await run.repaired(appName, 'removed roles left without a database');
      } else {
        log.warn({ app: appName, objects }, 'database app_<name> exists without its roles; not ours to drop, left for the operator');
      }
    });
  }
}

/**
 * Ready apps whose login role or database does not carry their settings (their overrides, else today's defaults):
 * the defaults changed (a restart with other APP_… settings), the app set one of its role's settings itself, or a
 * change was cut short. Applied again, under the app's lock.
 */
async function applyAppSettingsAgain(run: ReconcileRun): Promise<void> {
  const { store, server, config } = run.deps;
  for (const appName of await appsWithSettingsAdrift(store.pool, server.pool, config)) {
    await run.locked(appName, async (session) => {
      if ((await findApp(session.store, appName))?.state !== 'ready') return;
      const adrift = await bringSettingsInForce(session, config, appIdentifiers(appName));
      if (adrift.length > 0) await run.repaired(appName, `applied its settings again (${adrift.join(', ')})`);
    });
  }
}

/**
 * Extra credentials a crash left (src/domain/operations/credentials.ts): those of an app that is not registered are
 * removed; of a ready app, one that is not live (cut while being made, whose client got no answer, or while being
 * removed) is removed, and a live one left refusing logins (a rotation cut short) may log in again, with the password
 * it has. Runs after the adoption of unregistered apps, so that an adopted app keeps its credentials.
 */
async function repairCredentials(run: ReconcileRun): Promise<void> {
  const { store, server, log } = run.deps;
  const ready = new Set((await appsInState(store.pool, ['ready'])).map((row) => row.app_name));
  const byApp = new Map<string, Array<{ live: boolean; loginAllowed: boolean; access: string | undefined }>>();
  for (const credential of await allCredentialRoles(server.pool)) byApp.set(credential.appName, [...(byApp.get(credential.appName) ?? []), credential]);
  for (const [appName, credentials] of byApp) {
    if (ready.has(appName) && credentials.every((c) => c.live && c.loginAllowed && c.access !== undefined)) continue;
    await run.locked(appName, async ({ store: storeClient, server: client }) => {
      const app = appIdentifiers(appName);
      const found = await findApp(storeClient, appName);
      const now = await credentialRoles(client, app);
      if (!found) {
        await removeCredentialRoles(server, client, app, now);
        await run.repaired(appName, `removed credentials of an app that is not registered: ${now.map((c) => c.credential).join(', ')}`);
        return;
      }
      if (found.state !== 'ready') return; // being made or deleted: finishHalfDoneApps's (it removes them with the app)
      const notLive = now.filter((c) => !c.live);
      if (notLive.length > 0) {
        await removeCredentialRoles(server, client, app, notLive);
        await run.repaired(appName, `removed credentials half-made or half-removed: ${notLive.map((c) => c.credential).join(', ')}`);
      }
      for (const credential of now.filter((c) => c.live && !c.loginAllowed)) {
        await enableLogin(client, credential.role);
        await run.repaired(appName, `allowed login again after an interrupted rotation of credential ${credential.credential}`);
      }
      for (const credential of now.filter((c) => c.live && c.access === undefined)) {
        log.error({ app: appName, credential: credential.credential }, 'a credential role is a member of neither the app\'s login role nor its access role; left for the operator');
      }
    });
  }
}

/**
 * Companion databases a crash left: one whose app is not registered (or is gone) is removed; one whose app's login
 * was never admitted (a crash while it was made or removed: nobody could log in to it, so it holds nothing
 * anyone wrote) is removed, rather than completed, so that a retried POST makes it anew and a half-done DELETE
 * ends as asked; an access role left without its database is dropped; a complete one left refusing connections (a
 * crash while a branch copied it) takes them again. Runs after adoptUnregisteredApps, which may register an app first.
 */
async function repairCompanions(run: ReconcileRun): Promise<void> {
  const { server, crashPoint } = run.deps;
  const byApp = new Map<string, CompanionState[]>();
  for (const state of await companionStates(server.pool)) byApp.set(state.appName, [...(byApp.get(state.appName) ?? []), state]);
  for (const [appName, seen] of byApp) {
    if (seen.every((state) => state.databaseExists && state.accessRoleExists && state.admitted && state.allowsConnections)) continue;
    await run.locked(appName, async ({ store: storeClient, server: client }) => {
      const registered = await findApp(storeClient, appName);
      if (registered && registered.state !== 'ready') return; // being made or removed: finishHalfDoneApps's
      const app = appIdentifiers(appName);
      for (const state of await companionStates(client, appName)) {
        const companion = companionIdentifiers(appName, state.name);
        if (!registered || (state.databaseExists && !state.admitted)) {
          await removeCompanionObjects(server, crashPoint, client, app, companion);
          await run.repaired(appName, `removed ${registered ? 'half-made or half-removed' : 'unregistered app\'s'} companion database ${companion.database}`);
        } else if (!state.databaseExists) {
          await dropRoleEverywhere(client, server, companion.accessRole);
          await run.repaired(appName, `dropped access role ${companion.accessRole} left without its database`);
        } else if (!state.allowsConnections) {
          await allowConnections(client, companion.database);
          await run.repaired(appName, `allowed connections again to companion database ${companion.database}`);
        }
      }
    });
  }
}

/** The repairs, in the order they run. */
const REPAIRS = [
  finishHalfDoneApps,
  removeLeftoverAgents,
  dropRestoreLeftovers,
  reopenReadyApps,
  removeLeftoverReadySets,
  adoptUnregisteredApps,
  applyAppSettingsAgain,
  repairCredentials,
  repairCompanions,
];

export class Reconciler {
  private readonly deps: ReconcilerDeps;

  constructor(deps: ReconcilerDeps) {
    this.deps = deps;
  }

  /** One run of every repair. */
  async run(): Promise<ReconcileReport> {
    await Promise.all([this.deps.store.ensureSchema(), this.deps.server.ensureSetUp()]);
    const run = new ReconcileRun(this.deps);
    for (const repair of REPAIRS) await repair(run);
    return run.report;
  }
}
