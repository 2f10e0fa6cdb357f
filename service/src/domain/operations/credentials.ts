// Owns an app's extra credentials (Heroku's "credentials"): more logins than the app's own, each a login role of its
// own (app_<app>.<credential>) with its own password, of kind full (the app's rights) or read_only (SELECT on what
// the app owns, now and later), made, listed, rotated and deleted on their own, in the envelope like every
// operation on an app, and removed with the app. The objects themselves: src/db/postgres-server/credential-objects.ts.
import { dropRoleEverywhere, existingRoles, roleState } from '../../db/postgres-server/app-objects.js';
import type { AppRoleLimits, RoleState } from '../../db/postgres-server/app-objects.js';
import {
  createCredentialRole,
  credentialRoles,
  grantCredentialAccess,
  liveCredentials,
  makeCredentialLive,
  putBackCredentialState,
  retireCredential,
  type CredentialAccess,
  type CredentialRole,
} from '../../db/postgres-server/credential-objects.js';
import type { PostgresServer } from '../../db/postgres-server/postgres-server.js';
import type { Queryable } from '../../db/queryable.js';
import { connectionCeiling } from '../../db/postgres-server/app-settings-objects.js';
import { CredentialConnectionsError, CredentialExistsError, CredentialLimitError, CredentialNotFoundError } from '../../shared/errors.js';
import { credentialRole, type AppIdentifiers } from '../../shared/object-names.js';
import { DUPLICATE_ROLE_SQLSTATES, sqlState } from '../../shared/sqlstate.js';
import { effectiveAppLimits } from '../app-settings.js';
import { doorEndsConnections, doorTakesLogins } from '../apps-door.js';
import type { RequestContext } from '../operation-envelope.js';
import type { OperationDeps } from './deps.js';
import { endAllSessions, rotateLogin, rotationSlot } from './rotate.js';

export type { CredentialAccess } from '../../db/postgres-server/credential-objects.js';

/** A credential as listed: never its password. */
export interface CredentialSummary {
  name: string;
  access: CredentialAccess;
  username: string;
  created_at: string | null;
}

/** What making or rotating a credential answers: the app's names, the credential's, and its new password. */
export interface CredentialLogin {
  app: AppIdentifiers;
  credential: CredentialSummary;
  password: string;
}

/** The app's live credentials and what a restore must not change about each (its password, settings, memberships). */
export type CredentialStates = Array<{ credential: CredentialRole & { access: CredentialAccess }; before: RoleState }>;

export async function credentialStates(client: Queryable, app: AppIdentifiers): Promise<CredentialStates> {
  const states: CredentialStates = [];
  for (const credential of await liveCredentials(client, app)) {
    const before = await roleState(client, credential.role);
    if (before) states.push({ credential, before });
  }
  return states;
}

/**
 * Puts the credentials back as they were before a restore: its dump's code runs as the app's restore agent, which
 * is a member of the app's login role and of none of its credentials, so it should change none of them; a second
 * guard, as for the app's own login role. Returns what was put back, by credential name.
 */
export async function putBackCredentialStates(client: Queryable, app: AppIdentifiers, states: CredentialStates, limits: AppRoleLimits): Promise<Record<string, string[]>> {
  const putBack: Record<string, string[]> = {};
  for (const { credential, before } of states) {
    const what = await putBackCredentialState(client, app, credential, before, limits);
    if (what.length > 0) putBack[credential.credential] = what;
  }
  return putBack;
}

/** In `database` (a restore's copy, before it is swapped in), each credential's grants there (grantCredentialAccess). */
export async function grantCredentialsIn(server: PostgresServer, database: string, app: AppIdentifiers, states: CredentialStates): Promise<void> {
  for (const { credential } of states) await grantCredentialAccess(server, database, app, credential);
}

function summaryOf(credential: CredentialRole & { access: CredentialAccess }): CredentialSummary {
  return { name: credential.credential, access: credential.access, username: credential.role, created_at: credential.createdAt };
}


/**
 * Makes a credential: its role, not live yet (NOLOGIN, marked); its grants inside the app's database; then live (LOGIN); then the door admits it. A crash before it is live leaves a marked role, which the
 * reconciler drops (the client got no answer); a failure with a sound connection drops it at once.
 */
export function createCredential(deps: OperationDeps, appName: string, name: string, access: CredentialAccess, request: RequestContext): Promise<CredentialLogin> {
  const { crashPoint } = deps;
  return deps.envelope.onApp('create_credential', appName, request, { detail: () => ({ credential: name, access }) }, async ({ store, server: client }, app) => {
    const role = credentialRole(app, name);
    const existing = await credentialRoles(client, app);
    if (existing.some((c) => c.credential === name)) throw new CredentialExistsError(appName, name);
    if (existing.length >= deps.config.APP_MAX_CREDENTIALS) throw new CredentialLimitError(appName, deps.config.APP_MAX_CREDENTIALS);
    // Held to the app's own limits (its overrides, else the defaults), as its main login is.
    const limits = await effectiveAppLimits(store, deps.config, appName);
    await refuseLoginsBeyondServer(client, appName, existing.length + 2, limits.connectionLimit);
    const { password, verifier } = await deps.credentials.take();
    try {
      await createCredentialRole(client, app, role, access, verifier, limits);
    } catch (err) {
      if (DUPLICATE_ROLE_SQLSTATES.includes(sqlState(err) ?? '')) throw new CredentialExistsError(appName, name);
      throw err;
    }
    try {
      await crashPoint('create-credential:after-create-role');
      await grantCredentialAccess(deps.server, app.database, app, { role, access });
      await crashPoint('create-credential:after-grants');
      await makeCredentialLive(client, role);
      await crashPoint('create-credential:after-live');
    } catch (err) {
      // A SQL error leaves the connection sound: undo now. Otherwise (a lost connection, a timeout) the marked role
      // is the reconciler's to drop.
      if (sqlState(err)) await dropRoleEverywhere(client, deps.server, role, app.username).catch((undo: unknown) => deps.log.warn({ err: undo, app: appName }, 'a credential that failed to be made could not be removed now; the reconciler will'));
      throw err;
    }
    await doorTakesLogins(deps.server, app);
    return { app, credential: { name, access, username: role, created_at: (await credentialRoles(client, app)).find((c) => c.role === role)?.createdAt ?? null }, password };
  });
}

