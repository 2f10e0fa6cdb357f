// Owns an app's life: provision, rotate, back up, restore, delete, and the reconciler that repairs whatever a
// crash left half-done. Each operation holds the app's advisory lock, so operations on one app run one at a
// time. Every multi-step operation records its intent in the registry first, so a crash between any two
// statements leaves something reconcile() finishes or removes. Crash points (CRASH_AT) let the tests prove it.
import type { FastifyBaseLogger } from 'fastify';
import type pg from 'pg';
import { setTimeout as sleep } from 'node:timers/promises';
import { appIdentifiers, collidingAppNames, type AppIdentifiers } from '../shared/app-names.js';
import type { BackupFile, Backups } from './backup-files.js';
import type { Config } from '../shared/config.js';
import {
  addAccessRole,
  agentRoles,
  allowConnections,
  appNamesWithObjects,
  appObjects,
  authenticationTimeoutMs,
  createAppRoles,
  createDatabase,
  disableLogin,
  dropAppRoles,
  dropDatabase,
  DUPLICATE_DATABASE_STATE,
  DUPLICATE_ROLE_STATES,
  enableLogin,
  endSessionsOfRole,
  existingAppLogins,
  handDatabaseToApp,
  loginRoleState,
  passwordIs,
  putBackLoginRoleState,
  sessionCount,
  setPassword,
  swapInDatabase,
  WORK_DATABASE_PREFIXES,
  workDatabases,
  type AppRoleLimits,
} from '../db/postgres-server/app-objects.js';
import { appLock, sqlState, type Database } from '../db/superuser-connections.js';
import {
  adoptApp,
  appendAudit,
  appsInState,
  findApp,
  appDatabaseSizes,
  readyAppSummaries,
  registerApp,
  registeredAppNames,
  registeredIncarnations,
  setAppState,
  unregisterApp,
  type AppSummary,
} from '../db/system-store/registry.js';
import { CredentialStock, type AppCredential } from './credential-stock.js';
import { agentName, appOfAgent, removeAgent, withAgent } from '../db/postgres-server/agent-roles.js';
import {
  AppExistsError,
  AppNameConflictError,
  AppNotDeletedError,
  AppNotFoundError,
  BackupNotFoundError,
  BackupOfLiveAppError,
  DatabaseUnavailableError,
} from '../shared/errors.js';
import { ReadyPool } from './ready-pool.js';
import { Slots } from './slots.js';

/** Past the server's authentication_timeout, for a login the timeout ended to be gone. */
const LOGIN_SETTLE_MS = 250;

/** Who asked: written to the audit log with every operation. */
export interface RequestContext {
  requestId?: string;
  client?: string;
}

/** Told of every operation's end, for metrics: name, outcome, seconds. */
export type OperationObserver = (operation: string, outcome: string, seconds: number) => void;

export interface Credentials {
  app: AppIdentifiers;
  password: string;
}

export interface ReconcileReport {
  repaired: Array<{ app: string; action: string }>;
  skippedBusy: number;
  /** Repairs that failed this time (logged); the next run tries them again. */
  failed: number;
}

/** An audit outcome for an error: its code when it is one of ours, else "failed". */
function outcomeOf(err: unknown): string {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && /^[A-Z_]+$/.test(code) ? code.toLowerCase() : 'failed';
}

export class AppLifecycle {
  private readonly db: Database;
  private readonly backups: Backups;
  private readonly config: Config;
  private readonly log: FastifyBaseLogger;
  private readonly observe: OperationObserver;
  private readonly limits: AppRoleLimits;
  private readonly credentials = new CredentialStock(16);
  /** Backups and restores at once, each on a connection of its own (BACKUP_MAX_CONCURRENT); no waiting for a slot. */
  private readonly backupSlots: Slots;
  /** Rotations at once, each on a connection of its own while it waits out pending logins (ROTATION_MAX_CONCURRENT). */
  private readonly rotationSlots: Slots;
  private sizes = new Map<string, number>();
  readonly readyPool: ReadyPool;

