// /backups: every backup file the service holds, deleted apps' included, for the operator who means to restore
// one into a new app (POST /apps/:name/restore with from_deleted_app). Takes the admin key as a Bearer token.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { BackupSchema, errorResponses } from './schemas.js';

const backupsRoutes: FastifyPluginAsyncZod = async (app) => {
  app.addHook('onRequest', async (request) => app.requireBearerKey(request));

  app.get(
    '/backups',
    {
      schema: {
        summary: "Every backup, deleted apps' included; app_exists says whether the app it was taken of still exists",
        response: { 200: z.object({ backups: z.array(BackupSchema.extend({ app_exists: z.boolean() })) }), ...errorResponses },
      },
    },
    async () => ({ backups: await app.operations.listAllBackups() }),
  );
};

export default backupsRoutes;
