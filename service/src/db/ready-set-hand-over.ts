// Owns the hand-over: the one transaction that turns a prepared set of objects into an app. It spans both kinds
// of state the service keeps, which share one cluster today: the system's own rows (the set's entry goes, the
// app's registry row comes) and the Postgres server's objects (roles and database renamed, login allowed).
import pg from 'pg';
import { READY_SET_SQL, readySetNames, type AppIdentifiers } from '../shared/object-names.js';
import { isReadySetId, taintedIdsSql } from './postgres-server/ready-set-objects.js';
import type { Queryable } from './queryable.js';

const { escapeIdentifier: ident, escapeLiteral: literal } = pg;

/**
 * Hands one prepared set to the app, in one transaction: takes the oldest ready entry among `candidates`
 * (the sets whose password this process holds; skipping any another handover holds), registers the app as
 * ready, renames the roles and the database to the app's names, and lets the login role log in. Its password
 * was set when the set was prepared (setting a SCRAM verifier costs Postgres a PBKDF2 run, ~3 ms, kept off this
 * path). Sets another tenant has granted anything to (taintedIds), and sets whose database is missing, are
 * skipped. Returns the id handed over, or undefined, changing nothing, when no candidate is left. Any failure
 * (a taken name: 23505 or 42710) rolls everything back.
 */
export async function handOverReadySet(db: Queryable, app: AppIdentifiers, candidates: string[]): Promise<string | undefined> {
  const ids = candidates.filter(isReadySetId);
  if (ids.length === 0) return undefined;
  try {
    // Two statements in one message (so no $n parameters: the ids are checked above): one result each.
    const results = (await db.query(
      `BEGIN; SELECT id FROM ready_pool WHERE state = 'ready' AND id IN (${ids.map((id) => literal(id)).join(', ')})
          AND id NOT IN (${taintedIdsSql(ids)})
          AND EXISTS (SELECT 1 FROM pg_database WHERE datname = ${READY_SET_SQL.databaseOf('id')} AND datallowconn)
        ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED`,
    )) as unknown as Array<pg.QueryResult<{ id: string }>>;
    const id = results[1]?.rows[0]?.id;
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
