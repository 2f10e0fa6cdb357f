// Owns admin authentication: the key may come as "Authorization: Bearer <key>" or, for POST /provision as
// the original README shows, as `admin_key` in the JSON body. It is checked in constant time, and a client
// that keeps presenting wrong keys is locked out for a while (429), right key or not, so that guessing is slow
// and a lucky guess cannot be told from a wrong one during the lockout. Right keys are never counted: an
// operator's burst of provisioning is not slowed down.
// Routes check the key before anything else of the request is validated (onRequest, or preValidation when the
// key may be in the body), so that a caller without the key learns nothing about what the routes accept.
// Failed attempts go to the audit log (never the key presented), without the answer waiting for Postgres, and
// bounded: one row per wrong key (the lockout bounds those), one when a lockout starts and none during it, and
// at most one per client address and window for a missing key.
import fp from 'fastify-plugin';
import rateLimit from '@fastify/rate-limit';
import createError from '@fastify/error';
import type { FastifyRequest } from 'fastify';
import { appendAudit } from '../db/registry.js';
import { InvalidAdminKeyError, MissingAdminKeyError, MissingAuthorizationError, TooManyFailedAttemptsError } from '../errors.js';
import { isAdminKey } from '../secrets.js';

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * For POST /provision, as its preValidation hook (after the body is parsed, before it is validated): the
     * key as a Bearer header or as admin_key in the body; missing is a 400.
     */
    requireAdminKey: (request: FastifyRequest) => Promise<void>;
    /** For the other admin routes, as their onRequest hook: the key as a Bearer header only; missing is a 401. */
    requireBearerKey: (request: FastifyRequest) => Promise<void>;
  }
}

export interface AdminAuthOptions {
  adminKey: string;
  /** Wrong keys one client address may present per window before it is locked out. */
  maxFailedAttempts: number;
  failedAttemptsWindowMs: number;
}

/** Clients locked out at once, at most: beyond this the oldest lockouts are forgotten first. */
const MAX_TRACKED_LOCKOUTS = 10_000;

/** How a failed attempt is recorded in audit_log.outcome (action 'admin_auth'). */
type AuthFailure = 'missing_key' | 'invalid_key' | 'locked_out';

// Where POST /provision looks for the key, said with the words its body schema uses for the same faults.
const BodyNotAnObjectError = createError('BODY_NOT_AN_OBJECT', 'the body must be a JSON object', 400);
const AdminKeyNotAStringError = createError('ADMIN_KEY_NOT_A_STRING', 'admin_key must be a string', 400);

function bearerKey(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (typeof header !== 'string') return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match?.[1] ?? header; // anything else is a wrong key, never a missing one
}

/** The body's admin_key, read before the body is validated: anything but a string is no key. */
function bodyKey(request: FastifyRequest): string | undefined {
  const body = request.body as { admin_key?: unknown } | undefined;
  return typeof body?.admin_key === 'string' ? body.admin_key : undefined;
}

/** Why POST /provision found no key in its body: about the key only, never about the rest of the body. */
function missingBodyKey(request: FastifyRequest): Error {
  const body = request.body;
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return new BodyNotAnObjectError();
  if (Object.hasOwn(body, 'admin_key')) return new AdminKeyNotAStringError();
  return new MissingAdminKeyError();
}

export default fp<AdminAuthOptions>(
  async (app, { adminKey, maxFailedAttempts, failedAttemptsWindowMs }) => {
    await app.register(rateLimit, { global: false });
    // Counts wrong keys only: called once per failed attempt, keyed by the client address nginx saw.
    const countFailedAttempt = app.createRateLimit({ max: maxFailedAttempts, timeWindow: failedAttemptsWindowMs });
    // Missing keys are not counted (a lockout is for guessing), but only the first per window is audited.
    const firstMissingKeyInWindow = app.createRateLimit({ max: 1, timeWindow: failedAttemptsWindowMs });
    const lockedOutUntil = new Map<string, number>();

    const lockedOut = (client: string): number | undefined => {
      const until = lockedOutUntil.get(client);
      if (until === undefined) return undefined;
      if (until > Date.now()) return until;
      lockedOutUntil.delete(client);
      return undefined;
    };

    const tooMany = (seconds: number) => Object.assign(new TooManyFailedAttemptsError(seconds), { retryAfterSeconds: seconds });

    // Fire and forget: the answer never waits for (or depends on) Postgres; a lost row is a warning in the log.
    const audit = (request: FastifyRequest, client: string, outcome: AuthFailure) => {
      const entry = { action: 'admin_auth', outcome, requestId: request.id, client, detail: { method: request.method, route: request.routeOptions.url ?? null } };
      app.db
        .ready()
        .then(() => appendAudit(app.db.pool, entry))
        .catch((err) => request.log.warn({ err, action: entry.action, outcome }, 'could not write the audit log'));
    };

    const check = async (request: FastifyRequest, key: string | undefined, missing: () => Error) => {
      const client = request.ip;
      const until = lockedOut(client);
      if (until !== undefined) throw tooMany(Math.ceil((until - Date.now()) / 1000));
      if (key === undefined) {
        const seen = await firstMissingKeyInWindow(request);
        if (seen.isAllowed || !seen.isExceeded) audit(request, client, 'missing_key');
        throw missing();
      }
      if (isAdminKey(key, adminKey)) return;
      const limit = await countFailedAttempt(request);
      if (!limit.isAllowed && limit.isExceeded) {
        if (lockedOut(client) === undefined) startLockout(request, client, limit.ttl); // concurrent attempts: once
        throw tooMany(limit.ttlInSeconds);
      }
      audit(request, client, 'invalid_key');
      throw new InvalidAdminKeyError();
    };

    const startLockout = (request: FastifyRequest, client: string, ms: number) => {
      if (lockedOutUntil.size >= MAX_TRACKED_LOCKOUTS) lockedOutUntil.delete(lockedOutUntil.keys().next().value!);
      lockedOutUntil.set(client, Date.now() + ms);
      request.log.warn({ client }, 'too many wrong admin keys: client locked out');
      audit(request, client, 'locked_out');
    };

    app.decorate('requireAdminKey', (request: FastifyRequest) => {
      const header = bearerKey(request);
      return header !== undefined ? check(request, header, () => new MissingAdminKeyError()) : check(request, bodyKey(request), () => missingBodyKey(request));
    });
    app.decorate('requireBearerKey', (request: FastifyRequest) => check(request, bearerKey(request), () => new MissingAuthorizationError()));
  },
  { name: 'admin-auth', dependencies: ['database'] },
);
