// Owns rotation: a new password for a login role, in an order that leaves the old one no way in (SECURITY.md,
// promise 9). The same steps serve the app's own login (POST /apps/:name/rotate) and each of its extra credentials
// (src/domain/operations/credentials.ts).
import { setTimeout as sleep } from 'node:timers/promises';
import { authenticationTimeoutMs, disableLogin, enableLogin, endSessionsOf, passwordIs, sessionCount, setPassword } from '../../db/postgres-server/app-objects.js';
import { credentialRoles } from '../../db/postgres-server/credential-objects.js';
import type { Queryable } from '../../db/queryable.js';
import { DatabaseUnavailableError } from '../../shared/errors.js';
import type { AppIdentifiers } from '../../shared/object-names.js';
import { doorEndsConnections, doorTakesLogins } from '../apps-door.js';
import type { RequestContext, Slot } from '../operation-envelope.js';
import type { Credentials, OperationDeps } from './deps.js';

/** Past the server's authentication_timeout, for a login the timeout ended to be gone. */
const LOGIN_SETTLE_MS = 250;

/** Gives the app's own login role a new password (rotateLogin), in the envelope, in one of the rotation slots. */
export function rotate(deps: OperationDeps, appName: string, request: RequestContext): Promise<Credentials & { sessionsEnded: number }> {
  return deps.envelope.onApp(
    'rotate',
    appName,
    request,
    { slot: rotationSlot(deps), detail: (result) => ({ sessions_ended: result.sessionsEnded }) },
    async ({ server: client }, app) => ({ app, ...(await withFullCredentialsRefused(deps, client, app, () => rotateLogin(deps, client, app, app.username, 'rotate'))) }),
  );
}

/**
 * Runs `work` (the app's own rotation) while the app's full credentials cannot log in and have no session. A full
 * credential's sessions are the app's login role (SET role), and a role may set its own password: one such session
 * kept setting the app's password during the rotation, which then failed (500) and left the app's login refused
 * until the reconciler let it in again, with that session's password (test/stack/redteam-15.test.ts). Their logins
 * come back as they were afterwards, whatever happens; a crash meanwhile leaves live credentials without LOGIN,
 * which the reconciler lets in again (as after a credential's own rotation cut short). Their pooled connections
 * end with the app's (rotateLogin ends every pooled connection to the app's database).
 */
async function withFullCredentialsRefused<T>(deps: OperationDeps, client: Queryable, app: AppIdentifiers, work: () => Promise<T>): Promise<T> {
  const full = (await credentialRoles(client, app)).filter((credential) => credential.live && credential.access === 'full' && credential.loginAllowed);
  try {
    for (const credential of full) await disableLogin(client, credential.role);
    for (const credential of full) await endAllSessions(client, credential.role);
    return await work();
  } finally {
    for (const credential of full) await enableLogin(client, credential.role);
    if (full.length > 0) await doorTakesLogins(deps.server, app);
  }
}

/**
 * Where a rotation runs: waiting out logins holds a connection of its own, in one of the rotation slots, waited for
 * up to DATABASE_LOCK_TIMEOUT_MS.
 */
export function rotationSlot(deps: OperationDeps): Slot {
  return { slots: deps.rotationSlots, waitMs: deps.config.DATABASE_LOCK_TIMEOUT_MS };
}

/**
 * Gives `role`, a login role of `app` (its own, or an extra credential's), a new password; the caller holds the
 * app's lock. Postgres reads a role's password when a login's exchange begins and checks LOGIN when it ends, and a
 * login may take up to the server's authentication_timeout. The apps' door (PgBouncer) reads the verifier when a
 * login begins too, and a login there may take up to its client_login_timeout. So: the login role is refused first
 * (NOLOGIN; at the door, a verifier no password matches and no hba line), its sessions are ended until none is left
 * (none can come back: no login completes while NOLOGIN), the new password is set while no session exists that
 * could change it again, the longer login timeout is waited out so that every login whose exchange began before
 * (with the old password, or one a session set) has ended, refused; the door's pooled connections to the app's
 * database are ended (its clients, and a login it finished meanwhile; PgBouncer 1.18 ends a database's, not one
 * login's); then LOGIN, and the door takes the new verifier. If the password changed during the wait (only a session
 * that slipped in could), the steps run again. The crash points are named `<crashPrefix>:after-…`.
 */
export async function rotateLogin(deps: OperationDeps, client: Queryable, app: AppIdentifiers, role: string, crashPrefix: string): Promise<{ password: string; sessionsEnded: number }> {
  const { crashPoint } = deps;
  const { password, verifier } = await deps.credentials.take();
  await disableLogin(client, role);
  await crashPoint(`${crashPrefix}:after-disable-login`);
  // The pooler refuses the old password from now on (and any new login of the role before its exchange).
  await doorTakesLogins(deps.server, app);
  // Logins begun before now end within the longer of Postgres's and the door's login timeouts.
  const waitMs = Math.max(await authenticationTimeoutMs(client), await deps.server.pooler.loginTimeoutMs()) + LOGIN_SETTLE_MS;
  let sessionsEnded = 0;
  for (let attempt = 1; ; attempt++) {
    sessionsEnded += await endAllSessions(client, role);
    await setPassword(client, role, verifier);
    await crashPoint(`${crashPrefix}:after-set-password`);
    await sleep(waitMs);
    if (await passwordIs(client, role, verifier)) break;
    if (attempt >= 3) throw new Error('the password kept changing during rotation'); // the reconciler lets the role log in again
  }
  // The role's pooled clients, and a login the door began with the old password before the rotation and finished
  // since, which sits in its pool where server connections the new password opens would serve it: ended before
  // LOGIN, now that no login of the role can be in progress at the door.
  await doorEndsConnections(deps.server, app);
  await enableLogin(client, role);
  await doorTakesLogins(deps.server, app);
  return { password, sessionsEnded };
}

/** Ends the role's sessions until none is left (ended sessions take a moment to go). Returns how many it ended. */
export async function endAllSessions(client: Queryable, role: string): Promise<number> {
  let ended = 0;
  for (let round = 0; round < 100; round++) {
    if (round > 0 && (await sessionCount(client, role)) === 0) return ended;
    const now = await endSessionsOf(client, role);
    if (round === 0) ended = now;
    await sleep(50);
  }
  throw new DatabaseUnavailableError(); // sessions that ignore termination for 5 s: Postgres is not well
}
