// Owns the advisory locks, in the system's own database (locks belong to the database they are taken in):
// `app:<name>` (operations on one app run one at a time) and `ready:<id>` (a ready-pool set being prepared or
// removed). Locks are tied to the session: if the service dies, Postgres releases them.
import type { Queryable } from '../queryable.js';

/** A lock's key in SQL, from an SQL expression of its name (`app:<name>`, `ready:<id>`). */
export const lockKeySql = (name: string) => `hashtextextended('pg-provisioner:' || ${name}, 0)`;
const LOCK_KEY_SQL = lockKeySql('$1');

const APP_LOCK_PREFIX = 'app:';
const READY_SET_LOCK_PREFIX = 'ready:';
export const appLockKey = (appName: string) => `${APP_LOCK_PREFIX}${appName}`;
export const readySetLockKey = (id: string) => `${READY_SET_LOCK_PREFIX}${id}`;
/** The same names, from SQL expressions of an app name or a set id. */
export const appLockKeySql = (appNameSql: string) => lockKeySql(`'${APP_LOCK_PREFIX}' || ${appNameSql}`);
export const readySetLockKeySql = (idSql: string) => lockKeySql(`'${READY_SET_LOCK_PREFIX}' || ${idSql}`);

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
