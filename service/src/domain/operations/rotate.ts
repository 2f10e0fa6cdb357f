// Owns rotation: a new password for an app, in an order that leaves the old one no way in (SECURITY.md,
// promise 9).
import { setTimeout as sleep } from 'node:timers/promises';
import { authenticationTimeoutMs, disableLogin, enableLogin, endSessionsOfRole, passwordIs, sessionCount, setPassword } from '../../db/postgres-server/app-objects.js';
import type { Queryable } from '../../db/queryable.js';
import { DatabaseUnavailableError } from '../../shared/errors.js';
import type { AppIdentifiers } from '../../shared/object-names.js';
import { doorEndsConnections, doorTakesLogins } from '../apps-door.js';
import type { RequestContext } from '../operation-envelope.js';
import type { Credentials, OperationDeps } from './deps.js';

/** Past the server's authentication_timeout, for a login the timeout ended to be gone. */
const LOGIN_SETTLE_MS = 250;

/**
 * Postgres reads a role's password when a login's exchange begins and checks LOGIN when it ends, and a login may
 * take up to the server's authentication_timeout. The apps' door (PgBouncer) reads the verifier when a login
 * begins too, and a login there may take up to its client_login_timeout. So: the login role is refused first
 * (NOLOGIN; at the door, a verifier no password matches and no hba line), its sessions are
 * ended until none is left (none can come back: no login completes while NOLOGIN), the new password is set while
 * no session exists that could change it again, the longer login timeout is waited out so that every login whose
 * exchange began before (with the old password, or one a session set) has ended, refused; the door's pooled
 * connections are ended (its clients, and a login it finished meanwhile); then LOGIN, and the door takes the new
 * verifier. If the password changed during the wait (only a session that slipped in could), the steps run again.
 * Waiting out logins holds a connection of its own: in one of the rotation slots, waited for up to
 * DATABASE_LOCK_TIMEOUT_MS.
 */
export function rotate(deps: OperationDeps, appName: string, request: RequestContext): Promise<Credentials & { sessionsEnded: number }> {
  const { crashPoint } = deps;
  return deps.envelope.onApp(
    'rotate',
    appName,
    request,
    { slot: { slots: deps.rotationSlots, waitMs: deps.config.DATABASE_LOCK_TIMEOUT_MS }, detail: (result) => ({ sessions_ended: result.sessionsEnded }) },
    async ({ server: client }, app) => {
      const { password, verifier } = await deps.credentials.take();
      await disableLogin(client, app.username);
      await crashPoint('rotate:after-disable-login');
      // The pooler refuses the old password from now on (and any new login of the app before its exchange).
      await doorTakesLogins(deps.server, app);
      // Logins begun before now end within the longer of Postgres's and the door's login timeouts.
      const waitMs = Math.max(await authenticationTimeoutMs(client), await deps.server.pooler.loginTimeoutMs()) + LOGIN_SETTLE_MS;
      let sessionsEnded = 0;
      for (let attempt = 1; ; attempt++) {
        sessionsEnded += await endAllSessions(client, app);
        await setPassword(client, app, verifier);
        await crashPoint('rotate:after-set-password');
        await sleep(waitMs);
        if (await passwordIs(client, app, verifier)) break;
        if (attempt >= 3) throw new Error('the password kept changing during rotation'); // the reconciler lets the app log in again
      }
      // The app's pooled clients, and a login the door began with the old password before the rotation and
      // finished since, which sits in its pool where server connections the new password opens would serve it:
      // ended before LOGIN, now that no login of the app can be in progress at the door.
      await doorEndsConnections(deps.server, app);
      await enableLogin(client, app);
      await doorTakesLogins(deps.server, app);
      return { app, password, sessionsEnded };
    },
  );
}

/** Ends the app's sessions until none is left (ended sessions take a moment to go). Returns how many it ended. */
async function endAllSessions(client: Queryable, app: AppIdentifiers): Promise<number> {
  let ended = 0;
  for (let round = 0; round < 100; round++) {
    if (round > 0 && (await sessionCount(client, app.username)) === 0) return ended;
    const now = await endSessionsOfRole(client, app);
    if (round === 0) ended = now;
    await sleep(50);
  }
  throw new DatabaseUnavailableError(); // sessions that ignore termination for 5 s: Postgres is not well
}
