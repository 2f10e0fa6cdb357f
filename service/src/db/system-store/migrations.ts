// Owns the versioned migrations of the system's own database (`provisioner`): their ordered list (one module each
// in migrations/, numbered 001-…), the table that records which ran (schema_migrations), and the runner that brings
// the database up to the newest. The runner holds an advisory lock (locks.ts) for its whole run, so two instances
// starting together never race: the second waits, then finds every migration recorded. Each pending migration
// runs once, in a transaction of its own together with its row in schema_migrations: all of it or none. A
// database that records a version newer than this code knows is refused (SchemaNewerThanCodeError, naming both
// versions): old code never runs against a schema it does not know. A database made before migrations (its
// tables exist, schema_migrations does not) is adopted by migration 1, whose statements are idempotent and so make
// it the baseline of both.
// Why not postgrator (8.0, well kept, Node >= 20): it reads migrations only from files its glob finds (.sql, .js;
// neither these .ts modules under tsx nor a list defined in code), takes no lock, so two instances starting
// together race, applies a migration and records it outside one transaction, and on a database newer than its
// migrations it looks for "undo" files to run instead of refusing. What we need is the small runner below.
import { SchemaNewerThanCodeError } from '../../shared/errors.js';
import type { Queryable } from '../queryable.js';
import { lockMigrations, unlockMigrations } from './locks.js';
import { initial } from './migrations/001-initial.js';
import { appSettings } from './migrations/002-app-settings.js';

export interface Migration {
  /** 1, 2, 3…: the order they run in, once each; a version is never reused or renumbered. */
  version: number;
  /** A few words for schema_migrations (the module's file name without its number). */
  name: string;
  /** The statements, run in one transaction with the migration's row in schema_migrations. */
  sql: string;
}

/** Every migration, oldest first: add a new one at the end, in a module of its own; never edit one that shipped. */
export const MIGRATIONS: readonly Migration[] = [initial, appSettings];

const MIGRATIONS_TABLE_SQL = `
CREATE TABLE IF NOT EXISTS schema_migrations (
  version    int PRIMARY KEY,
  name       text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON schema_migrations FROM PUBLIC;
`;

/** Refuses a list whose versions are not 1, 2, 3… in order: the runner's order is the list's. */
function checkOrder(migrations: readonly Migration[]): void {
  migrations.forEach((migration, index) => {
    if (migration.version !== index + 1) {
      throw new Error(`migration '${migration.name}' has version ${migration.version} at place ${index + 1}: versions must be 1, 2, 3… in order`);
    }
  });
}

/**
 * Brings the system's own database up to the newest of `migrations` (default: the service's), on `client`, one
 * session (the lock is the session's). Returns the versions it applied, oldest first (none: the schema was
 * current). Rejects with SchemaNewerThanCodeError if the database records a newer version than the list has.
 */
export async function migrate(client: Queryable, migrations: readonly Migration[] = MIGRATIONS): Promise<number[]> {
  checkOrder(migrations);
  await lockMigrations(client);
  try {
    await client.query(MIGRATIONS_TABLE_SQL);
    const { rows } = await client.query<{ version: number }>('SELECT version FROM schema_migrations');
    const recorded = new Set(rows.map((row) => row.version));
    const databaseVersion = Math.max(0, ...recorded);
    const codeVersion = migrations.at(-1)?.version ?? 0;
    if (databaseVersion > codeVersion) throw new SchemaNewerThanCodeError(databaseVersion, codeVersion);
    const applied: number[] = [];
    for (const migration of migrations) {
      if (recorded.has(migration.version)) continue;
      await inTransaction(client, async () => {
        await client.query(migration.sql);
        await client.query('INSERT INTO schema_migrations (version, name) VALUES ($1, $2)', [migration.version, migration.name]);
      });
      applied.push(migration.version);
    }
    return applied;
  } finally {
    await unlockMigrations(client).catch(() => {});
  }
}

async function inTransaction(client: Queryable, work: () => Promise<void>): Promise<void> {
  await client.query('BEGIN');
  try {
    await work();
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
}