  constructor(db: Database, backups: Backups, config: Config, log: FastifyBaseLogger, observe: OperationObserver = () => {}) {
    this.db = db;
    this.backups = backups;
    this.config = config;
    this.log = log;
    this.observe = observe;
    this.limits = {
      connectionLimit: config.APP_CONNECTION_LIMIT,
      tempFileLimit: config.APP_TEMP_FILE_LIMIT,
      statementTimeout: config.APP_STATEMENT_TIMEOUT,
      idleInTransactionTimeout: config.APP_IDLE_IN_TRANSACTION_TIMEOUT,
    };
    this.readyPool = new ReadyPool(db, config, log, this.limits, (point) => this.crashPoint(point));
    this.backupSlots = new Slots(config.BACKUP_MAX_CONCURRENT, 'backups and restores');
    this.rotationSlots = new Slots(config.ROTATION_MAX_CONCURRENT, 'rotations');
  }

  /** Starts the background work: the credential stock and the ready pool's refilling. */
  start(): void {
    void this.credentials.refill();
    this.readyPool.start();
  }

  async stop(): Promise<void> {
    await this.readyPool.stop();
  }

  /** Tests only: dies here, at once and without cleaning up, when CRASH_AT names this point. */
  private async crashPoint(point: string): Promise<void> {
    if (this.config.CRASH_AT !== point) return;
    this.log.fatal({ point }, 'CRASH_AT: killing the process here');
    process.kill(process.pid, 'SIGKILL');
    await new Promise(() => {}); // never resumes
  }

  /** Runs an operation, then records it in the audit log and tells the observer, whatever its outcome. */
  private async audited<T>(action: string, appName: string | undefined, context: RequestContext, work: () => Promise<T>, detail?: (result: T) => Record<string, unknown>): Promise<T> {
    const started = process.hrtime.bigint();
    let outcome = 'ok';
    let extra: Record<string, unknown> | undefined;
    try {
      const result = await work();
      extra = detail?.(result);
      return result;
    } catch (err) {
      outcome = outcomeOf(err);
      throw err;
    } finally {
      this.observe(action, outcome, Number(process.hrtime.bigint() - started) / 1e9);
      const written = appendAudit(this.db.pool, { action, appName, outcome, ...context, detail: extra }).catch((err) =>
        this.log.warn({ err, action, app: appName }, 'could not write the audit log'),
      );
      // A success is answered once its audit entry is written; a failure (Postgres may be away) is answered at
      // once, its entry written when it can be.
      if (outcome === 'ok') await written;
    }
  }

  /** The app's names and incarnation, if it is registered and ready; AppNotFoundError otherwise. */
  private async readyApp(client: pg.ClientBase, appName: string): Promise<AppIdentifiers & { incarnation: string }> {
    const registered = await findApp(client, appName);
    if (!registered || registered.state !== 'ready') throw new AppNotFoundError(appName);
    return { ...appIdentifiers(appName), incarnation: registered.incarnation };
  }

  /** Runs `work` under the app's lock on a connection of its own, in one of the backup slots (503 when all are taken). */
  private withBackupSlot<T>(appName: string, work: (client: pg.ClientBase) => Promise<T>): Promise<T> {
    return this.backupSlots.run(() => this.db.withAppLock(appName, work, { ownConnection: true }), 0);
  }

  /** Dumps the app as its dump agent (src/agents.ts): with the app's rights, never the superuser's. */
  private dumpApp(client: pg.ClientBase, app: AppIdentifiers, incarnation: string): Promise<BackupFile> {
    return withAgent(this.db, client, app, 'dump', this.config.BACKUP_TIMEOUT_MS, this.log, (agent) => this.backups.dump(app, incarnation, agent));
  }

  // --- provision -------------------------------------------------------------------------------------------

