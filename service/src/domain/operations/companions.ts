// Owns an app's companion databases (tests, a shadow for Prisma, a scratch copy): making one, empty or as a copy
// of the app's database or of another companion (a "branch"), listing them, removing one, and removing them all
// with the app. Each runs in the envelope (audited, under the app's lock, the app ready). A companion is made in
// steps that leave nothing anyone can log in to until the last one: the access role, the database, its hand-over
// (privileges, public schema), then the app's login admitted (a member of the access role, which pg_hba.conf's
// samerole asks). A crash between any two steps leaves a companion that is not admitted, which the reconciler
// removes (src/domain/reconciler.ts, repairCompanions).
import { setTimeout as sleep } from 'node:timers/promises';
import { allowConnections, dropDatabase, dropRoleEverywhere, handDatabaseToApp } from '../../db/postgres-server/app-objects.js';
import {
  admitAppToCompanion,
  companionDetails,
  companionStates,
  createCompanionAccessRole,
  createCompanionDatabase,
  endSessionsIn,
  refuseAppAtCompanion,
  refuseConnections,
  type CompanionDetail,
  type CompanionState,
} from '../../db/postgres-server/companion-objects.js';
import type { PostgresServer } from '../../db/postgres-server/postgres-server.js';
import type { Queryable } from '../../db/queryable.js';
import { CompanionExistsError, CompanionLimitError, CompanionNotFoundError } from '../../shared/errors.js';
import { companionIdentifiers, MAIN_DATABASE_ALIAS, type AppIdentifiers, type CompanionIdentifiers } from '../../shared/object-names.js';
import { SQLSTATE, sqlState } from '../../shared/sqlstate.js';
import { doorEndsConnections, doorReconnects, doorTakesLogins } from '../apps-door.js';
import type { CrashPoint } from '../crash-points.js';
import type { RequestContext } from '../operation-envelope.js';
import { backupSlot } from './backup.js';
import type { OperationDeps } from './deps.js';

/** A companion as the operations answer: its names, size and creation time. */
export interface Companion extends CompanionDetail {
  appName: string;
  username: string;
}

/** What making one answers: the companion, and for a branch how long its source refused connections. */
export interface MadeCompanion extends Companion {
  copyOf: string | null;
  /** A branch only: the milliseconds between refusing and allowing connections to the source again. */
  sourceClosedMs: number | null;
}

/** How many times a branch tries to find its source without sessions (ended ones take a moment to go; Postgres itself waits up to 5 s each time). */
const COPY_ATTEMPTS = 5;
const COPY_RETRY_MS = 100;

/**
 * Makes companion `name` of the app: empty, or a copy of `copyOf` ('main': the app's database; else another
 * companion's name). A copy needs a source without sessions: see copyInto. Holds a backup slot while it copies
 * (a copy reads the whole source, as a dump does).
 */
