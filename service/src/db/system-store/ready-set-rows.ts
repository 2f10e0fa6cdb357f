// Owns the ready pool's rows in the system's own database: one per prepared set, `preparing` (its objects may
// be half-made) or `ready` (complete, never logged into).
import { READY_SET_SQL } from '../../shared/object-names.js';
import type { Queryable } from '../queryable.js';

export type ReadySetState = 'preparing' | 'ready';

export async function addPreparing(db: Queryable, id: string): Promise<void> {
  await db.query(`INSERT INTO ready_pool (id, state) VALUES ($1, 'preparing')`, [id]);
}

export async function markPrepared(db: Queryable, id: string): Promise<void> {
  await db.query(`UPDATE ready_pool SET state = 'ready' WHERE id = $1`, [id]);
}

export async function removeEntry(db: Queryable, id: string): Promise<void> {
  await db.query(`DELETE FROM ready_pool WHERE id = $1`, [id]);
}

export async function countEntries(db: Queryable): Promise<{ ready: number; preparing: number }> {
  const { rows } = await db.query<{ ready: number; preparing: number }>(
    `SELECT count(*) FILTER (WHERE state = 'ready')::int AS ready, count(*) FILTER (WHERE state = 'preparing')::int AS preparing FROM ready_pool`,
  );
  return rows[0] ?? { ready: 0, preparing: 0 };
}

export async function entriesIn(db: Queryable, state: ReadySetState): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(`SELECT id FROM ready_pool WHERE state = $1 ORDER BY created_at`, [state]);
  return rows.map((row) => row.id);
}

/**
 * Ready entries whose database is gone (it is never handed over: the hand-over checks it too). Reads the
 * server's catalog beside the rows: both are in the one cluster.
 */
export async function readyIdsWithoutDatabase(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(
    `SELECT id FROM ready_pool WHERE state = 'ready' AND NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = ${READY_SET_SQL.databaseOf('id')})`,
  );
  return rows.map((row) => row.id);
}