  /**
   * Creates the app. From the ready pool when it has a set: one transaction renames a prepared set to the
   * app's names and registers the app. Otherwise on demand: registry row (state creating, committed first),
   * roles, database, hand-over, then state ready; a failure undoes the steps done, and a crash leaves the
   * registry row, from which reconcile() removes the rest.
   */
  async provision(appName: string, context: RequestContext): Promise<Credentials> {
    await this.db.ready();
    return this.audited('provision', appName, context, async () => {
      const app = appIdentifiers(appName);
      const handed = this.readyPool.enabled ? await this.handOverReadySet(app) : undefined;
      if (handed) {
        await this.crashPoint('provision:after-handover');
        return { app, password: handed.password };
      }
      const { password, verifier } = await this.credentials.take();
      return this.provisionOnDemand(app, password, verifier);
    });
  }

  private async handOverReadySet(app: AppIdentifiers): Promise<AppCredential | undefined> {
    return this.db.withClient(async (client) => {
      try {
        return await this.readyPool.handOver(client, app);
      } catch (err) {
        const state = sqlState(err) ?? '';
        if (state === '23505' || state === DUPLICATE_DATABASE_STATE) throw new AppExistsError(app.appName);
        if (DUPLICATE_ROLE_STATES.has(state)) throw await this.nameTakenError(client, app);
        throw err;
      }
    });
  }

  private async provisionOnDemand(app: AppIdentifiers, password: string, verifier: string): Promise<Credentials> {
    const appName = app.appName;
    return this.db.withAppLock(appName, async (client) => {
      if (!(await registerApp(client, appName))) throw new AppExistsError(appName);
      await this.crashPoint('provision:after-register');
      const progress = { rolesCreated: false, databaseCreated: false };
      try {
        try {
          await createAppRoles(client, app, verifier, this.limits);
        } catch (err) {
          if (DUPLICATE_ROLE_STATES.has(sqlState(err) ?? '')) throw await this.nameTakenError(client, app);
          throw err;
        }
        progress.rolesCreated = true;
        await this.crashPoint('provision:after-create-roles');
        try {
          await createDatabase(client, app.database);
        } catch (err) {
          // A database of that name that is not registered: not ours, never dropped (the reconciler reports it).
          if (sqlState(err) === DUPLICATE_DATABASE_STATE) throw new AppExistsError(appName);
          throw err;
        }
        progress.databaseCreated = true;
        await this.crashPoint('provision:after-create-database');
        await handDatabaseToApp(client, this.db, app.database, app);
        await this.crashPoint('provision:after-hand-over');
        await setAppState(client, appName, 'ready');
        return { app, password };
      } catch (err) {
        // After a SQL error the connection is sound and the steps done are known: undo them now. After a lost
        // connection or a timeout, a statement may still complete in Postgres: leave the registry row
        // (creating) to the reconciler, which removes whatever exists once this session is gone.
        if (sqlState(err) || (err as { statusCode?: number }).statusCode === 409) await this.undoProvision(client, app, progress);
        throw err;
      }
    });
  }

  /** Removes what a failed provision made, on the locked connection; if that fails, reconcile() will. */
  private async undoProvision(client: pg.ClientBase, app: AppIdentifiers, progress: { rolesCreated: boolean; databaseCreated: boolean }): Promise<void> {
    try {
      if (progress.databaseCreated) await dropDatabase(client, app.database);
      if (progress.rolesCreated) await dropAppRoles(client, this.db, app);
      await unregisterApp(client, app.appName);
      if (progress.rolesCreated) this.log.warn({ app: app.appName }, 'provisioning failed; the steps already done were undone');
    } catch (err) {
      this.log.error({ err, app: app.appName }, 'provisioning failed and could not be undone now; the reconciler will remove it');
    }
  }

  /** Why the app's role names are taken: a colliding app exists, or the roles are leftovers of this app. */
  private async nameTakenError(client: pg.ClientBase, app: AppIdentifiers): Promise<Error> {
    const siblings = collidingAppNames(app.appName).map(appIdentifiers);
    const existing = await existingAppLogins(client, siblings.map((s) => s.username));
    const sibling = siblings.find((s) => existing.includes(s.username));
    if (!sibling) return new AppExistsError(app.appName);
    const shared = sibling.username === app.accessRole ? app.accessRole : app.username;
    return new AppNameConflictError(app.appName, sibling.appName, shared);
  }

