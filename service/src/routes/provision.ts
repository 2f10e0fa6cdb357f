// POST /provision: creates one app's database and login role and returns its connection string.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { AppNameSchema, appIdentifiers } from '../app-names.js';
import type { Config } from '../config.js';
import { newAppPassword, scramSha256Verifier } from '../secrets.js';
import { errorResponses } from './schemas.js';

export const ProvisionBodySchema = z.strictObject(
  {
    app_name: AppNameSchema,
    admin_key: z.string({ error: 'admin_key must be a string' }).optional(),
  },
  { error: (issue) => (issue.code === 'invalid_type' ? 'the body must be a JSON object' : undefined) },
);

export const ProvisionedAppSchema = z.object({
  connection_string: z.string(),
  app_name: z.string(),
  database: z.string(),
  username: z.string(),
  host: z.string(),
  port: z.number().int(),
});

export function connectionString(config: Config, username: string, password: string, database: string): string {
  const user = encodeURIComponent(username);
  const secret = encodeURIComponent(password);
  return `postgres://${user}:${secret}@${config.PUBLIC_DB_HOST}:${config.PUBLIC_DB_PORT}/${database}?sslmode=disable`;
}

const provisionRoutes: FastifyPluginAsyncZod<{ config: Config }> = async (app, { config }) => {
  app.post(
    '/provision',
    {
      schema: {
        summary: 'Create an app: its own database and login role',
        body: ProvisionBodySchema,
        response: { 201: ProvisionedAppSchema, ...errorResponses },
      },
      preHandler: async (request) => app.requireAdminKey(request),
    },
    async (request, reply) => {
      const ids = appIdentifiers(request.body.app_name);
      const password = newAppPassword();
      await app.db.createApp(ids, await scramSha256Verifier(password), {
        connectionLimit: config.APP_CONNECTION_LIMIT,
        tempFileLimit: config.APP_TEMP_FILE_LIMIT,
        statementTimeout: config.APP_STATEMENT_TIMEOUT,
        idleInTransactionTimeout: config.APP_IDLE_IN_TRANSACTION_TIMEOUT,
      });
      request.log.info({ app: ids.appName }, 'app provisioned');
      return reply.code(201).send({
        connection_string: connectionString(config, ids.username, password, ids.database),
        app_name: ids.appName,
        database: ids.database,
        username: ids.username,
        host: config.PUBLIC_DB_HOST,
        port: config.PUBLIC_DB_PORT,
      });
    },
  );
};

export default provisionRoutes;
