// Owns the SQL of the ready pool's prepared sets on the Postgres server: which exist, which a tenant has granted
// something to, and their passwords. Their names come from src/shared/object-names.ts.
import pg from 'pg';
import { READY_SET_ID_PATTERN, READY_SET_SQL, readySetNames, type ObjectNames } from '../../shared/object-names.js';
import type { Queryable } from '../queryable.js';
import { roleSettingsSql, type AppRoleLimits } from './app-objects.js';

const { escapeIdentifier: ident, escapeLiteral: literal } = pg;

/** Ids of prepared objects in Postgres (roles or databases named pgprov_ready_<id>). */
export async function idsWithObjects(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(
    `SELECT substring(rolname FROM '${READY_SET_SQL.rolePattern}') AS id FROM pg_roles WHERE rolname ~ '${READY_SET_SQL.rolePattern}'
     UNION
     SELECT substring(datname FROM '${READY_SET_SQL.databasePattern}') FROM pg_database WHERE datname ~ '${READY_SET_SQL.databasePattern}'`,
  );
  return rows.map((row) => row.id);
}

// Tainted sets: prepared sets whose roles someone else has named. A tenant can GRANT on its own objects (or set
// default privileges or policies) to any role it sees in pg_roles, prepared ones included. Such a set would hand
// those grants to the app that receives it, so it is never handed over, and the pool removes it. A prepared set's
// own entries (CONNECT on its database, its public schema) are the only ones expected.

/**
 * The dependency `s` (a pg_shdepend row on a set's role) is foreign: anything but the set's own entries, which
 * are its database's CONNECT grant and objects inside its own database (whose oid is `ownDatabaseOid`).
 */
const foreignDependency = (ownDatabaseOid: string) =>
  `s.dbid IS DISTINCT FROM ${ownDatabaseOid} AND NOT (s.dbid = 0 AND s.classid = 'pg_database'::regclass AND s.objid = ${ownDatabaseOid})`;

/** Every tainted set, found by its roles' names (for the pool's sweep). */
const TAINTED_IDS_SQL = `
  SELECT DISTINCT substring(r.rolname FROM '${READY_SET_SQL.idPrefixPattern}') AS id
    FROM pg_roles r
    JOIN pg_shdepend s ON s.refclassid = 'pg_authid'::regclass AND s.refobjid = r.oid
    LEFT JOIN pg_database own ON own.datname = substring(r.rolname FROM '${READY_SET_SQL.databasePrefixPattern}')
   WHERE r.rolname ~ '${READY_SET_SQL.rolePattern}' AND ${foreignDependency('own.oid')}`;

/**
 * Whether one set is tainted, as a condition on its database's name and its roles' names (SQL expressions of
 * types name and name[]). Written so that Postgres can only look them up by index, whatever its statistics of the
 * catalogs say: the roles' oids first, then their dependencies by (refclassid, refobjid).
 */
export function setIsTaintedSql(databaseName: string, roleNames: string): string {
  return `EXISTS (
    SELECT 1 FROM pg_shdepend s
     WHERE s.refclassid = 'pg_authid'::regclass
       AND s.refobjid = ANY (ARRAY(SELECT oid FROM pg_authid WHERE rolname = ANY (${roleNames})))
       AND ${foreignDependency(`(SELECT oid FROM pg_database WHERE datname = ${databaseName})`)})`;
}

/**
 * Whether a set can be handed over ($1 its database, $2 its roles): its database exists and takes connections,
 * and no tenant has tainted it. A named statement of catalog-index lookups: each connection plans it once.
 */
const SET_IS_USABLE = {
  name: 'pgprov-ready-set-is-usable',
  text: `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1::name AND datallowconn)
            AND NOT ${setIsTaintedSql('$1::name', '$2::name[]')} AS usable`,
};

/**
 * The server's step of a hand-over: if the set can be handed over, renames its roles and its database to the
 * app's names and lets the login role log in, in one transaction; false, changing nothing, if it cannot (its
 * database is gone, or a tenant has tainted it). Its password was set when the set was prepared (setting a
 * SCRAM verifier costs Postgres a PBKDF2 run, ~3 ms, kept off this path). A taken name (42710, 42P04) rolls it
 * all back.
 */
export async function renameReadySetToApp(db: Queryable, id: string, app: ObjectNames): Promise<boolean> {
  const prepared = readySetNames(id);
  const { rows } = await db.query<{ usable: boolean }>({ ...SET_IS_USABLE, values: [prepared.database, [prepared.accessRole, prepared.username]] });
  if (!rows[0]?.usable) return false;
  try {
    await db.query(
      `BEGIN;
       ALTER ROLE ${ident(prepared.accessRole)} RENAME TO ${ident(app.accessRole)};
       ALTER ROLE ${ident(prepared.username)} RENAME TO ${ident(app.username)};
       ALTER DATABASE ${ident(prepared.database)} RENAME TO ${ident(app.database)};
       ALTER ROLE ${ident(app.username)} WITH LOGIN;
       COMMIT;`,
    );
  } catch (err) {
    await db.query('ROLLBACK').catch(() => {});
    throw err;
  }
  return true;
}

/** Ids of the sets whose database exists (among `ids`, or all). */
export async function idsWithDatabase(db: Queryable, ids?: string[]): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(
    `SELECT id FROM (SELECT substring(datname FROM '${READY_SET_SQL.databasePattern}') AS id FROM pg_database WHERE datname ~ '${READY_SET_SQL.databasePattern}') sets
      WHERE $1::text[] IS NULL OR id = ANY ($1::text[])`,
    [ids ?? null],
  );
  return rows.map((row) => row.id);
}

export async function taintedIds(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(TAINTED_IDS_SQL);
  return rows.map((row) => row.id);
}

/**
 * Gives a prepared set's login role its password (it stays NOLOGIN: nobody can use it before the hand-over) and
 * today's limits: a set prepared before a restart with other settings (APP_CONNECTION_LIMIT, …) gets them when it
 * is re-keyed, before it can be handed over.
 */
export async function setPreparedLogin(db: Queryable, id: string, passwordVerifier: string, limits: AppRoleLimits): Promise<void> {
  const role = readySetNames(id).username;
  await db.query(
    `ALTER ROLE ${ident(role)} WITH NOLOGIN PASSWORD ${literal(passwordVerifier)} CONNECTION LIMIT ${limits.connectionLimit};
     ${roleSettingsSql(role, limits)}`,
  );
}

/** Whether `id` can name a prepared set (checked before an id goes into SQL as a literal). */
export const isReadySetId = (id: string): boolean => READY_SET_ID_PATTERN.test(id);