  // --- read ------------------------------------------------------------------------------------------------

  /** Sizes from the last background refresh (refreshSizes); apps made since are measured on the spot. */
  async list(): Promise<AppSummary[]> {
    await this.db.ready();
    const summaries = await readyAppSummaries(this.db.pool);
    const unknown = summaries.filter((s) => !this.sizes.has(s.app_name)).map((s) => s.app_name);
    if (unknown.length > 0) for (const [name, size] of await appDatabaseSizes(this.db.pool, unknown)) this.sizes.set(name, size);
    return summaries.map((s) => ({ ...s, size_bytes: this.sizes.get(s.app_name) ?? 0 }));
  }

  /** One app, its size measured now. */
  async get(appName: string): Promise<AppSummary> {
    await this.db.ready();
    const [summary] = await readyAppSummaries(this.db.pool, appName);
    if (!summary) throw new AppNotFoundError(appName);
    const size = (await appDatabaseSizes(this.db.pool, [appName])).get(appName) ?? 0;
    this.sizes.set(appName, size);
    return { ...summary, size_bytes: size };
  }

  /** Measures every app database's size again (run in the background with the reconciler). */
  async refreshSizes(): Promise<void> {
    this.sizes = await appDatabaseSizes(this.db.pool);
  }

  // --- rotate ----------------------------------------------------------------------------------------------

  /**
   * A new password, in an order that leaves the old one no way in (SECURITY.md, promise 9). Postgres reads a
   * role's password when a login's exchange begins and checks LOGIN when it ends, and a login may take up to the
   * server's authentication_timeout. So: the login role is refused first (NOLOGIN), its sessions are ended until
   * none is left (none can come back: no login completes while NOLOGIN), the new password is set while no session
   * exists that could change it again, authentication_timeout is waited out so that every login whose exchange
   * began before (with the old password, or one a session set) has ended, refused; then LOGIN. If the password
   * changed during the wait (only a session that slipped in could), the steps run again.
   */
  async rotate(appName: string, context: RequestContext): Promise<Credentials & { sessionsEnded: number }> {
    await this.db.ready();
    return this.audited(
      'rotate',
      appName,
      context,
      () =>
        this.rotationSlots.run(
          () =>
            this.db.withAppLock(
              appName,
              async (client) => {
                const app = await this.readyApp(client, appName);
                const { password, verifier } = await this.credentials.take();
                await disableLogin(client, app.username);
                await this.crashPoint('rotate:after-disable-login');
                const waitMs = (await authenticationTimeoutMs(client)) + LOGIN_SETTLE_MS;
                let sessionsEnded = 0;
                for (let attempt = 1; ; attempt++) {
                  sessionsEnded += await this.endAllSessions(client, app);
                  await setPassword(client, app, verifier);
                  await this.crashPoint('rotate:after-set-password');
                  await sleep(waitMs);
                  if (await passwordIs(client, app, verifier)) break;
                  if (attempt >= 3) throw new Error('the password kept changing during rotation'); // reconcile() lets the app log in again
                }
                await enableLogin(client, app);
                return { app, password, sessionsEnded };
              },
              { ownConnection: true },
            ),
          this.config.DATABASE_LOCK_TIMEOUT_MS,
        ),
      (result) => ({ sessions_ended: result.sessionsEnded }),
    );
  }

  /** Ends the app's sessions until none is left (ended sessions take a moment to go). Returns how many it ended. */
  private async endAllSessions(client: pg.ClientBase, app: AppIdentifiers): Promise<number> {
    let ended = 0;
    for (let round = 0; round < 100; round++) {
      if (round > 0 && (await sessionCount(client, app.username)) === 0) return ended;
      const now = await endSessionsOfRole(client, app);
      if (round === 0) ended = now;
      await sleep(50);
    }
    throw new DatabaseUnavailableError(); // sessions that ignore termination for 5 s: Postgres is not well
  }

