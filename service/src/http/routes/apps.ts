// /apps: list and inspect apps, rotate a password, take, list and restore backups, delete an app.
// Every route takes the admin key as "Authorization: Bearer <key>", checked before anything else of the request.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { AppDetail, AppSummary } from '../../domain/app-operations.js';
import { BACKUP_FILE_PATTERN } from '../../domain/backups/backup-files.js';
import type { Config } from '../../shared/config.js';
import { appIdentifiers } from '../../shared/object-names.js';
import { AppNameParamsSchema, BackupSchema, CredentialsSchema, credentialsBody, errorResponses, requestContext } from './schemas.js';

const AppSchema = z.object({
  app_name: z.string(),
  database: z.string(),
  username: z.string(),
  created_at: z.string(),
  size_bytes: z.number().int(),
  connections: z.number().int(),
});

/** One app: what GET /apps lists, and its backups' state. */
const AppDetailSchema = AppSchema.extend({
  /** Its companion databases (GET /apps/:name/databases has their sizes); size_bytes above counts them in. */
  databases: z.array(z.object({ name: z.string(), database: z.string() })),
  /** The newest backup of this app (scheduled or asked for), or null when it has none yet. */
  newest_backup: BackupSchema.nullable(),
  /** Set while its scheduled backups fail: how many times in a row, when the next try is, and the error's code. */
  backup_failing: z.object({ failures: z.number().int(), retry_at: z.string(), error: z.string() }).nullable(),
  /** Its extra credentials (GET /apps/:name/credentials): never a password. */
  credentials: z.array(z.object({ name: z.string(), access: z.enum(['read_only', 'full']), username: z.string() })),
  /**
   * Its storage (its database and companion databases) against its limit (README, "Storage quota"): ok; warning
   * (APP_STORAGE_WARN_PERCENT of the limit or over); read_only (over the limit); suspended (over the hard limit: no login).
   */
  storage: z.object({
    used_bytes: z.number().int(),
    limit_bytes: z.number().int().nullable(),
    hard_limit_bytes: z.number().int().nullable(),
    state: z.enum(['ok', 'warning', 'read_only', 'suspended']),
  }),
});

const RestoreBodySchema = z.strictObject(
  {
    file: z.string({ error: 'file is required: the name of one of this app\'s backups' }).regex(BACKUP_FILE_PATTERN, 'file must be a backup file name, as GET /apps/:name/backups lists them'),
    from_deleted_app: z.boolean({ error: 'from_deleted_app must be true or false' }).default(false),
  },
  { error: (issue) => (issue.code === 'invalid_type' ? 'the body must be a JSON object' : undefined) },
);

// Exactly true or false: z.stringbool also took 0, no, off, n, disabled… as false, so a typo deleted with no backup.
const DeleteQuerySchema = z.strictObject({ backup: z.enum(['true', 'false'], { error: 'backup must be true or false' }).default('true') });

function appBody(summary: AppSummary): z.infer<typeof AppSchema> {
  const ids = appIdentifiers(summary.app_name);
  return {
    app_name: ids.appName,
    database: ids.database,
    username: ids.username,
    created_at: summary.created_at.toISOString(),
    size_bytes: Math.round(summary.size_bytes),
    connections: summary.connections,
  };
}

const appsRoutes: FastifyPluginAsyncZod<{ config: Config }> = async (app, { config }) => {
  // First of all, before params, query or body are even parsed: without the key, nothing about what they accept.
  // An empty name (/apps/, /apps//rotate) names no app: no route has such a path (404), as nginx answers.
  app.addHook('onRequest', async (request, reply) => {
    if ((request.params as { name?: string }).name === '') return reply.callNotFound();
    return app.requireBearerKey(request);
  });

  app.get(
    '/apps',
    {
      schema: { summary: 'List every app', response: { 200: z.object({ apps: z.array(AppSchema) }), ...errorResponses } },
      // Thousands of apps: appBody (typed by AppSchema) already builds exactly the documented shape, so the
      // list is written as is instead of being copied object by object by zod first (half the garbage).
      serializerCompiler: () => (data) => JSON.stringify(data),
    },
    async () => ({ apps: (await app.operations.list()).map(appBody) }),
  );

  app.get(
    '/apps/:name',
    { schema: { summary: "One app, with its newest backup, whether its scheduled backups fail, and its storage against its limit", params: AppNameParamsSchema, response: { 200: AppDetailSchema, ...errorResponses } } },
    async (request) => {
      const detail: AppDetail = await app.operations.get(request.params.name);
      const { storage } = detail;
      return {
        ...appBody(detail),
        newest_backup: detail.newest_backup,
        backup_failing: detail.backup_failing,
        credentials: detail.credentials,
        databases: detail.databases,
        storage: { ...storage, used_bytes: Math.round(storage.used_bytes) },
      };
    },
  );

  app.post(
    '/apps/:name/rotate',
    {
      schema: {
        summary: "Give the app a new password: the old one is refused at once and its sessions are ended",
        params: AppNameParamsSchema,
        response: { 200: CredentialsSchema.extend({ sessions_ended: z.number().int() }), ...errorResponses },
      },
    },
    async (request) => {
      const rotated = await app.operations.rotate(request.params.name, requestContext(request));
      return { ...credentialsBody(config, rotated.app, rotated.password), sessions_ended: rotated.sessionsEnded };
    },
  );

  app.post(
    '/apps/:name/backups',
    { schema: { summary: "Back up the app's database (pg_dump, custom format)", params: AppNameParamsSchema, response: { 201: BackupSchema, ...errorResponses } } },
    async (request, reply) => reply.code(201).send(await app.operations.backup(request.params.name, requestContext(request))),
  );

  app.get(
    '/apps/:name/backups',
    { schema: { summary: "The app's backups, newest first", params: AppNameParamsSchema, response: { 200: z.object({ backups: z.array(BackupSchema) }), ...errorResponses } } },
    async (request) => ({ backups: await app.operations.listBackups(request.params.name) }),
  );

  app.post(
    '/apps/:name/restore',
    {
      schema: {
        summary: "Replace the app's database with one of its backups (or, with from_deleted_app, a deleted app's)",
        params: AppNameParamsSchema,
        body: RestoreBodySchema,
        response: { 200: z.object({ app_name: z.string(), restored: z.string() }), ...errorResponses },
      },
    },
    async (request) => {
      const { file, from_deleted_app: fromDeletedApp } = request.body;
      await app.operations.restore(request.params.name, file, { fromDeletedApp }, requestContext(request));
      return { app_name: request.params.name, restored: request.body.file };
    },
  );

  app.delete(
    '/apps/:name',
    {
      schema: {
        summary: 'Delete the app: a backup first (unless ?backup=false), then its sessions, database and roles',
        params: AppNameParamsSchema,
        querystring: DeleteQuerySchema,
        response: { 200: z.object({ deleted: z.string(), backup: z.string().nullable() }), ...errorResponses },
      },
    },
    async (request) => {
      const { backup } = await app.operations.delete(request.params.name, { backup: request.query.backup === 'true' }, requestContext(request));
      return { deleted: request.params.name, backup };
    },
  );
};

export default appsRoutes;
