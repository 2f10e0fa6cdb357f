// /apps/:name/credentials: an app's extra credentials (more logins than its own, each with its own password; full
// or read_only): make, list, rotate, delete. Every route takes the admin key as "Authorization: Bearer <key>",
// checked before anything else of the request.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { CredentialLogin } from '../../domain/app-operations.js';
import type { Config } from '../../shared/config.js';
import { AppNameSchema, CredentialNameSchema } from '../../shared/object-names.js';
import { AppNameParamsSchema, CredentialsSchema, credentialsBody, errorResponses, requestContext } from './schemas.js';

const CREDENTIAL_ACCESS_VALUES = ['read_only', 'full'] as const;
const AccessSchema = z.enum(CREDENTIAL_ACCESS_VALUES, { error: 'access must be "read_only" or "full"' });

const CredentialBodySchema = z.strictObject(
  {
    name: z.string({ error: 'name is required: 1 to 20 of a-z, 0-9 and _' }).pipe(CredentialNameSchema),
    access: AccessSchema,
  },
  { error: (issue) => (issue.code === 'invalid_type' ? 'the body must be a JSON object' : undefined) },
);

const CredentialParamsSchema = z.object({ name: AppNameSchema, credential: CredentialNameSchema });

/** A credential as listed: never its password. */
const CredentialSummarySchema = z.object({
  name: z.string(),
  access: AccessSchema,
  username: z.string(),
  /** When it was made (null for a credential made by hand). */
  created_at: z.string().nullable(),
});

/** What making or rotating a credential answers: the same connection shapes as the app's own login, and which credential. */
const CredentialLoginSchema = CredentialsSchema.extend({ name: z.string(), access: AccessSchema });

function loginBody(config: Config, login: CredentialLogin): z.infer<typeof CredentialLoginSchema> {
  // The credential's own login, to the app's database, at the same doors as the app's.
  const body = credentialsBody(config, { ...login.app, username: login.credential.username }, login.password);
  return { ...body, name: login.credential.name, access: login.credential.access };
}

const credentialsRoutes: FastifyPluginAsyncZod<{ config: Config }> = async (app, { config }) => {
  // First of all, before params or body are parsed: without the key, nothing about what they accept. An empty name
  // (/apps//credentials, /apps/x/credentials//rotate) names nothing: no route has such a path (404).
  app.addHook('onRequest', async (request, reply) => {
    const params = request.params as { name?: string; credential?: string };
    if (params.name === '' || params.credential === '') return reply.callNotFound();
    return app.requireBearerKey(request);
  });

  app.post(
    '/apps/:name/credentials',
    {
      schema: {
        summary: 'Make an extra credential for the app: a login of its own, read_only (SELECT on what the app owns, now and later) or full (the app\'s rights)',
        params: AppNameParamsSchema,
        body: CredentialBodySchema,
        response: { 201: CredentialLoginSchema, ...errorResponses },
      },
    },
    async (request, reply) => {
      const { name, access } = request.body;
      const made = await app.operations.createCredential(request.params.name, name, access, requestContext(request));
      return reply.code(201).send(loginBody(config, made));
    },
  );

  app.get(
    '/apps/:name/credentials',
    {
      schema: {
        summary: "The app's extra credentials (never a password)",
        params: AppNameParamsSchema,
        response: { 200: z.object({ credentials: z.array(CredentialSummarySchema) }), ...errorResponses },
      },
    },
    async (request) => ({ credentials: await app.operations.listCredentials(request.params.name) }),
  );

  app.post(
    '/apps/:name/credentials/:credential/rotate',
    {
      schema: {
        summary: 'Give one credential a new password: the old one is refused at once and its sessions are ended',
        params: CredentialParamsSchema,
        response: { 200: CredentialLoginSchema.extend({ sessions_ended: z.number().int() }), ...errorResponses },
      },
    },
    async (request) => {
      const rotated = await app.operations.rotateCredential(request.params.name, request.params.credential, requestContext(request));
      return { ...loginBody(config, rotated), sessions_ended: rotated.sessionsEnded };
    },
  );

  app.delete(
    '/apps/:name/credentials/:credential',
    {
      schema: {
        summary: 'Delete one credential: its logins refused, its sessions ended, its role dropped (what it owns goes to the app)',
        params: CredentialParamsSchema,
        response: { 200: z.object({ app_name: z.string(), deleted: z.string(), sessions_ended: z.number().int() }), ...errorResponses },
      },
    },
    async (request) => {
      const { sessionsEnded } = await app.operations.deleteCredential(request.params.name, request.params.credential, requestContext(request));
      return { app_name: request.params.name, deleted: request.params.credential, sessions_ended: sessionsEnded };
    },
  );
};

export default credentialsRoutes;
