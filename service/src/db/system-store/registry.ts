// Owns the bookkeeping SQL: the registry of apps (what exists, in what state) and the append-only audit log,
// both in the system's own database.
import type pg from 'pg';

type Queryable = Pick<pg.ClientBase, 'query'>;

export type AppState = 'creating' | 'ready' | 'deleting';

export interface RegisteredApp {
  app_name: string;
  state: AppState;
  /** Which life of the name this is (a new one after a delete and a new provision); backups carry it. */
  incarnation: string;
  created_at: Date;
}

export interface AppSummary {
  app_name: string;
  created_at: Date;
  size_bytes: number;
  connections: number;
}

/** Records a new app as `creating`; false when the name is already registered. Commits at once. */
export async function registerApp(db: Queryable, appName: string): Promise<boolean> {
  const { rowCount } = await db.query(`INSERT INTO apps (app_name, state) VALUES ($1, 'creating') ON CONFLICT (app_name) DO NOTHING`, [appName]);
  return rowCount === 1;
}

export async function setAppState(db: Queryable, appName: string, state: AppState): Promise<void> {
  await db.query(`UPDATE apps SET state = $2, updated_at = now() WHERE app_name = $1`, [appName, state]);
}

export async function unregisterApp(db: Queryable, appName: string): Promise<void> {
  await db.query(`DELETE FROM apps WHERE app_name = $1`, [appName]);
}

export async function findApp(db: Queryable, appName: string): Promise<RegisteredApp | undefined> {
  const { rows } = await db.query<RegisteredApp>(`SELECT app_name, state, incarnation, created_at FROM apps WHERE app_name = $1`, [appName]);
  return rows[0];
}

export async function appsInState(db: Queryable, states: AppState[]): Promise<RegisteredApp[]> {
  const { rows } = await db.query<RegisteredApp>(`SELECT app_name, state, incarnation, created_at FROM apps WHERE state = ANY($1::text[]) ORDER BY app_name`, [states]);
  return rows;
}

/** The incarnation of every registered app, by name. */
export async function registeredIncarnations(db: Queryable): Promise<Map<string, string>> {
  const { rows } = await db.query<{ app_name: string; incarnation: string }>(`SELECT app_name, incarnation FROM apps`);
  return new Map(rows.map((row) => [row.app_name, row.incarnation]));
}

export async function registeredAppNames(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ app_name: string }>(`SELECT app_name FROM apps`);
  return rows.map((row) => row.app_name);
}

/** Records an app found complete in Postgres but missing from the registry (made before the registry existed). */
export async function adoptApp(db: Queryable, appName: string): Promise<void> {
  await db.query(`INSERT INTO apps (app_name, state) VALUES ($1, 'ready') ON CONFLICT (app_name) DO NOTHING`, [appName]);
}

/** Ready apps with their open sessions (sizes come from appDatabaseSizes, which is slower). */
export async function readyAppSummaries(db: Queryable, appName?: string): Promise<Array<Omit<AppSummary, 'size_bytes'>>> {
  const { rows } = await db.query<Omit<AppSummary, 'size_bytes'>>(
    `SELECT a.app_name, a.created_at, COALESCE(s.sessions, 0)::int AS connections
       FROM apps a
       LEFT JOIN (SELECT usename, count(*) AS sessions FROM pg_stat_activity GROUP BY usename) s
              ON s.usename = 'app_' || a.app_name || '_user'
      WHERE a.state = 'ready' AND ($1::text IS NULL OR a.app_name = $1)
      ORDER BY a.app_name`,
    [appName ?? null],
  );
  return rows;
}

/**
 * Database sizes of apps (all, or the names given), by app name. pg_database_size walks every file of a
 * database: about a millisecond per app, so the full list is refreshed in the background, not per request.
 */
export async function appDatabaseSizes(db: Queryable, appNames?: string[]): Promise<Map<string, number>> {
  const { rows } = await db.query<{ app_name: string; size_bytes: number }>(
    `SELECT substring(datname FROM 5) AS app_name, pg_database_size(oid)::float8 AS size_bytes
       FROM pg_database
      WHERE datname ~ '^app_[a-z0-9_]{3,32}$' AND ($1::text[] IS NULL OR datname = ANY (SELECT 'app_' || n FROM unnest($1::text[]) n))`,
    [appNames ?? null],
  );
  return new Map(rows.map((row) => [row.app_name, row.size_bytes]));
}

export async function countReadyApps(db: Queryable): Promise<number> {
  const { rows } = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM apps WHERE state = 'ready'`);
  return rows[0]?.n ?? 0;
}

export interface AuditEntry {
  action: string;
  appName?: string;
  outcome: string;
  requestId?: string;
  client?: string;
  detail?: Record<string, unknown>;
}

export async function appendAudit(db: Queryable, entry: AuditEntry): Promise<void> {
  await db.query(
    `INSERT INTO audit_log (action, app_name, outcome, request_id, client, detail) VALUES ($1, $2, $3, $4, $5, $6)`,
    [entry.action, entry.appName ?? null, entry.outcome, entry.requestId ?? null, entry.client ?? null, entry.detail ? JSON.stringify(entry.detail) : null],
  );
}
