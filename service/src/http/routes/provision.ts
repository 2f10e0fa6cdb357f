// POST /provision: creates one app's database and roles and returns its connection string.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { AppNameSchema } from '../../shared/object-names.js';
import type { Config } from '../../shared/config.js';
import { CredentialsSchema, credentialsBody, errorResponses, requestContext } from './schemas.js';

export const ProvisionBodySchema = z.strictObject(
  {
    // The app-name rule (src/shared/object-names.ts), where a missing app_name is "required", not a wrong type.
    app_name: z
      .string({ error: (issue) => (issue.input === undefined ? 'app_name is required' : 'app_name must be a string') })
      .check(...(AppNameSchema.def.checks ?? [])),
    admin_key: z.string({ error: 'admin_key must be a string' }).optional(),
  },
  { error: (issue) => (issue.code === 'invalid_type' ? 'the body must be a JSON object' : undefined) },
);

const provisionRoutes: FastifyPluginAsyncZod<{ config: Config }> = async (app, { config }) => {
  app.post(
    '/provision',
    {
      schema: {
        summary: 'Create an app: its own database and login role',
        description: 'The admin key goes in the body as admin_key (as the original README shows) or as "Authorization: Bearer <key>".',
        body: ProvisionBodySchema,
        response: { 201: CredentialsSchema, ...errorResponses },
      },
      // After the body is parsed (it may carry the key), before it is validated: no key, nothing about the schema.
      preValidation: async (request) => app.requireAdminKey(request),
    },
    async (request, reply) => {
      const { app: created, password } = await app.operations.provision(request.body.app_name, requestContext(request));
      request.log.info({ app: created.appName }, 'app provisioned');
      return reply.code(201).send(credentialsBody(config, created, password));
    },
  );
};

export default provisionRoutes;