  // --- backups ---------------------------------------------------------------------------------------------

  async backup(appName: string, context: RequestContext): Promise<BackupFile> {
    await this.db.ready();
    return this.audited(
      'backup',
      appName,
      context,
      () =>
        this.withBackupSlot(appName, async (client) => {
          const app = await this.readyApp(client, appName);
          return this.dumpApp(client, app, app.incarnation);
        }),
      (backup) => ({ file: backup.file }),
    );
  }

  /** The backups of this incarnation of the app: not those of an earlier app that had its name. */
  async listBackups(appName: string): Promise<BackupFile[]> {
    await this.db.ready();
    const registered = await findApp(this.db.pool, appName);
    if (!registered || registered.state !== 'ready') throw new AppNotFoundError(appName);
    return this.backups.listOf(appIdentifiers(appName), registered.incarnation);
  }

  /** Every backup in BACKUP_DIR, deleted apps' included, each saying whether its app (that incarnation) exists. */
  async listAllBackups(): Promise<Array<BackupFile & { app_exists: boolean }>> {
    await this.db.ready();
    const live = await registeredIncarnations(this.db.pool);
    return (await this.backups.list()).map((backup) => ({ ...backup, app_exists: backup.incarnation !== null && live.get(backup.app_name) === backup.incarnation }));
  }

  /**
   * Restores a backup into a new database beside the app's, then swaps the two in one transaction: the app
   * sees either its old data or the restored data, never a mix, even across a crash. The backup must be of this
   * incarnation of the app, unless `fromDeletedApp` says the operator means to restore a deleted app's backup
   * (of this name or another) into this one; a live app's backup never goes into another app.
   */
  async restore(appName: string, file: string, options: { fromDeletedApp: boolean }, context: RequestContext): Promise<void> {
    await this.db.ready();
    const source: Record<string, unknown> = { file };
    await this.audited(
      'restore',
      appName,
      context,
      () =>
        this.withBackupSlot(appName, async (client) => {
          const app = await this.readyApp(client, appName);
          const backup = await this.backups.find(appName, file);
          const ours = backup.app_name === appName && backup.incarnation === app.incarnation;
          if (!ours) {
            if (!options.fromDeletedApp) throw new BackupNotFoundError(appName, file);
            const owner = await findApp(client, backup.app_name);
            if (owner && owner.incarnation === backup.incarnation) throw new BackupOfLiveAppError(file, backup.app_name);
            Object.assign(source, { from_deleted_app: true, source_app: backup.app_name, source_incarnation: backup.incarnation });
          }
          // Named like the restore's agent, so that pg_hba.conf admits the agent there (src/agents.ts).
          const restoring = agentName('restore', app);
          const retired = WORK_DATABASE_PREFIXES.retired + appName;
          await dropDatabase(client, restoring);
          await createDatabase(client, restoring);
          await this.crashPoint('restore:after-create-copy');
          try {
            await handDatabaseToApp(client, this.db, restoring, app);
            const roleBefore = await loginRoleState(client, app);
            try {
              await withAgent(this.db, client, app, 'restore', this.config.BACKUP_TIMEOUT_MS, this.log, async (agent) => {
                await this.crashPoint('restore:after-create-agent');
                await this.backups.restore(backup.path, file, restoring, app, agent);
              });
            } finally {
              const putBack = roleBefore ? await putBackLoginRoleState(client, app, roleBefore, this.limits) : [];
              if (putBack.length > 0) {
                source.login_role_put_back = putBack;
                this.log.warn({ app: appName, put_back: putBack }, "the restored dump changed the app's login role; put back as it was");
              }
            }
            await this.crashPoint('restore:after-restore');
            await this.swapWithRetries(client, app, restoring, retired);
            await this.crashPoint('restore:after-swap');
          } catch (err) {
            await dropDatabase(client, restoring).catch(() => {});
            await allowConnections(client, app.database).catch(() => {});
            throw err;
          }
          await dropDatabase(client, retired);
        }),
      () => source,
    );
  }

