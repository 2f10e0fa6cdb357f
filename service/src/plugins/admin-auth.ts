// Owns admin authentication: the key may come as "Authorization: Bearer <key>" or, for POST /provision as
// the original README shows, as `admin_key` in the JSON body. Checked in constant time.
import fp from 'fastify-plugin';
import type { FastifyRequest } from 'fastify';
import { InvalidAdminKeyError, MissingAdminKeyError } from '../errors.js';
import { isAdminKey } from '../secrets.js';

declare module 'fastify' {
  interface FastifyInstance {
    requireAdminKey: (request: FastifyRequest) => Promise<void>;
  }
}

function presentedKey(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (typeof header === 'string') {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    return match?.[1] ?? header;
  }
  const body = request.body as { admin_key?: unknown } | undefined;
  return typeof body?.admin_key === 'string' ? body.admin_key : undefined;
}

export default fp<{ adminKey: string }>(
  async (app, { adminKey }) => {
    app.decorate('requireAdminKey', async (request: FastifyRequest) => {
      const key = presentedKey(request);
      if (key === undefined) throw new MissingAdminKeyError();
      if (!isAdminKey(key, adminKey)) throw new InvalidAdminKeyError();
    });
  },
  { name: 'admin-auth' },
);