export function createCompanion(deps: OperationDeps, appName: string, name: string, copyOf: string | undefined, request: RequestContext): Promise<MadeCompanion> {
  const { crashPoint, server } = deps;
  return deps.envelope.onApp(
    'create_database',
    appName,
    request,
    {
      slot: copyOf !== undefined ? backupSlot(deps) : undefined,
      detail: (made) => ({ database: made.database, copy_of: made.copyOf, source_closed_ms: made.sourceClosedMs }),
    },
    async ({ server: client }, app) => {
      const companion = companionIdentifiers(appName, name);
      const states = await companionStates(client, appName);
      const same = states.find((state) => state.name === name);
      if (same?.admitted && same.databaseExists) throw new CompanionExistsError(appName, name);
      // A leftover of this name (a crash before its last step, which nobody could log in to): removed first, as
      // the reconciler would, so that a request retried after a crash makes it anew.
      if (same) await removeCompanionObjects(server, crashPoint, client, app, companion);
      const others = states.filter((state) => state.name !== name && state.databaseExists);
      if (others.length >= deps.config.APP_MAX_COMPANION_DATABASES) throw new CompanionLimitError(appName, deps.config.APP_MAX_COMPANION_DATABASES);
      const source = copyOf === undefined ? undefined : sourceDatabase(app, states, copyOf);

      const progress = { roleCreated: false, databaseCreated: false };
      let sourceClosedMs: number | null = null;
      try {
        await createCompanionAccessRole(client, companion);
        progress.roleCreated = true;
        await crashPoint('companion:after-create-role');
        try {
          if (source === undefined) await createCompanionDatabase(client, companion);
          else sourceClosedMs = await copyInto(deps, client, app, companion, source);
        } catch (err) {
          // A database of that name without its access role: not ours (the role is made first), never dropped.
          if (sqlState(err) === SQLSTATE.duplicateDatabase) throw new CompanionExistsError(appName, name);
          throw err;
        }
        progress.databaseCreated = true;
        await crashPoint('companion:after-create-database');
        // A copy has the default privileges (PUBLIC's CONNECT among them) until here; only pg_hba.conf's samerole,
        // which admits no one yet, kept everyone out meanwhile.
        await handDatabaseToApp(client, server, companion.database, companion);
        await crashPoint('companion:after-hand-over');
        await admitAppToCompanion(client, companion);
      } catch (err) {
        // As provisioning does: after a SQL error the steps done are known and undone now; after a lost connection
        // or a timeout a statement may still complete in Postgres, and the reconciler removes what it left.
        if (sqlState(err) || err instanceof CompanionExistsError) await undoCreate(deps, client, app, companion, progress);
        throw err;
      }
      // The door admits the app's login there before the answer reaches it.
      await doorTakesLogins(server, app);
      const [detail] = await companionDetails(client, appName, name);
      return { ...companionOf(app, detail ?? { name, database: companion.database, sizeBytes: 0, createdAt: null }), copyOf: copyOf ?? null, sourceClosedMs };
    },
  );
}

/** The database a branch copies: the app's own ('main') or one of its complete companions. */
function sourceDatabase(app: AppIdentifiers, states: CompanionState[], copyOf: string): string {
  if (copyOf === MAIN_DATABASE_ALIAS) return app.database;
  const source = states.find((state) => state.name === copyOf && state.admitted && state.databaseExists);
  if (!source) throw new CompanionNotFoundError(app.appName, copyOf);
  return source.database;
}

/**
 * CREATE DATABASE … TEMPLATE needs a source that no session is connected to, and no new one may arrive while it
 * copies. That moment is made under the app's lock (no operation of the service's is in it): the source refuses
 * new connections (ALLOW_CONNECTIONS false: the app's, the door's and the superuser's alike), the door's pooled
 * server connections to it are closed as they are released, every session in it is ended, the copy is made, and
 * the source takes connections again, whatever happened (finally; after a crash, the reconciler opens it again).
 * Returns how long the source refused connections, in milliseconds.
 */
async function copyInto(deps: OperationDeps, client: Queryable, app: AppIdentifiers, companion: CompanionIdentifiers, source: string): Promise<number> {
  const { server, crashPoint, log } = deps;
  await refuseConnections(client, source);
  const closedAt = performance.now();
  try {
    await crashPoint('companion:after-close-source');
    await doorReconnects(server, app, source);
    for (let attempt = 1; ; attempt++) {
      await endSessionsIn(client, source);
      try {
        await createCompanionDatabase(client, companion, source);
        break;
      } catch (err) {
        // 55006: a session is still in the source (ended sessions take a moment to go). Postgres itself waits 5 s
        // for them before it says so; a session that outlives that and our retries fails the request (the
        // source then takes connections again, and nothing is left of the companion).
        if (sqlState(err) !== SQLSTATE.objectInUse || attempt >= COPY_ATTEMPTS) throw err;
        await sleep(COPY_RETRY_MS);
      }
    }
  } finally {
    await allowConnections(client, source).catch((err: unknown) =>
      log.warn({ err, app: app.appName, database: source }, 'could not let connections into the source of a copy again; the reconciler will'),
    );
  }
  const closedMs = Math.round(performance.now() - closedAt);
  log.info({ app: app.appName, source, companion: companion.database, source_closed_ms: closedMs }, 'copied a database into a companion; its source refused connections meanwhile');
  return closedMs;
}