  /** Renaming needs a database nobody is in; ended sessions take a moment to go. */
  private async swapWithRetries(client: pg.ClientBase, app: AppIdentifiers, replacement: string, retired: string): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await swapInDatabase(client, app, replacement, retired);
        return;
      } catch (err) {
        if (sqlState(err) !== '55006' || attempt >= 50) throw err;
        await sleep(100);
      }
    }
  }

  // --- delete ----------------------------------------------------------------------------------------------

  /**
   * Backs the app up (unless told not to), marks it deleting (committed), ends its sessions and removes its
   * database and roles, whatever the app made inside; then the name is free again.
   */
  async delete(appName: string, options: { backup: boolean }, context: RequestContext): Promise<{ backup: string | null }> {
    await this.db.ready();
    const remove = async (client: pg.ClientBase) => {
      const registered = await findApp(client, appName);
      if (!registered) throw new AppNotFoundError(appName);
      const app = appIdentifiers(appName);
      let backup: string | null = null;
      if (options.backup && registered.state === 'ready') backup = (await this.backupBeforeDelete(client, app, registered.incarnation)).file;
      await this.crashPoint('delete:after-backup');
      await setAppState(client, appName, 'deleting');
      await this.crashPoint('delete:after-mark-deleting');
      await this.removeAppObjects(client, app);
      await unregisterApp(client, appName);
      this.sizes.delete(appName);
      return { backup };
    };
    return this.audited(
      'delete',
      appName,
      context,
      // With a backup first, the delete holds the app's lock for as long as pg_dump runs: a backup slot's own connection.
      () => (options.backup ? this.withBackupSlot(appName, remove) : this.db.withAppLock(appName, remove)),
      (result) => ({ backup: result.backup }),
    );
  }

  /** The backup DELETE takes first; if it fails, nothing is removed and the answer says why (409). */
  private async backupBeforeDelete(client: pg.ClientBase, app: AppIdentifiers, incarnation: string): Promise<BackupFile> {
    try {
      return await this.dumpApp(client, app, incarnation);
    } catch (err) {
      const status = (err as { statusCode?: number }).statusCode;
      if (status === 409) throw new AppNotDeletedError(app.appName, (err as Error).message);
      if (status === 500) throw Object.assign(new AppNotDeletedError(app.appName, 'pg_dump failed; the service log has its exit code'), { cause: err });
      throw err; // 503: Postgres away, or every backup slot taken: retry
    }
  }

  /** Removes whatever exists of the app's objects: login first refused, sessions ended, database, roles. */
  private async removeAppObjects(client: pg.ClientBase, app: AppIdentifiers): Promise<void> {
    const objects = await appObjects(client, app);
    if (objects.loginRole) {
      await disableLogin(client, app.username);
      await endSessionsOfRole(client, app);
    }
    await this.crashPoint('delete:after-end-sessions');
    await dropDatabase(client, app.database);
    await this.crashPoint('delete:after-drop-database');
    await dropAppRoles(client, this.db, app);
  }

  // --- reconcile -------------------------------------------------------------------------------------------

  /**
   * Finds and repairs what crashes left: apps half-made (creating) are removed, apps half-removed (deleting)
   * are finished, restore leftovers are dropped, a database left refusing connections is opened again, and
   * complete apps missing from the registry (made before it existed) are adopted. Apps whose lock is held are
   * being worked on right now and are skipped until the next run.
   */
  async reconcile(): Promise<ReconcileReport> {
    await this.db.ready();
    const report: ReconcileReport = { repaired: [], skippedBusy: 0, failed: 0 };
    const repaired = async (app: string, action: string) => {
      report.repaired.push({ app, action });
      this.log.warn({ app, action }, 'reconciler repaired an app');
      await appendAudit(this.db.pool, { action: 'reconcile', appName: app, outcome: action }).catch(() => {});
    };
    // Each repair on its own: one that fails (Postgres away, a tenant's lock) is tried again at the next run
    // and never keeps the others from running.
    const locked = async (appName: string, work: (client: pg.PoolClient) => Promise<void>) => {
      try {
        const done = await this.db.tryWithLock(appLock(appName), async (client) => {
          await work(client);
          return true;
        });
        if (!done) report.skippedBusy++;
      } catch (err) {
        report.failed++;
        this.log.warn({ err, app: appName }, 'reconciler could not repair an app now; it will try again');
      }
    };

    for (const { app_name: appName } of await appsInState(this.db.pool, ['creating', 'deleting'])) {
      await locked(appName, async (client) => {
        const current = await findApp(client, appName);
        if (!current || current.state === 'ready') return;
        await this.removeAppObjects(client, appIdentifiers(appName));
        await unregisterApp(client, appName);
        await repaired(appName, current.state === 'creating' ? 'removed half-made app' : 'finished deleting app');
      });
    }

    for (const agent of await agentRoles(this.db.pool)) {
      const appName = appOfAgent(agent);
      if (!appName) continue; // a member of pgprov_agents the operator made: not ours
      await locked(appName, async (client) => {
        await removeAgent(this.db, client, agent, appIdentifiers(appName).username);
        await repaired(appName, `removed agent role ${agent}`);
      });
    }

    for (const database of await workDatabases(this.db.pool)) {
      const appName = database.replace(WORK_DATABASE_PREFIXES.restoring, '').replace(WORK_DATABASE_PREFIXES.retired, '');
      await locked(appName, async (client) => {
        const app = appIdentifiers(appName);
        await dropDatabase(client, database);
        const objects = await appObjects(client, app);
        if (objects.database && !objects.databaseAllowsConnections) await allowConnections(client, app.database);
        await repaired(appName, `dropped restore leftover ${database}`);
      });
    }

    for (const { app_name: appName } of await appsInState(this.db.pool, ['ready'])) {
      const app = appIdentifiers(appName);
      const objects = await appObjects(this.db.pool, app);
      if (objects.database && objects.databaseAllowsConnections && objects.loginRole && objects.loginAllowed && objects.accessRole) continue;
      // Something looks wrong: look again under the app's lock (a delete may have been under way).
      await locked(appName, async (client) => {
        if ((await findApp(client, appName))?.state !== 'ready') return;
        const now = await appObjects(client, app);
        if (now.database && !now.databaseAllowsConnections) {
          await allowConnections(client, app.database);
          await repaired(appName, 'allowed connections again');
        } else if (now.loginRole && !now.loginAllowed) {
          // A rotation stopped before its end: it was never answered, so the app keeps the password it has.
          await enableLogin(client, app);
          await repaired(appName, 'allowed login again after an interrupted rotation');
        } else if (!now.database || !now.loginRole || !now.accessRole) {
          this.log.error({ app: appName, objects: now }, 'app is registered as ready but some of its objects are missing; left for the operator');
        }
      });
    }

    for (const id of await this.readyPool.reconcile()) await repaired(`ready pool set ${id}`, 'removed half-prepared set');

    const registered = new Set(await registeredAppNames(this.db.pool));
    for (const appName of await appNamesWithObjects(this.db.pool)) {
      if (registered.has(appName)) continue;
      await locked(appName, async (client) => {
        if (await findApp(client, appName)) return;
        const app = appIdentifiers(appName);
        const objects = await appObjects(client, app);
        if (objects.loginRole && objects.accessRole && objects.database) {
          await adoptApp(client, appName);
          await repaired(appName, 'adopted unregistered app');
        } else if (objects.loginRole && objects.database) {
          await addAccessRole(client, app);
          await adoptApp(client, appName);
          await repaired(appName, 'adopted unregistered app made before access roles, and gave it one');
        } else if (!objects.database) {
          await dropAppRoles(client, this.db, app);
          await repaired(appName, 'removed roles left without a database');
        } else {
          this.log.warn({ app: appName, objects }, 'database app_<name> exists without its roles; not ours to drop, left for the operator');
        }
      });
    }
    return report;
  }
}
