// /apps/:name/settings: what an app's login role and database are held to (connection limit, temp file limit,
// timeouts, a few database settings) and its storage limit; each the operator's override for this app or the
// service's default. Admin key required ("Authorization: Bearer <key>"), checked before anything else.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { AppSettingsPatchSchema } from '../../domain/app-settings.js';
import { AppNameParamsSchema, errorResponses, requestContext } from './schemas.js';

const DatabaseSettingsSchema = z.object({
  timezone: z.string().optional(),
  search_path: z.array(z.string()).optional(),
  lock_timeout: z.string().optional(),
  work_mem: z.string().optional(),
  default_transaction_isolation: z.string().optional(),
});

const SettingsValuesSchema = z.object({
  connection_limit: z.number().int(),
  temp_file_limit: z.string(),
  statement_timeout: z.string(),
  idle_in_transaction_session_timeout: z.string(),
  idle_session_timeout: z.string(),
  storage_limit: z.string(),
  /** Only the settings set on the app's database; any other has the server's value (postgres.conf). */
  database: DatabaseSettingsSchema,
});

const AppSettingsSchema = z.object({
  app_name: z.string(),
  /** What new sessions of the app get: each override, else the default. */
  in_force: SettingsValuesSchema,
  /** What the operator set for this app (PATCH); a name absent here takes its default. */
  overrides: SettingsValuesSchema.partial().extend({ database: DatabaseSettingsSchema }),
  /** The service's settings (APP_CONNECTION_LIMIT, …): what every app without an override gets, new apps and the ready pool included. */
  defaults: SettingsValuesSchema,
  /** The names `database` may take. */
  allowed_database_settings: z.array(z.string()),
});

// Exactly true or false (as DELETE /apps/:name's backup): a typo must not end every session, or fail to.
const PatchQuerySchema = z.strictObject({ end_sessions: z.enum(['true', 'false'], { error: 'end_sessions must be true or false' }).default('false') });

const settingsRoutes: FastifyPluginAsyncZod = async (app) => {
  // First of all, before params, query or body are even parsed: without the key, nothing about what they accept.
  app.addHook('onRequest', async (request, reply) => {
    if ((request.params as { name?: string }).name === '') return reply.callNotFound();
    return app.requireBearerKey(request);
  });

  app.get(
    '/apps/:name/settings',
    {
      schema: {
        summary: "The app's settings: what is in force, what the operator set for it (overrides), and the service's defaults",
        params: AppNameParamsSchema,
        response: { 200: AppSettingsSchema, ...errorResponses },
      },
    },
    async (request) => app.operations.settings(request.params.name),
  );

  app.patch(
    '/apps/:name/settings',
    {
      schema: {
        summary:
          "Change some of the app's settings (null: back to the default). New sessions get them; open ones keep theirs until they reconnect, unless ?end_sessions=true ends them",
        params: AppNameParamsSchema,
        querystring: PatchQuerySchema,
        body: AppSettingsPatchSchema,
        response: { 200: AppSettingsSchema.extend({ sessions_ended: z.number().int().optional() }), ...errorResponses },
      },
    },
    async (request) => app.operations.changeSettings(request.params.name, request.body, { endSessions: request.query.end_sessions === 'true' }, requestContext(request)),
  );
};

export default settingsRoutes;
