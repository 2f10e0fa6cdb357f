// Owns the SQL of the ready pool's prepared sets on the Postgres server: which exist, which a tenant has granted
// something to, and their passwords. Their names come from src/shared/object-names.ts.
import pg from 'pg';
import { READY_SET_ID_PATTERN, READY_SET_SQL, readySetNames } from '../../shared/object-names.js';
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
