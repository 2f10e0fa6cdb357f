// GET /health: 200 when Postgres answers within HEALTH_TIMEOUT_MS, 503 otherwise. Never slower than that;
// concurrent checks share one ping (see SuperuserConnections.checkHealth). `pooler` says whether the apps' door
// (PgBouncer) answers, from a check the service makes in the background: a pooler that is down does not make the
// service unhealthy (it provisions; the door reads its logins when it is back), but it is reported here and in
// /metrics (pgprov_pooler_up). `backups` says whether backups leave the machine: with no off-site remote, plainly
// that they are on the same disk as the data.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';

const PoolerStateSchema = z.enum(['ok', 'unavailable', 'none']);
/** Where backups are: offsite none (with a warning: on the same disk as the data), ok, failing, or pending. */
const BackupsStateSchema = z.object({ offsite: z.enum(['none', 'ok', 'failing', 'pending']), warning: z.string().optional() });
const HealthSchema = z.object({ status: z.literal('ok'), pooler: PoolerStateSchema, backups: BackupsStateSchema });
const UnhealthySchema = z.object({
  statusCode: z.literal(503),
  error: z.string(),
  status: z.literal('unavailable'),
  message: z.string(),
  pooler: PoolerStateSchema,
  backups: BackupsStateSchema,
  /** The request's id, which finds the log line of the failed check. */
  request_id: z.string(),
});

const healthRoutes: FastifyPluginAsyncZod = async (app) => {
  app.get(
    '/health',
    {
      schema: { summary: 'Is the service up and Postgres answering?', response: { 200: HealthSchema, 503: UnhealthySchema } },
      // The hottest route (load balancers, healthchecks): its two fixed answers need no per-request schema
      // validation; the schemas above still document it in OpenAPI.
      serializerCompiler: () => (data) => JSON.stringify(data),
      // Docker's healthcheck and load balancers call it every few seconds: a successful check is counted in
      // /metrics but not logged; a failing one is logged (warn, below).
      logLevel: 'warn',
    },
    async (request, reply) => {
      try {
        await app.health.check();
        return { status: 'ok' as const, pooler: app.health.pooler(), backups: app.health.backups() };
      } catch (err) {
        request.log.warn({ err }, 'health check: database not answering');
        return reply.code(503).send({
          statusCode: 503,
          error: 'Service Unavailable',
          status: 'unavailable',
          message: 'the database is not answering',
          pooler: app.health.pooler(),
          backups: app.health.backups(),
          request_id: request.id,
        });
      }
    },
  );
};

export default healthRoutes;
