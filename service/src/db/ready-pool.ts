// Owns the ready pool's SQL: its bookkeeping rows, and the handover that turns a prepared set of objects into
// an app in one transaction.
import pg from 'pg';
import type { AppIdentifiers } from '../app-names.js';
import { roleSettingsSql, type AppRoleLimits, type ObjectNames } from './app-objects.js';

const { escapeIdentifier: ident, escapeLiteral: literal } = pg;
type Queryable = Pick<pg.ClientBase, 'query'>;

export const READY_PREFIX = 'pgprov_ready_';
export const READY_ID_PATTERN = /^[a-z0-9]{12}$/;

/** The names of a prepared set: outside the app_ namespace, so no app name can produce them. */
export function readyObjectNames(id: string): ObjectNames {
  if (!READY_ID_PATTERN.test(id)) throw new TypeError(`not a ready-pool id: ${JSON.stringify(id)}`);
  return { database: `${READY_PREFIX}${id}`, accessRole: `${READY_PREFIX}${id}`, username: `${READY_PREFIX}${id}_user` };
}

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

export async function entriesIn(db: Queryable, state: 'preparing' | 'ready'): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(`SELECT id FROM ready_pool WHERE state = $1 ORDER BY created_at`, [state]);
  return rows.map((row) => row.id);
}

/** Ids of prepared objects in Postgres (roles or databases named pgprov_ready_<id>). */
export async function idsWithObjects(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(
    `SELECT substring(rolname FROM '^pgprov_ready_([a-z0-9]{12})(_user)?$') AS id FROM pg_roles WHERE rolname ~ '^pgprov_ready_[a-z0-9]{12}(_user)?$'
     UNION
     SELECT substring(datname FROM '^pgprov_ready_([a-z0-9]{12})$') FROM pg_database WHERE datname ~ '^pgprov_ready_[a-z0-9]{12}$'`,
  );
  return rows.map((row) => row.id);
}

/**
 * Prepared sets whose roles someone else has named: a tenant can GRANT on its own objects (or set default
 * privileges or policies) to any role it sees in pg_roles, prepared ones included. Such a set would hand those
 * grants to the app that receives it, so it is never handed over, and the pool removes it. A prepared set's own
 * entries (CONNECT on its database, its public schema) are the only ones expected.
 */
function taintedIdsSql(ids?: string[]): string {
  // With ids (checked by READY_ID_PATTERN), the roles are looked up by name: the hand-over stays a few index
  // lookups however many apps and roles the server holds.
  const roles = ids
    ? `r.rolname IN (${ids.flatMap((id) => Object.values(readyObjectNames(id))).filter((name, i, all) => all.indexOf(name) === i).map((name) => literal(name)).join(', ')})`
    : `r.rolname ~ '^pgprov_ready_[a-z0-9]{12}(_user)?$'`;
  return `
  SELECT DISTINCT substring(r.rolname FROM '^pgprov_ready_([a-z0-9]{12})') AS id
    FROM pg_roles r
    JOIN pg_shdepend s ON s.refclassid = 'pg_authid'::regclass AND s.refobjid = r.oid
    LEFT JOIN pg_database own ON own.datname = substring(r.rolname FROM '^(pgprov_ready_[a-z0-9]{12})')
   WHERE ${roles}
     AND s.dbid IS DISTINCT FROM own.oid
     AND NOT (s.dbid = 0 AND s.classid = 'pg_database'::regclass AND s.objid = own.oid)`;
}

/** Ready entries whose database is gone (it is never handed over: handOver checks it too). */
export async function readyIdsWithoutDatabase(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(
    `SELECT id FROM ready_pool WHERE state = 'ready' AND NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'pgprov_ready_' || id)`,
  );
  return rows.map((row) => row.id);
}

export async function taintedIds(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(taintedIdsSql());
  return rows.map((row) => row.id);
}

/** Sets the password of a prepared login role, which stays NOLOGIN: nobody can use it before the handover. */
/**
 * Gives a prepared set's login role its password and today's limits: a set prepared before a restart with other
 * settings (APP_CONNECTION_LIMIT, …) gets them when it is re-keyed, before it can be handed over.
 */
export async function setPreparedLogin(db: Queryable, id: string, passwordVerifier: string, limits: AppRoleLimits): Promise<void> {
  const role = readyObjectNames(id).username;
  await db.query(
    `ALTER ROLE ${ident(role)} WITH NOLOGIN PASSWORD ${literal(passwordVerifier)} CONNECTION LIMIT ${limits.connectionLimit};
     ${roleSettingsSql(role, limits)}`,
  );
}

/**
 * Hands one prepared set to the app, in one transaction: takes the oldest ready entry among `candidates`
 * (the sets whose password this process holds; skipping any another handover holds), registers the app as
 * ready, renames the roles and the database to the app's names, and lets the login role log in. Its password
 * was set when the set was prepared (setting a SCRAM verifier costs Postgres a PBKDF2 run, ~3 ms, kept off this
 * path). Sets another tenant has granted anything to (taintedIds), and sets whose database is missing, are
 * skipped. Returns the id handed over, or
 * undefined, changing nothing, when no candidate is left. Any failure
 * (a taken name: 23505 or 42710) rolls everything back.
 */
export async function handOver(db: Queryable, app: AppIdentifiers, candidates: string[]): Promise<string | undefined> {
  const ids = candidates.filter((id) => READY_ID_PATTERN.test(id));
  if (ids.length === 0) return undefined;
  try {
    // Two statements in one message (so no $n parameters: the ids are checked above): one result each.
    const results = (await db.query(
      `BEGIN; SELECT id FROM ready_pool WHERE state = 'ready' AND id IN (${ids.map((id) => literal(id)).join(', ')})
          AND id NOT IN (${taintedIdsSql(ids)})
          AND EXISTS (SELECT 1 FROM pg_database WHERE datname = 'pgprov_ready_' || id AND datallowconn)
        ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED`,
    )) as unknown as Array<pg.QueryResult<{ id: string }>>;
    const id = results[1]?.rows[0]?.id;
    if (!id) {
      await db.query('ROLLBACK');
      return undefined;
    }
    const prepared = readyObjectNames(id);
    await db.query(
      `DELETE FROM ready_pool WHERE id = ${literal(id)};
       INSERT INTO apps (app_name, state) VALUES (${literal(app.appName)}, 'ready');
       ALTER ROLE ${ident(prepared.accessRole)} RENAME TO ${ident(app.accessRole)};
       ALTER ROLE ${ident(prepared.username)} RENAME TO ${ident(app.username)};
       ALTER DATABASE ${ident(prepared.database)} RENAME TO ${ident(app.database)};
       ALTER ROLE ${ident(app.username)} WITH LOGIN;
       COMMIT;`,
    );
    return id;
  } catch (err) {
    await db.query('ROLLBACK').catch(() => {});
    throw err;
  }
}
