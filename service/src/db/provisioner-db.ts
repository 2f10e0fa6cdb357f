// Owns every SQL statement the service sends, and the one superuser pool they go through.
// Identifiers come only from appIdentifiers() (the allowlist) and are quoted with escapeIdentifier here;
// values that DDL cannot take as $n parameters are quoted with escapeLiteral.
import pg from 'pg';
import type { FastifyBaseLogger } from 'fastify';
import { appIdentifiers, collidingAppNames, type AppIdentifiers } from '../app-names.js';
import type { Config } from '../config.js';
import { AppExistsError, AppNameConflictError, DatabaseUnavailableError } from '../errors.js';

const { escapeIdentifier: ident, escapeLiteral: literal } = pg;

/** The group role every app login role belongs to; pg_hba.conf names it as +provisioned_apps. */
export const APPS_GROUP_ROLE = 'provisioned_apps';
/** Lets Postgres's own views (pg_stat_activity) tell the service's sessions apart from the apps'. */
export const APPLICATION_NAME = 'pg-provisioner';

const DUPLICATE_ROLE = new Set(['42710', '23505']);
const DUPLICATE_DATABASE = '42P04';

export interface AppRoleLimits {
  connectionLimit: number;
  tempFileLimit: string;
  statementTimeout: string;
  idleInTransactionTimeout: string;
}

function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

export class ProvisionerDb {
  readonly pool: pg.Pool;
  private readonly connection: pg.ClientConfig;
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
      query_timeout: config.DATABASE_STATEMENT_TIMEOUT_MS + 2_000,
      keepAlive: true,
    };
    this.pool = new pg.Pool({ ...this.connection, max: config.DATABASE_POOL_SIZE, idleTimeoutMillis: 30_000 });
    // An idle client can lose its server (restart, pg_terminate_backend); without this handler the
    // 'error' event would crash the process. The pool has already dropped that client.
    this.pool.on('error', (err) => this.log.warn({ err }, 'idle database connection lost'));
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

  /**
   * Creates the app's roles and database. CREATE DATABASE cannot share a transaction with anything, so the
   * steps run one after another and, if any fails, the steps already done are undone before the error is
   * rethrown: no half-made app is left behind. A name taken by a concurrent request fails with
   * AppExistsError and undoes nothing of the winner's.
   */
  async createApp(app: AppIdentifiers, passwordVerifier: string, limits: AppRoleLimits): Promise<void> {
    const role = ident(app.username);
    const accessRole = ident(app.accessRole);
    const database = ident(app.database);
    let rolesCreated = false;
    let databaseCreated = false;
    const client = await this.pool.connect();
    try {
      try {
        // One simple-protocol message with several statements runs as one implicit transaction:
        // the roles appear with their limits, or not at all.
        await client.query(
          `CREATE ROLE ${accessRole} WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
           CREATE ROLE ${role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS
             CONNECTION LIMIT ${limits.connectionLimit} PASSWORD ${literal(passwordVerifier)}
             IN ROLE ${ident(APPS_GROUP_ROLE)}, ${accessRole};
           ALTER ROLE ${role} SET temp_file_limit = ${literal(limits.tempFileLimit)};
           ALTER ROLE ${role} SET statement_timeout = ${literal(limits.statementTimeout)};
           ALTER ROLE ${role} SET idle_in_transaction_session_timeout = ${literal(limits.idleInTransactionTimeout)};`,
        );
      } catch (err) {
        if (DUPLICATE_ROLE.has(sqlState(err) ?? '')) throw await this.nameTakenError(client, app);
        throw err;
      }
      rolesCreated = true;

      try {
        await client.query(`CREATE DATABASE ${database}`);
      } catch (err) {
        if (sqlState(err) === DUPLICATE_DATABASE) throw new AppExistsError(app.appName);
        throw err;
      }
      databaseCreated = true;

      // The database stays owned by the superuser, so the app cannot GRANT CONNECT on it to anyone else;
      // the app gets everything it needs to use it fully, and owns its public schema.
      await client.query(
        `REVOKE ALL ON DATABASE ${database} FROM PUBLIC;
         GRANT CONNECT, CREATE, TEMPORARY ON DATABASE ${database} TO ${role};`,
      );
      await this.inDatabase(app.database, (appDb) => appDb.query(`ALTER SCHEMA public OWNER TO ${role}`));
      client.release();
    } catch (err) {
      // A SQL error leaves the connection usable; anything else (lost connection, timeout) does not.
      client.release(err instanceof Error && !sqlState(err) ? err : undefined);
      await this.undoCreateApp(app, { rolesCreated, databaseCreated });
      throw err;
    }
  }

  /** Why the app's role names are taken: the app exists (or is being made), or a colliding app exists. */
  private async nameTakenError(client: pg.PoolClient, app: AppIdentifiers): Promise<Error> {
    const siblings = collidingAppNames(app.appName).map(appIdentifiers);
    const { rows } = await client.query<{ rolname: string }>(
      `SELECT r.rolname FROM pg_roles r
        WHERE r.rolname = ANY($1::text[]) AND pg_has_role(r.oid, $2, 'MEMBER') AND r.rolcanlogin`,
      [siblings.map((s) => s.username), APPS_GROUP_ROLE],
    );
    const existing = siblings.find((s) => rows.some((r) => r.rolname === s.username));
    if (!existing) return new AppExistsError(app.appName);
    const shared = existing.username === app.accessRole ? app.accessRole : app.username;
    return new AppNameConflictError(app.appName, existing.appName, shared);
  }

  private async undoCreateApp(app: AppIdentifiers, done: { rolesCreated: boolean; databaseCreated: boolean }): Promise<void> {
    if (!done.rolesCreated && !done.databaseCreated) return;
    try {
      if (done.databaseCreated) await this.pool.query(`DROP DATABASE IF EXISTS ${ident(app.database)} WITH (FORCE)`);
      if (done.rolesCreated) await this.pool.query(`DROP ROLE IF EXISTS ${ident(app.username)}, ${ident(app.accessRole)}`);
      this.log.warn({ app: app.appName }, 'provisioning failed; the steps already done were undone');
    } catch (err) {
      this.log.error({ err, app: app.appName }, 'provisioning failed and could not be undone; objects of this app remain');
    }
  }

  /** Runs `work` on a short-lived superuser connection to another database (DDL that must run inside it). */
  private async inDatabase<T>(database: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
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
