// Owns the one superuser pool and how work gets a connection: plain queries, per-app locks, and short-lived
// connections into an app's database. Every SQL statement of the service lives in src/db/.
import pg from 'pg';
import type { FastifyBaseLogger } from 'fastify';
import type { Config } from '../config.js';
import { AppBusyError, DatabaseUnavailableError } from '../errors.js';
import { SCHEMA_SQL } from './schema.js';

/** Lets Postgres's own views (pg_stat_activity) tell the service's sessions apart from the apps'. */
export const APPLICATION_NAME = 'pg-provisioner';

export function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/** The advisory-lock key of an app: one lock per name, so operations on one app run one at a time. */
const APP_LOCK_KEY = `hashtextextended('pg-provisioner:app:' || $1, 0)`;

export class Database {
  readonly pool: pg.Pool;
  readonly connection: pg.ClientConfig;
  private readonly log: FastifyBaseLogger;

  constructor(config: Config, log: FastifyBaseLogger) {
    this.log = log;
    this.connection = {
      host: config.DATABASE_HOST,
      port: config.DATABASE_PORT,
      user: config.POSTGRES_USER,
      password: config.POSTGRES_PASSWORD,
      database: config.SYSTEM_DATABASE,
      application_name: APPLICATION_NAME,
      connectionTimeoutMillis: config.DATABASE_CONNECT_TIMEOUT_MS,
      statement_timeout: config.DATABASE_STATEMENT_TIMEOUT_MS,
      lock_timeout: config.DATABASE_LOCK_TIMEOUT_MS,
      query_timeout: config.DATABASE_STATEMENT_TIMEOUT_MS + 2_000,
      keepAlive: true,
    };
    this.pool = new pg.Pool({ ...this.connection, max: config.DATABASE_POOL_SIZE, idleTimeoutMillis: 30_000 });
    // An idle client can lose its server (restart, pg_terminate_backend); without this handler the
    // 'error' event would crash the process. The pool has already dropped that client.
    this.pool.on('error', (err) => this.log.warn({ err }, 'idle database connection lost'));
  }

  private schemaApplied?: Promise<void>;

  /**
   * Resolves once the bookkeeping tables exist (created or updated on first use). If Postgres was away, the
   * next call tries again.
   */
  ready(): Promise<void> {
    this.schemaApplied ??= this.pool.query(SCHEMA_SQL).then(
      () => undefined,
      (err) => {
        this.schemaApplied = undefined;
        throw err;
      },
    );
    return this.schemaApplied;
  }

  /** Resolves when Postgres answers a trivial query within `timeoutMs`; rejects otherwise. */
  async ping(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DatabaseUnavailableError()), timeoutMs);
    });
    try {
      // query_timeout per query is supported by pg but missing from @types/pg's QueryConfig.
      const query = { text: 'SELECT 1', query_timeout: timeoutMs } as pg.QueryConfig;
      await Promise.race([this.pool.query(query), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Runs `work` on one pooled connection; a connection that failed outside SQL is discarded, not reused. */
  async withClient<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    try {
      const result = await work(client);
      client.release();
      return result;
    } catch (err) {
      client.release(err instanceof Error && !sqlState(err) ? err : undefined);
      throw err;
    }
  }

  /**
   * Runs `work` holding the app's advisory lock, on the connection that holds it: operations on one app are
   * serialized, different apps proceed in parallel. Waits at most DATABASE_LOCK_TIMEOUT_MS, then AppBusyError.
   * The lock is tied to the session: if the service dies, Postgres releases it.
   */
  async withAppLock<T>(appName: string, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    return this.withClient(async (client) => {
      try {
        await client.query(`SELECT pg_advisory_lock(${APP_LOCK_KEY})`, [appName]);
      } catch (err) {
        if (sqlState(err) === '55P03') throw new AppBusyError(appName);
        throw err;
      }
      try {
        return await work(client);
      } finally {
        await client.query(`SELECT pg_advisory_unlock(${APP_LOCK_KEY})`, [appName]).catch(() => {});
      }
    });
  }

  /** Like withAppLock, but skips (returns undefined) when another operation holds the app's lock. */
  async tryWithAppLock<T>(appName: string, work: (client: pg.PoolClient) => Promise<T>): Promise<T | undefined> {
    return this.withClient(async (client) => {
      const { rows } = await client.query<{ locked: boolean }>(`SELECT pg_try_advisory_lock(${APP_LOCK_KEY}) AS locked`, [appName]);
      if (!rows[0]?.locked) return undefined;
      try {
        return await work(client);
      } finally {
        await client.query(`SELECT pg_advisory_unlock(${APP_LOCK_KEY})`, [appName]).catch(() => {});
      }
    });
  }

  /** Runs `work` on a short-lived superuser connection to another database (DDL that must run inside it). */
  async inDatabase<T>(database: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
    const client = new pg.Client({ ...this.connection, database });
    client.on('error', (err) => this.log.warn({ err, database }, 'connection to app database lost'));
    await client.connect();
    try {
      return await work(client);
    } finally {
      await client.end();
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
