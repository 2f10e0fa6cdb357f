// /apps/:name/extensions: install an extension the operator allows (APP_EXTENSIONS_ALLOWED) into the app's
// database as the superuser, list what its database has, remove one the service installed. Every route takes the
// admin key as "Authorization: Bearer <key>", checked before anything else of the request.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { InstalledExtension } from '../../domain/app-extensions.js';
import { AppNameSchema, ExtensionNameSchema } from '../../shared/object-names.js';
import { AppNameParamsSchema, errorResponses, requestContext } from './schemas.js';

/** One extension in an app's database. installed_by: the service (in its schema), the app (trusted ones), or a superuser elsewhere (plpgsql). */
const ExtensionSchema = z.object({
  name: z.string(),
  version: z.string(),
  schema: z.string(),
  installed_by: z.enum(['service', 'app', 'superuser']),
});

const InstallBodySchema = z.strictObject(
  { name: ExtensionNameSchema },
  { error: (issue) => (issue.code === 'invalid_type' ? 'the body must be a JSON object: {"name": "<extension>"}' : undefined) },
);

const ExtensionParamsSchema = z.object({ name: AppNameSchema, extension: ExtensionNameSchema });

function extensionBody(extension: InstalledExtension): z.infer<typeof ExtensionSchema> {
  return { name: extension.name, version: extension.version, schema: extension.schema, installed_by: extension.installedBy };
}

const extensionsRoutes: FastifyPluginAsyncZod = async (app) => {
  // As /apps' routes: the key first; an empty name (/apps//extensions) names no app.
  app.addHook('onRequest', async (request, reply) => {
    const params = request.params as { name?: string; extension?: string };
    if (params.name === '' || params.extension === '') return reply.callNotFound();
    return app.requireBearerKey(request);
  });

  app.post(
    '/apps/:name/extensions',
    {
      schema: {
        summary: "Install an extension the operator allows (APP_EXTENSIONS_ALLOWED) into the app's database, as the superuser, in schema extensions",
        params: AppNameParamsSchema,
        body: InstallBodySchema,
        response: { 200: ExtensionSchema, 201: ExtensionSchema, ...errorResponses },
      },
    },
    async (request, reply) => {
      const { extension, created } = await app.operations.extensions.install(request.params.name, request.body.name, requestContext(request));
      return reply.code(created ? 201 : 200).send(extensionBody(extension));
    },
  );

  app.get(
    '/apps/:name/extensions',
    {
      schema: {
        summary: "Every extension installed in the app's database, and who installed it",
        params: AppNameParamsSchema,
        response: { 200: z.object({ extensions: z.array(ExtensionSchema) }), ...errorResponses },
      },
    },
    async (request) => ({ extensions: (await app.operations.extensions.list(request.params.name)).map(extensionBody) }),
  );

  app.delete(
    '/apps/:name/extensions/:extension',
    {
      schema: {
        summary: 'Remove an extension the service installed (refused while objects of the app depend on it)',
        params: ExtensionParamsSchema,
        response: { 200: z.object({ app_name: z.string(), removed: z.string() }), ...errorResponses },
      },
    },
    async (request) => {
      const removed = await app.operations.extensions.remove(request.params.name, request.params.extension, requestContext(request));
      return { app_name: request.params.name, removed: removed.name };
    },
  );
};

export default extensionsRoutes;
