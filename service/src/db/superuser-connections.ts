// Owns the superuser connections to one database of one Postgres server: a connection pool that tells congestion
// from an outage, connections of their own, short-lived connections into another database of the same server,
// and a health ping. The system store (src/db/system-store/system-store.ts) and each Postgres server apps live on
// (src/db/postgres-server/postgres-server.ts) hold one each. Every SQL statement of the service lives in src/db/.
import pg from 'pg';
import type { Logger } from 'pino';
import type { Config } from '../shared/config.js';
import { DatabaseUnavailableError, OperationsBusyError } from '../shared/errors.js';
import { sqlState } from '../shared/sqlstate.js';
import type { DatabaseOpener, Queryable } from './queryable.js';

/** Lets Postgres's own views (pg_stat_activity) tell the service's sessions apart from the apps'. */
export const APPLICATION_NAME = 'pg-provisioner';

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

/** Where a Postgres server is, for the service, and its superuser (or admin) login. */
export interface ServerAddress {
  host: string;
  port: number;
  user: string;
  password: string;
}

export class SuperuserConnections implements DatabaseOpener {
  /** The connection pool every short piece of work takes a connection from (DATABASE_POOL_SIZE). */
  readonly pool: pg.Pool;
  readonly connection: pg.ClientConfig;
  private readonly log: Logger;
  private readonly healthStaleMs: number;

  /** Connections as the superuser of `server` to its database `database`; bounds and pool size from `config`. */
  constructor(server: ServerAddress, database: string, config: Config, log: Logger) {
    this.log = log;
    this.healthStaleMs = config.HEALTH_STALE_MS;
    this.connection = {
      host: server.host,
      port: server.port,
      user: server.user,
      password: server.password,
      database,
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

  /** A new superuser connection outside the pool (to `database`, default this one's); the caller ends it. */
  async connect(database = this.connection.database): Promise<pg.Client> {
    const client = new pg.Client({ ...this.connection, database });
    client.on('error', (err) => this.log.warn({ err, database }, 'database connection lost'));
    await client.connect();
    return client;
  }

  /**
   * A connection of its own for one job done again and again, one call at a time (the apps' door reading the
   * catalog). Like the health check's, it never waits behind requests queued on the pool, nor takes a pool
   * connection from an operation that holds one and waits for this job. Ended with the others by close().
   */
  dedicated(): DedicatedConnection {
    const connection = new DedicatedConnection(() => this.connect());
    this.dedicatedConnections.push(connection);
    return connection;
  }

  private readonly dedicatedConnections: DedicatedConnection[] = [];

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
    for (const connection of this.dedicatedConnections) await connection.close();
    await this.pool.end();
  }
}

/** How long a dedicated connection stays open unused: it holds a slot of Postgres's, which may be one of the few the superuser has left. */
const DEDICATED_IDLE_MS = 1_000;

/**
 * One connection, opened when first needed, closed after DEDICATED_IDLE_MS unused, and replaced after any failure
 * (see SuperuserConnections.dedicated).
 */
export class DedicatedConnection {
  private client?: Promise<pg.Client>;
  private readonly open: () => Promise<pg.Client>;
  private idle?: NodeJS.Timeout;

  constructor(open: () => Promise<pg.Client>) {
    this.open = open;
  }

  async run<T>(work: (client: Queryable) => Promise<T>): Promise<T> {
    clearTimeout(this.idle);
    const pending = (this.client ??= this.open());
    try {
      const result = await work(await pending);
      this.idle = setTimeout(() => void this.close(), DEDICATED_IDLE_MS);
      this.idle.unref();
      return result;
    } catch (err) {
      // Whatever failed (the connection, or the statement on it), the next call starts on a new one.
      if (this.client === pending) this.client = undefined;
      await (await pending.catch(() => undefined))?.end().catch(() => {});
      throw err;
    }
  }

  async close(): Promise<void> {
    clearTimeout(this.idle);
    const pending = this.client;
    this.client = undefined;
    await (await pending?.catch(() => undefined))?.end().catch(() => {});
  }
}
