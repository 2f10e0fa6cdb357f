// Owns the advisory locks, in the system's own database (locks belong to the database they are taken in):
// `app:<name>` (operations on one app run one at a time) and `ready:<id>` (a ready-pool set being prepared or
// removed). Locks are tied to the session: if the service dies, Postgres releases them.
import type { Queryable } from '../queryable.js';

const LOCK_KEY_SQL = `hashtextextended('pg-provisioner:' || $1, 0)`;

export const appLockKey = (appName: string) => `app:${appName}`;
export const readySetLockKey = (id: string) => `ready:${id}`;

/** Takes the lock `key` if it is free; false, at once, if another session holds it. */
export async function tryLock(client: Queryable, key: string): Promise<boolean> {
  const { rows } = await client.query<{ locked: boolean }>(`SELECT pg_try_advisory_lock(${LOCK_KEY_SQL}) AS locked`, [key]);
  return rows[0]?.locked === true;
}

/** Takes the lock `key`, waiting for it as long as the session's lock_timeout allows. */
export async function lock(client: Queryable, key: string): Promise<void> {
  await client.query(`SELECT pg_advisory_lock(${LOCK_KEY_SQL})`, [key]);
}

export async function unlock(client: Queryable, key: string): Promise<void> {
  await client.query(`SELECT pg_advisory_unlock(${LOCK_KEY_SQL})`, [key]);
}
