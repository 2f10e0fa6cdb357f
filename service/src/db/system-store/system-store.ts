// Owns the system store: the service's own database (SYSTEM_DATABASE), which says which apps exist and in what
// state (the registry), what was done (the audit log), which prepared sets the ready pool holds, and which
// operations run (the advisory locks, which belong to the database they are taken in). It lives in a Postgres
// server of its own choosing (today the one the apps live on, see src/domain/provisioner.ts), reached through
// the connections it is given: nothing here touches an app's roles or databases (src/db/postgres-server/ does).
import type pg from 'pg';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from '../../shared/config.js';
import { AppBusyError } from '../../shared/errors.js';
import type { OwnConnection, Queryable } from '../queryable.js';
import type { SuperuserConnections } from '../superuser-connections.js';
import { appLockKey, lock, readySetLockKey, tryLock, unlock } from './locks.js';
import { migrate } from './migrations.js';

/** How often a wait for an app's lock asks again. */
const APP_LOCK_POLL_MS = 50;

export class SystemStore {
  readonly connections: SuperuserConnections;
  private readonly lockTimeoutMs: number;
  private schemaApplied?: Promise<void>;

  /** `connections`: superuser connections to the system's own database (SYSTEM_DATABASE). */
  constructor(connections: SuperuserConnections, config: Config) {
    this.connections = connections;
    this.lockTimeoutMs = config.DATABASE_LOCK_TIMEOUT_MS;
  }

  /** The store's connection pool, for single statements that need no lock. */
  get pool(): Queryable {
    return this.connections.pool;
  }

  /** A connection of its own to the store, outside the pool (the ready pool's refilling); the caller ends it. */
  connect(): Promise<OwnConnection> {
    return this.connections.connect();
  }

  /** Runs `work` on one pooled connection to the store (statements that must share a session). */
  withClient<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    return this.connections.withClient(work);
  }

  /**
   * Resolves once the system's own schema is current (its numbered migrations applied, src/db/system-store/
   * migrations.ts); rejects on a schema newer than this code. If Postgres was away, the next call tries again.
   */
  ensureSchema(): Promise<void> {
    this.schemaApplied ??= this.connections.withClient((client) => migrate(client)).then(
      () => undefined,
      (err) => {
        this.schemaApplied = undefined;
        throw err;
      },
    );
    return this.schemaApplied;
  }

  /**
   * Runs `work` holding the app's advisory lock, on the store connection that holds it: operations on one app
   * are serialized, different apps proceed in parallel. Waits at most DATABASE_LOCK_TIMEOUT_MS, then
   * AppBusyError. The wait is a series of short tries, not one blocking pg_advisory_lock: each try is bounded by
   * the statement timeout like any query, so a lock timeout longer than the statement timeout still ends in a
   * 409, and a frozen Postgres still in a 503 within the statement timeout. The lock is tied to the session: if
   * the service dies, Postgres releases it. Operations that hold the lock for long (a backup, a restore, a
   * rotation waiting out logins) pass `ownConnection`, so they never hold one of the pool's few connections that
   * every request needs; their callers bound how many run at once.
   */
  async withAppLock<T>(appName: string, work: (client: Queryable) => Promise<T>, { ownConnection = false } = {}): Promise<T> {
    const locked = async (client: Queryable) => {
      const deadline = Date.now() + this.lockTimeoutMs;
      while (!(await tryLock(client, appLockKey(appName)))) {
        const left = deadline - Date.now();
        if (left <= 0) throw new AppBusyError(appName);
        await sleep(Math.min(APP_LOCK_POLL_MS, left));
      }
      try {
        return await work(client);
      } finally {
        await unlock(client, appLockKey(appName)).catch(() => {});
      }
    };
    if (!ownConnection) return this.connections.withClient(locked);
    const client = await this.connections.connect();
    try {
      return await locked(client);
    } finally {
      await client.end().catch(() => {});
    }
  }

  /** Runs `work` holding the app's lock if it is free; returns undefined, without running it, if it is not. */
  tryWithAppLock<T>(appName: string, work: (client: Queryable) => Promise<T>): Promise<T | undefined> {
    return this.tryWithLock(appLockKey(appName), work);
  }

  /** Runs `work` holding a ready-pool set's lock if it is free; returns undefined, without running it, if it is not. */
  tryWithReadySetLock<T>(id: string, work: (client: Queryable) => Promise<T>): Promise<T | undefined> {
    return this.tryWithLock(readySetLockKey(id), work);
  }

  /** Runs `work` on `client` (a store connection of the caller's), holding a ready-pool set's lock, waited for. */
  async withReadySetLockOn<T>(client: Queryable, id: string, work: () => Promise<T>): Promise<T> {
    await lock(client, readySetLockKey(id));
    try {
      return await work();
    } finally {
      await unlock(client, readySetLockKey(id)).catch(() => {});
    }
  }

  private tryWithLock<T>(key: string, work: (client: Queryable) => Promise<T>): Promise<T | undefined> {
    return this.connections.withClient(async (client) => {
      if (!(await tryLock(client, key))) return undefined;
      try {
        return await work(client);
      } finally {
        await unlock(client, key).catch(() => {});
      }
    });
  }

  close(): Promise<void> {
    return this.connections.close();
  }
}
