// Owns the ready pool's rows in the system's own database: one per prepared set, `preparing` (its objects may
// be half-made) or `ready` (complete, never logged into).
import pg from 'pg';
import type { Queryable } from '../queryable.js';
import { appLockKeySql, readySetLockKeySql } from './locks.js';

const { escapeLiteral: literal } = pg;

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

/** The state of a set's entry; undefined when it has none. */
export async function entryState(db: Queryable, id: string): Promise<ReadySetState | undefined> {
  const { rows } = await db.query<{ state: ReadySetState }>(`SELECT state FROM ready_pool WHERE id = $1`, [id]);
  return rows[0]?.state;
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

/** A ready set claimed for an app (claimReadySet), and which of the two locks the claim took. */
export interface ReadySetClaim {
  id: string;
  appLocked: boolean;
  setLocked: boolean;
}

/**
 * The system store's first step of a hand-over, in one statement: the oldest ready entry among `candidates`
 * that no other hand-over holds goes, the app is registered as `creating`, and this session tries to take the
 * app's lock and the set's lock (held until endClaim). From here until endClaim marks the app ready, a crash
 * leaves a `creating` app, which the reconciler removes whole, and a set with no entry, which it removes too.
 * Undefined, changing nothing, when no candidate is left; a name already registered fails with 23505,
 * changing nothing.
 */
export async function claimReadySet(db: Queryable, appName: string, candidates: string[]): Promise<ReadySetClaim | undefined> {
  const { rows } = await db.query<{ id: string; app_locked: boolean; set_locked: boolean }>(
    `WITH picked AS (
       SELECT id FROM ready_pool WHERE state = 'ready' AND id = ANY ($1::text[]) ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED
     ), claimed AS (
       DELETE FROM ready_pool r USING picked WHERE r.id = picked.id RETURNING r.id
     ), registered AS (
       INSERT INTO apps (app_name, state) SELECT $2, 'creating' FROM claimed RETURNING app_name
     )
     SELECT claimed.id, pg_try_advisory_lock(${appLockKeySql('registered.app_name')}) AS app_locked,
            pg_try_advisory_lock(${readySetLockKeySql('claimed.id')}) AS set_locked
       FROM claimed, registered`,
    [candidates, appName],
  );
  const row = rows[0];
  return row && { id: row.id, appLocked: row.app_locked, setLocked: row.set_locked };
}

/**
 * The last step of a hand-over, on the session that claimed: `ready` marks the app ready (the server's step is
 * done); `abandon` unregisters it (the set is left to the reconciler, which removes sets with no entry); `return`
 * unregisters it and puts the set back as ready. Then the claim's locks are let go.
 */
export async function endClaim(db: Queryable, appName: string, claim: ReadySetClaim, outcome: 'ready' | 'abandon' | 'return'): Promise<void> {
  const app = literal(appName);
  const statements =
    outcome === 'ready'
      ? [`UPDATE apps SET state = 'ready', updated_at = now() WHERE app_name = ${app}`]
      : [`DELETE FROM apps WHERE app_name = ${app} AND state = 'creating'`];
  if (outcome === 'return') statements.push(`INSERT INTO ready_pool (id, state) VALUES (${literal(claim.id)}, 'ready')`);
  // Committed before the locks are let go: a session-level advisory lock is released at once, not at commit, so
  // an unlock inside the same transaction would let the reconciler take the app's lock and still read `creating`
  // (and remove a just-handed-over app).
  const unlocks: string[] = [];
  if (claim.appLocked) unlocks.push(`SELECT pg_advisory_unlock(${appLockKeySql(app)})`);
  if (claim.setLocked) unlocks.push(`SELECT pg_advisory_unlock(${readySetLockKeySql(literal(claim.id))})`);
  try {
    await db.query(['BEGIN', ...statements, 'COMMIT', ...unlocks].join(';\n'));
  } catch (err) {
    // The state could not be written: the locks go anyway (the reconciler repairs a `creating` app), and the
    // connection goes back to its pool outside any transaction.
    await db.query(['ROLLBACK', ...unlocks].join(';\n')).catch(() => {});
    throw err;
  }
}

