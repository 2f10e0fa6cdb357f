// Owns admin authentication: the key may come as "Authorization: Bearer <key>" or, for POST /provision as
// the original README shows, as `admin_key` in the JSON body. It is checked in constant time, and a client
// that keeps presenting wrong keys is locked out for a while (429), right key or not, so that guessing is slow
// and a lucky guess cannot be told from a wrong one during the lockout. Right keys are never counted: an
// operator's burst of provisioning is not slowed down.
// The header must be exactly "Bearer <key>": any other scheme or shape is refused (401) without looking at any
// key, and so is a POST /provision whose body key and header key differ, whichever of them is right.
// Routes check the key before anything else of the request is validated (onRequest, or preValidation when the
// key may be in the body), so that a caller without the key learns nothing about what the routes accept.
// Failed attempts go to the audit log (never the key presented), without the answer waiting for Postgres, and
// bounded: one row per wrong key (the lockout bounds those), one when a lockout starts and none during it, and
// at most one per client address and window for a request that presents no usable key.
import fp from 'fastify-plugin';
import rateLimit from '@fastify/rate-limit';
import type { FastifyRequest } from 'fastify';
import {
  AdminKeyNotAStringError,
  BodyNotAnObjectError,
  ConflictingAdminKeysError,
  InvalidAdminKeyError,
  MalformedAuthorizationError,
  MissingAdminKeyError,
  MissingAuthorizationError,
  TooManyFailedAttemptsError,
} from '../error-statuses.js';
import { matchesAdminKey, type AdminKeyDigest } from '../../shared/secrets.js';

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * For POST /provision, as its preValidation hook (after the body is parsed, before it is validated): the
     * key as a Bearer header or as admin_key in the body (both: they must be the same); missing is a 400.
     */
    requireAdminKey: (request: FastifyRequest) => Promise<void>;
    /** For the other admin routes, as their onRequest hook: the key as a Bearer header only; missing is a 401. */
    requireBearerKey: (request: FastifyRequest) => Promise<void>;
  }
}

export interface AdminAuthOptions {
  /** The admin key, by its digest (src/shared/secrets.ts): generated at start, or pinned by ADMIN_KEY_FILE. */
  adminKey: AdminKeyDigest;
  /** Wrong keys one client address may present per window before it is locked out. */
  maxFailedAttempts: number;
  failedAttemptsWindowMs: number;
}

/** Clients locked out at once, at most: beyond this the oldest lockouts are forgotten first. */
const MAX_TRACKED_LOCKOUTS = 10_000;

/** How a failed attempt is recorded in audit_log.outcome (action 'admin_auth'). */
type AuthFailure = 'missing_key' | 'malformed_authorization' | 'conflicting_keys' | 'invalid_key' | 'locked_out';

/** A request that presents no key to check: why, in the audit log and in the answer. */
interface Unusable {
  outcome: 'missing_key' | 'malformed_authorization' | 'conflicting_keys';
  error: () => Error;
}

/** "Bearer", one space, and a token (RFC 6750's b64token); the scheme's case does not matter (RFC 9110). */
const BEARER = /^Bearer ([A-Za-z0-9\-._~+/]+=*)$/i;

const malformed: Unusable = { outcome: 'malformed_authorization', error: () => new MalformedAuthorizationError() };
const conflicting: Unusable = { outcome: 'conflicting_keys', error: () => new ConflictingAdminKeysError() };

/** The key of the Authorization header; undefined when there is no header; Unusable when it is not "Bearer <key>". */
function headerKey(request: FastifyRequest): string | Unusable | undefined {
  const header = request.headers.authorization;
  if (header === undefined) return undefined;
  return BEARER.exec(header)?.[1] ?? malformed;
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
    // Requests without a usable key are not counted (a lockout is for guessing), but only the first per window is audited.
    const firstUnusableInWindow = app.createRateLimit({ max: 1, timeWindow: failedAttemptsWindowMs });
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
      app.audit
        .record(entry)
        .catch((err) => request.log.warn({ err, action: entry.action, outcome }, 'could not write the audit log'));
    };

    const check = async (request: FastifyRequest, presented: string | Unusable) => {
      const client = request.ip;
      const until = lockedOut(client);
      if (until !== undefined) throw tooMany(Math.ceil((until - Date.now()) / 1000));
      if (typeof presented !== 'string') {
        const seen = await firstUnusableInWindow(request);
        if (seen.isAllowed || !seen.isExceeded) audit(request, client, presented.outcome);
        throw presented.error();
      }
      if (matchesAdminKey(presented, adminKey)) return;
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
      const header = headerKey(request);
      const body = bodyKey(request);
      if (header === undefined) return check(request, body ?? { outcome: 'missing_key', error: () => missingBodyKey(request) });
      // Two keys that differ are refused whichever is right: a client that sends both means one of them.
      if (typeof header === 'string' && body !== undefined && body !== header) return check(request, conflicting);
      return check(request, header);
    });
    app.decorate('requireBearerKey', (request: FastifyRequest) =>
      check(request, headerKey(request) ?? { outcome: 'missing_key', error: () => new MissingAuthorizationError() }),
    );
  },
  { name: 'admin-auth', dependencies: ['provisioner'] },
);