/** Removes what a failed create made, under the app's lock; if that fails, the reconciler will. */
async function undoCreate(deps: OperationDeps, client: Queryable, app: AppIdentifiers, companion: CompanionIdentifiers, progress: { roleCreated: boolean; databaseCreated: boolean }): Promise<void> {
  try {
    if (progress.databaseCreated) await dropDatabase(client, companion.database);
    if (progress.roleCreated) await dropRoleEverywhere(client, deps.server, companion.accessRole);
  } catch (err) {
    deps.log.error({ err, app: app.appName, companion: companion.name }, 'making a companion database failed and could not be undone now; the reconciler will remove it');
  }
}

/** The app's complete companion databases, with their sizes. Read-only, as the other reads: not audited, under no lock. */
export async function listCompanions(deps: OperationDeps, appName: string): Promise<Companion[]> {
  await deps.store.ensureSchema();
  const app = await deps.envelope.requireApp(deps.store.pool, appName, 'ready');
  return (await companionDetails(deps.server.pool, appName)).map((detail) => companionOf(app, detail));
}

/** Removes companion `name` of the app: the app's logins refused there, its sessions ended (the door's too), then its database and access role. */
export function deleteCompanion(deps: OperationDeps, appName: string, name: string, request: RequestContext): Promise<CompanionIdentifiers> {
  return deps.envelope.onApp('delete_database', appName, request, { detail: (companion) => ({ database: companion.database }) }, async ({ server: client }, app) => {
    const companion = companionIdentifiers(appName, name);
    const [state] = (await companionStates(client, appName)).filter((candidate) => candidate.name === name);
    if (!state?.databaseExists) throw new CompanionNotFoundError(appName, name);
    await removeCompanionObjects(deps.server, deps.crashPoint, client, app, companion);
    return companion;
  });
}

/**
 * Removes whatever exists of one companion: the app's login no longer admitted (pg_hba.conf refuses its new logins
 * there), the door told (its hba line goes) and its pooled connections there ended, the database dropped with
 * every session still in it (WITH (FORCE)), then the access role, whatever tenants granted to it.
 */
export async function removeCompanionObjects(server: PostgresServer, crashPoint: CrashPoint, client: Queryable, app: AppIdentifiers, companion: CompanionIdentifiers): Promise<void> {
  await refuseAppAtCompanion(client, companion);
  await crashPoint('companion-delete:after-refuse-login');
  await doorTakesLogins(server, app);
  await doorEndsConnections(server, app, companion.database);
  await dropDatabase(client, companion.database);
  await crashPoint('companion-delete:after-drop-database');
  await dropRoleEverywhere(client, server, companion.accessRole);
}

/**
 * Removes every companion of an app being deleted, whatever state each is in: its databases (with any session
 * still in them), then their access roles. The caller has refused the app's login and ended its sessions, at the
 * door too (which ends its companions' pooled connections with its own).
 */
export async function removeCompanionsOf(server: PostgresServer, client: Queryable, app: AppIdentifiers): Promise<void> {
  const states = await companionStates(client, app.appName);
  for (const state of states.filter((s) => s.databaseExists)) await dropDatabase(client, state.database);
  for (const state of states.filter((s) => s.accessRoleExists)) await dropRoleEverywhere(client, server, companionIdentifiers(app.appName, state.name).accessRole);
}

function companionOf(app: AppIdentifiers, detail: CompanionDetail): Companion {
  return { ...detail, appName: app.appName, username: app.username };
}
