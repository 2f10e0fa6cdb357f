// /apps/:name/databases: an app's companion databases (tests, a shadow for Prisma, a scratch copy): make one, empty
// or as a copy ("branch") of the app's database or of another companion, list them, delete one. Every route takes
// the admin key as "Authorization: Bearer <key>", checked before anything else of the request.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { Companion } from '../../domain/app-operations.js';
import type { Config } from '../../shared/config.js';
import { AppNameSchema, CompanionNameSchema, MAIN_DATABASE_ALIAS } from '../../shared/object-names.js';
import { AppNameParamsSchema, doorStrings, errorResponses, requestContext } from './schemas.js';

const NO_PASSWORD =
  "No password: the app logs in to its companion databases with its own login role and the password it already has (from POST /provision or its last rotation), which the service does not keep. Put that password in the string (postgres://user:PASSWORD@…) or give it apart (PGPASSWORD).";

/** One companion database as listed: its name, its Postgres database, its size and when it was made. */
const CompanionSchema = z.object({
  app_name: z.string(),
  /** The companion's name, as given when it was made. */
  name: z.string(),
  /** Its Postgres database: app_<app>-<name>. */
  database: z.string(),
  size_bytes: z.number().int(),
  /** When Postgres made its directory (Postgres keeps no creation time of its own); null when that cannot be read. */
  created_at: z.string().nullable(),
});

/** What POST answers: the companion, and how to connect to it, as for the app's database but without a password. */
const MadeCompanionSchema = CompanionSchema.extend({
  connection_string: z.string().describe(`The apps' door (the pooler, when there is one), to this database. ${NO_PASSWORD}`),
  database_url: z.string().describe('The same, with the postgresql:// scheme.'),
  direct_connection_string: z.string().optional().describe('Postgres itself, where the operator opened the direct door; no password either.'),
  username: z.string().describe("The app's own login role."),
  host: z.string(),
  port: z.number().int(),
  sslmode: z.string(),
  /** transaction (or session, statement): through PgBouncer in that mode; none: straight to Postgres. */
  pooling: z.enum(['transaction', 'session', 'statement', 'none']),
  /** The database it was copied from ('main' or another companion's name), or null: made empty. */
  copy_of: z.string().nullable(),
}).describe(`A companion database of the app, reachable by the app's own login role only. ${NO_PASSWORD}`);

const CreateBodySchema = z.strictObject(
  {
    name: CompanionNameSchema.refine((name) => name !== MAIN_DATABASE_ALIAS, `name cannot be '${MAIN_DATABASE_ALIAS}': copy_of uses it for the app's own database`),
    copy_of: CompanionNameSchema.optional().describe(`'${MAIN_DATABASE_ALIAS}' (the app's own database) or another companion's name: the new one is a copy of it`),
  },
  { error: (issue) => (issue.code === 'invalid_type' ? 'the body must be a JSON object' : undefined) },
);

const DatabaseParamsSchema = z.object({ name: AppNameSchema, database_name: CompanionNameSchema });

function companionBody(companion: Companion): z.infer<typeof CompanionSchema> {
  return {
    app_name: companion.appName,
    name: companion.name,
    database: companion.database,
    size_bytes: Math.round(companion.sizeBytes),
    created_at: companion.createdAt?.toISOString() ?? null,
  };
}

const databasesRoutes: FastifyPluginAsyncZod<{ config: Config }> = async (app, { config }) => {
  // First of all, before params or body are even parsed: without the key, nothing about what they accept. An empty
  // name names no app or database: no route has such a path (404), as nginx answers.
  app.addHook('onRequest', async (request, reply) => {
    const params = request.params as { name?: string; database_name?: string };
    if (params.name === '' || params.database_name === '') return reply.callNotFound();
    return app.requireBearerKey(request);
  });

  app.post(
    '/apps/:name/databases',
    {
      schema: {
        summary: "Make a companion database for the app (empty, or with copy_of a copy of its database or of another companion); no password in the answer",
        params: AppNameParamsSchema,
        body: CreateBodySchema,
        response: { 201: MadeCompanionSchema, ...errorResponses },
      },
    },
    async (request, reply) => {
      const { name, copy_of: copyOf } = request.body;
      const made = await app.operations.createDatabase(request.params.name, name, copyOf, requestContext(request));
      return reply.code(201).send({ ...companionBody(made), ...doorStrings(config, made.username, made.database), username: made.username, copy_of: made.copyOf });
    },
  );

  app.get(
    '/apps/:name/databases',
    {
      schema: {
        summary: "The app's companion databases, with their sizes",
        params: AppNameParamsSchema,
        response: { 200: z.object({ databases: z.array(CompanionSchema) }), ...errorResponses },
      },
    },
    async (request) => ({ databases: (await app.operations.listDatabases(request.params.name)).map(companionBody) }),
  );

  app.delete(
    '/apps/:name/databases/:database_name',
    {
      schema: {
        summary: "Delete one of the app's companion databases: its sessions are ended (at the pooler too), then it and its access role are dropped",
        params: DatabaseParamsSchema,
        response: { 200: z.object({ app_name: z.string(), deleted: z.string(), database: z.string() }), ...errorResponses },
      },
    },
    async (request) => {
      const { database } = await app.operations.deleteDatabase(request.params.name, request.params.database_name, requestContext(request));
      return { app_name: request.params.name, deleted: request.params.database_name, database };
    },
  );
};

export default databasesRoutes;
