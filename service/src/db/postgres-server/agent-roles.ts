// Owns the agent roles: short-lived logins with exactly one app's rights, made for each run of a client program
// (pg_dump, pg_restore) inside an app's database, and removed after it. A tenant's code can run during those
// programs (a CHECK constraint, a domain check, a generated column, an index expression or a materialized view
// runs while a dump is restored); under an agent it can reach nothing the app could not reach itself, where
// under the superuser a RESET ROLE would have made it the superuser (SECURITY.md, promise 8).
import type { AppIdentifiers } from '../../shared/app-names.js';
import { newCredential } from '../../domain/credential-stock.js';
import { createAgentRole, disableLogin, dropRoleEverywhere, endSessionsOf, existingRoles, waitingOnLock, WORK_DATABASE_PREFIXES } from './app-objects.js';
import type { Database } from '../superuser-connections.js';
import type { FastifyBaseLogger } from 'fastify';
import type pg from 'pg';

export type AgentKind = 'dump' | 'restore';

/**
 * Agent names: `pgprov_dump_<app>`, and `pgprov_restore_<app>`, which is also the name of the database a restore
 * works in: pg_hba.conf's samerole admits an agent to databases named like a role it belongs to, so the restore's
 * agent reaches its work database and the app's, nothing else. Outside the app_ namespace: no app name makes them.
 */
const AGENT_PREFIXES: Record<AgentKind, string> = { dump: 'pgprov_dump_', restore: WORK_DATABASE_PREFIXES.restoring };
const AGENT_NAME = /^pgprov_(?:dump|restore)_([a-z0-9_]{3,32})$/;

export function agentName(kind: AgentKind, app: AppIdentifiers): string {
  return AGENT_PREFIXES[kind] + app.appName;
}

/** The app an agent role works for, or undefined for a name that is not an agent's. */
export function appOfAgent(role: string): string | undefined {
  return AGENT_NAME.exec(role)?.[1];
}

/** How a client program logs in as the agent, and how its session is watched. */
export interface AgentLogin {
  user: string;
  password: string;
  /** Whether the agent's session waits for a lock right now (a tenant's transaction holds it). */
  waitingOnLock: () => Promise<boolean>;
}

/**
 * Runs `work` with a fresh agent of `app` (valid for `validForMs` at most), on the caller's connection, which
 * holds the app's lock; the agent is removed afterwards whatever happens, anything it came to own going to the
 * app's login role.
 */
export async function withAgent<T>(
  db: Database,
  client: pg.ClientBase,
  app: AppIdentifiers,
  kind: AgentKind,
  validForMs: number,
  log: FastifyBaseLogger,
  work: (agent: AgentLogin) => Promise<T>,
): Promise<T> {
  const user = agentName(kind, app);
  await removeAgent(db, client, user, app.username); // a leftover of a crash, if any
  const { password, verifier } = await newCredential();
  await createAgentRole(client, user, app, verifier, validForMs);
  try {
    return await work({ user, password, waitingOnLock: () => waitingOnLock(db.pool, user) });
  } finally {
    // Refused at once; if a tenant's lock keeps it from being dropped now, the reconciler drops it later: the
    // operation itself, done, is not failed for it.
    await removeAgent(db, client, user, app.username).catch((err: unknown) => log.warn({ err, agent: user }, 'could not remove an agent role now; the reconciler will'));
  }
}

/** Refuses the agent's logins, ends its sessions, and drops it (what it owns goes to `heir` when that exists). */
export async function removeAgent(db: Database, client: pg.ClientBase, agent: string, heir: string): Promise<void> {
  const existing = await existingRoles(client, [agent, heir]);
  if (!existing.has(agent)) return;
  await disableLogin(client, agent);
  await endSessionsOf(client, agent);
  await dropRoleEverywhere(client, db, agent, existing.has(heir) ? heir : undefined);
}
