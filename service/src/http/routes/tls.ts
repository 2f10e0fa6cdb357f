// GET /tls/ca.crt: the certificate of the authority that signed the doors' TLS certificate (PgBouncer's and
// Postgres's; init/setup/make-tls.sh), so that clients can check the server with sslmode=verify-full. Public,
// like any CA certificate: it holds no secret. 404 when the service was not told where it is (TLS_CA_FILE).
import { readFile } from 'node:fs/promises';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { Config } from '../../shared/config.js';
import { CaCertificateMissingError } from '../error-statuses.js';
import { ErrorSchema } from './schemas.js';

const tlsRoutes: FastifyPluginAsyncZod<{ config: Config }> = async (app, { config }) => {
  app.get(
    '/tls/ca.crt',
    {
      schema: {
        summary: 'The CA certificate (PEM) that signed the TLS certificate apps connect to: for sslmode=verify-full',
        response: { 200: z.string(), 404: ErrorSchema },
      },
    },
    async (_request, reply) => {
      // Read at each request: an operator who replaces the certificate need not restart the service.
      const pem = config.TLS_CA_FILE ? await readFile(config.TLS_CA_FILE, 'utf8').catch(() => undefined) : undefined;
      if (!pem) throw new CaCertificateMissingError();
      return reply.type('application/x-pem-file').send(pem);
    },
  );
};

export default tlsRoutes;
