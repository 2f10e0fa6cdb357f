// Owns the agent roles: short-lived logins with exactly one app's rights, made for each run of a client program
// (pg_dump, pg_restore) inside an app's database, and removed after it. A tenant's code can run during those
// programs (a CHECK constraint, a domain check, a generated column, an index expression or a materialized view
// runs while a dump is restored); under an agent it can reach nothing the app could not reach itself, where
// under the superuser a RESET ROLE would have made it the superuser (SECURITY.md, promise 8).
import type { Logger } from 'pino';
import { agentName, type AgentKind, type AppIdentifiers } from '../../shared/object-names.js';
import { newAppCredential } from '../../shared/secrets.js';
import type { Queryable } from '../queryable.js';
import type { PostgresServer } from './postgres-server.js';
import { createAgentRole, disableLogin, dropRoleEverywhere, endSessionsOf, existingRoles, rearmAgentRole, waitingOnLock } from './app-objects.js';

/** How a client program logs in as the agent, and how its session is watched. */
export interface AgentLogin {
  user: string;
  password: string;
  /** Whether the agent's session waits for a lock right now (a tenant's transaction holds it). */
  waitingOnLock: () => Promise<boolean>;
}

/**
 * Runs `work` with a fresh agent of `app` (valid for `validForMs` at most), on the caller's connection to the
 * app's server (the caller holds the app's lock); the agent is removed afterwards whatever happens, anything it came to own going to the
 * app's login role.
 */
export async function withAgent<T>(
  server: PostgresServer,
  client: Queryable,
  app: AppIdentifiers,
  kind: AgentKind,
  validForMs: number,
  log: Logger,
  work: (agent: AgentLogin) => Promise<T>,
): Promise<T> {
  const user = agentName(kind, app);
  const { password, verifier } = await newAppCredential();
  const leftover = await removeAgent(server, client, user, app.username).then(
    () => false,
    async (err: unknown) => {
      // Another tenant can keep a leftover from being dropped (it grants to it as fast as we revoke): that must
      // not stop this app's backups and restores. Ours still, it is made exactly what a new agent is.
      if (!(await existingRoles(client, [user])).has(user)) throw err;
      log.warn({ err, agent: user }, 'could not remove a leftover agent role; it is used again, made anew');
      return true;
    },
  ); // a leftover of a crash, or of a removal a tenant kept from finishing
  if (leftover) await rearmAgentRole(client, user, app, verifier, validForMs);
  else await createAgentRole(client, user, app, verifier, validForMs);
  try {
    return await work({ user, password, waitingOnLock: () => waitingOnLock(server.pool, user) });
  } finally {
    // Refused at once; if a tenant's lock keeps it from being dropped now, the reconciler drops it later: the
    // operation itself, done, is not failed for it.
    await removeAgent(server, client, user, app.username).catch((err: unknown) => log.warn({ err, agent: user }, 'could not remove an agent role now; the reconciler will'));
  }
}

/** Refuses the agent's logins, ends its sessions, and drops it (what it owns goes to `heir` when that exists). */
export async function removeAgent(server: PostgresServer, client: Queryable, agent: string, heir: string): Promise<void> {
  const existing = await existingRoles(client, [agent, heir]);
  if (!existing.has(agent)) return;
  await disableLogin(client, agent);
  await endSessionsOf(client, agent);
  await dropRoleEverywhere(client, server, agent, existing.has(heir) ? heir : undefined);
}
