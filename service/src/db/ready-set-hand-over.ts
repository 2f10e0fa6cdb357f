// Owns the hand-over: the one transaction that turns a prepared set of objects into an app. It spans both kinds
// of state the service keeps, which share one cluster today: the system's own rows (the set's entry goes, the
// app's registry row comes) and the Postgres server's objects (roles and database renamed, login allowed).
import pg from 'pg';
import { readySetNames, type AppIdentifiers } from '../shared/object-names.js';
import { isReadySetId, setIsTaintedSql } from './postgres-server/ready-set-objects.js';
import type { Queryable } from './queryable.js';

const { escapeIdentifier: ident, escapeLiteral: literal } = pg;

/**
 * One candidate set ($1, its database $2, its roles $3), locked for the transaction if it is ready, no other
 * hand-over holds it, its database exists and takes connections, and no tenant has tainted it. A named statement
 * of primary-key and catalog-index lookups: each connection plans it once.
 */
const PICK_READY_SET = {
  name: 'pgprov-pick-ready-set',
  text: `SELECT id FROM ready_pool
          WHERE id = $1 AND state = 'ready'
            AND EXISTS (SELECT 1 FROM pg_database WHERE datname = $2::name AND datallowconn)
            AND NOT ${setIsTaintedSql('$2::name', '$3::name[]')}
          FOR UPDATE SKIP LOCKED`,
};

/**
 * Hands one prepared set to the app, in one transaction: takes the first of `candidates` (the sets whose
 * password this process holds, oldest first) that can be handed over, skipping any another hand-over holds,
 * registers the app as ready, renames the roles and the database to the app's names, and lets the login role
 * log in. Its password was set when the set was prepared (setting a SCRAM verifier costs Postgres a PBKDF2 run,
 * ~3 ms, kept off this path). Sets another tenant has granted anything to (tainted), and sets whose database is
 * missing, are skipped. Returns the id handed over, or undefined, changing nothing, when no candidate is left.
 * Any failure (a taken name: 23505 or 42710) rolls everything back.
 */
export async function handOverReadySet(db: Queryable, app: AppIdentifiers, candidates: string[]): Promise<string | undefined> {
  const ids = candidates.filter(isReadySetId);
  if (ids.length === 0) return undefined;
  try {
    await db.query('BEGIN');
    let id: string | undefined;
    for (const candidate of ids) {
      const names = readySetNames(candidate);
      const { rows } = await db.query<{ id: string }>({ ...PICK_READY_SET, values: [candidate, names.database, [names.accessRole, names.username]] });
      if ((id = rows[0]?.id)) break;
    }
    if (!id) {
      await db.query('ROLLBACK');
      return undefined;
    }
    const prepared = readySetNames(id);
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
