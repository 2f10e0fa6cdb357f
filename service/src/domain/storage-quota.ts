// Owns the storage quota per app: Postgres 15 cannot limit a database's size, so the service measures each app
// (its database and its companion databases) every STORAGE_CHECK_INTERVAL_MS, warns (GET /apps/:name, /metrics),
// and enforces, never deleting anything:
// - over its limit (APP_STORAGE_LIMIT, or the app's own app_settings.storage_limit_bytes), the app is made
//   read-only: default_transaction_read_only on each of its login roles, and its sessions ended so that they come
//   back read-only. That stops a careless app, not a hostile one: any session may SET it off or BEGIN READ WRITE
//   (and that is how a well-behaved app frees space; README "Storage quota");
// - over APP_STORAGE_HARD_LIMIT_PERCENT of its limit, its logins are suspended too: CONNECTION LIMIT 0 on each
//   login role, which no app can lift, the apps' door refusing them, and its sessions ended;
// - under its limit again, or its limit raised, both are lifted.
// Every round decides from the measurement and from what Postgres's catalog says is enforced (the settings of
// src/db/postgres-server/app-storage.ts), never from memory, so each step is idempotent and a crash is finished by
// the next round: the audit entry is each enforcement's last step, and an enforcement found in the catalog without
// its audit entry is carried out again (sessions ended, door told) and audited. Each app's enforcement runs under
// its lock, taken only if it is free: an app being worked on is skipped until the next round.
import type { Logger } from 'pino';
import {
  appDatabaseActivity,
  appDatabaseNames,
  databaseSizes,
  endSessionsOfRoles,
  enforceOnLoginRole,
  enforcedLoginRoles,
  loginRoleStorage,
  roleIsAt,
  type AppDatabaseActivity,
  type LoginRoleStorage,
  type StorageEnforcement,
} from '../db/postgres-server/app-storage.js';
import { appDatabaseSizes } from '../db/postgres-server/app-objects.js';
import type { PostgresServer } from '../db/postgres-server/postgres-server.js';
import type { Queryable } from '../db/queryable.js';
import { allAppSettings, findAppSettings } from '../db/system-store/app-settings.js';
import { findApp, readyApps, type RegisteredApp } from '../db/system-store/registry.js';
import { lastStorageActions, type StorageAuditAction } from '../db/system-store/storage-audit.js';
import type { SystemStore } from '../db/system-store/system-store.js';
import { storageLimitBytes, type Config } from '../shared/config.js';
import { appIdentifiers } from '../shared/object-names.js';
import { doorEndsConnections, doorReconnects, doorTakesLogins } from './apps-door.js';
import type { AuditTrail } from './audit-trail.js';
import type { CrashPoint } from './crash-points.js';

/** What GET /apps/:name and /metrics say of an app's storage. */

/** One app's storage now: its database and its companions, measured as every size is (appDatabaseSizes). */
async function usedBy(db: Queryable, appName: string): Promise<number> {
  return (await appDatabaseSizes(db, [appName])).get(appName) ?? 0;
}

export type StorageState = 'ok' | 'warning' | 'read_only' | 'suspended';

export interface AppStorage {
  used_bytes: number;
  /** null: no limit (APP_STORAGE_LIMIT=off and none of its own). */
  limit_bytes: number | null;
  /** Over this, its logins are suspended. */
  hard_limit_bytes: number | null;
  /** read_only and suspended: in force now; warning: at APP_STORAGE_WARN_PERCENT of its limit or over, not yet enforced. */
  state: StorageState;
}

/** What each enforcement brings an app to, as /metrics counts it (pgprov_storage_enforcements_total{action}). */
export type StorageAction = 'read_only' | 'suspended' | 'writable';

/** The last round's findings, for /metrics (read without asking Postgres anything). */
export interface StorageQuotaStatus {
  /** When the last round finished; undefined before the first. */
  lastCheckAt?: Date;
  /** Apps at their warning threshold or over, or enforced: the only ones /metrics names (2,000 apps, few series). */
  watched: Array<{ app: string; used: number; limit: number; state: StorageState }>;
  /** Apps using more than their limit. */
  overLimit: number;
  /** All ready apps' storage together. */
  totalUsed: number;
  /** Enforcements carried out since the service started, by what they brought an app to. */
  enforcements: Record<StorageAction, number>;
}

