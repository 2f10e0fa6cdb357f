// Owns the service's superuser connections to its one Postgres cluster, where the system's own database and the
// apps' databases live side by side: the connection pool, connections of their own, short-lived connections
// into an app's database, the app and ready-set locks held on them, the health ping, and bringing the system's
// own tables into being. Every SQL statement of the service lives in src/db/.
import pg from 'pg';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Config } from '../shared/config.js';
import { AppBusyError, DatabaseUnavailableError, OperationsBusyError } from '../shared/errors.js';
import { sqlState } from '../shared/sqlstate.js';
import type { DatabaseOpener, Queryable } from './queryable.js';
import { appLockKey, lock, readySetLockKey, tryLock, unlock } from './system-store/locks.js';
import { migrate } from './system-store/migrations.js';

/** Lets Postgres's own views (pg_stat_activity) tell the service's sessions apart from the apps'. */
export const APPLICATION_NAME = 'pg-provisioner';

/** How often a wait for an app's lock asks again. */
const APP_LOCK_POLL_MS = 50;

/** pg-pool's error when a checkout waited connectionTimeoutMillis in the queue of a full pool. */
const POOL_QUEUE_TIMEOUT = 'timeout exceeded when trying to connect';

/**
 * The superuser's connection pool, telling congestion from an outage. A checkout that waited its whole
 * DATABASE_CONNECT_TIMEOUT_MS for a full pool while Postgres kept answering (a connection came back without
 * error meanwhile) fails with the service's back-pressure 503 ("too many requests …", Retry-After); with no
 * answer meanwhile (Postgres frozen or gone), with the usual "the database is unavailable". Covers every
 * checkout, pool.query's included.
 */
class ServicePool extends pg.Pool {
  private lastAnswerAt = 0;

  constructor(config: pg.PoolConfig) {
    super(config);
    this.on('release', (err) => {
      if (!err) this.lastAnswerAt = Date.now();
    });
  }

  private translate(err: Error | undefined, waitFrom: number): Error | undefined {
    if (err?.message === POOL_QUEUE_TIMEOUT && this.lastAnswerAt >= waitFrom) return new OperationsBusyError('requests');
    return err;
  }

  override connect(): Promise<pg.PoolClient>;
  override connect(callback: (err: Error | undefined, client: pg.PoolClient | undefined, done: (release?: unknown) => void) => void): void;
  override connect(callback?: (err: Error | undefined, client: pg.PoolClient | undefined, done: (release?: unknown) => void) => void): Promise<pg.PoolClient> | void {
    const waitFrom = Date.now();
    if (callback) return super.connect((err, client, done) => callback(this.translate(err, waitFrom), client, done));
    return super.connect().catch((err: Error) => {
      throw this.translate(err, waitFrom);
    });
  }
}

export class SuperuserConnections implements DatabaseOpener {
  /** The connection pool every short piece of work takes a connection from (DATABASE_POOL_SIZE). */
  readonly pool: pg.Pool;
  readonly connection: pg.ClientConfig;
  private readonly log: Logger;
  private readonly healthStaleMs: number;
  private readonly lockTimeoutMs: number;

  constructor(config: Config, log: Logger) {
    this.log = log;
    this.healthStaleMs = config.HEALTH_STALE_MS;
    this.lockTimeoutMs = config.DATABASE_LOCK_TIMEOUT_MS;
    this.connection = {
      host: config.DATABASE_HOST,
      port: config.DATABASE_PORT,
      user: config.POSTGRES_USER,
      password: config.POSTGRES_PASSWORD,
      database: config.SYSTEM_DATABASE,
      application_name: APPLICATION_NAME,
      connectionTimeoutMillis: config.DATABASE_CONNECT_TIMEOUT_MS,
      // The bound is the client's (query_timeout): the service stops waiting, and Postgres finishes the
      // statement. A server-side statement_timeout would cancel a CREATE or DROP DATABASE halfway (a DROP
      // waiting for a forced checkpoint easily takes seconds), which Postgres handles badly; lock waits are
      // still cut server-side, before any work is done.
      lock_timeout: config.DATABASE_LOCK_TIMEOUT_MS,
      query_timeout: config.DATABASE_STATEMENT_TIMEOUT_MS,
      keepAlive: true,
    };
    this.pool = new ServicePool({ ...this.connection, max: config.DATABASE_POOL_SIZE, idleTimeoutMillis: 30_000 });
    // An idle client can lose its server (restart, pg_terminate_backend); without this handler the
    // 'error' event would crash the process. The pool has already dropped that client.
    this.pool.on('error', (err) => this.log.warn({ err }, 'idle database connection lost'));
  }

