// Owns admin authentication: the key may come as "Authorization: Bearer <key>" or, for POST /provision as
// the original README shows, as `admin_key` in the JSON body. It is checked in constant time, and a client
// that keeps presenting wrong keys is locked out for a while (429), right key or not, so that guessing is slow
// and a lucky guess cannot be told from a wrong one during the lockout. Right keys are never counted: an
// operator's burst of provisioning is not slowed down.
import fp from 'fastify-plugin';
import rateLimit from '@fastify/rate-limit';
import type { FastifyRequest } from 'fastify';
import { InvalidAdminKeyError, MissingAdminKeyError, MissingAuthorizationError, TooManyFailedAttemptsError } from '../errors.js';
import { isAdminKey } from '../secrets.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** For POST /provision: the key as a Bearer header or as admin_key in the body; missing is a 400. */
    requireAdminKey: (request: FastifyRequest) => Promise<void>;
    /** For the other admin routes: the key as a Bearer header only; missing is a 401. */
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

function bearerKey(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (typeof header !== 'string') return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match?.[1] ?? header; // anything else is a wrong key, never a missing one
}

function bodyKey(request: FastifyRequest): string | undefined {
  const body = request.body as { admin_key?: unknown } | undefined;
  return typeof body?.admin_key === 'string' ? body.admin_key : undefined;
}

export default fp<AdminAuthOptions>(
  async (app, { adminKey, maxFailedAttempts, failedAttemptsWindowMs }) => {
    await app.register(rateLimit, { global: false });
    // Counts wrong keys only: called once per failed attempt, keyed by the client address nginx saw.
    const countFailedAttempt = app.createRateLimit({ max: maxFailedAttempts, timeWindow: failedAttemptsWindowMs });
    const lockedOutUntil = new Map<string, number>();

    const lockedOut = (client: string): number | undefined => {
      const until = lockedOutUntil.get(client);
      if (until === undefined) return undefined;
      if (until > Date.now()) return until;
      lockedOutUntil.delete(client);
      return undefined;
    };

    const tooMany = (seconds: number) => Object.assign(new TooManyFailedAttemptsError(seconds), { retryAfterSeconds: seconds });

    const check = async (request: FastifyRequest, key: string | undefined, missing: () => Error) => {
      const until = lockedOut(request.ip);
      if (until !== undefined) throw tooMany(Math.ceil((until - Date.now()) / 1000));
      if (key === undefined) throw missing();
      if (isAdminKey(key, adminKey)) return;
      const limit = await countFailedAttempt(request);
      if (!limit.isAllowed && limit.isExceeded) {
        if (lockedOutUntil.size >= MAX_TRACKED_LOCKOUTS) lockedOutUntil.delete(lockedOutUntil.keys().next().value!);
        lockedOutUntil.set(request.ip, Date.now() + limit.ttl);
        request.log.warn({ client: request.ip }, 'too many wrong admin keys: client locked out');
        throw tooMany(limit.ttlInSeconds);
      }
      throw new InvalidAdminKeyError();
    };

    app.decorate('requireAdminKey', (request: FastifyRequest) => check(request, bearerKey(request) ?? bodyKey(request), () => new MissingAdminKeyError()));
    app.decorate('requireBearerKey', (request: FastifyRequest) => check(request, bearerKey(request), () => new MissingAuthorizationError()));
  },
  { name: 'admin-auth' },
);
