// Owns the registry of apps in the system's own database: what exists, in what state, which incarnation.
import type { Queryable } from '../queryable.js';

export type AppState = 'creating' | 'ready' | 'deleting';

export interface RegisteredApp {
  app_name: string;
  state: AppState;
  /** Which life of the name this is (a new one after a delete and a new provision); backups carry it. */
  incarnation: string;
  created_at: Date;
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

/** Ready apps (all, or the one named), by name. */
export async function readyApps(db: Queryable, appName?: string): Promise<RegisteredApp[]> {
  const { rows } = await db.query<RegisteredApp>(
    `SELECT app_name, state, incarnation, created_at FROM apps
      WHERE state = 'ready' AND ($1::text IS NULL OR app_name = $1)
      ORDER BY app_name`,
    [appName ?? null],
  );
  return rows;
}

export async function countReadyApps(db: Queryable): Promise<number> {
  const { rows } = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM apps WHERE state = 'ready'`);
  return rows[0]?.n ?? 0;
}