export interface StorageQuotaDeps {
  store: SystemStore;
  server: PostgresServer;
  audit: AuditTrail;
  config: Config;
  log: Logger;
  crashPoint: CrashPoint;
  /** Told every app's size (its database and companions) after each round: GET /apps lists them. */
  onAppSizes?: (sizes: Map<string, number>) => void;
}

const ACTION_OF: Record<StorageEnforcement, StorageAction> = { none: 'writable', read_only: 'read_only', suspended: 'suspended' };
const AUDIT_ACTION_OF: Record<StorageEnforcement, StorageAuditAction> = { none: 'storage_writable', read_only: 'storage_read_only', suspended: 'storage_suspended' };
const SEVERITY: Record<StorageEnforcement, number> = { none: 0, read_only: 1, suspended: 2 };

/** The strongest enforcement among an app's login roles: what the app meets. */
function enforcementOf(roles: LoginRoleStorage[]): StorageEnforcement {
  return roles.reduce<StorageEnforcement>((worst, role) => (SEVERITY[role.enforcement] > SEVERITY[worst] ? role.enforcement : worst), 'none');
}

/** One database as last measured. */
interface Measured {
  datname: string;
  app: string;
  size: number;
  transactions: number;
  at: number;
}

/** An app's limit and its hard limit, in bytes; null for no limit. */
interface Limits {
  limit: number;
  hard: number;
}

export class StorageQuota {
  readonly status: StorageQuotaStatus = { watched: [], overLimit: 0, totalUsed: 0, enforcements: { read_only: 0, suspended: 0, writable: 0 } };
  private readonly deps: StorageQuotaDeps;
  /** Each app database by oid (a restored database is a new one), as last measured. */
  private readonly measured = new Map<number, Measured>();
  /** The last storage action audited for each app's present incarnation; read from the audit log at the first round. */
  private audited?: Map<string, { incarnation: string; action: StorageAuditAction }>;
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  private stopped = false;
  private failuresInARow = 0;

  constructor(deps: StorageQuotaDeps) {
    this.deps = deps;
  }

