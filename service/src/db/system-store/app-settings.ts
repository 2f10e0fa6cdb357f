// Owns the rows of app_settings (migration 002): what the operator set for one app, apart from the defaults.
import type { Queryable } from '../queryable.js';

export interface StoredAppSettings {
  /** Overrides of the login roles' limits, by setting name. */
  role_limits: Record<string, string | number>;
  /** ALTER DATABASE … SET for the app's database, by setting name. */
  database_settings: Record<string, string>;
  /** null: the service's default. */
  storage_limit_bytes: number | null;
}

const NONE: StoredAppSettings = { role_limits: {}, database_settings: {}, storage_limit_bytes: null };

/** What the operator set for the app; the empty settings when nothing was. */
export async function findAppSettings(db: Queryable, appName: string): Promise<StoredAppSettings> {
  const { rows } = await db.query<StoredAppSettings>(
    `SELECT role_limits, database_settings, storage_limit_bytes::float8 AS storage_limit_bytes FROM app_settings WHERE app_name = $1`,
    [appName],
  );
  return rows[0] ?? { ...NONE };
}

/** Every app's settings that differ from the defaults, by app name. */
export async function allAppSettings(db: Queryable): Promise<Map<string, StoredAppSettings>> {
  const { rows } = await db.query<StoredAppSettings & { app_name: string }>(
    `SELECT app_name, role_limits, database_settings, storage_limit_bytes::float8 AS storage_limit_bytes FROM app_settings`,
  );
  return new Map(rows.map(({ app_name: name, ...settings }) => [name, settings]));
}

/** Replaces what the operator set for the app (the app must be registered). */
export async function saveAppSettings(db: Queryable, appName: string, settings: StoredAppSettings): Promise<void> {
  await db.query(
    `INSERT INTO app_settings (app_name, role_limits, database_settings, storage_limit_bytes) VALUES ($1, $2, $3, $4)
     ON CONFLICT (app_name) DO UPDATE
       SET role_limits = EXCLUDED.role_limits, database_settings = EXCLUDED.database_settings,
           storage_limit_bytes = EXCLUDED.storage_limit_bytes, updated_at = now()`,
    [appName, JSON.stringify(settings.role_limits), JSON.stringify(settings.database_settings), settings.storage_limit_bytes],
  );
}

/**
 * Replaces what the operator set for the app, committed only once `apply` (putting it in force) has succeeded, in
 * one transaction of `db`: a failure or a crash in `apply` leaves the row as it was. Where the server's connection
 * is this one (the store lives on the server), what `apply` changes there is part of the same transaction.
 */
export async function saveAppSettingsWhile(db: Queryable, appName: string, settings: StoredAppSettings, apply: () => Promise<void>): Promise<void> {
  await db.query('BEGIN');
  try {
    await saveAppSettings(db, appName, settings);
    await apply();
    await db.query('COMMIT');
  } catch (err) {
    await db.query('ROLLBACK').catch(() => {});
    throw err;
  }
}
