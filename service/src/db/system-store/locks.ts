// Owns the advisory locks, in the system's own database (locks belong to the database they are taken in):
// `app:<name>` (operations on one app run one at a time) and `ready:<id>` (a ready-pool set being prepared or
// removed), and the migrations' lock (one instance at a time brings the schema up to date). Locks are tied to
// the session: if the service dies, Postgres releases them.
import type { Queryable } from '../queryable.js';

/** A lock's key in SQL, from an SQL expression of its name (`app:<name>`, `ready:<id>`). */
const lockKeySql = (name: string) => `hashtextextended('pg-provisioner:' || ${name}, 0)`;
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

/**
 * The migrations' lock, keyed by two int4s: Postgres keeps that key space apart from the one-bigint keys above
 * (pg_locks tells them apart by objsubid), so no app or ready-set name, whatever it hashes to, can take it.
 * 0x70677076 is 'pgpv'; 1 is the schema's migrations.
 */
const MIGRATIONS_LOCK_KEY = '1885827190, 1';

/** Takes the migrations' lock, waiting for it as long as the session's lock_timeout allows. */
export async function lockMigrations(client: Queryable): Promise<void> {
  await client.query(`SELECT pg_advisory_lock(${MIGRATIONS_LOCK_KEY})`);
}

export async function unlockMigrations(client: Queryable): Promise<void> {
  await client.query(`SELECT pg_advisory_unlock(${MIGRATIONS_LOCK_KEY})`);
}