  /** Checks now, then every STORAGE_CHECK_INTERVAL_MS after the end of the previous check. */
  start(): void {
    const next = () => {
      if (this.stopped) return;
      this.running = this.checkOnce().finally(() => {
        this.running = undefined;
        if (this.stopped) return;
        this.timer = setTimeout(next, this.deps.config.STORAGE_CHECK_INTERVAL_MS);
        this.timer.unref();
      });
    };
    next();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  /** The app's limits: its own (app_settings), else APP_STORAGE_LIMIT; undefined when it has none. */
  limitsOf(ownLimit: number | null | undefined): Limits | undefined {
    const limit = ownLimit ?? storageLimitBytes(this.deps.config);
    if (limit === undefined) return undefined;
    return { limit, hard: Math.floor((limit * this.deps.config.APP_STORAGE_HARD_LIMIT_PERCENT) / 100) };
  }

  /** What the measurement asks for: read-only over the limit, suspended over the hard limit, else nothing. */
  private static decide(used: number, limits: Limits | undefined): StorageEnforcement {
    if (!limits || used <= limits.limit) return 'none';
    return used > limits.hard ? 'suspended' : 'read_only';
  }

  /** What an app that is not enforced is shown as: warning at APP_STORAGE_WARN_PERCENT of its limit or over. */
  private stateOf(inForce: StorageEnforcement, used: number, limits: Limits | undefined): StorageState {
    if (inForce !== 'none') return inForce;
    return limits && used * 100 >= limits.limit * this.deps.config.APP_STORAGE_WARN_PERCENT ? 'warning' : 'ok';
  }

  /** One app's storage now (GET /apps/:name): measured on the spot, with what is in force on its roles. */
  async appStorage(appName: string): Promise<AppStorage> {
    const { store, server } = this.deps;
    const [used, settings, roles] = await Promise.all([usedBy(server.pool, appName), findAppSettings(store.pool, appName), loginRoleStorage(server.pool, [appName])]);
    const limits = this.limitsOf(settings.storage_limit_bytes);
    return { used_bytes: used, limit_bytes: limits?.limit ?? null, hard_limit_bytes: limits?.hard ?? null, state: this.stateOf(enforcementOf(roles), used, limits) };
  }

  /** One round: measure what may have grown, then bring each app to what its size and limit ask for. */
  async checkOnce(): Promise<void> {
    try {
      await this.round();
      if (this.failuresInARow > 0) this.deps.log.info({ failures: this.failuresInARow }, 'storage check works again');
      this.failuresInARow = 0;
    } catch (err) {
      // Postgres away: said once (and every minute or so while it lasts), not at every round.
      if (this.failuresInARow++ % 12 === 0) this.deps.log.warn({ err, failures: this.failuresInARow }, 'storage check failed; it runs again');
    }
  }

  private async round(): Promise<void> {
    const { store, server } = this.deps;
    const started = Date.now();
    await Promise.all([store.ensureSchema(), server.ensureSetUp()]);
    const [apps, settings, activity, enforced] = await Promise.all([readyApps(store.pool), allAppSettings(store.pool), appDatabaseActivity(server.pool), enforcedLoginRoles(server.pool)]);
    if (!this.audited) {
      const last = await lastStorageActions(store.pool);
      this.audited = new Map(apps.filter((app) => last.has(app.app_name)).map((app) => [app.app_name, { incarnation: app.incarnation, action: last.get(app.app_name)! }]));
    }
    const measured = await this.measure(activity);
    const used = new Map<string, number>();
    for (const { app, size } of this.measured.values()) used.set(app, (used.get(app) ?? 0) + size);
    this.deps.onAppSizes?.(used);

    // Every role of the apps that are to be enforced (a credential made since must be too), and of the others
    // those enforced, which are to be lifted: every other role is as it should be.
    const targets = new Map(apps.map((app) => [app.app_name, StorageQuota.decide(used.get(app.app_name) ?? 0, this.limitsOf(settings.get(app.app_name)?.storage_limit_bytes))]));
    const toEnforce = apps.map((app) => app.app_name).filter((name) => targets.get(name) !== 'none');
    const roles = [...enforced.filter((role) => targets.get(role.app) === 'none'), ...(await loginRoleStorage(server.pool, toEnforce))];
    const rolesOf = new Map<string, LoginRoleStorage[]>();
    for (const role of roles) rolesOf.set(role.app, [...(rolesOf.get(role.app) ?? []), role]);
    const watched: StorageQuotaStatus['watched'] = [];
    let overLimit = 0;
    let totalUsed = 0;
    for (const app of apps) {
      const name = app.app_name;
      const appUsed = used.get(name) ?? 0;
      const limits = this.limitsOf(settings.get(name)?.storage_limit_bytes);
      const target = targets.get(name)!;
      const appRoles = rolesOf.get(name) ?? [];
      let inForce = enforcementOf(appRoles);
      if (appRoles.some((role) => !roleIsAt(role, target)) || this.lastAudited(app) !== AUDIT_ACTION_OF[target]) {
        if (await this.enforce(app, target, appUsed, limits)) inForce = target;
      }
      totalUsed += appUsed;
      if (limits && appUsed > limits.limit) overLimit++;
      const state = this.stateOf(inForce, appUsed, limits);
      if (state !== 'ok' && limits) watched.push({ app: name, used: appUsed, limit: limits.limit, state });
    }
    const ready = new Set(apps.map((app) => app.app_name));
    for (const name of this.audited.keys()) if (!ready.has(name)) this.audited.delete(name);
    Object.assign(this.status, { lastCheckAt: new Date(), watched, overLimit, totalUsed });
    this.deps.log.debug({ databases: activity.length, measured, apps: apps.length, ms: Date.now() - started }, 'storage check finished');
  }

  /** The last storage action audited for this incarnation of the app; an app never enforced is writable. */
  private lastAudited(app: RegisteredApp): StorageAuditAction {
    const audited = this.audited?.get(app.app_name);
    return audited?.incarnation === app.incarnation ? audited.action : 'storage_writable';
  }

  /**
   * Measures the app databases that may have grown since they were last measured (a session busy in them, or a
   * transaction ended since), those never measured, and every one at least every RECONCILE_INTERVAL_MS (what
   * autovacuum and the like change); forgets those that are gone. Returns how many it measured.
   */
  private async measure(activity: AppDatabaseActivity[]): Promise<number> {
    const now = Date.now();
    const due = activity.filter((db) => {
      const last = this.measured.get(db.oid);
      return !last || db.busy || last.transactions !== db.transactions || now - last.at >= this.deps.config.RECONCILE_INTERVAL_MS;
    });
    const sizes = await databaseSizes(this.deps.server.pool, due.map((db) => db.oid));
    for (const db of due) {
      const size = sizes.get(db.oid);
      if (size !== undefined) this.measured.set(db.oid, { datname: db.datname, app: db.app, size, transactions: db.transactions, at: now });
    }
    const present = new Set(activity.map((db) => db.oid));
    for (const oid of this.measured.keys()) if (!present.has(oid)) this.measured.delete(oid);
    return due.length;
  }

  /**
   * Brings the app to `target` under its lock (skipped, false, if the lock is taken: the next round tries again):
   * its login roles first (one transaction each), then its sessions and the door, then the audit entry. Returns
   * whether the app is at `target` now.
   */
  private async enforce(app: RegisteredApp, target: StorageEnforcement, used: number, limits: Limits | undefined): Promise<boolean> {
    const { store, server, crashPoint, log } = this.deps;
    const name = app.app_name;
    const ids = appIdentifiers(name);
    try {
      const done = await store.tryWithAppLock(name, (storeClient) =>
        server.withClientBeside(store, storeClient, async (client) => {
          const found = await findApp(storeClient, name);
          if (found?.state !== 'ready' || found.incarnation !== app.incarnation) return false;
          // Looked at again under the lock: what the check saw may have changed since (the app freed space), or
          // been an operation's middle (a restore puts the login role's settings back before it lets the lock go).
          const [roles, usedNow] = await Promise.all([loginRoleStorage(client, [name]), usedBy(client, name)]);
          if (StorageQuota.decide(usedNow, limits) !== target) return false; // the next check decides afresh
          if (roles.every((role) => roleIsAt(role, target)) && this.lastAudited(app) === AUDIT_ACTION_OF[target]) return true;
          used = usedNow;
          const from = enforcementOf(roles);
          const changed: string[] = [];
          for (const role of roles) if (!roleIsAt(role, target) && (await enforceOnLoginRole(client, role, target))) changed.push(role.role);
          await crashPoint('storage:after-enforce-roles');
          const roleNames = roles.map((role) => role.role);
          const databases = await appDatabaseNames(client, name); // its own and its companions, each a pool at the door
          const doorReconnectsAll = async () => {
            for (const database of databases) await doorReconnects(server, ids, database);
          };
          let sessionsEnded = 0;
          if (target === 'suspended') {
            // As a delete does: the door refuses the logins first (it admits no role with CONNECTION LIMIT 0), then
            // ends its pooled connections, the companions' with the app's (apps-door.ts), then Postgres's sessions.
            await doorTakesLogins(server, ids);
            await doorEndsConnections(server, ids);
            sessionsEnded = await endSessionsOfRoles(client, roleNames);
          } else if (target === 'read_only') {
            // The door's clients stay connected: their server connections (to the app's database and to each
            // companion) close as they are released, and the sessions still open are ended; every session that
            // comes back is read-only. From a suspension, the door admits the logins again.
            if (from === 'suspended') await doorTakesLogins(server, ids);
            await doorReconnectsAll();
            sessionsEnded = await endSessionsOfRoles(client, roleNames);
          } else {
            // Lifted: sessions are left alone (one may be freeing space right now); the door's server
            // connections are replaced as they are released, so pooled clients write again at their next
            // transaction. A direct session keeps its read-only default until it reconnects (README).
            if (from === 'suspended') await doorTakesLogins(server, ids);
            await doorReconnectsAll();
          }
          const action = AUDIT_ACTION_OF[target];
          const detail = {
            used_bytes: used,
            limit_bytes: limits?.limit ?? null,
            hard_limit_bytes: limits?.hard ?? null,
            from: ACTION_OF[from],
            roles: changed,
            sessions_ended: sessionsEnded,
            // Found enforced in the catalog without its audit entry: a crash (or a failure) cut it short.
            ...(changed.length === 0 ? { completed: true } : {}),
          };
          const fields = { app: name, ...detail };
          if (target === 'none') log.info(fields, 'storage quota: app is under its storage limit again; writable');
          else if (target === 'read_only') log.warn(fields, 'storage quota: app is over its storage limit; made read-only');
          else log.warn(fields, 'storage quota: app is over its hard storage limit; its logins are suspended');
          await this.deps.audit.record({ action, appName: name, outcome: 'ok', client: 'storage_quota', detail });
          this.audited?.set(name, { incarnation: app.incarnation, action });
          this.status.enforcements[ACTION_OF[target]]++;
          return true;
        }),
      );
      return done === true;
    } catch (err) {
      log.warn({ err, app: name }, 'storage quota: could not enforce now; the next check tries again');
      return false;
    }
  }
}