  private schemaApplied?: Promise<void>;

  /**
   * Resolves once the system's own tables exist (created or updated on first use). If Postgres was away, the
   * next call tries again.
   */
  ensureSchema(): Promise<void> {
    this.schemaApplied ??= this.withClient((client) => migrate(client)).then(
      () => undefined,
      (err) => {
        this.schemaApplied = undefined;
        throw err;
      },
    );
    return this.schemaApplied;
  }

  /** The last settled ping: whether Postgres answered, and when. */
  private lastKnown?: { ok: boolean; at: number; error?: unknown };
  private pingInFlight?: Promise<void>;

  /**
   * Whether Postgres answers, for /health: one ping at a time, its answer shared by every caller for
   * `reuseMs`. While a newer ping is under way (slow when the ready pool's CREATE DATABASE runs), callers get
   * the last answer if it was a success no older than HEALTH_STALE_MS, instead of waiting for it; a failure is
   * never served stale. A dead database is reported within about reuseMs + timeoutMs (the ping's own bound).
   */
  checkHealth(timeoutMs: number, reuseMs: number): Promise<void> {
    const now = Date.now();
    const last = this.lastKnown;
    if (last && now - last.at <= reuseMs) return last.ok ? Promise.resolve() : Promise.reject(last.error);
    if (!this.pingInFlight) {
      const ping = this.ping(timeoutMs).then(
        () => this.settlePing({ ok: true, at: Date.now() }),
        (error: unknown) => {
          this.settlePing({ ok: false, at: Date.now(), error });
          throw error;
        },
      );
      ping.catch(() => {}); // observed by the callers that wait for it; never an unhandled rejection
      this.pingInFlight = ping;
    }
    if (last?.ok && now - last.at <= this.healthStaleMs) return Promise.resolve();
    return this.pingInFlight;
  }

  private settlePing(result: { ok: boolean; at: number; error?: unknown }): void {
    this.lastKnown = result;
    this.pingInFlight = undefined;
  }

  /** The health check's own connection: a flood of requests queued on the pool never delays /health. */
  private healthClient?: pg.Client;