/**
 * Postgres holds each role to its own connection limit, so an app's logins (its own, and each credential with the
 * app's connection_limit) may together hold `logins` times it at the direct door: refused when that would take
 * every slot this server gives roles but the superuser, which would leave no other app a way in (SECURITY.md,
 * promise 4; found by test/stack/redteam-15.test.ts). Counted over every credential role of the app, half-made ones
 * too (the reconciler finishes or removes them).
 */
export async function refuseLoginsBeyondServer(client: Queryable, appName: string, logins: number, connectionLimit: number): Promise<void> {
  const { ceiling } = await connectionCeiling(client);
  if (logins * connectionLimit > ceiling) throw new CredentialConnectionsError(appName, logins, connectionLimit, ceiling);
}

/** The app's credentials, by name (never a password). */
export async function listCredentials(deps: OperationDeps, appName: string): Promise<CredentialSummary[]> {
  await deps.store.ensureSchema();
  const app = await deps.envelope.requireApp(deps.store.pool, appName, 'ready');
  return (await liveCredentials(deps.server.pool, app)).map(summaryOf);
}

/** A new password for one credential, in the same no-way-back order as the app's own (rotateLogin). */
export function rotateCredential(deps: OperationDeps, appName: string, name: string, request: RequestContext): Promise<CredentialLogin & { sessionsEnded: number }> {
  return deps.envelope.onApp(
    'rotate_credential',
    appName,
    request,
    { slot: rotationSlot(deps), detail: (result) => ({ credential: name, sessions_ended: result.sessionsEnded }) },
    async ({ server: client }, app) => {
      const credential = await findCredential(client, app, name);
      const { password, sessionsEnded } = await rotateLogin(deps, client, app, credential.role, 'rotate-credential');
      return { app, credential: summaryOf(credential), password, sessionsEnded };
    },
  );
}

/**
 * Removes one credential: no longer live (refused, and marked so that a crash leaves it to the reconciler to drop),
 * refused at the door, the door's pooled connections to the app's database ended (PgBouncer 1.18 ends a database's,
 * not one login's: a later credential of the same name must find none of this one's clients waiting), its sessions
 * ended, and its role dropped, whatever it owns going to the app's login role.
 */
export function deleteCredential(deps: OperationDeps, appName: string, name: string, request: RequestContext): Promise<{ sessionsEnded: number }> {
  return deps.envelope.onApp('delete_credential', appName, request, { detail: (result) => ({ credential: name, sessions_ended: result.sessionsEnded }) }, async ({ server: client }, app) => {
    const credential = await findCredential(client, app, name);
    const sessionsEnded = await removeCredentialRoles(deps.server, client, app, [credential], deps.crashPoint);
    return { sessionsEnded };
  });
}

async function findCredential(client: Queryable, app: AppIdentifiers, name: string): Promise<CredentialRole & { access: CredentialAccess }> {
  const found = (await liveCredentials(client, app)).find((c) => c.credential === name);
  if (!found) throw new CredentialNotFoundError(app.appName, name);
  return found;
}

/**
 * Removes `credentials` of `app` (all of its credential roles when not given, live or not): each refused and
 * marked, the door told, the app's pooled connections ended, their sessions ended, and their roles dropped, what
 * they own going to the app's login role (when it still exists). Returns how many sessions were ended.
 */
export async function removeCredentialRoles(
  server: PostgresServer,
  client: Queryable,
  app: AppIdentifiers,
  credentials?: CredentialRole[],
  crashPoint: (point: string) => Promise<void> = async () => {},
): Promise<number> {
  const doomed = credentials ?? (await credentialRoles(client, app));
  if (doomed.length === 0) return 0;
  for (const credential of doomed) await retireCredential(client, credential.role);
  await crashPoint('delete-credential:after-retire');
  await doorTakesLogins(server, app);
  await doorEndsConnections(server, app);
  let sessionsEnded = 0;
  for (const credential of doomed) sessionsEnded += await endAllSessions(client, credential.role);
  await crashPoint('delete-credential:after-end-sessions');
  const heir = (await existingRoles(client, [app.username])).has(app.username) ? app.username : undefined;
  for (const credential of doomed) await dropRoleEverywhere(client, server, credential.role, heir);
  return sessionsEnded;
}