  /** Resolves when Postgres answers a trivial query within `timeoutMs`; rejects otherwise. */
  async ping(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DatabaseUnavailableError()), timeoutMs);
    });
    const attempt = (async () => {
      let client = this.healthClient;
      if (!client) {
        client = await this.connect();
        this.healthClient = client;
      }
      // query_timeout per query is supported by pg but missing from @types/pg's QueryConfig.
      await client.query({ text: 'SELECT 1', query_timeout: timeoutMs } as pg.QueryConfig);
    })();
    try {
      await Promise.race([attempt, timeout]);
    } catch (err) {
      attempt.catch(() => {});
      const broken = this.healthClient;
      this.healthClient = undefined;
      await broken?.end().catch(() => {});
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** When each pooled connection was last given back, to test long-idle ones before use. */
  private readonly releasedAt = new WeakMap<pg.PoolClient, number>();

  /**
   * A pooled connection that works. One idle for more than a second is tested first (SELECT 1): after a
   * Postgres restart or pg_terminate_backend, a dead one is dropped and another taken, so the request that
   * comes next does not fail for it.
   */
  private async checkOut(): Promise<pg.PoolClient> {
    for (let attempt = 1; ; attempt++) {
      const client = await this.pool.connect();
      // pg-pool stops listening for a client's errors while it is checked out; a connection that dies while
      // its holder waits on something else (pg_dump, a second connection) must not crash the process. The
      // holder's next query fails, and the client is then discarded.
      client.on('error', this.onCheckedOutError);
      const idleMs = Date.now() - (this.releasedAt.get(client) ?? Date.now());
      if (idleMs < 1_000) return client;
      try {
        await client.query('SELECT 1');
        return client;
      } catch (err) {
        this.giveBack(client, err instanceof Error ? err : new Error(String(err)));
        if (attempt >= 3) throw err;
      }
    }
  }

  private readonly onCheckedOutError = (err: Error) => this.log.warn({ err }, 'database connection lost while in use');

  private giveBack(client: pg.PoolClient, err?: Error): void {
    client.removeListener('error', this.onCheckedOutError);
    this.releasedAt.set(client, Date.now());
    client.release(err);
  }

  /** Runs `work` on one pooled connection; a connection that failed outside SQL is discarded, not reused. */
  async withClient<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await this.checkOut();
    try {
      const result = await work(client);
      this.giveBack(client);
      return result;
    } catch (err) {
      this.giveBack(client, err instanceof Error && !sqlState(err) ? err : undefined);
      throw err;
    }
  }

  /**
   * Runs `work` holding the app's advisory lock, on the connection that holds it: operations on one app are
   * serialized, different apps proceed in parallel. Waits at most DATABASE_LOCK_TIMEOUT_MS, then AppBusyError.
   * The wait is a series of short tries, not one blocking pg_advisory_lock: each try is bounded by the statement
   * timeout like any query, so a lock timeout longer than the statement timeout still ends in a 409, and a frozen
   * Postgres still in a 503 within the statement timeout. The lock is tied to the session: if the service dies,
   * Postgres releases it. Operations that hold the lock for long (a backup, a restore, a rotation waiting out
   * logins) pass `ownConnection`, so they never hold one of the pool's few connections that every request needs;
   * their callers bound how many run at once.
   */
  async withAppLock<T>(appName: string, work: (client: Queryable) => Promise<T>, { ownConnection = false } = {}): Promise<T> {
    const locked = async (client: pg.ClientBase) => {
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
    if (!ownConnection) return this.withClient(locked);
    const client = await this.connect();
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

  /** Runs `work` on `client` (a connection of the caller's), holding a ready-pool set's lock, waited for. */
  async withReadySetLockOn<T>(client: Queryable, id: string, work: () => Promise<T>): Promise<T> {
    await lock(client, readySetLockKey(id));
    try {
      return await work();
    } finally {
      await unlock(client, readySetLockKey(id)).catch(() => {});
    }
  }

  private async tryWithLock<T>(key: string, work: (client: pg.PoolClient) => Promise<T>): Promise<T | undefined> {
    return this.withClient(async (client) => {
      if (!(await tryLock(client, key))) return undefined;
      try {
        return await work(client);
      } finally {
        await unlock(client, key).catch(() => {});
      }
    });
  }

  /** A new superuser connection outside the pool (to `database`, default the system's own); the caller ends it. */
  async connect(database = this.connection.database): Promise<pg.Client> {
    const client = new pg.Client({ ...this.connection, database });
    client.on('error', (err) => this.log.warn({ err, database }, 'database connection lost'));
    await client.connect();
    return client;
  }

  /** Runs `work` on a short-lived superuser connection to another database (DDL that must run inside it). */
  async inDatabase<T>(database: string, work: (client: Queryable) => Promise<T>): Promise<T> {
    const client = await this.connect(database);
    try {
      return await work(client);
    } finally {
      await client.end();
    }
  }

  async close(): Promise<void> {
    await this.healthClient?.end().catch(() => {});
    await this.pool.end();
  }
}
